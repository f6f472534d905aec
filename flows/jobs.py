"""Prefect flows. One task per shard; tasks receive shard URIs and small config records.

Each flow makes its job's record (:mod:`pixarc.jobs`) from its parameters, with a registry
of the plugins this process's environment allows, and runs it with
:func:`pixarc.runs.run_job`, as the local engine does; here each shard becomes a task run
named ``<job>-shard-<n>`` that logs one line through Prefect's run logger. Verify and
restore runs that find problems end in a ``Failed`` state with a problems artifact;
artifact keys are per DEST.

Run with no server configured and Prefect starts a temporary local API for the run.
Point ``PREFECT_API_URL`` at a server to see runs in its UI, or serve these flows as
deployments on a work pool.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pixarc import device as devices
from pixarc import progress, remedy, runs
from pixarc.archive import ArchiveJob, ArchiveSummary
from pixarc.intake import DEFAULT_MAX_BYTES
from pixarc.jobs import Job, ShardResult, shard_line
from pixarc.plan import Shard, new_run_id
from pixarc.recompress import RecompressJob, RecompressSummary
from pixarc.restore import RestoreJob, RestoreSummary
from pixarc.state import current_rows
from pixarc.verify import VerifyJob, VerifySummary


GPU_LIMIT_PREFIX = "pixarc-gpu-"


def gpu_limit_name() -> str:
    import socket

    return GPU_LIMIT_PREFIX + socket.gethostname()


def _ensure_limit(name: str, slots: int) -> None:
    """Create the per-host GPU concurrency limit (slots = GPUs) if it does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # another task created it first
                pass


def gpu_slot(job: Job):
    """A Prefect concurrency slot on this host's GPUs for shards that use one; CPU-only
    shards take none (and never import torch to find out)."""
    import contextlib

    if not job.uses_gpu():
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    name = gpu_limit_name()
    _ensure_limit(name, max(1, devices.gpu_count()))
    return concurrency(name, occupy=1, strict=True)


def dest_key(dest: str) -> str:
    """A per-DEST suffix for artifact keys (lowercase, digits, dashes): the readable tail
    of the URL plus a hash, so two DESTs never share a key."""
    tail = re.sub(r"[^a-z0-9]+", "-", dest.lower()).strip("-")[-40:].strip("-") or "archive"
    return f"{tail}-{hashlib.sha256(dest.encode()).hexdigest()[:8]}"


@task(name="run-shard", task_run_name="{job.name}-shard-{shard.index}", cache_policy=NO_CACHE)
def shard_task(job: Job, shard: Shard) -> ShardResult:
    """One shard of any job: the job record and the shard's URI are all it receives."""
    with gpu_slot(job):
        result = job.run_shard(shard)
    get_run_logger().info(shard_line(job.name, shard, result))
    return result


def prefect_runner(job: Job, shards: list[Shard]) -> list[ShardResult]:
    """One task run per shard on the flow's task runner; progress moves as shards finish
    (the only progress signal when they run in other processes, e.g. Dask workers)."""
    from prefect.futures import as_completed

    task_ = shard_task.with_options(retries=job.retries, retry_delay_seconds=1) if job.retries else shard_task
    futures = {task_.submit(job, s): s for s in shards}
    results: dict[int, ShardResult] = {}
    for f in as_completed(list(futures)):
        shard = futures[f]
        results[shard.index] = f.result()
        progress.shard_done(job.run_id, shard.count, results[shard.index].bytes_moved)
    return [results[s.index] for s in shards]


prefect_runner.engine = "prefect"  # type: ignore[attr-defined]  (recorded in the run's stats)


def flow_workers() -> int:
    """How many shards the current flow's task runner runs at once (for :func:`runs.spread`)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    if getattr(runner, "_max_workers", None):
        return int(runner._max_workers)
    kwargs = getattr(runner, "cluster_kwargs", None) or {}
    return int(kwargs.get("n_workers") or 1)


@flow(name="pixarc-archive", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def archive_flow(
    src: str,
    dest: str,
    policy: str | None = None,
    shard_size: int = 256,
    run_id: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
    follow_symlinks: bool = False,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    limit: int | None = None,
    wait: float = 0.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ArchiveSummary:
    """Crawl ``src``, archive what is new or changed into ``dest``, one task per shard."""
    job = ArchiveJob(src, dest, run_id or new_run_id(), policy=policy, device=device, batch_size=batch_size,
                     max_bytes=max_bytes, shard_size=shard_size, follow_symlinks=follow_symlinks,
                     include=tuple(include or ()), exclude=tuple(exclude or ()), limit=limit)
    summary = runs.run_job(job, prefect_runner, flow_workers(), wait)
    publish_summary(dest, summary)
    return summary


def publish_summary(dest: str, summary: ArchiveSummary) -> None:
    """A markdown artifact on the flow run: what this run did and the archive's state."""
    from prefect.artifacts import create_markdown_artifact

    from pixarc.report import markdown_table, summarise

    groups, statuses = summarise(current_rows(dest, status=None))
    t = summary.totals
    text = (f"# pixarc archive run `{summary.run_id}`\n\n`{dest}`: {summary.found} found, "
            f"{summary.skipped} already archived, {t.done} done, {t.rejected} rejected, {t.errors} errors, "
            f"{t.failed} failed.\n\n## Archive now\n\n" + markdown_table(groups, statuses))
    create_markdown_artifact(markdown=text, key=f"pixarc-archive-{dest_key(dest)}",
                             description=f"pixarc archive summary of {dest}")


def problems_markdown(kind: str, dest: str, where: str, summary: RestoreSummary | VerifySummary) -> str:
    """The problems artifact: DEST as an absolute URI, what to run next, then each problem."""
    dest_uri = remedy.absolute_uri(dest)
    lines = [f"# pixarc {kind} run `{summary.run_id}`: {len(summary.problems)} problem(s)", "",
             f"Archive `{dest_uri}`" + (f", restoring into `{remedy.absolute_uri(where)}`" if where != dest else "")
             + f": {summary.totals.done} of {summary.found} OK.", "",
             f"**Next:** `{remedy.next_step(summary.problems, dest)}`", "",
             "| key | problem | detail |", "| --- | --- | --- |"]
    for p in summary.problems:
        lines.append(f"| {p.key} | {p.problem} | {p.detail.replace('|', '/')} |")
    return "\n".join(lines)


def _checked(kind: str, dest: str, where: str, summary: Any) -> Any:
    """The summary; when the run found problems, a problems artifact and a Failed state
    carrying ``ProblemsFound`` (with the summary): the operator sees red in the UI, callers
    (the CLI) still get the summary, and no traceback is logged, since nothing crashed:
    the run did its job and found damage."""
    if not summary.problems:
        return summary
    from prefect.artifacts import create_markdown_artifact
    from prefect.states import Failed

    create_markdown_artifact(markdown=problems_markdown(kind, dest, where, summary),
                             key=f"pixarc-{kind}-problems-{dest_key(dest)}",
                             description=f"pixarc {kind} problems in {remedy.absolute_uri(dest)}")
    message = (f"{len(summary.problems)} problem(s) in {summary.found} item(s) of {remedy.absolute_uri(dest)}; "
               f"next: {remedy.next_step(summary.problems, dest)}")
    get_run_logger().error(f"{kind}: {message}")
    return Failed(message=message, data=runs.ProblemsFound(message, summary))


@flow(name="pixarc-restore", task_runner=ThreadPoolTaskRunner(max_workers=2))
def restore_flow(
    dest: str, out: str, pattern: str = "*", domain: str | None = None, shard_size: int = 256,
    run_id: str | None = None, version: int | None = None, as_of: str | None = None, overwrite: bool = False,
    device: str = "cpu",
) -> RestoreSummary:
    """Decode, check and write every archived image matching ``pattern``/``domain`` under ``out``
    (the current versions, or those of ``as_of`` (ISO time) or the ``version``-th); files
    already in ``out`` are kept unless ``overwrite``."""
    job = RestoreJob(dest, out, run_id or new_run_id(), pattern=pattern, domain=domain, version=version, as_of=as_of,
                     overwrite=overwrite, device=device, shard_size=shard_size)
    return _checked("restore", dest, out, runs.run_job(job, prefect_runner, flow_workers()))


@flow(name="pixarc-verify", task_runner=ThreadPoolTaskRunner(max_workers=2))
def verify_flow(
    dest: str, full: bool = False, shard_size: int = 1024, run_id: str | None = None, sources: bool = False,
    device: str = "cpu", record: bool = False,
) -> VerifySummary:
    """Fixity check of the archive's current rows (fast: presence and size; full: re-decode;
    sources: re-hash the originals too). Problems end the run in a Failed state. Writes
    nothing into DEST unless ``record`` (the scheduled verify records its outcome)."""
    job = VerifyJob(dest, run_id or new_run_id(), full=full, sources=sources, device=device, shard_size=shard_size,
                    record=record)
    return _checked("verify", dest, dest, runs.run_job(job, prefect_runner, flow_workers()))


@flow(name="pixarc-recompress", task_runner=ThreadPoolTaskRunner(max_workers=2))
def recompress_flow(
    dest: str, policy: str | None = None, min_saving: float = 0.1, apply: bool = False, shard_size: int = 256,
    run_id: str | None = None, wait: float = 0.0, device: str = "cpu",
) -> RecompressSummary:
    """Re-encode outdated rows and rows the current policy stores ``min_saving`` smaller."""
    job = RecompressJob(dest, run_id or new_run_id(), policy=policy, min_saving=min_saving, apply=apply, device=device,
                        shard_size=shard_size)
    return runs.run_job(job, prefect_runner, flow_workers(), wait)
