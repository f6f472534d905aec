"""SVR per m and per domain on ../shared/data/dev, against JPEG/WebP/AVIF at matched bpp.

    .venv/bin/python benchmarks/svr.py [DEV_DIR] [--limit 8] [--m 1,2,3,4] [--markdown FILE]

For each image and each m, the SVR bitstream (encoded, packed, decoded again and checked,
exactly as the archive does) sets a ``target_bpp`` for every conventional codec: the
most bits within that budget, by the bisection the archive uses (probes cached per
image; ``*`` marks a codec whose lowest quality is still above the budget on some
images: its row is at a higher bpp and does not count for ``win``). Printed per
domain and m: mean bpp, PSNR, MS-SSIM; SVR encode and decode seconds per image on this
machine; and the entropy coder's gain: SVR payload bits over what the same symbols cost
in a plain fixed-length code. The index maps: ``idx`` is the bits of the index-map section
as sent (context-coded when the weights have context tables), ``free`` what the same maps
cost with the context-free tables (the same image encoded in that layout, which decodes
to the same integers), and ``bpp free`` that payload's whole rate. ``win`` marks rows
where SVR's MS-SSIM beats every baseline at no more bits. Everything is measured in this
run; nothing is copied in.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pixarc.classify import DOMAINS
from pixarc.device import Device
from pixarc.encode import encode_verified
from pixarc.images import probe_and_load
from pixarc.plugins import build_plugin_manager
from pixarc.policy import Route
from pixarc_svr import read_payload

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("jpeg", "webp", "avif")


def at_budget(codec, src, route, bpp: float, probed: dict):
    """The archive's ``target_bpp`` bisection (``encode.encode_to_target``: the most bits
    within ``bpp``, else the lowest quality), with the probes of one image cached in
    ``probed`` so the budgets of the several m values share them. Returns (encoding, fits)."""
    spec = codec.params_schema[codec.rate_param]
    lo, hi = int(spec.min), int(spec.max)

    def probe(q: int):
        if q not in probed:
            probed[q] = encode_verified(codec, {**codec.validate_params({}), codec.rate_param: q}, src, route.domain,
                                        Device("cpu"))
        return probed[q]

    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if 8 * len(probe(mid).blob) / src.info.pixels <= bpp:
            best, lo = probed[mid], mid + 1
        else:
            hi = mid - 1
    return (best, True) if best is not None else (probe(int(spec.min)), False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8, help="images per domain (sorted names; the first N)")
    ap.add_argument("--m", default="1,2,3,4", help="operating points")
    ap.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated (parallel runs split them)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", default=None, help="also write the table as markdown here")
    args = ap.parse_args()
    reg = build_plugin_manager()
    if "svr" not in reg.codecs or not reg.codec("svr").weights:
        raise SystemExit("svr: no weights installed (pixarc train svr --data ... --out plugins/pixarc_svr/weights)")
    svr = reg.codec("svr")
    route = Route("bench", False, ())
    ms = [int(m) for m in args.m.split(",")]
    head = f"{'domain':11s} {'m':>2s} {'codec':6s} {'bpp':>7s} {'PSNR':>7s} {'MS-SSIM':>8s}  notes"
    print(f"svr {svr.version()}, dev {args.dev}, {args.limit} image(s) per domain, device {args.device}")
    print(head)
    md = ["| domain | m | codec | bpp | PSNR dB | MS-SSIM | notes |", "|---|---|---|---|---|---|---|"]
    wins = []
    for domain in args.domains.split(","):
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        sources = [s for s in (probe_and_load(f.read_bytes()) for f in files) if s.image is not None]
        if not sources:
            continue
        cache = {(i, cid): {} for i in range(len(sources)) for cid in BASELINES}
        for m in ms:
            acc, over, times, fixed, coded = defaultdict(list), defaultdict(int), [], 0, 0
            idx_bits = free_bits = free_total = 0
            for i, src in enumerate(sources):
                t0 = time.perf_counter()
                enc = encode_verified(svr, svr.validate_params({"m": m}), src, route.domain, Device.parse(args.device))
                times.append((enc.encode_s, enc.decode_s, time.perf_counter() - t0))
                payload = enc.container.sections["DATA"]
                w, h = src.image.size
                fixed += svr.fixed_length_bits(m, (h + 7) // 8, (w + 7) // 8)
                coded += 8 * len(payload)
                free = svr.encode_with(src, svr.validate_params({"m": m}), context=False)
                idx_bits += 8 * len(read_payload(payload).sections[0])
                free_bits += 8 * len(read_payload(free).sections[0])
                free_total += 8 * (len(enc.blob) - len(payload) + len(free)) / src.info.pixels
                bpp = 8 * len(enc.blob) / src.info.pixels
                acc["svr"].append((bpp, enc.psnr, enc.ms_ssim))
                for cid in BASELINES:
                    codec = reg.codec(cid)
                    base, fits = at_budget(codec, src, route, bpp, cache[i, cid])
                    over[cid] += not fits
                    acc[cid].append((8 * len(base.blob) / src.info.pixels, base.psnr, base.ms_ssim))
            means = {cid: np.mean(vals, axis=0) for cid, vals in acc.items()}
            enc_s, dec_s, _ = np.mean(times, axis=0)
            fair = [means[c][2] for c in BASELINES if not over[c]]
            win = bool(fair) and means["svr"][2] > max(fair)
            wins.append((domain, m, win, means["svr"][0]))
            for cid, (b, p, s) in means.items():
                if cid == "svr":
                    note = (f"enc {enc_s:.2f} s dec {dec_s:.2f} s/img; rANS {coded / fixed:.0%} of fixed-length; "
                            f"idx {idx_bits / len(sources) / 1000:.1f} kbit/img vs free "
                            f"{free_bits / len(sources) / 1000:.1f} ({idx_bits / free_bits - 1:+.1%}); "
                            f"bpp free {free_total / len(sources):.3f}{'; win' if win else ''}")
                else:
                    note = f"* {over[cid]}/{len(sources)} above budget" if over[cid] else ""
                print(f"{domain:11s} {m:2d} {cid:6s} {b:7.3f} {p:7.2f} {s:8.4f}  {note}", flush=True)
                md.append(f"| {domain} | {m} | {cid} | {b:.3f} | {p:.2f} | {s:.4f} | {note} |")
    summary = ", ".join(f"{d} m={m} ({b:.2f} bpp)" for d, m, won, b in wins if won) or "none"
    print(f"SVR beats every baseline's MS-SSIM at matched bpp: {summary}")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md + ["", f"SVR wins (MS-SSIM at matched bpp): {summary}", ""]))


if __name__ == "__main__":
    main()
