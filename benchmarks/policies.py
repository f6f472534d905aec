"""Images/s and bytes of the built-in policies on the dev set, in one run.

    .venv/bin/python benchmarks/policies.py [DEV_DIR] [--policies fast,png,default]

Each policy archives DEV_DIR (all domains, in-process, one worker) into a fresh DEST;
printed: images/s, total bytes kept and their ratio to the sources (lossless PNG), and
which codecs were kept. The ``lossy`` policy has its own benchmark (lossy_policy.py).
Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pixarc import runs  # noqa: E402
from pixarc.manifest import latest, read_manifest  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(DEV))
    ap.add_argument("--policies", default="fast,png,default")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pixarc-policies-"))
    runs.archive_local(args.dev, str(tmp / "warm"), policy="png", limit=2)  # imports, plugin discovery
    print(f"dev: {args.dev}, cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'policy':8s} {'images':>6s} {'seconds':>8s} {'img/s':>6s} {'bytes':>10s} {'/source':>7s}  kept")
    for name in args.policies.split(","):
        dest = tmp / name
        t0 = time.perf_counter()
        s = runs.archive_local(args.dev, str(dest), policy=name)
        t = time.perf_counter() - t0
        rows = [r for r in latest(read_manifest(str(dest))).to_pylist() if r["status"] == "done"]
        kept = sum(r["bitstream_bytes"] for r in rows)
        source = sum(r["source_bytes"] for r in rows)
        codecs = Counter(r["codec_id"] for r in rows)
        print(f"{name:8s} {s.totals.done:6d} {t:8.1f} {s.totals.done / t:6.2f} {kept:10d} {kept / source:7.3f}  "
              + ", ".join(f"{c} {n}" for c, n in codecs.most_common()), flush=True)


if __name__ == "__main__":
    main()
