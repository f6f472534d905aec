"""The verify job: fixity of the archive's current rows.

Fast: each bitstream is present with its recorded size. Full: its sha256 is checked and
it is decoded with the check of :mod:`pixarc.checks`. ``sources``: the originals are
re-hashed against their archived sha256 (drift or bit rot at the source). Damaged
manifest parts are reported too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Sequence

from . import progress, runstats
from .checks import Problem, decode_container
from .device import DeviceMap, check_request
from .errors import InputError, PixarcError
from .images import sha256_hex
from .jobs import RUN_ONLY, Table, problems_line, run_fields
from .plan import Shard, drop_plan, scratch, write_plan
from .plugins import Registry, build_plugin_manager
from .restore import ITEM_COLUMNS, Item, load_items
from .state import archive_problems, current_rows
from .storage import get_fs, read_regular


@dataclass
class VerifyTotals:
    shard: int = -1
    done: int = 0  # bitstreams that passed
    problems: list[Problem] = field(default_factory=list)

    def line(self, items: int) -> str:
        return problems_line(items, self.done, self.problems)

    @property
    def bytes_moved(self) -> int:
        return 0


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
    seconds: float = 0.0  # the run's wall-clock time

    def render(self) -> list[str | Table]:
        mode = "full" if self.full else "fast"
        return [f"verify ({mode}): {self.totals.done} of {self.found} bitstream(s) OK, {len(self.problems)} problem(s)"]

    def json_fields(self) -> dict[str, Any]:
        return run_fields(self, {"done": self.totals.done})


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
    """Check the archive; it writes nothing into DEST (a read-only or full archive is checked
    as well) unless ``record``: then its outcome joins DEST's run records (``pixarc report``
    shows the last one; scheduled verifies record theirs)."""

    name: ClassVar[str] = "verify"
    holder: ClassVar[str] = "verify"
    retries: ClassVar[int] = 0
    writes: ClassVar[bool] = False

    dest: str
    run_id: str
    full: bool = False
    sources: bool = False
    device: str = "cpu"  # a request: cpu (what every bitstream was checked on), auto, cuda, cuda:N
    shard_size: int = 1024
    record: bool = False
    registry: Registry = field(default_factory=build_plugin_manager, repr=False, compare=False, metadata=RUN_ONLY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_request(self.device))

    @property
    def base(self) -> str:
        return scratch()  # never DEST: verify works on read-only and full archives

    def check(self) -> None:
        pass

    def uses_gpu(self) -> bool:
        return False  # decoding shards take no GPU slot

    def stats(self, summary: VerifySummary) -> dict[str, Any] | None:
        if not self.record:
            return None
        return {"full": self.full, "sources": self.sources, "device": self.device, **runstats.check_fields(summary)}

    def plan(self) -> VerifyPlan:
        rows = current_rows(self.dest, columns=ITEM_COLUMNS)
        progress.set_total(self.run_id, len(rows))
        items = (asdict(Item.of(self.dest, r)) for r in rows)
        return VerifyPlan(self.run_id, write_plan(self.base, self.run_id, self.name, items, self.shard_size)[0],
                          len(rows))

    def check_item(self, item: Item, devices: DeviceMap) -> Problem | None:
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
            decode_container(blob, self.registry, devices, item.plugin_dist)
        return None

    def run_shard(self, shard: Shard) -> VerifyTotals:
        devices = DeviceMap.resolve(self.device, self.registry.codecs)
        s = VerifyTotals(shard.index)
        for item in load_items(shard):
            try:
                problem = self.check_item(item, devices)
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
