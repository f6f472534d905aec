"""Which engine runs a job, chosen in one place: ``local`` (this process, a thread pool; no
API to start) or ``prefect`` (a flow run: a temporary local API unless a server is
configured). ``auto`` is Prefect when a server is configured (or Dask is asked for), else
local. Both run the same job record through :func:`pixarc.runs.run_job`.

Light to import (the CLI's ``--help`` imports it): Prefect, the jobs and the flows load
when a job runs.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InputError

ENGINES = ("auto", "prefect", "local")


def prefect_api_configured() -> bool:
    """Whether Prefect would talk to a server rather than start a temporary one: read
    cheaply (no Prefect import) from PREFECT_API_URL, the active profile, or ./prefect.toml."""
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


def prefect_defaults() -> None:
    """Embedded defaults: no telemetry; run loggers at INFO (the one-line-per-shard logs reach
    the Prefect API and its UI) while the console shows warnings only (``--log-level`` raises
    it); a patient start for the temporary local API on a busy machine."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_ROOT_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


class EngineChoiceError(InputError):
    """An engine and a task runner that do not go together (a usage error)."""

    def __init__(self, message: str):
        super().__init__("usage", message)


def choose(requested: str | None, runner: str) -> str:
    """``local`` or ``prefect`` for a request (``auto``, ``prefect``, ``local``; None: auto)
    and a task runner (``threads``, ``dask``)."""
    requested = requested or "auto"
    if requested == "auto":
        return "prefect" if runner == "dask" or prefect_api_configured() else "local"
    if requested == "local" and runner == "dask":
        raise EngineChoiceError("--runner dask needs the prefect engine")
    return requested


def run(job: Any, engine: str, runner: str = "threads", workers: int = 2, address: str | None = None,
        wait: float = 0.0) -> Any:
    """Run ``job`` (a record of :mod:`pixarc.jobs`) on ``engine`` (``local`` or ``prefect``,
    see :func:`choose`) and return its summary. On Prefect the job's flow runs with the
    record's parameters on a ``runner`` task runner. A flow run that ends Failed because it
    found problems still returns its summary (the caller reports them)."""
    import inspect

    from . import runs

    if engine == "local":
        return runs.run_job(job, runs.local_runner(workers), workers, wait)
    from . import flows
    from .flows.runners import make_task_runner
    from .jobs import parameters

    prefect_defaults()
    flow = flows.flow_for(job.name).with_options(task_runner=make_task_runner(runner, workers, address))
    params = parameters(job)
    if "wait" in inspect.signature(flow.fn).parameters:  # the flows of jobs that write DEST
        params["wait"] = wait
    state = flow(**params, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, runs.ProblemsFound):  # a Failed run that found problems
        return result.summary
    if isinstance(result, BaseException):
        raise result
    return result
