"""Training the base models of the adaptive codec (CompressAI convention).

    pixarc train lossy --data ../shared/data/train/crops --quality 3 --minutes 90 \\
        --out plugins/pixarc_adaptive/weights [--dev ../shared/data/dev] [--device cuda]

Loss ``λ·255²·MSE + bpp`` with λ from ``LAMBDAS[quality]``; Adam on the network, a second
Adam on the entropy bottleneck's quantiles (the auxiliary loss); random crops (sides
multiples of 64) and flips. ``--dev``: the same loss on dev centre crops (eval mode:
rounded latents). ``--init-from`` starts a new rate point from another one's weights
(shipped fp16 file or a checkpoint): the cheap way to get several rate points from one
long training. At the end the CDF tables are built (``update``) and the weights saved
(floating tensors as fp16, tables as integers).

The rest is :class:`pixarc.training.TrainingRun`: a run continues the newest shipped model
of the same rate point and shape (``--fresh`` starts over, ``--resume`` continues a
checkpoint), the learning rate follows the cumulative step count (no per-run drop at the
end: the weight average that ships anneals instead), and a new
``mbt2018-mean-q<q>-N<N>-M<M>[-vN].pt`` ships with every run's stage.
"""

from __future__ import annotations

from pathlib import Path

from .constants import ARCH, LAMBDAS, ZOO_NM


def _load_state(path: str, device: str) -> dict:
    """A start point: a training checkpoint (``.ckpt``) or shipped weights, checked against
    their ``weights.json`` entry."""
    import torch

    from pixarc.weights import load_from_manifest

    p = Path(path)
    if p.suffix == ".ckpt":
        return torch.load(p, map_location=device, weights_only=True)["model"]
    return load_from_manifest(p.parent, p.name, map_location=device)[0]


def rd_loss(model, x, lam: float):
    """(λ·255²·MSE + bpp, bpp, MSE) of a batch: the training loss."""
    import torch

    result = model(x)
    n_pix = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-torch.log2(lk.clamp_min(1e-9)).sum() for lk in result["likelihoods"].values()) / n_pix
    mse = torch.nn.functional.mse_loss(result["x_hat"], x)
    return lam * 255**2 * mse + bpp, bpp, mse


def train(data: str, quality: int, out: str, steps: int = 10**9, minutes: float = 60.0, batch: int = 16,
          patch: int = 128, lr: float = 1e-4, device: str = "cpu", seed: int = 0, N: int | None = None,
          M: int | None = None, resume: bool = False, init_from: str | None = None,
          checkpoint_minutes: float = 5.0, log_every: int = 100, fresh: bool = False, dev: str | None = None,
          half_life: int = 20_000, warmup: int = 200) -> dict | None:
    """Train and ship; returns the new weights.json entry (None: dev kept the shipped model)."""
    import torch

    from pixarc import compressai_compat
    from pixarc.tensors import batch_tensor, image_tensor
    from pixarc.training import TrainingRun, centre_crop, dev_images, load_rgb, random_crops

    compressai_compat.load()
    from compressai.models import MeanScaleHyperprior

    N, M = N or ZOO_NM[quality][0], M or ZOO_NM[quality][1]
    lam = LAMBDAS[quality]
    val = [image_tensor(centre_crop(load_rgb(p), 256, 64), device) for p in dev_images(Path(dev))] if dev else []
    model = MeanScaleHyperprior(N, M).to(device)
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    run = TrainingRun(model, torch.optim.Adam(main_params, lr=lr), out=out, stem=f"{ARCH}-q{quality}-N{N}-M{M}",
                      arch=ARCH, match={"quality": quality, "N": N, "M": M}, device=device, lr=lr, minutes=minutes,
                      steps=steps, checkpoint_minutes=checkpoint_minutes, resume=resume, fresh=fresh,
                      half_life=half_life, warmup=warmup, seed=seed, data=Path(data),
                      dev_score=(lambda m: -sum(float(rd_loss(m, x, lam)[0]) for x in val) / len(val)) if val else None,
                      dev_metric="-rd_loss", log=lambda m: print(m, flush=True),
                      start_from=(Path(init_from).name, _load_state(init_from, device)) if init_from else None)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    run.attach(aux_opt, "aux_opt")
    model.to(memory_format=torch.channels_last).train()
    pool = [load_rgb(p) for p in run.files]

    def step() -> dict:
        x = batch_tensor(random_crops(pool, batch, patch, run.rng, multiple=64), device, channels_last=True)
        loss, bpp, mse = rd_loss(model, x, lam)
        run.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        run.opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
        return {"loss": float(loss.detach()), "bpp": float(bpp.detach()),
                "psnr": float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10)))}

    run.loop(step, log_every)
    run.finish_stage(batch=batch, patch=patch)
    shipped = run.final_model().to("cpu").to(memory_format=torch.contiguous_format).eval()
    shipped.update(force=True)
    return run.ship(shipped.state_dict(), {
        "quality": quality, "N": N, "M": M, "lambda": lam, "batch": batch, "patch": patch, "lr": lr,
        "source": f"pixarc train lossy --quality {quality} --N {N} --M {M} (cumulative steps)",
    })
