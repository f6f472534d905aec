"""SVR per m and per domain on ../shared/data/dev, against JPEG/WebP/AVIF at matched bpp.

    .venv/bin/python benchmarks/svr.py [DEV_DIR] [--limit 8] [--device auto]

For each image and each m, the SVR bitstream's bpp becomes a ``target_bpp`` for every
conventional codec (the best quality within that budget, found by the same bisection the
archive uses); bpp, PSNR and MS-SSIM are averaged per domain. Needs SVR weights
(``pixarc train svr``); without them it says so and stops.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from pixarc.classify import DOMAINS
from pixarc.engine import _encode_to_target, _encode_verified
from pixarc.images import probe_and_load
from pixarc.plugins import build_plugin_manager
from pixarc.routing import Route

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("jpeg", "webp", "avif")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    reg = build_plugin_manager()
    if "svr" not in reg.codecs or not reg.codec("svr")._found:
        raise SystemExit("svr: no weights installed (pixarc train svr --data ... --out plugins/pixarc_svr/weights)")
    svr = reg.codec("svr")
    route = Route("bench", False, ())
    print(f"{'domain':11s} {'m':>2s} {'codec':6s} {'bpp':>7s} {'PSNR':>7s} {'MS-SSIM':>8s}")
    for domain in DOMAINS:
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        sources = [s for s in (probe_and_load(f.read_bytes()) for f in files) if s.image is not None]
        for m in range(1, svr.params_schema["m"].max + 1):
            acc = defaultdict(list)
            for src in sources:
                enc = _encode_verified(svr, svr.validate_params({"m": m}), src, route, args.device)
                bpp = 8 * len(enc.blob) / src.info.pixels
                acc["svr"].append((bpp, enc.psnr, enc.ms_ssim))
                for cid in BASELINES:
                    codec = reg.codec(cid)
                    base, _ = _encode_to_target(codec, codec.validate_params({}), src, route, "cpu", ("bpp", bpp))
                    acc[cid].append((8 * len(base.blob) / src.info.pixels, base.psnr, base.ms_ssim))
            for cid, vals in acc.items():
                b, p, s = np.mean(vals, axis=0)
                print(f"{domain:11s} {m:2d} {cid:6s} {b:7.3f} {p:7.2f} {s:8.4f}")


if __name__ == "__main__":
    main()
