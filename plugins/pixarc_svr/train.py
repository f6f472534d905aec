"""``pixarc train svr``: the two stages of M-AdaCode training, then the entropy tables.

    pixarc train svr --data ../shared/data/train/crops --out plugins/pixarc_svr/weights \\
        --minutes 10 --stage1-minutes 7 [--resume] [--device cuda]

Stage 1 (the codebooks): encoder, residual-VQ codebooks and decoder, all weights 1
(plain residual VQ); L1 + codebook + commitment losses. The codebooks start from latent
vectors of the first batch, and codewords unused for ``REVIVE_EVERY`` steps are re-drawn
from the residuals of the current batch (short CPU runs otherwise leave most of a
codebook dead). Stage 2: encoder and codebooks frozen; predictor, filler and decoder with
L1 + (1 − MS-SSIM), m drawn uniformly from 1..K per batch so one model serves every rate
point (m = 1 through the Gumbel-softmax one-hot selector). MS-SSIM runs at the training
patch size: the Gaussian window shrinks (11 → 7 at 128 px) so all five scales fit.
Every configured loss term is logged, and a stage that ran without one of its terms is
an error.

Time budget and resume like ``pixarc train lossy``: ``--minutes`` for this run, a stage
switch at ``--stage1-minutes`` (or ``--stage1-steps``) cumulative, an atomic checkpoint
``<out>/svr-w<width>.ckpt`` every ``--checkpoint-minutes`` and at the end, ``--resume``
to continue. At the end of every run the symbol statistics of the *kept* predictions
(index maps, selection symbols and weights, per m) over the training images become the
learned entropy tables, and fp16 weights are saved with provenance (cumulative steps and
minutes, devices, data sha256).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from pixarc.training import atomic_save, data_sha256, training_images

from .constants import ARCH

LOSSES = {1: {"l1": 1.0, "codebook": 1.0, "commit": 0.25}, 2: {"l1": 1.0, "ms_ssim": 0.3}}
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


def train(data: str, out: str, minutes: float = 10.0, stage1_minutes: float = 7.0, steps: int = 10**9,
          stage1_steps: int = 10**9, batch: int = 8, patch: int = 96, width: int = 32, size: int | None = None,
          dim: int | None = None, lr: float = 5e-4, seed: int = 0, device: str = "cpu", resume: bool = False,
          checkpoint_minutes: float = 5.0, log_every: int = 50, table_images: int = 64) -> dict:
    """Train (or, with ``resume``, continue) and save weights; returns the weights.json entry.
    Budgets: ``minutes`` for this run, ``steps`` cumulative; stage 2 starts once the
    cumulative minutes reach ``stage1_minutes`` or the steps ``stage1_steps``."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pixarc.weights import save_weights

    from .model import BOOK_SIZE, DIM, SVRModel

    size, dim = size or BOOK_SIZE, dim or DIM
    root = Path(data)
    files = training_images(root)
    data_hash = data_sha256(root, files)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"svr-w{width}.pt"
    ckpt_path = out_dir / (Path(name).stem + ".ckpt")
    patch = patch // 8 * 8

    model = SVRModel(width=width, size=size, dim=dim).to(device)
    step, stage, stage1_done, minutes_done, devices, history = 0, 1, 0, 0.0, [], []
    runs: list[dict] = []  # per run (chunk): its settings and the steps it made, for the provenance
    opt_state = None
    if resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint {ckpt_path}")
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        step, stage, stage1_done = int(ck["step"]), int(ck["stage"]), int(ck["stage1_steps"])
        minutes_done, devices, history = float(ck["minutes"]), list(ck["devices"]), list(ck["history"])
        runs = list(ck.get("runs", []))
        opt_state = ck["opt"]
        print(f"resumed {ckpt_path} at step {step}, stage {stage} ({minutes_done:.1f} min)", flush=True)
    if device not in devices:
        devices.append(device)

    random.seed(seed + step)
    np.random.seed(seed + step)
    torch.manual_seed(seed + step)
    rng = random.Random(seed * 1_000_003 + step)  # a resumed run draws new batches, reproducibly
    pool = [np.asarray(Image.open(p).convert("RGB")) for p in files]

    def batch_tensor() -> torch.Tensor:
        crops = []
        for _ in range(batch):
            a = pool[rng.randrange(len(pool))]
            h, w = a.shape[:2]
            ph, pw = min(patch, h // 8 * 8), min(patch, w // 8 * 8)
            y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
            c = a[y : y + ph, x : x + pw]
            crops.append(c[:, ::-1] if rng.random() < 0.5 else c)
        ph, pw = min(c.shape[0] for c in crops), min(c.shape[1] for c in crops)
        t = np.stack([np.ascontiguousarray(c[:ph, :pw]) for c in crops]).astype(np.float32) / 255
        return torch.from_numpy(t).permute(0, 3, 1, 2).to(device)

    def make_opt():
        if stage == 1:
            params = list(model.encoder.parameters()) + [model.codebooks] + list(model.decoder.parameters())
        else:
            model.encoder.requires_grad_(False)
            model.codebooks.requires_grad_(False)
            params = list(model.predictor.parameters()) + list(model.filler.parameters()) + list(
                model.decoder.parameters())
        return torch.optim.Adam(params, lr=lr)

    opt = make_opt()
    if opt_state is not None:
        opt.load_state_dict(opt_state)
        for g in opt.param_groups:  # this run's --lr, not the one saved with the optimiser state
            g["lr"] = lr
    computed = {1: {}, 2: {}}  # how often each loss term ran, per stage (this run)
    usage = torch.zeros(model.k, model.size, device=device)

    def save_checkpoint() -> None:
        atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "stage": stage,
                      "stage1_steps": stage1_done, "minutes": minutes_done + (time.time() - t0) / 60,
                      "devices": devices, "history": history,
                      "runs": runs + [{"lr": lr, "batch": batch, "patch": patch, "device": device,
                                       "first_step": first_step, "last_step": step,
                                       "minutes": round((time.time() - t0) / 60, 1)}]}, ckpt_path)

    t0 = last_ckpt = time.time()
    first_step = step + 1
    budget_s = minutes * 60
    model.train()
    while step < steps and time.time() - t0 < budget_s:
        if stage == 1 and (minutes_done + (time.time() - t0) / 60 >= stage1_minutes or step >= stage1_steps):
            stage, stage1_done = 2, step
            opt = make_opt()
            print(f"stage 2 from step {step}", flush=True)
        step += 1
        x = batch_tensor()
        m = None if stage == 1 else rng.randint(1, model.k)
        if stage == 1 and step == 1:
            with torch.no_grad():  # data-dependent start: codewords drawn from the first latents
                _revive(model, model.encoder(x), torch.zeros_like(usage), rng)
        out_ = model(x, m)
        terms = {"l1": F.l1_loss(out_["x_hat"], x)}
        if stage == 1:
            terms.update(codebook=out_["codebook"], commit=out_["commit"])
        else:
            terms["ms_ssim"] = ms_ssim_loss(out_["x_hat"], x)
        weights = LOSSES[stage]
        loss = sum(weights[n] * t for n, t in terms.items() if weights.get(n, 0) > 0)
        for n in terms:
            computed[stage][n] = computed[stage].get(n, 0) + 1
        opt.zero_grad()
        if not torch.isfinite(loss):  # one bad batch must not poison the weights that ship
            print(f"step {step}: non-finite loss, skipped", flush=True)
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        if stage == 1:
            with torch.no_grad():
                y = model.encoder(x)
                idx, _, _ = model.quantise(y)
                for k in range(model.k):
                    usage[k] += torch.bincount(idx[:, k].reshape(-1), minlength=model.size).float()
                if step % REVIVE_EVERY == 0:
                    _revive(model, y, usage, rng)
                    usage.zero_()
        if step % log_every == 0:
            mse = F.mse_loss(out_["x_hat"].detach().clamp(0, 1), x)
            rec = {"stage": stage, "step": step, "m": m, "loss": float(f"{float(loss.detach()):.4g}"),
                   "psnr": round(float(10 * torch.log10(1 / mse.clamp_min(1e-10))), 3),
                   **{n: float(f"{float(t.detach()):.4g}") for n, t in terms.items()}}
            history.append(rec)
            print(f"{rec} ({time.time() - t0:.0f} s)", flush=True)
        if time.time() - last_ckpt > checkpoint_minutes * 60:
            save_checkpoint()
            last_ckpt = time.time()
    for s, ran in computed.items():  # a configured term that never ran is a bug, not a choice
        missing = [n for n, wgt in LOSSES[s].items() if wgt > 0 and ran and not ran.get(n)]
        if missing:
            raise RuntimeError(f"stage {s}: configured loss terms never computed: {missing}")
    save_checkpoint()
    runs = torch.load(ckpt_path, map_location="cpu", weights_only=True)["runs"]
    total_minutes = minutes_done + (time.time() - t0) / 60

    # learned entropy tables from the kept predictions over (the centres of) the training images
    model.eval()
    trng = random.Random(seed)
    sample = sorted(trng.sample(range(len(pool)), min(table_images, len(pool))))

    def table_batches():
        for i in sample:
            a = pool[i]
            h, w = a.shape[0] // 8 * 8, a.shape[1] // 8 * 8
            yield torch.from_numpy(a[:h, :w].astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)

    index, select, weight = count_symbols(model, table_batches())
    model.index_counts.copy_(index)
    model.select_counts.copy_(select)
    model.weight_counts.copy_(weight)
    last = {str(s): next((r for r in reversed(history) if r["stage"] == s), None) for s in (1, 2)}
    entry = {
        "arch": ARCH, "width": width, "k": model.k, "size": model.size, "dim": model.dim, "steps": step,
        "stage1_steps": stage1_done if stage == 2 else step, "stage2_steps": step - stage1_done if stage == 2 else 0,
        "stage": stage, "batch": batch, "patch": patch, "lr": lr, "runs": runs, "seed": seed, "images": len(files),
        "data": root.name, "data_sha256": data_hash, "minutes": round(total_minutes, 1), "devices": devices,
        "losses": {str(s): w for s, w in LOSSES.items()}, "final": last, "table_images": len(sample),
        "source": f"pixarc train svr (resumable; {step} steps, {total_minutes:.1f} min)",
    }
    return save_weights(out, name, {k: v.cpu() for k, v in model.state_dict().items()}, entry)


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
