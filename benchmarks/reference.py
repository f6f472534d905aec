"""The reference command-line encoders, run on the same pixels as pixarc's codecs.

``cjxl``/``djxl`` (libjxl), ``avifenc``/``avifdec`` (libavif) and ``cwebp``/``dwebp``
(libwebp) are what users compare against; the benchmarks run them side by side with
pixarc's codecs in the same process so the comparison is measured, never remembered.
They are optional (Debian: ``apt-get install libjxl-tools libavif-bin webp``): a tool
that is not installed is reported as such and its rows are left out.

Each call writes the image to a temporary PNG, runs the encoder, decodes the result with
the matching decoder and returns the bytes, the decoded pixels and the encoder's CPU
seconds (from the child's rusage, so the shared machine's load does not count).
"""

from __future__ import annotations

import io
import re
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable
from functools import cache
from pathlib import Path

from PIL import Image

# tool -> (encoder, decoder, argv that prints the version)
TOOLS = {
    "jxl": ("cjxl", "djxl", ["cjxl", "--version"]),
    "avif": ("avifenc", "avifdec", ["avifenc", "--version"]),
    "webp": ("cwebp", "dwebp", ["cwebp", "-version"]),
}


@dataclass(frozen=True)
class RefResult:
    """One reference encode: payload size, decoded pixels, encoder CPU seconds."""

    nbytes: int
    image: Image.Image
    encode_cpu_s: float


@cache
def version(family: str) -> str | None:
    """Version string of the reference encoder of ``family`` ('jxl', 'avif', 'webp'), or
    None when the encoder or its decoder is not installed."""
    enc, dec, argv = TOOLS[family]
    if not (shutil.which(enc) and shutil.which(dec)):
        return None
    out = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(r"v?(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return f"{enc} {m.group(1) if m else '?'}"


def status() -> str:
    """One line naming each reference encoder and its version, or 'not installed'."""
    return "; ".join(f"{TOOLS[f][0]}: {version(f) or 'not installed'}" for f in TOOLS)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(image: Image.Image, family: str, suffix: str, enc_args: Callable[[Path, Path], list[str]]) -> RefResult:
    enc, dec, _ = TOOLS[family]
    if version(family) is None:
        raise RuntimeError(f"{enc} not installed")
    with tempfile.TemporaryDirectory(prefix="pixarc-ref-") as tmp:
        src, coded, back = Path(tmp, "in.png"), Path(tmp, "out" + suffix), Path(tmp, "back.png")
        image.save(src, "PNG", compress_level=1)
        t0 = _child_cpu()
        subprocess.run([enc, *enc_args(src, coded)], check=True, capture_output=True)
        cpu = _child_cpu() - t0
        dec_argv = [dec, str(coded), "-o", str(back)] if dec == "dwebp" else [dec, str(coded), str(back)]
        subprocess.run(dec_argv, check=True, capture_output=True)
        out = Image.open(io.BytesIO(back.read_bytes()))
        out.load()
        if out.mode != image.mode:
            out = out.convert(image.mode)
        return RefResult(coded.stat().st_size, out, cpu)


def jxl(image: Image.Image, *, effort: int, quality: int | None = None) -> RefResult:
    """``cjxl -d 0`` (lossless) when ``quality`` is None, else ``cjxl -q quality``."""
    rate = ["-d", "0"] if quality is None else ["-q", str(quality)]
    return _run(image, "jxl", ".jxl",
                lambda s, o: [str(s), str(o), *rate, "-e", str(effort), "--num_threads=1"])


def avif_quantizer(quality: int) -> int:
    """libavif 1.x's mapping of ``quality`` (0..100) to the AV1 quantizer (0..63), for
    ``avifenc`` releases (0.11) that only take ``--min/--max`` quantizers."""
    return ((100 - quality) * 63 + 50) // 100


def avif(image: Image.Image, *, quality: int, speed: int, subsampling: str = "4:2:0",
         tune: str = "") -> RefResult:
    """``avifenc`` at the quantizer ``quality`` maps to, with ``speed`` and chroma ``subsampling``."""
    q = str(avif_quantizer(quality))
    yuv = subsampling.replace(":", "")[:3]
    extra = ["-a", f"tune={tune}"] if tune else []
    return _run(image, "avif", ".avif",
                lambda s, o: ["--min", q, "--max", q, "-s", str(speed), "-y", yuv, "-j", "1",
                              *extra, str(s), str(o)])


def webp(image: Image.Image, *, method: int, quality: int | None = None) -> RefResult:
    """``cwebp -lossless -exact`` when ``quality`` is None, else lossy ``cwebp -q quality``."""
    rate = ["-lossless", "-q", "100", "-exact"] if quality is None else ["-q", str(quality)]
    return _run(image, "webp", ".webp", lambda s, o: [*rate, "-m", str(method), str(s), "-o", str(o)])
