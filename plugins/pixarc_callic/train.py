"""``pixarc train callic``: pre-train the MGCF model (time budget, checkpoints, resume).

    pixarc train callic --data ../shared/data/train/crops --minutes 10 \\
        --out plugins/pixarc_callic/weights [--resume] [--device cuda]

Loss: bits per sub-pixel of random crops under the discretised logistic mixture (the
float likelihood; the coder's integer grid costs a little more, measured in the
benchmark). Adam, the learning rate ×0.1 for the last 15 % of the budget. Random crops,
flips and, for one crop in ten, a grey version (R = G = B), since grey images are coded
through the same model. Sorted files and fixed seeds make a run reproducible; a resumed
run draws new batches from ``seed + step``. ``--threads`` defaults to 1 (faster on a busy CPU).

A full training state (fp32 model, optimiser, step, minutes so far, devices) goes to
``<out>/<name>.ckpt`` every ``--checkpoint-minutes`` (atomically) and at the end; the
fp16 weights go to ``<out>/<name>.pt`` with a ``weights.json`` entry (sha256, config,
cumulative steps/minutes, devices, sha256 of the training data).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from pixarc.training import atomic_save, data_sha256, training_images

from . import ARCH


def weights_name(dim: int, depth: int, kernel: int, mixtures: int) -> str:
    return f"callic-d{dim}-l{depth}-k{kernel}-m{mixtures}.pt"


def train(data: str, out: str, minutes: float = 10.0, steps: int = 10**9, batch: int = 8, patch: int = 64,
          lr: float = 2e-3, dim: int = 32, depth: int = 3, kernel: int = 7, mixtures: int = 5,
          device: str = "cpu", seed: int = 0, resume: bool = False, checkpoint_minutes: float = 3.0,
          log_every: int = 25, threads: int = 1) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pixarc.weights import save_weights

    from .model import MGCF, nll_bits

    # One thread by default: on a shared CPU, OpenMP threads of a small model mostly wait for each
    # other (measured here under load: 1.4 s/step with 1 thread, 8 s/step with 2).
    torch.set_num_threads(threads)
    root = Path(data)
    files = training_images(root)
    data_hash = data_sha256(root, files)
    name = weights_name(dim, depth, kernel, mixtures)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / (Path(name).stem + ".ckpt")

    model = MGCF(dim, depth, kernel, mixtures).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, minutes_done, devices = 0, 0.0, []
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, minutes_done, devices = int(ck["step"]), float(ck["minutes"]), list(ck["devices"])
        print(f"resumed {ckpt_path} at step {step} ({minutes_done:.1f} min)", flush=True)
    elif resume:
        raise SystemExit(f"--resume: no checkpoint {ckpt_path}")
    if device not in devices:
        devices.append(device)
    model.train()
    torch.manual_seed(seed + step)
    rng = random.Random(seed * 1_000_003 + step)
    pool = [np.asarray(Image.open(p).convert("RGB")) for p in files]

    def batch_tensor() -> torch.Tensor:
        crops = []
        for _ in range(batch):
            a = pool[rng.randrange(len(pool))]
            h, w = a.shape[:2]
            ph, pw = min(patch, h), min(patch, w)
            y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
            c = a[y : y + ph, x : x + pw]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            if rng.random() < 0.1:
                g = np.asarray(Image.fromarray(np.ascontiguousarray(c)).convert("L"))
                c = np.repeat(g[..., None], 3, axis=2)
            crops.append(c)
        ph, pw = min(c.shape[0] for c in crops), min(c.shape[1] for c in crops)
        t = np.stack([c[:ph, :pw] for c in crops])
        return torch.from_numpy(t).permute(0, 3, 1, 2).to(device)

    def save_checkpoint() -> None:
        atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                      "minutes": minutes_done + (time.time() - t0) / 60, "devices": devices}, ckpt_path)

    t0 = last_ckpt = time.time()
    budget_s = minutes * 60
    history, running = [], []
    while step < steps and time.time() - t0 < budget_s:
        step += 1
        late = (time.time() - t0) / budget_s > 0.85
        for g in opt.param_groups:
            g["lr"] = lr / 10 if late else lr
        x = batch_tensor()
        bpsp = nll_bits(model(MGCF.normalise(x)), x).mean()
        opt.zero_grad()
        bpsp.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(float(bpsp.detach()))
        if step % log_every == 0:
            mean = sum(running) / len(running)
            running = []
            history.append({"step": step, "bpsp": round(mean, 4)})
            print(f"step {step}: bpsp {mean:.4f} ({time.time() - t0:.0f} s, lr {opt.param_groups[0]['lr']:.0e})",
                  flush=True)
        if time.time() - last_ckpt > checkpoint_minutes * 60:
            save_checkpoint()
            last_ckpt = time.time()
    save_checkpoint()
    total_minutes = minutes_done + (time.time() - t0) / 60
    model = model.to("cpu").eval()
    entry = {
        "arch": ARCH, **model.config(), "steps": step, "batch": batch, "patch": patch, "lr": lr, "seed": seed,
        "images": len(files), "data": root.name, "data_sha256": data_hash, "minutes": round(total_minutes, 1),
        "devices": devices, "final": history[-1] if history else None,
        "params": sum(p.numel() for p in model.parameters()),
        "source": f"pixarc train callic --dim {dim} --depth {depth} --kernel {kernel} --mixtures {mixtures} "
                  f"(resumable; {step} steps)",
    }
    return save_weights(out, name, model.state_dict(), entry)
