"""Per-image adapters of the enhancement filter (PAPERS.md §1, applied to a post-filter).

The adapters rescale each input-channel slice of the filter's last convolution and shift
its bias. The filter output is *linear* in those parameters (the features entering the last
layer do not depend on them), so the encoder does not need gradient descent: it computes the
per-channel contribution maps ``B[o, c] = W[o, c] * h[c]`` once, accumulates their Gram
matrix against the residual ``x − x̂`` tile by tile, and minimises the exact rate–distortion
cost over the *integer* adapter symbols::

    J(k) = bits(k) + λ · SSE(step ⊙ k)        SSE quadratic in k, bits from the coded prior

(closed-form least squares, rounding, then coordinate descent on ±1 moves and zeroing, each
move's ΔSSE read off the Gram matrix). Two shapes, chosen per image by the same cost:

* ``shared``: one scale per feature channel for all three colours + one bias per colour
  (C + 3 = 35 parameters for the shipped filter);
* ``per_colour``: one scale per (colour, feature channel) + one bias per colour (3·C + 3 = 99).

The decoder merges them into the last layer (``W'[o, c] = W[o, c]·(1 + δ[o, c])``,
``b'[o] = b[o] + β[o]``): no decode-time cost. Symbols are entropy-coded with a discretised
zero-mean logistic prior (CompressAI's rANS with a 16-bit CDF computed in float64 from
constants, identical everywhere), as the adaptive codec codes its adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pixarc.entropy import logistic_cdf, rans_decode, rans_encode

from .model import EnhanceNet, crop_out

SCALE_STEP = 0.03  # δ per symbol: 3 % of a feature channel's contribution
BIAS_STEP = 0.5 / 255  # β per symbol: half a grey level
K = 15  # symbols in [-K, K]
PRIOR_SCALE = 0.35  # logistic scale, in symbol units: a zero costs ≈0.7 bit, ±1 ≈2.5 bits (sparse adapters)
MODES = {1: "shared", 2: "per_colour"}


# ------------------------------------------------------------------ the prior and its coder


def symbol_bits() -> np.ndarray:
    """-log2 p(k) for k = -K..K under the coder's own 16-bit table (what the bits cost)."""
    return -np.log2(np.diff(np.array(_cdf()[: 2 * K + 2], dtype=np.float64)) / 65536)


def _cdf() -> tuple[int, ...]:
    return logistic_cdf(K, PRIOR_SCALE)


def coder_available() -> bool:
    from pixarc import compressai_compat

    return compressai_compat.available()


def encode_symbols(symbols: list[int]) -> bytes:
    return rans_encode(symbols, [_cdf()], offsets=-K)


def decode_symbols(data: bytes, n: int) -> list[int]:
    # rANS cannot tell a truncated or padded string: the coded bytes must be exactly the
    # encoding of what they decode to
    out = rans_decode(data, n, [_cdf()], offsets=-K)
    if any(abs(s) > K for s in out) or encode_symbols(out) != data:
        raise ValueError("adapter bytes are not a valid encoding")
    return out


# ------------------------------------------------------------------ shapes


def n_params(mode: int, channels: int) -> int:
    if mode == 1:
        return channels + 3
    if mode == 2:
        return 3 * channels + 3
    raise ValueError(f"unknown adapter mode {mode}")


def _layout(mode: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, step): P maps the mode's parameters onto the full (3, C + 1) table of
    (scale deltas, bias) per colour; step is each parameter's quantisation step."""
    n = n_params(mode, channels)
    full = 3 * (channels + 1)
    P = np.zeros((full, n))
    step = np.empty(n)
    for o in range(3):
        for c in range(channels):
            j = c if mode == 1 else o * channels + c
            P[o * (channels + 1) + c, j] = 1.0
            step[j] = SCALE_STEP
        j = n - 3 + o
        P[o * (channels + 1) + channels, j] = 1.0
        step[j] = BIAS_STEP
    return P, step


def merged_tail(net: EnhanceNet, mode: int, symbols: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's (weight, bias) with the adapters merged in."""
    C = net.channels
    P, step = _layout(mode, C)
    table = torch.from_numpy(P @ (np.asarray(symbols, np.float64) * step)).float().view(3, C + 1)
    w = net.tail.weight * (1 + table[:, :C])[:, :, None, None]
    b = net.tail.bias + table[:, C]
    return w, b


# ------------------------------------------------------------------ the encoder's fit


@dataclass
class Stats:
    """Sufficient statistics of the image for the adapter fit (float64, 255-scale SSE)."""

    gram: np.ndarray  # (3, C+1, C+1)
    corr: np.ndarray  # (3, C+1)
    sse0: float  # SSE of the filter without adapters (unclamped, unrounded)


CHUNK = 1 << 16  # pixels per float32 product; sums of chunks accumulate in float64
SUBSAMPLE_PIXELS = 1 << 16  # above this many pixels the Gram matrices sample every 2nd row and column


@torch.no_grad()
def statistics(net: EnhanceNet, parts, x: torch.Tensor, y: torch.Tensor | None = None) -> Stats:
    """Gram matrices of the per-channel contribution maps (and a constant, for the bias)
    against the residual, from :func:`model.feature_tiles` output. ``y``: the filter's
    output without adapters (:func:`model.finish` of the same parts), where the encoder has
    it already: the residual is taken from it instead of running the last layer again.

    All three colours' maps come from one grouped convolution (channel ``3c + o`` is
    ``W[o, c] * h[c]``); products run in float32 over chunks of :data:`CHUNK` pixels (the
    fit needs a few significant digits, not the last float bit) and add up in float64.
    Images over :data:`SUBSAMPLE_PIXELS` pixels: the Gram matrices come from every second
    row and column (a stride-2 convolution, a quarter of the work), scaled to the whole
    image; 35 or 99 parameters are estimated as well from sixteen thousand pixels or more,
    and the encoder measures the chosen adapters' SSE exactly afterwards."""
    C = net.channels
    gram = np.zeros((3, C + 1, C + 1))
    corr = np.zeros((3, C + 1))
    sse0 = 0.0
    W = net.tail.weight
    grouped = W.permute(1, 0, 2, 3).reshape(3 * C, 1, 3, 3)
    step = 2 if x.shape[2] * x.shape[3] > SUBSAMPLE_PIXELS else 1
    scale = 0.0  # pixels sampled, to scale the sums to the whole image
    for ob, ib, xi, h in parts:
        if y is None:
            out = crop_out(xi + F.conv2d(h, W, net.tail.bias, padding=1), ob, ib)
        else:
            out = y[..., ob[0] : ob[1], ob[2] : ob[3]]
        t = ((x[..., ob[0] : ob[1], ob[2] : ob[3]] - out) * 255)[0]
        sse0 += float((t * t).sum(dtype=torch.float64))
        # sampled positions: tile coordinates that are multiples of ``step`` inside the out box
        oy, ox = ob[0] - ib[0], ob[2] - ib[2]
        sy, sx = -(-oy // step), -(-ox // step)
        ey, ex = -(-(ob[1] - ib[0]) // step), -(-(ob[3] - ib[2]) // step)
        conv = F.conv2d(h, grouped, groups=C, padding=1, stride=step)[0, :, sy:ey, sx:ex]
        n = conv.shape[1] * conv.shape[2]
        maps = (conv * 255).contiguous().reshape(C, 3, n)
        ts = t[:, sy * step - oy :: step, sx * step - ox :: step].reshape(3, -1)
        scale += n
        for o in range(3):
            B, to = maps[:, o], ts[o]
            for a in range(0, n, CHUNK):
                Bc = B[:, a : a + CHUNK]
                gram[o, :C, :C] += (Bc @ Bc.T).double().numpy()
                corr[o, :C] += (Bc @ to[a : a + CHUNK]).double().numpy()
            s = B.sum(1, dtype=torch.float64).numpy() * 255
            gram[o, :C, C] += s
            gram[o, C, :C] += s
            gram[o, C, C] += 255.0**2 * n
            corr[o, C] += 255.0 * float(to.sum(dtype=torch.float64))
    if step > 1:
        f = x.shape[2] * x.shape[3] / max(1.0, scale)
        gram *= f
        corr *= f
    return Stats(gram, corr, sse0)


def fit(stats: Stats, mode: int, lam: float, sweeps: int = 8) -> tuple[list[int], float, float]:
    """Integer symbols minimising bits + λ·SSE for one adapter shape.

    Returns (symbols, predicted SSE, predicted bits). ``lam``: bits per unit of SSE (on
    the 0..255 scale) — the base codec's local rate–distortion slope."""
    C = stats.gram.shape[1] - 1
    P, step = _layout(mode, C)
    G = np.zeros((3 * (C + 1),) * 2)
    for o in range(3):
        G[o * (C + 1) : (o + 1) * (C + 1), o * (C + 1) : (o + 1) * (C + 1)] = stats.gram[o]
    # In symbol units: SSE(k) = sse0 − 2·bᵀk + kᵀAk
    S = P * step[None, :]
    A = S.T @ G @ S
    b = S.T @ stats.corr.reshape(-1)
    bits_tab = symbol_bits()
    n = len(step)
    try:
        k_ls = np.linalg.solve(A + 1e-9 * np.trace(A) / n * np.eye(n) + 1e-12 * np.eye(n), b)
    except np.linalg.LinAlgError:
        k_ls = np.zeros(n)
    best = None
    for start in (np.clip(np.round(k_ls), -K, K), np.zeros(n)):
        k = start.astype(np.int64)
        r = A @ k - b  # half the gradient of SSE in k
        for _ in range(sweeps):
            changed = False
            for i in range(n):
                cur = k[i]
                best_d, best_gain = 0, 0.0
                for new in {cur - 1, cur + 1, 0}:
                    if new == cur or abs(new) > K:
                        continue
                    d = new - cur
                    d_sse = d * d * A[i, i] + 2 * d * r[i]
                    gain = lam * d_sse + bits_tab[new + K] - bits_tab[cur + K]
                    if gain < best_gain - 1e-12:
                        best_d, best_gain = d, gain
                if best_d:
                    k[i] += best_d
                    r += A[:, i] * best_d
                    changed = True
            if not changed:
                break
        sse = stats.sse0 - 2 * b @ k + k @ A @ k
        bits = float(bits_tab[k + K].sum())
        cost = bits + lam * sse
        if best is None or cost < best[0]:
            best = (cost, k.copy(), float(sse), bits)
    return [int(v) for v in best[1]], best[2], best[3]
