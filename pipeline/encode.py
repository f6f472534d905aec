"""Encode: encode -> pack -> decode-check, rate targets, RD selection and fallbacks.

Nothing leaves here unverified: every payload is packed into its container, the packed
bytes are decoded again and checked on the encoding device and, when that is not the
device restore uses (:attr:`pixarc.codec.Codec.restore_device`), there too. A failing
candidate costs only itself: the next one in the route is tried, and the row's attempts
say what happened to each.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any

from . import __version__, faults
from .checks import decode_with
from .codec import Codec, params_hash
from .container import Container, pack, unpack
from .device import Device, resolve, unavailable_reason
from .errors import CodecError, PixarcError, PluginError, VerificationError
from .images import SourceImage, pixels_sha256
from .manifest import Attempt
from .metrics import ms_ssim, psnr
from .plugins import Registry
from .policy import Route

Target = tuple[str, float]  # ("psnr", dB) or ("bpp", bits per pixel)
Payloads = dict[tuple[str, str], bytes]  # (codec id, params hash) -> payload encoded in a batch


@dataclass
class Encoded:
    """A verified encoding: the container's bytes and what they reconstruct."""

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

    @classmethod
    def from_container(cls, codec: Codec, c: Container, blob: bytes, decode_s: float, device: Device) -> "Encoded":
        """An existing, already decode-checked bitstream (reuse, repair)."""
        lossless = bool(c.meta.get("lossless"))
        return cls(codec, dict(c.meta.get("params", {})), blob, c,
                   math.inf if lossless else float(c.meta.get("psnr", math.nan)),
                   1.0 if lossless else float(c.meta.get("ms_ssim", math.nan)),
                   c.pixels_sha256 if lossless else c.meta.get("decoded_sha256", ""), 0.0, decode_s, device)


def encode_verified(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, device: Device,
                    payload: bytes | None = None) -> Encoded:
    """Encode (unless ``payload`` was batch-encoded already), pack, decode the packed bytes
    again and check them, on ``device`` and on the codec's restore device."""
    faults.point("encode")
    t0 = time.perf_counter()
    if payload is None:
        payload = codec.encode(src, params, device)
    encode_s = time.perf_counter() - t0
    faults.point("encoded")
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
    container = Container(codec.codec_id, codec.format_version, info.width, info.height, info.mode, info.bit_depth,
                          src.sha256, src.pixels_sha256, codec.weights_for(params), meta, sections)
    quality = (math.inf, 1.0)
    decoded_sha = src.pixels_sha256
    if not codec.lossless:
        # Decode once to learn what the bitstream reconstructs; record it in the header.
        first = codec.decode_stored(payload, device, pins)
        recon = first.image
        if recon is None or recon.size != src.image.size or recon.mode != src.image.mode:
            raise VerificationError(f"{codec.codec_id}: reconstruction has the wrong geometry or mode")
        quality = (psnr(src.image, recon), ms_ssim(src.image, recon))
        decoded_sha = pixels_sha256(recon)
        meta.update(psnr=quality[0], ms_ssim=quality[1], decoded_sha256=decoded_sha)
        if first.fingerprint:
            meta["decoded_fingerprint"] = first.fingerprint
        elif codec.determinism == "integers":
            raise VerificationError(f"{codec.codec_id} declares integer determinism but its decode has no fingerprint")
    blob = pack(container)
    t0 = time.perf_counter()
    decode_with(unpack(blob), codec, device)  # the check on the very bytes that will be stored
    if device != codec.restore_device:
        # Restore decodes on the codec's restore device (the CPU: any machine, no GPU needed):
        # a check on the encoding GPU alone proves nothing about that path.
        try:
            decode_with(unpack(blob), codec, codec.restore_device)
        except PixarcError as exc:
            raise VerificationError(f"encoded on {device}, but the {codec.restore_device.kind.upper()} decode restore "
                                    f"uses fails its check: {exc}") from None
    decode_s = time.perf_counter() - t0
    return Encoded(codec, params, blob, container, quality[0], quality[1], decoded_sha, encode_s, decode_s, device)


def meets(enc: Encoded, target: Target, pixels: int) -> bool:
    kind, goal = target
    return enc.psnr >= goal if kind == "psnr" else 8 * len(enc.blob) / max(1, pixels) <= goal


def rd_key(enc: Encoded, target: Target | None, pixels: int) -> tuple:
    """Order of candidates for ``selection = "rd"`` (lowest wins): those meeting the route's
    target first; among them the fewest bytes for ``target_psnr`` and the highest PSNR for
    ``target_bpp``; among those missing it, the closest (highest PSNR, resp. fewest bytes).
    Without a target: the fewest bytes, as ``"smallest"``."""
    size = len(enc.blob)
    if target is None:
        return (0, size)
    met = meets(enc, target, pixels)
    if target[0] == "psnr":
        return (0, size) if met else (1, -enc.psnr, size)
    return (0, -enc.psnr, size) if met else (1, size)


def encode_to_target(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, device: Device,
                     target: Target) -> tuple[Encoded, str]:
    """Bisect the codec's rate parameter: the fewest bits with PSNR >= target, or the most
    bits with bpp <= target. Every probe is a full, decode-checked encode."""
    kind, goal = target
    values = codec.rate_values()  # increasing rate; a learned codec: the rate points it has weights for
    if not values:
        raise CodecError(f"{codec.codec_id}: no {codec.rate_param} value to search")
    lo, hi = 0, len(values) - 1
    pixels = max(1, src.info.pixels)
    probed: dict[int, Encoded] = {}

    def probe(value: int) -> Encoded:
        if value not in probed:
            probed[value] = encode_verified(codec, {**params, codec.rate_param: value}, src, domain, device)
        return probed[value]

    best: Encoded | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        enc = probe(values[mid])
        if meets(enc, target, pixels):
            best = enc
            if kind == "psnr":
                hi = mid - 1  # fewer bits may still reach the PSNR
            else:
                lo = mid + 1  # more bits may still fit the budget
        elif kind == "psnr":
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:  # unreachable target: the closest end of the range (already probed last)
        best = probe(values[-1] if kind == "psnr" else values[0])
        return best, f"{kind} target {goal} not reachable; used {codec.rate_param}={best.params[codec.rate_param]}"
    return best, f"{kind} target {goal}: {codec.rate_param}={best.params[codec.rate_param]} after {len(probed)} probes"


def encode_route(src: SourceImage, route: Route, registry: Registry, device: str | Device,
                 exclude: frozenset[str] = frozenset(), payloads: Payloads | None = None,
                 ) -> tuple[Encoded | None, list[Attempt]]:
    """Try the route's candidates in order (all of them for ``selection = "smallest"`` or
    ``"rd"``; for ``"rd"`` the winner is the lowest :func:`rd_key` at the route's target).

    ``device`` is the job's request (``auto``, ``cpu``, ``cuda``...), resolved once per
    codec. Returns the chosen verified encoding (or None) and a record of every attempt.
    ``payloads`` holds encodings already made in a batch; they are packed and checked
    exactly like fresh ones."""
    chosen: Encoded | None = None
    attempts: list[Attempt] = []
    target = next((c.target for c in route.candidates if c.target), None)
    for cand in _in_rd_order(route, registry):
        if cand.codec_id in exclude:
            attempts.append(Attempt(cand.codec_id, "skipped", "excluded"))
            continue
        try:
            codec = registry.codec(cand.codec_id)
        except PluginError:
            attempts.append(Attempt(cand.codec_id, "skipped", "not installed"))
            continue
        why = codec.unsupported_reason(src.info) or unavailable_reason(codec, device)
        if why:
            attempts.append(Attempt(cand.codec_id, "skipped", why))
            continue
        on = resolve(codec, device)
        try:
            params = codec.validate_params(cand.params)
            if route.selection == "rd" and codec.screened and chosen is not None and target is not None:
                why = cannot_win(codec, params, src, on, chosen, target)
                if why:
                    attempts.append(Attempt(cand.codec_id, "screened", why))
                    continue
            if cand.target and codec.rate_param and not codec.lossless:
                enc, note = encode_to_target(codec, params, src, route.domain, on, cand.target)
                attempts.append(Attempt(cand.codec_id, "target", note))
            else:
                ready = (payloads or {}).get((codec.codec_id, params_hash(params)))
                enc = encode_verified(codec, params, src, route.domain, on, ready)
        except PixarcError as exc:
            attempts.append(Attempt(cand.codec_id, "failed", f"{exc.reason}: {exc}"))
            continue
        except Exception as exc:  # a codec bug costs this candidate, not the run
            attempts.append(Attempt(cand.codec_id, "failed", f"{type(exc).__name__}: {exc}"))
            continue
        attempts.append(Attempt(cand.codec_id, "verified", bytes=len(enc.blob),
                                psnr=None if codec.lossless else enc.psnr,
                                met=meets(enc, target, src.info.pixels) if target else None))
        if route.selection == "rd":
            if chosen is None or rd_key(enc, target, src.info.pixels) < rd_key(chosen, target, src.info.pixels):
                chosen = enc
        elif chosen is None or len(enc.blob) < len(chosen.blob):
            chosen = enc
        if route.selection == "first":
            break
    return chosen, attempts


def _in_rd_order(route: Route, registry: Registry) -> list:
    """The route's candidates, for RD selection with the screened codecs (those with a cheap
    :meth:`~pixarc.codec.Codec.psnr_ceiling`) last, so the others' results can rule them out
    before their costly search; otherwise as listed."""
    if route.selection != "rd":
        return list(route.candidates)

    def screened(cand) -> bool:
        return cand.codec_id in registry.codecs and registry.codec(cand.codec_id).screened

    return sorted(route.candidates, key=screened)  # stable: route order within each group


def cannot_win(codec: Codec, params: dict[str, Any], src: SourceImage, device: Device, chosen: Encoded,
               target: Target) -> str:
    """Why ``codec`` cannot beat ``chosen`` at ``target`` (it has met the target), from the
    codec's PSNR ceiling; '' when it might."""
    if not meets(chosen, target, max(1, src.info.pixels)):
        return ""
    ceiling = codec.psnr_ceiling(src, params, device)
    if ceiling is None:
        return ""
    kind, goal = target
    if kind == "psnr" and ceiling < goal:
        return (f"cannot reach psnr target {goal}: at most {ceiling:.1f} dB on this image, "
                f"which {chosen.codec.codec_id} reached")
    if kind == "bpp" and ceiling <= chosen.psnr:
        return f"at most {ceiling:.1f} dB on this image, {chosen.codec.codec_id} has {chosen.psnr:.1f} dB within bpp {goal}"
    return ""


def fallback_note(attempts: list[Attempt]) -> str:
    fallbacks = [a for a in attempts if a.result in ("skipped", "failed")]
    if not fallbacks:
        return ""
    return "fallback: " + "; ".join(f"{a.codec} {a.result} ({a.reason})" for a in fallbacks)


def batch_encode(items: list[tuple[SourceImage, Route]], registry: Registry, device: str | Device,
                 on_failure: Any = None) -> list[Payloads]:
    """Encode together, per (accelerated codec, params), the images whose first usable
    candidate runs on a GPU. Returns one ``Payloads`` per item (empty where nothing was
    batched); a failed batch leaves its images to the one-by-one path (and its fallbacks),
    and ``on_failure(index, message)`` is told why."""
    groups: dict[tuple[str, str], list[int]] = {}
    params_of: dict[tuple[str, str], dict] = {}
    for i, (src, route) in enumerate(items):
        for cand in route.candidates:
            if cand.codec_id not in registry.codecs:
                continue
            codec = registry.codec(cand.codec_id)
            if codec.unsupported_reason(src.info) or unavailable_reason(codec, device):
                continue
            # a candidate with a target is rate-searched per image: a batch at the plain
            # params would be thrown away
            searched = cand.target and codec.rate_param and not codec.lossless
            if resolve(codec, device).is_gpu and not searched:
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
                payloads = codec.encode_batch([items[i][0] for i in members], params_of[key], resolve(codec, device))
            except Exception as exc:  # the images fall back to one-by-one encoding
                for i in members:
                    if on_failure is not None:
                        on_failure(i, f"batch encode failed ({type(exc).__name__}: {exc}); encoded alone")
                continue
            for i, payload in zip(members, payloads):
                if isinstance(payload, (bytes, bytearray)):
                    out[i][key] = bytes(payload)
    return out
