"""WebP, lossless (``webp-lossless``) and lossy (``webp``), through Pillow's libwebp.

Both default to ``method=6``, libwebp's most thorough search: for lossless it is
``cwebp -z 9`` (method 6 at quality 100, the lossless effort), for lossy the slowest
rate-distortion search. Measured on the dev set by ``benchmarks/lossless.py`` and
``benchmarks/lossy_rd.py``, which print the encode seconds per megapixel of each method.
"""

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
    params_schema = {"method": Param(int, 6, 0, 6, "effort (6 = smallest, slowest)")}
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
        "method": Param(int, 6, 0, 6, "effort (6 = best rate-distortion, slowest)"),
    }
    description = "WebP lossy"
    rate_param = "quality"

    def save_kwargs(self, params):
        return {"quality": params["quality"], "method": params["method"]}


@hookimpl
def register_codecs(register):
    register(WebPLosslessCodec)
    register(WebPCodec)
