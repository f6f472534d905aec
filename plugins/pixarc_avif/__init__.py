"""AVIF (lossy) through Pillow's bundled libavif.

Only lossy: Pillow's AVIF writer converts to YUV and exposes no identity-matrix
(lossless) mode, so a "lossless" AVIF would fail pixarc's decode check anyway.
"""

from __future__ import annotations

from PIL import features

from pixarc.codec import Param
from pixarc.hookspecs import hookimpl
from pixarc.pillow_codec import PillowCodec


class AVIFCodec(PillowCodec):
    codec_id = "avif"
    lossless = False
    pillow_format = "AVIF"
    pillow_feature = "avif"
    modes = frozenset({"L", "LA", "RGB", "RGBA"})
    native_modes = frozenset({"RGB", "RGBA"})
    params_schema = {
        "quality": Param(int, 70, 0, 100, "quality (100 = best)"),
        "speed": Param(int, 6, 0, 10, "encoder speed (0 = slowest, smallest)"),
        "subsampling": Param(str, "4:2:0", help="chroma subsampling: 4:2:0, 4:2:2 or 4:4:4"),
    }
    description = "AVIF lossy (libavif/aom)"
    rate_param = "quality"

    def save_kwargs(self, params):
        return {"quality": params["quality"], "speed": params["speed"], "subsampling": params["subsampling"]}


@hookimpl
def register_codecs(register):
    if features.check("avif"):
        register(AVIFCodec)
