"""JPEG XL, lossless (``jxl-lossless``) and lossy (``jxl``), via pillow-jxl-plugin (libjxl).

The binding is held below 1.3.8 (pyproject.toml): pillow-jxl-plugin 1.3.8 bundles
jpegxl-rs 0.15 with libjxl 0.12.0, whose lossless output on images over 512 px a side
with few colours (line art, flat vector art) is 25-30 % larger at the same effort than
1.3.7's (jpegxl-rs 0.11.2, libjxl 0.11.1) and than libjxl 0.11.2 through imagecodecs or
pylibjxl, which produce the same bytes as 1.3.7. Measured per domain against ``cjxl`` by
``benchmarks/lossless.py``; guarded by a test in ``tests/test_codecs.py``.
"""

from __future__ import annotations

from pixarc.codec import Param
from pixarc.hookspecs import hookimpl
from pixarc.pillow_codec import PillowCodec

try:
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    AVAILABLE = True
except ImportError:  # pragma: no cover - the plugin then registers nothing
    AVAILABLE = False

_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I;16"})


class _JXLBase(PillowCodec):
    pillow_format = "JXL"
    modes = native_modes = _MODES

    def version(self) -> str:
        from importlib.metadata import version

        return f"{super().version()}, pillow-jxl-plugin {version('pillow-jxl-plugin')}"


class JXLLosslessCodec(_JXLBase):
    codec_id = "jxl-lossless"
    lossless = True
    params_schema = {"effort": Param(int, 7, 1, 9, "libjxl effort (9 = smallest)")}
    description = "JPEG XL lossless (modular)"

    def save_kwargs(self, params):
        return {"lossless": True, "effort": params["effort"], "num_threads": 1}


class JXLCodec(_JXLBase):
    codec_id = "jxl"
    lossless = False
    params_schema = {
        "quality": Param(int, 90, 1, 99, "libjxl quality (maps to butteraugli distance)"),
        "effort": Param(int, 7, 1, 9, "libjxl effort"),
    }
    description = "JPEG XL lossy (VarDCT)"
    rate_param = "quality"

    def save_kwargs(self, params):
        return {"quality": params["quality"], "effort": params["effort"], "num_threads": 1}


@hookimpl
def register_codecs(register):
    if AVAILABLE:
        register(JXLLosslessCodec)
        register(JXLCodec)
