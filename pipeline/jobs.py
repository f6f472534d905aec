"""The job contract: what archive, restore, verify and recompress each are, and the list
of jobs pixarc runs.

A job is a small frozen record (a dataclass): its parameters, the registry it runs with
(:class:`~pixarc.plugins.Registry`, which crosses a process boundary as its allowlist) and
nothing else; pixels and bitstreams are read and written by URI inside ``run_shard``. The
runners (:mod:`pixarc.runs` here, :mod:`pixarc.flows.jobs` on Prefect) only decide where
shards run::

    job.check()                       refuse what would fail later (a bad policy)
    plan = job.plan()                 shards: small JSON lists under job.base
    results = [job.run_shard(s) ...]  one ShardResult per shard, in any process
    summary = job.finish(plan, results)

Shard results and summaries render themselves (a log line; the command's lines, tables
and JSON fields), so no runner or command looks at which job it holds. A new job is one
module with its record, shard result and summary, plus a line in :data:`JOBS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .checks import Problem
    from .plan import Shard
    from .plugins import Registry

# The jobs, by name: "module:class" (imported on first use; the CLI's --help imports none).
JOBS: dict[str, str] = {
    "archive": "pixarc.archive:ArchiveJob",
    "restore": "pixarc.restore:RestoreJob",
    "verify": "pixarc.verify:VerifyJob",
    "recompress": "pixarc.recompress:RecompressJob",
}

# Field metadata of what a run sets, not its caller: never a flow parameter.
RUN_ONLY = {"parameter": False}


@dataclass(frozen=True)
class Table:
    """A table a summary shows; the CLI draws it (``pixarc.cli.render``)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


class ShardResult(Protocol):
    """What one shard did: counts and problems (a task's result; never pixels)."""

    shard: int

    def line(self, items: int) -> str:
        """The shard's log line after ``<job> shard <n>:``; ``items``: the shard's item count."""

    @property
    def bytes_moved(self) -> int:
        """Bytes the shard read (archive) or wrote (restore), for progress's MB/s."""


class Summary(Protocol):
    """What a run did, rendered by itself for the command that ran it."""

    run_id: str
    problems: list[Problem]  # what the run found wrong, each with its stable reason code
    seconds: float  # the run's wall-clock time (set by the runner)

    def render(self) -> list[str | Table]:
        """What the command prints, in order: lines and tables."""

    def json_fields(self) -> dict[str, Any]:
        """The command's fields in its ``--json`` document (docs/operations.md, Scripting)."""


class Plan(Protocol):
    run_id: str
    shards: list[Shard]


class Job(Protocol):
    """A job record (see the module docstring)."""

    name: ClassVar[str]
    holder: ClassVar[str]  # how DEST's one-writer lease names a run that writes
    retries: ClassVar[int]  # retries of a failed shard on Prefect (its shards are idempotent), or 0
    run_id: str
    dest: str
    registry: Registry

    @property
    def writes(self) -> bool:
        """Whether the run writes DEST (and so holds its one-writer lease)."""

    @property
    def base(self) -> str:
        """Where the plan's shard lists live."""

    def check(self) -> None:
        """Refuse, before any lease is taken or shard runs, what would fail later (a bad policy)."""

    def plan(self) -> Plan: ...

    def run_shard(self, shard: Shard) -> ShardResult: ...

    def finish(self, plan: Any, results: Sequence[Any]) -> Summary: ...

    def uses_gpu(self) -> bool:
        """Whether its shards can put work on a GPU (and so take a GPU slot on Prefect)."""

    def stats(self, summary: Any) -> dict[str, Any] | None:
        """This run's fields in DEST's run records (:mod:`pixarc.runstats`); None: no record."""


def job_class(name: str) -> type:
    module, _, attr = JOBS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def parameters(job: Any) -> dict[str, Any]:
    """A job record as the parameters of its flow (what its caller chose; JSON values)."""
    out = {}
    for f in dataclasses.fields(job):
        if f.metadata.get("parameter", True):
            value = getattr(job, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def shard_line(job: str, shard: Shard, result: ShardResult) -> str:
    """The one log line a finished shard gets (Prefect's run logger, or ``pixarc.runs``)."""
    return f"{job} shard {shard.index}: {result.line(shard.count)}"


def problems_line(items: int, done: int, problems: Sequence[Problem]) -> str:
    """A checking shard's line: how many passed, and the first problems."""
    text = f"{items} item(s): {done} ok, {len(problems)} problem(s)"
    if problems:
        text += " (" + ", ".join(f"{p.key}: {p.problem}" for p in problems[:5]) + \
                (", ..." if len(problems) > 5 else "") + ")"
    return text


def run_fields(summary: Any, totals: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` fields every run summary of a shard-counting job has."""
    return {"run_id": summary.run_id, "found": summary.found, "skipped": summary.skipped, "shards": summary.shards,
            "totals": totals, "problems": summary.problems}
