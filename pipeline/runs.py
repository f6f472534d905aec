"""The job bodies both engines run: plan shards, execute them, total the results.

The Prefect flows (``pixarc.flows``) call these with a runner that submits one task per
shard to the flow's task runner; the local engine calls them with a thread pool in this
process (no API to start: small jobs begin at once). Planning, shard functions, totals
and clean-up are the same code on both paths; only how a shard gets executed differs.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Protocol, Sequence

from . import engine, progress, runstats
from .engine import ArchiveConfig, CheckSummary, RunSummary, Shard, ShardSummary
from .errors import PixarcError

log = logging.getLogger("pixarc.runs")

JOBS = ("archive", "restore", "verify", "recompress")


class ProblemsFound(PixarcError):
    """A verify or restore run found problems: the Prefect flow run ends Failed with this
    exception, which carries the run's summary (``.summary``) for the caller."""

    reason = "problems_found"

    def __init__(self, message: str, summary: RunSummary):
        super().__init__(message, summary)  # both in args: the exception pickles whole
        self.summary = summary

    def __str__(self) -> str:
        return str(self.args[0])


class ShardRunner(Protocol):
    def __call__(self, job: str, run_id: str, shards: list[Shard], *args: Any) -> list[Any]:
        """Run ``job``'s shard function on every shard; results in shard order."""


def shard_function(job: str) -> Callable[..., Any]:
    """The engine function one shard of ``job`` runs, with the task's signature."""
    if job == "archive":
        return engine.archive_shard
    if job == "restore":
        return engine.restore_shard
    if job == "verify":
        return lambda shard, full, run_id, sources=False: engine.verify_shard(shard, full, run_id, sources=sources)
    if job == "recompress":
        from .recompress import recompress_shard

        return recompress_shard
    raise ValueError(f"unknown job {job!r}; one of {JOBS}")


def shard_line(job: str, shard: Shard, result: Any) -> str:
    """The one log line a finished shard gets (Prefect run logger, or ``pixarc.runs``)."""
    if isinstance(result, ShardSummary):
        text = (f"{result.images} image(s): {result.done} done, {result.rejected} rejected, {result.errors} errors, "
                f"{result.failed} failed; {result.source_bytes} -> {result.archive_bytes} bytes "
                f"in {result.seconds:.1f} s")
    elif isinstance(result, CheckSummary):
        text = f"{shard.count} item(s): {result.ok} ok, {len(result.problems)} problem(s)"
        if result.problems:
            text += " (" + ", ".join(f"{p.key}: {p.problem}" for p in result.problems[:5]) + \
                    (", ..." if len(result.problems) > 5 else "") + ")"
    else:  # recompress
        decisions = getattr(result, "decisions", [])
        todo = sum(d.action == "recompress" for d in decisions)
        text = f"{len(decisions)} row(s): {todo} to re-encode"
    return f"{job} shard {shard.index}: {text}"


def shard_bytes(result: Any) -> int:
    """Bytes a finished shard read (archive) or wrote (restore), for the MB/s column."""
    if isinstance(result, ShardSummary):
        return result.source_bytes
    return getattr(result, "bytes_written", 0)


def local_runner(workers: int = 2) -> ShardRunner:
    """Shards on a thread pool of ``workers`` in this process (codecs release the GIL)."""

    def run(job: str, run_id: str, shards: list[Shard], *args: Any) -> list[Any]:  # noqa: D401
        fn = shard_function(job)
        results: dict[int, Any] = {}
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix=f"pixarc-{job}") as pool:
            futures = {pool.submit(fn, s, *args): s for s in shards}
            for f in as_completed(futures):
                shard = futures[f]
                results[shard.index] = f.result()
                log.info(shard_line(job, shard, results[shard.index]))
                progress.shard_done(run_id, shard.count, shard_bytes(results[shard.index]))
        return [results[s.index] for s in shards]

    run.engine = "local"  # type: ignore[attr-defined]
    return run


def _engine_of(run: ShardRunner) -> str:
    return getattr(run, "engine", "local")


def spread(base: str, kind: str, run_id: str, shards: list[Shard], workers: int) -> list[Shard]:
    """A job smaller than ``workers`` shards is re-cut into ``workers`` even shards, so
    ``--workers 2`` on 40 images uses two workers instead of one 256-image shard."""
    total = sum(s.count for s in shards)
    if workers <= 1 or len(shards) >= workers or total < 2:
        return shards
    items = [item for s in shards for item in engine.load_shard(s)]
    # Same file names from shard 0 up: every old shard file is overwritten (more, smaller shards).
    return engine._write_plan(base, run_id, kind, items, math.ceil(total / min(workers, total)))[0]


# --------------------------------------------------------------------------- the jobs


def key_filter(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Callable[[str], bool] | None:
    """``--include/--exclude`` globs on keys (``*`` crosses ``/``): a key is taken when it
    matches some include (or none are given) and no exclude."""
    if not include and not exclude:
        return None
    return lambda key: (not include or any(fnmatch.fnmatch(key, g) for g in include)) and not any(
        fnmatch.fnmatch(key, g) for g in exclude)


def archive_job(run: ShardRunner, src: str, dest: str, policy: str | None = None, shard_size: int = 256,
                run_id: str | None = None, device: str = "auto", batch_size: int = 16,
                follow_symlinks: bool = False, workers: int = 1, include: Sequence[str] = (),
                exclude: Sequence[str] = (), limit: int | None = None) -> RunSummary:
    """Crawl ``src``, archive what is new or changed into ``dest``, one shard function per shard."""
    run_id = run_id or engine.new_run_id()
    started, t0 = runstats.now(), time.perf_counter()
    pol = engine._policy(policy)  # fail fast on a bad policy, before any shard starts
    plan = engine.plan_archive(src, dest, run_id, shard_size, follow_symlinks, key_filter(include, exclude), limit)
    plan.shards = spread(dest, "archive", run_id, plan.shards, workers)
    cfg = ArchiveConfig(dest=dest, run_id=run_id, policy=policy, device=device, batch_size=batch_size)
    summary = engine.summarise_run(plan, run("archive", run_id, plan.shards, cfg))
    engine.drop_plan(dest, "archive", run_id)  # kept when a shard raised, for inspection
    seconds = time.perf_counter() - t0
    runstats.write(dest, runstats.record(
        "archive", run_id, dest, started, seconds, engine=_engine_of(run), workers=workers, src=src,
        policy=pol.name, policy_source=policy or "default", include=list(include), exclude=list(exclude),
        limit=limit, **runstats.archive_fields(summary, seconds)))
    return summary


def restore_job(run: ShardRunner, dest: str, out: str, pattern: str = "*", domain: str | None = None,
                shard_size: int = 256, run_id: str | None = None, workers: int = 1) -> RunSummary:
    run_id = run_id or engine.new_run_id()
    found, shards = engine.plan_restore(dest, out, run_id, pattern, domain, shard_size)
    shards = spread(out, "restore", run_id, shards, workers)
    return engine.finish_checks(out, "restore", run_id, found, shards, run("restore", run_id, shards, out, run_id))


def verify_job(run: ShardRunner, dest: str, full: bool = False, shard_size: int = 1024, run_id: str | None = None,
               sources: bool = False, workers: int = 1) -> RunSummary:
    run_id = run_id or engine.new_run_id()
    started, t0 = runstats.now(), time.perf_counter()
    found, shards = engine.plan_verify(dest, run_id, shard_size)
    shards = spread(dest, "verify", run_id, shards, workers)
    results = run("verify", run_id, shards, full, run_id, sources)
    summary = engine.finish_checks(dest, "verify", run_id, found, shards, results)
    runstats.write(dest, runstats.record("verify", run_id, dest, started, time.perf_counter() - t0,
                                         engine=_engine_of(run), workers=workers, full=full, sources=sources,
                                         **runstats.check_fields(summary)))
    return summary


def recompress_job(run: ShardRunner, dest: str, policy: str | None = None, min_saving: float = 0.1,
                   apply: bool = False, shard_size: int = 256, run_id: str | None = None, workers: int = 1) -> list:
    from . import recompress

    run_id = run_id or engine.new_run_id()
    started, t0 = runstats.now(), time.perf_counter()
    pol = engine._policy(policy)
    cfg = recompress.RecompressConfig(dest, run_id, policy, min_saving, apply)
    shards = spread(dest, "recompress", run_id, recompress.plan_recompress(dest, run_id, shard_size), workers)
    results = run("recompress", run_id, shards, cfg)
    engine.drop_plan(dest, "recompress", run_id)
    todo = [d for r in results for d in r.decisions if d.action == "recompress"]
    runstats.write(dest, runstats.record(
        "recompress", run_id, dest, started, time.perf_counter() - t0, engine=_engine_of(run), workers=workers,
        policy=pol.name, apply=apply, min_saving=min_saving, rows=sum(len(r.decisions) for r in results),
        to_recompress=len(todo), bytes_before=sum(d.old_bytes for d in todo),
        bytes_after=sum(d.new_bytes for d in todo)))
    return results


# The local engine's equivalent of each flow, by flow name (the CLI runs one or the other).
LOCAL_JOBS: dict[str, Callable[..., Any]] = {
    "pixarc-archive": archive_job,
    "pixarc-restore": restore_job,
    "pixarc-verify": verify_job,
    "pixarc-recompress": recompress_job,
}


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


def configure_logging(level: str, console: Any = None) -> None:
    """``--log-level``: pixarc's loggers (one line per shard at INFO) to stderr, and the same
    level for Prefect's console handler (its run loggers still send INFO to the API)."""
    import os

    level = level.upper()
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    logger = logging.getLogger("pixarc")
    logger.setLevel(level)
    if not any(getattr(h, "_pixarc", False) for h in logger.handlers):
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
        handler._pixarc = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
