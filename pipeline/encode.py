"""Encode: encode -> pack -> decode-check, rate targets, RD selection and fallbacks.

Nothing leaves here unverified: every payload is packed into its container, the packed
bytes are decoded again and checked on the encoding device and, when that is not the
device restore uses (:attr:`pixarc.codec.Codec.restore_device`), there too. A failing
candidate costs only itself: the next one in the route is tried, and the row's attempts
say what happened to each.

Rate searches (``target_psnr``/``target_bpp``, :mod:`pixarc.ratesearch`) judge their probes
by PSNR or bytes alone; the probe they keep goes through the same full check. Within one
image's route, encodes and decodes are shared through :mod:`pixarc.memo`; the check never
reads from it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Mapping

from . import __version__, faults, memo, ratesearch
from .checks import decode_with, stored_pins
from .codec import Codec, params_hash
from .container import Container, pack, unpack
from .device import Device, DeviceMap, device_map, unavailable_reason
from .errors import CodecError, PixarcError, PluginError, VerificationError
from .images import SourceImage, pixels_sha256
from .manifest import Attempt
from .metrics import ms_ssim, psnr
from .plugins import Registry
from .policy import STORE, Route

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
    """Decode a lossy payload once, on the encoding device: (decoded, PSNR). Probes stop at
    PSNR; MS-SSIM is computed for the kept encoding only."""
    first = memo.decode(codec, payload, device, pins)
    recon = first.image
    if recon is None or recon.size != src.image.size or recon.mode != src.image.mode:
        raise VerificationError(f"{codec.codec_id}: reconstruction has the wrong geometry or mode")
    return first, psnr(src.image, recon)


def encode_verified(codec: Codec, params: dict[str, Any], src: SourceImage, domain: str, device: Device,
                    payload: bytes | None = None, encode_s: float | None = None) -> Encoded:
    """Encode (unless ``payload`` was encoded already: a batch, or the probe a rate search
    keeps), pack, decode the packed bytes again and check them, on ``device`` and on the
    codec's restore device."""
    faults.point("encode")
    t0 = time.perf_counter()
    if payload is None:
        payload = memo.encode(codec, src, params, device)
    if encode_s is None:
        encode_s = time.perf_counter() - t0
    faults.point("encoded")
    container = _container(codec, params, src, domain, payload)
    quality = (math.inf, 1.0)
    decoded_sha = src.pixels_sha256
    if not codec.lossless:
        # Decode once to learn what the bitstream reconstructs; record it in the header
        # (a rate search's probe of this payload already did: the memo hands it over).
        first, p = _reconstruct(codec, src, payload, device, stored_pins(container))
        quality = (p, ms_ssim(src.image, first.image))
        decoded_sha = pixels_sha256(first.image)
        container.meta.update(psnr=quality[0], ms_ssim=quality[1], decoded_sha256=decoded_sha)
        if first.fingerprint:
            container.meta["decoded_fingerprint"] = first.fingerprint
        elif codec.determinism == "integers":
            raise VerificationError(f"{codec.codec_id} declares integer determinism but its decode has no fingerprint")
    blob = pack(container)
    t0 = time.perf_counter()
    with memo.off():  # the check decodes every byte again, nothing taken from the memo
        _check_stored(codec, blob, device)
    decode_s = time.perf_counter() - t0
    return Encoded(codec, params, blob, container, quality[0], quality[1], decoded_sha, encode_s, decode_s, device)


def _check_stored(codec: Codec, blob: bytes, device: Device) -> None:
    decode_with(unpack(blob), codec, device)  # the check on the very bytes that will be stored
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
                     target: Target, bound: int | None = None) -> tuple[Encoded | None, str]:
    """Search the codec's rate parameter (:mod:`pixarc.ratesearch`): the fewest bits with
    PSNR >= target, or the most bits with bpp <= target. Probes are judged by PSNR (resp.
    bytes) alone; the one kept is then fully decode-checked (:func:`encode_verified`).
    ``bound``: bytes another candidate met the PSNR target with; None is returned (and
    the note says why) as soon as a probe shows this codec cannot undercut them."""
    kind, goal = target
    values = codec.rate_values()  # increasing rate; a learned codec: the rate points it has weights for
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
            first, quality = _reconstruct(codec, src, payload, device, stored_pins(c))
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
    model_key = (codec.codec_id, params_hash(fixed), kind, goal)
    anchor = memo.get(("rate-anchor", kind, goal))  # the first search on this image, if any
    out = ratesearch.search(values, kind, goal, pixels, measure, model_key, bound if kind == "psnr" else None,
                            anchor)
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
    enc = encode_verified(codec, p, src, domain, device, payload, encode_s=spent)
    index = out.kept.index
    while kind == "bpp" and out.reached and index > 0 and not meets(enc, target, pixels):
        index -= 1  # the real header came out a byte or two over the budget: one step down
        p = {**params, rp: values[index]}
        enc = encode_verified(codec, p, src, domain, device)
    while kind == "psnr" and out.reached and index < len(values) - 1 and not meets(enc, target, pixels):
        index += 1  # the encoder's own PSNR was a hair above what the decode gives: one step up
        p = {**params, rp: values[index]}
        enc = encode_verified(codec, p, src, domain, device)
    if not out.reached:
        return enc, f"{kind} target {goal} not reachable; used {rp}={enc.params[rp]} {out.note}"
    return enc, f"{kind} target {goal}: {rp}={enc.params[rp]} {out.note}"


# Stands in, in a probe's header, for values only the kept encoding computes, so probe
# sizes match the stored size to a byte or two (a float's JSON is 16-19 characters).
_PLACEHOLDER = 0.123456789012345678


def encode_route(src: SourceImage, route: Route, registry: Registry, devices: DeviceMap,
                 exclude: frozenset[str] = frozenset(), payloads: Payloads | None = None,
                 ) -> tuple[Encoded | None, list[Attempt]]:
    """Try the route's candidates in order (all of them for ``selection = "smallest"`` or
    ``"rd"``; for ``"rd"`` the winner is the lowest :func:`rd_key` at the route's target).

    ``devices`` says where each codec runs (resolved once per shard). Returns the chosen
    verified encoding (or None) and a record of every attempt. ``payloads`` holds
    encodings already made in a batch; they are packed and checked exactly like fresh ones."""
    devices = device_map(devices)
    with memo.scope():  # one image: candidates share encodes (avif and avif-enhanced)
        return _encode_route(src, route, registry, devices, exclude, payloads)


def _encode_route(src: SourceImage, route: Route, registry: Registry, devices: DeviceMap, exclude: frozenset[str],
                  payloads: Payloads | None) -> tuple[Encoded | None, list[Attempt]]:
    chosen: Encoded | None = None
    attempts: list[Attempt] = []
    target = next((c.target for c in route.candidates if c.target), None)
    covered = _covered(src, route, registry, devices, exclude)
    order = [c for c in _in_rd_order(route, registry) if c.codec_id not in covered]
    for by in {v for v in covered.values()}:  # a covered candidate right after the one covering it
        at = next(i for i, c in enumerate(order) if c.codec_id == by)
        order[at + 1 : at + 1] = [c for c in route.candidates if covered.get(c.codec_id) == by]
    for cand in order:
        if cand.codec_id in exclude:
            attempts.append(Attempt(cand.codec_id, "skipped", "excluded"))
            continue
        if cand.fallback and chosen is not None and (target is None or meets(chosen, target, src.info.pixels)):
            attempts.append(Attempt(cand.codec_id, "skipped", f"fallback, not needed: {chosen.codec.codec_id} "
                                    f"{'met the target' if target else 'encoded the image'}"))
            continue
        by = covered.get(cand.codec_id)
        if by and any(a.codec == by and a.result in ("verified", "pruned") for a in attempts):
            attempts.append(Attempt(cand.codec_id, "skipped", f"covered by {by} (it may code this codec's "
                                    f"payload alone, chosen by RD cost)"))
            continue  # (tried as usual where the covering codec failed on this image)
        try:
            codec = registry.codec(cand.codec_id)
        except PluginError:
            attempts.append(Attempt(cand.codec_id, "skipped", "not installed"))
            continue
        on = devices[codec.codec_id]
        why = codec.unsupported_reason(src.info) or unavailable_reason(codec, on)
        if why:
            attempts.append(Attempt(cand.codec_id, "skipped", why))
            continue
        try:
            params = codec.validate_params(cand.params)
            if route.selection == "rd" and codec.screened and chosen is not None and target is not None:
                why = cannot_win(codec, params, src, on, chosen, target)
                if why:
                    attempts.append(Attempt(cand.codec_id, "screened", why))
                    continue
            if cand.target and codec.rate_param and not codec.lossless:
                # RD selection: a search may stop once it cannot undercut what met the target
                bound = (len(chosen.blob) if route.selection == "rd" and chosen is not None
                         and meets(chosen, cand.target, src.info.pixels) else None)
                enc, note = encode_to_target(codec, params, src, route.domain, on, cand.target, bound)
                if enc is None:
                    attempts.append(Attempt(cand.codec_id, "pruned", note))
                    continue
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


def _covered(src: SourceImage, route: Route, registry: Registry, devices: DeviceMap,
             exclude: frozenset[str]) -> dict[str, str]:
    """Candidates another usable candidate of the route reproduces (:meth:`Codec.reproduces`)
    with the same parameters (the rate parameter aside when the route has a target): codec
    id -> the covering codec's id. Only where every candidate is tried (``rd``, ``smallest``)."""
    if route.selection not in ("rd", "smallest"):
        return {}
    listed = {c.codec_id: c for c in route.candidates}
    out: dict[str, str] = {}
    for cand in route.candidates:
        if cand.codec_id in exclude or cand.codec_id not in registry.codecs:
            continue
        try:
            codec = registry.codec(cand.codec_id)
            if codec.unsupported_reason(src.info) or unavailable_reason(codec, devices[codec.codec_id]):
                continue
            rep = codec.reproduces(codec.validate_params(cand.params))
            if rep is None or rep[0] not in listed or rep[0] in exclude or rep[0] not in registry.codecs:
                continue
            other = registry.codec(rep[0])
            theirs = other.validate_params(listed[rep[0]].params)
        except PixarcError:
            continue
        free = {other.rate_param} if (cand.target and listed[rep[0]].target == cand.target) else set()
        if all(theirs.get(k) == v for k, v in rep[1].items() if k not in free) and \
                all(k in rep[1] or k in free for k in theirs):
            out[rep[0]] = cand.codec_id
    return out


def _in_rd_order(route: Route, registry: Registry) -> list:
    """The route's candidates, for RD selection with the screened codecs (those with a cheap
    :meth:`~pixarc.codec.Codec.psnr_ceiling`) after the others, so their results can rule
    them out before their costly search, and the fallbacks last; otherwise as listed."""
    if route.selection != "rd":
        return list(route.candidates)

    def screened(cand) -> bool:
        return cand.codec_id in registry.codecs and registry.codec(cand.codec_id).screened

    # stable: route order within each group; then the fallbacks, then ``store`` (the last
    # resort keeps the original bytes: it always "meets" a PSNR target, so it must not
    # stand in for a real candidate when the fallbacks are weighed)
    return sorted(route.candidates, key=lambda c: (c.codec_id == STORE, c.fallback, screened(c)))


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
    if kind == "psnr":
        floor = codec.bytes_floor(src, params, goal, device)
        if floor is not None and floor >= len(chosen.blob):
            return (f"cannot undercut {len(chosen.blob)} bytes at psnr {goal}: at least {floor} bytes on this "
                    f"image ({chosen.codec.codec_id} reached it)")
    if kind == "bpp" and ceiling <= chosen.psnr:
        return f"at most {ceiling:.1f} dB on this image, {chosen.codec.codec_id} has {chosen.psnr:.1f} dB within bpp {goal}"
    return ""


def fallback_note(attempts: list[Attempt]) -> str:
    fallbacks = [a for a in attempts if a.result in ("skipped", "failed")]
    if not fallbacks:
        return ""
    return "fallback: " + "; ".join(f"{a.codec} {a.result} ({a.reason})" for a in fallbacks)


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
