"""``pixarc export-bagit DEST OUT``: DEST's images as a BagIt bag (RFC 8493).

Two payloads:

* restored (the default): the images are restored exactly as ``pixarc restore`` does
  (each bitstream checked against its sha256, decoded and its pixels checked) into
  ``OUT``. A lossless restore re-encodes the pixels (a JPEG source comes back as a PNG of
  its exact pixels), so the bag's checksums are those of the restored files, not of the
  originals;
* ``--originals``: the sources' own bytes, read from where the manifest says they were
  archived from and checked against their archived sha256 before a byte is written.

Either way a tag file, ``pixarc-sources.tsv``, holds each payload file's key, the
original's sha256 and URI, and whether the payload file is byte-identical to the
original, so the bag can be held against the sources' sha256 (tag files are covered by
the bag's tag manifests). bagit-python (the Library of Congress implementation) makes
``OUT`` a bag: payload under ``data/``, sha256 and sha512 manifests, ``bag-info.txt``
naming the archive, the run and the payload kind. A run with problems makes no bag (a bag
promises completeness).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from . import __version__, runs
from .checks import Problem
from .errors import InputError, PixarcError
from .images import sha256_hex
from .limits import DEFAULT_MAX_BYTES
from .plan import STATE_DIR, new_run_id
from .plugins import Registry

SOURCES_TAG_FILE = "pixarc-sources.tsv"
SOURCES_COLUMNS = ("path", "key", "source_sha256", "source_uri", "identical_to_source")


@dataclass
class BagResult:
    out: str
    run_id: str
    images: int
    payload_bytes: int
    problems: list[Problem]
    payload: str = "restored"  # or "originals"
    identical: int = 0  # payload files byte-identical to their originals
    sources: list[dict] = field(default_factory=list)  # the rows of pixarc-sources.tsv


def export_bagit(dest: str, out: str, pattern: str = "*", domain: str | None = None, workers: int = 2,
                 run_id: str | None = None, originals: bool = False, registry: Registry | None = None) -> BagResult:
    """``registry``: the plugins the restore decodes with (default: those the environment allows)."""
    try:
        import bagit
    except ImportError as exc:  # pragma: no cover - an optional dependency
        raise InputError("missing_dependency", "export-bagit needs bagit-python: pip install 'pixarc[bagit]'") from exc
    if "://" in out and not out.startswith("file://"):
        raise InputError("not_local", "export-bagit writes a local folder (bagit-python works on local paths)")
    out = out.removeprefix("file://")
    if os.path.exists(out) and os.listdir(out):
        raise InputError("out_not_empty", f"{out} is not empty; a bag is made in a new or empty folder")
    run_id = run_id or new_run_id()
    rows = _selected_rows(dest, pattern, domain)
    if originals:
        done, nbytes, problems, names = _copy_originals(rows, out)
    else:
        summary = runs.restore_local(dest, out, pattern=pattern, domain=domain, run_id=run_id, workers=workers,
                                     registry=registry)
        shutil.rmtree(os.path.join(out, STATE_DIR), ignore_errors=True)  # the (finished) plan folders
        done, nbytes, problems = summary.totals.done, summary.totals.bytes_written, summary.problems
        from .restore import restored_names

        names = restored_names(rows)
    payload = "originals" if originals else "restored"
    if problems:
        return BagResult(out, run_id, done, nbytes, problems, payload)
    bag = bagit.make_bag(out, {
        "Source-Organization": "pixarc",
        "External-Identifier": dest,
        "External-Description": _description(dest, pattern, domain, originals),
        "Bag-Software-Agent": f"pixarc {__version__} with bagit-python",
        "Pixarc-Run": run_id,
        "Pixarc-Payload": payload,
        "Pixarc-Sources-Tag-File": SOURCES_TAG_FILE,
    }, checksums=["sha256", "sha512"])
    sources = _sources_table(rows, names, bag.payload_entries())
    with open(os.path.join(out, SOURCES_TAG_FILE), "w", encoding="utf-8") as f:
        f.write("\t".join(SOURCES_COLUMNS) + "\n")
        for s in sources:
            f.write("\t".join(str(s[c]).replace("\t", " ") for c in SOURCES_COLUMNS) + "\n")
    bag.save()  # the tag manifests now cover the sources tag file too
    return BagResult(out, run_id, done, nbytes, [], payload, sum(s["identical_to_source"] for s in sources),
                     sources)


def _selected_rows(dest: str, pattern: str, domain: str | None) -> list:
    from .state import current_rows

    return current_rows(dest, pattern, domain)  # the rows a restore with these filters restores


def _copy_originals(rows: list, out: str) -> tuple[int, int, list[Problem], dict[str, str]]:
    """Each selected original's bytes into OUT under its key, after checking them against
    the archived sha256 (a source that changed or went away is a problem: no bag)."""
    from .storage import get_fs, read_regular, safe_key

    done, nbytes, problems, names = 0, 0, [], {}
    for r in rows:
        try:
            fs, path = get_fs(r.source_uri)
            data = read_regular(fs, path, DEFAULT_MAX_BYTES)
        except (OSError, PixarcError) as exc:
            problems.append(Problem(r.key, "source_gone", f"{r.source_uri}: {exc}"))
            continue
        if sha256_hex(data) != r.source_sha256:
            problems.append(Problem(r.key, "source_changed",
                                    f"{r.source_uri} no longer matches its archived sha256"))
            continue
        target = os.path.join(out, *safe_key(r.key).split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "xb") as f:
            f.write(data)
        names[r.key] = r.key
        done, nbytes = done + 1, nbytes + len(data)
    return done, nbytes, problems, names


def _sources_table(rows: list, names: dict[str, str], entries: dict[str, dict[str, str]]) -> list[dict]:
    table = []
    for r in sorted(rows, key=lambda r: r.key):
        path = "data/" + names[r.key]
        table.append({"path": path, "key": r.key, "source_sha256": r.source_sha256, "source_uri": r.source_uri,
                      "identical_to_source": entries.get(path, {}).get("sha256") == r.source_sha256})
    return table


def _description(dest: str, pattern: str, domain: str | None, originals: bool) -> str:
    which = f"filter {pattern!r}" + (f", domain {domain}" if domain else "")
    if originals:
        return (f"The original files archived in the pixarc archive {dest} ({which}), each checked against its "
                f"archived sha256 before it was written; {SOURCES_TAG_FILE} lists key, sha256 and origin.")
    return (f"Images restored from the pixarc archive {dest} ({which}), each checked against the archive's sha256 "
            f"and decoded-pixel hash before it was written. Restored files may be re-encodings of the originals "
            f"(same pixels, other bytes): {SOURCES_TAG_FILE} gives each one's original sha256 and says which are "
            f"byte-identical.")
