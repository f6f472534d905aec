"""``pixarc train svr``: the two stages of M-AdaCode training, then the entropy tables.

Stage 1 (``--stage1-steps``): encoder, codebooks and decoder with m = K, L1 + VQ losses.
Stage 2 (``--stage2-steps``): encoder and codebooks frozen; predictor, filler and
decoder with L1 + (1 − MS-SSIM), m drawn uniformly from 1..K per batch so one model
serves every rate point. Finally the codeword-index and weight frequencies over the
training crops become the entropy coder's learned tables. Reproducible: sorted files,
fixed seeds. Writes fp16 weights + a ``weights.json`` entry (sha256, sizes, steps).
"""

from __future__ import annotations

import random
from pathlib import Path

from . import ARCH

EXTENSIONS = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def train(data: str, out: str, stage1_steps: int, stage2_steps: int, batch: int = 8, patch: int = 128,
          width: int = 64, lr: float = 2e-4, seed: int = 0, device: str = "cpu") -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from pytorch_msssim import ms_ssim

    from pixarc.weights import save_weights

    from .model import K_BOOKS, W_LEVELS, W_MAX, W_STEP, SVRModel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"no training images under {data}")
    pool = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    patch = patch // 8 * 8

    def batch_tensor():
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

    model = SVRModel(width=width).to(device)
    log = []
    stage1 = list(model.encoder.parameters()) + [model.codebooks] + list(model.decoder.parameters()) + list(
        model.predictor.parameters()) + list(model.filler.parameters())
    opt = torch.optim.Adam(stage1, lr=lr)
    for step in range(1, stage1_steps + 1):
        x = batch_tensor()
        x_hat, vq = model(x, K_BOOKS)
        loss = F.l1_loss(x_hat, x) + vq
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == stage1_steps or step % 200 == 0:
            log.append({"stage": 1, "step": step, "loss": float(loss.detach())})
            print(f"stage 1 step {step}: loss {float(loss.detach()):.4f}", flush=True)
    model.encoder.requires_grad_(False)
    model.codebooks.requires_grad_(False)
    stage2 = list(model.predictor.parameters()) + list(model.filler.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(stage2, lr=lr)
    for step in range(1, stage2_steps + 1):
        x = batch_tensor()
        m = rng.randint(1, K_BOOKS)
        x_hat, _ = model(x, m)
        x_hat = x_hat.clamp(0, 1)
        perceptual = 1 - ms_ssim(x_hat, x, data_range=1.0, size_average=True) if min(x.shape[-2:]) > 160 else 0.0
        loss = F.l1_loss(x_hat, x) + 0.2 * perceptual
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == stage2_steps or step % 200 == 0:
            log.append({"stage": 2, "step": step, "m": m, "loss": float(loss.detach())})
            print(f"stage 2 step {step} (m={m}): loss {float(loss.detach()):.4f}", flush=True)
    # learned entropy tables: symbol frequencies over training crops (add-one smoothing)
    model.eval()
    index_counts = torch.ones(model.k, model.size)
    weight_counts = torch.ones(W_LEVELS)
    with torch.no_grad():
        for _ in range(max(1, min(50, len(pool)))):
            x = batch_tensor()
            y = model.encoder(x)
            idx = model.indices(y).cpu()
            for k in range(model.k):
                index_counts[k] += torch.bincount(idx[:, k].reshape(-1), minlength=model.size).float()
            w = model.predictor(y).clamp(-W_MAX, W_MAX).cpu()
            weight_counts += torch.bincount((torch.round(w / W_STEP) + W_LEVELS // 2).long().reshape(-1),
                                            minlength=W_LEVELS).float()
    model.index_counts.copy_(index_counts)
    model.weight_counts.copy_(weight_counts)
    entry = {"arch": ARCH, "width": width, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
             "batch": batch, "patch": patch, "seed": seed, "images": len(files), "data": str(data), "log": log[-4:],
             "source": f"pixarc train svr --stage1-steps {stage1_steps} --stage2-steps {stage2_steps}"}
    entry = save_weights(out, f"svr-w{width}.pt", model.cpu().state_dict(), entry)
    return entry
