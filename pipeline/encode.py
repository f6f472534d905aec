"""Encode one candidate: encode -> pack -> decode-check, and rate targets.

Nothing is stored unverified: every payload kept is packed into its container, the packed
bytes are decoded again and checked on the encoding device and, when that is not the
device restore uses (:attr:`pixarc.codec.Codec.restore_device`), there too. A failing
candidate costs only itself: the next one in the route is tried, and the row's attempts
say what happened to each (:mod:`pixarc.selection` chooses among them).

Two phases, so a selection among candidates pays the costly part for the one it keeps:
:func:`encode_measured` encodes and measures (bytes as stored, PSNR of what the payload
reconstructs), :func:`confirm` adds MS-SSIM and runs the check; :func:`encode_verified`
is both.

Rate searches (``target_psnr``/``target_bpp``, :mod:`pixarc.ratesearch`) judge their probes
by PSNR or bytes alone; the probe they keep goes through the same full check. Within one
image's route, encodes and decodes are shared through :mod:`pixarc.memo`; the check never
reads from it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import __version__, faults, memo, ratesearch
from .checks import decode_with, stored_pins
from .codec import Codec, RateProxy, params_hash
from .container import Container, pack, unpack
from .device import Device, DeviceMap, device_map, unavailable_reason
from .errors import CodecError, PixarcError, VerificationError
from .images import SourceImage, pixels_sha256
from .metrics import ms_ssim, psnr
from .plugins import Registry
from .policy import Route

Target = tuple[str, float]  # ("psnr", dB) or ("bpp", bits per pixel)
Payloads = dict[tuple[str, str], bytes]  # (codec id, params hash) -> payload encoded in a batch


@dataclass
class Encoded:
    """An encoding: the container's bytes and what they reconstruct. ``checked``: decode-
    checked (:func:`confirm`); until then ``blob`` carries a placeholder MS-SSIM (its size
    is the stored size to a byte or two) and ``recon`` the reconstruction it was measured on."""

    codec: Codec
    params: dict[str, Any]
    blob: bytes
    container: Container
    psnr: float
    ms_ssim: float
    decoded_sha256: str
    encode_s: float
    decode_s: float
    device: Device  # where it was encoded
    checked: bool = True
    recon: Any = field(default=None, repr=False, compare=False)
    noted: bool = False  # ``recon`` came from the encoder, not a decode (the check must reproduce it)

    @classmethod
    def from_container(cls, codec: Codec, c: Container, blob: bytes, decode_s: float, device: Device) -> "Encoded":
        """An existing, already decode-checked bitstream (reuse, repair)."""
        lossless = bool(c.meta.get("lossless"))
        return cls(codec, dict(c.meta.get("params", {})), blob, c,
                   math.inf if lossless else float(c.meta.get("psnr", math.nan)),
                   1.0 if lossless else float(c.meta.get("ms_ssim", math.nan)),
                   c.pixels_sha256 if lossless else c.meta.get("decoded_sha256", ""), 0.0, decode_s, device)


def _container(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, payload: bytes) -> Container:
    info = src.info
    meta: dict[str, Any] = {
        "params": params,
        "codec_version": codec.version(),
        "lossless": codec.lossless,
        "source_format": info.source_format,
        "source_mode": info.source_mode,
        "domain": domain,
        "notes": list(info.notes),
        "pixarc_version": __version__,
        # what travels with the bitstream so a lost manifest row can be rebuilt from it alone:
        # when it was made (version order never comes from file-system times), and the key,
        # run and predecessor the archive job stamps on the source
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        **src.extra.get("stamp", {}),
    }
    pins = codec.weights_pins(params)
    if set(pins) - {codec.codec_id}:  # a composite: its learned components are pinned too
        meta["weights"] = pins
    sections = {"DATA": payload}
    if src.icc_profile:
        sections["ICCP"] = src.icc_profile
    if src.exif:
        sections["EXIF"] = src.exif
    return Container(codec.codec_id, codec.format_version, info.width, info.height, info.mode, info.bit_depth,
                     src.sha256, src.pixels_sha256, codec.weights_for(params), meta, sections)


def _reconstruct(codec: Codec, src: SourceImage, payload: bytes, device: Device, pins: Mapping[str, str]):
    """Decode a lossy payload once, on the encoding device, or take the reconstruction its
    encoder noted (:func:`pixarc.memo.note_decoded`): (decoded, PSNR, whether noted).
    Probes stop at PSNR; MS-SSIM is computed for the kept encoding only."""
    noted = memo.noted_decoded(codec, payload)
    first = noted if noted is not None else memo.decode(codec, payload, device, pins)
    recon = first.image
    if recon is None or recon.size != src.image.size or recon.mode != src.image.mode:
        raise VerificationError(f"{codec.codec_id}: reconstruction has the wrong geometry or mode")
    return first, psnr(src.image, recon), noted is not None


def encode_verified(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, device: Device,
                    payload: bytes | None = None, encode_s: float | None = None) -> Encoded:
    """Encode (unless ``payload`` was encoded already: a batch, or the probe a rate search
    keeps), pack, decode the packed bytes again and check them, on ``device`` and on the
    codec's restore device."""
    return confirm(encode_measured(codec, params, src, domain, device, payload, encode_s), src)


def encode_measured(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, device: Device,
                    payload: bytes | None = None, encode_s: float | None = None) -> Encoded:
    """Encode and measure, not yet checked: the container's size (MS-SSIM a placeholder)
    and, lossy, the PSNR of what the payload reconstructs (decoded once on ``device``, or
    the reconstruction its encoder noted). :func:`confirm` makes it storable."""
    faults.point("encode")
    t0 = time.perf_counter()
    if payload is None:
        payload = memo.encode(codec, src, params, device)
    if encode_s is None:
        encode_s = time.perf_counter() - t0
    faults.point("encoded")
    container = _container(codec, params, src, domain, payload)
    p, decoded_sha, first, noted = math.inf, src.pixels_sha256, None, False
    if not codec.lossless:
        # Decode once to learn what the bitstream reconstructs; record it in the header
        # (a rate search's probe of this payload, or its encoder, already did: the memo
        # hands it over).
        first, p, noted = _reconstruct(codec, src, payload, device, stored_pins(container))
        decoded_sha = pixels_sha256(first.image)
        container.meta.update(psnr=p, ms_ssim=_PLACEHOLDER, decoded_sha256=decoded_sha)
        if first.fingerprint:
            container.meta["decoded_fingerprint"] = first.fingerprint
        elif codec.determinism == "integers":
            raise VerificationError(f"{codec.codec_id} declares integer determinism but its decode has no fingerprint")
    return Encoded(codec, params, pack(container), container, p, 1.0 if codec.lossless else math.nan, decoded_sha,
                   encode_s, 0.0, device, checked=False, recon=first, noted=noted)


def confirm(enc: Encoded, src: SourceImage) -> Encoded:
    """The measured encoding made storable: MS-SSIM (lossy), the final container, its bytes
    decoded again and checked (:func:`_check_stored`). Raises what the check finds."""
    if enc.checked:
        return enc
    container, blob = enc.container, enc.blob
    quality = enc.ms_ssim
    if not enc.codec.lossless:  # the header gets the real MS-SSIM in place of the placeholder
        quality = ms_ssim(src.image, enc.recon.image)
        container.meta["ms_ssim"] = quality
        blob = pack(container)
    t0 = time.perf_counter()
    with memo.off():  # the check decodes every byte again, nothing taken from the memo
        _check_stored(enc.codec, blob, enc.device, same_pixels=enc.noted)
    decode_s = time.perf_counter() - t0
    return Encoded(enc.codec, enc.params, blob, container, enc.psnr, quality, enc.decoded_sha256, enc.encode_s,
                   decode_s, enc.device)


def _check_stored(codec: Codec, blob: bytes, device: Device, same_pixels: bool = False) -> None:
    """Decode the very bytes that will be stored and check them (:func:`decode_with`).
    ``same_pixels``: the header's reconstruction came from the encoder rather than a
    decode, so on the encoding device the decode must reproduce its pixels exactly, even
    where the cross-device check compares only the decoder's integers (fingerprint)."""
    c = unpack(blob)
    decoded = decode_with(c, codec, device)
    if same_pixels and pixels_sha256(decoded.image) != c.meta.get("decoded_sha256"):
        raise VerificationError(f"{codec.codec_id}: the decode does not reproduce the reconstruction its encoder "
                                f"measured (PSNR, hashes in the header)")
    if device != codec.restore_device:
        # Restore decodes on the codec's restore device (the CPU: any machine, no GPU needed):
        # a check on the encoding GPU alone proves nothing about that path.
        try:
            decode_with(unpack(blob), codec, codec.restore_device)
        except PixarcError as exc:
            raise VerificationError(f"encoded on {device}, but the {codec.restore_device.kind.upper()} decode restore "
                                    f"uses fails its check: {exc}") from None


def meets(enc: Encoded, target: Target, pixels: int) -> bool:
    kind, goal = target
    return enc.psnr >= goal if kind == "psnr" else 8 * len(enc.blob) / max(1, pixels) <= goal


def encode_to_target(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, device: Device,
                     target: Target, bound: int | None = None, check: bool = True,
                     fast: bool = False) -> tuple[Encoded | None, str]:
    """Search the codec's rate parameter (:mod:`pixarc.ratesearch`): the fewest bits with
    PSNR >= target, or the most bits with bpp <= target. Probes are judged by PSNR (resp.
    bytes) alone; the one kept is then fully decode-checked (:func:`encode_verified`), or
    left to the caller (``check=False``: :func:`confirm` it if it is stored).
    ``bound``: bytes another candidate met the PSNR target with; None is returned (and
    the note says why) as soon as a probe shows this codec cannot undercut them. ``fast``:
    the search settles the last rate step on the cheapest tier (``ratesearch``, "Tiers")."""
    kind, goal = target
    values = codec.rate_values(params)  # increasing rate; one per distinct encode (codec.rate_values)
    if not values:
        raise CodecError(f"{codec.codec_id}: no {codec.rate_param} value to search")
    pixels = max(1, src.info.pixels)
    rp = codec.rate_param

    def measure(index: int) -> ratesearch.Probe:
        p = {**params, rp: values[index]}
        t0 = time.perf_counter()
        payload = memo.encode(codec, src, p, device)
        spent = time.perf_counter() - t0
        c = _container(codec, p, src, domain, payload)
        quality = math.nan
        noted = memo.noted_psnr(codec, payload) if kind == "psnr" else None
        if noted is not None:  # the encoder measured it while choosing the payload: no decode
            quality = noted
            c.meta.update(psnr=_PLACEHOLDER, decoded_sha256="0" * 64, decoded_fingerprint="0" * 64)
        elif kind == "psnr":
            first, quality, _ = _reconstruct(codec, src, payload, device, stored_pins(c))
            c.meta.update(psnr=quality, decoded_sha256=pixels_sha256(first.image))
            if first.fingerprint:
                c.meta["decoded_fingerprint"] = first.fingerprint
        else:  # bytes only: what the kept one's header will add, at its usual length
            c.meta.update(psnr=_PLACEHOLDER, decoded_sha256="0" * 64)
            if codec.determinism == "integers":
                c.meta["decoded_fingerprint"] = "0" * 64
        c.meta["ms_ssim"] = _PLACEHOLDER  # computed for the kept one only
        size = len(pack(c))  # bytes as stored: the header counts against a bpp budget too
        return ratesearch.Probe(index, values[index], quality, size, (p, payload, spent))

    fixed = {k: v for k, v in params.items() if k != rp}
    model_key = (codec.codec_id, params_hash(fixed), kind, goal, domain)  # images of one domain behave alike
    anchor = memo.get(("rate-anchor", kind, goal))  # the first search on this image, if any
    tiers = tuple(ratesearch.Tier(_proxy_measure(px, src, device, values), px.margin_db,
                                  _gap_estimate(px, src, params, rp, values, device))
                  for px in codec.rate_proxies(params)) if kind == "psnr" else ()
    out = ratesearch.search(values, kind, goal, pixels, measure, model_key, bound if kind == "psnr" else None,
                            anchor, tiers, shared_key=model_key[:-1], fast=fast)
    if anchor is None and out.kept is not None and out.reached:
        memo.put(("rate-anchor", kind, goal), (model_key, out.kept.index))
    if out.kept is None:
        by = out.pruned_by
        if out.interpolated is not None:
            return None, (f"cannot undercut {bound} bytes at {kind} {goal}: its probes give "
                          f"{out.interpolated:.2f} dB at {bound} bytes, {out.note}")
        return None, (f"cannot undercut {bound} bytes at {kind} {goal}: {rp}={by.value} has {by.bytes} bytes "
                      f"at {by.psnr:.2f} dB, {out.note}")
    p, payload, spent = out.kept.data
    # a bpp budget is judged on the stored bytes themselves (the MS-SSIM placeholder's size may differ by a byte)
    make = encode_verified if check or kind == "bpp" else encode_measured
    enc = make(codec, p, src, domain, device, payload, encode_s=spent)
    index = out.kept.index
    while kind == "bpp" and out.reached and index > 0 and not meets(enc, target, pixels):
        index -= 1  # the real header came out a byte or two over the budget: one step down
        p = {**params, rp: values[index]}
        enc = make(codec, p, src, domain, device)
    while kind == "psnr" and out.reached and index < len(values) - 1 and not meets(enc, target, pixels):
        index += 1  # the encoder's own PSNR was a hair above what the decode gives: one step up
        p = {**params, rp: values[index]}
        enc = make(codec, p, src, domain, device)
    if not out.reached:
        return enc, f"{kind} target {goal} not reachable; used {rp}={enc.params[rp]} {out.note}"
    return enc, f"{kind} target {goal}: {rp}={enc.params[rp]} {out.note}"


def _proxy_measure(proxy: RateProxy, src: SourceImage, device: Device, values: list[int]):
    """A rate search's cheap tier: ``proxy`` encoded at the searched rate values and judged by
    PSNR (through the memo: a proxy that is a composite codec's base shares its encodes)."""
    rp = proxy.codec.rate_param

    def measure(index: int) -> ratesearch.Probe:
        payload = memo.encode(proxy.codec, src, {**proxy.params, rp: values[index]}, device)
        recon = memo.decode(proxy.codec, payload, device).image
        if recon is None or recon.size != src.image.size or recon.mode != src.image.mode:
            raise VerificationError(f"{proxy.codec.codec_id}: reconstruction has the wrong geometry or mode")
        return ratesearch.Probe(index, values[index], psnr(src.image, recon), len(payload))

    return measure


def _gap_estimate(proxy: RateProxy, src: SourceImage, params: dict[str, Any], rp: str, values: list[int],
                  device: Device):
    """The tier's estimate for this image of the dB the codec lies above it at rate index i
    (:attr:`RateProxy.gap_estimate`), or None where the proxy has none."""
    if proxy.gap_estimate is None:
        return None
    return lambda index: proxy.gap_estimate(src, {**params, rp: values[index]}, device)


# Stands in, in a probe's header, for values only the kept encoding computes, so probe
# sizes match the stored size to a byte or two (a float's JSON is 16-19 characters).
_PLACEHOLDER = 0.123456789012345678


def batch_encode(items: list[tuple[SourceImage, Route]], registry: Registry, devices: DeviceMap,
                 on_failure: Any = None) -> list[Payloads]:
    """Encode together, per (accelerated codec, params), the images whose first usable
    candidate runs on a GPU. Returns one ``Payloads`` per item (empty where nothing was
    batched); a failed batch leaves its images to the one-by-one path (and its fallbacks),
    and ``on_failure(index, message)`` is told why."""
    devices = device_map(devices)
    groups: dict[tuple[str, str], list[int]] = {}
    params_of: dict[tuple[str, str], dict] = {}
    for i, (src, route) in enumerate(items):
        for cand in route.candidates:
            if cand.codec_id not in registry.codecs:
                continue
            codec = registry.codec(cand.codec_id)
            if codec.unsupported_reason(src.info) or unavailable_reason(codec, devices[codec.codec_id]):
                continue
            # a candidate with a target is rate-searched per image: a batch at the plain
            # params would be thrown away
            searched = cand.target and codec.rate_param and not codec.lossless
            if devices[codec.codec_id].is_gpu and not searched:
                try:
                    params = codec.validate_params(cand.params)
                except PixarcError:
                    break
                key = (codec.codec_id, params_hash(params))
                groups.setdefault(key, []).append(i)
                params_of[key] = params
            break  # only the first usable candidate is batched
    out: list[Payloads] = [{} for _ in items]
    for key, group in groups.items():
        codec = registry.codec(key[0])
        step = max(1, codec.batch_hint)  # what the codec says fits on a device at once
        for start in range(0, len(group), step):
            members = group[start : start + step]
            try:
                payloads = codec.encode_batch([items[i][0] for i in members], params_of[key], devices[key[0]])
            except Exception as exc:  # the images fall back to one-by-one encoding
                for i in members:
                    if on_failure is not None:
                        on_failure(i, f"batch encode failed ({type(exc).__name__}: {exc}); encoded alone")
                continue
            for i, payload in zip(members, payloads):
                if isinstance(payload, (bytes, bytearray)):
                    out[i][key] = bytes(payload)
    return out
