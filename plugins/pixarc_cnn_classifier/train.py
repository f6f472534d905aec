"""``pixarc train classifier``: fit the ``cnn`` domain classifier on ``DIR/<domain>/*``.

    pixarc train classifier --data ../shared/data/train/whole --extra ../shared/data/train/crops \\
        --out plugins/pixarc_cnn_classifier/weights

Reproducible (sorted files, fixed seeds). Steps:

1. statistics (``features.py``) of every image and of ``--augment`` augmented copies per
   whole image (random crop of 60–100 %, flip, downscale by 1–2× with a random filter,
   now and then a JPEG round trip at quality 70–95); ``--extra`` folders (e.g. the 256-px
   ``train/crops``) add one more sample per file;
2. model selection and calibration on held-out training images only — never on dev:
   images are split into ``--folds`` folds by *source group* (from ``MANIFEST.tsv`` when
   the data has one: the source directory, so Wesnoth families, openclipart categories
   and GIMP help chapters stay on one side), each candidate (hidden width, weight decay)
   is trained on the other folds and scored on the held-out whole images (their
   un-augmented statistics); the best by held-out log-loss wins; a temperature is fitted
   on the winner's held-out logits (confidence = calibrated probability) and the
   held-out accuracy, per-domain recall and reliability table are printed;
3. the winner is trained again on everything and saved with the temperature: fp16, sha256
   and provenance (epochs, minutes, device, sha256 of the training data, held-out scores)
   in ``weights.json``.

``--minutes`` bounds the augmentation rounds (the expensive part): rounds that would end
after the budget are skipped and the count used is recorded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from pixarc.classify import DOMAINS

from . import ARCH, FORMAT, build_model

EXTENSIONS = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}
CANDIDATES = ((0, 1.0), (32, 0.1), (32, 1.0), (64, 1.0))  # (hidden width, AdamW weight decay)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Sample:
    path: Path
    label: int
    group: str
    whole: bool  # from --data (scored when held out) rather than an --extra folder


def _manifest_groups(data: Path) -> dict[Path, str]:
    """Source group per file from a ``MANIFEST.tsv`` above ``data`` (file paths in it are
    relative to the manifest's parent or its parent); empty when there is none."""
    for up in (data.parent, data.parent.parent, data):
        m = up / "MANIFEST.tsv"
        if m.exists():
            out = {}
            with open(m, newline="") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    group = f"{row.get('domain')}:{row.get('source_package')}:{Path(row.get('source_path', '')).parent}"
                    for base in (m.parent, m.parent.parent):
                        out[(base / row["file"]).resolve()] = group
            return out
    return {}


def collect(data: str, extra: tuple[str, ...] = ()) -> list[Sample]:
    samples = []
    for root, whole in [(Path(data), True)] + [(Path(e), False) for e in extra]:
        groups = _manifest_groups(root)
        for label, domain in enumerate(DOMAINS):
            for p in sorted(Path(root, domain).glob("*")):
                if p.suffix.lower() in EXTENSIONS:
                    # without a manifest every file is its own group
                    samples.append(Sample(p, label, groups.get(p.resolve(), f"{domain}:{p.stem}"), whole))
    return samples


def data_sha256(samples: list[Sample]) -> str:
    """One hash for the training set: domain/file names and contents, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{DOMAINS[s.label]}/{s.path.name}".encode() + b"\0")
        h.update(hashlib.sha256(s.path.read_bytes()).digest())
    return h.hexdigest()


def augment(image, rng: random.Random):
    from PIL import Image

    w, h = image.size
    s = rng.uniform(0.6, 1.0) ** 0.5
    cw, ch = max(16, int(w * s)), max(16, int(h * s))
    x0, y0 = rng.randint(0, max(0, w - cw)), rng.randint(0, max(0, h - ch))
    image = image.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:  # the same content at a smaller scale, through various filters
        f = rng.uniform(0.5, 1.0)
        size = (max(16, int(image.width * f)), max(16, int(image.height * f)))
        image = image.resize(size, rng.choice([Image.BOX, Image.BILINEAR, Image.LANCZOS]))
    if rng.random() < 0.15:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=rng.randint(70, 95))
        image = Image.open(buf).convert("RGB")
    return image


def _fold(group: str, folds: int) -> int:
    return zlib.crc32(group.encode()) % folds


def fit(x, y, hidden: int, wd: float, members: int, epochs: int, seed: int, lr: float = 1e-2):
    """Full-batch AdamW, class-balanced cross-entropy; every member from its own seed."""
    import torch

    torch.manual_seed(seed)
    model = build_model(x.shape[1], hidden, members)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0) + 1e-3)  # constant statistics must not blow up
    counts = torch.bincount(y, minlength=len(DOMAINS)).float().clamp(min=1)
    weight = counts.sum() / (len(DOMAINS) * counts)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    model.train()
    for _ in range(epochs):
        logits = model.member_logits(x)
        loss = sum(torch.nn.functional.cross_entropy(m, y, weight=weight) for m in logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def fit_temperature(logits, y) -> float:
    """The scalar T minimising held-out log-loss of softmax(logits / T)."""
    import torch

    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20))


def reliability(conf: list[float], correct: list[bool], edges=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0001)) -> list[str]:
    rows = ["confidence      n   mean conf   accuracy"]
    for lo, hi in zip(edges, edges[1:]):
        idx = [i for i, c in enumerate(conf) if lo <= c < hi]
        if idx:
            mc = sum(conf[i] for i in idx) / len(idx)
            acc = sum(correct[i] for i in idx) / len(idx)
            rows.append(f"[{lo:.2f}, {min(hi, 1):.2f}) {len(idx):5d}   {mc:9.3f}   {acc:8.3f}")
    return rows


def _forget_previous(out: Path) -> None:
    """One classifier per weights folder: drop earlier entries of this architecture (and
    their files) so the plugin never loads a stale one."""
    import json

    manifest = out / "weights.json"
    if manifest.exists():
        doc = json.loads(manifest.read_text())
        for name in [n for n, e in doc.get("files", {}).items() if e.get("arch") == ARCH]:
            (out / name).unlink(missing_ok=True)
            del doc["files"][name]
        manifest.write_text(json.dumps(doc, indent=2, sort_keys=True))


def train(data: str, out: str, extra: tuple[str, ...] = (), augment_rounds: int = 6, epochs: int = 300,
          members: int = 5, folds: int = 5, seed: int = 0, minutes: float = 8.0, candidates=CANDIDATES,
          log=print) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch problems: extra threads only contend (2-core machine)
    try:
        return _train(data, out, tuple(extra), augment_rounds, epochs, members, folds, seed, minutes, candidates, log)
    finally:
        torch.set_num_threads(threads)


def _train(data, out, extra, augment_rounds, epochs, members, folds, seed, minutes, candidates, log) -> dict:
    import numpy as np
    import torch

    from pixarc.classify import to_rgb8
    from pixarc.images import probe_and_load
    from pixarc.weights import save_weights

    from .features import N_FEATURES, features

    t0 = time.time()
    torch.manual_seed(seed)
    samples = collect(data, tuple(extra))
    images = []
    for s in samples:
        src = probe_and_load(s.path.read_bytes())
        images.append(to_rgb8(src.image) if src.image is not None else None)
    samples, images = zip(*[(s, im) for s, im in zip(samples, images) if im is not None]) if samples else ((), ())
    if len({s.label for s in samples if s.whole}) < 2:
        raise SystemExit(f"need images of several domains under {data}/<domain>/")
    fold_of = [_fold(s.group, folds) for s in samples]
    if len({f for f, s in zip(fold_of, samples) if s.whole}) < 2:  # few groups: fall back to files
        fold_of = [i % folds for i in range(len(samples))]
    log(f"{len(samples)} images ({sum(s.whole for s in samples)} whole), {len({s.group for s in samples})} source groups, "
        f"{folds} folds")

    # 1. statistics: originals, then augmentation rounds while the budget lasts
    rows: list[tuple[int, np.ndarray, bool]] = [(i, features(im), True) for i, im in enumerate(images)]
    per_round = time.time() - t0
    rng = random.Random(seed)
    rounds = 0
    for r in range(augment_rounds):
        if time.time() - t0 + per_round > minutes * 60 * 0.8:  # leave time to fit
            break
        t_round = time.time()
        for i, (s, im) in enumerate(zip(samples, images)):
            if s.whole or r == 0:  # extra folders: one augmented copy
                rows.append((i, features(augment(im, rng)), False))
        rounds += 1
        per_round = time.time() - t_round
    log(f"statistics of {len(rows)} samples ({rounds} augmentation rounds) in {time.time() - t0:.0f} s")
    idx = torch.tensor([i for i, _, _ in rows])
    x = torch.from_numpy(np.stack([f for _, f, _ in rows]))
    y = torch.tensor([samples[i].label for i, _, _ in rows])
    fold = torch.tensor([fold_of[i] for i, _, _ in rows])
    scored = torch.tensor([orig and samples[i].whole for i, _, orig in rows])

    # 2. held-out selection and calibration
    best = None
    for hidden, wd in candidates:
        logits = torch.zeros(len(rows), len(DOMAINS))
        for k in range(folds):
            test = (fold == k) & scored
            if not test.any():
                continue
            m = fit(x[fold != k], y[fold != k], hidden, wd, members, epochs, seed)
            with torch.no_grad():
                logits[test] = m(x[test])
        ho_logits, ho_y = logits[scored], y[scored]
        nll = float(torch.nn.functional.cross_entropy(ho_logits, ho_y))
        acc = float((ho_logits.argmax(1) == ho_y).float().mean())
        log(f"held-out: hidden {hidden:3d}, weight decay {wd:g}: accuracy {acc:.3f}, log-loss {nll:.3f}")
        if best is None or nll < best[0]:
            best = (nll, hidden, wd, ho_logits, acc)
    _, hidden, wd, ho_logits, ho_acc = best
    temperature = fit_temperature(ho_logits, ho_y)
    probs = torch.softmax(ho_logits / temperature, 1)
    conf, pred = probs.max(1)
    correct = (pred == ho_y).tolist()
    recall = {d: float((pred[ho_y == i] == i).float().mean()) for i, d in enumerate(DOMAINS) if (ho_y == i).any()}
    log(f"chosen: hidden {hidden}, weight decay {wd:g}; temperature {temperature:.3f}; held-out accuracy {ho_acc:.3f}; "
        "recall " + ", ".join(f"{d} {r:.2f}" for d, r in recall.items()))
    for line in reliability(conf.tolist(), correct):
        log("  " + line)
    below = {t: float((conf < t).float().mean()) for t in THRESHOLDS}
    wrong_below = {t: float(((conf < t) & (pred != ho_y)).sum() / max(1, int((pred != ho_y).sum()))) for t in THRESHOLDS}
    for t in THRESHOLDS:
        log(f"  confidence < {t}: {100 * below[t]:.1f} % of held-out images, holding {100 * wrong_below[t]:.0f} % of the errors")

    # the policy threshold this suggests: the strictest that sends at most 5 % of held-out
    # images to the `unknown` route (the budget)
    suggested = max([t for t in THRESHOLDS if below[t] <= 0.05], default=THRESHOLDS[0])
    log(f"suggested min_confidence {suggested}")

    # 3. final model on everything
    model = fit(x, y, hidden, wd, members, epochs, seed)
    model.temperature.fill_(temperature)
    with torch.no_grad():
        train_acc = float((model(x).argmax(1) == y).float().mean())
    total_minutes = (time.time() - t0) / 60
    counts = {d: sum(1 for s in samples if s.label == i and s.whole) for i, d in enumerate(DOMAINS)}
    extra_counts = {d: sum(1 for s in samples if s.label == i and not s.whole) for i, d in enumerate(DOMAINS)}
    entry = {
        "arch": ARCH, "format": FORMAT, "n_features": N_FEATURES, "hidden": hidden, "members": members,
        "weight_decay": wd, "epochs": epochs, "steps": epochs * members, "seed": seed,
        "augment_rounds": rounds, "samples": len(rows), "images": counts, "extra_images": extra_counts,
        "temperature": round(temperature, 4), "train_accuracy": round(train_acc, 4),
        "heldout": {"folds": folds, "split": "by source group", "accuracy": round(ho_acc, 4),
                    "log_loss": round(float(torch.nn.functional.cross_entropy(ho_logits / temperature, ho_y)), 4),
                    "recall": {d: round(r, 3) for d, r in recall.items()},
                    "share_below": {str(t): round(v, 4) for t, v in below.items()},
                    "errors_below": {str(t): round(v, 4) for t, v in wrong_below.items()},
                    "suggested_min_confidence": suggested},
        "data": [str(data), *map(str, extra)], "data_sha256": data_sha256(list(samples)),
        "minutes": round(total_minutes, 2), "devices": ["cpu"],  # the networks are tiny: CPU only
        "source": "pixarc train classifier" + "".join(f" --extra {e}" for e in extra)
        + f" --augment {augment_rounds} --epochs {epochs} --members {members} --folds {folds} --seed {seed}",
        "license": "trained on the pixarc data packs (see ../shared/data/README.md)",
    }
    _forget_previous(Path(out))
    entry = save_weights(out, f"domainnet-f{N_FEATURES}-h{hidden}.pt", model.state_dict(), entry)
    log(f"final model: training accuracy {train_acc:.3f}; {total_minutes:.1f} min")
    return entry
