"""``--json``: one JSON document on stdout per command, for scripts.

The document always has ``pixarc`` (version), ``command`` and ``ok`` (false when the
command's exit status is non-zero for a reason it knows: problems found, images failed,
an error); the rest depends on the command and is documented in docs/operations.md
("Scripting"). Tables and messages are not printed in this mode; errors still go to
stderr as text.

A command collects its fields with :func:`put` while it runs; the CLI prints the
document once when the command ends (also after ``sys.exit``), so there is exactly one
document even on failure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from . import __version__

_doc: dict[str, Any] | None = None


def start(command: str) -> None:
    global _doc
    _doc = {"pixarc": __version__, "command": command, "ok": True}


def stop() -> None:
    global _doc
    _doc = None


def active() -> bool:
    return _doc is not None


def put(**fields: Any) -> None:
    """Add fields to the document (no-op without ``--json``)."""
    if _doc is not None:
        _doc.update({k: plain(v) for k, v in fields.items()})


def plain(value: Any) -> Any:
    """Dataclasses, tuples and non-finite floats as JSON can hold them (NaN/inf -> null or a string)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def dumps() -> str:
    return json.dumps(_doc, indent=2, sort_keys=False)


def summary_fields(summary: Any) -> dict[str, Any]:
    """A RunSummary as fields of the document (problems listed, totals flattened once)."""
    d = plain(summary)
    return {"run_id": d["run_id"], "found": d["found"], "skipped": d["skipped"], "shards": d["shards"],
            "totals": d["totals"], "problems": d.get("problems", [])}
