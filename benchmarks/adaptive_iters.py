"""Gain of the adaptive codec's per-image adaptation against its iteration counts.

    .venv/bin/python benchmarks/adaptive_iters.py [--images natural/mcmaster_2.png ...] [--crop 128]
        [--quality 3] [--latent 10,20,30,60] [--adapter 10,25,50] [--timing-size 768x512]

For each image (a centre crop of a dev image, to keep the curve affordable on a CPU): the
RD cost J = bpp + λ·MSE (8-bit scale; CompressAI's loss) of the decoded payload of
* the base model (no adaptation),
* latent refinement alone at each ``--latent`` count (the codec's default ``lr``),
* refinement at the default count, then adapters at each ``--adapter`` count,
* the paper's full schedule (2000 latent + 500 adapter iterations at lr 1e-3),
and the gain J(base) − J, also as a share of the full schedule's gain. Every point is a real
encode and decode. Then one encode and decode of a ``--timing-size`` crop at the codec's
defaults. Seconds are process CPU seconds with one torch thread (what one free core takes;
wall time on an idle machine is at most this), so other jobs on a shared machine do not
inflate them much.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"latent_iters": 2000, "adapter_iters": 500, "lr": 1e-3, "adapter_lr": 1e-3}


def rd_cost(codec, src, payload, lam) -> tuple[float, float, float]:
    out = np.asarray(codec.decode(payload).image, np.float64)
    mse = float(np.mean((out - np.asarray(src.image, np.float64)) ** 2))
    bpp = 8 * len(payload) / src.info.pixels
    return bpp + lam * mse, bpp, 10 * np.log10(255**2 / mse)


def crop_source(path: Path, w: int, h: int):
    import io

    from PIL import Image

    from pixarc.images import probe_and_load

    im = Image.open(path).convert("RGB")
    left, top = max(0, (im.width - w) // 2), max(0, (im.height - h) // 2)
    buf = io.BytesIO()
    im.crop((left, top, left + min(w, im.width), top + min(h, im.height))).save(buf, "PNG")
    return probe_and_load(buf.getvalue())


def main() -> None:
    import torch

    from pixarc.plugins import build_plugin_manager
    from pixarc_adaptive import rd_lambda

    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--images", nargs="+", default=["natural/mcmaster_2.png", "vector/ocal_orange_dave_pena_01.png"])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--latent", default="10,20,30,60")
    ap.add_argument("--adapter", default="10,25,50")
    ap.add_argument("--no-paper", action="store_true", help="skip the full 2000 + 500 schedule")
    ap.add_argument("--timing-size", default="768x512")
    ap.add_argument("--timing-image", default="vector/ocal_bicycle_philippe_colin_01.png")
    ap.add_argument("--timing-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    codec = build_plugin_manager().codec("adaptive-mbt2018-mean")
    defaults = codec.validate_params({"quality": args.quality})
    ck = codec.require_weights({"quality": args.quality})
    print(f"weights q{args.quality}: {Path(ck.path).name} (sha256 {ck.sha256[:12]}), λ={rd_lambda(ck)}; "
          f"codec defaults {defaults}")

    def run(src, params):
        p = codec.validate_params({**defaults, **params})
        t0 = time.process_time()
        payload = codec.encode(src, p)
        enc = time.process_time() - t0
        return (*rd_cost(codec, src, payload, ck.lam), enc, int.from_bytes(payload[-4:], "big"))

    shares = []
    for name in [] if args.timing_only else args.images:
        src = crop_source(Path(args.dev, name), args.crop, args.crop)
        base = run(src, {"latent_iters": 0, "adapter_iters": 0})
        full = None if args.no_paper else run(src, PAPER)
        print(f"\n{name}, centre crop {src.image.size}: base J={base[0]:.4f} ({base[1]:.3f} bpp, {base[2]:.2f} dB)")
        print("| latent | adapter | lr | adapter lr | J | gain | share of paper gain | bpp | PSNR | enc CPU s | "
              "adapter sent |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        rows = [{"latent_iters": n, "adapter_iters": 0} for n in map(int, args.latent.split(","))]
        rows += [{"adapter_iters": n} for n in map(int, args.adapter.split(","))]
        rows += [PAPER] if full else []
        for params in rows:
            j, bpp, p, enc, n_sym = full if params is PAPER else run(src, params)
            q = {**defaults, **params}
            share = (base[0] - j) / (base[0] - full[0]) if full and full[0] < base[0] else float("nan")
            if params == {"adapter_iters": defaults["adapter_iters"]}:
                shares.append(share)
            print(f"| {q['latent_iters']} | {q['adapter_iters']} | {q['lr']:g} | {q['adapter_lr']:g} | {j:.4f} | "
                  f"{base[0] - j:.4f} | {100 * share:.0f} % | {bpp:.3f} | {p:.2f} | {enc:.1f} | "
                  f"{'yes' if n_sym else 'no'} |")
    if shares:
        print(f"\nshare of the paper schedule's gain kept at the defaults: "
              + ", ".join(f"{100 * s:.0f} %" for s in shares))
    w, h = (int(v) for v in args.timing_size.split("x"))
    src = crop_source(Path(args.dev, args.timing_image), w, h)
    t0 = time.process_time()
    payload = codec.encode(src, defaults)
    enc = time.process_time() - t0
    t0 = time.process_time()
    codec.decode(payload)
    dec = time.process_time() - t0
    print(f"\ntiming at the defaults on a {src.image.size[0]}x{src.image.size[1]} crop of {args.timing_image}: "
          f"encode {enc:.1f} CPU s, decode {dec:.2f} CPU s (one torch thread); adapter sent: "
          f"{'yes' if int.from_bytes(payload[-4:], 'big') else 'no'}")


if __name__ == "__main__":
    main()
