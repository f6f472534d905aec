"""Per-image memo of encodes and decodes, shared by the candidates of one route.

RD selection searches several codecs on the same image, and some of them wrap another:
``avif-enhanced`` is an AVIF encode plus a filter, and its rate search locates the target
on that AVIF encode alone before running the filter. Without a memo the same AVIF
bitstream is produced three times (``avif``'s probe, the search's tier, the enhanced
codec's base). Inside
:func:`scope` (one per image, opened by :func:`pixarc.selection.encode_route`) the first
encode of ``(codec, params)`` is kept and handed to every later caller; outside a scope
nothing is kept (plugins call the same functions unconditionally).

What is kept is what the codec returned: memoising changes no byte of any bitstream.
Decoded pixels are kept for images up to :data:`MAX_PIXELS` (memory), payloads always.
"""

from __future__ import annotations

import contextlib
import hashlib
from contextvars import ContextVar
from typing import Any, Iterator, Mapping

from .codec import Codec, Decoded
from .device import CPU, Device
from .images import SourceImage

MAX_PIXELS = 4_000_000  # decoded images are kept up to this size (about 12 MB each)

_scope: ContextVar[dict | None] = ContextVar("pixarc_memo", default=None)


@contextlib.contextmanager
def scope() -> Iterator[dict]:
    """Keep encodes and decodes until the block ends (one image's candidates)."""
    table: dict = {}
    token = _scope.set(table)
    try:
        yield table
    finally:
        _scope.reset(token)


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Nothing memoised inside: the decode-check of a bitstream to be stored decodes every
    byte of it again, base codec included."""
    token = _scope.set(None)
    try:
        yield
    finally:
        _scope.reset(token)


def _table() -> dict | None:
    return _scope.get()


def stats() -> dict[str, int]:
    """Hits and misses in the current scope (tests and benchmarks count work with it)."""
    t = _table()
    return dict(t.get("stats", {})) if t is not None else {}


def _count(t: dict, what: str) -> None:
    s = t.setdefault("stats", {})
    s[what] = s.get(what, 0) + 1


def encode(codec: Codec, src: SourceImage, params: dict[str, Any], device: Device = CPU) -> bytes:
    """``codec.encode(src, params, device)``, once per scope."""
    t = _table()
    if t is None:
        return codec.encode(src, params, device)
    key = ("enc", codec.codec_id, src.sha256, repr(sorted(params.items())), str(device))
    if key in t:
        _count(t, "encode_hits")
        return t[key]
    _count(t, "encode_misses")
    payload = codec.encode(src, params, device)
    t[key] = payload
    return payload


def decode(codec: Codec, payload: bytes, device: Device = CPU, pins: Mapping[str, str] | None = None) -> Decoded:
    """``codec.decode`` (``decode_stored`` with ``pins``, the weights of each learned
    component, when given), once per scope for images up to :data:`MAX_PIXELS`."""
    t = _table()

    def run() -> Decoded:
        if pins is None:
            return codec.decode(payload, device)
        return codec.decode_stored(payload, device, pins)

    if t is None:
        return run()
    key = ("dec", codec.codec_id, hashlib.sha256(payload).digest(), str(device),
           None if pins is None else tuple(sorted(pins.items())))
    if key in t:
        _count(t, "decode_hits")
        return t[key]
    _count(t, "decode_misses")
    out = run()
    if out.image is None or out.image.width * out.image.height <= MAX_PIXELS:
        t[key] = out
    return out


def note_psnr(codec: Codec, payload: bytes, value: float) -> None:
    """An encoder's own measure of the PSNR its payload decodes to (it reconstructed it to
    choose it); a rate search's probe uses it instead of decoding."""
    t = _table()
    if t is not None:
        t[("psnr", codec.codec_id, hashlib.sha256(payload).digest())] = float(value)


def note_decoded(codec: Codec, payload: bytes, decoded: Decoded) -> None:
    """An encoder's own reconstruction of its payload, made to choose it (pixels and the
    fingerprint its decoder computes): the first decode of a kept payload takes it instead
    of decoding again; the decode-check of the stored bytes, outside any memo, still
    decodes every byte and compares its hashes with those this reconstruction put in the
    header. Kept for images up to :data:`MAX_PIXELS`."""
    t = _table()
    if t is not None and (decoded.image is None or decoded.image.width * decoded.image.height <= MAX_PIXELS):
        t[("decoded", codec.codec_id, hashlib.sha256(payload).digest())] = decoded


def noted_decoded(codec: Codec, payload: bytes) -> Decoded | None:
    t = _table()
    return None if t is None else t.get(("decoded", codec.codec_id, hashlib.sha256(payload).digest()))


def noted_psnr(codec: Codec, payload: bytes) -> float | None:
    t = _table()
    return None if t is None else t.get(("psnr", codec.codec_id, hashlib.sha256(payload).digest()))


def get(key: tuple) -> Any:
    """A value a codec kept for this image (``None`` outside a scope or when absent)."""
    t = _table()
    return None if t is None else t.get(("user",) + key)


def put(key: tuple, value: Any) -> None:
    t = _table()
    if t is not None:
        t[("user",) + key] = value
