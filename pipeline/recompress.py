"""Recompression: re-encode what is outdated or what the current policy stores smaller.

Plan (the default, nothing written): for every current ``done`` row decide whether it is
* ``outdated`` — its codec's implementation version, format version or weights differ
  from the installed plugin's (the bitstream still decodes; a re-encode refreshes it), or
* ``policy`` — the current policy routes the image to another codec or parameters, and a
  trial encode saves at least ``min_saving`` of the bytes.

Apply: the new bitstream is encoded, decoded again and checked, then written under a new
name (``<key>.<sha12>.pxa``); the old bitstream is deleted only after the manifest part
whose rows point to the new one is committed. A crash at any point leaves every current
row pointing to an intact, verified bitstream (at worst an unreferenced new file). The
new row (``job = "recompress"``) records ``replaces_sha256`` for lineage; the old row
stays in the manifest history.

Pixels come from the archive itself for lossless rows (decoded and checked against
their hash, so the originals may be gone). Lossy rows are only re-encoded from their
original source, if it still matches its archived sha256: re-encoding a lossy
reconstruction would compound the loss.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Iterator

from . import __version__, progress
from .classify import Classification
from .codec import params_hash
from .engine import (
    STATUS_DONE,
    Shard,
    _fill_from_encoded,
    _policy,
    _unsafe,
    _write_plan,
    bitstream_rel,
    current_rows,
    decode_container,
    drop_plan,
    encode_route,
    fallback_note,
    load_shard,
    new_run_id,
    resolve_bitstream,
    with_location,
)
from .errors import PixarcError
from .images import BIT_DEPTH, ImageInfo, SourceImage, probe_and_load, sha256_hex
from .lock import check_held, hold
from .manifest import ManifestRow, read_manifest, rows_to_table, write_part
from .plugins import Registry, default_registry
from .storage import get_fs, join, read_regular, write_atomic

STORE = "store"


@dataclass(frozen=True)
class RecompressConfig:
    dest: str
    run_id: str
    policy: str | None = None
    min_saving: float = 0.1
    apply: bool = False
    device: str = "cpu"
    lease: str = ""  # token of the one-writer lease (checked before each commit)


@dataclass
class Decision:
    key: str
    action: str  # recompress | keep | skip
    reason: str
    old_codec: str
    new_codec: str = ""
    old_bytes: int = 0
    new_bytes: int = 0

    @property
    def saving(self) -> float:
        return 1 - self.new_bytes / self.old_bytes if self.old_bytes and self.new_bytes else 0.0


@dataclass
class RecompressSummary:
    shard: int
    decisions: list[Decision] = field(default_factory=list)
    applied: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def outdated_reason(row: dict, registry: Registry) -> str:
    codec_id = row["codec_id"]
    if codec_id not in registry.codecs:
        return ""
    codec = registry.codec(codec_id)
    if row["format_version"] != codec.format_version:
        return f"format version {row['format_version']} -> {codec.format_version}"
    if row["weights_sha256"] != codec.weights_for(json.loads(row["params"])):
        return "weights changed"
    if row["codec_version"] != codec.version():
        return f"codec version {row['codec_version']} -> {codec.version()}"
    return ""


def _source_from_archive(row: dict, registry: Registry, device: str) -> SourceImage:
    """Canonical pixels (and original bytes when stored) from the verified bitstream."""
    fs, path = get_fs(row["bitstream_uri"])
    blob = fs.cat_file(path)
    if sha256_hex(blob) != row["bitstream_sha256"]:
        raise PixarcError("bitstream differs from its manifest hash; run verify")
    c, decoded = decode_container(blob, registry, device)
    if decoded.original is not None:
        return probe_and_load(decoded.original)
    meta = c.meta
    info = ImageInfo(c.width, c.height, c.mode, BIT_DEPTH[c.mode], meta.get("source_format", ""),
                     meta.get("source_mode", c.mode), 1, True, tuple(meta.get("notes", [])))
    return SourceImage(b"", c.source_sha256, info, decoded.image, c.pixels_sha256,
                       c.sections.get("ICCP"), c.sections.get("EXIF"))


def _source_from_original(row: dict) -> SourceImage | None:
    try:
        fs, path = get_fs(row["source_uri"])
        data = read_regular(fs, path)
    except (OSError, ValueError, PixarcError):
        return None
    return probe_and_load(data) if sha256_hex(data) == row["source_sha256"] else None


def replacement_path(old_path: str, new_sha256: str) -> str:
    """``dir/name.png.pxa`` -> ``dir/name.png.<sha12>.pxa``: never the old bitstream's name."""
    base = old_path[: -len(".pxa")] if old_path.endswith(".pxa") else old_path
    parts = base.rsplit(".", 1)
    if len(parts) == 2 and len(parts[1]) == 12 and all(ch in "0123456789abcdef" for ch in parts[1]):
        base = parts[0]  # already a replacement: replace the hash, do not stack them
    return f"{base}.{new_sha256[:12]}.pxa"


def recompress_one(row: dict, cfg: RecompressConfig, registry: Registry) -> tuple[Decision, ManifestRow | None]:
    policy = _policy(cfg.policy)
    decision = Decision(row["key"], "keep", "", row["codec_id"], old_bytes=row["bitstream_bytes"])
    outdated = outdated_reason(row, registry)
    classification = Classification(row["domain"], row["domain_confidence"], row["classifier_id"])
    try:
        _unsafe(row)
        if row["lossless"]:
            src = _source_from_archive(row, registry, cfg.device)
        else:
            src = _source_from_original(row)
            if src is None:
                decision.action, decision.reason = "skip", "lossy row and its original is gone or changed"
                return decision, None
        route = registry.pm.hook.route(info=src.info, classification=classification, policy=policy)
        first = next((c for c in route.candidates if c.codec_id in registry.codecs
                      and not registry.codec(c.codec_id).unsupported_reason(src.info)), None)
        same_choice = first is not None and first.codec_id == row["codec_id"] and params_hash(
            registry.codec(first.codec_id).validate_params(first.params)) == row["params_hash"]
        if same_choice and not outdated:
            decision.reason = "current"
            return decision, None
        exclude = frozenset({STORE}) if not src.data else frozenset()
        chosen, attempts = encode_route(src, route, registry, cfg.device, exclude=exclude)
    except PixarcError as exc:
        decision.action, decision.reason = "skip", f"{exc.reason}: {exc}"
        return decision, None
    if chosen is None:
        decision.action, decision.reason = "skip", "no candidate verified: " + fallback_note(attempts)
        return decision, None
    decision.new_codec, decision.new_bytes = chosen.codec.codec_id, len(chosen.blob)
    if outdated:
        decision.action, decision.reason = "recompress", "outdated: " + outdated
    elif decision.saving >= cfg.min_saving:
        decision.action, decision.reason = "recompress", f"policy saves {100 * decision.saving:.1f} %"
    else:
        decision.reason = f"policy would save only {100 * decision.saving:.1f} %"
        return decision, None
    if not cfg.apply:
        return decision, None
    # The new bitstream gets its own name; the old one stays (and stays referenced) until
    # the manifest part that points to the new one is committed (see recompress_shard).
    fs, root = get_fs(cfg.dest)
    rel = replacement_path(row["bitstream_rel"], sha256_hex(chosen.blob))
    write_atomic(fs, join(root, rel), chosen.blob)
    new = ManifestRow(cfg.run_id, 0, row["key"], row["source_uri"], STATUS_DONE, job="recompress",
                      replaces_sha256=row["bitstream_sha256"], pixarc_version=__version__)
    for name in ("source_sha256", "source_bytes", "source_mtime", "source_format", "width", "height", "mode",
                 "bit_depth", "pixels_sha256", "domain", "domain_confidence", "classifier_id"):
        setattr(new, name, row[name])
    new.route = route.domain
    _fill_from_encoded(new, chosen, registry, rel, cfg.device)
    new.attempts = json.dumps(attempts)
    new.notes = "; ".join(filter(None, [f"recompressed ({decision.reason}) from {row['codec_id']}",
                                        fallback_note(attempts)]))
    return decision, new


def recompress_shard(shard: Shard, cfg: RecompressConfig, registry: Registry | None = None) -> RecompressSummary:
    registry = registry or default_registry()
    out = RecompressSummary(shard.index)
    rows, replaced = [], []
    for item in load_shard(shard):
        decision, new = recompress_one(item, cfg, registry)
        out.decisions.append(decision)
        if new is not None:
            new.shard = shard.index
            rows.append(new)
            # resolved under DEST by plan_recompress; kept when another key's row names it too
            replaced.append("" if item.get("shared") else item["bitstream_uri"])
            out.applied += 1
            out.bytes_before += decision.old_bytes
            out.bytes_after += decision.new_bytes
        progress.advance(cfg.run_id)
    if rows:
        if cfg.lease:
            check_held(cfg.dest, cfg.lease)
        write_part(cfg.dest, cfg.run_id, shard.index, rows_to_table(rows))
        # committed: the replaced bitstreams are no longer referenced by any current row
        for old_uri, new_row in zip(replaced, rows, strict=True):
            if old_uri and old_uri != resolve_bitstream(cfg.dest, new_row.bitstream_uri, new_row.key):
                fs, path = get_fs(old_uri)
                if fs.exists(path):
                    fs.rm(path)
    return out


def plan_recompress(dest: str, run_id: str, shard_size: int = 256) -> list[Shard]:
    # every bitstream is located under DEST (this copy of the archive), never elsewhere
    rows = [{**with_location(dest, r), "bitstream_rel": r["bitstream_uri"]} for r in current_rows(dest)]
    named_by: dict[str, set[str]] = {}  # bitstream -> keys whose rows (any version) name it
    for r in read_manifest(dest, columns=["bitstream_uri"], damaged=[]).to_pylist():
        try:
            named_by.setdefault(bitstream_rel(r["bitstream_uri"], r["key"]), set()).add(r["key"])
        except PixarcError:
            continue
    for r in rows:
        if not r.get("unsafe"):
            r["bitstream_rel"] = bitstream_rel(r["bitstream_rel"], r["key"])
            r["shared"] = bool(named_by.get(r["bitstream_rel"], set()) - {r["key"]})
    progress.set_total(run_id, len(rows))
    return _write_plan(dest, run_id, "recompress", rows, shard_size)[0]


def recompress_local(dest: str, policy: str | None = None, min_saving: float = 0.1, apply: bool = False,
                     shard_size: int = 256, run_id: str | None = None, wait: float = 0.0) -> list[RecompressSummary]:
    run_id = run_id or new_run_id()
    with writer_lease(dest, apply, wait) as token:
        cfg = RecompressConfig(dest, run_id, policy, min_saving, apply, lease=token)
        shards = plan_recompress(dest, run_id, shard_size)
        out = [recompress_shard(s, cfg) for s in shards]
        drop_plan(dest, "recompress", run_id)
    return out


@contextlib.contextmanager
def writer_lease(dest: str, apply: bool, wait: float) -> Iterator[str]:
    """The one-writer lease for ``--apply`` (a plan writes nothing of the archive)."""
    if not apply:
        yield ""
        return
    with hold(dest, "recompress --apply", wait) as lease:
        yield lease.token
