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
3. the winner is trained on everything (``--epochs`` full-batch AdamW steps) and saved with
   the temperature: fp16, sha256 and provenance (cumulative epochs, minutes, sha256 of the
   training data, held-out scores) in ``weights.json``, as a new file that supersedes the
   classifier in use (one classifier per weights folder; the old file stays, marked
   ``decode_only``, so the classifications it made stay reproducible).

Like every trainer (:class:`pixarc.training.TrainingRun`), step 3 continues the newest
shipped classifier of the same shape (features, width, ensemble size) unless ``--fresh``:
its weights and standardisation, its cumulative epoch count, on which the learning rate
depends (``cumulative_lr``), and its stages. The temperature is fitted again on the
held-out logits of step 2 (fresh fits, ``--epochs`` long). With ``--dev DIR/<domain>/``,
the new classifier ships only if its log-loss there beats the classifier in use. Fits
are full-batch and take seconds: no checkpoints, no ``--resume``.

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

from .constants import ARCH, FORMAT
from .model import build_model

EXTENSIONS = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}
CANDIDATES = ((0, 1.0), (32, 0.1), (32, 1.0), (64, 1.0))  # (hidden width, AdamW weight decay)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LR = 1e-2
HALF_LIFE = 1_000  # epochs: where cumulative_lr has fallen to 1/√2 of LR (a continued fit takes smaller steps)


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


def samples_sha256(samples: list[Sample]) -> str:
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


def group_fold(group: str, folds: int) -> int:
    """The held-out fold of a source group (the same on every machine)."""
    return zlib.crc32(group.encode()) % folds


def new_model(x, hidden: int, members: int, seed: int):
    """An untrained classifier standardising ``x``'s statistics; every member from its own seed."""
    import torch

    torch.manual_seed(seed)
    model = build_model(x.shape[1], hidden, members)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0) + 1e-3)  # constant statistics must not blow up
    return model


def epoch(model, opt, x, y) -> float:
    """One full-batch step: class-balanced cross-entropy, summed over the members."""
    import torch

    counts = torch.bincount(y, minlength=len(DOMAINS)).float().clamp(min=1)
    loss = sum(torch.nn.functional.cross_entropy(m, y, weight=counts.sum() / (len(DOMAINS) * counts))
               for m in model.member_logits(x))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def fit(x, y, hidden: int, wd: float, members: int, epochs: int, seed: int, lr: float = LR):
    """Full-batch AdamW from scratch on the schedule of the shipped fits (``cumulative_lr``)."""
    import torch

    from pixarc.training import cumulative_lr

    model = new_model(x, hidden, members, seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    for e in range(1, epochs + 1):
        for g in opt.param_groups:
            g["lr"] = cumulative_lr(e, lr, warmup=0, half_life=HALF_LIFE)
        epoch(model, opt, x, y)
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


def load(samples: list[Sample]) -> tuple[tuple[Sample, ...], tuple]:
    """The samples whose image decodes, and their images as RGB."""
    from pixarc.classify import to_rgb8
    from pixarc.images import probe_and_load

    images = [probe_and_load(s.path.read_bytes()).image for s in samples]
    kept = [(s, to_rgb8(im)) for s, im in zip(samples, images) if im is not None]
    return tuple(zip(*kept)) if kept else ((), ())


def dev_log_loss(model, x, y) -> float:
    """Minus the log-loss of the calibrated probabilities (higher is better)."""
    import torch

    return -float(torch.nn.functional.cross_entropy(model(x), y))


def train(data: str, out: str, extra: tuple[str, ...] = (), augment_rounds: int = 6, epochs: int = 300,
          members: int = 5, folds: int = 5, seed: int = 0, minutes: float = 8.0, candidates=CANDIDATES,
          log=print, fresh: bool = False, dev: str | None = None) -> dict | None:
    """Train and ship; returns the new weights.json entry (None: dev kept the classifier in use)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch problems: extra threads only contend (2-core machine)
    try:
        return _train(data, out, tuple(extra), augment_rounds, epochs, members, folds, seed, minutes, candidates, log,
                      fresh, dev)
    finally:
        torch.set_num_threads(threads)


def _train(data, out, extra, augment_rounds, epochs, members, folds, seed, minutes, candidates, log, fresh,
           dev) -> dict | None:
    import numpy as np
    import torch

    from pixarc.training import TrainingRun
    from pixarc.weights import read_manifest, update_entries

    from .features import N_FEATURES, features

    t0 = time.time()
    torch.manual_seed(seed)
    samples, images = load(collect(data, tuple(extra)))
    if len({s.label for s in samples if s.whole}) < 2:
        raise SystemExit(f"need images of several domains under {data}/<domain>/")
    fold_of = [group_fold(s.group, folds) for s in samples]
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
    x = torch.from_numpy(np.stack([f for _, f, _ in rows]))
    y = torch.tensor([samples[i].label for i, _, _ in rows])
    fold = torch.tensor([fold_of[i] for i, _, _ in rows])
    scored = torch.tensor([orig and samples[i].whole for i, _, orig in rows])
    dev_score = None
    if dev:
        dev_samples, dev_ims = load(collect(dev))
        dev_x = torch.from_numpy(np.stack([features(im) for im in dev_ims]))
        dev_y = torch.tensor([s.label for s in dev_samples])
        dev_score = lambda m: dev_log_loss(m, dev_x, dev_y)  # noqa: E731
        log(f"dev: {len(dev_samples)} images (decides whether the new classifier replaces the one in use)")

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

    # 3. the classifier on everything: the shipped one of this shape continued, or a new one
    model = new_model(x, hidden, members, seed)
    run = TrainingRun(model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=wd), out=out,
                      stem=f"domainnet-f{N_FEATURES}-h{hidden}", arch=ARCH,
                      match={"format": FORMAT, "n_features": N_FEATURES, "hidden": hidden, "members": members},
                      device="cpu", lr=LR, minutes=10**6, run_steps=epochs, half_life=HALF_LIFE, warmup=0,
                      ema_decay=None, fresh=fresh, seed=seed, data=Path(data), files=[s.path for s in samples],
                      data_hash=samples_sha256(list(samples)), dev_score=dev_score, dev_metric="-log_loss",
                      track_best=False, checkpoints=False, started=t0, log=log)
    model.train()
    run.loop(lambda: {"loss": epoch(model, run.opt, x, y)}, log_every=max(1, epochs))
    model.eval()
    model.temperature.fill_(temperature)
    with torch.no_grad():
        train_acc = float((model(x).argmax(1) == y).float().mean())
    run.finish_stage(hidden=hidden, weight_decay=wd, augment_rounds=rounds, samples=len(rows))
    counts = {d: sum(1 for s in samples if s.label == i and s.whole) for i, d in enumerate(DOMAINS)}
    extra_counts = {d: sum(1 for s in samples if s.label == i and not s.whole) for i, d in enumerate(DOMAINS)}
    entry = run.ship(model.state_dict(), {
        "format": FORMAT, "n_features": N_FEATURES, "hidden": hidden, "members": members,
        "weight_decay": wd, "epochs": epochs, "augment_rounds": rounds, "samples": len(rows), "images": counts,
        "extra_images": extra_counts, "temperature": round(temperature, 4), "train_accuracy": round(train_acc, 4),
        "heldout": {"folds": folds, "split": "by source group", "accuracy": round(ho_acc, 4),
                    "log_loss": round(float(torch.nn.functional.cross_entropy(ho_logits / temperature, ho_y)), 4),
                    "recall": {d: round(r, 3) for d, r in recall.items()},
                    "share_below": {str(t): round(v, 4) for t, v in below.items()},
                    "errors_below": {str(t): round(v, 4) for t, v in wrong_below.items()},
                    "suggested_min_confidence": suggested},
        "data": [str(data), *map(str, extra)],
        "source": "pixarc train classifier" + "".join(f" --extra {e}" for e in extra)
        + f" --augment {augment_rounds} --epochs {epochs} --members {members} --folds {folds} --seed {seed}",
        "license": "trained on the pixarc data packs (see ../shared/data/README.md)",
    })
    if entry is None:
        return None
    # one classifier in use per folder: the new one supersedes every other (kept, decode_only)
    name = next(n for n, e in read_manifest(Path(out) / "weights.json").items() if e["sha256"] == entry["sha256"])
    update_entries(out, {n: {"decode_only": True, "superseded_by": name}
                         for n, e in read_manifest(Path(out) / "weights.json").items()
                         if e.get("arch") == ARCH and n != name and not e.get("decode_only")})
    log(f"final model: training accuracy {train_acc:.3f}; {entry['minutes']:.1f} min")
    return entry
