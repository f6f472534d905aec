"""Running jobs: plan -> run every shard -> finish, on either engine.

A job (:mod:`pixarc.jobs`: :class:`~pixarc.archive.ArchiveJob`,
:class:`~pixarc.restore.RestoreJob`, :class:`~pixarc.verify.VerifyJob`,
:class:`~pixarc.recompress.RecompressJob`) is a small frozen record with ``plan()``,
``run_shard(shard)`` and ``finish(plan, results)``. :func:`run_job` is the one sequence both
engines use; only the runner that executes the shards differs: :func:`local_runner` (a
thread pool in this process, no API to start) or the Prefect flows' runner (one task run
per shard). The job record and a :class:`~pixarc.plan.Shard` are all a task receives.
Which engine runs a command is chosen in one place, :mod:`pixarc.engine`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from . import progress, runstats
from .errors import PixarcError
from .jobs import Job, ShardResult, Summary, shard_line
from .layout import sweep_leftovers
from .lock import hold
from .plan import SHARDS_PER_WORKER, Shard, new_run_id, spread

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveSummary
    from .recompress import RecompressSummary
    from .restore import RestoreSummary
    from .verify import VerifySummary

log = logging.getLogger("pixarc.runs")


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
    engine: str  # recorded in the run's statistics

    def __call__(self, job: Job, shards: list[Shard]) -> list[ShardResult]:
        """Run ``job.run_shard`` on every shard; results in shard order."""


class LocalRunner:
    """Shards on a thread pool of ``workers`` in this process (codecs release the GIL)."""

    engine = "local"

    def __init__(self, workers: int = 2):
        self.workers = workers

    def __call__(self, job: Job, shards: list[Shard]) -> list[ShardResult]:
        results: dict[int, ShardResult] = {}
        with ThreadPoolExecutor(max(1, self.workers), thread_name_prefix=f"pixarc-{job.name}") as pool:
            futures = {pool.submit(job.run_shard, s): s for s in shards}
            for f in as_completed(futures):
                shard = futures[f]
                results[shard.index] = f.result()
                log.info(shard_line(job.name, shard, results[shard.index]))
                progress.shard_done(job.run_id, shard.count, results[shard.index].bytes_moved)
        return [results[s.index] for s in shards]


def local_runner(workers: int = 2) -> ShardRunner:
    return LocalRunner(workers)


def run_job(job: Job, run: ShardRunner, workers: int = 1, wait: float = 0.0) -> Any:
    """Plan, run every shard, finish; then record the run in DEST's run records when the
    job keeps one (:meth:`~pixarc.jobs.Job.stats`). A job that writes DEST holds its
    one-writer lease for the whole run (waiting up to ``wait`` seconds for another writer)."""
    started, t0 = runstats.now(), time.perf_counter()
    job.check()  # a bad policy fails here, before the lease is taken
    if not job.writes:
        summary = _plan_run_finish(job, run, workers)
    else:
        with hold(job.dest, job.holder, wait) as lease:
            swept = sweep_leftovers(job.dest, 2 * lease.ttl)
            if swept.temporaries or swept.uncommitted_parts:
                log.info(f"removed {len(swept.temporaries)} temporary file(s) and {len(swept.uncommitted_parts)} "
                         f"uncommitted manifest part(s) left by killed runs")
            summary = _plan_run_finish(dataclasses.replace(job, lease=lease.token), run, workers)
    seconds = time.perf_counter() - t0
    # A run's time is its wall-clock time; the shards' times added up count parallel work twice.
    summary.seconds = round(seconds, 3)
    fields = job.stats(summary)
    if fields is not None:
        runstats.write(job.dest, runstats.record(job.name, job.run_id, job.dest, started, seconds,
                                                 engine=getattr(run, "engine", "local"), workers=workers, **fields))
    return summary


def _plan_run_finish(job: Job, run: ShardRunner, workers: int) -> Summary:
    plan = job.plan()
    if workers > 1:  # GPU shards batch their images: one per worker keeps the batches large
        per_worker = 1 if job.uses_gpu() else SHARDS_PER_WORKER
        plan.shards = spread(job.base, job.name, job.run_id, plan.shards, workers, per_worker)
    return job.finish(plan, run(job, plan.shards))


# --------------------------------------------------------------------------- in-process shortcuts
# Embedding, tests, benchmarks: a job made from keyword arguments (a string ``device`` is
# checked here), run on a local runner of ``workers`` threads. ``registry``: the plugins to
# run with (default: those the environment allows).


def _local(job_cls: type, *args: Any, workers: int = 1, wait: float = 0.0, run_id: str | None = None,
           registry: Any = None, **fields: Any) -> Any:
    if registry is not None:
        fields["registry"] = registry
    return run_job(job_cls(*args, run_id=run_id or new_run_id(), **fields), local_runner(workers), workers, wait)


def archive_local(src: str, dest: str, **kw: Any) -> ArchiveSummary:
    """Crawl ``src``, archive what is new or changed into ``dest``."""
    from .archive import ArchiveJob

    return _local(ArchiveJob, src, dest, **kw)


def restore_local(dest: str, out: str, as_of: str | datetime | None = None, **kw: Any) -> RestoreSummary:
    """Decode every archived image matching the filters into ``out``; ``as_of`` an ISO time
    or a datetime."""
    from .restore import RestoreJob

    return _local(RestoreJob, dest, out, as_of=as_of.isoformat() if isinstance(as_of, datetime) else as_of, **kw)


def verify_local(dest: str, **kw: Any) -> VerifySummary:
    from .verify import VerifyJob

    return _local(VerifyJob, dest, **kw)


def recompress_local(dest: str, **kw: Any) -> RecompressSummary:
    from .recompress import RecompressJob

    return _local(RecompressJob, dest, **kw)
