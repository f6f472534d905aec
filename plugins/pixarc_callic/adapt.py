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
* The full head (flag ``FULL_HEAD_FLAG``, not in the paper): every parameter of the head
  (its norm and both linears, 2 770 numbers at dim 32), fitted on top of the best block
  setting's increments on features cached once (the paper's cache idea applied to
  adaptation): the trunk does not change while the head adapts, so a step is the head
  alone on ``FULL_HEAD_BATCH`` positions sampled from the cached ones (up to
  ``MAX_CACHED``, uniform over the image), a few per cent of a block step's work; it runs
  ``FULL_HEAD_STEPS`` times the requested steps, in float (Adam, cosine-decayed learning
  rate; the loss adds a rough estimate of the increments' own bits, ``RATE_WEIGHT``), then
  each tensor is rounded to the grid 2^-e (``GRIDS``) that minimises the cached positions'
  bits, scaled to the image, plus its own, and its integers are coded under a zero-mean
  logistic of the scale that codes them best, magnitudes beyond ±127 steps in escape
  symbols (:func:`code_wide`). With flag ``TAIL_FLAG`` the last block's MLP (``TAIL``:
  its norm and both linears, 4 256 numbers at dim 32) is adapted with the head: it is per
  position too, so the cache holds the features before it (``MGCF.tail``).
* :data:`SETTINGS`: the two block settings (learning rates, head biases or not, RPFT
  schedule) are each run, then the full head (with the last block's MLP) on the better of
  them (or on the frozen model), and the one whose increments leave the fewest estimated
  bits is sent (or none: MDL against the frozen model). The block sites at a high rate on
  the costliest patches first suit synthetic images, the head biases at low rates on all
  patches and the full head suit natural photos.

Layout of the increments section: ``u8 rank | flags, u32 count``, then the coded integers.
Flag ``HEAD_FLAG`` (0x80) says the head sites follow the block sites; without it (the first
setting's sections, and every section written before the head sites existed) only the
block sites are sent. Flag ``FULL_HEAD_FLAG`` (0x40, with the rank only) says the section
holds the full head's increments: ``u32 n`` and an inner section of n bytes (the block
setting's increments the head was fitted on, none when n = 0), then per tensor of
:data:`FULL_HEAD` (with ``TAIL_FLAG``, 0x20, then of the last block's ``TAIL``) ``u8 e,
u8 scale`` (its grid 2^-e and its log-scale index on the coder's grid, ``LS_MIN`` at 0),
then the integers; ``merge`` applies the inner section, then adds the head's increments.

The increments are coded with the same integer CDFs and range coder as the pixels (one
logistic component, mean 0), so they are exact too; ``merge`` rebuilds the adapted model
from the bytes, and the encoder codes the image with the model ``merge`` returns for its
own bytes, i.e. the decoder's weights, bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

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
FULL_HEAD_FLAG = 0x40
FULL_HEAD = ("head_norm.weight", "head_norm.bias", "head1.weight", "head1.bias", "head2.weight", "head2.bias")
TAIL_FLAG = 0x20  # with FULL_HEAD_FLAG: the last block's MLP (``TAIL``) is adapted with the head
TAIL = ("norm2.weight", "norm2.bias", "mlp1.weight", "mlp1.bias", "mlp2.weight", "mlp2.bias")  # of the last block
FULL_HEAD_STEPS = 384      # full-head steps per requested iteration
FULL_HEAD_BATCH = 1 << 10  # positions per full-head step (docs/callic.md: "Smaller steps...", "The last MLP too")
MAX_CACHED = 1 << 18       # positions whose features are cached for the full head (sampled beyond)
FINEST, COARSEST = 14, 0   # a full-head tensor's grid: 2^-e, COARSEST <= e <= FINEST
GRIDS = (7, 8, 9, 10, 11, 12)  # the grids the encoder weighs per tensor
RATE_WEIGHT = 1.0  # the increments' estimated bits in the full head's loss (0: left out; 1 gained 0.1 point, 4 lost 0.2)


@dataclass(frozen=True)
class Setting:
    """One way to adapt: the learning rates (weight units) of the block and head sites
    (head 0: no head sites, an unflagged section) and the RPFT schedule (b, e, d)."""

    lr: float
    head_lr: float
    rpft: tuple[float, float, float]
    full_head: bool = False  # the full head on cached features, on top of the best setting before it (``head_lr``)
    tail: bool = False       # ... and the last block's MLP with it (features cached before that MLP)


def full_sites(model, tail: bool) -> tuple[str, ...]:
    """The parameters a full-head section adapts, in its order: the head's, then with
    ``tail`` the last block's MLP's."""
    return FULL_HEAD + (tuple(f"blocks.{model.depth - 1}.{k}" for k in TAIL) if tail else ())


# Tried in turn, ``iterations`` steps each (the full head: ``FULL_HEAD_STEPS`` times as
# many); the one with the fewest estimated bits (image + increments) is kept. Measured
# (estimated bits, v4): the first is the earlier setting, which gains 2-4 % on screenshots,
# vector and comic art and 0-3 % on natural photos; the second gains 1-6 % on natural
# photos (2.6 % on all 8 natural dev images at 100 steps) but loses on flat synthetic
# images (a vector image: its increments did not pay). The third, the full head on the
# better of them (v9, 50 x 12 steps of 32 768 positions at 3e-3), took all 8 natural dev
# images from -1.7 % to -2.4 % against the frozen model; at 1e-3 and 50 x 192 steps of 2 048
# positions to -2.9 %; with the last block's MLP (``tail``) and 50 x 384 steps of 1 024 to
# -3.1 % (docs/callic.md, "The full head", "Smaller steps, more of them", "The last MLP too").
SETTINGS = (Setting(1e-2, 0.0, (0.2, 1.0, 0.1)), Setting(1e-3, 3e-3, (1.0, 1.0, 0.1)),
            Setting(0.0, 1e-3, (1.0, 1.0, 0.0), full_head=True, tail=True))


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
    if flags & FULL_HEAD_FLAG:
        return _merge_full_head(base, flags, count, blob[INCREMENTS.size :])
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


def describe(blob: bytes) -> str:
    """Which sites an increments section adapts (for reports): ``frozen`` (none), ``blocks``,
    ``blocks+head biases`` or ``full head``."""
    if not blob:
        return "frozen"
    flags, _ = INCREMENTS.parse(blob)
    if flags & FULL_HEAD_FLAG:
        inner, _ = _split_inner(blob[INCREMENTS.size :])
        what = "full head and last MLP" if flags & TAIL_FLAG else "full head"
        return what if not inner else f"{describe(inner)}, then the {what}"
    return "blocks+head biases" if flags & HEAD_FLAG else "blocks"


def _zero_mean(count: int, scales: torch.Tensor | None = None):
    """(integer mixture, means) of ``count`` zero-mean integers: the :data:`PRIOR` mixture,
    or with ``scales`` one logistic per integer of that log-scale index (``LS_MIN`` at 0)."""
    from .coder import LS_MIN, MEAN_Q, Quantised, tables

    q = object.__new__(Quantised)
    if scales is None:
        q.w = torch.tensor([w for w, _ in PRIOR], dtype=torch.int64).expand(count, len(PRIOR))
        q.inv = tables()["inv"][torch.tensor([ls for _, ls in PRIOR]) - LS_MIN].expand(count, 3, len(PRIOR))
    else:
        q.w = torch.ones((count, 1), dtype=torch.int64)
        q.inv = tables()["inv"][scales.to(torch.int64)][:, None, None].expand(count, 3, 1)
    q.total = q.w.sum(-1)
    return q, torch.full(q.w.shape, 128 * MEAN_Q, dtype=torch.int64)


def _code_ints(coder, count: int, ints: torch.Tensor | None, scales: torch.Tensor | None = None) -> torch.Tensor:
    """Send/receive integers in [-127, 127] under the prior (or the per-integer logistics
    of ``scales``, :func:`_zero_mean`), through the pixel coder (symbol = q + 128, means at
    symbol 128)."""
    from .coder import code_channel

    q, mean = _zero_mean(count, scales)
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
        if setting.full_head:  # on top of the best so far: its block (and head bias) increments stay
            on = copy.deepcopy(best[1]).float().to(device).requires_grad_(False)
            cache = head_inputs(on, patches, inside, seed, tail=setting.tail)
            blob = fit_full_head(on, setting, cache, channels, FULL_HEAD_STEPS * iterations, seed, inner=best[2])
        else:
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



# ------------------------------------------------------------------ the full head


class HeadCache(NamedTuple):
    """What the head reads at up to ``MAX_CACHED`` positions of an image, sampled uniformly:
    features (n, dim), neighbours (n, 9), pixels (n, 3) uint8; ``scale``: the image's
    positions per cached one; ``tail``: the features are taken before the last block's MLP
    (``MGCF.tail`` reads them), else after it (``MGCF.head``)."""

    feats: torch.Tensor
    nbrs: torch.Tensor
    pixels: torch.Tensor
    scale: float
    tail: bool = False


def head_inputs(net, patches: torch.Tensor, inside: torch.Tensor, seed: int = 0, tail: bool = False) -> HeadCache:
    """The :class:`HeadCache` of an image's patches, computed once with the frozen trunk
    (with ``tail``, all of it but the last block's MLP; a model without blocks has none, so
    its cache is the head's and the full head is fitted alone)."""
    from .model import MGCF

    tail = tail and len(net.blocks) > 0

    flat = torch.nonzero(inside.flatten().cpu()).squeeze(1)
    scale = len(flat) / max(1, min(len(flat), MAX_CACHED))
    if len(flat) > MAX_CACHED:
        flat = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:MAX_CACHED]]
    pick = torch.zeros(inside.numel(), dtype=torch.bool)
    pick[flat] = True
    pick = pick.view(inside.shape).to(inside.device)
    feats, nbrs, pixels = [], [], []
    with torch.no_grad():
        for s in range(0, len(patches), 16):
            m = pick[s : s + 16]
            if not bool(m.any()):
                continue
            x = MGCF.normalise(patches[s : s + 16])
            feats.append(net.features(x, before_mlp=tail)[m])
            nbrs.append(torch.cat(MGCF.neighbours(x), dim=-1)[m])
            pixels.append(patches[s : s + 16].permute(0, 2, 3, 1)[m])
    return HeadCache(torch.cat(feats), torch.cat(nbrs), torch.cat(pixels), scale, tail)


def fit_full_head(net, setting: Setting, cache, channels: int, steps: int, seed: int, inner: bytes = b"") -> bytes:
    """``steps`` Adam steps (cosine-decayed from ``setting.head_lr``) of the head's
    increments (with ``cache.tail``, and the last block's MLP's) on the cached positions of
    ``net`` (the model ``inner``, an increments section, makes of the base), minimising
    their bits; the coded section (``inner`` first), each tensor on the grid that codes the
    cached positions and itself in the fewest bits."""
    from .model import nll_bits

    feats, nbrs, pixels, scale, tail = cache
    names = full_sites(net, tail)
    forward = net.tail if tail else net.head
    params = {k: v.detach() for k, v in net.named_parameters()}
    delta = {k: torch.zeros_like(params[k], requires_grad=True) for k in names}
    opt = torch.optim.Adam(delta.values(), lr=setting.head_lr)
    gen = torch.Generator().manual_seed(seed)
    batch = min(FULL_HEAD_BATCH, len(pixels))

    def cached_bits(values: dict[str, torch.Tensor], idx=None) -> torch.Tensor:
        f, n, x = (feats, nbrs, pixels) if idx is None else (feats[idx], nbrs[idx], pixels[idx])
        raw = net.with_prior(forward(f, {k: params[k] + values[k] for k in names}), n[:, 0:3], n[:, 3:6], n[:, 6:9])
        return nll_bits(raw[:, None, None, :], x[:, :, None, None], channels)

    for it in range(steps):
        for group in opt.param_groups:
            group["lr"] = setting.head_lr * 0.5 * (1 + math.cos(math.pi * it / steps))
        loss = cached_bits(delta, torch.randint(0, len(pixels), (batch,), generator=gen).to(feats.device)).mean()
        if RATE_WEIGHT:
            # the increments' own bits, roughly (an integer of magnitude m on the finest judged grid costs
            # about log2(1 + m) bits), per sub-pixel of the image: MDL in the fit, not only in the choice
            rate = sum(torch.log2(1 + v.abs() * 2.0 ** max(GRIDS)).sum() for v in delta.values())
            loss = loss + RATE_WEIGHT * rate / (scale * len(pixels) * channels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted = {k: v.detach() for k, v in delta.items()}

    def judge(values: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return scale * float(cached_bits({k: v.to(feats.device) for k, v in values.items()}).sum())

    return pack_full_head({k: v.cpu() for k, v in fitted.items()}, judge, inner)


ESCAPE_SCALE = 33  # log-scale index (on the coder's 1/8 grid, from 0) of the escapes' logistic: ≈ 60 steps
ESCAPES_MAX = 64   # escape symbols per integer at most: magnitudes up to WIDE_MAX
WIDE_MAX = Q_MAX + 255 * ESCAPES_MAX - 1


def code_wide(coder, count: int, ints: torch.Tensor | None, scales: torch.Tensor) -> torch.Tensor:
    """Send/receive integers up to ±``WIDE_MAX``: each as q clamped to ±``Q_MAX`` under its
    zero-mean logistic (``scales``), and where that is ±``Q_MAX`` the rest of its magnitude
    in escape symbols 0..255 (255: more follows, ``ESCAPES_MAX`` at most: a stream asking
    for more is refused with ValueError) under a logistic at 0 of ``ESCAPE_SCALE``."""
    from .coder import code_channel

    if ints is not None and bool((ints.abs() > WIDE_MAX).any()):
        raise ValueError(f"increments beyond ±{WIDE_MAX} steps")
    first = None if ints is None else ints.clamp(-Q_MAX, Q_MAX)
    out = _code_ints(coder, count, first, scales)
    idx = torch.nonzero(out.abs() == Q_MAX).squeeze(1)
    extra = torch.zeros(count, dtype=torch.int64)
    rest = None if ints is None else ints.abs()[idx] - Q_MAX
    for _ in range(ESCAPES_MAX + 1):
        if not len(idx):
            break
        q, mean = _zero_mean(len(idx), torch.full((len(idx),), ESCAPE_SCALE))
        sym = code_channel(q, 0, mean * 0, None if rest is None else rest.clamp(max=255), coder)
        extra[idx] += sym
        more = sym == 255
        idx = idx[more]
        rest = None if rest is None else rest[more] - 255
    if len(idx):
        raise ValueError("increments do not fit this model (an escape run longer than ESCAPES_MAX)")
    return out + torch.sign(out) * extra


def wide_bits(ints: torch.Tensor) -> float:
    """Estimated bits of ``ints`` through :func:`code_wide` at their best scale."""
    from .coder import symbol_bits

    first = ints.clamp(-Q_MAX, Q_MAX)
    ls = _best_scale(first)
    q, mean = _zero_mean(len(ints), torch.full((len(ints),), ls))
    bits = float(symbol_bits(q, 0, mean, first.to(torch.int64) + 128).sum())
    rest = ints.abs()[first.abs() == Q_MAX] - Q_MAX
    while len(rest):
        q, mean = _zero_mean(len(rest), torch.full((len(rest),), ESCAPE_SCALE))
        sym = rest.clamp(max=255)
        bits += float(symbol_bits(q, 0, mean * 0, sym).sum())
        rest = rest[sym == 255] - 255
    return bits


def _best_scale(ints: torch.Tensor) -> int:
    """The log-scale index (``LS_MIN`` at 0) of the zero-mean logistic coding ``ints`` in the
    fewest bits."""
    from .coder import LS_MAX, LS_MIN, symbol_bits

    n, span = len(ints), LS_MAX - LS_MIN + 1
    q, mean = _zero_mean(n * span, torch.arange(span).repeat_interleave(n))
    bits = symbol_bits(q, 0, mean, (ints.to(torch.int64) + 128).repeat(span)).view(span, n).sum(1)
    return int(torch.argmin(bits))


def pack_full_head(delta: dict[str, torch.Tensor], judge=None, inner: bytes = b"") -> bytes:
    """The full-head section of these float increments (:func:`full_sites` order: the head's,
    then, flagged ``TAIL_FLAG``, the last block's MLP's) on top of ``inner`` (a block
    section, or none), each tensor rounded to a grid 2^-e (``GRIDS``): with ``judge``
    (estimated image bits of a dict of increments) the one that minimises the image's bits
    plus the tensor's own, one tensor after the other (the others as fitted); without,
    ``FINEST``."""
    from .coder import Encoder

    names = tuple(delta)
    tail = len(names) > len(FULL_HEAD)
    tail_names = tuple(k.split(".", 2)[-1] for k in names[len(FULL_HEAD) :])  # blocks.<i>.<name>: <name>
    if names[: len(FULL_HEAD)] != FULL_HEAD or (tail and tail_names != TAIL):
        raise ValueError(f"a full-head section holds {FULL_HEAD} and optionally the last block's {TAIL}, not {names}")
    current = dict(delta)
    info, ints, scales = bytearray(), [], []
    for k in names:
        d = delta[k].flatten().float()

        def on(e: int) -> torch.Tensor:
            return torch.round(d * 2.0**e).clamp(-WIDE_MAX, WIDE_MAX).to(torch.int64)

        def cost(e: int) -> float:
            q = on(e)
            trial = {**current, k: (q.to(torch.float32) * 2.0**-e).view(delta[k].shape)}
            return judge(trial) + wide_bits(q)

        e = FINEST if judge is None else min(GRIDS, key=cost)
        q = on(e)
        current[k] = (q.to(torch.float32) * 2.0**-e).view(delta[k].shape)
        ls = _best_scale(q.clamp(-Q_MAX, Q_MAX))
        info += bytes((e, ls))
        ints.append(q)
        scales.append(torch.full((len(q),), ls, dtype=torch.int64))
    enc = Encoder()
    code_wide(enc, sum(len(q) for q in ints), torch.cat(ints), torch.cat(scales))
    return INCREMENTS.pack(RANK | FULL_HEAD_FLAG | (TAIL_FLAG if tail else 0), sum(len(q) for q in ints),
                           rest=len(inner).to_bytes(4, "big") + inner + bytes(info) + enc.finish())


def _split_inner(rest: bytes) -> tuple[bytes, bytes]:
    """A full-head section after its header: (the inner section, what follows it); a
    length that runs past the end is refused (ValueError)."""
    n = int.from_bytes(rest[:4], "big") if len(rest) >= 4 else -1
    if n < 0 or len(rest) < 4 + n:
        raise ValueError("increments do not fit this model")
    return rest[4 : 4 + n], rest[4 + n :]


def _merge_full_head(base, flags: int, count: int, rest: bytes):
    from .coder import LS_MAX, LS_MIN, Decoder

    params = dict(base.named_parameters())
    names = full_sites(base, bool(flags & TAIL_FLAG))
    sizes = [params[k].numel() for k in names]
    inner, rest = _split_inner(rest)
    info = rest[: 2 * len(names)]
    if flags & ~TAIL_FLAG != RANK | FULL_HEAD_FLAG or count != sum(sizes) or len(info) != 2 * len(names):
        raise ValueError("increments do not fit this model")
    if inner:
        if INCREMENTS.parse(inner)[0] & FULL_HEAD_FLAG:
            raise ValueError("increments do not fit this model")  # one full head, on block sites only
        base = merge(base, inner)
    grids, scales = info[0::2], info[1::2]
    if any(not COARSEST <= e <= FINEST for e in grids) or any(ls > LS_MAX - LS_MIN for ls in scales):
        raise ValueError("increments do not fit this model")
    per = torch.cat([torch.full((n,), ls, dtype=torch.int64) for n, ls in zip(sizes, scales)])
    ints = code_wide(Decoder(rest[len(info) :]), count, None, per)
    model, pos = copy.deepcopy(base), 0
    with torch.no_grad():
        merged = dict(model.named_parameters())
        for k, n, e in zip(names, sizes, grids):
            merged[k].add_(ints[pos : pos + n].view(params[k].shape).to(torch.float32) * 2.0**-e)
            pos += n
    return model
