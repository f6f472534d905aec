"""``pixarc train svr``: the two stages of M-AdaCode training, then the entropy tables.

    pixarc train svr --data ../shared/data/train/crops --out plugins/pixarc_svr/weights \\
        --minutes 10 --stage1-minutes 7 [--dev ../shared/data/dev] [--device cuda]

Stage 1 (the codebooks): encoder, residual-VQ codebooks and decoder, all weights 1
(plain residual VQ); L1 + codebook + commitment losses. The codebooks start from latent
vectors of the first batch, and codewords unused for ``REVIVE_EVERY`` steps are re-drawn
from the residuals of the current batch (short CPU runs otherwise leave most of a
codebook dead). Stage 2: encoder and codebooks frozen; predictor, filler and decoder with
L1 + (1 − MS-SSIM) + the m = 1 selection symbols' bits per pixel (:func:`selection_bpp`),
m drawn uniformly from 1..K per batch so one model serves every rate point (m = 1 through
the Gumbel-softmax one-hot selector). MS-SSIM runs at the training
patch size: the Gaussian window shrinks (11 → 7 at 128 px) so all five scales fit.
Every configured loss term is logged, and a stage that ran without one of its terms is
an error. The switch to stage 2 comes at ``--stage1-minutes`` (or ``--stage1-steps``)
*cumulative*, with a new optimizer that warms up. ``--dev``: the mean PSNR of dev centre
crops over the rates ``DEV_BPP`` spans (:func:`dev_score`: read off each crop's ladder of
residual stages; PSNR alone rewarded a model that spent more bits).

At the end of every run the index maps' context counts over every training image become
the context tables (``context.py``, a file beside the weights), and the symbol statistics of the *kept* predictions (index maps,
selection symbols and weights, per m) over the training images become the learned
entropy tables. The rest is :class:`pixarc.training.TrainingRun`: a run continues the
newest shipped model of the same shape, in its stage (``--fresh`` starts over,
``--resume`` continues a checkpoint), the learning rate follows the cumulative step count,
and a new ``svr-w<width>[-vN].pt`` ships with every run's stage. What ships is the model
itself, not a weight average: stage 1 re-draws dead codewords, which an average would blur.
"""

from __future__ import annotations

import random
from pathlib import Path

from .constants import ARCH

# stage 2's "rate": bits per pixel of the m = 1 selection symbols (:func:`selection_bpp`).
# Without it, longer stage-2 training spread the selections over more symbols: a
# continuation of 2026-12-07 gained 0.1-0.7 dB per stage and lost 6-15 % BD-rate, all of it
# in those bits (the index maps are the frozen encoder's). 0.05 per bpp: the ladder's slope
# (≈ 12 dB per bpp) puts 0.01 bpp at ≈ 0.12 dB, ≈ 0.0005 of L1 at 0.04.
LOSSES = {1: {"l1": 1.0, "codebook": 1.0, "commit": 0.25}, 2: {"l1": 1.0, "ms_ssim": 0.3, "rate": 0.05}}
REVIVE_EVERY = 50


def ms_ssim_loss(x_hat, x):
    """1 − MS-SSIM (five scales) at any patch of at least 48 px: pytorch_msssim needs the
    smaller side > (window − 1)·16, so the window shrinks with the patch instead of the
    term being skipped (it was never computed at 128 px before)."""
    from pytorch_msssim import ms_ssim

    side = min(x.shape[-2:])
    win = next((w for w in (11, 9, 7, 5, 3) if side > (w - 1) * 16), None)
    if win is None:
        raise ValueError(f"MS-SSIM needs patches of at least 33 px, got {side}")
    return 1 - ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0, win_size=win, size_average=True)


def selection_bpp(probs, pixels: int):
    """Expected bits per pixel of the m = 1 selection symbols of a batch: every position's
    symbol distribution (``probs``, B × 2K × u × v, :meth:`SVRModel.selection_probs`)
    against the batch's own symbol frequencies (add-one smoothed, as the shipped tables
    are; held fixed, so the gradient moves positions towards the symbols in common use),
    over ``pixels`` per image. What an order-0 table of those frequencies would spend."""
    import torch

    counts = probs.detach().sum((0, 2, 3)) + 1
    log_q = torch.log2(counts / counts.sum())
    per_position = -(probs * log_q[None, :, None, None]).sum(1)
    return per_position.sum((1, 2)).mean() / pixels


def count_symbols(model, batches) -> tuple:
    """Symbol counts (add-one smoothed, int64) of what the encoder actually sends, per m:
    all K index maps, the selection symbols and the *kept* integer weights."""
    import torch

    from .model import W_OFFSET

    k = model.k
    index = torch.ones(k, model.size, dtype=torch.int64)
    select = torch.ones(k + 1, 2 * k, dtype=torch.int64)
    weight = torch.ones_like(model.weight_counts.cpu())
    with torch.no_grad():
        for x in batches:
            for m in range(1, k + 1):
                idx, sel, w_int = model.analyse(x, m)
                if m == 1:
                    for j in range(k):
                        index[j] += torch.bincount(idx[:, j].reshape(-1).cpu(), minlength=model.size)
                if sel is not None:
                    select[m] += torch.bincount(sel.reshape(-1).cpu(), minlength=2 * k)[: 2 * k]
                if w_int is not None:
                    weight[m] += torch.bincount((w_int + W_OFFSET).reshape(-1).cpu(), minlength=weight.shape[1])
    return index, select, weight


DEV_BPP = (0.08, 0.4)  # the rates over which dev compares two SVR models (bits per pixel)


def dev_score(model, crops, bpp: tuple[float, float] = DEV_BPP) -> float:
    """Mean PSNR over the rates ``bpp`` spans (9 log-spaced points: the area under the RD
    curve, as a BD-PSNR integrates it), the mean over ``crops`` (1, 3, H, W; sides multiples
    of 8). Each crop is coded at m = 1 with 1..K residual stages sent (the rate knob) and
    decoded from the integers; its bits are the ideal code length of what is sent under
    the symbols' empirical distribution over all the crops (each stage's index map, the
    selection symbols); its PSNR at a rate is read off the (log-bits, PSNR) line between the
    stages around it (the nearer end outside them). PSNR alone rewarded a model that buys
    it with more bits (v3 of 2026-12-07: +0.13 dB on dev crops, +6 to +15 % BD-rate on the
    stage ladders of all 40 dev images)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    coded = []
    with torch.no_grad():
        for x in crops:
            idx, sel, _ = model.analyse(x, 1)
            masked, mask = model.masked_from_symbols(1, sel.cpu(), None, (1, *idx.shape[-2:]))
            psnrs = [float(10 * torch.log10(1 / F.mse_loss(
                model.synthesise(idx, masked.to(x.device), mask.to(x.device), s).clamp(0, 1), x).clamp_min(1e-10)))
                for s in range(1, model.k + 1)]
            coded.append((idx.cpu().numpy(), sel.cpu().numpy(), psnrs, x.shape[-2] * x.shape[-1]))

    def entropy(arrays, n: int) -> float:  # bits per symbol
        p = np.bincount(np.concatenate([a.ravel() for a in arrays]), minlength=n) / sum(a.size for a in arrays)
        return float(-(p[p > 0] * np.log2(p[p > 0])).sum())

    h_index = [entropy([c[0][:, k] for c in coded], model.size) for k in range(model.k)]
    h_select = entropy([c[1] for c in coded], 2 * model.k)
    at = np.log(np.geomspace(bpp[0], bpp[1], 9))
    scores = []
    for idx, _, psnrs, pixels in coded:
        positions = idx.shape[-2] * idx.shape[-1]
        rates = [positions * (sum(h_index[:s]) + h_select) / pixels for s in range(1, model.k + 1)]
        scores.append(float(np.interp(at, np.log(np.maximum(rates, 1e-9)), psnrs).mean()))
    return sum(scores) / len(scores)


def train(data: str, out: str, minutes: float = 10.0, stage1_minutes: float = 7.0, steps: int = 10**9,
          stage1_steps: int = 10**9, batch: int = 8, patch: int = 96, width: int = 32, size: int | None = None,
          dim: int | None = None, lr: float = 5e-4, seed: int = 0, device: str = "cpu", resume: bool = False,
          checkpoint_minutes: float = 5.0, log_every: int = 50, table_images: int = 64, fresh: bool = False,
          dev: str | None = None, half_life: int = 20_000, warmup: int = 200) -> dict | None:
    """Train and ship; returns the new weights.json entry (None: dev kept the shipped model).
    Budgets: ``minutes`` for this run, ``steps`` cumulative; stage 2 starts once the
    cumulative minutes reach ``stage1_minutes`` or the steps ``stage1_steps``."""
    import torch
    import torch.nn.functional as F

    from pixarc.tensors import batch_tensor, image_tensor
    from pixarc.training import TrainingRun, centre_crop, dev_images, load_rgb, random_crops

    from .model import BOOK_SIZE, DIM, SVRModel

    def log(m: str) -> None:
        print(m, flush=True)

    patch = patch // 8 * 8
    val = [image_tensor(centre_crop(load_rgb(p), 128, 8), device) for p in dev_images(Path(dev))] if dev else []
    model = SVRModel(width=width, size=size or BOOK_SIZE, dim=dim or DIM).to(device)
    run = TrainingRun(model, out=out, stem=f"svr-w{width}", arch=ARCH,
                      match={"width": width, "k": model.k, "size": model.size, "dim": model.dim}, device=device,
                      lr=lr, minutes=minutes, steps=steps, checkpoint_minutes=checkpoint_minutes, resume=resume,
                      fresh=fresh, half_life=half_life, warmup=warmup, ema_decay=None, seed=seed, data=Path(data),
                      dev_score=(lambda m: dev_score(m, val)) if val else None,
                      dev_metric=f"mean psnr over {DEV_BPP[0]}-{DEV_BPP[1]} bpp (m = 1, stages 1..K)", log=log)
    was = run.extra or run.continued or {}
    run.extra = {"stage": int(was.get("stage", 1)), "stage1_steps": int(was.get("stage1_steps", 0))}

    def make_opt():
        if run.extra["stage"] == 1:
            params = list(model.encoder.parameters()) + [model.codebooks] + list(model.decoder.parameters())
        else:
            model.encoder.requires_grad_(False)
            model.codebooks.requires_grad_(False)
            params = list(model.predictor.parameters()) + list(model.filler.parameters()) + list(
                model.decoder.parameters())
        return torch.optim.Adam(params, lr=lr)

    run.attach(make_opt())
    pool = [load_rgb(p) for p in run.files]
    computed = {1: {}, 2: {}}  # how often each loss term ran, per stage (this run)
    usage = torch.zeros(model.k, model.size, device=device)
    model.train()

    def step() -> dict | None:
        stage = run.extra["stage"]
        if stage == 1 and (run.minutes_done + run.elapsed_s / 60 >= stage1_minutes or run.step > stage1_steps):
            stage = run.extra["stage"] = 2
            run.extra["stage1_steps"] = run.step - 1
            run.attach(make_opt(), restart=True)
            log(f"stage 2 from step {run.step - 1}")
        x = batch_tensor(random_crops(pool, batch, patch, run.rng, multiple=8), device)
        m = None if stage == 1 else run.rng.randint(1, model.k)
        if stage == 1 and run.step == 1:
            with torch.no_grad():  # data-dependent start: codewords drawn from the first latents
                _revive(model, model.encoder(x), torch.zeros_like(usage), run.rng)
        out_ = model(x, m)
        terms = {"l1": F.l1_loss(out_["x_hat"], x)}
        if stage == 1:
            terms.update(codebook=out_["codebook"], commit=out_["commit"])
        else:
            terms["ms_ssim"] = ms_ssim_loss(out_["x_hat"], x)
            terms["rate"] = selection_bpp(out_["select_probs"], x.shape[-2] * x.shape[-1])
        weights = LOSSES[stage]
        loss = sum(weights[n] * t for n, t in terms.items() if weights.get(n, 0) > 0)
        for n in terms:
            computed[stage][n] = computed[stage].get(n, 0) + 1
        run.opt.zero_grad()
        if not torch.isfinite(loss):  # one bad batch must not poison the weights that ship
            log(f"step {run.step}: non-finite loss, skipped")
            return None
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in run.opt.param_groups for p in g["params"]], 1.0)
        run.opt.step()
        if stage == 1:
            with torch.no_grad():
                y = model.encoder(x)
                idx, _, _ = model.quantise(y)
                for k in range(model.k):
                    usage[k] += torch.bincount(idx[:, k].reshape(-1), minlength=model.size).float()
                if run.step % REVIVE_EVERY == 0:
                    _revive(model, y, usage, run.rng)
                    usage.zero_()
        mse = F.mse_loss(out_["x_hat"].detach().clamp(0, 1), x)
        return {"loss": float(loss.detach()), "psnr": float(10 * torch.log10(1 / mse.clamp_min(1e-10))),
                **{n: float(t.detach()) for n, t in terms.items()}}

    run.loop(step, log_every)
    for s, ran in computed.items():  # a configured term that never ran is a bug, not a choice
        missing = [n for n, wgt in LOSSES[s].items() if wgt > 0 and ran and not ran.get(n)]
        if missing:
            raise RuntimeError(f"stage {s}: configured loss terms never computed: {missing}")
    stage, stage1_done = run.extra["stage"], run.extra["stage1_steps"]
    run.finish_stage(batch=batch, patch=patch, stage=stage)

    # learned entropy tables from the kept predictions over (the centres of) the training images
    shipped = run.final_model().eval()
    sample = sorted(random.Random(seed).sample(range(len(pool)), min(table_images, len(pool))))
    index, select, weight = count_symbols(shipped, (image_tensor(centre_crop(pool[i], 1 << 16, 8), device)
                                                    for i in sample))
    shipped.index_counts.copy_(index)
    shipped.select_counts.copy_(select)
    shipped.weight_counts.copy_(weight)
    final = {str(s): next((r for r in reversed(run.history) if set(LOSSES[s]) <= set(r)), None) for s in (1, 2)}
    entry = run.ship({k: v.cpu() for k, v in shipped.state_dict().items()}, {
        "width": width, "k": model.k, "size": model.size, "dim": model.dim, "stage": stage,
        "stage1_steps": stage1_done if stage == 2 else run.step,
        "stage2_steps": run.step - stage1_done if stage == 2 else 0, "batch": batch, "patch": patch, "lr": lr,
        "losses": {str(s): w for s, w in LOSSES.items()}, "final": final, "table_images": len(sample),
        "source": f"pixarc train svr (cumulative steps; stage 2 from step {stage1_done if stage == 2 else '-'})",
    })
    if entry is not None:  # the context tables of the index maps (context.py), counted over every training image
        from pixarc.weights import read_manifest

        from .context import ship_tables

        name = next(n for n, e in read_manifest(Path(out) / "weights.json").items() if e["sha256"] == entry["sha256"])
        ship_tables(Path(out) / name, shipped, data)
        entry["context_tables"] = read_manifest(Path(out) / "weights.json")[name]["context_tables"]
    return entry


def _revive(model, y, usage, rng) -> None:
    """Re-draw unused codewords of every residual stage from this batch's residuals there."""
    import torch

    _, cw, res = model.quantise(y)
    d = model.dim
    for k in range(model.k):
        dead = (usage[k] == 0).nonzero().flatten()
        if len(dead) == 0:
            continue
        pool = res[:, k].permute(0, 2, 3, 1).reshape(-1, d)
        pick = torch.tensor([rng.randrange(len(pool)) for _ in range(len(dead))], device=pool.device)
        model.codebooks.data[k, dead] = pool[pick] + 1e-3 * torch.randn_like(pool[pick])
        if k + 1 < model.k:  # later stages see the residual with this stage's new codewords
            _, cw, res = model.quantise(y)
