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
    """``callback(event, n)``: event is ``"total"`` (work items planned), ``"advance"`` (items
    done, reported from inside the shard function when it runs in this process),
    ``"bytes"`` (source bytes those items had) or ``"shard"`` (items of a finished shard,
    reported by the job's runner: the only event that arrives when shards run in other
    processes, e.g. on Dask workers)."""
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


def add_bytes(run_id: str, n: int) -> None:
    _emit(run_id, "bytes", n)


def shard_done(run_id: str, n: int, nbytes: int = 0) -> None:
    _emit(run_id, "shard", n)
    if nbytes:
        _emit(run_id, "shard_bytes", nbytes)


class Rate:
    """Items and bytes done so far and their rates, from the events above. Per-item events
    (in-process shards) and per-shard events (any runner) describe the same work, so the
    larger of the two counts is the truth at any moment."""

    def __init__(self) -> None:
        import time

        self._clock = time.perf_counter
        self._t0 = self._clock()
        self._counts = {"advance": 0, "shard": 0, "bytes": 0, "shard_bytes": 0}

    def update(self, event: str, n: int) -> None:
        if event in self._counts:
            self._counts[event] += n

    @property
    def items(self) -> int:
        return max(self._counts["advance"], self._counts["shard"])

    @property
    def bytes(self) -> int:
        return max(self._counts["bytes"], self._counts["shard_bytes"])

    def text(self) -> str:
        seconds = max(self._clock() - self._t0, 1e-6)
        out = f"{self.items / seconds:.1f} img/s"
        if self.bytes:
            out += " " + byte_rate(self.bytes / seconds)
        return out


class LineReporter:
    """Progress as plain lines, for a stream that is not a terminal (a log file, a pipe, CI):
    a bar redrawn in place shows nothing there until the end. One line at start, then one
    at least every ``interval`` seconds: done/total, images/s, ETA. A thread writes them,
    so a long image (a minute of encode) still leaves a line every ``interval``."""

    def __init__(self, label: str, write: Callable[[str], None], interval: float = 10.0, rate: "Rate | None" = None):
        import time

        self.label, self._write, self.interval = label, write, interval
        self.rate = rate or Rate()
        self.total: int | None = None
        self._clock = time.monotonic
        self._t0 = self._clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pixarc-progress-{label}", daemon=True)

    def on_event(self, event: str, n: int) -> None:
        if event == "total":
            self.total = n
        else:
            self.rate.update(event, n)

    def line(self) -> str:
        elapsed = self._clock() - self._t0
        done = self.rate.items
        total = "?" if self.total is None else str(self.total)
        out = f"{self.label}: {done}/{total} done, {self.rate.text()}, {elapsed:.0f} s elapsed"
        if self.total is not None and done:
            left = max(0, self.total - done) * elapsed / done
            out += f", ETA {left:.0f} s"
        elif self.total is not None:
            out += ", ETA unknown (nothing finished yet)"
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(self.line())

    def __enter__(self) -> "LineReporter":
        self._write(f"{self.label}: started")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._write(self.line() + (" (stopped)" if exc[0] else " (finished)"))


def byte_rate(per_second: float) -> str:
    """Bytes per second in a unit that shows them (a slow lossy run is kB/s, not "0.0 MB/s")."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if per_second >= scale:
            return f"{per_second / scale:.1f} {unit}"
    return f"{per_second:.0f} B/s"
