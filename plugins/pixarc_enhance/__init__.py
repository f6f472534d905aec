"""``<base>-enhanced``: any lossy codec + a learned post-filter, adapted per image.

The payload carries the base codec's own payload untouched, plus what the decoder needs to
clean it up: whether the filter is on, the conditioning it was run with, and the adapters.
Decode = base decode, then the filter (and adapters) on the CPU. The encoder chooses all of
it by rate–distortion cost ``8·bytes + λ·SSE``, λ being the base codec's local slope
(``RD_ELASTICITY`` × bits / SSE at the base's operating point), so the filter is never applied where
it loses and adapters are sent only where they pay for their bytes. The base rate parameter
is this codec's rate parameter: ``target_psnr``/``target_bpp`` searches and RD selection
search the base quality with the filter on.

Payload (format 1), kept small because it is paid per image::

    filter off: u8 0 | base payload
    filter on:  u8 flags (bit 0: on, bit 1: 4:4:4 chroma, bit 2: channels-last layout in
                256-pixel tiles, else the first bitstreams' contiguous 512-pixel tiles:
                ``model.Layout``; bit 3: a per-image linear filter follows, ``wiener.py``)
                | u8 adapter mode (0 none,
                1 shared, 2 per colour) | u16 conditioning rate, permille |
                4-byte sha256 prefix of the filter weights | u32 length + base payload |
                with bit 3: 36 int8 coefficients | rANS-coded adapter symbols (the rest;
                their count follows from the mode)

The container records the rest: codec id ``<base>-enhanced``, ``codec_version`` (the base
id and its library versions, torch's) and ``weights_sha256`` (the filter's full sha256).

Weights (sha256 first, ``weights_only=True``): ``PIXARC_ENHANCE_WEIGHTS`` directories
(``os.pathsep``-separated, each with a ``weights.json``), then ``weights/`` beside this file;
an entry's ``base`` names the codec it was trained on; a base without its own filter uses
the AVIF one (the per-image on/off decision keeps it from losing). Bases: avif, webp, jxl,
jpeg and the learned codecs by default, more with ``PIXARC_ENHANCE_BASES=id,id``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from typing import Any, ClassVar, Mapping

from pixarc import memo
from pixarc.codec import Codec, Decoded, Param, RateProxy
from pixarc.device import CPU
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.learned import LearnedCodec, torch_device
from pixarc.payload import PayloadLayout
from pixarc.tensors import image_tensor

from .constants import ARCH

DEFAULT_BASES = ("avif", "webp", "jxl", "jpeg", "adaptive-mbt2018-mean", "svr")
SHA_PREFIX = 4
# A filtered payload (flags bit 0 set): flags, adapter mode, conditioning rate in permille,
# the filter's sha256 prefix; the base payload (one section); the coded adapter symbols.
HEADER = PayloadLayout(f">BBH{SHA_PREFIX}s", "flags mode cond_permille tag", sections=1, rest=True,
                       plausible=lambda p: (p.head.flags & 1 == 1 and p.head.mode in (0, 1, 2)
                                            and p.head.cond_permille <= 1000
                                            and len(p.rest) >= _wiener_bytes(p.head.flags)
                                            and not (p.head.mode == 0 and len(p.rest) > _wiener_bytes(p.head.flags))))
WIENER_FLAG = 8
WIENER = True  # the encoder weighs the per-image linear filter (``wiener.py``) by RD cost


def _wiener_bytes(flags: int) -> int:
    from . import wiener

    return wiener.SIZE if flags & WIENER_FLAG else 0


CACHE_PIXELS = 1_500_000  # the encoder keeps filter features in memory up to this size
SAMPLE_BLOCK = 128  # conditioning offsets are compared on up to SAMPLE_BLOCKS blocks this size
SAMPLE_BLOCKS = 4
# λ, the base's local RD slope in bits per unit SSE, as elasticity × bits / SSE: along an
# AVIF (4:4:4, speed 6) curve bits grow as SSE^-e, e with median 0.63 and quartiles
# 0.51-0.80 over 48 points (16 natural and comic dev images at qualities 50-85, finite
# differences of 5 quality steps). One number instead of one more base encode per image;
# the choices it weighs (filter on, adapters) barely move with it.
RD_ELASTICITY = 0.63
FILTER_DRIFT_DB = 0.02  # the filter's gain moves by about this much from one base quality to the next
BASE_MARGIN_DB = 0.03

OWN_PARAMS = {
    "filter": Param(str, "auto", help="auto (on/off coded per image by RD cost), on, off"),
    "adapters": Param(str, "auto", help="auto (by RD cost), none, shared, per_colour"),
    "strengths": Param(float, (0.0, 0.1, 0.25, -0.1), -1.0, 1.0,
                       "conditioning offsets (normalised rate) searched for the filter", many=True),
    "rd_lambda": Param(float, 0.0, 0.0, 1e6, "bits per unit SSE (0..255 scale); 0 = the base's local RD slope"),
    "filter_channels": Param(int, 0, 0, 1024, "cap on the filter's width (channels): the widest installed filter "
                             "at most this wide (the narrowest where none is), 0 = no cap; a narrower filter costs "
                             "less time per encode and decode and gains less"),
}


def _fingerprint(payload: bytes, base_im, base_fp: str | None) -> str:
    """What a decode of ``payload`` reconstructs, device-independently: the payload's own
    bytes (the flag byte alone with the filter off) and the base's fingerprint, or its
    pixels where the base has none."""
    h = hashlib.sha256(b"\0" if payload[0] == 0 else payload)
    h.update(base_fp.encode() if base_fp else base_im.tobytes())
    return h.hexdigest()


class EnhancedCodec(LearnedCodec):
    """Base class; :func:`enhanced` makes one subclass per base codec id."""

    base_id: ClassVar[str] = ""
    format_version = 1
    lossless = False
    prefers_gpu = False  # the filter runs on the CPU
    modes = frozenset({"RGB"})
    params_schema = dict(OWN_PARAMS)  # the instance adds the base's parameters
    weights_env, weights_arch, train_command = "PIXARC_ENHANCE_WEIGHTS", ARCH, "pixarc train enhance"

    def __init__(self, base: Codec | None = None):
        """``base``: the codec whose payload this one filters, given by the registry that makes
        this codec (``components``); None when it is not installed or disabled there."""
        super().__init__()
        self.base = base
        if base is not None:
            clash = set(base.params_schema) & set(OWN_PARAMS)
            if clash:
                raise CodecError(f"{self.codec_id}: base parameters {sorted(clash)} clash with the filter's")
            self.params_schema = {**base.params_schema, **OWN_PARAMS}
            self.rate_param = base.rate_param
            self.max_side = base.max_side

    # ------------------------------------------------------------------ identity

    def choose_weights(self, params=None):
        """The filter trained on this base, else the AVIF one (the on/off decision keeps it
        from losing); among those, the one trained for the chroma setting of ``params`` (an
        entry's ``"chroma": "444"``: trained on 4:4:4 bases only, what the lossy policy
        uses), else one trained on both; among those, the widest, or with ``filter_channels``
        the widest at most that wide (the narrowest where none is)."""
        own = [w for w in self.encoding_weights if w.entry.get("base", "avif") == self.base_id]
        generic = [w for w in self.encoding_weights if w.entry.get("base", "avif") == "avif"]
        pool = own or generic
        pool = [w for w in pool if w.origin == pool[0].origin]  # $PIXARC_ENHANCE_WEIGHTS first, as ever
        chroma = "444" if str((params or {}).get("subsampling", "")) in ("4:4:4", "0") else "420"
        fit = [w for w in pool if w.entry.get("chroma", "both") == chroma]
        both = [w for w in pool if w.entry.get("chroma", "both") == "both"]
        found = fit or both or pool
        width = lambda w: int(w.entry.get("channels", 0))  # noqa: E731
        cap = int((params or {}).get("filter_channels", 0) or 0)
        if cap and found:
            found = [w for w in found if width(w) <= cap] or [min(found, key=width)]
        return max(found, key=width, default=None)

    def build_model(self, weights, state):
        from .model import EnhanceNet

        e = weights.entry
        net = EnhanceNet(int(e["channels"]), int(e["layers"]), int(e.get("cond", 2)))
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return net

    def weights_pins(self, params):
        """The filter's weights, and the base's when the base is learned (its bitstreams must
        decode with the base weights they were made with, whatever ships later)."""
        pins = super().weights_pins(params)
        if self.base is not None:
            pins.update(self.base.weights_pins({k: params[k] for k in self.base.params_schema if k in params}))
        return pins

    def reproduces(self, params):
        """The base codec with the same base parameters: with ``filter`` auto or off every
        encode may be the base payload alone (one flag byte more), chosen by RD cost."""
        if self.base is None or params.get("filter", "auto") == "on":
            return None
        return self.base_id, {k: params[k] for k in self.base.params_schema if k in params}

    def decode_pinned(self, payload, device, pins):
        return self.decode(payload, device, pins)

    def version(self) -> str:
        import torch

        base = self.base.version() if self.base is not None else "not installed"
        return f"{self.base_id} ({base}); torch {torch.__version__}"

    def unsupported_reason(self, info):
        if self.missing_requirements():  # the first thing to fix: torch (the install line)
            return super().unsupported_reason(info)
        if self.base is None:
            return f"{self.codec_id}: base codec {self.base_id!r} is not installed"
        if self.base.lossless:
            return f"{self.codec_id}: base codec {self.base_id!r} is lossless, nothing to enhance"
        if self.select_weights() is None:
            return self.missing_weights()
        return super().unsupported_reason(info) or self.base.unsupported_reason(info)

    # ------------------------------------------------------------------ helpers

    def _cond(self, params: Mapping[str, Any]) -> tuple[float, int]:
        """(normalised base rate, chroma flag) the filter is conditioned on."""
        rp = self.rate_param
        if rp is None:
            return 0.5, 0
        spec = self.params_schema[rp]
        lo, hi = float(spec.min), float(spec.max)
        rate = (float(params[rp]) - lo) / (hi - lo) if hi > lo else 0.5
        sub = str(params.get("subsampling", ""))
        return rate, int(sub in ("4:4:4", "0"))

    def _base_decode(self, payload: bytes, device=CPU, pins=None):
        # a stored bitstream (pins given): the base decodes with the weights it was made with
        d = memo.decode(self.base, payload, device, pins)
        if d.image is None:
            raise CodecError(f"{self.codec_id}: base codec returned no pixels")
        im = d.image if d.image.mode == "RGB" else d.image.convert("RGB")
        return im, d.fingerprint

    @staticmethod
    def _pack(on, mode, cond_pm, chroma, symbols, sha, base_payload, layout: int = 1, wiener: bytes = b"") -> bytes:
        from . import adapt

        if not on:
            return b"\0" + base_payload
        coded = adapt.encode_symbols(symbols) if symbols else b""
        return HEADER.pack(1 | 2 * chroma | 4 * layout | (WIENER_FLAG if wiener else 0), mode, cond_pm,
                           bytes.fromhex(sha)[:SHA_PREFIX], sections=(base_payload,), rest=wiener + coded)

    # ------------------------------------------------------------------ encode

    def encode(self, src, params, device=CPU):
        import numpy as np
        import torch

        from PIL import Image

        from . import adapt
        from .model import feature_tiles, finish, sample_blocks, sampled_sse, to_uint8

        torch_device(device)  # a Device value; the filter itself runs on the CPU
        if self.base is None:
            raise CodecError(f"{self.codec_id}: base codec {self.base_id!r} is not installed")
        bp = {k: params[k] for k in self.base.params_schema}
        # through the memo: RD selection's search of the base codec itself, and the rate
        # search's tier on the base, probe the very same base encodes (one encode serves all)
        base_payload = memo.encode(self.base, src, bp, device)
        base_im, base_fp = self._base_decode(base_payload, device)
        f = self.select_weights(params)
        rate, chroma = self._cond(params)
        off = self._pack(0, 0, 0, 0, [], "", base_payload)
        if params["filter"] == "off" or f is None:
            return off
        if params["filter"] not in ("auto", "on") or params["adapters"] not in ("auto", "none", "shared", "per_colour"):
            raise CodecError(f"{self.codec_id}: filter must be auto/on/off, adapters auto/none/shared/per_colour")
        net = self.model(f)
        orig = np.asarray(src.image.convert("RGB"), dtype=np.float64)
        base_arr = np.asarray(base_im)

        def sse(a: np.ndarray) -> float:
            return float(((a.astype(np.float64) - orig) ** 2).sum())

        x, xb = image_tensor(orig.astype(np.uint8)), image_tensor(base_arr)
        base_sse = sse(base_arr)
        lam = params["rd_lambda"] or (RD_ELASTICITY * 8 * len(base_payload) / base_sse if base_sse else 0.0)
        # candidates: (cost, payload, SSE, reconstruction); the base alone is always one
        best = (8 * len(off) + lam * base_sse, off, base_sse, base_arr)
        offsets = tuple(params["strengths"])
        # A rate search encodes the same image at several base rates: the conditioning
        # offset that fits the image is found at the first one and reused at the others
        # (one filter pass per probe instead of one per offset).
        strength_key = self._strength_key(src, offsets, chroma)
        known = memo.get(strength_key)
        tried: dict[int, tuple] = {}  # permille -> (SSE, cached features, offset, reconstruction)
        best_y = None  # (permille, float output) of the offset with the lowest SSE so far
        keep = src.info.pixels <= CACHE_PIXELS
        blocks = sample_blocks(xb.shape[2], xb.shape[3], net.halo, SAMPLE_BLOCK, SAMPLE_BLOCKS) \
            if known is None and len(offsets) > 1 else None
        if blocks:  # compare the offsets on a few blocks, then run the one chosen on the whole image
            known = min(offsets, key=lambda o: sampled_sse(net, xb, orig, blocks,
                                                           torch.tensor([[_permille(rate, o) / 1000, float(chroma)]])))
        for off_s in (known,) if known is not None else offsets:
            pm = _permille(rate, off_s)
            if pm not in tried:
                parts = feature_tiles(net, xb, torch.tensor([[pm / 1000, float(chroma)]]))
                y = finish(net, parts, xb.shape)
                out = to_uint8(y)
                tried[pm] = (sse(out), parts if keep else None, off_s, out)
                if best_y is None or tried[pm][0] < tried[best_y[0]][0]:
                    best_y = (pm, y)
        pm, plain_y = best_y  # the first offset with the lowest SSE, and its float output
        memo.put(strength_key, tried[pm][2])
        cond = torch.tensor([[pm / 1000, float(chroma)]])
        parts = tried[pm][1] or feature_tiles(net, xb, cond)
        plain = self._pack(1, 0, pm, chroma, [], f.sha256, base_payload)
        plain_sse, plain_out = tried[pm][0], tried[pm][3]  # the filter without adapters at this offset
        tried = {}  # free the other strengths' features
        # (cost, payload, SSE, reconstruction, adapter mode, symbols, the float output): the
        # cheapest so far keeps its float output, which the linear filter below starts from
        chosen = (8 * len(plain) + lam * plain_sse, plain, plain_sse, plain_out, 0, [], plain_y)
        modes = {"auto": (1, 2), "none": (), "shared": (1,), "per_colour": (2,)}[params["adapters"]]
        if modes and lam > 0 and adapt.coder_available():
            stats = adapt.statistics(net, parts, x, plain_y)
            for mode in modes:
                symbols, _, _ = adapt.fit(stats, mode, lam)
                if not any(symbols):
                    continue
                payload = self._pack(1, mode, pm, chroma, symbols, f.sha256, base_payload)
                y = finish(net, parts, xb.shape, *adapt.merged_tail(net, mode, symbols))
                out = to_uint8(y)
                e = sse(out)
                if 8 * len(payload) + lam * e < chosen[0]:
                    chosen = (8 * len(payload) + lam * e, payload, e, out, mode, symbols, y)
        if WIENER and lam > 0:  # the per-image linear filter on top of the chosen one, where it pays
            from . import wiener

            _, _, _, _, mode, symbols, y = chosen
            y = wiener.float_output(y)
            coefs = wiener.fit(y, orig)
            if coefs.any():
                out = wiener.filtered(y, coefs)
                payload = self._pack(1, mode, pm, chroma, symbols, f.sha256, base_payload, wiener=wiener.pack(coefs))
                e = sse(out)
                chosen = min([chosen, (8 * len(payload) + lam * e, payload, e, out)], key=lambda c: c[0])
        if params["filter"] == "on" or chosen[0] < best[0]:
            best = chosen
        _, payload, best_sse, recon = best[:4]
        # what the encoder already measured: a rate search judges its probe by it instead of
        # a decode, and the kept one's first decode is this reconstruction (its check decodes
        # the stored bytes in full and compares)
        memo.note_psnr(self, payload, 10 * np.log10(255.0**2 * orig.size / best_sse) if best_sse else float("inf"))
        image = base_im if recon is base_arr else Image.fromarray(recon)
        memo.note_decoded(self, payload, Decoded(image=image, fingerprint=_fingerprint(payload, base_im, base_fp)))
        return payload

    def rate_values(self, params: Mapping[str, Any] | None = None) -> list[int]:
        """The base's: every probe of this codec is one of its encodes plus the filter."""
        if self.base is None or self.rate_param is None:
            return super().rate_values(params)
        return self.base.rate_values({k: v for k, v in (params or {}).items() if k in self.base.params_schema})

    def rate_proxies(self, params: Mapping[str, Any]) -> tuple[RateProxy, ...]:
        """The base's own cheap tiers (the filter's gain, which they do not see, moves by
        about 0.01 dB from one base quality to the next: ``FILTER_DRIFT_DB`` more margin),
        then the base itself at these settings: the encode every probe of this codec starts
        from, so a rate search measures the filter's gain at one quality and carries it to
        the next."""
        if self.base is None or params["filter"] == "off":
            return ()
        bp = {k: params[k] for k in self.base.params_schema}
        faster = tuple(RateProxy(p.codec, p.params, p.margin_db + FILTER_DRIFT_DB,
                                 gap_estimate=functools.partial(self.mosaic_gap, p))
                       for p in self.base.rate_proxies(bp))
        return (*faster, RateProxy(self.base, bp, BASE_MARGIN_DB, gap_estimate=self.sampled_gain))

    def mosaic_gap(self, tier: RateProxy, src, params: Mapping[str, Any], device=CPU) -> float:
        """dB this codec at ``params`` lies above ``tier`` (a faster encode of the base at
        the same rate value) on this image, estimated on a mosaic of the sampled blocks
        (:func:`~.model.mosaic`): the mosaic encoded by the base and by the tier, the filter
        run on the base's decode (nominal conditioning, no adapters). It places a rate
        search's first probe of this codec, and so the first full encode of the base,
        without a full base encode made only to measure the gap (the mosaic has a fifth of
        a 768×512 image's pixels; on the 16 natural and comic dev images that first full
        encode had been spent at another quality on 11). The filter's gain over the base it
        measures on the way serves :meth:`sampled_gain`. NaN where it cannot tell (no
        weights, filter off, an image the blocks would nearly cover)."""
        import numpy as np
        from PIL import Image

        from pixarc.images import SourceImage

        from .model import blocks_sse, mosaic, sample_blocks, sampled_sse

        f = self.select_weights(params)
        if self.base is None or f is None or params["filter"] == "off" or src.image is None or tier.codec.rate_param is None:
            return math.nan
        net = self.model(f)
        key = ("enhance-mosaic", self.codec_id, src.sha256, net.halo)
        made = memo.get(key)
        if made is None:
            orig = np.asarray(src.image.convert("RGB"))
            blocks = sample_blocks(orig.shape[0], orig.shape[1], net.halo, SAMPLE_BLOCK, SAMPLE_BLOCKS)
            if not blocks:
                return math.nan
            arr, placed = mosaic(orig, blocks)
            info = dataclasses.replace(src.info, width=arr.shape[1], height=arr.shape[0], mode="RGB")
            made = (SourceImage(b"", f"{src.sha256}-mosaic-{net.halo}", info, Image.fromarray(arr), "", None, None),
                    arr.astype(np.float64), placed)
            memo.put(key, made)
        msrc, morig, placed = made
        bp = {k: params[k] for k in self.base.params_schema}
        base_arr = np.asarray(self._base_decode(memo.encode(self.base, msrc, bp, device), device)[0])
        tp = {**tier.params, tier.codec.rate_param: params[self.rate_param]}
        tier_im = memo.decode(tier.codec, memo.encode(tier.codec, msrc, tp, device), device).image
        if tier_im is None or base_arr.shape != morig.shape:
            return math.nan
        cond, chroma = self._nominal_cond(src, params)
        filtered = sampled_sse(net, image_tensor(base_arr), morig, placed, cond)
        if not filtered > 0:
            return math.nan
        base = blocks_sse(base_arr, morig, placed)
        if base > 0:  # the filter's gain over the base, for :meth:`sampled_gain` (no other filter pass)
            memo.put(self._mosaic_gain_key(src, f, params, chroma), 10 * math.log10(base / filtered))
        slower = blocks_sse(np.asarray(tier_im.convert("RGB")), morig, placed)
        return 10 * math.log10(slower / filtered) if slower > 0 else math.nan

    def _nominal_cond(self, src, params: Mapping[str, Any]):
        """(the filter's conditioning as a (1, 2) tensor, chroma flag) for the sampled-block
        estimates: the base rate and the offset the encoder chose on this image, else the
        first of ``strengths``."""
        import torch

        rate, chroma = self._cond(params)
        offset = memo.get(self._strength_key(src, tuple(params["strengths"]), chroma))
        pm = _permille(rate, params["strengths"][0] if offset is None else offset)
        return torch.tensor([[pm / 1000, float(chroma)]]), chroma

    def _mosaic_gain_key(self, src, f, params, chroma: int) -> tuple:
        return ("enhance-mosaic-gain", self.codec_id, src.sha256, f.sha256, tuple(params["strengths"]), chroma)

    def sampled_gain(self, src, params: Mapping[str, Any], device=CPU) -> float:
        """dB the filter adds to the base encode at ``params`` on this image, estimated on a
        few sampled blocks with the nominal conditioning and no adapters (a sixth of a
        probe's filter work; on the 16 natural and comic dev images at ≈ 35.5 dB it was
        within 0.03 / 0.07 dB of the full encoder's gain once its mean offset is taken out,
        where other images' gains were 0.10 / 0.20 dB off): where a rate search places its
        first probe. NaN where it cannot tell (no weights, filter off, an image the blocks
        would nearly cover)."""
        import numpy as np

        from .model import blocks_sse, sample_blocks, sampled_sse

        f = self.select_weights(params)
        if self.base is None or f is None or params["filter"] == "off":
            return math.nan
        on_mosaic = memo.get(self._mosaic_gain_key(src, f, params, self._cond(params)[1]))
        if on_mosaic is not None:  # mosaic_gap measured it where the search first looked (the gain moves by
            return on_mosaic  # about FILTER_DRIFT_DB per quality step): no base encode, no filter pass for it
        net = self.model(f)
        base_payload = memo.encode(self.base, src, {k: params[k] for k in self.base.params_schema}, device)
        base_arr = np.asarray(self._base_decode(base_payload, device)[0])
        if base_arr.ndim != 3 or base_arr.shape[2] != 3:
            return math.nan
        blocks = sample_blocks(base_arr.shape[0], base_arr.shape[1], net.halo, SAMPLE_BLOCK, SAMPLE_BLOCKS)
        if not blocks:
            return math.nan
        orig = np.asarray(src.image.convert("RGB"), dtype=np.float64)
        filtered = sampled_sse(net, image_tensor(base_arr), orig, blocks, self._nominal_cond(src, params)[0])
        base = blocks_sse(base_arr, orig, blocks)
        return 10 * math.log10(base / filtered) if base > 0 and filtered > 0 else math.nan

    def _strength_key(self, src, offsets: tuple, chroma: int) -> tuple:
        """Where the image's memo keeps the conditioning offset the encoder chose among
        ``offsets`` (its other probes and the rate search's gain estimate reuse it)."""
        return ("enhance-strength", self.codec_id, src.sha256, offsets, chroma)

    # ------------------------------------------------------------------ decode

    def decode(self, payload, device=CPU, pins=None):
        torch_device(device)
        if self.base is None:
            raise CodecError(f"{self.codec_id}: base codec {self.base_id!r} is not installed")
        if not payload or payload[0] > 15:
            raise CodecError(f"{self.codec_id}: empty payload or unknown flags")
        if payload[0] == 0:
            base_im, base_fp = self._base_decode(payload[1:], device, pins)
            return Decoded(image=base_im, fingerprint=_fingerprint(payload, base_im, base_fp))
        p = HEADER.read(payload, self.codec_id)  # malformed or implausible: CodecError
        flags, mode, cond_pm, tag = p.head
        (base_payload,), coded = p.sections, p.rest
        base_im, base_fp = self._base_decode(base_payload, device, pins)
        with self.refusing("cannot decode"):  # rANS on corrupt bytes, shape mismatches...
            image = self._filtered(base_im, tag, mode, cond_pm, (flags >> 1) & 1, coded, (flags >> 2) & 1,
                                   flags & WIENER_FLAG)
        return Decoded(image=image, fingerprint=_fingerprint(payload, base_im, base_fp))

    def _filtered(self, base_im, tag, mode, cond_pm, chroma, coded, layout, with_wiener=0):
        import torch
        from PIL import Image

        from . import adapt, wiener
        from .model import LAYOUTS, apply, to_uint8

        f = next((w for w in self.weights if bytes.fromhex(w.sha256)[:SHA_PREFIX] == tag), None)
        if f is None:
            raise CodecError(f"{self.codec_id}: filter weights {tag.hex()}... not installed")
        net = self.model(f)
        w = b = coefs = None
        if with_wiener:
            coefs, coded = wiener.unpack(coded[: wiener.SIZE]), coded[wiener.SIZE :]
        if mode:
            symbols = adapt.decode_symbols(coded, adapt.n_params(mode, net.channels))
            w, b = adapt.merged_tail(net, mode, symbols)
        xb = image_tensor(base_im)
        out = apply(net, xb, torch.tensor([[cond_pm / 1000, float(chroma)]]), w, b, LAYOUTS[layout])
        return Image.fromarray(to_uint8(out) if coefs is None else wiener.filtered(wiener.float_output(out), coefs))


_CLASSES: dict[str, type[EnhancedCodec]] = {}


def enhanced(base_id: str) -> type[EnhancedCodec]:
    """The ``<base_id>-enhanced`` codec class (one class per base, reused across registries)."""
    if base_id not in _CLASSES:
        name = "".join(p.capitalize() for p in base_id.replace("-", "_").split("_")) + "EnhancedCodec"
        _CLASSES[base_id] = type(name, (EnhancedCodec,), {
            "codec_id": f"{base_id}-enhanced",
            "base_id": base_id,
            "components": {"base": base_id},  # the registry passes its own base codec in
            "description": f"{base_id} + learned enhancement filter with per-image adapters",
            "train_command": f"pixarc train enhance --base {base_id}",
            "__module__": __name__,
        })
    return _CLASSES[base_id]


def bases() -> list[str]:
    extra = [b.strip() for b in os.environ.get("PIXARC_ENHANCE_BASES", "").split(",") if b.strip()]
    return list(dict.fromkeys([*DEFAULT_BASES, *extra]))


def _permille(rate: float, offset: float) -> int:
    """The filter's conditioning (base rate + offset) on the 1/1000 grid a payload stores."""
    return min(1000, max(0, round((rate + offset) * 1000)))


@hookimpl
def register_codecs(register):
    for base_id in bases():
        register(enhanced(base_id))


@hookimpl
def register_commands(register):
    from .commands import train_enhance  # click and the shared options only; the trainer loads when it runs

    register(train_enhance, group="train")
