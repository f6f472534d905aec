"""PNG (lossless): the universal baseline and fallback."""

from __future__ import annotations

from pixarc.codec import Param
from pixarc.hookspecs import hookimpl
from pixarc.pillow_codec import PillowCodec


class PNGCodec(PillowCodec):
    codec_id = "png"
    lossless = True
    pillow_format = "PNG"
    modes = native_modes = frozenset({"L", "LA", "RGB", "RGBA", "I;16"})
    pillow_feature = "zlib"
    params_schema = {"compress_level": Param(int, 9, 0, 9, "zlib level (9 = smallest)")}
    description = "PNG via Pillow/zlib"


@hookimpl
def register_codecs(register):
    register(PNGCodec)
