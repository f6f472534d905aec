"""Fidelity metrics on canonical pixels: PSNR and MS-SSIM, both in numpy (no torch in the core)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

_MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN = 11


def squared_error(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of squared differences, exactly: in integers for 8- and 16-bit samples (≈ 6×
    faster than in float64 on a 0.3 MP RGB image; the same value, every partial sum being
    an integer below 2**53), in float64 otherwise."""
    if a.dtype.kind == b.dtype.kind == "u" and max(a.dtype.itemsize, b.dtype.itemsize) <= 2:
        narrow = a.dtype.itemsize == b.dtype.itemsize == 1
        d = a.astype(np.int16 if narrow else np.int32) - b.astype(np.int16 if narrow else np.int32)
        return float(np.square(d, dtype=np.int32 if narrow else np.int64).sum(dtype=np.int64))
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.sum(d * d))


def peak(mode: str) -> float:
    return 65535.0 if mode.startswith("I;16") else 255.0


def psnr(reference: Image.Image, test: Image.Image) -> float:
    """PSNR in dB over all channels (alpha included); ``inf`` when identical."""
    if reference.size != test.size or reference.mode != test.mode:
        raise ValueError(f"cannot compare {reference.mode} {reference.size} with {test.mode} {test.size}")
    a, b = np.asarray(reference), np.asarray(test)
    mse = squared_error(a, b) / max(1, a.size)
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak(reference.mode) ** 2 / mse)


def ms_ssim(reference: Image.Image, test: Image.Image) -> float:
    """MS-SSIM on colour/grey channels (alpha dropped), in numpy: the same computation as
    pytorch-msssim (11-tap Gaussian window, sigma 1.5, valid filtering, K = (0.01, 0.03),
    2x2 average pooling with odd-size padding, negative scores clipped to 0), so the core
    needs no torch. tests/test_metrics.py checks it against pytorch-msssim when installed.

    Images too small for five scales use as many scales as fit (weights renormalised);
    below one 11-pixel window the value is NaN. Planes are laid out channel first, so
    both filter passes run along contiguous rows (0.14 s instead of 0.24 s per 0.3 MP).
    """
    ref, tst = _planes(reference), _planes(test)
    side = min(ref.shape[1], ref.shape[2])
    levels = 0
    while levels < 5 and side > (_WIN - 1) * 2**levels:
        levels += 1
    if levels == 0:
        return math.nan
    rng = peak(reference.mode)
    if levels == 1:  # plain SSIM (pytorch-msssim's ssim() does not clip at 0)
        return float(np.mean(_ssim(ref, tst, rng)[0]))
    w = np.asarray(_MSSSIM_WEIGHTS[:levels])
    w = w / w.sum()
    factors = []
    x, y = ref, tst
    for i in range(levels):
        ssim_pc, cs_pc = _ssim(x, y, rng)
        if i < levels - 1:
            factors.append(np.maximum(cs_pc, 0.0))
            x, y = _avg_pool2(x), _avg_pool2(y)
    factors.append(np.maximum(ssim_pc, 0.0))
    vals = np.stack(factors)  # (levels, channels)
    return float(np.mean(np.prod(vals ** w[:, None], axis=0)))


def _planes(image: Image.Image) -> np.ndarray:
    """(C, H, W) float64 planes, alpha dropped."""
    a = np.asarray(image)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    if image.mode in ("LA", "RGBA"):
        a = a[..., :-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float64)


def _gauss_window(size: int = _WIN, sigma: float = 1.5) -> np.ndarray:
    coords = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filtering of a (C, H, W) stack along W then H (scipy's
    C loops: ≈10× faster than sliding windows in numpy on a 0.3-megapixel image)."""
    from scipy.ndimage import correlate1d

    r = len(g) // 2
    a = correlate1d(a, g, axis=2, mode="constant")[:, :, r : a.shape[2] - r]
    return correlate1d(a, g, axis=1, mode="constant")[:, r : a.shape[1] - r]


def _ssim(x: np.ndarray, y: np.ndarray, data_range: float, k: tuple[float, float] = (0.01, 0.03)):
    """Per-channel SSIM and contrast-structure means of (C, H, W) arrays."""
    g = _gauss_window()
    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    n = x.shape[0]
    # the five filtered maps in one pass over a (5C, H, W) stack
    f = _filter_valid(np.concatenate([x, y, x * x, y * y, x * y], axis=0), g)
    mu1, mu2 = f[:n], f[n : 2 * n]
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = f[2 * n : 3 * n] - mu1_sq
    s2 = f[3 * n : 4 * n] - mu2_sq
    s12 = f[4 * n :] - mu12
    cs_map = (2 * s12 + c2) / (s1 + s2 + c2)
    ssim_map = ((2 * mu12 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return ssim_map.mean(axis=(1, 2)), cs_map.mean(axis=(1, 2))


def _avg_pool2(a: np.ndarray) -> np.ndarray:
    """torch's avg_pool2d(kernel 2, stride 2, padding = size % 2, zeros counted), on (C, H, W)."""
    ph, pw = a.shape[1] % 2, a.shape[2] % 2
    a = np.pad(a, ((0, 0), (ph, ph), (pw, pw)))
    h, w = (a.shape[1] - 2) // 2 + 1, (a.shape[2] - 2) // 2 + 1
    a = a[:, : 2 * h, : 2 * w]
    return (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) / 4.0
