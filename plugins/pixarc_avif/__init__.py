"""AVIF (lossy) through Pillow's bundled libavif (aom encoder).

Only lossy: Pillow's AVIF writer converts to YUV and exposes no identity-matrix
(lossless) mode, so a "lossless" AVIF would fail pixarc's decode check anyway.

Chroma subsampling is a parameter because it decides the quality ceiling: 4:2:0 halves
the chroma resolution, which caps PSNR on coloured edges (screenshots, flat vector art)
however many bits are spent; 4:4:4 keeps full chroma at some cost in bits on smooth
photos. ``tune`` selects aom's rate-distortion target (passed as a codec-specific option).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from PIL import features

from pixarc.codec import Param, RateProxy
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.pillow_codec import PillowCodec

SUBSAMPLINGS = ("4:2:0", "4:2:2", "4:4:4")
# aom's --tune values; "" leaves libavif's own default. "iq" exists from aom 3.12.
TUNES = ("", "psnr", "ssim", "iq")
# The rate search's cheap tier: aom at speed 9 encodes about 10x faster than at 6 and lands
# 0.3-1.5 dB lower, by an offset that moves by at most ~0.04 dB from one quality to the next
# (natural and comic dev images, qualities 30-85); 10 is no faster in this libavif.
PROXY_SPEED = 9
PROXY_MARGIN_DB = 0.1


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
        "subsampling": Param(str, "4:2:0", help="chroma subsampling: " + ", ".join(SUBSAMPLINGS)),
        "tune": Param(str, "", help="aom tune: '' (libavif default), " + ", ".join(TUNES[1:])),
    }
    description = "AVIF lossy (libavif/aom)"
    rate_param = "quality"

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        out = super().validate_params(params)
        if out["subsampling"] not in SUBSAMPLINGS:
            raise CodecError(f"avif: subsampling={out['subsampling']!r} not one of {SUBSAMPLINGS}")
        if out["tune"] not in TUNES:
            raise CodecError(f"avif: tune={out['tune']!r} not one of {TUNES}")
        return out

    def rate_values(self, params: Mapping[str, Any] | None = None) -> list[int]:
        """The lowest quality of each run of qualities that make the same bitstream: libavif
        maps quality 0..100 onto aom's 64 quantizers, so 37 of the 101 qualities repeat their
        neighbour's encode (which ones depends on ``tune``). A rate search then never spends
        a probe on an encode it has made, and keeps what a bisection over all 101 keeps."""
        p = self.validate_params(params)
        return list(distinct_qualities(p["subsampling"], p["tune"]))

    def rate_proxies(self, params: Mapping[str, Any]) -> tuple[RateProxy, ...]:
        if params["speed"] >= PROXY_SPEED:
            return ()
        return (RateProxy(self, {**params, "speed": PROXY_SPEED}, PROXY_MARGIN_DB),)

    def version(self) -> str:
        from PIL import _avif

        return f"{super().version()} ({_avif.codec_versions()})"

    def save_kwargs(self, params):
        kwargs = {"quality": params["quality"], "speed": params["speed"],
                  "subsampling": params["subsampling"]}
        if params.get("tune"):
            kwargs["advanced"] = {"tune": params["tune"]}
        return kwargs


@functools.lru_cache(maxsize=None)
def distinct_qualities(subsampling: str, tune: str) -> tuple[int, ...]:
    """Where a new encode starts along quality 0..100, measured on this libavif: a 48x48 noise
    image (every quantizer step changes its bitstream) at each quality, at the proxy speed
    (the mapping does not depend on speed), the lowest quality of each run of identical
    bitstreams. About 0.2 s, once per process and setting. All 101 if the probe fails."""
    import io

    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    kwargs: dict[str, Any] = {"speed": PROXY_SPEED, "subsampling": subsampling}
    if tune:
        kwargs["advanced"] = {"tune": tune}
    starts, previous = [], None
    try:
        for q in range(101):
            buf = io.BytesIO()
            noise.save(buf, "AVIF", quality=q, **kwargs)
            if buf.getvalue() != previous:
                starts.append(q)
            previous = buf.getvalue()
    except Exception:  # pragma: no cover - an encoder that cannot code the probe: search every quality
        return tuple(range(101))
    return tuple(starts)


@hookimpl
def register_codecs(register):
    if features.check("avif"):
        register(AVIFCodec)
