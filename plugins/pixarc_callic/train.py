"""``pixarc train callic``: pre-train the MGCF model (time budget, checkpoints, resume).

    pixarc train callic --data ../shared/data/train/crops --minutes 10 \\
        --out plugins/pixarc_callic/weights [--resume] [--device cuda]

Loss: bits per sub-pixel of random crops under the discretised logistic mixture (the
float likelihood; the coder's integer grid costs a little more, measured in the
benchmark). Adam; the learning rate follows the cumulative step count and what ships is
the weight average (``pixarc.training.TrainingRun``): without ``--resume`` a run continues
the newest shipped model of the same shape (``--fresh`` starts over). Random crops,
flips and, for one crop in ten, a grey version (R = G = B), since grey images are coded
through the same model. Sorted files and fixed seeds make a run reproducible; a resumed
run draws new batches from ``seed + step``. ``--threads`` defaults to 1 (faster on a busy CPU).

A full training state (fp32 model, optimiser, weight average, step, minutes so far,
devices) goes to ``<out>/<name>.ckpt`` every ``--checkpoint-minutes`` (atomically) and at
the end; the fp16 weights go to a new ``<out>/<name>[-vN].pt`` with a ``weights.json``
entry (sha256, config, cumulative steps/minutes, devices, stages, the file it continues,
sha256 of the training data).
"""

from __future__ import annotations

import random
from pathlib import Path

from pixarc.training import data_sha256, training_images

from .constants import ARCH


def weights_name(dim: int, depth: int, kernel: int, mixtures: int) -> str:
    return f"callic-d{dim}-l{depth}-k{kernel}-m{mixtures}.pt"


def train(data: str, out: str, minutes: float = 10.0, steps: int = 10**9, batch: int = 8, patch: int = 64,
          lr: float = 2e-3, dim: int = 32, depth: int = 3, kernel: int = 7, mixtures: int = 5,
          device: str = "cpu", seed: int = 0, resume: bool = False, checkpoint_minutes: float = 3.0,
          log_every: int = 25, threads: int = 1, fresh: bool = False, half_life: int = 20_000) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pixarc.training import TrainingRun

    from .model import MGCF, nll_bits

    def log(m: str) -> None:
        print(m, flush=True)

    # One thread by default: on a shared CPU, OpenMP threads of a small model mostly wait for each
    # other (measured here under load: 1.4 s/step with 1 thread, 8 s/step with 2).
    torch.set_num_threads(threads)
    root = Path(data)
    files = training_images(root)
    data_hash = data_sha256(root, files)
    model = MGCF(dim, depth, kernel, mixtures).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    run = TrainingRun(model, opt, out=out, stem=Path(weights_name(dim, depth, kernel, mixtures)).stem, arch=ARCH,
                      match={"dim": dim, "depth": depth, "kernel": kernel, "mixtures": mixtures,
                             "coef_q": model.coef_q},
                      device=device, lr=lr, minutes=minutes, steps=steps, checkpoint_minutes=checkpoint_minutes,
                      resume=resume, fresh=fresh, half_life=half_life, log=log)
    model.train()
    torch.manual_seed(seed + run.step)
    rng = random.Random(seed * 1_000_003 + run.step)
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

    history, running = [], []
    while run.next_step():
        x = batch_tensor()
        bpsp = nll_bits(model(MGCF.normalise(x)), x).mean()
        opt.zero_grad()
        bpsp.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(float(bpsp.detach()))
        if run.step % log_every == 0:
            mean = sum(running) / len(running)
            running = []
            history.append({"step": run.step, "bpsp": round(mean, 4)})
            log(f"step {run.step}: bpsp {mean:.4f} ({run.elapsed_s:.0f} s, lr {opt.param_groups[0]['lr']:.1e})")
        run.after_step()
    run.finish_stage(batch=batch, patch=patch, data=root.name, data_sha256=data_hash, images=len(files),
                     final=history[-1] if history else None)
    shipped = run.average.model.to("cpu").eval()
    return run.ship(shipped.state_dict(), {
        **shipped.config(), "batch": batch, "patch": patch, "lr": lr, "seed": seed, "images": len(files),
        "data": root.name, "data_sha256": data_hash, "final": history[-1] if history else None,
        "params": sum(p.numel() for p in shipped.parameters()),
        "source": f"pixarc train callic --dim {dim} --depth {depth} --kernel {kernel} --mixtures {mixtures} "
                  f"(cumulative steps)",
    })
