"""``pixarc train callic``: pre-train the MGCF model.

    pixarc train callic --data ../shared/data/train/crops --minutes 10 \\
        --out plugins/pixarc_callic/weights [--dev ../shared/data/dev] [--device cuda]

Loss: bits per sub-pixel of random crops under the discretised logistic mixture (the
float likelihood; the coder's integer grid costs a little more, measured in the
benchmark); Adam, gradients clipped to norm 1. Random crops, flips and, for one crop in
ten, a grey version (R = G = B), since grey images are coded through the same model.
``--dev``: bits per sub-pixel of dev centre crops (lower is better). ``--threads``
defaults to 1 (faster on a busy CPU).

The rest is :class:`pixarc.training.TrainingRun`: a run continues the newest shipped model
of the same shape (``--fresh`` starts over, ``--resume`` continues a checkpoint), the
learning rate follows the cumulative step count, what ships is the weight average, as a
new ``callic-d<dim>-l<depth>-k<kernel>-m<mixtures>[-vN].pt`` with every run's stage.
"""

from __future__ import annotations

from pathlib import Path

from .constants import ARCH


def weights_name(dim: int, depth: int, kernel: int, mixtures: int) -> str:
    return f"callic-d{dim}-l{depth}-k{kernel}-m{mixtures}.pt"


def grey(crops: list, rng) -> list:
    """One crop in ten as grey (R = G = B, Pillow's luma): grey images use the same model."""
    import numpy as np
    from PIL import Image

    if rng.random() >= 0.1:
        return crops
    g = np.asarray(Image.fromarray(np.ascontiguousarray(crops[0])).convert("L"))
    return [np.repeat(g[..., None], 3, axis=2)]


def train(data: str, out: str, minutes: float = 10.0, steps: int = 10**9, batch: int = 8, patch: int = 64,
          lr: float = 2e-3, dim: int = 32, depth: int = 3, kernel: int = 7, mixtures: int = 5,
          device: str = "cpu", seed: int = 0, resume: bool = False, checkpoint_minutes: float = 3.0,
          log_every: int = 25, threads: int = 1, fresh: bool = False, dev: str | None = None,
          half_life: int = 20_000, warmup: int = 200, dev_side: int = 128) -> dict | None:
    """Train and ship; returns the new weights.json entry (None: dev kept the shipped model)."""
    import torch

    from pixarc.tensors import batch_tensor
    from pixarc.training import TrainingRun, centre_crop, dev_images, load_rgb, random_crops

    from .model import MGCF, nll_bits

    # One thread by default: on a shared CPU, OpenMP threads of a small model mostly wait for each
    # other (measured here under load: 1.4 s/step with 1 thread, 8 s/step with 2).
    torch.set_num_threads(threads)
    val = [batch_tensor(centre_crop(load_rgb(p), dev_side)[None], device, unit=False)
           for p in dev_images(Path(dev))] if dev else []

    def dev_bits(net) -> float:
        with torch.no_grad():
            return -sum(float(nll_bits(net(MGCF.normalise(x)), x).mean()) for x in val) / len(val)

    model = MGCF(dim, depth, kernel, mixtures).to(device)
    run = TrainingRun(model, torch.optim.Adam(model.parameters(), lr=lr), out=out,
                      stem=Path(weights_name(dim, depth, kernel, mixtures)).stem, arch=ARCH,
                      match={"dim": dim, "depth": depth, "kernel": kernel, "mixtures": mixtures, "coef_q": model.coef_q},
                      device=device, lr=lr, minutes=minutes, steps=steps, checkpoint_minutes=checkpoint_minutes,
                      resume=resume, fresh=fresh, half_life=half_life, warmup=warmup, seed=seed, data=Path(data),
                      dev_score=dev_bits if val else None, dev_metric="-bpsp", log=lambda m: print(m, flush=True))
    pool = [load_rgb(p) for p in run.files]
    model.train()

    def step() -> dict:
        x = batch_tensor(random_crops(pool, batch, patch, run.rng, augment=grey), device, unit=False)
        bpsp = nll_bits(model(MGCF.normalise(x)), x).mean()
        run.opt.zero_grad()
        bpsp.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        run.opt.step()
        return {"bpsp": float(bpsp.detach())}

    run.loop(step, log_every)
    run.finish_stage(batch=batch, patch=patch)
    shipped = run.final_model().to("cpu").eval()
    return run.ship(shipped.state_dict(), {
        **shipped.config(), "batch": batch, "patch": patch, "lr": lr,
        "params": sum(p.numel() for p in shipped.parameters()),
        "source": f"pixarc train callic --dim {dim} --depth {depth} --kernel {kernel} --mixtures {mixtures} "
                  f"(cumulative steps)",
    })
