"""The manifest: a Parquet dataset of one row per archive attempt. The one place its schema lives.

Layout under ``DEST/manifest/``::

    parts/<run_id>-<shard>.parquet     immutable, one per shard per run
    commits/<run_id>-<shard>.json      commit marker: part name, rows, sha256 of the part

A part counts only once its commit marker exists and the part's sha256 matches it.
Parts are written before markers, so a crash leaves at worst an uncommitted part
(ignored by readers, overwritten by the rerun) and never a marker without its part.
The current state of the archive is the newest committed row per ``key``.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import faults
from .errors import ManifestError
from .images import sha256_hex
from .storage import get_fs, join, write_atomic

MANIFEST_VERSION = 1



class Status(StrEnum):
    """What happened to one object (stored as its string value)."""

    DONE = "done"  # archived and verified
    REJECTED = "rejected"  # refused by policy (too large, format not allowed, unsafe key)
    ERROR = "error"  # unreadable source (empty, not an image, truncated, I/O)
    FAILED = "failed"  # every codec candidate failed (should not happen: `store` is last)


STATUS_DONE, STATUS_REJECTED, STATUS_ERROR, STATUS_FAILED = Status.DONE, Status.REJECTED, Status.ERROR, Status.FAILED
STATUSES = tuple(Status)


@dataclass
class Attempt:
    """One codec candidate tried for an object, and what came of it.

    ``result``: ``verified`` (encoded and decode-checked: the one kept, or every one tried
    where the route keeps the first that works), ``measured`` (a candidate RD or smallest
    selection compared and did not keep: encoded, its stored size and PSNR measured, never
    decode-checked, since it is not stored), ``target`` (a rate search; the reason says
    where it ended), ``skipped`` / ``failed`` (with the reason), ``screened`` (RD selection
    left it out: its PSNR ceiling showed it could not win), ``reused`` (an interrupted
    run's verified bitstream)."""

    codec: str
    result: str
    reason: str = ""
    bytes: int | None = None
    psnr: float | None = None
    met: bool | None = None  # whether the route's target was met

    @property
    def compared(self) -> bool:
        """An encoding of this codec was measured on the image (``bytes``, ``psnr`` hold)."""
        return self.result in ("verified", "measured")

    def to_json(self) -> dict[str, Any]:
        # getattr, not asdict: no deep copy of flat fields (a row per image pays for it)
        return {k: v for k in _ATTEMPT_FIELDS if (v := getattr(self, k)) is not None and (v != "" or k != "reason")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Attempt":
        return cls(**{k: d[k] for k in _ATTEMPT_FIELDS if k in d})


_ATTEMPT_FIELDS = tuple(f.name for f in fields(Attempt))


@dataclass
class ManifestRow:
    run_id: str
    shard: int
    key: str
    source_uri: str
    status: Status
    source_sha256: str = ""
    source_bytes: int = 0
    source_mtime: str = ""
    source_format: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    bit_depth: int = 0
    pixels_sha256: str = ""
    domain: str = ""
    domain_confidence: float = math.nan
    classifier_id: str = ""
    route: str = ""  # policy route applied (domain or 'unknown')
    codec_id: str = ""
    codec_version: str = ""
    format_version: int = 0
    weights_sha256: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # stored as JSON
    params_hash: str = ""
    plugin_dist: str = ""
    plugin_version: str = ""
    bitstream_uri: str = ""
    bitstream_sha256: str = ""
    bitstream_bytes: int = 0
    bpp: float = math.nan
    psnr: float = math.nan
    ms_ssim: float = math.nan
    lossless: bool = False
    decoded_sha256: str = ""
    classify_s: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0
    device: str = ""
    verified: bool = False
    error: str = ""  # stable reason code
    message: str = ""  # human-readable detail
    notes: str = ""  # conversions, fallbacks taken, metadata handling
    attempts: list[Attempt] = field(default_factory=list)  # stored as JSON: every candidate tried, and why
    pixarc_version: str = ""
    job: str = "archive"  # archive | recompress
    replaces_sha256: str = ""  # lineage: the bitstream this row's bitstream replaced
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # what decided a rejected/error row (limits, policy, codecs): a rerun under other
    # settings retries it (archive.settings_fingerprint)
    settings: str = ""
    # key and source_uri held bytes that are not UTF-8 (a file name the source allows):
    # stored escaped (escape_name), read back as the original text
    name_escaped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# What a new row for the same source (a recompress or repair re-encode) takes over from
# the row it succeeds: the source's facts and its classification.
SOURCE_FIELDS = ("source_sha256", "source_bytes", "source_mtime", "source_format", "width", "height", "mode",
                 "bit_depth", "pixels_sha256", "domain", "domain_confidence", "classifier_id")


def carry_source(old: "ManifestRow", new: "ManifestRow") -> None:
    """Copy :data:`SOURCE_FIELDS` from ``old`` into ``new``."""
    for name in SOURCE_FIELDS:
        setattr(new, name, getattr(old, name))


_ARROW = {
    str: pa.string(),
    Status: pa.string(),
    dict[str, Any]: pa.string(),  # JSON
    list[Attempt]: pa.string(),  # JSON
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def core_schema() -> pa.Schema:
    import typing

    hints = typing.get_type_hints(ManifestRow)
    return pa.schema([(f.name, _ARROW[hints[f.name]]) for f in fields(ManifestRow) if f.name != "extra"])


def schema(extra_columns: dict[str, pa.DataType] | None = None) -> pa.Schema:
    s = core_schema()
    for name, typ in (extra_columns or {}).items():
        if name in s.names:
            raise ValueError(f"plugin column {name!r} clashes with the core manifest schema")
        s = s.append(pa.field(name, typ))
    return s.with_metadata({b"pixarc_manifest_version": str(MANIFEST_VERSION).encode()})


_CORE = tuple(f.name for f in fields(ManifestRow) if f.name != "extra")
_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")


def utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_name(name: str) -> str:
    """A file name as UTF-8 text Parquet can hold, reversibly: a name the file system gave
    as undecodable bytes (Python's surrogate escapes) gets ``\\xNN`` for each such byte and
    ``\\\\`` for each backslash; :func:`unescape_name` gives the very name back."""
    raw = name.replace("\\", "\\\\").encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def unescape_name(text: str) -> str:
    out, pos = bytearray(), 0
    for m in _ESCAPED.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        token = m.group(1)
        out += b"\\" if token == "\\" else bytes([int(token[1:], 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return out.decode("utf-8", "surrogateescape")


def to_record(r: ManifestRow, extra_columns: dict[str, pa.DataType] | None = None) -> dict[str, Any]:
    """A row as its Parquet record (status as text, params and attempts as JSON; names
    that are not UTF-8 escaped, see :func:`escape_name`)."""
    d = {name: getattr(r, name) for name in _CORE}
    if r.name_escaped or not (utf8_ok(r.key) and utf8_ok(r.source_uri)):
        d["key"], d["source_uri"], d["name_escaped"] = escape_name(r.key), escape_name(r.source_uri), True
    for name in ("message", "notes", "bitstream_uri", "error"):
        if not utf8_ok(d[name]):  # free text quoting a name: readable, never a reason to lose the row
            d[name] = d[name].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    d["status"] = str(r.status)
    d["params"] = json.dumps(r.params, sort_keys=True, default=str)
    d["attempts"] = json.dumps([a.to_json() for a in r.attempts])
    d.update({k: r.extra.get(k) for k in (extra_columns or {})})
    return d


def rows_to_table(rows: Iterable[ManifestRow], extra_columns: dict[str, pa.DataType] | None = None) -> pa.Table:
    return pa.Table.from_pylist([to_record(r, extra_columns) for r in rows], schema=schema(extra_columns))


def row_from_record(d: dict[str, Any]) -> ManifestRow:
    """A manifest row read back (a dict of a Parquet row) as the dataclass it was written
    from; columns not read keep their defaults, plugin columns go to ``extra``."""
    core = {k: v for k, v in d.items() if k in _CORE and v is not None}
    core.setdefault("run_id", "")
    core.setdefault("shard", 0)
    core.setdefault("key", "")
    core.setdefault("source_uri", "")
    core["status"] = Status(core.get("status", Status.DONE))
    if isinstance(core.get("params"), str):
        core["params"] = json.loads(core["params"] or "{}")
    if isinstance(core.get("created_at"), str):  # a record that travelled as JSON
        core["created_at"] = datetime.fromisoformat(core["created_at"])
    if isinstance(core.get("attempts"), str):
        core["attempts"] = [Attempt.from_json(a) for a in json.loads(core["attempts"] or "[]")]
    if core.get("name_escaped"):
        core["key"], core["source_uri"] = unescape_name(core["key"]), unescape_name(core["source_uri"])
    row = ManifestRow(**core)
    row.extra = {k: v for k, v in d.items() if k not in _CORE}
    return row


def rows_from_table(table: pa.Table) -> list[ManifestRow]:
    return [row_from_record(d) for d in table.to_pylist()]


def part_name(run_id: str, shard: int) -> str:
    return f"{run_id}-{shard:06d}"


def write_part(dest: str, run_id: str, shard: int, table: pa.Table) -> str:
    """Write one immutable part and then its commit marker. Returns the part path."""
    fs, root = get_fs(dest)
    name = part_name(run_id, shard)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    part = join(root, "manifest", "parts", name + ".parquet")
    write_atomic(fs, part, data)
    faults.point("part")
    marker = {"part": name + ".parquet", "rows": table.num_rows, "sha256": sha256_hex(data), "run_id": run_id}
    write_atomic(fs, join(root, "manifest", "commits", name + ".json"), json.dumps(marker).encode())
    faults.point("commit")
    return part


def committed_parts(dest: str, damaged: list[tuple[str, str]] | None = None) -> list[dict]:
    """Commit markers, oldest name first. An unreadable marker raises :class:`ManifestError`,
    or, with ``damaged``, is recorded there as (name, why) and left out."""
    fs, root = get_fs(dest)
    commits = join(root, "manifest", "commits")
    if not fs.exists(commits):
        return []
    out = []
    for path in sorted(fs.ls(commits, detail=False)):
        if path.endswith(".json"):
            try:
                marker = json.loads(fs.cat_file(path))
                if not isinstance(marker, dict) or not {"part", "sha256"} <= set(marker):
                    raise ValueError("not a commit marker")
            except (ValueError, UnicodeDecodeError) as exc:
                problem = (path.rsplit("/", 1)[-1], f"commit marker unreadable ({exc})")
                if damaged is None:
                    raise ManifestError(f"manifest {problem[0]}: {problem[1]}") from None
                damaged.append(problem)
                continue
            out.append(marker)
    return out


def read_manifest(dest: str, check: bool = True, columns: list[str] | None = None,
                  damaged: list[tuple[str, str]] | None = None) -> pa.Table:
    """All committed rows (every run). With ``check``, a part whose bytes do not match
    its marker raises :class:`ManifestError`: the manifest itself is under fixity. With a
    ``damaged`` list, such a part is recorded there as (part name, why) and left out, so
    one damaged part does not make the rest of the archive unusable. ``columns`` keeps
    memory to what the caller needs (``key`` and ``created_at`` are always read, for
    :func:`latest`)."""
    fs, root = get_fs(dest)
    if columns is not None:
        columns = list(dict.fromkeys(["key", "created_at", "name_escaped", *columns]))
    tables = []
    for marker in committed_parts(dest, damaged):
        try:
            try:
                data = fs.cat_file(join(root, "manifest", "parts", marker["part"]))
            except FileNotFoundError:
                raise ManifestError(f"manifest part {marker['part']} is missing (its commit marker exists)") from None
            if check and sha256_hex(data) != marker["sha256"]:
                raise ManifestError(f"manifest part {marker['part']} does not match its commit marker")
            try:
                # An Arrow buffer, not a Python file object, read on this thread: a part is one
                # shard's rows, and a read left to Arrow's thread pool around a Python file
                # object could still be tearing down at interpreter exit (an intermittent
                # SIGABRT, "terminate called without an active exception": apache/arrow#34314,
                # #50482), failing a command whose work was done.
                f = pq.ParquetFile(pa.BufferReader(data))
                # parts written by older versions lack newer columns: read what they have
                have = None if columns is None else [c for c in columns if c in f.schema_arrow.names]
                tables.append(f.read(columns=have, use_threads=False))
            except (pa.ArrowException, OSError) as exc:
                raise ManifestError(f"manifest part {marker['part']} is unreadable ({exc})") from None
        except ManifestError as exc:
            if damaged is None:
                raise
            damaged.append((marker["part"], str(exc)))
    if not tables:
        empty = schema().empty_table()
        return empty if columns is None else empty.select(columns)
    return pa.concat_tables(tables, promote_options="permissive")


def latest(table: pa.Table) -> pa.Table:
    """The newest row per key (the archive's current state)."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, [("key", "ascending"), ("created_at", "descending")])
    t = table.take(order)
    keys = t.column("key").to_pylist()
    keep = [i for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return t.take(pa.array(keep, type=pa.int64()))
