"""``store``: keep the original file bytes. The fallback that can never lose anything.

Used for sources with no faithful canonical pixels (CMYK, 16-bit RGB, animations) and as
the last candidate of every route. Restore writes the original file back byte for byte.
"""

from __future__ import annotations

from pixarc.codec import Codec, Decoded
from pixarc.device import CPU
from pixarc.hookspecs import hookimpl


class StoreCodec(Codec):
    codec_id = "store"
    lossless = True
    description = "original bytes, verbatim"

    def unsupported_reason(self, info):
        return None

    def encode(self, src, params, device=CPU):
        return src.data

    def decode(self, payload, device=CPU):
        return Decoded(original=bytes(payload))


@hookimpl
def register_codecs(register):
    register(StoreCodec)
