"""Rate-distortion of pixarc's lossy codecs per domain on ../shared/data/dev, with BD-rate.

    .venv/bin/python benchmarks/lossy_rd.py [DEV_DIR] [--limit 8] [--latent-iters 2000] [--adapter-iters 500]
                                           [--device auto] [--skip-learned]

Curves, all measured in this run on the same images:
* conventional: WebP (q 50..95), AVIF (q 30..90), JPEG XL (q 50..95);
* learned, for every quality with weights installed (pixarc-trained or CompressAI zoo):
  base model, + latent refinement, + adapters, + resize search (1.0, 0.75, 0.5).
BD-rate (Bjøntegaard, PSNR, piecewise-cubic over the overlapping PSNR range) of each
curve against the best conventional curve of the domain; negative = fewer bits. Also
encode and decode seconds per image with the iteration counts used.

Settings of the conventional codecs besides their defaults (AVIF 4:4:4, WebP method 4) and
the reference command-line encoders at the same settings (``cjxl``, ``avifenc``,
``cwebp``; see ``reference.py``; skipped with a note when not installed, or with
``--no-reference``) run on the same images; per domain their BD-rate against AVIF 4:2:0
at its defaults and pixarc's codec against the reference encoder are printed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pixarc.classify import DOMAINS
from pixarc.images import probe_and_load
from pixarc.metrics import psnr
from pixarc.plugins import build_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference.py beside this file
import reference  # noqa: E402

CONVENTIONAL = {
    "webp": [{"quality": q} for q in (50, 65, 80, 90, 95)],
    "avif": [{"quality": q} for q in (30, 45, 60, 75, 90)],
    "jxl": [{"quality": q} for q in (50, 65, 80, 90, 95)],
}


def bd_rate(ref: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjøntegaard delta rate (%) of ``test`` against ``ref``; points are (bpp, psnr)."""
    from scipy.interpolate import PchipInterpolator

    def curve(points):
        pts = sorted((p, math.log(r)) for r, p in points if r > 0 and math.isfinite(p))
        xs, ys = [], []
        for p, lr in pts:  # PCHIP needs strictly increasing PSNR
            if not xs or p > xs[-1] + 1e-9:
                xs.append(p)
                ys.append(lr)
        return xs, ys

    rx, ry = curve(ref)
    tx, ty = curve(test)
    if len(rx) < 2 or len(tx) < 2:
        return math.nan
    lo, hi = max(rx[0], tx[0]), min(rx[-1], tx[-1])
    if hi <= lo:
        return math.nan
    grid = np.linspace(lo, hi, 100)
    r_int = np.trapezoid(PchipInterpolator(rx, ry)(grid), grid)
    t_int = np.trapezoid(PchipInterpolator(tx, ty)(grid), grid)
    return 100 * (math.exp((t_int - r_int) / (hi - lo)) - 1)


def measure(codec, params, sources, device="cpu"):
    """Mean (bpp, psnr) over ``sources`` plus seconds per image."""
    p = codec.validate_params(params)
    bits = pixels = 0
    psnrs, enc_s, dec_s = [], 0.0, 0.0
    for src in sources:
        t0 = time.perf_counter()
        payload = codec.encode(src, p, device)
        t1 = time.perf_counter()
        image = codec.decode(payload, device).image
        dec_s += time.perf_counter() - t1
        enc_s += t1 - t0
        bits += 8 * len(payload)
        pixels += src.info.pixels
        psnrs.append(psnr(src.image, image))
    n = len(sources)
    return bits / pixels, float(np.mean(psnrs)), enc_s / n, dec_s / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8, help="images per domain")
    ap.add_argument("--latent-iters", type=int, default=2000)
    ap.add_argument("--adapter-iters", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-learned", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the setting and reference-encoder curves")
    args = ap.parse_args()
    reg = build_plugin_manager()
    learned = None if args.skip_learned or "adaptive-mbt2018-mean" not in reg.codecs else reg.codec(
        "adaptive-mbt2018-mean")
    qualities = sorted(learned._checkpoints) if learned else []
    device = args.device
    if device == "auto":
        from pixarc.engine import gpu_count

        device = "cuda" if gpu_count() else "cpu"
    print(f"dev set {args.dev}; learned qualities with weights: {qualities or 'none'}; device {device}")
    variants = {
        "base": {},
        "+refine": {"latent_iters": args.latent_iters},
        "+adapters": {"latent_iters": args.latent_iters, "adapter_iters": args.adapter_iters},
        "+resize": {"latent_iters": args.latent_iters, "adapter_iters": args.adapter_iters,
                    "scales": "1.0,0.75,0.5"},
    }
    for domain in DOMAINS:
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        sources = [s for s in (probe_and_load(f.read_bytes()) for f in files) if s.image is not None]
        curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
        timing: dict[str, tuple[float, float]] = {}
        for cid, settings in CONVENTIONAL.items():
            if cid not in reg.codecs:
                continue
            for params in settings:
                bpp, p, e, d = measure(reg.codec(cid), params, sources)
                curves[cid].append((bpp, p))
                timing[cid] = (e, d)
        if not args.no_reference:
            setting_curves(reg, sources, curves, timing)
        for name, extra in variants.items() if learned else []:
            for q in qualities:
                bpp, p, e, d = measure(learned, {"quality": q, **extra}, sources, device)
                curves[f"learned {name}"].append((bpp, p))
                timing[f"learned {name}"] = (e, d)
        conv = [c for c in CONVENTIONAL if c in curves]
        best = min(conv, key=lambda c: np.mean([bd_rate(curves[o], curves[c]) for o in conv if o != c] or [0]))
        print(f"\n== {domain} ({len(sources)} images); BD-rate reference: {best}")
        print(f"{'curve':22s} {'BD-rate %':>10s} {'enc s/img':>10s} {'dec s/img':>10s}  points (bpp/PSNR)")
        for name, pts in curves.items():
            bd = bd_rate(curves[best], pts) if name != best else 0.0
            e, d = timing[name]
            shown = " ".join(f"{b:.3f}/{p:.2f}" for b, p in sorted(pts))
            print(f"{name:22s} {bd:10.2f} {e:10.3f} {d:10.3f}  {shown}")
        if learned:
            base = curves.get("learned base")
            for name in ("learned +refine", "learned +adapters", "learned +resize"):
                if base and curves.get(name):
                    print(f"  {name} vs learned base: {bd_rate(base, curves[name]):.2f} % BD-rate")
        if not args.no_reference:
            print_setting_summary(curves, timing, sources)


# Settings of the conventional codecs other than their defaults (name -> codec, params).
SETTING_CURVES = {
    "avif 4:4:4": ("avif", [{**p, "subsampling": "4:4:4"} for p in CONVENTIONAL["avif"]]),
    "webp m4": ("webp", [{**p, "method": 4} for p in CONVENTIONAL["webp"]]),
}
# Reference encoders at the settings of pixarc's curves: name -> (family, encode(image, params), pixarc curve).
REFERENCE_CURVES = {
    "ref cjxl e7": ("jxl", lambda im, p: reference.jxl(im, effort=7, quality=p["quality"]), "jxl"),
    "ref avifenc 4:2:0": ("avif", lambda im, p: reference.avif(im, quality=p["quality"], speed=6), "avif"),
    "ref cwebp m6": ("webp", lambda im, p: reference.webp(im, method=6, quality=p["quality"]), "webp"),
}


def setting_curves(reg, sources, curves, timing) -> None:
    """Add the non-default settings and the reference encoders' curves for one domain."""
    for name, (cid, settings) in SETTING_CURVES.items():
        if cid in reg.codecs:
            for params in settings:
                bpp, p, e, d = measure(reg.codec(cid), params, sources)
                curves[name].append((bpp, p))
                timing[name] = (e, d)
    pixels = sum(s.info.pixels for s in sources)
    for name, (family, run, ours) in REFERENCE_CURVES.items():
        if not reference.version(family) or ours not in curves:
            continue
        cid, settings = SETTING_CURVES.get(ours, (ours, CONVENTIONAL[ours]))
        for params in settings:
            results = [run(s.image, params) for s in sources]
            bits = sum(8 * r.nbytes for r in results)
            curves[name].append((bits / pixels, float(np.mean([psnr(s.image, r.image) for s, r in
                                                               zip(sources, results)]))))
            timing[name] = (sum(r.encode_cpu_s for r in results) / len(sources), math.nan)


def print_setting_summary(curves, timing, sources) -> None:
    """BD-rate of every conventional curve against AVIF 4:2:0 at its defaults, encode
    seconds per megapixel, and pixarc's curves against the reference encoder's."""
    mp = sum(s.info.pixels for s in sources) / 1e6 / len(sources)  # per image
    print(f"  reference encoders: {reference.status()}")
    if "avif" in curves:
        for name in [*CONVENTIONAL, *SETTING_CURVES, *REFERENCE_CURVES]:
            if name in curves and name != "avif":
                print(f"  {name:20s} vs avif 4:2:0 default: {bd_rate(curves['avif'], curves[name]):7.2f} % BD-rate,"
                      f" encode {timing[name][0] / mp:6.2f} s/MP ({'CPU' if name in REFERENCE_CURVES else 'wall'})")
    for name, (family, _, ours) in REFERENCE_CURVES.items():
        if name in curves and ours in curves:
            print(f"  pixarc {ours:12s} vs {name:18s}: {bd_rate(curves[name], curves[ours]):7.2f} % BD-rate")
        elif ours in curves:
            print(f"  pixarc {ours:12s} vs {name:18s}: {reference.TOOLS[family][0]} not installed")


if __name__ == "__main__":
    main()
