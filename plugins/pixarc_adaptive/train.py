"""Training the base models of the adaptive codec (CompressAI convention).

    pixarc train lossy --data ../shared/data/train/crops --quality 3 --minutes 90 \\
        --out plugins/pixarc_adaptive/weights [--resume] [--init-from FILE.pt] [--device cuda]

Loss ``λ·255²·MSE + bpp`` with λ from ``LAMBDAS[quality]``; Adam on the network, a second
Adam on the entropy bottleneck's quantiles (the auxiliary loss); random crops and flips
of every image under ``--data`` (sorted, so a seed reproduces a run).

Built for a small CPU as much as for a GPU:

* ``--minutes`` is a time budget (``--steps`` a step budget; whichever ends first), so a
  run can be scheduled in the background; the learning rate drops ×10 for the last 15 %.
* A full training state (fp32 model, both optimisers, step, minutes so far) is written to
  ``<out>/<name>.ckpt`` every ``--checkpoint-minutes`` (atomically) and at the end;
  ``--resume`` continues from it, on any device.
* ``--init-from`` starts from another rate point's weights (shipped fp16 file or a
  checkpoint): the cheap way to get several rate points from one long training.

At the end the CDF tables are built (``update``) and the weights saved (floating tensors
as fp16, tables as integers); the file's sha256 goes into ``weights.json`` together with
what produced it: architecture, N/M, λ, cumulative steps and minutes, devices, the sha256
of the training data (file names and contents), and what it was initialised from.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from pixarc.training import atomic_save, data_sha256, training_images

from .constants import LAMBDAS, ZOO_NM


def _load_state(path: str, device: str) -> dict:
    """A start point: a training checkpoint (``.ckpt``) or shipped weights, checked against
    their ``weights.json`` entry."""
    import torch

    from pixarc.weights import load_from_manifest

    p = Path(path)
    if p.suffix == ".ckpt":
        return torch.load(p, map_location=device, weights_only=True)["model"]
    state, _ = load_from_manifest(p.parent, p.name, map_location=device)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def train(data: str, quality: int, out: str, steps: int = 10**9, minutes: float = 60.0, batch: int = 16,
          patch: int = 128, lr: float = 1e-4, device: str = "cpu", seed: int = 0, N: int | None = None,
          M: int | None = None, resume: bool = False, init_from: str | None = None,
          checkpoint_minutes: float = 5.0, log_every: int = 100) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pixarc import compressai_compat
    from pixarc.weights import save_weights

    compressai_compat.load()
    from compressai.models import MeanScaleHyperprior

    N, M = N or ZOO_NM[quality][0], M or ZOO_NM[quality][1]
    lam = LAMBDAS[quality]
    root = Path(data)
    files = training_images(root)
    data_hash = data_sha256(root, files)
    name = f"mbt2018-mean-q{quality}-N{N}-M{M}.pt"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / (Path(name).stem + ".ckpt")

    model = MeanScaleHyperprior(N, M).to(device)
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(main_params, lr=lr), torch.optim.Adam(aux_params, lr=1e-3)
    step, minutes_done, devices, origin = 0, 0.0, [], None
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step, minutes_done = int(ck["step"]), float(ck["minutes"])
        devices, origin = list(ck["devices"]), ck.get("init_from") or None
        print(f"resumed {ckpt_path} at step {step} ({minutes_done:.1f} min)", flush=True)
    elif resume:
        raise SystemExit(f"--resume: no checkpoint {ckpt_path}")
    elif init_from:
        model.load_state_dict(_load_state(init_from, device), strict=False)
        origin = f"{Path(init_from).name}"
        print(f"initialised from {init_from}", flush=True)
    if device not in devices:
        devices.append(device)
    model = model.to(memory_format=torch.channels_last).train()

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
            ph, pw = min(patch, h // 64 * 64 or h), min(patch, w // 64 * 64 or w)
            y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
            c = a[y : y + ph, x : x + pw]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            crops.append(c)
        side_h = min(c.shape[0] for c in crops) // 64 * 64 or 64
        side_w = min(c.shape[1] for c in crops) // 64 * 64 or 64
        t = np.stack([c[:side_h, :side_w] for c in crops]).astype(np.float32) / 255
        x = torch.from_numpy(t).permute(0, 3, 1, 2).to(device)
        return x.contiguous(memory_format=torch.channels_last)

    def save_checkpoint() -> None:
        atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                      "step": step, "minutes": minutes_done + (time.time() - t0) / 60, "devices": devices,
                      "init_from": origin or ""}, ckpt_path)

    t0 = last_ckpt = time.time()
    budget_s = minutes * 60
    start_step, history = step, []
    while step < steps and time.time() - t0 < budget_s:
        step += 1
        late = (time.time() - t0) / budget_s > 0.85 or (step - start_step) / max(1, steps - start_step) > 0.85
        for g in opt.param_groups:
            g["lr"] = lr / 10 if late else lr
        x = batch_tensor()
        result = model(x)
        n_pix = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = sum(-torch.log2(lk.clamp_min(1e-9)).sum() for lk in result["likelihoods"].values()) / n_pix
        mse = torch.nn.functional.mse_loss(result["x_hat"], x)
        loss = lam * 255**2 * mse + bpp
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
        if step % log_every == 0 or step >= steps:  # the last step is always in the history
            psnr = float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10)))
            loss_v, bpp_v = float(loss.detach()), float(bpp.detach())
            history.append({"step": step, "loss": loss_v, "bpp": bpp_v, "psnr": psnr})
            print(f"step {step}: loss {loss_v:.4f} bpp {bpp_v:.4f} psnr {psnr:.2f} "
                  f"({time.time() - t0:.0f} s, lr {opt.param_groups[0]['lr']:.0e})", flush=True)
        if time.time() - last_ckpt > checkpoint_minutes * 60:
            save_checkpoint()
            last_ckpt = time.time()
    save_checkpoint()
    total_minutes = minutes_done + (time.time() - t0) / 60
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    model.update(force=True)
    entry = {
        "arch": "mbt2018-mean", "quality": quality, "N": N, "M": M, "lambda": lam, "steps": step, "batch": batch,
        "patch": patch, "lr": lr, "seed": seed, "images": len(files), "data": root.name,
        "data_sha256": data_hash, "minutes": round(total_minutes, 1), "devices": devices,
        "init_from": origin, "final": history[-1] if history else None,
        "source": f"pixarc train lossy --quality {quality} --N {N} --M {M} (resumable; {step} steps)",
    }
    return save_weights(out, name, model.state_dict(), entry)
