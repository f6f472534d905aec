"""AVIF + the learned enhancement filter vs the best AVIF, per domain of ../shared/data/dev.

    .venv/bin/python benchmarks/enhance.py [DEV_DIR] [--limit 8] [--qualities 30,45,60,75,90] [--modes filter,adapted]
                                           [--filters WEIGHTS_DIR,WEIGHTS_DIR]
                                           [--domains natural,comic] [--speed 6]

Measured in this run, on the same images and quality points:
* ``avif 4:2:0`` and ``avif 4:4:4`` (Pillow's libavif; the 4:4:4 curve through the AVIF
  plugin's ``subsampling`` parameter); the better of the two by BD-rate (PSNR) is the
  domain's reference, and the enhanced curves run over that setting;
* ``+filter``: ``avif-enhanced`` with ``adapters = none`` (the generic filter, its strength
  and on/off decided per image);
* ``+adapted``: ``avif-enhanced`` with ``adapters = auto`` (per-image adapters by RD cost).
BD-rate (%) against the reference, on PSNR and on MS-SSIM (as −10·log10(1 − MS-SSIM) dB),
piecewise-cubic over the overlapping range (``lossy_rd.bd_rate``); negative = fewer bits.
Encode/decode seconds per image, how often the filter and adapters were used, and adapter
bytes per image (``on``: images × qualities with the filter on; ``adapt``: with
adapters, ``p.col`` of them per colour; adapter bytes: coded adapter bytes; the 1-byte (filter off) or 12-byte (on) header is
counted in the rates but not here). Rates are payload bytes of each codec.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lossy_rd import bd_rate, measure_full  # noqa: E402

from pixarc.images import probe_and_load  # noqa: E402
from pixarc.plugins import build_plugin_manager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("natural", "comic", "line", "vector", "screenshot")


def measure(codec, params, sources, stats=None):
    """Mean (bpp, PSNR, MS-SSIM dB) over ``sources`` and wall seconds per image (encode,
    decode), by :func:`lossy_rd.measure_full`; with ``stats``, what the enhanced payloads
    hold (filter on? adapter mode? adapter bytes?) is counted there."""
    from pixarc_enhance import HEADER

    def count(payload: bytes) -> None:
        stats["images"] += 1
        if payload[0]:
            p = HEADER.read(payload, codec.codec_id)
            stats["on"] += 1
            stats["adapted"] += int(p.head.mode > 0)
            stats["per_colour"] += int(p.head.mode == 2)
            stats["adapter_bytes"] += len(p.rest)

    bpp, ps, ms, enc_s, dec_s = measure_full(codec, params, sources, clock=time.perf_counter,
                                             inspect=count if stats is not None else None)
    return (bpp, ps, ms), enc_s, dec_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8, help="images per domain")
    ap.add_argument("--qualities", default="30,45,60,75,90")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--speed", type=int, default=6)
    ap.add_argument("--modes", default="filter,adapted", help="enhanced curves: filter (adapters none), adapted")
    ap.add_argument("--filters", default="", help="comma-separated weights folders (each with a weights.json): "
                    "measure each one's filter in this run, against the same AVIF curves (default: the installed)")
    args = ap.parse_args()
    reg = build_plugin_manager()
    avif, enh = reg.codec("avif"), reg.codec("avif-enhanced")
    qualities = [int(q) for q in args.qualities.split(",")]
    variants = {"": enh}
    for folder in filter(None, args.filters.split(",")):
        os.environ["PIXARC_ENHANCE_WEIGHTS"] = folder  # searched first: its filter is the one chosen
        codec = type(enh)(base=avif)
        variants[f" [{Path(codec.select_weights().path).stem}]"] = codec
    if args.filters:
        del variants[""]
    for tag, codec in variants.items():
        f = codec.select_weights()
        print(f"dev set {args.dev}; qualities {qualities}; speed {args.speed}; filter{tag} {f.path if f else None} "
              f"({f.sha256[:12] if f else '-'}); limit {args.limit} images per domain")
    totals = {}
    for domain in args.domains.split(","):
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        sources = [s for s in (probe_and_load(p.read_bytes()) for p in files) if s.image is not None]
        sources = [s for s in sources if s.image.mode == "RGB"]
        if not sources:
            continue
        curves, timing, extra = {}, {}, {}
        for sub in ("4:2:0", "4:4:4"):
            name = f"avif {sub}"
            curves[name], t = [], []
            for q in qualities:
                pt, e, d = measure(avif, {"quality": q, "speed": args.speed, "subsampling": sub}, sources)
                curves[name].append(pt)
                t.append((e, d))
            timing[name] = tuple(np.mean(t, axis=0))
        ref = min(("avif 4:2:0", "avif 4:4:4"), key=lambda c: bd_rate(
            [(b, p) for b, p, _ in curves["avif 4:2:0"]], [(b, p) for b, p, _ in curves[c]]))
        sub = ref.split()[1]
        modes = [(f"+{m}", {"filter": "none", "adapted": "auto"}[m]) for m in args.modes.split(",")]
        for (name, adapters), (tag, codec) in itertools.product(modes, variants.items()):
            label = f"avif {sub} {name}{tag}"
            curves[label], t = [], []
            stats = {"images": 0, "on": 0, "adapted": 0, "per_colour": 0, "adapter_bytes": 0}
            for q in qualities:
                pt, e, d = measure(codec, {"quality": q, "speed": args.speed, "subsampling": sub,
                                           "adapters": adapters}, sources, stats)
                curves[label].append(pt)
                t.append((e, d))
            timing[label] = tuple(np.mean(t, axis=0))
            extra[label] = stats
        print(f"\n== {domain} ({len(sources)} images, {sources[0].image.size[0]}x{sources[0].image.size[1]} first); "
              f"reference: {ref}")
        print(f"{'curve':26s} {'BD PSNR %':>9s} {'BD MS-SSIM %':>12s} {'enc s':>7s} {'dec s':>7s} "
              f"{'on':>7s} {'adapt':>6s} {'p.col':>5s} {'adapter B':>9s}  points (bpp/PSNR)")
        for name, pts in curves.items():
            bd_p = bd_rate([(b, p) for b, p, _ in curves[ref]], [(b, p) for b, p, _ in pts])
            bd_m = bd_rate([(b, m) for b, _, m in curves[ref]], [(b, m) for b, _, m in pts])
            e, d = timing[name]
            st = extra.get(name)
            use = (f"{st['on']:>3d}/{st['images']:<3d} {st['adapted']:>6d} {st['per_colour']:>5d} "
                   f"{st['adapter_bytes'] / st['images']:9.1f}" if st else f"{'':7s} {'':>6s} {'':>5s} {'':>9s}")
            shown = " ".join(f"{b:.3f}/{p:.2f}" for b, p, _ in pts)
            print(f"{name:26s} {bd_p:9.2f} {bd_m:12.2f} {e:7.2f} {d:7.2f} {use}  {shown}")
            totals[(domain, name.replace(sub, "best"))] = (bd_p, bd_m)
        base_e, base_d = timing[ref]
        for name in (n for n in timing if "+" in n):
            e, d = timing[name]
            print(f"  {name}: extra encode {e - base_e:+.2f} s/image, extra decode {d - base_d:+.2f} s/image")
    print("\n== summary: BD-rate vs the best AVIF setting per domain (PSNR / MS-SSIM), %")
    for (domain, name), (bp, bm) in totals.items():
        if "+" in name:
            print(f"{domain:11s} {name:22s} {bp:8.2f} {bm:8.2f}")


if __name__ == "__main__":
    main()
