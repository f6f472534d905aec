"""Would the number of residual stages sent be SVR's rate knob? Measured, without retraining.

    .venv/bin/python benchmarks/svr_stages.py [DEV_DIR] [--limit 8] [--markdown FILE]

For each dev image and s = 1..K: only the first s residual stages' index maps sent
(context-coded with the shipped tables: a stage's context uses that stage and the one
before, so the first s stages are a prefix the same tables code), decoded two ways:

* ``filler``: the codec itself, ``stages`` = s at m = 1 (its payload, its decode): the
  one-hot selection symbols are sent too, the codewords of the stages not sent are zero,
  ŷ = Σ_{k<s} w'_k c_k[z_k] with w' from the filler. s = K is the codec's m = 1 output.
* ``sum``: the decoder sees the plain sum ŷ = Σ_{k<s} c_k[z_k] (no weights, no filler:
  what stage 1 trained the decoder on, before stage 2 fine-tuned it); its bits are the
  same payload without the selection symbols.

Printed per domain, decoder and s: mean bpp (the payload's, not the container's), PSNR,
MS-SSIM; then, per decoder, on how many images PSNR rises with every stage (and which
not) and the s = K − s = 1 PSNR span. Nothing here fits on dev.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixarc.classify import DOMAINS
from pixarc.images import probe_and_load
from pixarc.metrics import ms_ssim, psnr

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Point:
    """One image decoded from its first ``stages`` index maps."""

    name: str
    domain: str
    variant: str
    stages: int
    bpp: float
    psnr: float
    ms_ssim: float


def measure(codec, src, name: str, domain: str) -> list[Point]:
    """Both decoders at s = 1..K. ``filler`` is the codec itself (``stages`` = s, m = 1):
    its payload's bytes and its decode; ``sum`` codes the same prefix with the same tables
    and decodes the plain sum (no selection symbols: they would not be needed)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pixarc.tensors import image_tensor, tensor_pixels
    from pixarc_svr import read_payload

    model = codec._model()
    image = src.image.convert("RGB")
    w, h = image.size
    x = F.pad(image_tensor(image), (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
    with torch.no_grad():
        cw = model.codewords(model.quantise(model.encoder(x))[0])
    points = []
    for s in range(1, model.k + 1):
        payload = codec.encode(src, codec.validate_params({"m": 1, "stages": s}))
        out = codec.decode(payload).image
        points.append(Point(name, domain, "filler", s, 8 * len(payload) / (w * h), psnr(image, out),
                            ms_ssim(image, out)))
        kept = cw.clone()
        kept[:, s:] = 0
        with torch.no_grad():
            out = Image.fromarray(tensor_pixels(model.decoder(kept.sum(1))[0, :, :h, :w]))
        bits = 8 * (len(payload) - len(read_payload(payload).sections[1]))
        points.append(Point(name, domain, "sum", s, bits / (w * h), psnr(image, out), ms_ssim(image, out)))
    return points


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(ROOT.parent / "shared" / "data" / "dev"))
    ap.add_argument("--limit", type=int, default=8, help="images per domain (sorted names; the first N)")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    from pixarc_svr import SVRCodec

    codec = SVRCodec()
    if codec.context_tables() is None:
        raise SystemExit("svr: the weights have no context tables (pixarc svr context-tables --data ...)")
    print(f"svr {codec.version()}, dev {args.dev}, {args.limit} image(s) per domain")
    md = ["| domain | decoder | stages sent | bpp | PSNR dB | MS-SSIM |", "|---|---|---|---|---|---|"]
    everything: list[list[Point]] = []
    for domain in args.domains.split(","):
        files = sorted(Path(args.dev, domain).glob("*"))[: args.limit]
        per_image = [measure(codec, src, f.name, domain) for f, src in
                     ((f, probe_and_load(f.read_bytes())) for f in files) if src.image is not None]
        everything += per_image
        for s in range(len(per_image[0])):
            pts = [p[s] for p in per_image]
            label = str(pts[0].stages)
            b, q, m = (float(np.mean([getattr(p, a) for p in pts])) for a in ("bpp", "psnr", "ms_ssim"))
            print(f"{domain:11s} {pts[0].variant:9s} {label:>3s} {b:7.3f} {q:7.2f} {m:8.4f}", flush=True)
            md.append(f"| {domain} | {pts[0].variant} | {label} | {b:.3f} | {q:.2f} | {m:.4f} |")
    lines = []
    for variant in ("sum", "filler"):
        stages = [[p for p in ps if p.variant == variant] for ps in everything]
        rising = [all(a.psnr < b.psnr for a, b in zip(ps, ps[1:])) for ps in stages]
        span = [ps[-1].psnr - ps[0].psnr for ps in stages]
        lines.append(f"{variant}: PSNR rises with every stage on {sum(rising)}/{len(stages)} images "
                     f"(not on: {', '.join(ps[0].name for ps, r in zip(stages, rising) if not r) or '-'}); "
                     f"s=K minus s=1: mean {np.mean(span):.2f} dB, min {min(span):.2f}, max {max(span):.2f}")
    summary = "\n".join(lines)
    print(summary)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md + ["", summary, ""]))


if __name__ == "__main__":
    main()
