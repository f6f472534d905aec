"""Lossless bits per sub-pixel per domain on ../shared/data/dev, all codecs in one run.

    .venv/bin/python benchmarks/lossless.py [DEV_DIR] [--limit 8]

PNG (zlib level 9), WebP lossless (method 6, the slowest/smallest), JPEG XL lossless
(effort 10, the highest available here: libjxl 0.11's 10 is cjxl 0.7's 9), plus every other lossless pixel codec installed
(learned ones once their weights exist). Reports bpsp = bits / (pixels × channels) and
encode/decode seconds per megapixel; each bitstream is decoded and compared exactly.

Then, per domain, pixarc's conventional lossless codecs at each effort setting against
the reference command-line encoder at the same setting (``cjxl -d 0 -e N``,
``cwebp -lossless -exact -m N``; see ``reference.py``), in the same run; a reference
that is not installed is named and skipped (``--no-reference`` skips the section).
By default the settings the policies use (jxl effort 7, webp method 4); ``--slow-reference``
adds the slowest ones (jxl effort 9 and 10 against ``cjxl -e 9``, whose libjxl 0.7 effort 9
searches like 0.11's effort 10; webp method 6), several CPU minutes more.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from pixarc.classify import DOMAINS
from pixarc.images import pixels_sha256, probe_and_load
from pixarc.plugins import build_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference.py beside this file
import reference  # noqa: E402

SETTINGS = {"png": {"compress_level": 9}, "webp-lossless": {"method": 6}, "jxl-lossless": {"effort": 10}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--no-reference", action="store_true", help="skip the reference-encoder section")
    ap.add_argument("--slow-reference", action="store_true", help="also the slowest settings (minutes of CPU)")
    args = ap.parse_args()
    reg = build_plugin_manager()
    codecs = [c for c in sorted(reg.codecs) if reg.codec(c).lossless and c != "store"]
    print(f"{'domain':11s} " + " ".join(f"{c:>15s}" for c in codecs) + "   (bpsp; lower is better)")
    speed: dict[str, list[float]] = {c: [0.0, 0.0, 0.0] for c in codecs}
    totals = {c: [0, 0] for c in codecs}
    for domain in DOMAINS:
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        sources = [s for s in (probe_and_load(f.read_bytes()) for f in files) if s.image is not None]
        row = []
        for cid in codecs:
            codec = reg.codec(cid)
            usable = [s for s in sources if not codec.unsupported_reason(s.info)]
            if not usable:
                row.append(f"{'-':>15s}")
                continue
            params = codec.validate_params(SETTINGS.get(cid, {}))
            bits = subpixels = 0
            for s in usable:
                t0 = time.perf_counter()
                payload = codec.encode(s, params)
                t1 = time.perf_counter()
                out = codec.decode(payload).image
                t2 = time.perf_counter()
                assert pixels_sha256(out) == s.pixels_sha256, f"{cid} is not lossless on {s.info}"
                bits += 8 * len(payload)
                subpixels += s.info.pixels * len(s.image.getbands())
                speed[cid][0] += t1 - t0
                speed[cid][1] += t2 - t1
                speed[cid][2] += s.info.pixels / 1e6
            totals[cid][0] += bits
            totals[cid][1] += subpixels
            row.append(f"{bits / subpixels:15.3f}")
        print(f"{domain:11s} " + " ".join(row))
    print(f"{'all':11s} " + " ".join(f"{b / max(1, n):15.3f}" for b, n in totals.values()))
    print(f"{'enc s/MP':11s} " + " ".join(f"{e / max(mp, 1e-9):15.2f}" for e, _, mp in speed.values()))
    print(f"{'dec s/MP':11s} " + " ".join(f"{d / max(mp, 1e-9):15.3f}" for _, d, mp in speed.values()))
    if not args.no_reference:
        reference_rows(reg, args.dev, args.limit, REFERENCE_PAIRS + (SLOW_REFERENCE_PAIRS if args.slow_reference else []))


@dataclass(frozen=True)
class RefPair:
    """pixarc's codec at ``params`` against the reference command at the same setting."""

    codec_id: str
    params: dict
    family: str  # reference.TOOLS key
    command: str  # what the reference runs, for the table
    run: Callable[[Image.Image], reference.RefResult]


REFERENCE_PAIRS = [
    RefPair("jxl-lossless", {"effort": 7}, "jxl", "cjxl -d 0 -e 7", lambda im: reference.jxl(im, effort=7)),
    RefPair("webp-lossless", {"method": 4}, "webp", "cwebp -lossless -exact -m 4",
            lambda im: reference.webp(im, method=4)),
]
SLOW_REFERENCE_PAIRS = [
    RefPair("jxl-lossless", {"effort": 9}, "jxl", "cjxl -d 0 -e 9", lambda im: reference.jxl(im, effort=9)),
    RefPair("jxl-lossless", {"effort": 10}, "jxl", "cjxl -d 0 -e 9", lambda im: reference.jxl(im, effort=9)),
    RefPair("webp-lossless", {"method": 6}, "webp", "cwebp -lossless -exact -m 6",
            lambda im: reference.webp(im, method=6)),
]


def reference_rows(reg, dev: str, limit: int, pairs: list[RefPair]) -> None:
    """Per domain and setting: pixarc's bpsp, the reference CLI's bpsp, their ratio, and
    encode CPU seconds per megapixel of both (CPU time: the machine is shared)."""
    print(f"\nreference encoders: {reference.status()}")
    pairs = [p for p in pairs if p.codec_id in reg.codecs]
    print(f"{'domain':11s} {'pixarc setting':24s} {'pixarc':>8s} {'ref':>8s} {'ratio':>6s} {'enc CPU s/MP':>13s}"
          f" {'ref CPU s/MP':>13s}  reference (bpsp; ratio = pixarc / reference)")
    for domain in DOMAINS:
        files = sorted(Path(dev, domain).glob("*"))[:limit]
        sources = [s for s in (probe_and_load(f.read_bytes()) for f in files) if s.image is not None]
        for pair in pairs:
            codec = reg.codec(pair.codec_id)
            usable = [s for s in sources if not codec.unsupported_reason(s.info)]
            if not usable:
                continue
            p = codec.validate_params(pair.params)
            installed = reference.version(pair.family) is not None
            ours = ref = subpixels = 0
            our_cpu = ref_cpu = mp = 0.0
            for s in usable:
                t0 = time.process_time()
                payload = codec.encode(s, p)
                our_cpu += time.process_time() - t0
                assert pixels_sha256(codec.decode(payload).image) == s.pixels_sha256, f"{pair.codec_id} not lossless"
                ours += 8 * len(payload)
                subpixels += s.info.pixels * len(s.image.getbands())
                mp += s.info.pixels / 1e6
                if installed:
                    r = pair.run(s.image)
                    assert r.image.tobytes() == s.image.tobytes(), f"{pair.command} not lossless"
                    ref += 8 * r.nbytes
                    ref_cpu += r.encode_cpu_s
            setting = f"{pair.codec_id} " + ",".join(f"{k}={v}" for k, v in pair.params.items())
            if installed:
                print(f"{domain:11s} {setting:24s} {ours / subpixels:8.3f} {ref / subpixels:8.3f} {ours / ref:6.3f}"
                      f" {our_cpu / mp:13.2f} {ref_cpu / mp:13.2f}  {pair.command}")
            else:
                print(f"{domain:11s} {setting:24s} {ours / subpixels:8.3f} {'-':>8s} {'-':>6s} {our_cpu / mp:13.2f}"
                      f" {'-':>13s}  {pair.command}: not installed")



def callic_main() -> None:
    """CALLIC frozen and adapted against PNG, WebP-lossless and JPEG XL lossless (effort 10),
    all in this run, per domain; then the per-image best-of and its saving.

        .venv/bin/python benchmarks/lossless.py --callic [DEV_DIR] [--limit 2] [--iterations 30]
            [--domains natural,comic] [--records OUT.jsonl]
        .venv/bin/python benchmarks/lossless.py --callic --summary A.jsonl B.jsonl ...

    bpsp per domain; "best-of" takes, per image, the smallest decode-checked payload among
    all candidates (CALLIC included) and is compared with the best single codec over the
    whole run. Encode/decode seconds per megapixel on this CPU (CALLIC decodes on the CPU).
    ``--records`` appends one JSON line per image (bits, sub-pixels, seconds per codec), so
    domains can run in parallel processes and ``--summary`` prints their joint table."""
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--callic", action="store_true")
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=2, help="images per domain (sorted names)")
    ap.add_argument("--iterations", type=int, default=30, help="adaptation steps of the adapted rows")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--records", default=None, help="append one JSON line per image here")
    ap.add_argument("--summary", nargs="+", default=None, help="print the table of these record files only")
    args = ap.parse_args(sys.argv[1:])
    if args.summary:
        records = [json.loads(line) for f in args.summary for line in Path(f).read_text().splitlines() if line]
        print(f"{len(records)} image(s) from {len(args.summary)} record file(s)")
        print_callic_table(records)
        return
    reg = build_plugin_manager()
    callic = reg.codec("callic")
    from pixarc_callic.coder import tables

    tables()  # the integer tables are built once per process: not part of any image's time
    rows = [("png", "png", SETTINGS["png"]), ("webp-lossless", "webp-lossless", SETTINGS["webp-lossless"]),
            ("jxl-lossless-e10", "jxl-lossless", SETTINGS["jxl-lossless"]), ("callic-frozen", "callic", {}),
            (f"callic-adapt{args.iterations}", "callic", {"iterations": args.iterations})]
    print(f"callic weights {callic.weights_for({})[:16]}..., {args.limit} image(s) per domain, "
          f"adaptation {args.iterations} steps")
    records = []
    for domain in args.domains.split(","):
        for f in sorted(Path(args.dev, domain).glob("*"))[: args.limit]:
            src = probe_and_load(f.read_bytes())
            if src.image is None or callic.unsupported_reason(src.info):
                continue
            rec = {"domain": domain, "file": f.name, "subpixels": src.info.pixels * len(src.image.getbands()),
                   "megapixels": src.info.pixels / 1e6, "bits": {}, "enc_s": {}, "dec_s": {}}
            for name, cid, params in rows:
                codec = reg.codec(cid)
                params = codec.validate_params(params)
                t0 = time.perf_counter()
                payload = codec.encode(src, params)
                t1 = time.perf_counter()
                out = codec.decode(payload).image
                t2 = time.perf_counter()
                assert pixels_sha256(out) == src.pixels_sha256, f"{name} is not lossless on {f.name}"
                rec["bits"][name], rec["enc_s"][name], rec["dec_s"][name] = 8 * len(payload), t1 - t0, t2 - t1
                if cid == "callic" and params["iterations"]:
                    from pixarc_callic import HEADER
                    from pixarc_callic.adapt import describe

                    rec["adapted"] = describe(HEADER.read(payload, "callic").sections[0])
            records.append(rec)
            print(f"  {domain}/{f.name}: " + " ".join(f"{n}={b / rec['subpixels']:.3f}" for n, b in rec["bits"].items())
                  + (f" (adapted: {rec['adapted']})" if "adapted" in rec else ""), flush=True)
            if args.records:
                with open(args.records, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
    print_callic_table(records)


def print_callic_table(records: list[dict]) -> None:
    """bpsp per domain and overall (bits / sub-pixels), the per-image best-of, seconds per
    megapixel, and the best-of's saving against the best single codec."""
    if not records:
        return
    names = list(records[0]["bits"])
    domains = [d for d in DOMAINS if any(r["domain"] == d for r in records)]
    print(f"{'domain':11s} " + " ".join(f"{n:>16s}" for n in names) + f" {'best-of':>16s} {'images':>6s}   (bpsp)")

    def line(label: str, group: list[dict]) -> None:
        sub = sum(r["subpixels"] for r in group)
        cols = [sum(r["bits"][n] for r in group) / sub for n in names]
        best = sum(min(r["bits"].values()) for r in group) / sub
        print(f"{label:11s} " + " ".join(f"{c:16.3f}" for c in cols) + f" {best:16.3f} {len(group):6d}")

    for d in domains:
        line(d, [r for r in records if r["domain"] == d])
    line("all", records)
    mp = sum(r["megapixels"] for r in records)
    print(f"{'enc s/MP':11s} " + " ".join(f"{sum(r['enc_s'][n] for r in records) / mp:16.2f}" for n in names))
    print(f"{'dec s/MP':11s} " + " ".join(f"{sum(r['dec_s'][n] for r in records) / mp:16.2f}" for n in names))
    total = {n: sum(r["bits"][n] for r in records) for n in names}
    single = min(names, key=total.get)
    best = sum(min(r["bits"].values()) for r in records)
    sub = sum(r["subpixels"] for r in records)
    wins = {n: sum(min(r["bits"], key=r["bits"].get) == n for r in records) for n in names}
    print(f"best single codec: {single} ({total[single] / sub:.3f} bpsp); per-image best-of {best / sub:.3f} bpsp, "
          f"saving {100 * (1 - best / total[single]):.1f} %; smallest per image: "
          + ", ".join(f"{n} {k}" for n, k in wins.items() if k))


if __name__ == "__main__":
    import sys

    callic_main() if "--callic" in sys.argv else main()
