"""The archive job: plan (crawl, skip what is archived unchanged), run a shard (intake,
encode, store, commit its manifest part), finish (totals, drop the plan).

A shard runs one image at a time on the CPU; when its codecs use a GPU it prepares a
batch, encodes it together on the device, then packs and checks each image as usual.
Every row is final and verified before its part is committed; a crash before the commit
loses nothing (the rerun reuses verified bitstreams it finds, :mod:`pixarc.reuse`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterator, Sequence

from . import __version__, faults, progress, runstats
from .checks import Problem
from .crawl import ImageRef, crawl, key_filter
from .device import DeviceMap, check_request
from .encode import Payloads, batch_encode
from .selection import encode_route, fallback_note
from .errors import InputError
from .intake import DEFAULT_MAX_BYTES, Intake, intake
from .jobs import RUN_ONLY, Table, run_fields
from .layout import claim_dest, dest_prefix, write_version
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
    write_part,
)
from .plan import Shard, drop_plan, load_shard, write_plan
from .plugins import Registry, build_plugin_manager
from .policy import Policy, load_policy
from .reuse import try_reuse
from .rows import failed_row, fill_encoded, fill_plugin_columns, manifest_table, plugin_columns, source_row
from .storage import deferring_sync, get_fs, sync_deferred


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

    def line(self, items: int) -> str:
        return (f"{self.images} image(s): {self.done} done, {self.rejected} rejected, {self.errors} errors, "
                f"{self.failed} failed; {self.source_bytes} -> {self.archive_bytes} bytes in {self.seconds:.1f} s")

    @property
    def bytes_moved(self) -> int:
        return self.source_bytes


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
    seconds: float = 0.0  # the run's wall-clock time (totals.seconds adds up the shards' times)

    def render(self) -> list[str | Table]:
        t = self.totals
        return [f"run {self.run_id}: {self.found} found, {self.skipped} already archived, "
                + (f"{self.still_rejected} rejected or unreadable earlier (same settings, not archived), "
                   if self.still_rejected else "")
                + (f"{self.retried} rejected earlier, retried, " if self.retried else "")
                + f"{t.images} processed in {self.shards} shard(s): {t.done} done"
                + (f" ({t.reused} reused)" if t.reused else "")
                + f", {t.rejected} rejected, {t.errors} errors, {t.failed} failed"
                + (f"; {self.hidden} hidden file(s)/folder(s) not archived" if self.hidden else "")]

    def json_fields(self) -> dict[str, Any]:
        totals = {k: getattr(self.totals, k) for k in ("images", "done", "reused", "rejected", "errors", "failed",
                                                       "source_bytes", "archive_bytes")}
        return run_fields(self, {**totals, "seconds": self.seconds, "workers": self.totals.workers})


# --------------------------------------------------------------------------- one object


def archive_one(it: Intake, row: ManifestRow, dest: str, devices: DeviceMap, registry: Registry,
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
        chosen, attempts = encode_route(it.src, it.route, registry, devices, payloads=payloads)
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
    holder: ClassVar[str] = "archive"
    retries: ClassVar[int] = 1  # idempotent shards (a rerun reuses verified bitstreams)
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
    lease: str = field(default="", metadata=RUN_ONLY)  # the one-writer lease held for DEST (checked before commits)
    registry: Registry = field(default_factory=build_plugin_manager, repr=False, compare=False, metadata=RUN_ONLY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_request(self.device))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def base(self) -> str:
        """Where the plan lives."""
        return self.dest

    def check(self) -> None:
        cached_policy(self.policy)  # a bad policy fails before the lease is taken

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
        settings = self.settings()
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

    def settings(self) -> str:
        return settings_fingerprint(cached_policy(self.policy), self.max_bytes, self.registry)

    def devices(self) -> DeviceMap:
        """Where each codec runs on this worker (``auto``: a GPU for the codecs that use one,
        when the worker has one); resolved once per shard."""
        return DeviceMap.resolve(self.device, self.registry.codecs)

    def uses_gpu(self) -> bool:
        return self.devices().uses_gpu

    @deferring_sync  # the shard's bitstreams are made durable together (see sync_deferred below)
    def run_shard(self, shard: Shard) -> ArchiveTotals:
        """Archive every object of a shard and commit its manifest part."""
        registry, devices = self.registry, self.devices()
        policy = cached_policy(self.policy)
        t0 = time.perf_counter()
        loaded = load_shard(shard)
        refs = [ImageRef(**{k: v for k, v in item.items() if k in _REF_FIELDS}) for item in loaded]
        replaces = {item["key"]: item.get("replaces", "") for item in loaded}
        columns = plugin_columns(registry)
        settings = self.settings()
        rows: list[ManifestRow] = []
        step = self.batch_size if devices.uses_gpu else 1  # CPU: one image in memory at a time
        for i in range(0, len(refs), step):
            taken = [intake(ref, policy, registry, self.max_bytes) for ref in refs[i : i + step]]
            ready = [k for k, it in enumerate(taken) if it.error is None]
            payloads: list[Payloads] = [{} for _ in taken]
            if step > 1 and ready:  # GPU: encode the batch together, then check each image
                batched = batch_encode([(taken[k].src, taken[k].route) for k in ready], registry, devices,
                                       on_failure=lambda j, msg: taken[ready[j]].notes.append(msg))
                for k, p in zip(ready, batched):
                    payloads[k] = p
            for it, p in zip(taken, payloads):
                row = source_row(it, self.run_id, shard.index)
                try:
                    if it.error is None:
                        it.src.extra["stamp"] = {"key": it.key, "run_id": self.run_id,
                                                 "previous_sha256": replaces.get(it.key, "")}
                        archive_one(it, row, self.dest, devices, registry, p, self.lease)
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

    def stats(self, summary: ArchiveSummary) -> dict[str, Any]:
        return {"src": self.src, "policy": cached_policy(self.policy).name, "policy_source": self.policy or "default",
                "include": list(self.include), "exclude": list(self.exclude), "limit": self.limit,
                "device": self.device, **runstats.archive_fields(summary, summary.seconds)}


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
