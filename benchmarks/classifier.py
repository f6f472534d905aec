"""Domain classifier accuracy on ../shared/data/dev (never trained or tuned on).

    .venv/bin/python benchmarks/classifier.py [DEV_DIR] [--classifier stats]

Prints the confusion matrix (rows: truth, columns: prediction), accuracy, how many images
fall under the default policy's confidence threshold, and milliseconds per image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pixarc.classify import DOMAINS
from pixarc.images import probe_and_load
from pixarc.plugins import default_registry
from pixarc.routing import load_policy

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--classifier", default="stats")
    args = ap.parse_args()
    clf = default_registry().classifier(args.classifier)
    if clf.unavailable_reason():
        raise SystemExit(f"classifier {args.classifier}: {clf.unavailable_reason()}")
    threshold = load_policy().min_confidence
    confusion = {t: {p: 0 for p in DOMAINS} for t in DOMAINS}
    low, times = 0, []
    for truth in DOMAINS:
        for path in sorted(Path(args.dev, truth).glob("*")):
            image = probe_and_load(path.read_bytes()).image
            t0 = time.perf_counter()
            c = clf.classify(image)
            times.append(time.perf_counter() - t0)
            confusion[truth][c.domain] += 1
            low += c.confidence < threshold
    n = len(times)
    correct = sum(confusion[d][d] for d in DOMAINS)
    print(f"classifier {args.classifier} on {args.dev}: {n} images")
    print("truth \\ pred " + " ".join(f"{d[:10]:>10s}" for d in DOMAINS))
    for t in DOMAINS:
        print(f"{t:12s} " + " ".join(f"{confusion[t][p]:10d}" for p in DOMAINS))
    print(f"accuracy {correct}/{n} = {100 * correct / n:.1f} %; {low} below the default threshold {threshold} "
          f"(routed 'unknown'); {1000 * sum(times) / n:.1f} ms/image (mean), {1000 * max(times):.1f} ms max")


if __name__ == "__main__":
    main()
