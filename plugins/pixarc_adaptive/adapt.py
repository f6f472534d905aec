"""Per-image adaptation of a CompressAI mean-scale hyperprior (PAPERS.md §1).

Tsubota, Akutsu, Aizawa, "Universal Deep Image Compression via Content-Adaptive
Optimization with Adapters" (WACV 2023)::

    x ─g_a─▶ y ─h_a─▶ z                      encoder, then per image:
    1. latent refinement: y, z free; Adam on R(q̃(y), q̃(z)) + λ·255²·MSE(g_s(q̃(y)), x)
       with q̃ = stochastic Gumbel annealing (Yang et al. 2020), adapters at zero
    2. hard rounding, entropy coding of ẑ and ŷ (CompressAI rANS)
    3. adapters θ = (A, B), r(h) = A·Bᵀ·h after the last inverse GDN of g_s, trained on
       the fixed ŷ: −log2 p(θ̃) + λ·255²·MSE(g_s(ŷ; θ̂), x); θ̂ = w·round(θ/w) (STE),
       θ̃ = θ + U(−w/2, w/2), p = zero-mean logistic (s); θ̂ entropy-coded and sent

Entropy parameters (h_s and the CDF tables) are always evaluated on the CPU, in both the
encoder and the decoder, so a bitstream encoded on a GPU decodes on a CPU to the same
integer latents; ``Decoded.fingerprint`` (a hash of those integers) is what the archive
checks across devices, the pixels being float output of g_s.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pixarc.entropy import logistic_cdf, rans_decode, rans_encode

W_STEP = 0.06  # adapter quantisation step (paper)
PRIOR_SCALE = 0.05  # logistic prior scale (paper)
BOUND = 0.42  # |θ| clamp, the same in training and coding (the reference code mixes 0.42/0.45)
RANK = 2
K = round(BOUND / W_STEP)  # integer symbols in [-K, K]


# ------------------------------------------------------------------ quantisation helpers


def sga(x: torch.Tensor, tau: float) -> torch.Tensor:
    """Stochastic Gumbel annealing: a relaxed choice between floor and ceil (Yang et al. 2020)."""
    fl = torch.floor(x)
    d_fl = (x - fl).clamp(1e-5, 1 - 1e-5)
    logits = torch.stack([-torch.atanh(d_fl) / tau, -torch.atanh(1 - d_fl) / tau], dim=-1)
    w = F.gumbel_softmax(logits, tau=tau, hard=False)
    return fl + w[..., 1]


def tau_at(t: int, iters: int = 2000) -> float:
    """SGA temperature: the paper's ``min(0.5, 0.5·exp(−0.001·t))`` for runs of 2000 steps or
    more; a shorter run goes through the same schedule compressed into its ``iters`` steps
    (it ends at the paper's final τ ≈ 0.068 instead of still near 0.5, where the relaxed
    latents would be far from the hard-rounded ones that are coded; measured in
    ``benchmarks/adaptive_iters.py``)."""
    return min(0.5, 0.5 * math.exp(-0.001 * t * max(1.0, 2000 / max(1, iters))))


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def adapter_cdf() -> tuple[int, ...]:
    """Integer CDF (16-bit) of the discretised zero-mean logistic over [-K, K], computed in
    float64 from constants only, so it is identical everywhere."""
    return logistic_cdf(K, PRIOR_SCALE, W_STEP)


def encode_adapter(symbols: list[int]) -> bytes:
    return rans_encode(symbols, [adapter_cdf()], offsets=-K)


def decode_adapter(data: bytes, n: int) -> list[int]:
    return rans_decode(data, n, [adapter_cdf()], offsets=-K)


# ------------------------------------------------------------------ model pieces


class Synthesis:
    """g_s with the rank-2 adapter after its last inverse GDN (on N channels)."""

    def __init__(self, g_s: torch.nn.Sequential):
        self.g_s = g_s
        self.split = len(g_s) - 1  # [deconv, IGDN, deconv, IGDN, deconv, IGDN] | [deconv]
        self.channels = g_s[-1].in_channels

    def __call__(self, y_hat: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        """``theta``: one adapter (shape (n,)) for every image, or one per image (B, n)."""
        h = self.g_s[: self.split](y_hat)
        if theta is not None:
            t = theta.view(-1, 2, self.channels, RANK)
            w = t[:, 0] @ t[:, 1].transpose(1, 2)  # (B or 1, C, C) = A·Bᵀ
            h = h + torch.einsum("bdc,bchw->bdhw", w.expand(h.shape[0], -1, -1), h)
        return self.g_s[self.split :](h)


@dataclass
class Latents:
    y: torch.Tensor
    z: torch.Tensor


def entropy_params(model, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, means) from ẑ, on the CPU model: the device-independent path."""
    with torch.no_grad():
        scales, means = model.h_s(z_hat.cpu()).chunk(2, 1)
    return scales, means


class View:
    """What the decoder delivers from g_s's output: the padding cropped, then, for an image
    coded at a reduced scale, upscaled to the original size with Pillow's bicubic filter.

    The upscale is the same linear map Pillow applies (its separable a = -0.5 cubic kernel
    and edge normalisation, see :func:`pil_bicubic_matrix`), so refinement and adapters
    minimise the distortion of what the decoder outputs against the original image, not
    of the downscaled copy (to within Pillow's 8-bit rounding)."""

    def __init__(self, coded: tuple[int, int], out: tuple[int, int], device="cpu"):
        self.coded, self.out = coded, out  # (width, height) each
        self.resized = coded != out
        if self.resized:
            self.wy = pil_bicubic_matrix(coded[1], out[1]).to(device)
            self.wx = pil_bicubic_matrix(coded[0], out[0]).to(device)

    @property
    def pixels(self) -> int:
        return self.out[0] * self.out[1]

    def __call__(self, x_hat: torch.Tensor) -> torch.Tensor:
        # clamped where the decoder clamps: its 8-bit output, and Pillow's 8-bit pass between
        # the horizontal and the vertical filter (without it ringing at edges would be
        # counted that the decoder clips away)
        x_hat = x_hat[..., : self.coded[1], : self.coded[0]].clamp(0, 1)
        if self.resized:
            x_hat = torch.einsum("bchw,xw->bchx", x_hat, self.wx).clamp(0, 1)
            x_hat = torch.einsum("yh,bchx->bcyx", self.wy, x_hat).clamp(0, 1)
        return x_hat


def pil_bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of Pillow's BICUBIC resampling along one axis (``Resample.c``:
    ``precompute_coeffs`` with ``bicubic_filter``, a = -0.5, support 2, widened by the scale
    when downsampling, weights normalised over the taps inside the image)."""

    def cubic(x: float) -> float:
        a, x = -0.5, abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    scale = n_in / n_out
    filterscale = max(1.0, scale)
    support = 2.0 * filterscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(0, int(center - support + 0.5))
        hi = min(n_in, int(center + support + 0.5))
        w = [cubic((i - center + 0.5) / filterscale) for i in range(lo, hi)]
        total = sum(w)
        for i, wi in zip(range(lo, hi), w):
            m[o, i] = wi / total if total else 0.0
    return m.float()


def rd_loss(model, synth: Synthesis, lat_y, lat_z, target, lam: float, view: View, theta=None):
    """(loss, bpp, mse) with the relaxed latents lat_y/lat_z: bits per pixel of the original
    image plus λ·255²·MSE of what the decoder delivers (``view``) against ``target``, the
    original image(s)."""
    c = lat_z.shape[1]  # the bottleneck's density works on (channels, 1, values)
    z_lik = model.entropy_bottleneck._likelihood(lat_z.permute(1, 0, 2, 3).reshape(c, 1, -1))[0]
    scales, means = model.h_s(lat_z).chunk(2, 1)
    y_lik = model.gaussian_conditional._likelihood(lat_y, scales, means)
    bits = -(torch.log2(z_lik.clamp_min(1e-9)).sum() + torch.log2(y_lik.clamp_min(1e-9)).sum())
    x_hat = view(synth(lat_y, theta))
    mse = ((x_hat - target) ** 2).mean(dim=(1, 2, 3)).sum()  # summed over the images of a batch
    return bits / view.pixels + lam * 255**2 * mse, bits / view.pixels, mse


def refine_latents(model, synth, x, target, view: View, lam: float, iters: int, lr: float = 1e-3) -> Latents:
    """Step 1: SGA latent refinement (adapters at zero). ``x``: the (padded, possibly
    downscaled) encoder input; ``target``: the original image(s) the output is judged on."""
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
    if iters <= 0:
        return Latents(y, z)
    medians = model.entropy_bottleneck._get_medians().detach()
    y = y.clone().requires_grad_(True)
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=lr)
    for t in range(iters):
        if t == int(iters * 0.8):
            for g in opt.param_groups:
                g["lr"] = lr / 10
        tau = tau_at(t, iters)
        z_t = sga(z - medians, tau) + medians
        scales, means = model.h_s(z_t).chunk(2, 1)
        y_t = sga(y - means, tau) + means
        loss, _, _ = rd_loss(model, synth, y_t, z_t, target, lam, view)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Latents(y.detach(), z.detach())


def train_adapters(synth: Synthesis, y_hat, target, view: View, lam: float, iters: int, lr: float = 1e-3,
                   seed: int = 0) -> tuple[list[list[int]], float, float]:
    """Step 3, for a batch of images of one size: one adapter per image on its fixed ŷ,
    judged like :func:`rd_loss` on what the decoder delivers against the original.

    The loss is the sum of the images' losses, so each adapter's gradient (and Adam's
    per-element moments) is that image's alone. Returns (integer symbols per image, loss
    before, loss after)."""
    n = 2 * synth.channels * RANK
    b = y_hat.shape[0]
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.randn(b, n, generator=gen) * 0.02).to(y_hat.device).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)

    def losses(th):
        q = ste_round(th.clamp(-BOUND, BOUND) / W_STEP) * W_STEP
        noisy = th.clamp(-BOUND, BOUND) + (torch.rand_like(th) - 0.5) * W_STEP
        p = torch.sigmoid((noisy + W_STEP / 2) / PRIOR_SCALE) - torch.sigmoid((noisy - W_STEP / 2) / PRIOR_SCALE)
        x_hat = view(synth(y_hat, q))
        rate = -torch.log2(p.clamp_min(1e-9)).sum() / view.pixels
        return rate + lam * 255**2 * ((x_hat - target) ** 2).mean(dim=(1, 2, 3)).sum()

    with torch.no_grad():
        before = float(losses(torch.zeros_like(theta)))
    for t in range(iters):
        if t == int(iters * 0.8):
            for g in opt.param_groups:
                g["lr"] = lr / 10
        loss = losses(theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    symbols = torch.round(theta.detach().clamp(-BOUND, BOUND) / W_STEP).to(torch.int64)
    with torch.no_grad():
        after = float(losses(symbols.to(theta.dtype) * W_STEP))
    return symbols.cpu().tolist(), before, after


def train_adapter(synth: Synthesis, y_hat, target, view: View, lam: float, iters: int, lr: float = 1e-3,
                  seed: int = 0) -> tuple[list[int], float, float]:
    """:func:`train_adapters` for one image."""
    symbols, before, after = train_adapters(synth, y_hat, target, view, lam, iters, lr, seed)
    return symbols[0], before, after


def fingerprint(y_int: torch.Tensor, z_int: torch.Tensor, adapter: list[int]) -> str:
    """Hash of every integer symbol the decoder reconstructs: equal on any device."""
    h = hashlib.sha256()
    for t in (y_int, z_int):
        h.update(t.to(torch.int32).cpu().numpy().tobytes())
    h.update(bytes(str(adapter), "ascii"))
    return h.hexdigest()
