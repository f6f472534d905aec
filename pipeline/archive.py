"""The archive job: plan (crawl, skip what is archived unchanged), run a shard (intake,
encode, store, commit its manifest part), finish (totals, drop the plan).

A shard runs one image at a time on the CPU; when its codecs use a GPU it prepares a
batch, encodes it together on the device, then packs and checks each image as usual.
Every row is final and verified before its part is committed; a crash before the commit
loses nothing (the rerun reuses verified bitstreams it finds).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterator, Sequence

from . import __version__, faults, progress
from .checks import Problem, decode_container
from .codec import params_hash
from .container import unpack
from .crawl import ImageRef, crawl, key_filter
from .device import Device, may_use_gpu
from .encode import Encoded, Payloads, batch_encode, encode_route, fallback_note
from .errors import InputError, PixarcError
from .images import SourceImage, sha256_hex
from .intake import DEFAULT_MAX_BYTES, Intake, intake
from .layout import bitstream_stem, claim_dest, dest_prefix, write_version
from .lock import LockedError, check_held, still_held
from .manifest import (
    STATUS_DONE,
    STATUS_ERROR,
    STATUS_FAILED,
    STATUS_REJECTED,
    Attempt,
    ManifestRow,
    latest,
    read_manifest,
    rows_from_table,
    rows_to_table,
    write_part,
)
from .plan import Shard, drop_plan, load_shard, write_plan
from . import plugins
from .plugins import Registry
from .policy import Policy, Route, load_policy
from .storage import deferring_sync, get_fs, join, sync_deferred


@functools.lru_cache(maxsize=8)
def cached_policy(path: str | None) -> Policy:
    """A policy loaded once per process (every shard of a run uses the same one)."""
    return load_policy(path)


def settings_fingerprint(policy: Policy, max_bytes: int, registry: Registry) -> str:
    """What decides whether an object is refused: the limits, the policy and the installed
    codecs (with their plugins' versions). A rejected or error row records it; a rerun
    under other settings retries the object instead of trusting the old refusal."""
    codecs = sorted((cid, *registry.provenance(cid)) for cid in registry.codecs)
    text = repr((max_bytes, repr(policy), codecs, __version__))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- records


@dataclass
class ArchiveTotals:
    """What a shard (or, added up, a run) did."""

    shard: int = -1
    images: int = 0
    done: int = 0
    reused: int = 0
    rejected: int = 0
    errors: int = 0
    failed: int = 0
    source_bytes: int = 0
    archive_bytes: int = 0
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)  # host:pid that ran the shard(s)

    def add(self, other: "ArchiveTotals") -> None:
        self.workers.extend(other.workers)
        for name in ("images", "done", "reused", "rejected", "errors", "failed", "source_bytes", "archive_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds


@dataclass
class ArchivePlan:
    run_id: str
    shards: list[Shard]
    found: int = 0  # objects found by the crawl
    skipped: int = 0  # already archived (done), unchanged
    retried: int = 0  # rejected or in error earlier under other settings: tried again
    still_rejected: int = 0  # rejected or in error earlier under these very settings, unchanged: not archived
    hidden: int = 0  # hidden files and folders (leading '.'), not archived


@dataclass
class ArchiveSummary:
    run_id: str
    found: int
    skipped: int
    shards: int
    totals: ArchiveTotals
    problems: list[Problem] = field(default_factory=list)
    retried: int = 0
    still_rejected: int = 0
    hidden: int = 0


# --------------------------------------------------------------------------- one object


def source_row(it: Intake, run_id: str, shard: int) -> ManifestRow:
    """The row of an object as intake left it (final already when intake refused it)."""
    ref = it.ref
    row = ManifestRow(run_id, shard, ref.key, ref.uri, STATUS_DONE, source_bytes=ref.size, source_mtime=ref.mtime,
                      pixarc_version=__version__)
    if it.error is not None:
        row.status = STATUS_REJECTED if it.rejected else STATUS_ERROR
        row.error, row.message, row.notes = it.error.reason, str(it.error), "; ".join(it.notes)
        return row
    src, info = it.src, it.src.info
    row.source_sha256, row.source_bytes, row.source_format = src.sha256, len(src.data), info.source_format
    row.width, row.height, row.mode, row.bit_depth = info.width, info.height, info.mode, info.bit_depth
    row.pixels_sha256 = src.pixels_sha256
    c = it.classification
    row.domain, row.domain_confidence, row.classifier_id, row.classify_s = (
        c.domain, c.confidence, c.classifier_id, it.classify_s)
    row.route = it.route.domain
    return row


def fill_encoded(row: ManifestRow, enc: Encoded, registry: Registry, bitstream_rel: str) -> None:
    """Fill ``row`` from a verified encoding stored at ``bitstream_rel`` (under DEST)."""
    codec = enc.codec
    row.codec_id, row.codec_version, row.format_version = codec.codec_id, codec.version(), codec.format_version
    row.weights_sha256 = codec.weights_for(enc.params)
    row.params, row.params_hash = dict(enc.params), params_hash(enc.params)
    row.plugin_dist, row.plugin_version = registry.provenance(codec.codec_id)
    row.bitstream_uri = bitstream_rel
    row.bitstream_sha256, row.bitstream_bytes = sha256_hex(enc.blob), len(enc.blob)
    row.bpp = 8.0 * len(enc.blob) / max(1, row.width * row.height)
    row.psnr, row.ms_ssim = enc.psnr, enc.ms_ssim
    row.lossless = codec.lossless
    row.decoded_sha256 = enc.decoded_sha256
    row.encode_s, row.decode_s = enc.encode_s, enc.decode_s
    row.device = str(enc.device)  # what actually ran
    row.verified = True
    row.status = STATUS_DONE


def plugin_columns(registry: Registry) -> dict[str, Any]:
    """Extra manifest columns plugins declare (``manifest_columns`` hook)."""
    cols: dict[str, Any] = {}
    for answer in registry.pm.hook.manifest_columns():
        if answer:
            cols.update(answer)
    return cols


def fill_plugin_columns(row: ManifestRow, registry: Registry, columns: dict[str, Any]) -> None:
    """Values of the plugins' columns for a finished row (``manifest_values`` hook)."""
    if not columns:
        return
    for answer in registry.pm.hook.manifest_values(row=row):
        for name, value in (answer or {}).items():
            if name in columns:
                row.extra[name] = value


def _route_keys(route: Route, registry: Registry) -> set[tuple[str, str]]:
    """(codec id, params hash) of what the route may store. A rate-searched candidate's
    params are matched without its rate parameter: the search chose that per image."""
    keys = set()
    for c in route.candidates:
        if c.codec_id not in registry.codecs:
            continue
        codec = registry.codec(c.codec_id)
        try:
            params = codec.validate_params(c.params)
        except PixarcError:
            continue
        if c.target and codec.rate_param and not codec.lossless:
            params = {k: v for k, v in params.items() if k != codec.rate_param}
        keys.add((c.codec_id, params_hash(params)))
    return keys


def _stored_keys(head, registry: Registry) -> set[tuple[str, str]]:
    """(codec id, params hash) of a stored bitstream, with and without its rate parameter
    (:func:`_route_keys` has the latter for rate-searched candidates only)."""
    params = dict(head.meta.get("params", {}))
    keys = {(head.codec_id, params_hash(params))}
    codec = registry.codec(head.codec_id) if head.codec_id in registry.codecs else None
    if codec is not None and codec.rate_param and codec.rate_param in params:
        keys.add((head.codec_id, params_hash({k: v for k, v in params.items() if k != codec.rate_param})))
    return keys


def _versions(fs, root: str, key: str) -> list[str]:
    """DEST-relative names a bitstream of ``key`` can have (``<key>.pxa``, then the
    ``<key>.<sha12>.pxa`` written when that name was taken; ``<key>`` as
    :func:`~pixarc.layout.bitstream_stem` makes it, as :func:`write_version` does), those
    that exist."""
    stem = bitstream_stem(key)
    rel = stem + ".pxa"
    out = [rel]
    if not fs.exists(join(root, rel)):
        return []  # a later version is written only where this name was taken: nothing here
    parent, _, base = stem.rpartition("/")
    pattern = re.compile(re.escape(base) + r"\.[0-9a-f]{12}\.pxa")
    try:
        names = fs.ls(join(root, parent) if parent else root, detail=False)
    except (OSError, FileNotFoundError):
        names = []
    out += sorted((f"{parent}/{n}" if parent else n) for n in (x.rstrip("/").rsplit("/", 1)[-1] for x in names)
                  if pattern.fullmatch(n))
    return out


def try_reuse(fs, root: str, key: str, src: SourceImage, route: Route, registry: Registry
              ) -> tuple[Encoded, str] | None:
    """A bitstream left by an interrupted run for the same source and route, under either
    name a new version can take: decode-check it (on the CPU: the path restore uses,
    whatever encoded it). Returns it with its DEST-relative name."""
    wanted = None
    for rel in _versions(fs, root, key):
        path = join(root, rel)
        try:
            blob = fs.cat_file(path)
            head = unpack(blob, header_only=True)
            if wanted is None:
                wanted = _route_keys(route, registry)
            if (head.source_sha256 != src.sha256 or head.meta.get("domain", route.domain) != route.domain
                    or not _stored_keys(head, registry) & wanted):
                continue
            t0 = time.perf_counter()
            c, _ = decode_container(blob, registry)
            decode_s = time.perf_counter() - t0
        except (PixarcError, OSError):
            continue  # unusable: a fresh, verified encode is written under another name
        codec = registry.codec(c.codec_id)
        return Encoded.from_container(codec, c, blob, decode_s, codec.restore_device), rel
    return None


def archive_one(it: Intake, row: ManifestRow, dest: str, device: str | Device, registry: Registry,
                payloads: Payloads | None = None, lease: str = "") -> ManifestRow:
    """Encode, store and record one object that intake accepted; never raises for bad
    input (the row says what happened)."""
    dfs, droot = get_fs(dest)
    notes = it.notes
    reused = try_reuse(dfs, droot, it.key, it.src, it.route, registry)
    chosen = None
    attempts: list[Attempt]
    if reused is not None:
        chosen, rel = reused
        notes.append("reused the verified bitstream of an interrupted run")
        attempts = [Attempt(chosen.codec.codec_id, "reused")]
    else:
        chosen, attempts = encode_route(it.src, it.route, registry, device, payloads=payloads)
        if chosen is not None:
            if lease:  # a writer that lost its lease writes nothing more (not even bitstreams)
                still_held(dest, lease)
            try:
                rel = write_version(dfs, droot, it.key, chosen.blob)
            except InputError as exc:
                row.status, row.error, row.message = STATUS_REJECTED, exc.reason, str(exc)
                return row
            faults.point("written")
    row.attempts = attempts
    row.notes = "; ".join(filter(None, notes + [fallback_note(attempts)]))
    if chosen is None:
        row.status, row.error = STATUS_FAILED, "no_codec"
        row.message = "no candidate codec produced a verified bitstream"
        return row
    fill_encoded(row, chosen, registry, rel)
    return row


# --------------------------------------------------------------------------- the job

_REF_FIELDS = frozenset(f.name for f in fields(ImageRef))


@dataclass(frozen=True)
class ArchiveJob:
    """Archive what is new or changed under ``src`` into ``dest``. A small record: it is
    what a Prefect task receives with its shard."""

    name: ClassVar[str] = "archive"
    writes: ClassVar[bool] = True  # holds DEST's one-writer lease

    src: str
    dest: str
    run_id: str
    policy: str | None = None
    device: str = "auto"  # auto: a GPU for codecs that use one, when the worker has one
    batch_size: int = 16  # images encoded together by GPU codecs
    max_bytes: int = DEFAULT_MAX_BYTES  # larger sources are refused from their size (0: no limit)
    shard_size: int = 256
    follow_symlinks: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    limit: int | None = None
    lease: str = ""  # token of the one-writer lease held for DEST (checked before each commit)

    @property
    def base(self) -> str:
        """Where the plan lives."""
        return self.dest

    def select(self) -> Callable[[str], bool] | None:
        return key_filter(self.include, self.exclude)

    def plan(self) -> ArchivePlan:
        """Crawl ``src``, drop what the manifest already holds unchanged, write shard lists.

        An object is skipped when its newest row has the same URI, size and mtime/ETag and
        a final status (done, rejected, error); ``failed`` rows are retried."""
        cached_policy(self.policy)  # fail fast on a bad policy, before any shard starts
        claim_dest(self.src, self.dest)
        wanted = ["source_uri", "source_bytes", "source_mtime", "status", "bitstream_sha256", "settings"]
        # keys of a damaged part are archived again (reusing their verified bitstreams)
        current = rows_from_table(latest(read_manifest(self.dest, columns=wanted, damaged=[])))
        # a refusal is only as good as the settings that made it: rejected and error rows are
        # "known" (not retried) only under the very same limits, policy and codecs
        settings = self.settings(plugins.default_registry())
        known = {r.source_uri: (r.source_bytes, r.source_mtime, r.status) for r in current
                 if r.status == STATUS_DONE or (r.status != STATUS_FAILED and r.settings == settings)}
        refused = {r.source_uri for r in current if r.status in (STATUS_REJECTED, STATUS_ERROR)}
        previous = {r.key: r.bitstream_sha256 for r in current if r.status == STATUS_DONE}
        prefix, select = dest_prefix(self.dest), self.select()
        counts = {"found": 0, "skipped": 0, "retried": 0, "still_rejected": 0, "hidden": 0}

        def todo() -> Iterator[dict]:
            for ref in crawl(self.src, follow_symlinks=self.follow_symlinks, hidden=True):
                if ref.uri.startswith(prefix) or (select is not None and not select(ref.key)):
                    continue  # the archive itself, when DEST lies inside SRC; or filtered out
                if ref.kind == "hidden":
                    counts["hidden"] += 1  # counted in the summary, never archived (docs/guarantees.md)
                    continue
                if self.limit is not None and counts["found"] - counts["skipped"] - counts["still_rejected"] >= self.limit:
                    break
                counts["found"] += 1
                seen = known.get(ref.uri)
                if seen is not None and seen[:2] == (ref.size, ref.mtime):
                    counts["skipped" if seen[2] == STATUS_DONE else "still_rejected"] += 1
                    continue
                if ref.uri in refused:
                    counts["retried"] += 1
                yield {**asdict(ref), "replaces": previous.get(ref.key, "")}

        shards, planned = write_plan(self.dest, self.run_id, self.name, todo(), self.shard_size)
        progress.set_total(self.run_id, planned)
        return ArchivePlan(self.run_id, shards, counts["found"], counts["skipped"], counts["retried"],
                           counts["still_rejected"], counts["hidden"])

    def settings(self, registry: Registry) -> str:
        return settings_fingerprint(cached_policy(self.policy), self.max_bytes, registry)

    def uses_gpu(self, registry: Registry) -> bool:
        """Whether shards of this job can put work on a GPU (and so must hold a GPU slot)."""
        return may_use_gpu(self.device, list(registry.codecs.values()))

    @deferring_sync  # the shard's bitstreams are made durable together (see sync_deferred below)
    def run_shard(self, shard: Shard, registry: Registry | None = None) -> ArchiveTotals:
        """Archive every object of a shard and commit its manifest part."""
        registry = registry or plugins.default_registry()  # looked up per call (tests swap it)
        policy = cached_policy(self.policy)
        t0 = time.perf_counter()
        loaded = load_shard(shard)
        refs = [ImageRef(**{k: v for k, v in item.items() if k in _REF_FIELDS}) for item in loaded]
        replaces = {item["key"]: item.get("replaces", "") for item in loaded}
        columns = plugin_columns(registry)
        settings = self.settings(registry)
        rows: list[ManifestRow] = []
        step = self.batch_size if self.uses_gpu(registry) else 1  # CPU: one image in memory at a time
        for i in range(0, len(refs), step):
            taken = [intake(ref, policy, registry, self.max_bytes) for ref in refs[i : i + step]]
            ready = [k for k, it in enumerate(taken) if it.error is None]
            payloads: list[Payloads] = [{} for _ in taken]
            if step > 1 and ready:  # GPU: encode the batch together, then check each image
                batched = batch_encode([(taken[k].src, taken[k].route) for k in ready], registry, self.device,
                                       on_failure=lambda j, msg: taken[ready[j]].notes.append(msg))
                for k, p in zip(ready, batched):
                    payloads[k] = p
            for it, p in zip(taken, payloads):
                row = source_row(it, self.run_id, shard.index)
                try:
                    if it.error is None:
                        it.src.extra["stamp"] = {"key": it.key, "run_id": self.run_id,
                                                 "previous_sha256": replaces.get(it.key, "")}
                        archive_one(it, row, self.dest, self.device, registry, p, self.lease)
                    if row.status == STATUS_DONE and replaces.get(row.key) not in (None, "", row.bitstream_sha256):
                        row.replaces_sha256 = replaces[row.key]  # a new version records what it succeeds
                    fill_plugin_columns(row, registry, columns)
                except (LockedError, OSError, MemoryError):
                    raise  # DEST lost, full or read-only, the machine out of memory: the run stops (exit 4)
                except Exception as exc:  # anything about this one object never blocks the shard
                    row = failed_row(row, exc)
                if row.status in (STATUS_REJECTED, STATUS_ERROR):
                    row.settings = settings
                rows.append(row)
                progress.advance(self.run_id)
                progress.add_bytes(self.run_id, row.source_bytes)
        sync_deferred()  # every bitstream reaches the disk before the part that names them
        if self.lease:  # a run that lost its lease (stalled past expiry) must not commit
            check_held(self.dest, self.lease)
        rows, table = manifest_table(rows, columns)
        write_part(self.dest, self.run_id, shard.index, table)
        return shard_totals(shard.index, rows, time.perf_counter() - t0)

    def finish(self, plan: ArchivePlan, results: Sequence[ArchiveTotals]) -> ArchiveSummary:
        totals = ArchiveTotals(-1)
        for r in results:
            totals.add(r)
        drop_plan(self.dest, self.name, self.run_id)  # kept when a shard raised, for inspection
        return ArchiveSummary(self.run_id, plan.found, plan.skipped, len(plan.shards), totals,
                              retried=plan.retried, still_rejected=plan.still_rejected, hidden=plan.hidden)


def failed_row(row: ManifestRow, exc: BaseException) -> ManifestRow:
    """The error row of an object whose handling raised (a codec or plugin bug, a name the
    manifest cannot hold...): only what any row can hold, and why."""
    reason = getattr(exc, "reason", "") or "internal_error"
    message = f"{type(exc).__name__}: {exc}"
    return ManifestRow(row.run_id, row.shard, row.key, row.source_uri, STATUS_ERROR, source_bytes=row.source_bytes,
                       source_mtime=row.source_mtime, source_sha256=row.source_sha256, error=reason,
                       message=message, pixarc_version=row.pixarc_version)


def manifest_table(rows: list[ManifestRow], columns: dict[str, Any]) -> tuple[list[ManifestRow], Any]:
    """The shard's part. A row the manifest cannot hold (a plugin column of the wrong type,
    text Parquet refuses) becomes that object's error row; the others commit."""
    try:
        return rows, rows_to_table(rows, columns)
    except Exception:  # rare: find the culprit(s) row by row
        kept = []
        for r in rows:
            try:
                rows_to_table([r], columns)
            except Exception as exc:
                r = failed_row(r, exc)
            kept.append(r)
        return kept, rows_to_table(kept, columns)


def shard_totals(index: int, rows: list[ManifestRow], seconds: float) -> ArchiveTotals:
    s = ArchiveTotals(index, images=len(rows), seconds=seconds, workers=[worker_id()])
    for r in rows:
        s.source_bytes += r.source_bytes
        if r.status == STATUS_DONE:
            s.done += 1
            s.archive_bytes += r.bitstream_bytes
            s.reused += "reused" in r.notes
        elif r.status == STATUS_REJECTED:
            s.rejected += 1
        elif r.status == STATUS_ERROR:
            s.errors += 1
        else:
            s.failed += 1
    return s
