"""Per-run statistics, one JSON file per run beside the manifest: ``DEST/manifest/runs/<run_id>.json``.

Written by archive, verify and recompress runs on either engine (restore only reads DEST,
so it writes none there). Reports read them for the run date, the policy, and the last
verify's outcome; other tools can read them without Parquet. Fields:

``run_id, job, started, finished, seconds, engine, workers, pixarc_version, dest`` and,
by job, ``src, policy, found, skipped, shards, images, done, reused, rejected, errors,
failed, source_bytes, archive_bytes, images_per_s, mb_per_s`` (archive), ``full, sources,
checked, ok, problems`` (verify, problems listed up to 1000), ``apply, min_saving, rows,
to_recompress, bytes_before, bytes_after`` (recompress).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .storage import get_fs, join, write_atomic

RUNS_DIR = ("manifest", "runs")
MAX_PROBLEMS = 1000


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")  # orders runs started in the same second


def record(job: str, run_id: str, dest: str, started: str, seconds: float, **fields: Any) -> dict[str, Any]:
    return {"run_id": run_id, "job": job, "started": started, "finished": now(), "seconds": round(seconds, 3),
            "pixarc_version": __version__, "dest": dest, **fields}


def archive_fields(summary: Any, seconds: float) -> dict[str, Any]:
    t = summary.totals
    return {"found": summary.found, "skipped": summary.skipped, "retried": summary.retried,
            "still_rejected": summary.still_rejected, "hidden": summary.hidden, "shards": summary.shards,
            "images": t.images,
            "done": t.done, "reused": t.reused, "rejected": t.rejected, "errors": t.errors, "failed": t.failed,
            "source_bytes": t.source_bytes, "archive_bytes": t.archive_bytes,
            "images_per_s": round(t.images / seconds, 3) if seconds > 0 else None,
            "mb_per_s": round(t.source_bytes / seconds / 1e6, 3) if seconds > 0 else None}


def check_fields(summary: Any) -> dict[str, Any]:
    return {"checked": summary.found, "ok": summary.totals.done, "problem_count": len(summary.problems),
            "problems": [asdict(p) for p in summary.problems[:MAX_PROBLEMS]]}


def write(dest: str, rec: dict[str, Any]) -> str:
    fs, root = get_fs(dest)
    path = join(root, *RUNS_DIR, f"{rec['run_id']}.json")
    write_atomic(fs, path, json.dumps(rec, indent=1, default=str).encode())
    return fs.unstrip_protocol(path)


def read_all(dest: str) -> list[dict[str, Any]]:
    """Every run's record, oldest first (unreadable files are skipped: stats are advisory)."""
    fs, root = get_fs(dest)
    folder = join(root, *RUNS_DIR)
    if not fs.exists(folder):
        return []
    out = []
    for path in fs.ls(folder, detail=False):
        if str(path).endswith(".json"):
            try:
                out.append(json.loads(fs.cat_file(path)))
            except (OSError, ValueError):
                continue
    return sorted(out, key=lambda r: (r.get("started", ""), r.get("run_id", "")))


def last(dest: str, job: str) -> dict[str, Any] | None:
    runs = [r for r in read_all(dest) if r.get("job") == job]
    return runs[-1] if runs else None
