"""Training the base models of the adaptive codec (CompressAI convention).

    pixarc train lossy --data ../shared/data/train/crops --quality 3 --steps 200000 \\
        --out plugins/pixarc_adaptive/weights [--device cuda] [--N 128 --M 192]

Loss ``λ·255²·MSE + bpp`` with λ from ``LAMBDAS[quality]``; Adam on the network, a second
Adam on the entropy bottleneck's quantiles (the auxiliary loss); random crops and flips
of every image under ``--data`` (sorted, so a seed reproduces a run). At the end the CDF
tables are built (``update``) and saved with the weights (floating tensors as fp16 to
keep the repository small, tables as integers), the file's sha256 goes into
``weights.json`` together with what produced it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from . import LAMBDAS, ZOO_NM

EXTENSIONS = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _images(data: Path) -> list[Path]:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"no training images under {data}")
    return files


def train(data: str, quality: int, steps: int, out: str, batch: int = 8, patch: int = 256, lr: float = 1e-4,
          device: str = "cpu", seed: int = 0, N: int | None = None, M: int | None = None,
          log_every: int = 100) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pixarc import compressai_compat
    from pixarc.weights import save_weights

    compressai_compat.load()
    from compressai.models import MeanScaleHyperprior

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    N, M = N or ZOO_NM[quality][0], M or ZOO_NM[quality][1]
    lam = LAMBDAS[quality]
    files = _images(Path(data))
    pool = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    model = MeanScaleHyperprior(N, M).to(device).train()
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(main_params, lr=lr), torch.optim.Adam(aux_params, lr=1e-3)
    rng = random.Random(seed)

    def batch_tensor() -> torch.Tensor:
        crops = []
        for _ in range(batch):
            a = pool[rng.randrange(len(pool))]
            h, w = a.shape[:2]
            ph, pw = min(patch, h - h % 64 or h), min(patch, w - w % 64 or w)
            y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
            c = a[y : y + ph, x : x + pw]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            crops.append(np.ascontiguousarray(c[:min(ph, patch), :min(pw, patch)]))
        side_h = min(c.shape[0] for c in crops) // 64 * 64 or 64
        side_w = min(c.shape[1] for c in crops) // 64 * 64 or 64
        t = np.stack([c[:side_h, :side_w] for c in crops]).astype(np.float32) / 255
        return torch.from_numpy(t).permute(0, 3, 1, 2).to(device)

    t0, history = time.time(), []
    for step in range(1, steps + 1):
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
        if step % log_every == 0 or step == steps:
            psnr = float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10)))
            loss_v, bpp_v = float(loss.detach()), float(bpp.detach())
            history.append({"step": step, "loss": loss_v, "bpp": bpp_v, "psnr": psnr})
            print(f"step {step}: loss {loss_v:.4f} bpp {bpp_v:.4f} psnr {psnr:.2f} ({time.time() - t0:.0f} s)", flush=True)
    model = model.to("cpu").eval()
    model.update(force=True)
    entry = {
        "arch": "mbt2018-mean", "quality": quality, "N": N, "M": M, "lambda": lam, "steps": steps, "batch": batch,
        "patch": patch, "lr": lr, "seed": seed, "images": len(files), "data": str(data),
        "final": history[-1] if history else None,
        "source": f"pixarc train lossy --quality {quality} --steps {steps}",
    }
    entry = save_weights(out, f"mbt2018-mean-q{quality}-N{N}-M{M}.pt", model.state_dict(), entry)
    return entry
