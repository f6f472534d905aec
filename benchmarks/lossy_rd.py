"""Rate-distortion of pixarc's lossy codecs per domain on ../shared/data/dev, with BD-rate.

    .venv/bin/python benchmarks/lossy_rd.py [DEV_DIR] [--limit 8] [--latent-iters 2000] [--adapter-iters 500]
                                           [--device auto] [--skip-learned]
    .venv/bin/python benchmarks/lossy_rd.py --stages [--limit 2] [--qualities 1,3,5] (see main_stages)

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
from pixarc.device import CPU, Device, gpu_count
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


def _mean_gap(ref: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Mean of ``test_y - ref_y`` over the overlapping x range of two (x, y) curves, each
    interpolated piecewise-cubic (PCHIP) in x; NaN when they do not overlap. Points with a
    non-finite coordinate are dropped, and x must grow strictly (PCHIP), so a repeated x
    keeps its first point."""
    from scipy.interpolate import PchipInterpolator

    def curve(points):
        xs, ys = [], []
        for x, y in sorted((x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)):
            if not xs or x > xs[-1] + 1e-9:
                xs.append(x)
                ys.append(y)
        return xs, ys

    rx, ry = curve(ref)
    tx, ty = curve(test)
    if len(rx) < 2 or len(tx) < 2:
        return math.nan
    lo, hi = max(rx[0], tx[0]), min(rx[-1], tx[-1])
    if hi <= lo:
        return math.nan
    grid = np.linspace(lo, hi, 100)
    return float(np.trapezoid(PchipInterpolator(tx, ty)(grid) - PchipInterpolator(rx, ry)(grid), grid) / (hi - lo))


def _log_rate(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(math.log(r), q) for r, q in points if r > 0]


def bd_rate(ref: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjøntegaard delta rate (%) of ``test`` against ``ref``; points are (bpp, psnr):
    the mean log-rate gap over the overlapping PSNR range."""
    gap = _mean_gap([(q, lr) for lr, q in _log_rate(ref)], [(q, lr) for lr, q in _log_rate(test)])
    return 100 * (math.exp(gap) - 1) if math.isfinite(gap) else math.nan


def installed(learned) -> list[int]:
    """The rate points the adaptive codec has weights for."""
    return sorted({int(w.entry["quality"]) for w in learned.weights})


def measure(codec, params, sources, device=CPU):
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


# ---------------------------------------------------------------------------- --stages
# The adaptive codec's stages against the conventional codecs, PSNR and MS-SSIM, with a
# quality range wide enough to reach down to where CPU-trained learned models land.

WIDE = {
    "avif": [{"quality": q} for q in (5, 15, 30, 50, 70, 90)],
    "webp": [{"quality": q} for q in (5, 15, 30, 50, 75, 90)],
    "jxl": [{"quality": q} for q in (5, 15, 30, 50, 75, 90)],
    "jpeg": [{"quality": q} for q in (5, 10, 20, 40, 70, 90)],
}
STAGES = ("base", "refine", "adapters", "resize")


def bd_quality(ref: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjøntegaard delta quality (dB) of ``test`` against ``ref`` over their overlapping
    log-rate range: the companion of :func:`bd_rate`, which needs overlapping quality
    ranges (curves far apart in quality still overlap in rate)."""
    return _mean_gap(_log_rate(ref), _log_rate(test))


def quality_at(ref: list[tuple[float, float]], rate: float) -> float:
    """Quality of the ``ref`` curve at ``rate`` (PCHIP on log-rate; NaN outside its range)."""
    from scipy.interpolate import PchipInterpolator

    pts = sorted((math.log(r), q) for r, q in ref if r > 0 and math.isfinite(q))
    xs = [p[0] for p in pts]
    if len(pts) < 2 or not xs[0] <= math.log(rate) <= xs[-1] or len(set(xs)) < len(xs):
        return math.nan
    return float(PchipInterpolator(xs, [p[1] for p in pts])(math.log(rate)))


def bd_cell(ref, test) -> str:
    """BD-rate; where the quality ranges do not overlap, BD-quality in dB (in brackets); for
    a one-point curve, the quality difference at its rate (in square brackets)."""
    if len(test) == 1:
        dq = test[0][1] - quality_at(ref, test[0][0])
        return "n/a" if math.isnan(dq) else f"[{dq:+.1f} dB]"
    bd = bd_rate(ref, test)
    if not math.isnan(bd):
        return f"{bd:+.1f} %"
    dq = bd_quality(ref, test)
    return "n/a" if math.isnan(dq) else f"({dq:+.1f} dB)"


def msssim_db(v: float) -> float:
    """MS-SSIM on a dB scale (−10·log10(1 − MS-SSIM)), the usual axis for its BD-rate."""
    return -10 * math.log10(max(1e-10, 1 - v))


def measure_full(codec, params, sources, clock=time.process_time, inspect=None):
    """(bpp, mean PSNR, mean MS-SSIM dB, encode s/img, decode s/img) of a codec over
    ``sources``: CPU seconds by default (``clock``); ``inspect(payload)`` sees each payload."""
    from pixarc.metrics import ms_ssim

    p = codec.validate_params(params)
    bits = pixels = 0
    ps, ms, enc_s, dec_s = [], [], 0.0, 0.0
    for src in sources:
        t0 = clock()
        payload = codec.encode(src, p)
        t1 = clock()
        image = codec.decode(payload).image
        dec_s += clock() - t1
        enc_s += t1 - t0
        bits += 8 * len(payload)
        pixels += src.info.pixels
        ps.append(psnr(src.image, image))
        ms.append(msssim_db(ms_ssim(src.image, image)))
        if inspect is not None:
            inspect(payload)
    n = len(sources)
    return bits / pixels, float(np.mean(ps)), float(np.mean(ms)), enc_s / n, dec_s / n


def measure_stages(codec, params, sources, device):
    """Per stage, the same tuple as :func:`measure_full`, from one adaptation per image."""
    from pixarc.metrics import ms_ssim

    p = codec.validate_params(params)
    acc = {st: [0, 0, [], [], 0.0, 0.0] for st in STAGES}  # bits, pixels, psnr, msssim, enc, dec
    for src in sources:
        for st, (payload, enc) in codec.encode_stages(src, p, device).items():
            a = acc[st]
            t0 = time.process_time()
            image = codec.decode(payload, device).image
            a[5] += time.process_time() - t0
            a[4] += enc
            a[0] += 8 * len(payload)
            a[1] += src.info.pixels
            a[2].append(psnr(src.image, image))
            a[3].append(msssim_db(ms_ssim(src.image, image)))
    n = len(sources)
    return {st: (a[0] / a[1], float(np.mean(a[2])), float(np.mean(a[3])), a[4] / n, a[5] / n)
            for st, a in acc.items()}


def main_stages(args, reg) -> None:
    """Markdown tables: per domain, the RD points of every curve and the BD-rate (PSNR and
    MS-SSIM) of each learned stage against each conventional codec, all measured here."""
    import torch
    from pixarc_adaptive import rd_lambda

    torch.set_num_threads(args.threads)
    learned = reg.codec("adaptive-mbt2018-mean")
    qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else installed(learned)
    params: dict = {"scales": [1.0, 0.75, 0.5]}
    if args.stage_iters:
        params["latent_iters"], params["adapter_iters"] = (int(v) for v in args.stage_iters.split(","))
    shown = learned.validate_params({"quality": qualities[0], **params})
    print(f"dev set {args.dev}, {args.limit} image(s) per domain; learned rate points {qualities}; "
          f"latent_iters {shown['latent_iters']}, adapter_iters {shown['adapter_iters']}, lr {shown['lr']}, "
          f"resize search {shown['scales']}; torch threads {args.threads}; seconds are process CPU seconds")
    for q in qualities:
        ck = learned.require_weights({"quality": q})
        print(f"  q{q}: {Path(ck.path).name} sha256 {ck.sha256[:12]}, λ={rd_lambda(ck)}")
    conv = [c for c in WIDE if c in reg.codecs]
    for domain in args.domains.split(","):
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        sources = [s for s in (probe_and_load(f.read_bytes()) for f in files) if s.image is not None]
        curves: dict[str, list[tuple]] = defaultdict(list)
        for cid in conv:
            for st in WIDE[cid]:
                curves[cid].append(measure_full(reg.codec(cid), st, sources))
        for q in qualities:
            for st, point in measure_stages(learned, {"quality": q, **params}, sources, args.device).items():
                curves[f"learned {st}"].append(point)
        names = ", ".join(f.name for f in files)
        print(f"\n### {domain} ({len(sources)} image(s): {names})\n")
        print("| curve | " + " | ".join(f"vs {c} PSNR | vs {c} MS-SSIM" for c in conv) + " | enc s/img | dec s/img |")
        print("|---|" + "---:|" * (2 * len(conv) + 2))
        for st in STAGES:
            pts = curves[f"learned {st}"]
            cells = []
            for c in conv:
                for k in (1, 2):
                    cells.append(bd_cell([(p[0], p[k]) for p in curves[c]], [(p[0], p[k]) for p in pts]))
            enc, dec = np.mean([p[3] for p in pts]), np.mean([p[4] for p in pts])
            print(f"| {st} | " + " | ".join(cells) + f" | {enc:.1f} | {dec:.2f} |")
        base = curves["learned base"]
        gains = []
        for st in STAGES[1:]:
            pts = curves[f"learned {st}"]
            if len(pts) == 1:  # one rate point: the change of rate and of quality
                (b0, p0, m0), (b1, p1, m1) = base[0][:3], pts[0][:3]
                gains.append(f"{st} {100 * (b1 / b0 - 1):+.1f} % bpp, {p1 - p0:+.2f} dB PSNR, "
                             f"{m1 - m0:+.2f} dB MS-SSIM")
                continue
            gains.append(f"{st} {bd_cell([(p[0], p[1]) for p in base], [(p[0], p[1]) for p in pts])} / "
                         f"{bd_cell([(p[0], p[2]) for p in base], [(p[0], p[2]) for p in pts])}")
        print("\nBD-rate vs learned base (PSNR / MS-SSIM): " + "; ".join(gains))
        print("\n(% : BD-rate, negative = fewer bits; (dB): BD-quality where the quality ranges do not "
              "overlap; [dB]: quality difference at the same rate, for a one-rate-point learned curve)")
        print("\nRD points, bpp / PSNR dB / MS-SSIM dB (enc CPU s/img):\n")
        for name, pts in curves.items():
            print(f"- {name}: " + ", ".join(f"{p[0]:.3f}/{p[1]:.2f}/{p[2]:.2f} ({p[3]:.2f})" for p in sorted(pts)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8, help="images per domain")
    ap.add_argument("--latent-iters", type=int, default=2000)
    ap.add_argument("--adapter-iters", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-learned", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the setting and reference-encoder curves")
    ap.add_argument("--stages", action="store_true", help="the adaptive codec's stages (one adaptation per "
                    "image and rate point, at the codec's defaults unless --stage-iters) vs "
                    "AVIF, WebP, JPEG XL and JPEG, BD-rate on PSNR and MS-SSIM, markdown")
    ap.add_argument("--qualities", default="", help="--stages: learned rate points (default: all installed)")
    ap.add_argument("--threads", type=int, default=1, help="--stages: torch threads")
    ap.add_argument("--domains", default=",".join(DOMAINS), help="--stages: comma-separated (parallel runs split them)")
    ap.add_argument("--stage-iters", default="", help="--stages: LATENT,ADAPTER iterations (default: the codec's)")
    args = ap.parse_args()
    reg = build_plugin_manager()
    if args.stages:
        args.device = Device("cuda") if args.device == "auto" and gpu_count() else Device.parse(
            "cpu" if args.device == "auto" else args.device)
        return main_stages(args, reg)
    learned = None if args.skip_learned or "adaptive-mbt2018-mean" not in reg.codecs else reg.codec(
        "adaptive-mbt2018-mean")
    qualities = installed(learned) if learned else []
    device = Device("cuda") if args.device == "auto" and gpu_count() else Device.parse(
        "cpu" if args.device == "auto" else args.device)
    print(f"dev set {args.dev}; learned qualities with weights: {qualities or 'none'}; device {device}")
    variants = {
        "base": {},
        "+refine": {"latent_iters": args.latent_iters},
        "+adapters": {"latent_iters": args.latent_iters, "adapter_iters": args.adapter_iters},
        "+resize": {"latent_iters": args.latent_iters, "adapter_iters": args.adapter_iters,
                    "scales": [1.0, 0.75, 0.5]},
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
