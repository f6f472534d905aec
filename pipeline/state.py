"""The archive's state as the manifest records it: current rows, versions, damage.

The current state is the newest committed row per key; older rows are the history that
``restore --version/--as-of`` reads. Rows come back as :class:`~pixarc.manifest.ManifestRow`,
the dataclass they were written from. A damaged manifest part is left out of every read
(the rest stays usable) and reported by :func:`manifest_problems`.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime, timezone

from .checks import Problem
from .errors import InputError
from .layout import bitstream_rel, require_archive
from .plan import STATE_DIR
from .storage import get_fs
from .manifest import STATUS_DONE, ManifestRow, Status, latest, read_manifest, rows_from_table


def manifest_problems(dest: str) -> list[Problem]:
    """Damaged manifest parts (left out by every reader), one problem each."""
    damaged: list[tuple[str, str]] = []
    read_manifest(dest, columns=[], damaged=damaged)
    return damaged_part_problems(damaged)


def damaged_part_problems(damaged: list[tuple[str, str]]) -> list[Problem]:
    """One problem per damaged manifest part (name, why) a read left out."""
    return [Problem(f"manifest/{name}", "corrupt_manifest_part", why + "; run pixarc repair DEST")
            for name, why in damaged]


def bitstream_files(dest: str) -> list[str]:
    """Every bitstream file under DEST (DEST-relative): not the manifest, not the archive's
    own state, not hidden names, not temporaries (``*.pxa.tmp-*``)."""
    fs, root = get_fs(dest)
    prefix = root.rstrip("/") + "/"
    out = []
    for path in fs.find(root):
        rel = path[len(prefix):] if path.startswith(prefix) else path
        if rel.endswith(".pxa") and not rel.startswith(("manifest/", STATE_DIR + "/")) \
                and not any(p.startswith(".") for p in rel.split("/")):
            out.append(rel)
    return sorted(out)


def named_bitstreams(records: list[dict]) -> set[str]:
    """The bitstreams committed rows (records with ``key`` and ``bitstream_uri``) name:
    every version, history included."""
    named = set()
    for r in records:
        if r["bitstream_uri"]:
            try:
                named.add(bitstream_rel(r["bitstream_uri"], r["key"]))
            except InputError:
                continue
    return named


def orphan_bitstreams(dest: str, records: list[dict] | None = None) -> list[str]:
    """Bitstreams under DEST that no committed row names: rows lost with a deleted or
    damaged manifest part, or written by a run that was killed before its commit.
    ``records``: the committed rows (``key``, ``bitstream_uri``) when the caller read them."""
    if records is None:
        records = read_manifest(dest, columns=["bitstream_uri"], damaged=[]).to_pylist()
    named = named_bitstreams(records)
    return [rel for rel in bitstream_files(dest) if rel not in named]


def archive_problems(dest: str) -> list[Problem]:
    """What only the archive as a whole shows: damaged parts, bitstreams no committed row
    names, and archive runs whose recorded count of done images the manifest no longer
    holds. While a live writer holds DEST, its bitstreams in flight are not orphans yet."""
    from . import runstats
    from .lock import is_stale, read_lease

    damaged: list[tuple[str, str]] = []  # one read of the manifest serves all three checks
    records = read_manifest(dest, columns=["bitstream_uri", "run_id", "status"], damaged=damaged).to_pylist()
    problems = damaged_part_problems(damaged)
    lease = read_lease(dest)
    if lease is None or is_stale(lease):
        problems += [Problem(rel, "orphan_bitstream", "no committed manifest row names this bitstream (a deleted "
                                                      "or lost manifest part, or a killed run); pixarc repair DEST "
                                                      "rebuilds its row from the bitstream's own header")
                     for rel in orphan_bitstreams(dest, records)]
    done: dict[str, int] = {}
    for r in records:
        if r["status"] == STATUS_DONE:
            done[r["run_id"]] = done.get(r["run_id"], 0) + 1
    for rec in runstats.read_all(dest):
        if rec.get("job") == "archive" and isinstance(rec.get("done"), int) and done.get(rec["run_id"], 0) < rec["done"]:
            problems.append(Problem(f"run {rec['run_id']}", "rows_missing",
                                    f"the run recorded {rec['done']} image(s) done, the manifest holds "
                                    f"{done.get(rec['run_id'], 0)} done row(s) of it; pixarc repair DEST"))
    return problems


def current_rows(dest: str, pattern: str = "*", domain: str | None = None, status: Status | None = STATUS_DONE,
                 columns: list[str] | None = None) -> list[ManifestRow]:
    """The newest row per key, filtered; ``columns`` limits what is read (and held)."""
    require_archive(dest)
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "status", "domain"]))
    # a damaged part is left out (the rest stays usable); verify and repair report it
    rows = rows_from_table(latest(read_manifest(dest, columns=columns, damaged=[])))
    return [r for r in rows if (status is None or r.status == status) and fnmatch.fnmatch(r.key, pattern)
            and (domain is None or r.domain == domain)]


def all_rows(dest: str, columns: list[str] | None = None) -> list[ManifestRow]:
    """Every committed row (the history), oldest first."""
    return sorted(rows_from_table(read_manifest(dest, columns=columns, damaged=[])), key=lambda r: r.created_at)


def parse_as_of(text: str) -> datetime:
    """An ISO 8601 time (``2026-11-24``, ``2026-11-24T10:00``, ...); UTC unless it says otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError("usage", f"--as-of {text!r} is not an ISO 8601 time (e.g. 2026-11-24T10:00:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def select_rows(dest: str, version: int | None = None, as_of: datetime | None = None,
                columns: list[str] | None = None) -> list[ManifestRow]:
    """The ``done`` row to restore per key: the current one; the one the archive held at
    ``as_of``; or its ``version``-th content (1 = the first archived; versions are the
    distinct source hashes in order). A version re-encoded by recompress is read from its
    newest bitstream: the same content."""
    if version is None and as_of is None:
        return current_rows(dest, columns=columns)
    require_archive(dest)
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "status", "domain", "source_sha256"]))
    history: dict[str, list[ManifestRow]] = {}
    for r in all_rows(dest, columns):
        history.setdefault(r.key, []).append(r)
    out = []
    for rows in history.values():
        done = [r for r in rows if r.status == STATUS_DONE]
        if as_of is not None:
            then = [r for r in rows if r.created_at <= as_of]
            if not then or then[-1].status != STATUS_DONE:
                continue
            sha = then[-1].source_sha256
        else:
            versions = list(dict.fromkeys(r.source_sha256 for r in done))
            if not 1 <= version <= len(versions):
                continue
            sha = versions[version - 1]
        out.append([r for r in done if r.source_sha256 == sha][-1])
    return out
