import math

import numpy as np
import pytest
from PIL import Image

from conftest import rng_image
from pixarc.metrics import ms_ssim, psnr


def test_psnr_known_value():
    a = Image.fromarray(np.zeros((10, 10), np.uint8))
    b = Image.fromarray(np.full((10, 10), 10, np.uint8))
    assert psnr(a, b) == 10 * math.log10(255**2 / 100)
    assert psnr(a, a) == math.inf


def test_psnr_sixteen_bit_uses_its_peak():
    a = Image.fromarray(np.zeros((4, 4), np.uint16))
    b = Image.fromarray(np.full((4, 4), 655, np.uint16))
    assert abs(psnr(a, b) - 10 * math.log10(65535**2 / 655**2)) < 1e-9


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_psnr_in_integers_is_the_float64_mean_exactly(mode):
    """8- and 16-bit samples are compared in integers: the very value of the float64 mean
    of squared differences (every partial sum is an integer below 2**53), extremes too."""
    r = np.random.default_rng(7)
    if mode == "I;16":
        x = r.integers(0, 65536, (61, 47), dtype=np.uint16)
        y = r.integers(0, 65536, (61, 47), dtype=np.uint16)
        y[0, :5], x[0, :5] = 0, 65535  # the largest difference there is
    else:
        bands = len(mode)
        shape = (61, 47, bands) if bands > 1 else (61, 47)
        x, y = r.integers(0, 256, shape, dtype=np.uint8), r.integers(0, 256, shape, dtype=np.uint8)
        x[0, :5], y[0, :5] = 255, 0
    a, b = Image.fromarray(x, mode if mode != "I;16" else None), Image.fromarray(y, mode if mode != "I;16" else None)
    assert a.mode == mode
    mse = float(np.mean((np.asarray(a).astype(np.float64) - np.asarray(b).astype(np.float64)) ** 2))
    assert psnr(a, b) == 10 * math.log10((65535.0 if mode == "I;16" else 255.0) ** 2 / mse)


def test_ms_ssim_identity_and_degradation_and_small_images():
    im = rng_image("RGB", (200, 180))
    assert abs(ms_ssim(im, im) - 1.0) < 1e-6
    noisy = Image.fromarray(np.clip(np.asarray(im).astype(int) + 40, 0, 255).astype(np.uint8))
    assert ms_ssim(im, noisy) < 0.999
    small = rng_image("RGBA", (30, 25))
    assert abs(ms_ssim(small, small) - 1.0) < 1e-6  # fewer scales, alpha dropped
    assert math.isnan(ms_ssim(rng_image("L", (8, 8)), rng_image("L", (8, 8))))


def _torch_reference(ref: Image.Image, tst: Image.Image) -> float:
    """pytorch-msssim itself: ms_ssim (5 scales), ssim (1 scale), or its _ssim per scale
    with the same weights renormalised (2-4 scales, which its ms_ssim refuses)."""
    import torch
    import torch.nn.functional as F
    from pytorch_msssim import ms_ssim as t_ms_ssim, ssim as t_ssim
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    from pixarc.metrics import _MSSSIM_WEIGHTS, peak

    a, b = np.asarray(ref, np.float64), np.asarray(tst, np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    rng = peak(ref.mode)
    side, levels = min(a.shape[:2]), 0
    while levels < 5 and side > 10 * 2**levels:
        levels += 1
    if levels == 5:
        return float(t_ms_ssim(x, y, data_range=rng))
    if levels == 1:
        return float(t_ssim(x, y, data_range=rng))
    w = torch.tensor(_MSSSIM_WEIGHTS[:levels], dtype=torch.float32)
    w = w / w.sum()
    win = _fspecial_gauss_1d(11, 1.5).repeat([x.shape[1]] + [1] * 3)
    mcs = []
    for i in range(levels):
        s, cs = _ssim(x, y, data_range=rng, win=win, size_average=False, K=(0.01, 0.03))
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [d % 2 for d in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    vals = torch.stack(mcs + [torch.relu(s)], dim=0)
    return float(torch.prod(vals ** w.view(-1, 1, 1), dim=0).mean())


def test_numpy_ms_ssim_matches_pytorch_msssim():
    """The core's numpy MS-SSIM agrees with pytorch-msssim within 1e-3 (skipped only where
    pytorch-msssim is not installed: the numpy version itself is always tested above)."""
    import pytest

    pytest.importorskip("pytorch_msssim")
    r = np.random.default_rng(3)
    cases = []
    for size, mode in (((200, 181), "RGB"), ((170, 333), "L"), ((97, 64), "RGB"), ((45, 30), "L"), ((15, 12), "L")):
        w, h = size
        base = rng_image(mode, size, seed=w)
        smooth = np.asarray(base.resize((max(1, w // 8), max(1, h // 8))).resize((w, h), Image.BILINEAR), np.int16)
        for sigma in (3, 25):
            noisy = np.clip(smooth + r.normal(0, sigma, smooth.shape), 0, 255).astype(np.uint8)
            cases.append((Image.fromarray(smooth.astype(np.uint8), mode), Image.fromarray(noisy, mode)))
    for ref, tst in cases:
        ours, theirs = ms_ssim(ref, tst), _torch_reference(ref, tst)
        assert abs(ours - theirs) < 1e-3, (ref.size, ref.mode, ours, theirs)
    assert len({round(ms_ssim(a, b), 3) for a, b in cases}) > 5  # the cases really differ
