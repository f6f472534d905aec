"""What every command shows and how it ends, in one place: a run's summary (its lines,
tables and ``--json`` fields, :mod:`pixarc.jobs`), problems and the next step, the one
line an error gets, and the exit status (docs/guarantees.md).

Light to import: the CLI's ``--help`` imports this module, not the jobs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

import click
from rich.table import Table

from ..console import console, err, say, styled
from ..errors import PixarcError
from ..jobs import Table as TableData
from ..remedy import INTEGRITY_PROBLEMS, SOURCE_PROBLEMS
from . import jsonout

if TYPE_CHECKING:  # pragma: no cover
    from ..checks import Problem
    from ..jobs import Summary

# Exit status (docs/guarantees.md): what a script can act on.
EXIT_OK = 0  # everything done and verified
EXIT_FAILED = 1  # the run finished, but some objects ended in error (see their rows)
EXIT_USAGE = 2  # bad arguments or policy, not a pixarc archive, missing source
EXIT_INTEGRITY = 3  # the archive is damaged: bitstreams or manifest parts missing, corrupt or altered
EXIT_UNAVAILABLE = 4  # could not run: DEST locked by another writer, disk full, permission denied, missing plugin


# --------------------------------------------------------------------------- summaries and tables


def draw(data: TableData, title_style: str | None = None) -> Table:
    table = Table(title=data.title, title_style=title_style)
    for col in data.columns:
        table.add_column(col)
    for row in data.rows:
        table.add_row(*row)
    return table


def show(summary: Summary) -> None:
    """A run's summary: its ``--json`` fields, then its lines and tables."""
    jsonout.put(**summary.json_fields())
    for part in summary.render():
        if isinstance(part, str):
            say(part)
        else:
            console.print(draw(part))


# --------------------------------------------------------------------------- problems


def problems_exit(problems: Sequence[Problem]) -> int:
    reasons = {p.problem for p in problems}
    if reasons & INTEGRITY_PROBLEMS:
        return EXIT_INTEGRITY
    if reasons and reasons <= {"missing_plugin"}:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED if reasons else EXIT_OK


def print_problems(problems: Sequence[Problem]) -> None:
    if not problems:
        return
    console.print(draw(TableData("problems", ("key", "problem", "detail"),
                                 [(p.key, p.problem, p.detail) for p in problems]), title_style="red"))


def exit_on_problems(problems: Sequence[Problem], dest: str) -> None:
    """Print the problems a run found and what to do next; end with the exit status they call for."""
    print_problems(problems)
    code = problems_exit(problems)
    if code:
        from ..remedy import next_step

        step = next_step(problems, dest)
        err.print(styled(("next:", "bold"), " ", step), soft_wrap=True)
        jsonout.put(next_step=step)
        counts: dict[str, int] = {}
        for p in problems:
            counts[p.problem] = counts.get(p.problem, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        reason = {EXIT_INTEGRITY: "integrity", EXIT_UNAVAILABLE: "missing_plugin"}.get(code, "not_written")
        if code == EXIT_FAILED and set(counts) <= SOURCE_PROBLEMS:
            reason = "source_problems"
        jsonout.fail(f"{len(problems)} problem(s): {what}", reason)
        sys.exit(code)


# --------------------------------------------------------------------------- errors


def explain(exc: BaseException) -> tuple[str, int]:
    """One line a person can act on, and the exit status, for an error that ends a command."""
    import errno

    from ..errors import ManifestError, MissingPluginError, storage_error
    from ..lock import LockedError

    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"disk full{where}: free space or choose another DEST; nothing half-written is recorded, "
                    "rerun to resume"), EXIT_UNAVAILABLE
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {exc.strerror}; check the owner and mode of that path", EXIT_UNAVAILABLE
        return f"I/O error{where}: {exc.strerror or exc}", EXIT_UNAVAILABLE
    if isinstance(exc, (LockedError, MissingPluginError)):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, ManifestError):
        return f"{exc}; run pixarc repair DEST", EXIT_INTEGRITY
    if storage_error(exc):
        return (f"storage error: {type(exc).__name__}: {exc}; check the URL and --storage-option "
                "(endpoint_url, credentials)"), EXIT_UNAVAILABLE
    return str(exc), EXIT_USAGE


def say_error(exc: BaseException) -> int:
    """Print the one line for ``exc``, record it for --json; the exit status it calls for."""
    from ..errors import storage_error

    text, code = explain(exc)
    jsonout.fail(text, "storage_error" if storage_error(exc) else getattr(exc, "reason", type(exc).__name__))
    err.print(styled(("error:", "red"), " ", text), soft_wrap=True)
    return code


def fail(exc: BaseException) -> NoReturn:
    sys.exit(say_error(exc))


def require_archive(dest: str) -> None:
    """Stop with "not a pixarc archive" (exit 2) before any flow starts."""
    from ..layout import require_archive as check

    try:
        check(dest)
    except PixarcError as exc:
        fail(exc)


def fail_objects(message: str, reason: str, code: int = EXIT_FAILED) -> NoReturn:
    """End a command whose run finished but left some objects undone (or unrepaired)."""
    jsonout.fail(message, reason)
    sys.exit(code)


# --------------------------------------------------------------------------- the --json document


def exit_code(code: Any) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def end_json(code: int, error: str | None = None, reason: str | None = None) -> None:
    """Print the command's one ``--json`` document, ``ok`` matching its exit status ``code``."""
    if jsonout.active():
        click.echo(jsonout.finish(code, error, reason))
        jsonout.stop()
        console.quiet = False
