"""Shared base for codecs backed by a Pillow image format (PNG, WebP, JPEG XL, AVIF).

The payload is ``u8 len + canonical mode`` followed by the format's own file bytes, so
modes a format cannot store natively (grey in WebP/AVIF) round-trip to the right mode.
"""

from __future__ import annotations

import functools

import io
from typing import Any, ClassVar, Mapping

from PIL import Image, features

from .codec import Codec, Decoded, open_payload_image
from .device import CPU, Device
from .errors import CodecError
from .images import CANONICAL_MODES, SourceImage



def with_mode_tag(mode: str, body: bytes) -> bytes:
    """Prefix a codec payload with the canonical mode it encodes (length byte + ASCII)."""
    tag = mode.encode("ascii")
    return bytes([len(tag)]) + tag + bytes(body)


def split_mode_tag(payload: bytes, codec_id: str) -> tuple[str, bytes]:
    """The mode and the codec body of a :func:`with_mode_tag` payload; refuses a bad tag."""
    if len(payload) < 2 or payload[0] == 0 or payload[0] > 8:
        raise CodecError(f"{codec_id}: payload too short or bad mode tag")
    n = payload[0]
    mode = payload[1 : 1 + n].decode("ascii", "replace")
    if mode not in CANONICAL_MODES:
        raise CodecError(f"{codec_id}: payload declares unknown mode {mode!r}")
    return mode, payload[1 + n :]

@functools.lru_cache(maxsize=None)
def _version(feature: str | None) -> str:
    """Pillow's version and its library's (asked once per process: every manifest row
    records it, and Pillow looks the library up anew on each call)."""
    import PIL

    parts = [f"Pillow {PIL.__version__}"]
    if feature:
        parts.append(f"lib{feature} {features.version(feature)}")
    return ", ".join(parts)


class PillowCodec(Codec):
    pillow_format: ClassVar[str]
    native_modes: ClassVar[frozenset[str]]
    pillow_feature: ClassVar[str | None] = None  # e.g. "webp": reported in version()

    def save_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)

    def version(self) -> str:
        return _version(self.pillow_feature)

    def encode(self, src: SourceImage, params: Mapping[str, Any], device: Device = CPU) -> bytes:
        image = src.image
        if image is None or image.mode not in self.modes:
            raise CodecError(f"{self.codec_id}: cannot encode mode {getattr(image, 'mode', None)}")
        work = image
        if image.mode not in self.native_modes:
            work = image.convert("RGBA" if "A" in image.mode else "RGB")
        buf = io.BytesIO()
        try:
            work.save(buf, self.pillow_format, **self.save_kwargs(params))
        except Exception as exc:
            raise CodecError(f"{self.codec_id}: encoder failed ({type(exc).__name__}: {exc})") from None
        return with_mode_tag(image.mode, buf.getvalue())

    def decode(self, payload: bytes, device: Device = CPU) -> Decoded:
        mode, body = split_mode_tag(payload, self.codec_id)
        image = open_payload_image(body, self.pillow_format, self.codec_id)
        if image.mode != mode:
            image = image.convert(mode)
        return Decoded(image=image)


def pillow_can_write(fmt: str) -> bool:
    Image.init()
    return fmt.upper() in Image.SAVE
