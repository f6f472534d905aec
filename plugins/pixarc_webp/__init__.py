"""WebP, lossless (``webp-lossless``) and lossy (``webp``), through Pillow's libwebp.

Defaults, measured on the dev set (issue 15; CPU seconds per megapixel on the project
machine, libwebp 1.6):

* lossy ``method=6``, libwebp's most thorough rate-distortion search: -0.8 to -2.1 %
  BD-rate (PSNR) against method 4 on every domain for 0.06-0.24 s/MP (1.5-2.5x method 4).
* lossless ``method=4``: method 6 (with quality 100 it is ``cwebp -z 9``) saves 0-10 %
  (screenshots 10 %, vector 5 %, line art nothing) but costs 2-17 s/MP, 10-50x method 4
  (0.05-1.3 s/MP); policies may ask for it per route.
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
    params_schema = {"method": Param(int, 4, 0, 6, "effort (6 = smallest, 10-50x slower)")}
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
