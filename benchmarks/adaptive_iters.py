"""Gain of the adaptive codec's per-image adaptation against its iteration counts.

    .venv/bin/python benchmarks/adaptive_iters.py [--images natural/mcmaster_2.png vector/...] [--crop 256]
        [--quality 3] [--latent 0,25,50,100,200,2000] [--adapter 0,25,50,100,500] [--lr 1e-3,1e-2]
        [--timing-size 768x512]

For each image (a centre crop of a dev image, to keep the curve affordable on a CPU) and
each learning rate: the RD cost J = bpp + λ·MSE (8-bit scale; CompressAI's loss) of the
decoded payload with latent refinement only (adapters off), then with adapters after the
default latent count; the gain is J(base) − J. Every point is a real encode and decode.
Then one encode and decode of a ``--timing-size`` crop at the chosen defaults. Seconds
are process CPU seconds with one torch thread (what one free core takes; wall time on an
idle machine is at most this), so a machine shared with other jobs does not inflate them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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

    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--images", nargs="+", default=["natural/mcmaster_2.png", "vector/ocal_orange_dave_pena_01.png"])
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--latent", default="0,25,50,100,200,2000")
    ap.add_argument("--adapter", default="25,50,100,500")
    ap.add_argument("--lr", default="1e-3,1e-2")
    ap.add_argument("--adapter-after", type=int, default=None, help="latent iterations before adapters "
                    "(default: the codec's default)")
    ap.add_argument("--timing-size", default="768x512")
    args = ap.parse_args()
    torch.set_num_threads(1)
    codec = build_plugin_manager().codec("adaptive-mbt2018-mean")
    defaults = codec.validate_params({"quality": args.quality})
    lam = codec._checkpoint(args.quality).lam
    after = defaults["latent_iters"] if args.adapter_after is None else args.adapter_after
    print(f"weights q{args.quality}: {codec._checkpoint(args.quality).path} (sha256 "
          f"{codec.weights_for(defaults)[:12]}), λ={lam}; defaults {defaults}")

    def run(src, params):
        p = codec.validate_params({**defaults, **params})
        t0 = time.process_time()
        payload = codec.encode(src, p)
        enc = time.process_time() - t0
        return (*rd_cost(codec, src, payload, lam), enc, int.from_bytes(payload[-4:], "big"))

    for name in args.images:
        src = crop_source(Path(args.dev, name), args.crop, args.crop)
        base = run(src, {"latent_iters": 0, "adapter_iters": 0})
        print(f"\n{name} {src.image.size}: base J={base[0]:.4f} ({base[1]:.3f} bpp, {base[2]:.2f} dB)")
        print(f"{'lr':>7s} {'latent':>6s} {'adapter':>7s} {'J':>8s} {'gain':>8s} {'bpp':>6s} {'PSNR':>6s} "
              f"{'enc CPU s':>9s} adapter sent")
        for lr in (float(v) for v in args.lr.split(",")):
            for n in (int(v) for v in args.latent.split(",") if int(v) > 0):
                j, bpp, p, enc, n_sym = run(src, {"latent_iters": n, "adapter_iters": 0, "lr": lr})
                print(f"{lr:7.0e} {n:6d} {0:7d} {j:8.4f} {base[0] - j:8.4f} {bpp:6.3f} {p:6.2f} {enc:9.1f}")
            for n in (int(v) for v in args.adapter.split(",") if int(v) > 0):
                j, bpp, p, enc, n_sym = run(src, {"latent_iters": after, "adapter_iters": n, "lr": lr})
                print(f"{lr:7.0e} {after:6d} {n:7d} {j:8.4f} {base[0] - j:8.4f} {bpp:6.3f} {p:6.2f} {enc:9.1f} "
                      f"{'yes' if n_sym else 'no'}")
    w, h = (int(v) for v in args.timing_size.split("x"))
    src = crop_source(Path(args.dev, args.images[-1]), w, h)
    t0 = time.process_time()
    payload = codec.encode(src, defaults)
    enc = time.process_time() - t0
    t0 = time.process_time()
    codec.decode(payload)
    dec = time.process_time() - t0
    print(f"\ntiming at the defaults on {src.image.size}: encode {enc:.1f} CPU s, decode {dec:.2f} CPU s "
          f"(one thread)")


if __name__ == "__main__":
    main()
