"""The recompression flow: plan (default) or apply, one task per shard of current rows."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pixarc import engine, recompress
from pixarc.engine import Shard


@task(name="recompress-shard", cache_policy=NO_CACHE)
def recompress_shard_task(shard: Shard, cfg: recompress.RecompressConfig) -> recompress.RecompressSummary:
    return recompress.recompress_shard(shard, cfg)


@flow(name="pixarc-recompress", task_runner=ThreadPoolTaskRunner(max_workers=2))
def recompress_flow(
    dest: str, policy: str | None = None, min_saving: float = 0.1, apply: bool = False, shard_size: int = 256,
    run_id: str | None = None, wait: float = 0.0,
) -> list[recompress.RecompressSummary]:
    """Re-encode outdated rows and rows the current policy stores ``min_saving`` smaller."""
    run_id = run_id or engine.new_run_id()
    engine._policy(policy)
    with recompress.writer_lease(dest, apply, wait) as token:  # --apply: one writer per DEST
        cfg = recompress.RecompressConfig(dest, run_id, policy, min_saving, apply, lease=token)
        shards = recompress.plan_recompress(dest, run_id, shard_size)
        results = [f.result() for f in [recompress_shard_task.submit(s, cfg) for s in shards]]
        engine.drop_plan(dest, "recompress", run_id)
    return results
