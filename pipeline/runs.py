"""Running jobs: plan -> run every shard -> finish, on either engine.

A job (:class:`~pixarc.archive.ArchiveJob`, :class:`~pixarc.restore.RestoreJob`,
:class:`~pixarc.verify.VerifyJob`, :class:`~pixarc.recompress.RecompressJob`) is a small
frozen record with three methods: ``plan()``, ``run_shard(shard)`` and
``finish(plan, results)``. :func:`run_job` is the one sequence both engines use; only the
runner that executes the shards differs: :func:`local_runner` (a thread pool in this
process, no API to start) or the Prefect flows' runner (one task run per shard). The job
record and a :class:`~pixarc.plan.Shard` are all a task receives.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from typing import Any, Callable, Protocol, Sequence

from . import progress, runstats
from .archive import ArchiveJob, ArchiveSummary, ArchiveTotals, cached_policy
from .device import check_request
from .errors import PixarcError
from .intake import DEFAULT_MAX_BYTES
from .layout import sweep_leftovers
from .lock import hold
from .plan import Shard, new_run_id, spread
from .recompress import RecompressJob, RecompressSummary
from .restore import RestoreJob, RestoreSummary, RestoreTotals
from .verify import VerifyJob, VerifySummary, VerifyTotals

log = logging.getLogger("pixarc.runs")

JOBS = ("archive", "restore", "verify", "recompress")
Job = ArchiveJob | RestoreJob | VerifyJob | RecompressJob


class ProblemsFound(PixarcError):
    """A verify or restore run found problems: the Prefect flow run ends Failed with this
    exception, which carries the run's summary (``.summary``) for the caller."""

    reason = "problems_found"

    def __init__(self, message: str, summary: Any):
        super().__init__(message, summary)  # both in args: the exception pickles whole
        self.summary = summary

    def __str__(self) -> str:
        return str(self.args[0])


class ShardRunner(Protocol):
    def __call__(self, job: Job, shards: list[Shard]) -> list[Any]:
        """Run ``job.run_shard`` on every shard; results in shard order."""


def shard_line(job: str, shard: Shard, result: Any) -> str:
    """The one log line a finished shard gets (Prefect run logger, or ``pixarc.runs``)."""
    if isinstance(result, ArchiveTotals):
        text = (f"{result.images} image(s): {result.done} done, {result.rejected} rejected, {result.errors} errors, "
                f"{result.failed} failed; {result.source_bytes} -> {result.archive_bytes} bytes "
                f"in {result.seconds:.1f} s")
    elif isinstance(result, (RestoreTotals, VerifyTotals)):
        text = f"{shard.count} item(s): {result.done} ok, {len(result.problems)} problem(s)"
        if result.problems:
            text += " (" + ", ".join(f"{p.key}: {p.problem}" for p in result.problems[:5]) + \
                    (", ..." if len(result.problems) > 5 else "") + ")"
    else:  # recompress
        todo = sum(d.action == "recompress" for d in result.decisions)
        text = f"{len(result.decisions)} row(s): {todo} to re-encode"
    return f"{job} shard {shard.index}: {text}"


def shard_bytes(result: Any) -> int:
    """Bytes a finished shard read (archive) or wrote (restore), for the MB/s column."""
    if isinstance(result, ArchiveTotals):
        return result.source_bytes
    return getattr(result, "bytes_written", 0)


def local_runner(workers: int = 2) -> ShardRunner:
    """Shards on a thread pool of ``workers`` in this process (codecs release the GIL)."""

    def run(job: Job, shards: list[Shard]) -> list[Any]:  # noqa: D401
        results: dict[int, Any] = {}
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix=f"pixarc-{job.name}") as pool:
            futures = {pool.submit(job.run_shard, s): s for s in shards}
            for f in as_completed(futures):
                shard = futures[f]
                results[shard.index] = f.result()
                log.info(shard_line(job.name, shard, results[shard.index]))
                progress.shard_done(job.run_id, shard.count, shard_bytes(results[shard.index]))
        return [results[s.index] for s in shards]

    run.engine = "local"  # type: ignore[attr-defined]
    return run


def _engine_of(run: ShardRunner) -> str:
    return getattr(run, "engine", "local")


def run_job(job: Job, run: ShardRunner, workers: int = 1, wait: float = 0.0) -> Any:
    """Plan, run every shard, finish. A job that writes DEST holds its one-writer lease
    for the whole run (waiting up to ``wait`` seconds for another writer)."""
    if not job.writes:
        plan = job.plan()
        plan.shards = spread(job.base, job.name, job.run_id, plan.shards, workers)
        return job.finish(plan, run(job, plan.shards))
    label = "recompress --apply" if job.name == "recompress" else job.name
    with hold(job.dest, label, wait) as lease:
        swept = sweep_leftovers(job.dest, 2 * lease.ttl)
        if swept.temporaries or swept.uncommitted_parts:
            log.info(f"removed {len(swept.temporaries)} temporary file(s) and {len(swept.uncommitted_parts)} "
                     f"uncommitted manifest part(s) left by killed runs")
        job = dataclasses.replace(job, lease=lease.token)
        plan = job.plan()
        plan.shards = spread(job.base, job.name, job.run_id, plan.shards, workers)
        return job.finish(plan, run(job, plan.shards))


# --------------------------------------------------------------------------- the jobs


def archive_job(run: ShardRunner, src: str, dest: str, policy: str | None = None, shard_size: int = 256,
                run_id: str | None = None, device: str = "auto", batch_size: int = 16,
                follow_symlinks: bool = False, workers: int = 1, include: Sequence[str] = (),
                exclude: Sequence[str] = (), limit: int | None = None, wait: float = 0.0,
                max_bytes: int = DEFAULT_MAX_BYTES) -> ArchiveSummary:
    """Crawl ``src``, archive what is new or changed into ``dest``."""
    job = ArchiveJob(src, dest, run_id or new_run_id(), policy, check_request(device), batch_size, max_bytes,
                     shard_size, follow_symlinks, tuple(include), tuple(exclude), limit)
    started, t0 = runstats.now(), time.perf_counter()
    pol = cached_policy(policy)  # fail fast on a bad policy, before taking the lease
    summary = run_job(job, run, workers, wait)
    seconds = time.perf_counter() - t0
    # A run's time is its wall-clock time; the shards' times added up count parallel work twice.
    summary.totals.seconds = round(seconds, 3)
    runstats.write(dest, runstats.record(
        "archive", job.run_id, dest, started, seconds, engine=_engine_of(run), workers=workers, src=src,
        policy=pol.name, policy_source=policy or "default", include=list(include), exclude=list(exclude),
        limit=limit, device=device, **runstats.archive_fields(summary, seconds)))
    return summary


def restore_job(run: ShardRunner, dest: str, out: str, pattern: str = "*", domain: str | None = None,
                shard_size: int = 256, run_id: str | None = None, workers: int = 1, version: int | None = None,
                as_of: "str | datetime | None" = None, overwrite: bool = False, device: str = "cpu") -> RestoreSummary:
    """Decode every archived image matching the filters into ``out`` (the current versions,
    or those of ``as_of`` (ISO time) or the ``version``-th)."""
    if isinstance(as_of, datetime):
        as_of = as_of.isoformat()
    job = RestoreJob(dest, out, run_id or new_run_id(), pattern, domain, version, as_of, overwrite,
                     check_request(device), shard_size)
    return run_job(job, run, workers)


def verify_job(run: ShardRunner, dest: str, full: bool = False, shard_size: int = 1024, run_id: str | None = None,
               sources: bool = False, workers: int = 1, device: str = "cpu", record: bool = False) -> VerifySummary:
    """Check the archive; it writes nothing into DEST (a read-only or full archive is checked
    as well) unless ``record``: then its outcome joins DEST's run records (``pixarc report``
    shows the last one; scheduled verifies record theirs)."""
    job = VerifyJob(dest, run_id or new_run_id(), full, sources, check_request(device), shard_size)
    started, t0 = runstats.now(), time.perf_counter()
    summary = run_job(job, run, workers)
    if record:
        runstats.write(dest, runstats.record("verify", job.run_id, dest, started, time.perf_counter() - t0,
                                             engine=_engine_of(run), workers=workers, full=full, sources=sources,
                                             device=device, **runstats.check_fields(summary)))
    return summary


def recompress_job(run: ShardRunner, dest: str, policy: str | None = None, min_saving: float = 0.1,
                   apply: bool = False, shard_size: int = 256, run_id: str | None = None, workers: int = 1,
                   wait: float = 0.0, device: str = "cpu") -> list[RecompressSummary]:
    job = RecompressJob(dest, run_id or new_run_id(), policy, min_saving, apply, check_request(device), shard_size)
    started, t0 = runstats.now(), time.perf_counter()
    pol = cached_policy(policy)
    results = run_job(job, run, workers, wait)
    todo = [d for r in results for d in r.decisions if d.action == "recompress"]
    runstats.write(dest, runstats.record(
        "recompress", job.run_id, dest, started, time.perf_counter() - t0, engine=_engine_of(run), workers=workers,
        policy=pol.name, apply=apply, min_saving=min_saving, device=device,
        rows=sum(len(r.decisions) for r in results), to_recompress=len(todo),
        bytes_before=sum(d.old_bytes for d in todo), bytes_after=sum(d.new_bytes for d in todo)))
    return results


# The local engine's equivalent of each flow, by flow name (the CLI runs one or the other).
LOCAL_JOBS: dict[str, Callable[..., Any]] = {
    "pixarc-archive": archive_job,
    "pixarc-restore": restore_job,
    "pixarc-verify": verify_job,
    "pixarc-recompress": recompress_job,
}


# In-process shortcuts (embedding, tests, benchmarks): the same jobs on a one-thread local runner.
def archive_local(src: str, dest: str, **kw: Any) -> ArchiveSummary:
    return archive_job(local_runner(1), src, dest, **kw)


def restore_local(dest: str, out: str, **kw: Any) -> RestoreSummary:
    return restore_job(local_runner(1), dest, out, **kw)


def verify_local(dest: str, **kw: Any) -> VerifySummary:
    return verify_job(local_runner(1), dest, **kw)


def recompress_local(dest: str, **kw: Any) -> list[RecompressSummary]:
    return recompress_job(local_runner(1), dest, **kw)


# --------------------------------------------------------------------------- engine choice, logging


def prefect_api_configured() -> bool:
    """Whether Prefect would talk to a server rather than start a temporary one: read
    cheaply (no Prefect import) from PREFECT_API_URL, the active profile, or ./prefect.toml."""
    import os
    import tomllib
    from pathlib import Path

    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    if active and data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"):
        return True
    try:
        return bool(tomllib.loads(Path("prefect.toml").read_text()).get("api", {}).get("url"))
    except (OSError, tomllib.TOMLDecodeError):
        return False


from .logs import configure_logging  # noqa: E402,F401  (its home; kept importable from here)
