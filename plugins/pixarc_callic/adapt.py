"""Per-image adaptation (CALLIC): low-rank weight increments sent in the container.

* LoRA (rank ``RANK``) on each block's gating projections W_A, W_V and first MLP linear:
  ΔW = B·A. A starts from a fixed integer pattern known to both sides (``_pattern``) so
  only its deviation is sent; B starts at zero.
* Tucker increment on each masked depth-wise kernel (dim × k × k), identity core:
  ΔK[c, y, x] = Σ_r U1[c, r]·U2[y, r]·U3[x, r]; U1 starts at zero, U2/U3 at the pattern.
* Full increments of the head's biases (``HEAD``: 32 + 50 numbers): the image's own offsets
  of the mixture's means, log-scales, coefficients and weights, on a grid 16 times finer
  (``HEAD_STEP``; one ``STEP`` of a mean's bias moves it by 4 grey levels) and at their own
  learning rate. Not in the paper.
* Every sent number is an integer q on its site's grid (the value is pattern + q·step).
  Training uses q rounded with a straight-through estimator in the forward pass and q
  plus uniform noise for the rate, under a zero-mean discretised logistic prior (a mixture
  of a narrow and a wide component, ``PRIOR``); loss = increment bits + image bits (MDL),
  per sub-pixel.
* RPFT: the image's patches are sorted by their frozen-model rate (descending); step s
  trains on the top fraction ``b + (1 − b)·min(1, s / ((1 − d)·N))^e`` of them, a random
  mini-batch of them per step.
* Two :data:`SETTINGS` (learning rates, head sites or not, RPFT schedule) are each run for
  the requested steps, and the one whose increments leave the fewest estimated bits is sent
  (or none: MDL against the frozen model). Neither wins everywhere: the block sites at a
  high rate on the costliest patches first suit synthetic images, the head biases at low
  rates on all patches suit natural photos.

Layout of the increments section: ``u8 rank | flags, u32 count``, then the coded integers.
Flag ``HEAD_FLAG`` (0x80) says the head sites follow the block sites; without it (the first
setting's sections, and every section written before the head sites existed) only the
block sites are sent.

The increments are coded with the same integer CDFs and range coder as the pixels (one
logistic component, mean 0), so they are exact too; ``merge`` rebuilds the adapted model
from the bytes, and the encoder codes the image with the model ``merge`` returns for its
own bytes, i.e. the decoder's weights, bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from pixarc.payload import PayloadLayout

RANK = 2           # LoRA rank and Tucker rank
STEP = 1.0 / 32    # quantisation step of every increment number
# zero-mean prior: a mixture of a narrow logistic (most increments stay 0: ≈ 0.14 bit each)
# and a wide one (the few that move cost ≈ 8 bits, not 25): (integer weight, log-scale on
# the coder's 1/8 grid): scales e^-2 ≈ 0.14 and e^1.4 ≈ 4 steps
PRIOR = ((973, -16), (51, 11))
Q_MAX = 127        # sent integers are clamped to [-127, 127]
BATCH = 8          # patches per adaptation step
HEAD = ("head1.bias", "head2.bias")
HEAD_STEP = STEP / 16
HEAD_FLAG = 0x80
INCREMENTS = PayloadLayout(">BI", "rank count", rest=True)  # then the coded integers


@dataclass(frozen=True)
class Setting:
    """One way to adapt: the learning rates (weight units) of the block and head sites
    (head 0: no head sites, an unflagged section) and the RPFT schedule (b, e, d)."""

    lr: float
    head_lr: float
    rpft: tuple[float, float, float]


# Tried in turn, ``iterations`` steps each; the one with the fewest estimated bits (image +
# increments) is kept. Measured (estimated bits, v4): the first is the earlier setting,
# which gains 2-4 % on screenshots, vector and comic art and 0-3 % on natural photos; the
# second gains 1-6 % on natural photos (2.6 % on all 8 natural dev images at 100 steps)
# but loses on flat synthetic images (a vector image: its increments did not pay).
SETTINGS = (Setting(1e-2, 0.0, (0.2, 1.0, 0.1)), Setting(1e-3, 3e-3, (1.0, 1.0, 0.1)))


def _pattern(shape: tuple[int, ...], salt: int) -> torch.Tensor:
    """A fixed pseudo-random start for A / U2 / U3, from integer hashing: identical everywhere."""
    n = math.prod(shape)
    idx = torch.arange(n, dtype=torch.int64)
    h = (idx * 2654435761 + salt * 40503 + 12345) % 4294967296
    h = (h ^ (h >> 13)) * 1274126177 % 4294967296
    return ((h % 33) - 16).to(torch.float32).view(shape) * (STEP * 4)  # in [-0.25, 0.25]


def sites(model, head: bool = True) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, patterned) of every increment tensor, in the order they are sent;
    ``head``: with the head's bias increments (the sections flagged ``HEAD_FLAG``)."""
    out = []
    for b, blk in enumerate(model.blocks):
        for lin in ("w_a", "w_v", "mlp1"):
            layer = getattr(blk, lin)
            out.append((f"{b}.{lin}.A", (RANK, layer.in_features), True))
            out.append((f"{b}.{lin}.B", (layer.out_features, RANK), False))
        out.append((f"{b}.dw.U1", (model.dim, RANK), False))
        out.append((f"{b}.dw.U2", (model.kernel, RANK), True))
        out.append((f"{b}.dw.U3", (model.kernel, RANK), True))
    if head:
        params = dict(model.named_parameters())
        out.extend((name, tuple(params[name].shape), False) for name in HEAD)
    return out


def _step(name: str) -> float:
    return HEAD_STEP if name in HEAD else STEP


def _values(model, q: dict[str, torch.Tensor], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Float factor values from (possibly fractional, in training) integers q."""
    return {name: q[name] * _step(name) + (_pattern(shape, s).to(device) if patterned else 0.0)
            for s, (name, shape, patterned) in enumerate(sites(model, head=HEAD[0] in q))}


def apply(model, values: dict[str, torch.Tensor]):
    """Functional parameters of the adapted model: base weights + increments."""
    params = dict(model.named_parameters())
    for b, blk in enumerate(model.blocks):
        for lin in ("w_a", "w_v", "mlp1"):
            key = f"blocks.{b}.{lin}.weight"
            params[key] = params[key] + values[f"{b}.{lin}.B"] @ values[f"{b}.{lin}.A"]
        key = f"blocks.{b}.dw.weight"
        delta = torch.einsum("cr,yr,xr->cyx", values[f"{b}.dw.U1"], values[f"{b}.dw.U2"], values[f"{b}.dw.U3"])
        params[key] = params[key] + delta[:, None]
    for key in HEAD:
        if key in values:
            params[key] = params[key] + values[key]
    return params


def merge(base, blob: bytes):
    """The adapted model (a copy) from the increments section; the decoder's and the
    encoder's only way to get it."""
    from .coder import Decoder

    flags, count = INCREMENTS.parse(blob)
    rank, shapes = flags & ~HEAD_FLAG, sites(base, head=bool(flags & HEAD_FLAG))
    if rank != RANK or count != sum(math.prod(s) for _, s, _ in shapes):
        raise ValueError("increments do not fit this model")
    ints = _code_ints(Decoder(blob[INCREMENTS.size :]), count, None)
    q, pos = {}, 0
    for name, shape, _ in shapes:
        n = math.prod(shape)
        q[name] = ints[pos : pos + n].view(shape).to(torch.float32)
        pos += n
    params = apply(base, _values(base, q))
    model = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    return model


def _code_ints(coder, count: int, ints: torch.Tensor | None) -> torch.Tensor:
    """Send/receive integers in [-127, 127] under the prior, through the pixel coder
    (symbol = q + 128, mixture means at symbol 128)."""
    from .coder import LS_MIN, MEAN_Q, Quantised, code_channel, tables

    q = object.__new__(Quantised)
    q.w = torch.tensor([w for w, _ in PRIOR], dtype=torch.int64).expand(count, len(PRIOR))
    q.total = q.w.sum(-1)
    inv = tables()["inv"][torch.tensor([ls for _, ls in PRIOR]) - LS_MIN]
    q.inv = inv.expand(count, 3, len(PRIOR))
    mean = torch.full((count, len(PRIOR)), 128 * MEAN_Q, dtype=torch.int64)
    known = None if ints is None else ints.to(torch.int64) + 128
    return code_channel(q, 0, mean, known, coder) - 128


# Increments are sent when they save more than this many (estimated) bits over the frozen
# model; tests lower it so the increment path runs whatever a tiny random model's few
# adaptation steps save.
MIN_SAVED_BITS = 0.0


def prior_bits(q: torch.Tensor) -> torch.Tensor:
    """Rate of (noisy) integers under the prior mixture, in bits (training)."""
    total = sum(w for w, _ in PRIOR)
    p = sum((w / total) * (torch.sigmoid((q + 0.5) / math.exp(ls / 8)) - torch.sigmoid((q - 0.5) / math.exp(ls / 8)))
            for w, ls in PRIOR)
    return -torch.log2(p.clamp_min(1e-12)).sum()


def adapt(base, pixels: torch.Tensor, geom, channels: int, iterations: int, device: str = "cpu",
          seed: int = 0) -> tuple[object, bytes]:
    """Fine-tune increments on one image with each of :data:`SETTINGS`; returns (merged
    model on the CPU, increments bytes) of the one with the fewest estimated bits, or
    (``base``, b"") when no increments pay for their own bits."""
    patches = geom.to_patches(pixels).permute(2, 3, 0, 1).contiguous().to(device)  # (P, 3, ph, pw)
    inside = geom.inside().permute(2, 0, 1).to(device)                            # (P, ph, pw)
    net = copy.deepcopy(base).float().to(device).requires_grad_(False)
    rates = patch_bits(net, patches, inside, channels)  # RPFT order: frozen-model rate per patch, highest first
    frozen = float(rates.sum())
    best = (frozen - MIN_SAVED_BITS, base, b"")
    for setting in SETTINGS:
        blob = _fit(base, net, setting, patches, inside, rates, channels, iterations, device, seed)
        merged = merge(base, blob)
        # MDL on the whole image: the increments are sent only if they pay for their own bytes
        # (estimated image bits of the merged model + increment bits < the frozen model's)
        bits = float(patch_bits(copy.deepcopy(merged).to(device), patches, inside, channels).sum()) + 8 * len(blob)
        if bits < best[0]:
            best = (bits, merged, blob)
    return best[1], best[2]


def _fit(base, net, setting: Setting, patches, inside, rates, channels: int, iterations: int, device: str,
         seed: int) -> bytes:
    """``iterations`` steps of one setting; the coded increments section."""
    from torch.func import functional_call

    from .model import MGCF, nll_bits

    gen = torch.Generator().manual_seed(seed)
    order = torch.argsort(rates.cpu(), descending=True)
    head = setting.head_lr > 0
    shapes = sites(base, head=head)
    q = {name: torch.zeros(shape, device=device, requires_grad=True) for name, shape, _ in shapes}
    # in steps of each site's grid: the learning rates are in weight units
    groups = [{"params": [v for n, v in q.items() if n not in HEAD], "lr": setting.lr / STEP}]
    if head:
        groups.append({"params": [q[n] for n in HEAD], "lr": setting.head_lr / HEAD_STEP})
    opt = torch.optim.Adam(groups)
    subpixels = float(inside.sum()) * channels
    b, e, d = setting.rpft
    for it in range(iterations):
        frac = min(1.0, b + (1 - b) * min(1.0, it / max(1.0, (1 - d) * iterations)) ** e)
        top = order[: max(1, math.ceil(frac * len(order)))]
        pick = top[torch.randperm(len(top), generator=gen)[:BATCH]].to(device)
        # STE: the forward pass sees the rounded integers, the gradient flows to q unchanged
        q_hat = {n: v + (torch.round(v) - v).detach() for n, v in q.items()}
        params = apply(net, _values(base, q_hat, device))
        x = patches[pick]
        bits = nll_bits(functional_call(net, params, (MGCF.normalise(x),)), x, channels).sum(-1) * inside[pick]
        image_bpsp = bits.sum() / (inside[pick].sum() * channels)
        noisy = torch.cat([(v + torch.rand_like(v) - 0.5).flatten() for v in q.values()])
        loss = image_bpsp + prior_bits(noisy) / subpixels
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ints = torch.cat([torch.round(q[name].detach().cpu()).clamp(-Q_MAX, Q_MAX).to(torch.int64).flatten()
                          for name, _, _ in shapes])
    return pack_increments(ints, head)


def pack_increments(ints: torch.Tensor, head: bool) -> bytes:
    """The increments section of these integers (the block sites', then with ``head`` the
    head's, in :func:`sites` order)."""
    from .coder import Encoder

    enc = Encoder()
    _code_ints(enc, len(ints), ints)
    return INCREMENTS.pack(RANK | (HEAD_FLAG if head else 0), len(ints), rest=enc.finish())


def patch_bits(net, patches: torch.Tensor, inside: torch.Tensor, channels: int) -> torch.Tensor:
    """Estimated code length (bits, the training loss) of each patch under ``net``."""
    from .model import MGCF, nll_bits

    with torch.no_grad():
        return torch.cat([(nll_bits(net(MGCF.normalise(patches[s : s + 16])), patches[s : s + 16], channels)
                           .sum(-1) * inside[s : s + 16]).sum((1, 2)) for s in range(0, len(patches), 16)])

