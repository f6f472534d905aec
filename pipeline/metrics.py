"""Fidelity metrics on canonical pixels: PSNR (numpy) and MS-SSIM (pytorch-msssim)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

_MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN = 11


def _array(image: Image.Image) -> np.ndarray:
    a = np.asarray(image)
    return a.astype(np.float64).reshape(a.shape[0], a.shape[1], -1)


def peak(mode: str) -> float:
    return 65535.0 if mode.startswith("I;16") else 255.0


def psnr(reference: Image.Image, test: Image.Image) -> float:
    """PSNR in dB over all channels (alpha included); ``inf`` when identical."""
    if reference.size != test.size or reference.mode != test.mode:
        raise ValueError(f"cannot compare {reference.mode} {reference.size} with {test.mode} {test.size}")
    mse = float(np.mean((_array(reference) - _array(test)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak(reference.mode) ** 2 / mse)


def ms_ssim(reference: Image.Image, test: Image.Image) -> float:
    """MS-SSIM on colour/grey channels (alpha dropped).

    Images too small for five scales use as many scales as fit (weights renormalised);
    below one 11-pixel window the value is NaN.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim, ssim as _ssim

    ref, tst = _array(reference), _array(test)
    if reference.mode in ("LA", "RGBA"):
        ref, tst = ref[..., :-1], tst[..., :-1]
    side = min(ref.shape[0], ref.shape[1])
    levels = 0
    while levels < 5 and side > (_WIN - 1) * 2**levels:
        levels += 1
    if levels == 0:
        return math.nan
    x = torch.from_numpy(ref).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(tst).permute(2, 0, 1)[None].float()
    rng = peak(reference.mode)
    with torch.no_grad():
        if levels == 5:
            return float(_ms_ssim(x, y, data_range=rng, size_average=True))
        if levels == 1:
            return float(_ssim(x, y, data_range=rng, size_average=True))
        return _ms_ssim_few_levels(x, y, rng, levels)


def _ms_ssim_few_levels(x, y, data_range: float, levels: int) -> float:
    """MS-SSIM over ``levels`` < 5 scales (pytorch-msssim insists on five)."""
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    w = torch.tensor(_MSSSIM_WEIGHTS[:levels])
    w = w / w.sum()
    win = _fspecial_gauss_1d(_WIN, 1.5).repeat([x.shape[1]] + [1] * 3)
    mcs = []
    for i in range(levels):
        ssim_pc, cs = _ssim(x, y, data_range=data_range, win=win, size_average=False, K=(0.01, 0.03))
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    vals = torch.stack(mcs + [torch.relu(ssim_pc)], dim=0)
    return float(torch.prod(vals ** w.view(-1, 1, 1), dim=0).mean())
