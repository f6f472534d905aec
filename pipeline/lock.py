"""One writer per archive: a lease file ``DEST/.pixarc/lock.json``.

Two runs writing one DEST at once would each trust an ``exists`` check the other made
stale; so every job that writes an archive (archive, recompress --apply, repair, prune)
holds a lease first. The lease is a small JSON object (owner, host, pid, token, expiry)
that the holder renews from a heartbeat thread; a second writer stops with a message
naming the holder, or waits (``--wait``).

* Creating the lease is create-exclusive: ``O_CREAT | O_EXCL`` on local disks, ``xb``
  mode where the fsspec backend supports it, else write then read back after a short
  settle (the object stores' last-writer-wins: only the writer that reads its own token
  back holds it).
* A stale lease (expired, or its pid is gone on this host: a killed run) is taken over.
  On local disks the read-check-replace of a takeover runs under ``flock`` of a guard
  file, so two processes cannot both take over the same stale lease.
* The holder checks its token before committing each manifest part
  (:func:`check_held`): a run that stalled past its expiry and lost the lease stops
  instead of writing over its successor.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterator

from fsspec.implementations.local import LocalFileSystem

from .errors import PixarcError
from .storage import get_fs, join, write_atomic

LOCK_PATH = (".pixarc", "lock.json")
GUARD_PATH = (".pixarc", "lock.guard")
DEFAULT_TTL = 60.0  # seconds a lease lives without a heartbeat
SETTLE_S = 0.2  # object stores: wait before reading a written lease back


class LockedError(PixarcError):
    """Another writer holds DEST (or this run lost its lease)."""

    reason = "locked"


@dataclass
class LeaseInfo:
    owner: str  # the command holding it, e.g. "archive"
    host: str
    pid: int
    token: str
    acquired_at: float
    expires_at: float

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (f"{self.owner} (pid {self.pid} on {self.host}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.acquired_at))} UTC, lease expires in "
                f"{max(0, left):.0f} s)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(info: LeaseInfo, now: float | None = None) -> bool:
    """Expired, or held by a process of this host that no longer exists."""
    if info.expires_at < (time.time() if now is None else now):
        return True
    return info.host == socket.gethostname() and not _pid_alive(info.pid)


def read_lease(dest: str) -> LeaseInfo | None:
    fs, root = get_fs(dest)
    path = join(root, *LOCK_PATH)
    try:
        data = json.loads(fs.cat_file(path))
        return LeaseInfo(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):  # half-written or foreign: treat as expired
        return LeaseInfo("unreadable lease", "", 0, "", 0.0, 0.0)


def check_held(dest: str, token: str) -> None:
    """Raise :class:`LockedError` unless the lease of ``dest`` still carries ``token``."""
    info = read_lease(dest)
    if info is None or info.token != token:
        who = info.describe() if info else "nobody"
        raise LockedError(f"this run lost its lock on {dest} (now held by {who}); stopped before writing")


_LAST_CHECK: dict[tuple[str, str], float] = {}
CHECK_EVERY_S = 1.0  # a writer re-reads its lease at most this often between bitstreams


def still_held(dest: str, token: str) -> None:
    """:func:`check_held`, at most once per :data:`CHECK_EVERY_S` per (DEST, token): a
    writer calls it before every bitstream it writes, so a run that lost its lease stops
    writing within a second, without a read of the lease file per image."""
    now = time.monotonic()
    if now - _LAST_CHECK.get((dest, token), -CHECK_EVERY_S) < CHECK_EVERY_S:
        return
    check_held(dest, token)
    _LAST_CHECK[(dest, token)] = now


class Lease:
    """``with Lease(dest, "archive").acquire(wait=0):`` — the one-writer lease of ``dest``."""

    def __init__(self, dest: str, owner: str, ttl: float = DEFAULT_TTL):
        self.dest = dest
        self.owner = owner
        self.ttl = ttl
        self.fs, self.root = get_fs(dest)
        self.path = join(self.root, *LOCK_PATH)
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state

    def _info(self) -> LeaseInfo:
        now = time.time()
        return LeaseInfo(self.owner, socket.gethostname(), os.getpid(), self.token, now, now + self.ttl)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialise takeovers between processes of one machine (local disks only)."""
        if not self.local:
            yield
            return
        import fcntl

        path = join(self.root, *GUARD_PATH)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _create(self) -> bool:
        """Create the lease file if it does not exist; True when this process now holds it."""
        data = json.dumps(asdict(self._info())).encode()
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        self.fs.makedirs(join(self.root, LOCK_PATH[0]), exist_ok=True)
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # no conditional create here
            if self.fs.exists(self.path):
                return False
            return self._write_and_read_back(data)

    def _write_and_read_back(self, data: bytes) -> bool:
        self.fs.pipe_file(self.path, data)
        time.sleep(SETTLE_S)
        info = read_lease(self.dest)
        return info is not None and info.token == self.token

    def _take_over(self, stale: LeaseInfo) -> bool:
        with self._guard():
            now = read_lease(self.dest)
            if now is None:
                return self._create()
            if now.token != stale.token or not is_stale(now):
                return False  # someone else took it (or renewed it) meanwhile
            if self.local:
                os.unlink(self.path)
                return self._create()
            return self._write_and_read_back(json.dumps(asdict(self._info())).encode())

    # ------------------------------------------------------------------ API

    def try_acquire(self) -> tuple[bool, LeaseInfo | None]:
        if self._create():
            return True, None
        info = read_lease(self.dest)
        if info is None:
            return self._create(), None
        if is_stale(info) and self._take_over(info):
            return True, info
        return False, info

    def acquire(self, wait: float = 0.0, poll: float = 1.0) -> "Lease":
        """Hold the lease, waiting up to ``wait`` seconds for a live holder to finish."""
        deadline = time.monotonic() + wait
        while True:
            ok, holder = self.try_acquire()
            if ok:
                break
            if time.monotonic() >= deadline:
                who = holder.describe() if holder else "another writer"
                raise LockedError(f"{self.dest} is locked by {who}; try again later, or pass --wait")
            time.sleep(min(poll, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._heartbeat, name="pixarc-lease", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except OSError:  # a transient store error: the next beat tries again
                continue

    def renew(self) -> None:
        with self._guard():
            info = read_lease(self.dest)
            if info is None or info.token != self.token:
                self.lost = True
                self._stop.set()
                return
            info.expires_at = time.time() + self.ttl
            write_atomic(self.fs, self.path, json.dumps(asdict(info)).encode())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._guard():
            info = read_lease(self.dest)
            if info is not None and info.token == self.token:
                self.fs.rm(self.path)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold(dest: str, owner: str, wait: float = 0.0, ttl: float = DEFAULT_TTL) -> Lease:
    """Acquire the one-writer lease of ``dest`` (use as a context manager)."""
    return Lease(dest, owner, ttl).acquire(wait)
