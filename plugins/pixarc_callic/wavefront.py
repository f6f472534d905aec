"""Cache-then-crop wavefront inference: the one procedure the encoder and decoder share.

The image is cut into patches (at most P×P; smaller images are one smaller patch), all
coded in parallel. Pixel (i, j) of every patch is coded at step ``t = SLOPE·i + j``
(``model.SLOPE``), so a P×P patch takes ``(SLOPE+1)(P−1)+1`` steps whatever the image size.

Each spatial layer keeps a cache of its *input* over the whole patch grid (the pixels for
the masked embedding; W_A·LN(x) for each masked depth-wise conv). At step t only the
positions of that step are computed, layer after layer: gather their masked taps from the
cache (all of which hold earlier steps, by construction of the masks), apply the
per-position operations, write the new activations back. Decode cost is therefore one
full forward's arithmetic spread over the steps, plus per-step overhead: it grows with
the number of steps, not with pixels × layers × steps.

Caches are laid out (rows + 2r, cols + 2r, patches, channels), zero-padded by r = k//2 on
every side (the scan-order masks reach below-left too), so the positions of one step and
of each tap around them are strided views (``_diagonal``), and the padding reproduces the
zero padding of the training forward. Positions of a patch outside
the image (the right/bottom margins of the last patches) keep the padding value 0.

``run`` gets a ``code_step`` callback: the encoder's sends the known pixels of the step,
the decoder's receives them. Everything else, including every float operation and its
batch shape, is the same in both, which is what makes the quantised parameters equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import SLOPE, MGCF, taps

PATCH = 64
CHUNK = 128  # patches per wavefront run: bounds the caches (≈ 80 MB per block at dim 32, P = 64)


@dataclass(frozen=True)
class Geometry:
    height: int
    width: int
    ph: int  # patch height
    pw: int  # patch width

    @classmethod
    def of(cls, height: int, width: int, patch: int = PATCH) -> "Geometry":
        return cls(height, width, min(patch, height), min(patch, width))

    @property
    def rows(self) -> int:
        return -(-self.height // self.ph)

    @property
    def cols(self) -> int:
        return -(-self.width // self.pw)

    @property
    def patches(self) -> int:
        return self.rows * self.cols

    @property
    def steps(self) -> int:
        return SLOPE * (self.ph - 1) + self.pw

    def step_positions(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(self.ph)
        j = t - SLOPE * i
        keep = (j >= 0) & (j < self.pw)
        return i[keep], j[keep]

    def to_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) uint8 → (ph, pw, patches, 3), margins zero."""
        padded = torch.zeros(self.rows * self.ph, self.cols * self.pw, 3, dtype=pixels.dtype)
        padded[: self.height, : self.width] = pixels
        p = padded.view(self.rows, self.ph, self.cols, self.pw, 3).permute(1, 3, 0, 2, 4)
        return p.reshape(self.ph, self.pw, self.patches, 3)

    def from_patches(self, p: torch.Tensor) -> torch.Tensor:
        x = p.view(self.ph, self.pw, self.rows, self.cols, 3).permute(2, 0, 3, 1, 4)
        return x.reshape(self.rows * self.ph, self.cols * self.pw, 3)[: self.height, : self.width]

    def inside(self) -> torch.Tensor:
        """(ph, pw, patches) bool: whether a patch position holds an image pixel."""
        ones = torch.ones(self.height, self.width, 3, dtype=torch.uint8)
        return self.to_patches(ones)[..., 0].bool()


def _diagonal(cache: torch.Tensor, row: int, col: int, n: int) -> torch.Tensor:
    """View (n, patches, C) of cache positions (row + s, col − SLOPE·s), s = 0..n−1.

    A step's positions lie on such a diagonal, and so do their positions shifted by any
    tap: in a contiguous (rows, cols, patches, C) cache that is a constant stride, so taps
    are read and written as views, without gathering copies."""
    s_row, s_col = cache.stride(0), cache.stride(1)
    return cache.as_strided((n, cache.shape[2], cache.shape[3]), (s_row - SLOPE * s_col, cache.stride(2), 1),
                            cache.storage_offset() + row * s_row + col * s_col)


def run(model: MGCF, geom: Geometry, code_step, n_p: int | None = None) -> torch.Tensor:
    """Scan all steps over ``n_p`` patches (default: all of them) of ``geom``'s shape;
    ``code_step(t, i, j, raw)`` gets the head output (n, n_p, 10K) of the step's positions
    and returns their pixel values (n, n_p, 3) uint8. Returns the pixels (ph, pw, n_p, 3)."""
    k, r, dim = model.kernel, model.kernel // 2, model.dim
    n_p = geom.patches if n_p is None else n_p
    taps_a, taps_b = taps(k, False), taps(k, True)
    w_emb = torch.stack([model.embed.weight[:, :, dy + r, dx + r] for dy, dx in taps_a])  # (T_A, dim, 3)
    w_emb = w_emb.permute(0, 2, 1).reshape(-1, dim)                                      # (T_A·3, dim)
    w_dw = [[blk.dw.weight[:, 0, dy + r, dx + r].clone() for dy, dx in taps_b] for blk in model.blocks]
    pixels = torch.zeros(geom.ph, geom.pw, n_p, 3, dtype=torch.uint8)
    x_cache = torch.zeros(geom.ph + 2 * r, geom.pw + 2 * r, n_p, 3)
    a_cache = [torch.zeros(geom.ph + 2 * r, geom.pw + 2 * r, n_p, dim) for _ in model.blocks]
    with torch.inference_mode():
        for t in range(geom.steps):
            i, j = geom.step_positions(t)
            n, i0, j0 = len(i), int(i[0]), int(j[0])
            ctx = torch.cat([_diagonal(x_cache, i0 + dy + r, j0 + dx + r, n) for dy, dx in taps_a], dim=2)
            h = ctx.reshape(n * n_p, -1) @ w_emb + model.embed.bias
            for blk, cache, wd in zip(model.blocks, a_cache, w_dw):
                u = blk.norm1(h)
                _diagonal(cache, i0 + r, j0 + r, n).copy_(blk.w_a(u).view(n, n_p, dim))
                conv = blk.dw.bias.expand(n, n_p, dim).clone()
                for (dy, dx), w in zip(taps_b, wd):
                    conv.addcmul_(_diagonal(cache, i0 + dy + r, j0 + dx + r, n), w)
                h = h + F.silu(conv.view(n * n_p, dim)) * blk.w_v(u)
                h = h + blk.mlp2(F.gelu(blk.mlp1(blk.norm2(h))))
            raw = model.with_prior(model.head(h).view(n, n_p, -1), _diagonal(x_cache, i0 + r, j0 + r - 1, n),
                                   _diagonal(x_cache, i0 + r - 1, j0 + r, n), _diagonal(x_cache, i0 + r - 1, j0 + r - 1, n))
            values = code_step(t, i, j, raw)
            pixels[i, j] = values
            _diagonal(x_cache, i0 + r, j0 + r, n).copy_(MGCF.normalise(values))
    return pixels


def full_forward(model: MGCF, geom: Geometry, pixels: torch.Tensor) -> torch.Tensor:
    """The training forward over the same patches: head output (ph, pw, patches, 10K)."""
    p = geom.to_patches(pixels).permute(2, 3, 0, 1)  # (patches, 3, ph, pw)
    with torch.inference_mode():
        raw = model(MGCF.normalise(p))                # (patches, ph, pw, 10K)
    return raw.permute(1, 2, 0, 3)
