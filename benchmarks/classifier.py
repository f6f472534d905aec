"""Domain classifier accuracy on ../shared/data/dev (never trained or tuned on).

    .venv/bin/python benchmarks/classifier.py [DEV_DIR] [--classifier stats --classifier cnn]
                                              [--policy default]

Every classifier plugin that is installed and can run (or only those named) is measured in
the same run, on the same decoded images: the confusion matrix (rows: truth, columns:
prediction), accuracy, per-domain recall, the share of images under the policy's
``min_confidence`` (routed ``unknown``) with the accuracy on the rest, milliseconds per
image (classification only, decoding excluded; wall clock and this process's CPU time,
which a busy shared machine does not inflate; the first call, which loads weights, is
timed separately), and a reliability table (mean confidence vs accuracy per confidence
bin): for a calibrated classifier the two columns agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pixarc.classify import DOMAINS
from pixarc.images import probe_and_load
from pixarc.plugins import default_registry
from pixarc.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
BINS = (0.0, 0.35, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0001)


def reliability(conf: list[float], correct: list[bool]) -> list[str]:
    rows = ["  confidence       n  mean conf  accuracy"]
    for lo, hi in zip(BINS, BINS[1:]):
        idx = [i for i, c in enumerate(conf) if lo <= c < hi]
        if idx:
            mc = sum(conf[i] for i in idx) / len(idx)
            acc = sum(correct[i] for i in idx) / len(idx)
            rows.append(f"  [{lo:.2f}, {min(hi, 1.0):.2f}) {len(idx):4d}  {mc:9.3f}  {acc:8.3f}")
    ece = sum(abs(sum(conf[i] for i in idx) - sum(correct[i] for i in idx))
              for lo, hi in zip(BINS, BINS[1:]) for idx in [[i for i, c in enumerate(conf) if lo <= c < hi]])
    rows.append(f"  expected calibration error {ece / max(1, len(conf)):.3f}")
    return rows


def evaluate(clf, images: list[tuple[str, object]], threshold: float) -> list[str]:
    t0 = time.perf_counter()
    clf.classify(images[0][1])  # loads weights; not counted in the per-image time
    first = time.perf_counter() - t0
    confusion = {t: {p: 0 for p in DOMAINS} for t in DOMAINS}
    conf, correct, times, cpu = [], [], [], []
    for truth, image in images:
        t0, c0 = time.perf_counter(), time.process_time()
        c = clf.classify(image)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        confusion[truth][c.domain] += 1
        conf.append(c.confidence)
        correct.append(c.domain == truth)
    n = len(images)
    low = [i for i in range(n) if conf[i] < threshold]
    kept = [i for i in range(n) if conf[i] >= threshold]
    out = [f"classifier {clf.classifier_id} (version {clf.version()}): {n} images",
           "  truth \\ pred " + " ".join(f"{d[:10]:>10s}" for d in DOMAINS) + "     recall"]
    for t in DOMAINS:
        total = sum(confusion[t].values())
        out.append(f"  {t:12s} " + " ".join(f"{confusion[t][p]:10d}" for p in DOMAINS)
                   + f"  {100 * confusion[t][t] / max(1, total):8.1f} %")
    out.append(f"  accuracy {sum(correct)}/{n} = {100 * sum(correct) / n:.1f} %; "
               f"min recall {min(100 * confusion[t][t] / max(1, sum(confusion[t].values())) for t in DOMAINS):.1f} %")
    out.append(f"  below min_confidence {threshold}: {len(low)}/{n} = {100 * len(low) / n:.1f} % routed 'unknown' "
               f"({sum(not correct[i] for i in low)} of them misclassified); accuracy on the rest "
               f"{sum(correct[i] for i in kept)}/{len(kept)}")
    out.append(f"  {1000 * sum(times) / n:.1f} ms/image wall (mean), {1000 * max(times):.1f} ms max; "
               f"{1000 * sum(cpu) / n:.1f} ms/image CPU (mean), {1000 * max(cpu):.1f} ms max; "
               f"first call {1000 * first:.0f} ms (loads weights, if any)")
    out += reliability(conf, correct)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--classifier", action="append", help="Only these (default: every installed classifier).")
    ap.add_argument("--policy", default=None, help="Policy whose min_confidence defines 'unknown' (default: default).")
    args = ap.parse_args()
    reg = default_registry()
    threshold = load_policy(args.policy).min_confidence
    images = []
    for truth in DOMAINS:
        for path in sorted(Path(args.dev, truth).glob("*")):
            image = probe_and_load(path.read_bytes()).image
            if image is not None:
                images.append((truth, image))
    sizes = [im.width * im.height for _, im in images]
    print(f"{args.dev}: {len(images)} images, {min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f} Mpx; "
          f"policy {args.policy or 'default'} min_confidence {threshold}")
    for cid in args.classifier or sorted(reg.classifiers):
        clf = reg.classifier(cid)
        why = clf.unavailable_reason()
        if why:
            print(f"classifier {cid}: not measured ({why})")
            continue
        print("\n".join(evaluate(clf, images, threshold)))


if __name__ == "__main__":
    main()
