"""``pixarc repair``: rebuild what can be rebuilt of a damaged archive.

1. A damaged manifest part (its bytes do not match the commit marker, or it cannot be
   read) is moved to ``manifest/damaged/`` with its marker. Then every bitstream no
   committed row names (an orphan: its part was damaged or deleted, or its run killed
   before the commit) gets its row back from its own header: every ``.pxa`` carries its
   key, run, creation time, codec, parameters, geometry, source and pixel hashes and, for
   lossy codecs, the recorded quality. Version order comes from that creation time, never
   from file-system times. Each one is decoded and checked before its row (``job = "repair"``) says
   done. What a header does not carry (the source's size and mtime, timings) is taken
   from the source when it still matches, else left empty: the next archive run then
   re-checks that source.
2. A current row whose bitstream is missing or fails its full check is re-encoded from
   its original, only if the original still matches its archived sha256, with the row's
   own codec and parameters, under a new name (nothing is overwritten); the new row
   records ``replaces_sha256``. Anything else is reported as unrepairable, with why.

Runs under the one-writer lease.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from . import __version__
from .codec import params_hash
from .checks import decode_container, read_bitstream
from .device import ON_CPU
from .selection import encode_route
from .layout import Swept, require_archive, resolve_bitstream, sweep_leftovers, write_version
from .plan import STATE_DIR, new_run_id
from .errors import InputError, PixarcError
from .images import probe_and_load, sha256_hex
from .lock import check_held, hold
from .manifest import STATUS_DONE, ManifestRow, carry_source, read_manifest, rows_to_table, write_part
from .state import current_rows, orphan_bitstreams
from .plugins import Registry, build_plugin_manager
from .policy import Candidate, Route
from .rows import fill_encoded, fill_plugin_columns, plugin_columns
from .storage import get_fs, join, read_regular

_VERSION_TAIL = re.compile(r"\.([0-9a-f]{12})\.pxa\Z")


@dataclass
class RepairSummary:
    run_id: str
    parts_rebuilt: int = 0  # damaged parts moved aside and rebuilt from bitstream headers
    rows_rebuilt: int = 0
    reencoded: list[str] = field(default_factory=list)  # keys re-encoded from their originals
    unrepairable: list[tuple[str, str]] = field(default_factory=list)  # (key or part, why)
    swept: Swept = field(default_factory=Swept)  # leftovers of killed runs removed


def _key_of(rel: str, blob_sha: str) -> str:
    """``a/b.png.pxa`` -> ``a/b.png``; a version ``a/b.png.<sha12>.pxa`` is named by the
    bitstream's own hash, which is how it is told apart from a key that ends in 12 hex digits."""
    m = _VERSION_TAIL.search(rel)
    if m and m.group(1) == blob_sha[:12]:
        return rel[: m.start()]
    return rel[: -len(".pxa")]


def _quarantine(fs, root: str, name: str) -> None:
    base = name.rsplit(".", 1)[0]
    for sub, suffix in (("parts", ".parquet"), ("commits", ".json")):
        path = join(root, "manifest", sub, base + suffix)
        if fs.exists(path):
            target = join(root, "manifest", "damaged", base + suffix)
            fs.makedirs(join(root, "manifest", "damaged"), exist_ok=True)
            fs.mv(path, target)


def _source_root(fs, root: str) -> str:
    try:
        return json.loads(fs.cat_file(join(root, STATE_DIR, "source.json")))["source"]
    except (OSError, ValueError, KeyError):
        return ""


# Bitstreams written before headers carried their creation time: never allowed to outrank
# a row with a real date; among themselves ``<key>.pxa`` (always the first version) comes first.
_UNDATED = datetime(1970, 1, 1, tzinfo=timezone.utc)


def header_time(meta: dict, rel: str, sha: str) -> datetime:
    """When a bitstream was made, from data that travels with it (its header), never from
    file-system times: ``cp -r``, rsync without ``-t`` or an object-store upload reset those,
    and would make an old version look newest."""
    try:
        return datetime.fromisoformat(meta["created_at"])
    except (KeyError, TypeError, ValueError):
        m = _VERSION_TAIL.search(rel)
        return _UNDATED + timedelta(seconds=1 if m and m.group(1) == sha[:12] else 0)


def _row_from_header(rel: str, blob: bytes, run_id: str, source_root: str, registry: Registry) -> ManifestRow:
    c, decoded = decode_container(blob, registry)  # decoded and checked before it says done
    meta = c.meta
    sha = sha256_hex(blob)
    key = meta.get("key") or _key_of(rel, sha)  # the header names its key (file names may be hashed)
    lossless = bool(meta.get("lossless"))
    row = ManifestRow(meta.get("run_id") or run_id, 0, key,
                      (source_root.rstrip("/") + "/" + key) if source_root else "", STATUS_DONE,
                      job="repair", pixarc_version=__version__, created_at=header_time(meta, rel, sha),
                      replaces_sha256=meta.get("previous_sha256", ""))
    row.source_sha256, row.pixels_sha256 = c.source_sha256, c.pixels_sha256
    row.source_format = meta.get("source_format", "")
    row.width, row.height, row.mode, row.bit_depth = c.width, c.height, c.mode, c.bit_depth
    row.domain = row.route = meta.get("domain", "")
    row.codec_id, row.codec_version, row.format_version = c.codec_id, meta.get("codec_version", ""), c.format_version
    row.weights_sha256 = c.weights_sha256
    params = meta.get("params", {})
    row.params, row.params_hash = dict(params), params_hash(params)
    row.plugin_dist, row.plugin_version = registry.provenance(c.codec_id)
    row.bitstream_uri, row.bitstream_sha256, row.bitstream_bytes = rel, sha, len(blob)
    row.bpp = 8.0 * len(blob) / max(1, c.width * c.height)
    row.lossless = lossless
    row.psnr = math.inf if lossless else float(meta.get("psnr", math.nan))
    row.ms_ssim = 1.0 if lossless else float(meta.get("ms_ssim", math.nan))
    row.decoded_sha256 = c.pixels_sha256 if lossless else meta.get("decoded_sha256", "")
    row.device, row.verified = "cpu", True
    row.notes = ("rebuilt by repair from the bitstream's own header (no committed row named it: its manifest part "
                 "was damaged or deleted, or its run was killed)")
    if decoded.original is not None:
        row.source_bytes = len(decoded.original)
    return row


def _fill_source_stamp(row: ManifestRow) -> None:
    """Size and mtime of the original, when it still is what the bitstream holds."""
    from .crawl import stamp

    if not row.source_uri:
        return
    try:
        fs, path = get_fs(row.source_uri)
        data = read_regular(fs, path)
        if sha256_hex(data) == row.source_sha256:
            row.source_bytes, row.source_mtime = len(data), stamp(fs.info(path))
    except (OSError, ValueError, PixarcError):
        pass


def _rebuild_rows(dest: str, run_id: str, damaged: list[tuple[str, str]], registry: Registry,
                  out: RepairSummary) -> list[ManifestRow]:
    """Move damaged parts aside, then give every bitstream no committed row names (an
    orphan: its part was damaged or deleted, or its run killed) a row from its own header."""
    fs, root = get_fs(dest)
    for name, _ in damaged:
        _quarantine(fs, root, name)
    out.parts_rebuilt = len(damaged)
    source_root = _source_root(fs, root)
    rows = []
    for rel in orphan_bitstreams(dest):
        try:
            row = _row_from_header(rel, fs.cat_file(join(root, rel)), run_id, source_root, registry)
        except (PixarcError, OSError) as exc:
            out.unrepairable.append((rel, f"{getattr(exc, 'reason', 'io_error')}: {exc}"))
            continue
        _fill_source_stamp(row)
        rows.append(row)
    out.rows_rebuilt = len(rows)
    return rows


def _bitstream_ok(uri: str, row: ManifestRow, registry: Registry) -> bool:
    try:
        decode_container(read_bitstream(uri, row.bitstream_sha256), registry)
    except (PixarcError, OSError):
        return False
    return True


def _reencode(old: ManifestRow, dest: str, run_id: str, registry: Registry) -> ManifestRow:
    try:
        fs, path = get_fs(old.source_uri)
        data = read_regular(fs, path)
    except (OSError, ValueError, InputError) as exc:
        raise InputError("source_gone", f"the original is gone ({exc}); nothing to re-encode from") from None
    if sha256_hex(data) != old.source_sha256:
        raise InputError("source_changed", "the original no longer matches its archived sha256")
    src = probe_and_load(data)
    route = Route(old.route or old.domain or "repair", old.lossless, (Candidate(old.codec_id, old.params),))
    chosen, attempts = encode_route(src, route, registry, ON_CPU)
    if chosen is None:
        raise InputError("reencode_failed", "; ".join(f"{a.codec}: {a.reason or a.result}" for a in attempts))
    dfs, droot = get_fs(dest)
    rel = write_version(dfs, droot, old.key, chosen.blob)
    row = ManifestRow(run_id, 1, old.key, old.source_uri, STATUS_DONE, job="repair",
                      replaces_sha256=old.bitstream_sha256, pixarc_version=__version__)
    carry_source(old, row)
    row.route = old.route
    fill_encoded(row, chosen, registry, rel)
    row.attempts = attempts
    row.notes = "re-encoded by repair from the original (its bitstream was missing or damaged)"
    return row


def repair(dest: str, wait: float = 0.0, registry: Registry | None = None) -> RepairSummary:
    """Rebuild damaged manifest parts and re-encode missing or damaged bitstreams, with the
    plugins of ``registry`` (default: those the environment allows)."""
    registry = registry or build_plugin_manager()
    require_archive(dest)
    out = RepairSummary(new_run_id())
    with hold(dest, "repair", wait) as lease:
        out.swept = sweep_leftovers(dest, 2 * lease.ttl)
        damaged: list[tuple[str, str]] = []
        read_manifest(dest, columns=[], damaged=damaged)
        columns = plugin_columns(registry)
        rows = _rebuild_rows(dest, out.run_id, damaged, registry, out)
        if rows:
            for row in rows:
                fill_plugin_columns(row, registry, columns)
            check_held(dest, lease.token)
            write_part(dest, out.run_id, 0, rows_to_table(rows, columns))
        fixed = []
        for r in current_rows(dest):
            try:
                uri = resolve_bitstream(dest, r.bitstream_uri, r.key)
            except InputError as exc:
                out.unrepairable.append((r.key, str(exc)))
                continue
            if _bitstream_ok(uri, r, registry):
                continue
            try:
                fixed.append(_reencode(r, dest, out.run_id, registry))
                out.reencoded.append(r.key)
            except PixarcError as exc:
                out.unrepairable.append((r.key, f"{exc.reason}: {exc}"))
        if fixed:
            for row in fixed:
                fill_plugin_columns(row, registry, columns)
            check_held(dest, lease.token)
            write_part(dest, out.run_id, 1, rows_to_table(fixed, columns))
    return out
