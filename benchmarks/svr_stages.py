"""Would the number of residual stages sent be SVR's rate knob? Measured, without retraining.

    .venv/bin/python benchmarks/svr_stages.py [DEV_DIR] [--limit 8] [--markdown FILE]

For each dev image: the encoder's K residual-VQ index maps; only the first s stages sent
(s = 1..K, context-coded with the shipped tables: a stage's context uses that stage and
the one before, so the first s stages are a prefix the same tables code), decoded two ways:

* ``sum``: the decoder sees their sum ŷ = Σ_{k<s} c_k[z_k] (plain residual VQ, no weights,
  no filler: what stage 1 trained the decoder on, before stage 2 fine-tuned it);
* ``filler``: the codec's m = 1 path (its selection symbols sent too) with the codewords of
  the stages not sent set to zero: ŷ = Σ_{k<s} w'_k c_k[z_k], w' from the filler.

Printed per domain, variant and s: mean bpp (the sections plus the payload head, as a
payload of the context layout would carry them), PSNR, MS-SSIM; and the codec itself at
m = 1 (every stage). Whether s is a monotone
knob is counted per image (PSNR rising with every stage). Nothing here fits on dev.
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
HEAD_BYTES = 14 + 3 * 4  # the context layout's head and its three section lengths


@dataclass(frozen=True)
class Point:
    """One image decoded from its first ``stages`` index maps (0: the codec at m = 1)."""

    domain: str
    variant: str
    stages: int
    bpp: float
    psnr: float
    ms_ssim: float


def measure(codec, src, domain: str) -> list[Point]:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pixarc.tensors import image_tensor, tensor_pixels
    from pixarc_svr import read_payload
    from pixarc_svr.context import ContextTables

    model, tables = codec._model(), codec.context_tables()
    image = src.image.convert("RGB")
    w, h = image.size
    x = F.pad(image_tensor(image), (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
    payload = codec.encode(src, codec.validate_params({"m": 1}))
    select_bytes = len(read_payload(payload).sections[1])
    with torch.no_grad():
        idx, select, _ = model.analyse(x, 1)
        cw = model.codewords(idx)
        masked, mask = model.masked_from_symbols(1, select, None, tuple(select.shape))
    z = idx[0].numpy()
    points = []
    for s in range(1, model.k + 1):
        index_bytes = len(ContextTables(tables.counts[:s], tables.sha256).encode(z[:s])) + HEAD_BYTES
        kept = cw.clone()
        kept[:, s:] = 0
        with torch.no_grad():
            for variant, y_hat, extra in (("sum", kept.sum(1), 0), ("filler", model.fill(kept, masked, mask),
                                                                     select_bytes)):
                out = Image.fromarray(tensor_pixels(model.decoder(y_hat)[0, :, :h, :w]))
                points.append(Point(domain, variant, s, 8 * (index_bytes + extra) / (w * h), psnr(image, out),
                                    ms_ssim(image, out)))
    out = codec.decode(payload).image
    points.append(Point(domain, "codec m=1", 0, 8 * len(payload) / (w * h), psnr(image, out), ms_ssim(image, out)))
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
        per_image = [measure(codec, s, domain) for s in (probe_and_load(f.read_bytes()) for f in files)
                     if s.image is not None]
        everything += per_image
        for s in range(len(per_image[0])):
            pts = [p[s] for p in per_image]
            label = str(pts[0].stages) if pts[0].stages else "all"
            b, q, m = (float(np.mean([getattr(p, a) for p in pts])) for a in ("bpp", "psnr", "ms_ssim"))
            print(f"{domain:11s} {pts[0].variant:9s} {label:>3s} {b:7.3f} {q:7.2f} {m:8.4f}", flush=True)
            md.append(f"| {domain} | {pts[0].variant} | {label} | {b:.3f} | {q:.2f} | {m:.4f} |")
    lines = []
    for variant in ("sum", "filler"):
        stages = [[p for p in ps if p.variant == variant] for ps in everything]
        monotone = sum(all(a.psnr < b.psnr for a, b in zip(ps, ps[1:])) for ps in stages)
        span = [ps[-1].psnr - ps[0].psnr for ps in stages]
        lines.append(f"{variant}: PSNR rises with every stage on {monotone}/{len(stages)} images; s=K minus s=1: "
                     f"mean {np.mean(span):.2f} dB, min {min(span):.2f}, max {max(span):.2f}")
    summary = "\n".join(lines)
    print(summary)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md + ["", summary, ""]))


if __name__ == "__main__":
    main()
