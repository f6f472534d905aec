"""Reading source images safely and turning them into canonical pixels.

Canonical pixels are what pixel codecs see and what fixity hashes cover: one of the
modes in :data:`CANONICAL_MODES`, never a palette, never a colour space Pillow cannot
round-trip. Anything that cannot be represented faithfully (CMYK, 16-bit RGB, several
frames) is flagged ``pixel_faithful=False`` and routed to a codec that keeps the original
bytes, so nothing is silently converted.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from .errors import InputError

try:  # registers the JXL format with Pillow when the plugin is installed
    import pillow_jxl  # noqa: F401
except ImportError:  # pragma: no cover - optional
    pass

CANONICAL_MODES = ("L", "LA", "RGB", "RGBA", "I;16")
BIT_DEPTH = {"L": 8, "LA": 8, "RGB": 8, "RGBA": 8, "I;16": 16}
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_FORMATS = frozenset(
    {"PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP", "GIF", "PPM", "TGA", "AVIF", "JXL"}
)


@dataclass(frozen=True)
class ImageInfo:
    """Small, picklable facts about a source image (no pixels)."""

    width: int
    height: int
    mode: str  # canonical mode, or the source mode when not pixel-faithful
    bit_depth: int
    source_format: str
    source_mode: str
    frames: int = 1
    pixel_faithful: bool = True
    notes: tuple[str, ...] = ()

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class SourceImage:
    """A decoded source: canonical pixels plus what is needed to preserve the original."""

    data: bytes
    sha256: str
    info: ImageInfo
    image: Image.Image | None  # canonical pixels; None when not pixel-faithful
    pixels_sha256: str
    icc_profile: bytes | None = None
    exif: bytes | None = None
    extra: dict = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image: Image.Image) -> str:
    """Hash of mode, geometry and raw samples: equal iff the pixels are equal."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _has_16bit_samples(im: Image.Image) -> bool:
    return any(";16" in str(t[3]) for t in getattr(im, "tile", []) if len(t) > 3)


def _canonicalize(im: Image.Image, notes: list[str], sixteen_bit: bool) -> Image.Image | None:
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        if sixteen_bit:
            notes.append("16-bit colour samples: Pillow would truncate them; original kept")
            return None
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return im if mode == "I;16" else im.convert("I;16")
    if mode == "I":
        lo, hi = im.getextrema()
        if 0 <= lo and hi <= 0xFFFF:
            notes.append("32-bit integer samples within 16 bits stored as I;16")
            return im.convert("I;16")
        notes.append("32-bit integer samples out of 16-bit range; original kept")
        return None
    if mode == "1":
        notes.append("bilevel expanded to L (0/255)")
        return im.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        notes.append("palette expanded to " + ("RGBA" if has_alpha else "RGB"))
        return im.convert("RGBA" if has_alpha else "RGB")
    notes.append(f"mode {mode} has no faithful canonical form; original kept")
    return None


HEADER_PREFIX = 1 << 16  # bytes read before the format and pixel-limit check


def check_header(prefix: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: frozenset[str] = DEFAULT_FORMATS) -> None:
    """Refuse from the first bytes alone what :func:`probe_and_load` would refuse from its
    header (format not allowed, too many pixels, a decompression bomb), so such an object
    costs a prefix, not its whole size. A header that does not fit in the prefix (or is not
    recognised) passes: the full probe decides."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(prefix))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError("too_large", f"decompression bomb refused: {exc}") from None
    except Exception:  # truncated or unknown here: leave it to the full probe
        return
    fmt = (im.format or "UNKNOWN").upper()
    if fmt not in formats:
        raise InputError("format_not_allowed", f"format {fmt} is not in the allowlist")
    w, h = im.size
    if w * h > max_pixels:
        raise InputError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


def probe_and_load(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
) -> SourceImage:
    """Decode ``data`` into a :class:`SourceImage` or raise :class:`InputError`.

    Geometry and format are checked from the header *before* pixels are decoded, so a
    decompression bomb costs a header parse, not gigabytes.
    """
    if not data:
        raise InputError("empty", "zero-byte file")
    digest = sha256_hex(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError("not_an_image", "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError("too_large", f"decompression bomb refused: {exc}") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise InputError("corrupt", f"unreadable header: {exc}") from None
    fmt = (im.format or "UNKNOWN").upper()
    if fmt not in formats:
        raise InputError("format_not_allowed", f"format {fmt} is not in the allowlist")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError("corrupt", f"invalid geometry {w}x{h}")
    if w * h > max_pixels:
        raise InputError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    frames = int(getattr(im, "n_frames", 1) or 1)
    source_mode = im.mode
    sixteen_bit = _has_16bit_samples(im)  # the tile list is gone after load()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
    except Exception as exc:
        raise InputError("truncated", f"pixel data unreadable ({type(exc).__name__}: {exc})") from None

    notes: list[str] = []
    canonical = None
    if frames > 1:
        notes.append(f"{frames} frames: original kept")
    else:
        canonical = _canonicalize(im, notes, sixteen_bit)
    icc = im.info.get("icc_profile") or None
    exif = im.info.get("exif") or None
    if isinstance(exif, str):
        exif = exif.encode("latin-1")
    if exif and canonical is not None:
        orientation = im.getexif().get(0x0112)
        if orientation not in (None, 1):
            notes.append(f"EXIF orientation {orientation} kept as metadata, pixels stored unrotated")
    if canonical is None:
        info = ImageInfo(w, h, source_mode, 0, fmt, source_mode, frames, False, tuple(notes))
        return SourceImage(data, digest, info, None, "", icc, exif)
    mode = canonical.mode
    info = ImageInfo(w, h, mode, BIT_DEPTH[mode], fmt, source_mode, frames, True, tuple(notes))
    return SourceImage(data, digest, info, canonical, pixels_sha256(canonical), icc, exif)
