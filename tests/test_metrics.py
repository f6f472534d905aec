import math

import numpy as np
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


def test_ms_ssim_identity_and_degradation_and_small_images():
    im = rng_image("RGB", (200, 180))
    assert abs(ms_ssim(im, im) - 1.0) < 1e-6
    noisy = Image.fromarray(np.clip(np.asarray(im).astype(int) + 40, 0, 255).astype(np.uint8))
    assert ms_ssim(im, noisy) < 0.999
    small = rng_image("RGBA", (30, 25))
    assert abs(ms_ssim(small, small) - 1.0) < 1e-6  # fewer scales, alpha dropped
    assert math.isnan(ms_ssim(rng_image("L", (8, 8)), rng_image("L", (8, 8))))
