"""A per-image linear filter after the learned one (flag bit 3 of the payload).

The learned filter is the same for every image; what it leaves of each image's own error is
partly linear in the neighbourhood of its output. Per colour, a point-symmetric 5×5 filter
on the filter's float output ``y`` (0..255 scale)::

    y'(p) = y(p) + Σ_k s_k / 256 · (y(p + d_k) + y(p − d_k) − 2·y(p))      k = 1..12

(the 12 offsets d_k of one half of the 5×5 window; the form keeps flat areas and the mean
as they are), edges replicated, then rounded to 0..255. The 36 integers s_k (int8, one byte
each) are the least-squares fit against the original, rounded; the encoder sends them only
where they pay for their bytes (the RD cost that decides the filter and its adapters).
Like the adaptive loop filter of video codecs, but on top of a learned filter.

Exact on every machine: the learned filter's float output is (``model.Layout``), and this
runs in float64 in a fixed order of elementwise operations (no reductions).
"""

from __future__ import annotations

import numpy as np

OFFSETS = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) > (0, 0))
SCALE = 256
SIZE = 3 * len(OFFSETS)  # bytes in the payload
FIT_PIXELS = 1 << 16  # the fit samples every n-th row to stay near this many pixels (12 unknowns per colour)
BAND = 256  # rows per band of the filter (memory stays bounded on large images)


def _shifted(padded: np.ndarray, dy: int, dx: int, r0: int, r1: int, step: int, width: int) -> np.ndarray:
    """Rows ``r0:r1:step`` of one colour plane moved by (dy, dx), from the plane padded by 2
    (edges replicated): y(p + d) for every p of those rows."""
    return padded[2 + dy + r0 : 2 + dy + r1 : step, 2 + dx : 2 + dx + width]


def _differences(padded: np.ndarray, rows: slice, width: int):
    """(y(p + d) + y(p − d) − 2·y(p)) for each offset d over ``rows`` of one colour plane."""
    r0, r1, step = rows.indices(padded.shape[0] - 4)
    centre = _shifted(padded, 0, 0, r0, r1, step, width)
    for dy, dx in OFFSETS:
        yield _shifted(padded, dy, dx, r0, r1, step, width) + _shifted(padded, -dy, -dx, r0, r1, step, width) - 2 * centre


def fit(y: np.ndarray, orig: np.ndarray) -> np.ndarray:
    """Integer coefficients (3, 12) minimising the SSE of ``filtered(y, s)`` against
    ``orig`` (both (H, W, 3) float64, 0..255 scale), before rounding."""
    h, w = y.shape[:2]
    rows = slice(0, h, max(1, -(-h * w // FIT_PIXELS)))
    out = np.zeros((3, len(OFFSETS)), dtype=np.int64)
    for o in range(3):
        X = np.stack([d.ravel() for d in _differences(np.pad(y[..., o], 2, mode="edge"), rows, w)])  # (12, n)
        t = (orig[rows, :, o] - y[rows, :, o]).ravel()
        A = X @ X.T
        try:
            c = np.linalg.solve(A + 1e-9 * np.trace(A) * np.eye(len(OFFSETS)), X @ t)
        except np.linalg.LinAlgError:
            continue
        out[o] = np.clip(np.round(c * SCALE), -127, 127)
    return out


def filtered(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ``y`` (float64, 0..255) through the per-colour filters ``s``, band by
    band (the same elementwise operations per pixel whatever the band): the sum over the
    offsets of s_k·(y(p + d_k) + y(p − d_k)), minus 2·Σs_k·y(p), over 256, added to y."""
    h, w = y.shape[:2]
    out = np.empty(y.shape, dtype=np.uint8)
    for o in range(3):
        if not s[o].any():
            out[..., o] = np.clip(np.rint(y[..., o]), 0, 255)
            continue
        padded = np.pad(y[..., o], 2, mode="edge")
        for r0 in range(0, h, BAND):
            r1 = min(h, r0 + BAND)
            plane = y[r0:r1, :, o]
            acc = np.zeros_like(plane)
            pair = np.empty_like(plane)
            for k, (dy, dx) in enumerate(OFFSETS):
                if s[o, k]:
                    np.add(_shifted(padded, dy, dx, r0, r1, 1, w), _shifted(padded, -dy, -dx, r0, r1, 1, w), out=pair)
                    pair *= float(s[o, k])
                    acc += pair
            acc -= float(2 * s[o].sum()) * plane
            acc /= SCALE
            acc += plane
            out[r0:r1, :, o] = np.clip(np.rint(acc), 0, 255)
    return out


def pack(s: np.ndarray) -> bytes:
    return s.astype(np.int8).tobytes()


def unpack(data: bytes) -> np.ndarray:
    if len(data) != SIZE:
        raise ValueError("wiener coefficients: wrong length")
    return np.frombuffer(data, dtype=np.int8).astype(np.int64).reshape(3, len(OFFSETS))


def float_output(x) -> np.ndarray:
    """The learned filter's output (1, 3, H, W) float tensor as (H, W, 3) float64, 0..255
    (the same conversion on both sides)."""
    return x[0].permute(1, 2, 0).double().numpy() * 255.0
