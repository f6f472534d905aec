"""``archive --dry-run``: what a run would do, accounting for what DEST already holds.

Nothing is written (not even DEST's claim marker). Each object gets the action the real
run would take: ``skip`` when DEST's manifest already has it unchanged (same URI, size and
mtime/ETag, final status; the rule of :meth:`pixarc.archive.ArchiveJob.plan`), otherwise
``archive`` with the route and first usable codec; totals follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .crawl import crawl
from .intake import intake
from .manifest import STATUS_FAILED, latest, read_manifest
from .plugins import default_registry
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


def known_sources(dest: str) -> dict[str, tuple[int, str]]:
    """source URI -> (size, mtime) of objects DEST holds with a final status."""
    cols = ["source_uri", "source_bytes", "source_mtime", "status"]
    rows = latest(read_manifest(dest, columns=cols)).select(cols).to_pylist()
    return {r["source_uri"]: (r["source_bytes"], r["source_mtime"]) for r in rows if r["status"] != STATUS_FAILED}


def dry_run(src: str, dest: str, policy_path: str | None = None, select: Callable[[str], bool] | None = None,
            limit: int | None = None, follow_symlinks: bool = False) -> DryRun:
    policy = load_policy(policy_path)
    registry = default_registry()
    known = known_sources(dest)
    dfs, droot = get_fs(dest)
    dest_prefix = dfs.unstrip_protocol(droot).rstrip("/") + "/"
    out = DryRun(src, dest, policy.name)
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
        out.rows.append({"key": ref.key, "action": "archive", **plan_one(ref, policy, registry), "bytes": ref.size})
    return out


def plan_one(ref, policy, registry) -> dict[str, str]:
    """What ``archive`` would do with one object: the same intake (read, probe, classify,
    route), then the first candidate that is installed and takes the image."""
    it = intake(ref, policy, registry)
    if it.error is not None:
        status = "rejected" if it.rejected else "error"
        return {"domain": "-", "confidence": "", "route": "-", "codec": f"({status})",
                "note": f"{it.error.reason}: {it.error}"}
    c, route = it.classification, it.route
    skipped = []
    for cand in route.candidates:
        why = "not installed" if cand.codec_id not in registry.codecs else \
            registry.codec(cand.codec_id).unsupported_reason(it.src.info)
        if not why:
            return {"domain": c.domain, "confidence": f"{c.confidence:.2f}", "route": route.domain,
                    "codec": cand.codec_id,
                    "note": "; ".join(skipped + list(it.src.info.notes) + ([route.reason] if route.reason else []))}
        skipped.append(f"{cand.codec_id}: {why}")
    return {"domain": c.domain, "confidence": f"{c.confidence:.2f}", "route": route.domain, "codec": "-",
            "note": "; ".join(skipped)}
