"""``pixarc train classifier``: fit the ``cnn`` domain classifier on ``DIR/<domain>/*``.

Reproducible (sorted files, fixed seeds); augmentation: random crops of 60–100 % of the
image and horizontal flips, drawn once per epoch. Writes fp16 weights and a
``weights.json`` entry (sha256, width, epochs, per-domain image counts, final training
accuracy). Evaluate on the dev set with ``benchmarks/classifier.py --classifier cnn``.
"""

from __future__ import annotations

import random
from pathlib import Path

from pixarc.classify import DOMAINS

from . import ARCH, build_model, inputs

EXTENSIONS = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}


def train(data: str, out: str, epochs: int = 30, width: int = 32, lr: float = 2e-3, batch: int = 32,
          seed: int = 0, device: str = "cpu") -> dict:
    import torch
    from PIL import Image

    from pixarc.images import probe_and_load
    from pixarc.weights import save_weights

    random.seed(seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    samples = []
    for label, domain in enumerate(DOMAINS):
        for p in sorted(Path(data, domain).glob("*")):
            if p.suffix.lower() in EXTENSIONS:
                src = probe_and_load(p.read_bytes())
                if src.image is not None:
                    samples.append((src.image, label))
    if len({label for _, label in samples}) < 2:
        raise SystemExit(f"need images of several domains under {data}/<domain>/")
    n_features = len(inputs(samples[0][0])[1])
    model = build_model(width, n_features).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    acc = 0.0
    for epoch in range(epochs):
        xs, fs, ys = [], [], []
        for image, label in samples:
            w, h = image.size
            s = rng.uniform(0.6, 1.0) ** 0.5
            cw, ch = max(8, int(w * s)), max(8, int(h * s))
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = image.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            x, f = inputs(crop)
            xs.append(x)
            fs.append(f)
            ys.append(label)
        order = list(range(len(ys)))
        rng.shuffle(order)
        model.train()
        correct = 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = torch.stack([xs[j] for j in idx]).to(device)
            f = torch.stack([fs[j] for j in idx]).to(device)
            y = torch.tensor([ys[j] for j in idx], device=device)
            logits = model(x, f)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
        sched.step()
        acc = correct / len(order)
        print(f"epoch {epoch + 1}/{epochs}: training accuracy {acc:.3f}", flush=True)
    model = model.cpu().eval()
    counts = {d: sum(1 for _, label in samples if label == i) for i, d in enumerate(DOMAINS)}
    entry = {"arch": ARCH, "width": width, "n_features": n_features, "epochs": epochs, "seed": seed,
             "images": counts, "train_accuracy": acc, "data": str(data),
             "source": f"pixarc train classifier --epochs {epochs} --width {width}"}
    entry = save_weights(out, f"domainnet-w{width}.pt", model.state_dict(), entry)
    return entry
