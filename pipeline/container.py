"""The ``.pxa`` container: the one place its byte layout is defined.

Layout (all integers big-endian)::

    offset  size  field
    0       8     magic  b"\\x89PXA\\r\\n\\x1a\\n"   (PNG-style: catches text-mode mangling)
    8       2     container version (currently 1)
    10      4     header length H
    14      H     header (below)
    14+H    4     CRC-32 of bytes 0 .. 14+H
    then    2     section count N (<= 64)
    N times:
            4     section tag (ASCII, e.g. b"DATA", b"ICCP", b"EXIF")
            8     section length L
            4     CRC-32 of tag + length + data
            L     section data
    then    end of file (trailing bytes are an error)

Header::

    1+n   codec id (u8 length + UTF-8)
    2     codec format version
    32    weights sha256 (zeros when the codec has no weights)
    4, 4  original width, height
    1+n   canonical mode (u8 length + ASCII), e.g. "RGB", "I;16", or the source mode
    1     bit depth per sample (0 when the codec stores the original bytes)
    32    sha256 of the original file bytes
    32    sha256 of the canonical pixels (zeros when not pixel-faithful)
    4+n   metadata JSON (u32 length + UTF-8): params, codec version, source format,
          recorded PSNR/MS-SSIM for lossy codecs, notes. Informational except where the
          verifier uses it (recorded PSNR).

Sections: ``DATA`` (codec payload, exactly one), ``ICCP`` (ICC profile, optional),
``EXIF`` (raw EXIF, optional). Unknown tags are skipped by readers of the same
container version, so metadata can be added without a version bump; anything that
changes how ``DATA`` is read bumps the codec's format version instead.

Limits keep hostile files cheap: header <= 1 MiB, sections <= 64, each section length
must fit in the bytes actually present (nothing is allocated from a claimed length).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from .errors import ContainerError

MAGIC = b"\x89PXA\r\n\x1a\n"
CONTAINER_VERSION = 1
MAX_HEADER = 1 << 20
MAX_SECTIONS = 64
MAX_SIDE = 1 << 20
_ZERO32 = bytes(32)


@dataclass
class Container:
    codec_id: str
    format_version: int
    width: int
    height: int
    mode: str
    bit_depth: int
    source_sha256: str
    pixels_sha256: str = ""
    weights_sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bytes] = field(default_factory=dict)

    @property
    def payload(self) -> bytes:
        return self.sections["DATA"]


def _hex32(value: str, what: str) -> bytes:
    if not value:
        return _ZERO32
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ContainerError(f"{what} is not hex") from None
    if len(raw) != 32:
        raise ContainerError(f"{what} must be 32 bytes")
    return raw


def _short_str(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if not 0 < len(raw) < 256:
        raise ContainerError(f"{what} must be 1..255 bytes")
    return bytes([len(raw)]) + raw


def pack(c: Container) -> bytes:
    """Serialise a container. ``sections`` must hold ``DATA``."""
    if "DATA" not in c.sections:
        raise ContainerError("container needs a DATA section")
    meta = json.dumps(c.meta, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    header = b"".join(
        [
            _short_str(c.codec_id, "codec id"),
            struct.pack(">H", c.format_version),
            _hex32(c.weights_sha256, "weights sha256"),
            struct.pack(">II", c.width, c.height),
            _short_str(c.mode, "mode"),
            struct.pack(">B", c.bit_depth),
            _hex32(c.source_sha256, "source sha256"),
            _hex32(c.pixels_sha256, "pixels sha256"),
            struct.pack(">I", len(meta)),
            meta,
        ]
    )
    if len(header) > MAX_HEADER:
        raise ContainerError("header too large")
    head = MAGIC + struct.pack(">HI", CONTAINER_VERSION, len(header)) + header
    parts = [head, struct.pack(">I", zlib.crc32(head))]
    if len(c.sections) > MAX_SECTIONS:
        raise ContainerError("too many sections")
    parts.append(struct.pack(">H", len(c.sections)))
    for tag, data in c.sections.items():
        raw_tag = tag.encode("ascii")
        if len(raw_tag) != 4:
            raise ContainerError(f"section tag {tag!r} must be 4 ASCII bytes")
        length = struct.pack(">Q", len(data))
        parts.append(raw_tag + length + struct.pack(">I", zlib.crc32(data, zlib.crc32(raw_tag + length))))
        parts.append(data)
    return b"".join(parts)


class _Reader:
    def __init__(self, buf: bytes, start: int = 0, end: int | None = None):
        self.buf, self.pos, self.end = buf, start, len(buf) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ContainerError(f"truncated container while reading {what}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def short_str(self, what: str) -> str:
        (n,) = self.unpack(">B", what)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise ContainerError(f"{what} is not UTF-8") from None


def _hex_or_empty(raw: bytes) -> str:
    return "" if raw == _ZERO32 else raw.hex()


def unpack(buf: bytes, *, header_only: bool = False) -> Container:
    """Parse and check a container. Raises :class:`ContainerError` on any defect."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise ContainerError("container must be bytes")
    buf = bytes(buf)
    r = _Reader(buf)
    if r.take(len(MAGIC), "magic") != MAGIC:
        raise ContainerError("not a pixarc container (bad magic)")
    version, hlen = r.unpack(">HI", "version")
    if version != CONTAINER_VERSION:
        raise ContainerError(f"unsupported container version {version} (this pixarc reads {CONTAINER_VERSION})")
    if hlen > MAX_HEADER:
        raise ContainerError("header length exceeds limit")
    header_end = r.pos + hlen
    r.take(hlen, "header")
    (crc,) = r.unpack(">I", "header CRC")
    if zlib.crc32(buf[:header_end]) != crc:
        raise ContainerError("header CRC mismatch")
    h = _Reader(buf, len(MAGIC) + 6, header_end)
    codec_id = h.short_str("codec id")
    (fmt_version,) = h.unpack(">H", "format version")
    weights = _hex_or_empty(h.take(32, "weights sha256"))
    width, height = h.unpack(">II", "geometry")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ContainerError(f"implausible geometry {width}x{height}")
    mode = h.short_str("mode")
    (bit_depth,) = h.unpack(">B", "bit depth")
    source = _hex_or_empty(h.take(32, "source sha256"))
    pixels = _hex_or_empty(h.take(32, "pixels sha256"))
    (mlen,) = h.unpack(">I", "metadata length")
    try:
        meta = json.loads(h.take(mlen, "metadata").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ContainerError("metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise ContainerError("metadata must be a JSON object")
    if h.pos != header_end:
        raise ContainerError("header has trailing bytes")
    c = Container(codec_id, fmt_version, width, height, mode, bit_depth, source, pixels, weights, meta)
    if header_only:
        return c
    (count,) = r.unpack(">H", "section count")
    if count > MAX_SECTIONS:
        raise ContainerError("too many sections")
    for _ in range(count):
        tag_raw = r.take(4, "section tag")
        raw_length = r.take(8, "section length")
        (length,) = struct.unpack(">Q", raw_length)
        (scrc,) = r.unpack(">I", "section CRC")
        data = r.take(length, "section data")
        if zlib.crc32(data, zlib.crc32(tag_raw + raw_length)) != scrc:
            raise ContainerError(f"section {tag_raw!r} CRC mismatch")
        try:
            tag = tag_raw.decode("ascii")
        except UnicodeDecodeError:
            raise ContainerError("section tag is not ASCII") from None
        if tag in c.sections:
            raise ContainerError(f"duplicate section {tag}")
        c.sections[tag] = data
    if r.pos != len(buf):
        raise ContainerError("trailing bytes after last section")
    if "DATA" not in c.sections:
        raise ContainerError("container has no DATA section")
    return c
