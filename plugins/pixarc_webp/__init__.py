"""WebP, lossless (``webp-lossless``) and lossy (``webp``), through Pillow's libwebp."""

from __future__ import annotations

from pixarc.codec import Param
from pixarc.hookspecs import hookimpl
from pixarc.pillow_codec import PillowCodec

_MODES = frozenset({"L", "LA", "RGB", "RGBA"})


class WebPLosslessCodec(PillowCodec):
    codec_id = "webp-lossless"
    lossless = True
    pillow_format = "WEBP"
    pillow_feature = "webp"
    modes = _MODES
    native_modes = frozenset({"RGB", "RGBA"})
    max_side = 16383
    params_schema = {"method": Param(int, 4, 0, 6, "effort (6 = smallest, slowest)")}
    description = "WebP lossless (exact: keeps colour under transparent pixels)"

    def save_kwargs(self, params):
        return {"lossless": True, "quality": 100, "method": params["method"], "exact": True}


class WebPCodec(PillowCodec):
    codec_id = "webp"
    lossless = False
    pillow_format = "WEBP"
    pillow_feature = "webp"
    modes = _MODES
    native_modes = frozenset({"RGB", "RGBA"})
    max_side = 16383
    params_schema = {
        "quality": Param(int, 80, 0, 100, "quality factor"),
        "method": Param(int, 4, 0, 6, "effort"),
    }
    description = "WebP lossy"
    rate_param = "quality"

    def save_kwargs(self, params):
        return {"quality": params["quality"], "method": params["method"]}


@hookimpl
def register_codecs(register):
    register(WebPLosslessCodec)
    register(WebPCodec)
