"""Recompression: re-encode what is outdated or what the current policy stores smaller.

Plan (the default, nothing written, cheap): for every current ``done`` row decide whether it is
* ``outdated`` — its codec's implementation version, format version or weights differ
  from the installed plugin's (the bitstream still decodes; a re-encode refreshes it), or
* ``policy`` — the current policy routes the image to another codec or parameters, and a
  trial encode saves at least ``min_saving`` of the bytes.

A plan encodes only a sample: per group of rows with the same route, codec and parameters
(and outdatedness), the first ``sample`` rows of a shard are encoded as ``--apply`` would;
the others are estimated from them (their bytes ratio; ``Decision.estimated``), with no
decode and no encode. ``--apply`` decides every row by encoding it.

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

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from . import __version__, progress
from .archive import cached_policy
from .checks import Problem, decode_container, read_bitstream
from .classify import Classification
from .codec import params_hash
from .device import DeviceMap, check_request
from .selection import encode_route, fallback_note
from .errors import InputError, PixarcError
from .jobs import RUN_ONLY, Table
from .images import BIT_DEPTH, ImageInfo, SourceImage, probe_and_load, sha256_hex
from .layout import bitstream_rel, resolve_bitstream
from .lock import check_held
from .manifest import (
    STATUS_DONE,
    ManifestRow,
    carry_source,
    read_manifest,
    row_from_record,
    rows_to_table,
    to_record,
    write_part,
)
from .plan import Shard, drop_plan, load_shard, write_plan
from .plugins import Registry, build_plugin_manager
from .rows import fill_encoded, fill_plugin_columns, plugin_columns
from .state import current_rows
from .storage import get_fs, join, read_regular, write_atomic

STORE = "store"


@dataclass
class Decision:
    key: str
    action: str  # recompress | keep | skip
    reason: str
    old_codec: str
    new_codec: str = ""
    old_bytes: int = 0
    new_bytes: int = 0
    problem: str = ""  # the reason code when the row was skipped because its bitstream is damaged
    estimated: bool = False  # a plan's estimate from the sampled rows of its group, not an encode

    @property
    def saving(self) -> float:
        return 1 - self.new_bytes / self.old_bytes if self.old_bytes and self.new_bytes else 0.0


@dataclass
class RecompressTotals:
    """What a shard decided (and, applying, re-encoded)."""

    shard: int
    decisions: list[Decision] = field(default_factory=list)
    applied: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def line(self, items: int) -> str:
        return f"{len(self.decisions)} row(s): {sum(d.action == 'recompress' for d in self.decisions)} to re-encode"

    @property
    def bytes_moved(self) -> int:
        return 0


@dataclass
class RecompressSummary:
    """What a run decided: every row's decision; with ``apply``, ``applied`` rows re-encoded."""

    run_id: str
    dest: str
    apply: bool
    shards: int
    decisions: list[Decision] = field(default_factory=list)
    applied: int = 0
    problems: list[Problem] = field(default_factory=list)  # rows skipped because of a damaged bitstream...
    seconds: float = 0.0  # the run's wall-clock time

    @property
    def todo(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "recompress"]

    def render(self) -> list[str | Table]:
        todo, decisions = self.todo, self.decisions
        table = Table(("applied" if self.apply else "plan (nothing written; --apply to do it)") + f": {self.dest}",
                      ("key", "reason", "from", "to", "bytes before", "bytes after", "saving"),
                      [(d.key, d.reason, d.old_codec, d.new_codec, str(d.old_bytes), str(d.new_bytes),
                        f"{100 * d.saving:.1f} %") for d in todo])
        skipped = [d for d in decisions if d.action == "skip"]
        estimated = [d for d in decisions if d.estimated]
        out: list[str | Table] = [table, (
            f"{len(todo)} of {len(decisions)} bitstream(s) to re-encode: {sum(d.old_bytes for d in todo)} -> "
            f"{sum(d.new_bytes for d in todo)} bytes" + (" (an estimate)" if any(d.estimated for d in todo) else "")
            + f"; {len(skipped)} skipped" + (f" (e.g. {skipped[0].key}: {skipped[0].reason})" if skipped else ""))]
        if estimated:
            out.append(f"{len(estimated)} of {len(decisions)} decision(s) estimated from "
                       f"{len(decisions) - len(estimated)} sampled encode(s) of rows like them (same route, codec and "
                       "parameters); --apply encodes each")
        return out

    def json_fields(self) -> dict[str, Any]:
        todo = self.todo
        return {"run_id": self.run_id, "applied": self.apply, "decisions": self.decisions, "to_recompress": len(todo),
                "bytes_before": sum(d.old_bytes for d in todo), "bytes_after": sum(d.new_bytes for d in todo)}


@dataclass
class Item:
    """A current row to reconsider, located under DEST (this copy of the archive)."""

    row: ManifestRow
    bitstream_uri: str = ""  # resolved under DEST ('' when the row's path was refused)
    bitstream_rel: str = ""
    shared: bool = False  # another key's row names the same bitstream: never delete it
    unsafe: str = ""

    def to_json(self) -> dict:
        return {"row": to_record(self.row), "bitstream_uri": self.bitstream_uri, "bitstream_rel": self.bitstream_rel,
                "shared": self.shared, "unsafe": self.unsafe}

    @classmethod
    def from_json(cls, d: dict) -> "Item":
        return cls(row_from_record(d["row"]), d["bitstream_uri"], d["bitstream_rel"], d["shared"], d["unsafe"])


def outdated_reason(row: ManifestRow, registry: Registry) -> str:
    if row.codec_id not in registry.codecs:
        return ""
    codec = registry.codec(row.codec_id)
    if row.format_version != codec.format_version:
        return f"format version {row.format_version} -> {codec.format_version}"
    if row.weights_sha256 != codec.weights_for(row.params):
        return "weights changed"
    if row.codec_version != codec.version():
        return f"codec version {row.codec_version} -> {codec.version()}"
    return ""


def _source_from_archive(item: Item, registry: Registry, devices: DeviceMap) -> SourceImage:
    """Canonical pixels (and original bytes when stored) from the verified bitstream."""
    try:
        blob = read_bitstream(item.bitstream_uri, item.row.bitstream_sha256)
    except PixarcError as exc:
        raise InputError(exc.reason, f"{exc}; run verify") from None  # the reason (damage) stays
    c, decoded = decode_container(blob, registry, devices)
    if decoded.original is not None:
        return probe_and_load(decoded.original)
    meta = c.meta
    info = ImageInfo(c.width, c.height, c.mode, BIT_DEPTH[c.mode], meta.get("source_format", ""),
                     meta.get("source_mode", c.mode), 1, True, tuple(meta.get("notes", [])))
    return SourceImage(b"", c.source_sha256, info, decoded.image, c.pixels_sha256,
                       c.sections.get("ICCP"), c.sections.get("EXIF"))


def _source_from_original(row: ManifestRow) -> SourceImage | None:
    try:
        fs, path = get_fs(row.source_uri)
        data = read_regular(fs, path)
    except (OSError, ValueError, PixarcError):
        return None
    return probe_and_load(data) if sha256_hex(data) == row.source_sha256 else None


def replacement_path(old_path: str, new_sha256: str) -> str:
    """``dir/name.png.pxa`` -> ``dir/name.png.<sha12>.pxa``: never the old bitstream's name."""
    base = old_path[: -len(".pxa")] if old_path.endswith(".pxa") else old_path
    parts = base.rsplit(".", 1)
    if len(parts) == 2 and len(parts[1]) == 12 and all(ch in "0123456789abcdef" for ch in parts[1]):
        base = parts[0]  # already a replacement: replace the hash, do not stack them
    return f"{base}.{new_sha256[:12]}.pxa"


@dataclass(frozen=True)
class RecompressJob:
    """Re-encode outdated rows and rows the current policy stores ``min_saving`` smaller;
    with ``apply`` write them (under the one-writer lease), else only decide."""

    name: ClassVar[str] = "recompress"
    holder: ClassVar[str] = "recompress --apply"
    retries: ClassVar[int] = 0

    dest: str
    run_id: str
    policy: str | None = None
    min_saving: float = 0.1
    apply: bool = False
    device: str = "cpu"  # a request: cpu, auto, cuda, cuda:N (new bitstreams are decode-checked on the CPU too)
    shard_size: int = 256
    lease: str = field(default="", metadata=RUN_ONLY)  # the one-writer lease (checked before each commit)
    # a plan encodes this many rows per group (route, codec, params) and estimates the rest
    sample: int = field(default=2, metadata=RUN_ONLY)
    registry: Registry = field(default_factory=build_plugin_manager, repr=False, compare=False, metadata=RUN_ONLY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_request(self.device))

    @property
    def writes(self) -> bool:
        return self.apply

    @property
    def base(self) -> str:
        return self.dest

    def check(self) -> None:
        cached_policy(self.policy)  # a bad policy fails before the lease is taken

    def uses_gpu(self) -> bool:
        return False  # recompress shards take no GPU slot

    def stats(self, summary: RecompressSummary) -> dict[str, Any]:
        todo = summary.todo
        return {"policy": cached_policy(self.policy).name, "apply": self.apply, "min_saving": self.min_saving,
                "device": self.device, "rows": len(summary.decisions), "to_recompress": len(todo),
                "bytes_before": sum(d.old_bytes for d in todo), "bytes_after": sum(d.new_bytes for d in todo)}

    def plan(self) -> "RecompressPlan":
        cached_policy(self.policy)  # fail fast on a bad policy
        named_by: dict[str, set[str]] = {}  # bitstream -> keys whose rows (any version) name it
        for r in read_manifest(self.dest, columns=["bitstream_uri"], damaged=[]).to_pylist():
            try:
                named_by.setdefault(bitstream_rel(r["bitstream_uri"], r["key"]), set()).add(r["key"])
            except PixarcError:
                continue
        items = []
        for row in current_rows(self.dest):
            item = Item(row)
            try:  # every bitstream is located under DEST (this copy of the archive), never elsewhere
                item.bitstream_rel = bitstream_rel(row.bitstream_uri, row.key)
                item.bitstream_uri = resolve_bitstream(self.dest, row.bitstream_uri, row.key)
                item.shared = bool(named_by.get(item.bitstream_rel, set()) - {row.key})
            except InputError as exc:
                item.unsafe = str(exc)
            items.append(item.to_json())
        progress.set_total(self.run_id, len(items))
        return RecompressPlan(self.run_id, write_plan(self.dest, self.run_id, self.name, items, self.shard_size)[0])

    def decide(self, item: Item, devices: DeviceMap, sampled: dict | None = None
               ) -> tuple[Decision, ManifestRow | None]:
        """``sampled`` (a plan): group -> decisions made by encoding; once a group has
        :attr:`sample` of them, its other rows are estimated from them, not encoded."""
        row = item.row
        outdated = outdated_reason(row, self.registry)
        if sampled is not None and not self.apply:
            group = (row.route, row.codec_id, row.params_hash, bool(outdated))
            seen = sampled.setdefault(group, [])
            if len(seen) >= max(1, self.sample):
                return self._estimate(row, seen, outdated), None
            decision, new = self._decide(item, devices, outdated)
            seen.append(decision)
            return decision, new
        return self._decide(item, devices, outdated)

    def _estimate(self, row: ManifestRow, seen: list[Decision], outdated: str) -> Decision:
        """A plan's decision for a row like ``seen`` (same route, codec, parameters): their
        bytes ratio applied to this row's bytes; nothing decoded or encoded."""
        d = Decision(row.key, "keep", "", row.codec_id, old_bytes=row.bitstream_bytes, estimated=True)
        measured = [x for x in seen if x.new_bytes and x.old_bytes]
        basis = f"estimated from {len(seen)} sampled row(s) like it"
        if not measured:
            first = seen[0]
            d.action = first.action if first.action != "recompress" else "keep"
            d.reason = f"{first.reason} ({basis})"
            return d
        ratio = sum(x.new_bytes for x in measured) / sum(x.old_bytes for x in measured)
        codecs = [x.new_codec for x in measured]
        d.new_codec = max(set(codecs), key=codecs.count)
        d.new_bytes = max(1, round(row.bitstream_bytes * ratio))
        if outdated:
            d.action, d.reason = "recompress", f"outdated: {outdated} ({basis})"
        elif d.saving >= self.min_saving:
            d.action, d.reason = "recompress", f"policy saves about {100 * d.saving:.1f} % ({basis})"
        else:
            d.reason = f"policy would save about {100 * d.saving:.1f} % ({basis})"
        return d

    def _decide(self, item: Item, devices: DeviceMap, outdated: str) -> tuple[Decision, ManifestRow | None]:
        row, registry = item.row, self.registry
        policy = cached_policy(self.policy)
        decision = Decision(row.key, "keep", "", row.codec_id, old_bytes=row.bitstream_bytes)
        classification = Classification(row.domain, row.domain_confidence, row.classifier_id)
        try:
            if item.unsafe:
                raise InputError("outside_dest", item.unsafe)
            if row.lossless:
                src = _source_from_archive(item, registry, devices)
            else:
                src = _source_from_original(row)
                if src is None:
                    decision.action, decision.reason = "skip", "lossy row and its original is gone or changed"
                    return decision, None
            route = registry.pm.hook.route(info=src.info, classification=classification, policy=policy)
            first = next((c for c in route.candidates if c.codec_id in registry.codecs
                          and not registry.codec(c.codec_id).unsupported_reason(src.info)), None)
            same_choice = first is not None and first.codec_id == row.codec_id and params_hash(
                registry.codec(first.codec_id).validate_params(first.params)) == row.params_hash
            if same_choice and not outdated:
                decision.reason = "current"
                return decision, None
            exclude = frozenset({STORE}) if not src.data else frozenset()
            chosen, attempts = encode_route(src, route, registry, devices, exclude=exclude)
        except PixarcError as exc:
            decision.action, decision.reason, decision.problem = "skip", f"{exc.reason}: {exc}", exc.reason
            return decision, None
        if chosen is None:
            decision.action, decision.reason = "skip", "no candidate verified: " + fallback_note(attempts)
            return decision, None
        decision.new_codec, decision.new_bytes = chosen.codec.codec_id, len(chosen.blob)
        if outdated:
            decision.action, decision.reason = "recompress", "outdated: " + outdated
        elif decision.saving >= self.min_saving:
            decision.action, decision.reason = "recompress", f"policy saves {100 * decision.saving:.1f} %"
        else:
            decision.reason = f"policy would save only {100 * decision.saving:.1f} %"
            return decision, None
        if not self.apply:
            return decision, None
        # The new bitstream gets its own name; the old one stays (and stays referenced) until
        # the manifest part that points to the new one is committed (see run_shard).
        fs, root = get_fs(self.dest)
        rel = replacement_path(item.bitstream_rel, sha256_hex(chosen.blob))
        write_atomic(fs, join(root, rel), chosen.blob)
        new = ManifestRow(self.run_id, 0, row.key, row.source_uri, STATUS_DONE, job="recompress",
                          replaces_sha256=row.bitstream_sha256, pixarc_version=__version__)
        carry_source(row, new)
        new.route = route.domain
        fill_encoded(new, chosen, registry, rel)
        new.attempts = attempts
        new.notes = "; ".join(filter(None, [f"recompressed ({decision.reason}) from {row.codec_id}",
                                            fallback_note(attempts)]))
        return decision, new

    def run_shard(self, shard: Shard) -> RecompressTotals:
        registry, devices = self.registry, DeviceMap.resolve(self.device, self.registry.codecs)
        columns = plugin_columns(registry)
        out = RecompressTotals(shard.index)
        rows, replaced = [], []
        sampled: dict = {}  # a plan: what each group's sampled rows gave
        for item in (Item.from_json(d) for d in load_shard(shard)):
            decision, new = self.decide(item, devices, None if self.apply else sampled)
            out.decisions.append(decision)
            if new is not None:
                new.shard = shard.index
                fill_plugin_columns(new, registry, columns)
                rows.append(new)
                # kept when another key's row names it too
                replaced.append("" if item.shared else item.bitstream_uri)
                out.applied += 1
                out.bytes_before += decision.old_bytes
                out.bytes_after += decision.new_bytes
            progress.advance(self.run_id)
        if rows:
            if self.lease:
                check_held(self.dest, self.lease)
            write_part(self.dest, self.run_id, shard.index, rows_to_table(rows, columns))
            # committed: the replaced bitstreams are no longer referenced by any current row
            for old_uri, new_row in zip(replaced, rows, strict=True):
                if old_uri and old_uri != resolve_bitstream(self.dest, new_row.bitstream_uri, new_row.key):
                    fs, path = get_fs(old_uri)
                    if fs.exists(path):
                        fs.rm(path)
        return out

    def finish(self, plan: "RecompressPlan", results: Sequence[RecompressTotals]) -> RecompressSummary:
        drop_plan(self.dest, self.name, self.run_id)
        decisions = [d for r in results for d in r.decisions]
        return RecompressSummary(self.run_id, self.dest, self.apply, len(plan.shards), decisions,
                                 sum(r.applied for r in results),
                                 [Problem(d.key, d.problem, d.reason) for d in decisions if d.problem])


@dataclass
class RecompressPlan:
    run_id: str
    shards: list[Shard]
