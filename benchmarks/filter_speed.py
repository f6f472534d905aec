"""The enhancement filter's extra decode time, both layouts, in one run.

    .venv/bin/python benchmarks/filter_speed.py [DEV_DIR] [--per-domain 2] [--repeats 3]

For each image (``--per-domain`` per dev domain), the shipped 4:4:4 filter runs over the
AVIF q60 4:4:4 decode of the image, as a decoder runs it (one torch intra-op thread per
tile, under ``pixarc.learned.one_thread``):
1. layout 0: contiguous tensors, 512-pixel tiles, one thread (the first bitstreams' path);
2. layout 1: channels-last tensors, 256-pixel tiles, on every CPU (``PIXARC_FILTER_THREADS``
   caps them), the path new bitstreams name.
Alternated per image, best of ``--repeats``; prints seconds per megapixel of each and the
ratio. The base decode is not counted (it is the base codec's, the same either way).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from pixarc.device import CPU
from pixarc.images import probe_and_load
from pixarc.learned import one_thread
from pixarc.plugins import default_registry
from pixarc.tensors import image_tensor

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(DEV))
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from pixarc_enhance import model

    codec = default_registry().codec("avif-enhanced")
    params = codec.validate_params({"quality": 60, "subsampling": "4:4:4", "speed": 6})
    weights = codec.select_weights(params)
    net = codec.model(weights)
    cond = torch.tensor([[codec._cond(params)[0], 1.0]])
    print(f"filter {weights.path.name} ({weights.sha256[:12]}), {model.workers()} tile thread(s) for layout 1, "
          f"load {os.getloadavg()[0]:.1f}")
    totals = {0: 0.0, 1: 0.0}
    pixels = 0
    for domain in sorted(p.name for p in Path(args.dev).iterdir() if p.is_dir()):
        for path in sorted((Path(args.dev) / domain).iterdir())[: args.per_domain]:
            src = probe_and_load(path.read_bytes())
            if src.image is None or src.image.mode != "RGB":
                continue
            base = codec.base.decode(codec.base.encode(src, {k: params[k] for k in codec.base.params_schema}, CPU)).image
            xb = image_tensor(base.convert("RGB"))
            best = {}
            for _ in range(args.repeats):
                for code in (0, 1):
                    with one_thread():
                        t0 = time.perf_counter()
                        model.apply(net, xb, cond, layout=model.LAYOUTS[code])
                        dt = time.perf_counter() - t0
                    best[code] = min(best.get(code, dt), dt)
            mp = xb.shape[2] * xb.shape[3] / 1e6
            pixels += xb.shape[2] * xb.shape[3]
            for code in (0, 1):
                totals[code] += best[code]
            print(f"{domain}/{path.name} {mp:.2f} MP: layout 0 {best[0] / mp:.2f} s/MP, layout 1 {best[1] / mp:.2f} "
                  f"s/MP ({best[0] / best[1]:.2f}x)", flush=True)
    mp = pixels / 1e6
    print(f"all {mp:.2f} MP: layout 0 {totals[0] / mp:.2f} s/MP, layout 1 {totals[1] / mp:.2f} s/MP, "
          f"{totals[0] / totals[1]:.2f}x faster")


if __name__ == "__main__":
    main()
