"""RD selection: which of a route's candidates an image keeps.

:func:`encode_route` tries a route's candidates (:mod:`pixarc.policy`) on one image, each
through :mod:`pixarc.encode` (encodes, rate searches): all of them for ``selection =
"smallest"`` or ``"rd"``, the first that works for ``"first"``. Where all are compared, each
is measured (stored size, PSNR) and only the one kept gets MS-SSIM and the decode check;
should that check fail, the route runs again without that codec. For ``rd``,
screened codecs (a cheap :meth:`~pixarc.codec.Codec.psnr_ceiling`) come after the others so
what those reached can rule them out first; fallbacks are searched only where no candidate
met the target; a codec another candidate reproduces (:meth:`~pixarc.codec.Codec.reproduces`)
is not searched again but checked at the rate its coverer kept; ``store`` comes last.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from . import memo
from .codec import Codec, params_hash
from .device import Device, DeviceMap, device_map, unavailable_reason
from .encode import Encoded, Payloads, Target, confirm, encode_measured, encode_to_target, encode_verified, meets
from .errors import PixarcError, PluginError
from .images import SourceImage
from .manifest import Attempt
from .metrics import psnr
from .plugins import Registry
from .policy import STORE, Route


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
    kept: dict[str, Encoded] = {}  # codec id -> its encoding
    compare = route.selection != "first"  # measure every candidate, check only the one kept
    encode_one = encode_measured if compare else encode_verified
    target = next((c.target for c in route.candidates if c.target), None)
    covered = _covered(src, route, registry, devices, exclude)
    order = [c for c in _in_rd_order(route, registry) if c.codec_id not in covered]
    for by in dict.fromkeys(covered.values()):  # a covered candidate right after the one covering it
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
        pinned = None  # the parameters a covered candidate is checked at, unsearched
        if by and any(a.codec == by and (a.compared or a.result == "pruned") for a in attempts):
            pinned, why = _at_coverers_rate(src, cand.codec_id, kept.get(by), target, registry, devices)
            if pinned is None:
                attempts.append(Attempt(cand.codec_id, "skipped", f"covered by {by} (it may code this codec's "
                                        f"payload alone, chosen by RD cost){why}"))
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
            if pinned is not None:
                enc = encode_one(codec, pinned, src, route.domain, on)
                attempts.append(Attempt(cand.codec_id, "target", f"covered by {by}: its {codec.rate_param}="
                                        f"{pinned[codec.rate_param]} meets the target too"))
            elif cand.target and codec.rate_param and not codec.lossless:
                # RD selection: a search may stop once it cannot undercut what met the target
                bound = (len(chosen.blob) if route.selection == "rd" and chosen is not None
                         and meets(chosen, cand.target, src.info.pixels) else None)
                enc, note = encode_to_target(codec, params, src, route.domain, on, cand.target, bound,
                                             check=not compare, fast=route.rate_search == "fast")
                if enc is None:
                    attempts.append(Attempt(cand.codec_id, "pruned", note))
                    continue
                attempts.append(Attempt(cand.codec_id, "target", note))
            else:
                ready = (payloads or {}).get((codec.codec_id, params_hash(params)))
                enc = encode_one(codec, params, src, route.domain, on, ready)
        except PixarcError as exc:
            attempts.append(Attempt(cand.codec_id, "failed", f"{exc.reason}: {exc}"))
            continue
        except Exception as exc:  # a codec bug costs this candidate, not the run
            attempts.append(Attempt(cand.codec_id, "failed", f"{type(exc).__name__}: {exc}"))
            continue
        kept[cand.codec_id] = enc
        attempts.append(Attempt(cand.codec_id, "verified" if enc.checked else "measured", bytes=len(enc.blob),
                                psnr=None if codec.lossless else enc.psnr,
                                met=meets(enc, target, src.info.pixels) if target else None))
        if route.selection == "rd":
            if chosen is None or rd_key(enc, target, src.info.pixels) < rd_key(chosen, target, src.info.pixels):
                chosen = enc
        elif chosen is None or len(enc.blob) < len(chosen.blob):
            chosen = enc
        if route.selection == "first":
            break
    if chosen is None or chosen.checked:
        return chosen, attempts
    return _kept(chosen, src, route, registry, devices, exclude, payloads, attempts)


def _kept(chosen: Encoded, src: SourceImage, route: Route, registry: Registry, devices: DeviceMap,
          exclude: frozenset[str], payloads: Payloads | None, attempts: list[Attempt]
          ) -> tuple[Encoded | None, list[Attempt]]:
    """The measured winner made storable (:func:`~pixarc.encode.confirm`); where its check
    fails, the route again without that codec (its encodes and searches are in the memo)."""
    cid = chosen.codec.codec_id
    try:
        final = confirm(chosen, src)
    except Exception as exc:  # PixarcError or a codec bug: it costs this candidate, not the image
        why = f"{exc.reason}: {exc}" if isinstance(exc, PixarcError) else f"{type(exc).__name__}: {exc}"
        again, rest = _encode_route(src, route, registry, devices, exclude | {cid}, payloads)
        return again, [Attempt(cid, "failed", f"kept, then its decode check failed: {why}")] + \
            [a for a in rest if not (a.codec == cid and a.result == "skipped")]
    mine = next(a for a in reversed(attempts) if a.codec == cid and a.result == "measured")
    mine.result, mine.bytes = "verified", len(final.blob)
    return final, attempts


def _at_coverers_rate(src: SourceImage, codec_id: str, coverer: Encoded | None, target: Target | None,
                      registry: Registry, devices: DeviceMap) -> tuple[dict[str, Any] | None, str]:
    """A covered candidate is not searched again (its coverer's search probed its encodes),
    but with a PSNR target it is checked at the rate its coverer kept: where its own encode
    there (the coverer's base, from the memo) meets the target as well, it has the fewer
    bytes. (parameters to verify it at, '') or (None, why not, for the attempt's note)."""
    if coverer is None or target is None or target[0] != "psnr":
        return None, ""
    rep = coverer.codec.reproduces(coverer.params)
    if rep is None or rep[0] != codec_id:
        return None, ""
    try:
        codec = registry.codec(codec_id)
        params = codec.validate_params(rep[1])
        on = devices[codec_id]
        if codec.unsupported_reason(src.info) or unavailable_reason(codec, on):
            return None, ""
        recon = memo.decode(codec, memo.encode(codec, src, params, on), on).image
        reached = psnr(src.image, recon)
    except PixarcError as exc:
        return None, f"; at the coverer's rate: {exc}"
    if reached < target[1]:
        return None, f"; at its {codec.rate_param}={params[codec.rate_param]} {reached:.2f} dB, short of the target"
    return params, ""


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
    kind, goal = target
    takes_goal = _takes_below(type(codec))
    ceiling = (codec.psnr_ceiling(src, params, device, below=goal if kind == "psnr" else None) if takes_goal
               else codec.psnr_ceiling(src, params, device))
    if ceiling is None:
        return ""
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


@functools.cache
def _takes_below(cls: type) -> bool:
    """Whether the codec class's ``psnr_ceiling`` accepts ``below``: plugins written before
    it existed keep working, it is passed only where accepted (looked up once per class)."""
    return "below" in inspect.signature(cls.psnr_ceiling).parameters


def fallback_note(attempts: list[Attempt]) -> str:
    fallbacks = [a for a in attempts if a.result in ("skipped", "failed")]
    if not fallbacks:
        return ""
    return "fallback: " + "; ".join(f"{a.codec} {a.result} ({a.reason})" for a in fallbacks)
