"""Deployments: the flows on a schedule, served by ``pixarc serve`` (or any Prefect worker).

``pixarc serve DEST --verify-cron "0 3 * * 0"`` keeps a process running that executes
the scheduled runs; with ``PREFECT_API_URL`` pointing at a Prefect server they appear in
its UI and can also be triggered from there or with ``prefect deployment run``. For a
fleet, register the same flows on a work pool (``prefect deploy``) and run
``prefect worker start --pool NAME`` on each host instead.
"""

from __future__ import annotations

import re

from .jobs import archive_flow, verify_flow


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[-60:] or "archive"


def build_deployments(
    dest: str,
    src: str | None = None,
    archive_cron: str | None = None,
    verify_cron: str | None = "0 3 * * 0",
    full_verify: bool = True,
    policy: str | None = None,
    recompress_cron: str | None = None,
    min_saving: float = 0.1,
) -> list:
    """RunnerDeployment objects for the scheduled jobs of one archive."""
    name = _slug(dest)
    deployments = []
    if verify_cron:
        deployments.append(
            verify_flow.to_deployment(
                name=f"verify-{name}", cron=verify_cron, parameters={"dest": dest, "full": full_verify},
                tags=["pixarc", "fixity"],
            )
        )
    if archive_cron or src:
        if not src:
            raise ValueError("an archive schedule needs --src")
        deployments.append(
            archive_flow.to_deployment(
                name=f"archive-{name}", cron=archive_cron, parameters={"src": src, "dest": dest, "policy": policy},
                tags=["pixarc", "archive"],
            )
        )
    if recompress_cron:
        from .recompress import recompress_flow

        deployments.append(
            recompress_flow.to_deployment(
                name=f"recompress-{name}", cron=recompress_cron,
                parameters={"dest": dest, "policy": policy, "min_saving": min_saving, "apply": True},
                tags=["pixarc", "recompress"],
            )
        )
    return deployments
