"""``archive --dry-run``: what a run would do, accounting for what DEST already holds.

Nothing is written (not even DEST's claim marker). Each object gets the action the real
run would take: ``skip`` when DEST's manifest already has it unchanged (same URI, size and
mtime/ETag, final status; the rule of :meth:`pixarc.archive.ArchiveJob.plan`), otherwise
``archive`` with the route and the first codec archive would try; totals follow, and an
estimate of the encode time per codec (one timed encode of a small crop per codec and the
megapixels routed to it; rate searches counted at a typical number of probes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from .crawl import crawl
from .intake import intake
from .manifest import STATUS_FAILED, latest, read_manifest
from .plugins import Registry, build_plugin_manager
from .policy import load_policy
from .storage import get_fs


@dataclass
class DryRun:
    src: str
    dest: str
    policy: str
    rows: list[dict] = field(default_factory=list)
    found: int = 0
    skipped: int = 0
    to_archive: int = 0
    bytes_to_archive: int = 0
    limited: bool = False  # the crawl stopped at --limit
    costs: "CostModel | None" = None  # encode time estimate per codec


def known_sources(dest: str) -> dict[str, tuple[int, str]]:
    """source URI -> (size, mtime) of objects DEST holds with a final status."""
    cols = ["source_uri", "source_bytes", "source_mtime", "status"]
    rows = latest(read_manifest(dest, columns=cols)).select(cols).to_pylist()
    return {r["source_uri"]: (r["source_bytes"], r["source_mtime"]) for r in rows if r["status"] != STATUS_FAILED}


def dry_run(src: str, dest: str, policy_path: str | None = None, select: Callable[[str], bool] | None = None,
            limit: int | None = None, follow_symlinks: bool = False, registry: Registry | None = None) -> DryRun:
    """``registry``: the plugins archive would run with (default: those the environment allows)."""
    policy = load_policy(policy_path)
    registry = registry or build_plugin_manager()
    known = known_sources(dest)
    dfs, droot = get_fs(dest)
    dest_prefix = dfs.unstrip_protocol(droot).rstrip("/") + "/"
    out = DryRun(src, dest, policy.name, costs=CostModel())
    for ref in crawl(src, follow_symlinks=follow_symlinks):
        if ref.uri.startswith(dest_prefix) or (select is not None and not select(ref.key)):
            continue
        if limit is not None and out.to_archive >= limit:
            out.limited = True
            break
        out.found += 1
        if known.get(ref.uri) == (ref.size, ref.mtime):
            out.skipped += 1
            out.rows.append({"key": ref.key, "action": "skip", "domain": "", "confidence": "", "route": "",
                             "codec": "", "note": "already archived, unchanged", "bytes": ref.size})
            continue
        out.to_archive += 1
        out.bytes_to_archive += ref.size
        out.rows.append({"key": ref.key, "action": "archive", **plan_one(ref, policy, registry, out.costs), "bytes": ref.size})
    return out


def _search_order(route, registry) -> list:
    """The order ``archive`` tries the candidates in (RD selection: screened codecs last)."""
    from .selection import _in_rd_order

    return _in_rd_order(route, registry)


def plan_one(ref, policy, registry, costs: "CostModel | None" = None) -> dict[str, str]:
    """What ``archive`` would do with one object: the same intake (read, probe, classify,
    route), then the first candidate, in the order archive tries them, that is installed
    and takes the image. A screened codec (tried last by RD selection, and skipped where
    another candidate already met the target) is named only when nothing else can run."""
    it = intake(ref, policy, registry)
    if it.error is not None:
        status = "rejected" if it.rejected else "error"
        return {"domain": "-", "confidence": "", "route": "-", "codec": f"({status})",
                "note": f"{it.error.reason}: {it.error}"}
    c, route = it.classification, it.route
    skipped, usable = [], []
    for cand in _search_order(route, registry):
        why = "not installed" if cand.codec_id not in registry.codecs else \
            registry.codec(cand.codec_id).unsupported_reason(it.src.info)
        if why:
            skipped.append(f"{cand.codec_id}: {why}")
        else:
            usable.append(cand)
    if costs is not None:
        costs.add(it.src, route, usable if route.selection != "first" else usable[:1], registry)
    if not usable:
        return {"domain": c.domain, "confidence": f"{c.confidence:.2f}", "route": route.domain, "codec": "-",
                "note": "; ".join(skipped)}
    tried = "" if route.selection == "first" or len(usable) == 1 else \
        f"{route.selection}: {len(usable)} candidates tried"
    return {"domain": c.domain, "confidence": f"{c.confidence:.2f}", "route": route.domain,
            "codec": usable[0].codec_id,
            "note": "; ".join(filter(None, [tried] + skipped + list(it.src.info.notes)
                                     + ([route.reason] if route.reason else [])))}


# Probes a rate search typically makes (benchmarks/lossy_policy.py on dev: 2-5 per codec).
SEARCH_PROBES = 4
CROP = 256  # side of the crop one calibration encode per codec is timed on


@dataclass
class CodecCost:
    codec: str
    images: int = 0
    megapixels: float = 0.0
    seconds_per_mp: float = float("nan")  # one timed encode (or ceiling) of a crop
    work: str = "encode"  # encode | rate search | ceiling (screened: usually stops there)

    @property
    def seconds(self) -> float:
        factor = SEARCH_PROBES if self.work == "rate search" else 1
        return self.megapixels * self.seconds_per_mp * factor


class CostModel:
    """An estimate of the encode time per codec, from one timed encode of a small crop per
    (codec, parameters) and the megapixels routed to it: no full encode, no search."""

    def __init__(self) -> None:
        self.per_codec: dict[str, CodecCost] = {}
        self._timed: dict[tuple, float] = {}

    def add(self, src, route, usable, registry) -> None:
        from .device import CPU

        if src.image is None:
            return
        for cand in usable:
            codec = registry.codec(cand.codec_id)
            params = codec.validate_params(cand.params)
            if codec.screened and route.selection == "rd" and len(usable) > 1:
                work = "ceiling"
            elif cand.target and codec.rate_param and not codec.lossless:
                work = "rate search"
            else:
                work = "encode"
            cost = self.per_codec.setdefault(cand.codec_id, CodecCost(cand.codec_id, work=work))
            cost.images += 1
            cost.megapixels += src.info.pixels / 1e6
            key = (cand.codec_id, repr(sorted(params.items())), work)
            if key not in self._timed:
                self._timed[key] = _time_crop(codec, params, src, work, CPU)
            cost.seconds_per_mp = self._timed[key]

    def rows(self) -> list[CodecCost]:
        return sorted(self.per_codec.values(), key=lambda c: -c.seconds if c.seconds == c.seconds else 0)


def _time_crop(codec, params, src, work, device) -> float:
    """Seconds per megapixel of one encode (or PSNR ceiling) of a crop of ``src``."""
    import time

    from .images import SourceImage

    w, h = src.image.size
    box = (0, 0, min(w, CROP), min(h, CROP))
    crop = src.image.crop(box)
    info = replace(src.info, width=crop.width, height=crop.height)
    small = SourceImage(b"", src.sha256 + "-crop", info, crop, "", None, None)
    spent = []
    for _ in range(2):  # the first may load a model: the second is what each image costs
        t0 = time.perf_counter()
        try:
            if work == "ceiling":
                codec.psnr_ceiling(small, params, device)
            else:
                codec.encode(small, params, device)
        except Exception:  # an estimate only: a codec that cannot take the crop has no estimate
            return float("nan")
        spent.append(time.perf_counter() - t0)
    return min(spent) / max(1e-6, crop.width * crop.height / 1e6)
