"""JPEG XL: lossless (``jxl-lossless``) through imagecodecs, lossy (``jxl``) through
pillow-jxl-plugin; both libjxl.

Why two bindings (measured on the dev set, issue 15; ``benchmarks/lossless.py`` and
``benchmarks/lossy_rd.py`` print the comparison with ``cjxl`` in every run):

* Lossless: libjxl renumbered its efforts in 0.10. The smallest setting of libjxl 0.7
  (``cjxl -e 9``, the reference encoder in Debian) corresponds to effort 10 of libjxl
  0.11, which pillow-jxl-plugin refuses ("Invalid effort"); at its cap of 9 it was 1.35x
  the reference's size on line art and 1.17x on vector art. imagecodecs exposes effort 10.
  Its libjxl 0.11.2 also avoids a regression of pillow-jxl-plugin 1.3.8 (jpegxl-rs 0.15,
  libjxl 0.12.0): lossless files 25-30 % larger on few-colour images over 512 px a side.
* Lossy: pillow-jxl-plugin 1.3.8's libjxl 0.12 is 1-3 % better (PSNR BD-rate) than 0.11.
  Against ``cjxl`` 0.7 at effort 7 (PSNR BD-rate): natural +2 %, comic +3 %, line -5 %,
  vector +7 % (+5 % at effort 9), screenshot -9 %: newer libjxl tunes for perceptual
  metrics, and neither binding exposes libjxl's finer options (gaborish, EPF, AQ) to try.

Both write a plain JPEG XL codestream after the mode tag (the layout of
:class:`~pixarc.pillow_codec.PillowCodec`), so either binding decodes either's payloads
and bitstreams archived before this change still decode.
"""

from __future__ import annotations

from typing import Any, Mapping

from pixarc.codec import Codec, Decoded, Param
from pixarc.device import CPU, Device, cpu_threads
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.images import DEFAULT_MAX_PIXELS, SourceImage
from pixarc.pillow_codec import PillowCodec, split_mode_tag, with_mode_tag

try:
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    AVAILABLE = True
except ImportError:  # pragma: no cover - the plugin then registers nothing
    AVAILABLE = False

try:
    import imagecodecs

    LOSSLESS_AVAILABLE = bool(imagecodecs.JPEGXL.available)
except (ImportError, AttributeError):  # pragma: no cover - then jxl-lossless is not registered
    LOSSLESS_AVAILABLE = False

_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I;16"})


class JXLLosslessCodec(Codec):
    codec_id = "jxl-lossless"
    lossless = True
    modes = _MODES
    params_schema = {
        "effort": Param(int, 7, 1, 10, "libjxl effort (10 = smallest; libjxl 0.11's 10 is cjxl 0.7's 9)"),
    }
    description = "JPEG XL lossless (modular), libjxl through imagecodecs"

    def version(self) -> str:
        return f"imagecodecs {imagecodecs.__version__}, {imagecodecs.jpegxl_version()}"

    def encode(self, src: SourceImage, params: Mapping[str, Any], device: Device = CPU) -> bytes:
        import numpy as np

        image = src.image
        if image is None or image.mode not in self.modes:
            raise CodecError(f"{self.codec_id}: cannot encode mode {getattr(image, 'mode', None)}")
        # L and I;16 are 2-D arrays, LA/RGB/RGBA interleaved: what imagecodecs reads as
        # grey, grey+alpha, RGB and RGBA. libjxl's thread pool on the CPUs this process may
        # use, as AVIF's libaom: the same bytes with any thread count (checked on dev line
        # and vector art at efforts 9 and 10), up to 25 % less wall time at effort 9.
        photometric = "gray" if image.mode in ("L", "LA", "I;16") else "rgb"
        try:
            data = imagecodecs.jpegxl_encode(np.asarray(image), lossless=True, effort=params["effort"],
                                             photometric=photometric, numthreads=cpu_threads())
        except Exception as exc:
            raise CodecError(f"{self.codec_id}: encoder failed ({type(exc).__name__}: {exc})") from None
        return with_mode_tag(image.mode, data)

    def decode(self, payload: bytes, device: Device = CPU) -> Decoded:
        from PIL import Image

        mode, body = split_mode_tag(payload, self.codec_id)
        try:
            a = imagecodecs.jpegxl_decode(body, numthreads=cpu_threads())
            if a.shape[0] * a.shape[1] > DEFAULT_MAX_PIXELS:
                raise CodecError(f"{self.codec_id}: payload claims {a.shape[1]}x{a.shape[0]} pixels, refused")
            image = Image.fromarray(a)
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"{self.codec_id}: cannot decode payload ({type(exc).__name__}: {exc})") from None
        if image.mode != mode:
            image = image.convert(mode)
        return Decoded(image=image)


class JXLCodec(PillowCodec):
    codec_id = "jxl"
    lossless = False
    pillow_format = "JXL"
    modes = native_modes = _MODES
    params_schema = {
        "quality": Param(int, 90, 1, 99, "libjxl quality (maps to butteraugli distance)"),
        "effort": Param(int, 7, 1, 9, "libjxl effort"),
    }
    description = "JPEG XL lossy (VarDCT)"
    rate_param = "quality"

    def version(self) -> str:
        from importlib.metadata import version

        return f"{super().version()}, pillow-jxl-plugin {version('pillow-jxl-plugin')}"

    def save_kwargs(self, params):
        return {"quality": params["quality"], "effort": params["effort"], "num_threads": 1}


@hookimpl
def register_codecs(register):
    if LOSSLESS_AVAILABLE:
        register(JXLLosslessCodec)
    if AVAILABLE:
        register(JXLCodec)
