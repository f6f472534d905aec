"""Prefect flows. One task per shard; tasks receive shard URIs and small config records.

Run locally with no server: Prefect starts a temporary local API for the run (the
default when ``PREFECT_API_URL`` is unset). Point ``PREFECT_API_URL`` at a server to
see runs in its UI, or serve these flows as deployments on a work pool.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pixarc import engine
from pixarc.engine import ArchiveConfig, RunSummary, Shard, ShardSummary
from pixarc.lock import hold


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


def gpu_slot(cfg: ArchiveConfig):
    """A Prefect concurrency slot on this host's GPUs for shards that use one; CPU-only
    shards take none (and never import torch to find out)."""
    import contextlib

    if not engine.uses_gpu(cfg, engine.default_registry()):
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    name = gpu_limit_name()
    _ensure_limit(name, max(1, engine.gpu_count()))
    return concurrency(name, occupy=1, strict=True)


@task(name="archive-shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def archive_shard_task(shard: Shard, cfg: ArchiveConfig) -> ShardSummary:
    with gpu_slot(cfg):
        return engine.archive_shard(shard, cfg)


@task(name="restore-shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def restore_shard_task(shard: Shard, out: str, run_id: str, overwrite: bool = False) -> engine.CheckSummary:
    return engine.restore_shard(shard, out, run_id, overwrite=overwrite)


@task(name="verify-shard", cache_policy=NO_CACHE)
def verify_shard_task(shard: Shard, full: bool, run_id: str, sources: bool = False) -> engine.CheckSummary:
    return engine.verify_shard(shard, full, run_id, sources=sources)


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
    wait: float = 0.0,
    max_bytes: int = engine.DEFAULT_MAX_BYTES,
) -> RunSummary:
    """Crawl ``src``, archive what is new or changed into ``dest``, one task per shard."""
    run_id = run_id or engine.new_run_id()
    engine._policy(policy)  # fail fast on a bad policy, before any shard starts
    with hold(dest, "archive", wait) as lease:  # one writer per DEST
        plan = engine.plan_archive(src, dest, run_id, shard_size, follow_symlinks)
        cfg = ArchiveConfig(dest=dest, run_id=run_id, policy=policy, device=device, batch_size=batch_size,
                            lease=lease.token, max_bytes=max_bytes)
        futures = [archive_shard_task.submit(s, cfg) for s in plan.shards]
        summary = engine.summarise_run(plan, [f.result() for f in futures])
        engine.drop_plan(dest, "archive", run_id)  # kept when a shard raised, for inspection
    publish_summary(dest, summary)
    return summary


def publish_summary(dest: str, summary: RunSummary) -> None:
    """A markdown artifact on the flow run: what this run did and the archive's state."""
    from prefect.artifacts import create_markdown_artifact

    from pixarc.report import markdown_table, summarise

    groups, statuses = summarise(engine.current_rows(dest, status=None))
    t = summary.totals
    text = (f"# pixarc archive run `{summary.run_id}`\n\n`{dest}`: {summary.found} found, "
            f"{summary.skipped} already archived, {t.done} done, {t.rejected} rejected, {t.errors} errors, "
            f"{t.failed} failed.\n\n## Archive now\n\n" + markdown_table(groups, statuses))
    create_markdown_artifact(markdown=text, key="pixarc-archive-summary", description="pixarc archive summary")


@flow(name="pixarc-restore", task_runner=ThreadPoolTaskRunner(max_workers=2))
def restore_flow(
    dest: str, out: str, pattern: str = "*", domain: str | None = None, shard_size: int = 256,
    run_id: str | None = None, version: int | None = None, as_of: str | None = None, overwrite: bool = False,
) -> RunSummary:
    """Decode, check and write every archived image matching ``pattern``/``domain`` under ``out``
    (the current versions, or those of ``as_of`` (ISO time) or the ``version``-th); files
    already in ``out`` are kept unless ``overwrite``."""
    run_id = run_id or engine.new_run_id()
    when = engine.parse_as_of(as_of) if as_of else None
    found, shards = engine.plan_restore(dest, out, run_id, pattern, domain, shard_size, version, when)
    futures = [restore_shard_task.submit(s, out, run_id, overwrite) for s in shards]
    summary = engine.finish_checks(out, "restore", run_id, found, shards, [f.result() for f in futures])
    summary.problems[:0] = engine.manifest_problems(dest)  # damaged parts: their rows were left out
    return summary


@flow(name="pixarc-verify", task_runner=ThreadPoolTaskRunner(max_workers=2))
def verify_flow(
    dest: str, full: bool = False, shard_size: int = 1024, run_id: str | None = None, sources: bool = False
) -> RunSummary:
    """Fixity check of the archive's current rows (fast: presence and size; full: re-decode;
    sources: re-hash the originals too)."""
    run_id = run_id or engine.new_run_id()
    found, shards = engine.plan_verify(dest, run_id, shard_size)
    futures = [verify_shard_task.submit(s, full, run_id, sources) for s in shards]
    summary = engine.finish_checks(dest, "verify", run_id, found, shards, [f.result() for f in futures])
    summary.problems[:0] = engine.manifest_problems(dest)  # damaged parts (their rows were left out)
    return summary
