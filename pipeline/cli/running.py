"""A job run from the command line: the engine (:mod:`pixarc.engine` chooses it), the
progress shown while it runs (a bar on a terminal, plain lines otherwise) and the note
that Prefect is starting a temporary API."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import click

from .. import engine, progress
from ..console import err
from . import jsonout

# Seconds between progress lines when the output is not a terminal (PIXARC_PROGRESS_INTERVAL).
PROGRESS_INTERVAL = 10.0


def starting_prefect() -> None:
    """Say so when Prefect is about to start a temporary API (seconds before any work)."""
    engine.prefect_defaults()
    if not engine.prefect_api_configured():
        err.print("starting Prefect (a temporary local API; set PREFECT_API_URL to use a server, "
                  "or --engine local)…")


def run(job: Any, label: str, show: bool, runner: str, workers: int, address: str | None, wait: float = 0.0) -> Any:
    """Run ``job`` on the engine the command's ``--engine`` asks for, showing progress under
    ``label``; returns its summary."""
    from ..engine import EngineChoiceError

    try:
        choice = engine.choose(click.get_current_context().meta.get("pixarc.engine"), runner)
    except EngineChoiceError as exc:
        raise click.UsageError(str(exc)) from None
    with progress_shown(job.run_id, label, show):
        if choice == "prefect":
            starting_prefect()
        return engine.run(job, choice, runner, workers, address, wait)


def run_on_archive(job_cls: type, dest: str, label: str, show: bool, runner: str, workers: int,
                   address: str | None, wait: float = 0.0, **fields: Any) -> Any:
    """A job over the archive DEST (restore, verify, recompress): refused before any work
    when DEST is not an archive; an error ends the command with its line and exit status."""
    from ..errors import PixarcError
    from ..plan import new_run_id
    from .render import fail, require_archive
    from .root import registry

    engine.prefect_defaults()
    require_archive(dest)
    try:
        job = job_cls(dest, run_id=new_run_id(), registry=registry(), **fields)
        return run(job, label, show, runner, workers, address, wait=wait)
    except (PixarcError, OSError, ValueError) as exc:
        fail(exc)


def _progress_lines() -> bool:
    """Plain progress lines instead of a bar: a bar redrawn in place shows nothing in a log
    file or a pipe until the command ends."""
    return not (sys.stdout.isatty() and err.is_terminal)


@contextlib.contextmanager
def progress_shown(run_id: str, label: str, enabled: bool = True) -> Iterator[None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..progress import LineReporter, Rate

    if enabled and not jsonout.active() and _progress_lines():
        interval = float(os.environ.get("PIXARC_PROGRESS_INTERVAL", PROGRESS_INTERVAL))
        reporter = LineReporter(label, lambda text: print(text, file=sys.stderr, flush=True), interval)
        progress.listen(run_id, reporter.on_event)
        try:
            with reporter:
                yield
        finally:
            progress.forget(run_id)
        return
    rate = Rate()
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled or jsonout.active(),
        transient=False,
    )
    task = bar.add_task(label, total=None, rate="")

    def on_event(event: str, n: int) -> None:
        if event == "total":
            bar.update(task, total=n)
            return
        rate.update(event, n)
        bar.update(task, completed=rate.items, rate=rate.text())

    progress.listen(run_id, on_event)
    try:
        with bar:
            yield
    finally:
        progress.forget(run_id)
