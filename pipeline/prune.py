"""Pruning: the one command that deletes bitstreams of an archive, and only when asked.

A changed source gets a new bitstream and its old version stays restorable
(``restore --version N`` / ``--as-of``); nothing else ever removes it. ``prune`` deletes
the bitstreams that only older versions reference, never one a current row (of any key)
references, under the one-writer lease, and writes what it deleted to
``DEST/.pixarc/prune/<run_id>.json``. The manifest history is kept: a restore of a pruned
version reports the bitstream missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .layout import bitstream_rel, require_archive
from .plan import STATE_DIR, new_run_id
from .errors import InputError
from .lock import hold
from .manifest import STATUS_DONE, latest, read_manifest
from .storage import get_fs, join, write_atomic


@dataclass
class PruneSummary:
    run_id: str
    paths: list[str] = field(default_factory=list)  # DEST-relative bitstreams deleted (or to delete)
    bytes: int = 0
    dry_run: bool = False


def prune(dest: str, dry_run: bool = False, wait: float = 0.0) -> PruneSummary:
    """Delete the bitstreams of old versions (``dry_run``: only list them)."""
    out = PruneSummary(new_run_id(), dry_run=dry_run)
    fs, root = get_fs(dest)
    require_archive(dest)  # before the lease: nothing is created where there is no archive
    with hold(dest, "prune", wait):
        table = read_manifest(dest, columns=["bitstream_uri", "status"])
        current = latest(table).to_pylist()
        keep = set()
        for r in current:
            if r["status"] == STATUS_DONE:
                try:
                    keep.add(bitstream_rel(r["bitstream_uri"], r["key"]))
                except InputError:
                    continue  # a row naming something outside DEST: nothing of it is touched
        old = set()
        for r in table.to_pylist():
            if r["status"] == STATUS_DONE:
                try:
                    old.add(bitstream_rel(r["bitstream_uri"], r["key"]))
                except InputError:
                    continue
        for rel in sorted(old - keep):
            path = join(root, rel)
            if not fs.exists(path):
                continue  # pruned before
            out.paths.append(rel)
            out.bytes += fs.size(path)
            if not dry_run:
                fs.rm(path)
        if not dry_run and out.paths:
            log = {"run_id": out.run_id, "deleted": out.paths, "bytes": out.bytes}
            write_atomic(fs, join(root, STATE_DIR, "prune", out.run_id + ".json"), json.dumps(log).encode())
    return out
