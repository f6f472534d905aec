"""Is the adaptive codec's rate ladder monotone? Base model (no adaptation) of every
installed rate point of ``adaptive-mbt2018-mean`` on every dev image: bpp and PSNR, and for
each subset of rate points, on how many images PSNR does not rise with the rate.

    .venv/bin/python benchmarks/adaptive_ladder.py [DEV_DIR] [--all-weights]

``--all-weights`` measures the decode-only rate points too (how the shipped ladder was chosen).
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from pathlib import Path

from PIL import Image

from pixarc.images import probe_and_load
from pixarc.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--all-weights", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from pixarc_adaptive import AdaptiveCodec

    codec = AdaptiveCodec()
    pool = codec.weights if args.all_weights else codec.encoding_weights
    by_q = {int(w.entry["quality"]): w for w in reversed(pool)}  # the first file per quality wins
    codec.choose_weights = lambda params=None: by_q.get(int((params or {}).get("quality", -1)))
    qs = sorted(by_q)
    rows = {}
    for f in sorted(Path(args.dev).glob("*/*.png")):
        buf = io.BytesIO()
        Image.open(f).convert("RGB").save(buf, "PNG")
        src = probe_and_load(buf.getvalue())
        row = []
        for q in qs:
            payload = codec.encode(src, codec.validate_params({"quality": q, "latent_iters": 0, "adapter_iters": 0}))
            row.append((8 * len(payload) / (src.image.width * src.image.height), psnr(src.image, codec.decode(payload).image)))
        rows[f] = row
        print(f"{f.parent.name:10s} {f.name[:24]:24s} " + " ".join(f"q{q} {b:.3f} bpp {p:.2f} dB" for q, (b, p) in zip(qs, row)),
              flush=True)
    print(f"\n{len(rows)} images; rate points {qs}")
    for n in range(len(qs), 1, -1):
        for pts in itertools.combinations(range(len(qs)), n):
            bad = sum(any(not (r[b][0] > r[a][0] and r[b][1] > r[a][1]) for a, b in zip(pts, pts[1:]))
                      for r in rows.values())
            print(f"ladder {[qs[i] for i in pts]}: PSNR does not rise with the rate on {bad} of {len(rows)} images")


if __name__ == "__main__":
    sys.exit(main())
