"""The verify job: fixity of the archive's current rows.

Fast: each bitstream is present with its recorded size. Full: its sha256 is checked and
it is decoded with the check of :mod:`pixarc.checks`. ``sources``: the originals are
re-hashed against their archived sha256 (drift or bit rot at the source). Damaged
manifest parts are reported too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Sequence

from . import progress
from .checks import Problem, decode_container
from .device import Device
from .errors import InputError, PixarcError
from .images import sha256_hex
from .plan import Shard, drop_plan, scratch, write_plan
from . import plugins
from .plugins import Registry
from .restore import ITEM_COLUMNS, Item, load_items
from .state import archive_problems, current_rows
from .storage import get_fs, read_regular


@dataclass
class VerifyTotals:
    shard: int = -1
    done: int = 0  # bitstreams that passed
    problems: list[Problem] = field(default_factory=list)


@dataclass
class VerifyPlan:
    run_id: str
    shards: list[Shard]
    found: int = 0


@dataclass
class VerifySummary:
    run_id: str
    found: int
    shards: int
    totals: VerifyTotals
    problems: list[Problem] = field(default_factory=list)
    full: bool = False
    sources: bool = False
    skipped: int = 0  # (nothing is skipped; kept for one summary layout across jobs)


def source_problem(item: Item) -> Problem | None:
    """Compare the original (if still there) with the hash archived for it."""
    try:
        fs, path = get_fs(item.source_uri)
        if not fs.exists(path):
            return Problem(item.key, "source_gone", item.source_uri)
        if sha256_hex(read_regular(fs, path)) != item.source_sha256:
            return Problem(item.key, "source_changed", "the original no longer matches its archived sha256")
    except (OSError, ValueError, InputError) as exc:
        return Problem(item.key, "source_unreadable", str(exc))
    return None


@dataclass(frozen=True)
class VerifyJob:
    name: ClassVar[str] = "verify"
    writes: ClassVar[bool] = False

    dest: str
    run_id: str
    full: bool = False
    sources: bool = False
    device: str = "cpu"
    shard_size: int = 1024

    @property
    def base(self) -> str:
        return scratch()  # never DEST: verify works on read-only and full archives

    def plan(self) -> VerifyPlan:
        rows = current_rows(self.dest, columns=ITEM_COLUMNS)
        progress.set_total(self.run_id, len(rows))
        items = (asdict(Item.of(self.dest, r)) for r in rows)
        return VerifyPlan(self.run_id, write_plan(self.base, self.run_id, self.name, items, self.shard_size)[0],
                          len(rows))

    def check(self, item: Item, registry: Registry, device: "str | Device") -> Problem | None:
        item.check_safe()
        bfs, bpath = get_fs(item.bitstream_uri)
        if not bfs.exists(bpath):
            return Problem(item.key, "missing", "bitstream missing")
        if (size := bfs.size(bpath)) != item.bitstream_bytes:
            return Problem(item.key, "size_mismatch", f"{size} bytes, manifest says {item.bitstream_bytes}")
        if self.full:
            blob = bfs.cat_file(bpath)
            if sha256_hex(blob) != item.bitstream_sha256:
                return Problem(item.key, "hash_mismatch", "bitstream sha256 differs from the manifest")
            decode_container(blob, registry, device, item.plugin_dist)
        return None

    def run_shard(self, shard: Shard, registry: Registry | None = None) -> VerifyTotals:
        registry = registry or plugins.default_registry()  # looked up per call (tests swap it)
        device = self.device  # resolved per codec (codecs without an accelerator: the CPU)
        s = VerifyTotals(shard.index)
        for item in load_items(shard):
            try:
                problem = self.check(item, registry, device)
            except (PixarcError, OSError) as exc:
                problem = Problem(item.key, getattr(exc, "reason", "io_error"), str(exc))
            if problem is None and self.sources:
                problem = source_problem(item)
            if problem is None:
                s.done += 1
            else:
                s.problems.append(problem)
            progress.advance(self.run_id)
        return s

    def finish(self, plan: VerifyPlan, results: Sequence[VerifyTotals]) -> VerifySummary:
        totals, problems = VerifyTotals(-1), []  # the run's problems are listed once, in the summary
        for r in results:
            totals.done += r.done
            problems.extend(r.problems)
        drop_plan(self.base, self.name, self.run_id)
        return VerifySummary(self.run_id, plan.found, len(plan.shards), totals,
                             archive_problems(self.dest) + problems, self.full, self.sources)
