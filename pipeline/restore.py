"""The restore job: plan (select rows, name files), run a shard (read, check, decode,
write under OUT), finish (totals, drop the plan).

Restore never writes outside OUT (not through a symlink leading out of it either), keeps
files already there unless ``overwrite``, and decodes every bitstream with the check of
:mod:`pixarc.checks` before a byte of it is written.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Sequence

from . import progress
from .checks import Problem, decode_container, read_bitstream
from .device import DeviceMap, check_request
from .errors import InputError, PixarcError
from .jobs import RUN_ONLY, Table, problems_line, run_fields
from .layout import resolve_bitstream
from .manifest import ManifestRow
from .plan import Shard, drop_plan, load_shard, write_plan
from .plugins import Registry, build_plugin_manager
from .state import archive_problems, parse_as_of, select_rows
from .storage import get_fs, inside, join, safe_key, write_atomic, write_new

RESTORE_AS_IS = {"PNG", "TIFF", "BMP", "PPM"}  # lossless pixels re-encode faithfully to these


@dataclass
class Item:
    """One bitstream to read back (a restore or verify shard's entry): the row's facts
    that the check needs, its bitstream resolved under DEST (or why it cannot be)."""

    key: str
    bitstream_uri: str
    bitstream_bytes: int
    bitstream_sha256: str
    source_format: str = ""
    source_uri: str = ""
    source_sha256: str = ""
    plugin_dist: str = ""
    name: str = ""  # restore: the file name under OUT
    unsafe: str = ""  # why the row's bitstream path was refused (outside DEST)
    lossy: bool = False  # restores an approximation (a lossy codec's reconstruction)

    @classmethod
    def of(cls, dest: str, row: ManifestRow, name: str = "") -> "Item":
        try:
            uri, unsafe = resolve_bitstream(dest, row.bitstream_uri, row.key), ""
        except InputError as exc:
            uri, unsafe = "", str(exc)
        return cls(row.key, uri, row.bitstream_bytes, row.bitstream_sha256, row.source_format, row.source_uri,
                   row.source_sha256, row.plugin_dist, name, unsafe,
                   lossy=not row.lossless and row.codec_id != "store")

    def check_safe(self) -> None:
        if self.unsafe:
            raise InputError("outside_dest", self.unsafe)


ITEM_COLUMNS = ["key", "bitstream_uri", "bitstream_bytes", "bitstream_sha256", "source_format", "codec_id",
                "lossless", "source_uri", "source_sha256", "plugin_dist"]


def load_items(shard: Shard) -> list[Item]:
    return [Item(**d) for d in load_shard(shard)]


# A restore of a lossy row is an approximation of the original, never to be mistaken for
# it: its file is named ``<key>.lossy.png`` (and counted in the summary).
LOSSY_SUFFIX = ".lossy.png"


def restored_key(key: str, source_format: str, lossless: bool, codec_id: str) -> str:
    if codec_id == "store" or (lossless and source_format in RESTORE_AS_IS):
        return key
    return key + (".png" if lossless else LOSSY_SUFFIX)


def restored_names(rows: list[ManifestRow]) -> dict[str, str]:
    """Key -> file name under OUT, one name per key: a key restored as itself keeps its
    name; one converted to PNG gets ``<key>.png`` unless another key already restores
    there (``x.jpg`` next to ``x.jpg.png``), then ``<key>.<n>.png``. Computed over every
    selected row, so a ``--filter`` run names files as the full restore would."""
    natural = {r.key: restored_key(r.key, r.source_format, r.lossless, r.codec_id) for r in rows}
    taken = {name for key, name in natural.items() if name == key}
    names: dict[str, str] = {}
    for key in sorted(natural):
        name = natural[key]
        if name != key:
            n, suffix = 0, LOSSY_SUFFIX if name.endswith(LOSSY_SUFFIX) else ".png"
            while name in taken:
                n += 1
                name = f"{key}.{n}{suffix}"
            taken.add(name)
        names[key] = name
    return names


@dataclass
class RestoreTotals:
    """What a restore shard (or, added up, a run) did."""

    shard: int = -1
    done: int = 0  # images written
    lossy: int = 0  # of them, approximations from lossy rows (named <key>.lossy.png)
    skipped: int = 0  # files already in OUT, kept
    bytes_written: int = 0
    problems: list[Problem] = field(default_factory=list)

    def line(self, items: int) -> str:
        return problems_line(items, self.done, self.problems)

    @property
    def bytes_moved(self) -> int:
        return self.bytes_written


@dataclass
class RestorePlan:
    run_id: str
    shards: list[Shard]
    found: int = 0


@dataclass
class RestoreSummary:
    run_id: str
    found: int
    skipped: int  # already in OUT, kept
    shards: int
    totals: RestoreTotals
    problems: list[Problem] = field(default_factory=list)
    out: str = ""
    seconds: float = 0.0  # the run's wall-clock time

    def render(self) -> list[str | Table]:
        t = self.totals
        return [f"restored {t.done} of {self.found} image(s) into {self.out} ({t.bytes_written} bytes)"
                + (f"; {t.lossy} of them lossy: approximations of the originals, named <key>.lossy.png"
                   if t.lossy else "")
                + (f"; {self.skipped} already in OUT, kept (--overwrite to replace)" if self.skipped else "")]

    def json_fields(self) -> dict[str, Any]:
        t = self.totals
        return run_fields(self, {"done": t.done, "skipped": t.skipped, "bytes_written": t.bytes_written})


def encoded_image(decoded, container, fmt: str) -> bytes:
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if "ICCP" in container.sections:
        kwargs["icc_profile"] = container.sections["ICCP"]
    if "EXIF" in container.sections:
        kwargs["exif"] = container.sections["EXIF"]
    decoded.image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@dataclass(frozen=True)
class RestoreJob:
    """Decode every archived image of ``dest`` matching the filters into ``out`` (the current
    versions, or those of ``as_of`` (ISO time) or the ``version``-th)."""

    name: ClassVar[str] = "restore"
    holder: ClassVar[str] = "restore"
    retries: ClassVar[int] = 1  # idempotent shards (files written are kept)
    writes: ClassVar[bool] = False  # writes under OUT only

    dest: str
    out: str
    run_id: str
    pattern: str = "*"
    domain: str | None = None
    version: int | None = None
    as_of: str | None = None  # ISO time
    overwrite: bool = False
    device: str = "cpu"  # a request: cpu (what every bitstream was checked on), auto, cuda, cuda:N
    shard_size: int = 256
    registry: Registry = field(default_factory=build_plugin_manager, repr=False, compare=False, metadata=RUN_ONLY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_request(self.device))

    @property
    def base(self) -> str:
        return self.out

    def check(self) -> None:
        pass

    def uses_gpu(self) -> bool:
        return False  # decoding shards take no GPU slot

    def stats(self, summary: RestoreSummary) -> None:
        return None  # restore only reads DEST: it records nothing there

    def plan(self) -> RestorePlan:
        import fnmatch

        when: datetime | None = parse_as_of(self.as_of) if self.as_of else None
        rows = select_rows(self.dest, self.version, when, columns=ITEM_COLUMNS)
        names = restored_names(rows)
        items = [asdict(Item.of(self.dest, r, names[r.key])) for r in rows
                 if fnmatch.fnmatch(r.key, self.pattern) and (self.domain is None or r.domain == self.domain)]
        progress.set_total(self.run_id, len(items))
        return RestorePlan(self.run_id, write_plan(self.out, self.run_id, self.name, items, self.shard_size)[0],
                           len(items))

    def run_shard(self, shard: Shard) -> RestoreTotals:
        """Decode and check every bitstream of a shard, then write the images under OUT."""
        registry, devices = self.registry, DeviceMap.resolve(self.device, self.registry.codecs)
        ofs, oroot = get_fs(self.out)
        s = RestoreTotals(shard.index)
        for item in load_items(shard):
            try:
                safe_key(item.key)
                item.check_safe()
                name = item.name or item.key
                target = join(oroot, safe_key(name))
                if not inside(ofs, oroot, target):
                    raise InputError("outside_out", f"{name}: a symlink in OUT leads outside {self.out}; not written")
                blob = read_bitstream(item.bitstream_uri, item.bitstream_sha256)
                c, decoded = decode_container(blob, registry, devices, item.plugin_dist)
                if decoded.original is not None:
                    data = decoded.original
                else:
                    data = encoded_image(decoded, c, item.source_format if name == item.key else "PNG")
                if self.overwrite:
                    write_atomic(ofs, target, data)  # replaces a symlink itself, never writes through it
                elif not write_new(ofs, target, data):
                    s.skipped += 1
                    progress.advance(self.run_id)
                    continue
                s.done += 1
                s.lossy += item.lossy and decoded.original is None
                s.bytes_written += len(data)
            except (PixarcError, OSError) as exc:
                s.problems.append(Problem(item.key, getattr(exc, "reason", "io_error"), str(exc)))
            progress.advance(self.run_id)
        return s

    def finish(self, plan: RestorePlan, results: Sequence[RestoreTotals]) -> RestoreSummary:
        totals, problems = RestoreTotals(-1), []  # the run's problems are listed once, in the summary
        for r in results:
            totals.done += r.done
            totals.lossy += r.lossy
            totals.skipped += r.skipped
            totals.bytes_written += r.bytes_written
            problems.extend(r.problems)
        drop_plan(self.out, self.name, self.run_id)
        # damaged manifest parts first: their rows were left out of the restore
        return RestoreSummary(self.run_id, plan.found, totals.skipped, len(plan.shards), totals,
                              archive_problems(self.dest) + problems, self.out)
