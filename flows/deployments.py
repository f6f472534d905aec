"""Deployments: the flows on a schedule, served by ``pixarc serve`` (or any Prefect worker).

``pixarc serve DEST --verify-cron "0 3 * * 0"`` keeps a process running that executes
the scheduled runs; with ``PREFECT_API_URL`` pointing at a Prefect server they appear in
its UI and can also be triggered from there or with ``prefect deployment run``. For a
fleet, register the same flows on a work pool (``prefect deploy``) and run
``prefect worker start --pool NAME`` on each host instead.

Every deployment of a DEST has a concurrency limit of one: two archive runs, or two
recompress runs, never write the same DEST at once. A run that comes due while the
previous one is still running is skipped (Cancelled, "Deployment concurrency limit
reached."), not queued: Prefect re-schedules queued runs each at "now + a wait", so a
backlog ran out of order (03:36 after 03:37 and 03:38). Each run does all the work there
is, so the next one due catches up on what a skipped one would have done.
"""

from __future__ import annotations

import re

from .jobs import archive_flow, recompress_flow, verify_flow


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[-60:] or "archive"


def _one_at_a_time():
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def build_deployments(
    dest: str,
    src: str | None = None,
    archive_cron: str | None = None,
    verify_cron: str | None = "0 3 * * 0",
    full_verify: bool = True,
    policy: str | None = None,
    recompress_cron: str | None = None,
    min_saving: float = 0.1,
    shard_size: int | None = None,
    task_runner=None,
    archive_interval: float | None = None,
) -> list:
    """RunnerDeployment objects for the scheduled jobs of one archive. ``shard_size`` goes
    into each run's parameters; ``task_runner`` (threads or Dask, see ``flows.runners``)
    runs their shard tasks; ``archive_interval`` (seconds) schedules archive runs by
    interval instead of cron."""
    name = _slug(dest)
    sized = {"shard_size": shard_size} if shard_size else {}

    def flow_of(f):
        return f.with_options(task_runner=task_runner) if task_runner is not None else f

    deployments = []
    if verify_cron:
        deployments.append(
            flow_of(verify_flow).to_deployment(
                name=f"verify-{name}", cron=verify_cron, parameters={"dest": dest, "full": full_verify, "record": True, **sized},
                tags=["pixarc", "fixity"], concurrency_limit=_one_at_a_time(),
            )
        )
    if archive_cron or archive_interval or src:
        if not src:
            raise ValueError("an archive schedule needs --src")
        deployments.append(
            flow_of(archive_flow).to_deployment(
                name=f"archive-{name}", cron=archive_cron, interval=archive_interval,
                parameters={"src": src, "dest": dest, "policy": policy, **sized},
                tags=["pixarc", "archive"], concurrency_limit=_one_at_a_time(),
            )
        )
    if recompress_cron:
        deployments.append(
            flow_of(recompress_flow).to_deployment(
                name=f"recompress-{name}", cron=recompress_cron,
                parameters={"dest": dest, "policy": policy, "min_saving": min_saving, "apply": True, **sized},
                tags=["pixarc", "recompress"], concurrency_limit=_one_at_a_time(),
            )
        )
    return deployments
