"""The fixed head of a learned codec's payload: one layout per format, read in one place,
checked for plausibility, and refused as a :class:`~pixarc.errors.CodecError`.

A learned payload is a big-endian head of numbers, then length-prefixed sections
(:func:`pixarc.codec.pack_sections`), then an optional fixed tail, then (for some formats)
the rest of the bytes. A :class:`PayloadLayout` says which, packs it and reads it back::

    HEADER = PayloadLayout(">BHHHH", "m width height u v", sections=3,
                           plausible=lambda p: 1 <= p.head.m <= 4 and ...)

    payload = HEADER.pack(m, w, h, u, v, sections=streams)
    p = HEADER.read(payload, "svr")      # p.head.m, p.sections, p.tail, p.rest

Reading never lets another exception out: a truncated or padded payload is
``"<codec>: malformed payload (<type>: <message>)"``, numbers a decoder would choke on
(or spend hours on) are ``"<codec>: implausible header values"``. What the layout packs is
what the formats wrote before this module existed, byte for byte: a layout is a way to
write a format down, never a format change. The public ``HEADER`` of each plugin is also
what benchmarks and tests read a payload's head with.
"""

from __future__ import annotations

import contextlib
import struct
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

from .codec import pack_sections, unpack_sections
from .errors import CodecError


@contextlib.contextmanager
def refusing(codec_id: str, what: str) -> Iterator[None]:
    """Any failure inside becomes ``CodecError("<codec>: <what> (<type>: <message>)")``: a
    corrupt or forged payload (truncated sections, rANS on junk, shape mismatches) must
    come out as a typed refusal, never as a crash."""
    try:
        yield
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"{codec_id}: {what} ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Payload:
    """A payload read by :meth:`PayloadLayout.read`: the head's named numbers, the sections,
    the tail's numbers and whatever follows (empty unless the layout keeps a rest)."""

    head: NamedTuple
    sections: tuple[bytes, ...] = ()
    tail: tuple[Any, ...] = ()
    rest: bytes = b""


class PayloadLayout:
    """A payload format: ``fmt`` (a :mod:`struct` format, big-endian) with field ``names``,
    then ``sections`` length-prefixed sections, then a ``tail`` struct, then — only when
    ``rest`` — any further bytes; otherwise the payload must end there. ``plausible`` tells
    a well-formed payload whose numbers a decoder may trust from one it must refuse."""

    def __init__(self, fmt: str, names: str, *, sections: int = 0, tail: str = "", rest: bool = False,
                 plausible: Callable[[Payload], bool] | None = None):
        self.struct = struct.Struct(fmt)
        self.fields = namedtuple("Head", names)
        if len(self.fields._fields) != len(self.struct.unpack(bytes(self.struct.size))):
            raise ValueError(f"{fmt!r} and the names {names!r} do not match")
        self.sections, self.rest, self.plausible = sections, rest, plausible
        self.tail = struct.Struct(tail) if tail else None

    @property
    def size(self) -> int:
        """Bytes of the head (the first section's length prefix starts here)."""
        return self.struct.size

    def pack(self, *values: Any, sections: tuple[bytes, ...] | list[bytes] = (), tail: tuple[Any, ...] = (),
             rest: bytes = b"") -> bytes:
        if len(sections) != self.sections or bool(rest) and not self.rest:
            raise ValueError(f"this layout has {self.sections} sections and {'a' if self.rest else 'no'} rest")
        return (self.struct.pack(*values) + pack_sections(*sections)
                + (self.tail.pack(*tail) if self.tail is not None else b"") + rest)

    def parse(self, payload: bytes) -> NamedTuple:
        """The head's numbers, unchecked (what a benchmark or a test looks at)."""
        return self.fields._make(self.struct.unpack_from(payload, 0))

    def read(self, payload: bytes, codec_id: str) -> Payload:
        """The whole payload, checked: malformed or implausible payloads raise CodecError."""
        with refusing(codec_id, "malformed payload"):
            head = self.parse(payload)
            sections, pos = unpack_sections(payload, self.size, self.sections)
            tail: tuple[Any, ...] = ()
            if self.tail is not None:
                tail = self.tail.unpack_from(payload, pos)
                pos += self.tail.size
            if pos != len(payload) and not self.rest:
                raise ValueError("trailing bytes")
            read = Payload(head, tuple(sections), tail, bytes(payload[pos:]))
        if self.plausible is not None and not self.plausible(read):
            raise CodecError(f"{codec_id}: implausible header values")
        return read
