"""In-process progress listeners, keyed by run id.

Tasks cannot receive callbacks through Prefect parameters (they must stay small and
serialisable), so the CLI registers a listener for its run id and the engine reports
to it when the task runs in the same process. On remote workers nobody listens and
reporting is a no-op.
"""

from __future__ import annotations

import threading
from typing import Callable

_listeners: dict[str, Callable[[str, int], None]] = {}
_lock = threading.Lock()


def listen(run_id: str, callback: Callable[[str, int], None]) -> None:
    """``callback(event, n)``: event is ``"total"`` (work items planned) or ``"advance"``."""
    with _lock:
        _listeners[run_id] = callback


def forget(run_id: str) -> None:
    with _lock:
        _listeners.pop(run_id, None)


def _emit(run_id: str, event: str, n: int) -> None:
    callback = _listeners.get(run_id)
    if callback is not None:
        callback(event, n)


def advance(run_id: str, n: int = 1) -> None:
    _emit(run_id, "advance", n)


def set_total(run_id: str, n: int) -> None:
    _emit(run_id, "total", n)
