"""MGCF: the masked convolutional gating network of CALLIC (PAPERS.md §2), sized for a CPU.

    embedding   masked k×k conv (type A: the current pixel is not seen), 3 → dim
    block × D   x += swish(masked depth-wise k×k conv(W_A·LN(x))) ⊙ (W_V·LN(x))
                x += W_2·GELU(W_1·LN(x))                       (MLP, 2 linear + GELU)
    head        LN → Linear → GELU → Linear → K-component discrete logistic mixture per
                sub-pixel, the G and B means conditioned on the R (and G) values (PixelCNN++),
                the means a residual over the MED predictor (``with_prior``)

The masks follow the parallel scan, not raster order: pixel (i, j) of a patch is coded at
step ``t = SLOPE·i + j``, and a tap (dy, dx) is allowed iff ``SLOPE·dy + dx < 0`` (type A;
type B also keeps the centre). Every tap then points at a pixel coded at an earlier step,
so all pixels of one step can be decoded at once: a P×P patch takes ``(SLOPE+1)(P−1)+1``
steps (190 for P = 64, SLOPE = 2, as in DLPR/CALLIC). Every other operation is per
position, which is what lets ``wavefront.py`` compute only the newly revealed positions.

All parameters of the mixture are produced here in float; ``coder.py`` quantises them to
an integer grid before any CDF is built.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .constants import COEF_Q

SLOPE = 2        # scan slope: pixel (i, j) is coded at step SLOPE·i + j
LOG_SCALE_MIN = -3.0   # logistic scale bounds, pixel units (the integer grid in coder.py covers them)
LOG_SCALE_MAX = 5.0


def taps(kernel: int, centre: bool) -> list[tuple[int, int]]:
    """Kernel offsets (dy, dx) visible under the scan-order mask, in a fixed order."""
    r = kernel // 2
    out = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if SLOPE * dy + dx < 0]
    return out + [(0, 0)] if centre else out


def mask(kernel: int, centre: bool) -> torch.Tensor:
    m = torch.zeros(kernel, kernel)
    r = kernel // 2
    for dy, dx in taps(kernel, centre):
        m[dy + r, dx + r] = 1.0
    return m


class MGCF(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 3, kernel: int = 7, mixtures: int = 5, hidden: int = 2,
                 coef_q: int = COEF_Q):
        super().__init__()
        self.dim, self.depth, self.kernel, self.mixtures = dim, depth, kernel, mixtures
        self.coef_q = coef_q  # the integer grid of the channel coefficients when coding (coder.Quantised)
        self.channels = 3
        self.embed = nn.Conv2d(3, dim, kernel, padding=kernel // 2)
        self.register_buffer("mask_a", mask(kernel, False), persistent=False)
        self.register_buffer("mask_b", mask(kernel, True), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, kernel, hidden) for _ in range(depth))
        self.head_norm = nn.LayerNorm(dim)
        self.head1 = nn.Linear(dim, dim)
        self.head2 = nn.Linear(dim, mixtures * 10)  # per component: logit, 3 means, 3 log-scales, 3 coefficients
        with torch.no_grad():  # start near "MED prediction, scale e^2": useful from the first steps
            self.head2.weight.mul_(0.1)
            self.head2.bias.zero_()
            self.head2.bias[4 * mixtures : 7 * mixtures] = 2.0

    def config(self) -> dict:
        return {"dim": self.dim, "depth": self.depth, "kernel": self.kernel, "mixtures": self.mixtures,
                "coef_q": self.coef_q}

    @staticmethod
    def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.float() / 127.5 - 1.0

    def head(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-position features (..., dim) → raw mixture parameters (..., 10K). ``params``:
        the head's parameters by name (``head_norm.weight`` ...) to use instead of the
        module's (per-image adaptation)."""
        w = self._lookup(params)
        # the modules' own forward passes, with the weights looked up: the same operations either way
        h = F.layer_norm(x, (self.dim,), w("head_norm.weight"), w("head_norm.bias"), self.head_norm.eps)
        h = F.gelu(F.linear(h, w("head1.weight"), w("head1.bias")))
        return F.linear(h, w("head2.weight"), w("head2.bias"))

    def tail(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """What follows the last block's spatial mixing, all of it per position: that block's
        MLP, then the head. ``x``: :meth:`features` ``(before_mlp=True)``; ``params`` as in
        :meth:`head` (the MLP's by their full names, ``blocks.<D-1>.mlp1.weight`` ...)."""
        return self.head(self.blocks[-1].mlp(x, self._lookup(params), f"blocks.{self.depth - 1}."), params)

    def _lookup(self, params: dict[str, torch.Tensor] | None):
        """A parameter by its full name: from ``params`` when there, else the module's own."""
        p = params or {}

        def w(name: str) -> torch.Tensor:
            return p[name] if name in p else operator.attrgetter(name)(self)  # (a plain tensor under functional_call)

        return w

    def with_prior(self, raw: torch.Tensor, left: torch.Tensor, up: torch.Tensor, upleft: torch.Tensor) -> torch.Tensor:
        """Add the MED (LOCO-I) prediction from the left, upper and upper-left pixels (..., 3),
        normalised, to every component's means: the network learns a residual. Not in the
        paper; an inductive bias that makes a short CPU training useful."""
        lo, hi = torch.minimum(left, up), torch.maximum(left, up)
        med = torch.where(upleft >= hi, lo, torch.where(upleft <= lo, hi, left + up - upleft))
        k = self.mixtures
        means = raw[..., k : 4 * k] + med.repeat_interleave(k, dim=-1)
        return torch.cat([raw[..., :k], means, raw[..., 4 * k :]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full (training) forward: normalised patches (B, 3, H, W) → parameters (B, H, W, 10K).

        Zero padding at the borders is the same as the wavefront's zero-initialised caches."""
        return self.with_prior(self.head(self.features(x)), *self.neighbours(x))

    def features(self, x: torch.Tensor, before_mlp: bool = False) -> torch.Tensor:
        """What the head reads: normalised patches (B, 3, H, W) → (B, H, W, dim); with
        ``before_mlp``, what :meth:`tail` reads (the last block's MLP not applied; a model
        without blocks has none)."""
        h = F.conv2d(x, self.embed.weight * self.mask_a, self.embed.bias, padding=self.kernel // 2)
        h = h.permute(0, 2, 3, 1)  # channels last: every op but the depth-wise conv is per position
        for blk in self.blocks[:-1]:
            h = blk(h, self.mask_b)
        if not self.blocks:  # depth 0: the embedding is what the head reads
            return h
        h = self.blocks[-1].mix(h, self.mask_b)
        return h if before_mlp else self.blocks[-1].mlp(h)

    @staticmethod
    def neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The left, upper and upper-left pixels of every position (B, H, W, 3 each) that
        :meth:`with_prior` reads; zero outside the patch, as the wavefront's caches."""
        xp = F.pad(x, (1, 0, 1, 0)).permute(0, 2, 3, 1)  # (B, H+1, W+1, 3)
        return xp[:, 1:, :-1], xp[:, :-1, 1:], xp[:, :-1, :-1]


class Block(nn.Module):
    def __init__(self, dim: int, kernel: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.w_a = nn.Linear(dim, dim)
        self.w_v = nn.Linear(dim, dim)
        self.dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp1 = nn.Linear(dim, hidden * dim)
        self.mlp2 = nn.Linear(hidden * dim, dim)

    def forward(self, h: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.mix(h, mask_b))

    def mix(self, h: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
        """The gated spatial mixing (the block's only operation across positions)."""
        u = self.norm1(h)
        a = self.w_a(u).permute(0, 3, 1, 2)
        a = F.conv2d(a, self.dw.weight * mask_b, self.dw.bias, padding=self.dw.padding, groups=a.shape[1])
        return h + F.silu(a.permute(0, 2, 3, 1)) * self.w_v(u)

    def mlp(self, h: torch.Tensor, w=None, prefix: str = "") -> torch.Tensor:
        """The MLP, per position; ``w``: a parameter by its full name (``prefix`` + local
        name; :meth:`MGCF._lookup`) instead of the block's own: the same operations either way."""
        def p(name: str) -> torch.Tensor:
            return w(prefix + name) if w is not None else operator.attrgetter(name)(self)

        u = F.layer_norm(h, (self.norm2.normalized_shape[0],), p("norm2.weight"), p("norm2.bias"), self.norm2.eps)
        return h + F.linear(F.gelu(F.linear(u, p("mlp1.weight"), p("mlp1.bias"))), p("mlp2.weight"), p("mlp2.bias"))


def split_params(raw: torch.Tensor, k: int):
    """Raw head output (..., 10K) → logits (..., K), means and log-scales (..., 3, K) in pixel
    units, coefficients (..., 3, K) in [-1, 1] (alpha: G|R, beta: B|R, gamma: B|G)."""
    logits = raw[..., :k]
    means = 127.5 + 127.5 * raw[..., k : 4 * k].unflatten(-1, (3, k))
    log_scales = raw[..., 4 * k : 7 * k].unflatten(-1, (3, k)).clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
    coeffs = torch.tanh(raw[..., 7 * k : 10 * k].unflatten(-1, (3, k)))
    return logits, means, log_scales, coeffs


def nll_bits(raw: torch.Tensor, x_uint8: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Bits of each sub-pixel under the discretised logistic mixture (training loss).

    raw (B, H, W, 10K); x_uint8 (B, 3, H, W) integers 0..255. Returns (B, H, W, channels).
    The edge bins 0 and 255 take the tails, so the distribution sums to one over 0..255."""
    k = raw.shape[-1] // 10
    logits, means, log_scales, coeffs = split_params(raw, k)
    x = x_uint8.permute(0, 2, 3, 1).float()[..., None]  # (B, H, W, 3, 1), pixel units
    centred = x - 127.5
    mu_r = means[..., 0, :]
    mu_g = means[..., 1, :] + coeffs[..., 0, :] * centred[..., 0, :]
    mu_b = means[..., 2, :] + coeffs[..., 1, :] * centred[..., 0, :] + coeffs[..., 2, :] * centred[..., 1, :]
    mu = torch.stack([mu_r, mu_g, mu_b], dim=-2)[..., :channels, :]
    inv_s = torch.exp(-log_scales[..., :channels, :])
    xc = x[..., :channels, :]
    upper = torch.where(xc >= 255, torch.full_like(xc, math.inf), (xc + 0.5 - mu) * inv_s)
    lower = torch.where(xc <= 0, torch.full_like(xc, -math.inf), (xc - 0.5 - mu) * inv_s)
    # log(σ(u) − σ(l)) computed stably: log σ(u) + log(1 − exp(log σ(l) − log σ(u)))
    log_cdf_u = F.logsigmoid(upper)
    log_cdf_l = F.logsigmoid(lower)
    log_p = log_cdf_u + torch.log(-torch.expm1((log_cdf_l - log_cdf_u).clamp(max=-1e-6)))
    log_mix = torch.log_softmax(logits, dim=-1)[..., None, :]
    log_px = torch.logsumexp(log_p + log_mix, dim=-1)
    return -log_px / math.log(2)
