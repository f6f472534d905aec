"""``--json``: one JSON document on stdout per command, for scripts.

The document always has ``pixarc`` (version), ``command`` and ``ok``: ``ok`` is true
exactly when the command's exit status is 0, and when it is false the document also has
``error`` (one line a person can act on) and ``reason`` (a stable code). The rest depends
on the command and is documented in docs/operations.md ("Scripting"). Tables and
messages are not printed in this mode; errors still go to stderr as text.

A command collects its fields with :func:`put` (and :func:`fail` for why it failed) while
it runs; the CLI's top-level group calls :func:`finish` with the exit status once the
command has ended, however it ended (a normal return, ``sys.exit``, a usage error, a
crash), so there is exactly one document and it never says ``ok`` beside a failure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .. import __version__

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


def fail(error: str, reason: str) -> None:
    """Say why the command is about to end with a non-zero exit status (the first reason
    given wins: it is the one closest to the cause)."""
    if _doc is not None and "error" not in _doc:
        _doc.update(ok=False, error=error, reason=reason)


def finish(code: int, error: str | None = None, reason: str | None = None) -> str:
    """The document for a command that ended with exit status ``code``; ``ok`` follows the
    status, and a failure without a recorded cause gets ``error``/``reason`` from here."""
    assert _doc is not None
    if code:
        fail(error or f"exit status {code}", reason or "failed")
        _doc["ok"] = False
    else:
        _doc["ok"] = True
        _doc.pop("error", None)
        _doc.pop("reason", None)
    return dumps()


def dumps() -> str:
    return json.dumps(_doc, indent=2, sort_keys=False)
