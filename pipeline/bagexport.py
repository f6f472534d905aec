"""``pixarc export-bagit DEST OUT``: the restored images of DEST as a BagIt bag (RFC 8493).

The images are restored exactly as ``pixarc restore`` does (each bitstream checked
against its sha256, decoded and its pixels checked) into ``OUT``, then bagit-python
(the Library of Congress implementation) makes ``OUT`` a bag: payload under ``data/``,
sha256 and sha512 manifests, ``bag-info.txt`` naming the archive and the restore run.
A restore with problems makes no bag (a bag promises completeness).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from . import __version__, runs
from .plan import STATE_DIR, new_run_id
from .errors import InputError


@dataclass
class BagResult:
    out: str
    run_id: str
    images: int
    payload_bytes: int
    problems: list


def export_bagit(dest: str, out: str, pattern: str = "*", domain: str | None = None, workers: int = 2,
                 run_id: str | None = None) -> BagResult:
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
    summary = runs.restore_job(runs.local_runner(workers), dest, out, pattern, domain, run_id=run_id,
                               workers=workers)
    shutil.rmtree(os.path.join(out, STATE_DIR), ignore_errors=True)  # the (finished) plan folders
    if summary.problems:
        return BagResult(out, run_id, summary.totals.done, summary.totals.bytes_written, summary.problems)
    bagit.make_bag(out, {
        "Source-Organization": "pixarc",
        "External-Identifier": dest,
        "External-Description": f"Images restored from the pixarc archive {dest} (filter {pattern!r}"
                                + (f", domain {domain}" if domain else "") + "), each checked against the archive's "
                                "sha256 and decoded-pixel hash before it was written.",
        "Bag-Software-Agent": f"pixarc {__version__} with bagit-python",
        "Pixarc-Restore-Run": run_id,
    }, checksums=["sha256", "sha512"])
    return BagResult(out, run_id, summary.totals.done, summary.totals.bytes_written, [])
