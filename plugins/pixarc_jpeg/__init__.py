"""``jpeg`` (lossy): the universal lossy baseline, through Pillow's libjpeg."""

from __future__ import annotations

from pixarc.codec import Param
from pixarc.hookspecs import hookimpl
from pixarc.pillow_codec import PillowCodec


class JPEGCodec(PillowCodec):
    codec_id = "jpeg"
    lossless = False
    pillow_format = "JPEG"
    pillow_feature = "jpg"
    modes = native_modes = frozenset({"L", "RGB"})
    max_side = 65500
    rate_param = "quality"
    params_schema = {
        "quality": Param(int, 85, 1, 95, "libjpeg quality"),
        "subsampling": Param(int, 2, 0, 2, "chroma subsampling: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0"),
    }
    description = "JPEG (baseline, optimised Huffman tables)"

    def save_kwargs(self, params):
        return {"quality": params["quality"], "subsampling": params["subsampling"], "optimize": True}


@hookimpl
def register_codecs(register):
    register(JPEGCodec)
