"""fsspec helpers: URL joins, safe keys, atomic writes.

Atomicity: on local filesystems a write goes to a temporary sibling, is fsynced and
renamed over the target (readers see the old file or the new one, never half of one).
Object stores (s3, gcs, memory...) publish a PUT atomically already; what spans several
objects (a manifest part and its commit marker) uses the commit-marker protocol in
``manifest.py``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import posixpath
import stat
import uuid
from contextvars import ContextVar

import fsspec
import fsspec.config
from fsspec.implementations.local import LocalFileSystem

from . import faults
from .errors import InputError


_LOCAL = LocalFileSystem()  # fsspec caches instances: this is the one url_to_fs returns


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    # A plain local path or file:// URL (no chaining, no glob, no options LocalFileSystem
    # takes from config) skips url_to_fs's parsing: called twice per image, it was a
    # measurable share of the archive job's own time on small images.
    rest = url[7:] if url.startswith("file://") else url
    if rest.startswith("/") and "::" not in rest and not fsspec.config.conf.get("file"):
        path = _LOCAL._strip_protocol(url)
        return _LOCAL, path.rstrip("/") if path not in ("/", "") else path
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/") if path not in ("/", "") else path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if base else posixpath.join(*parts)


def safe_key(key: str) -> str:
    """Refuse keys that could escape a destination root (``..``, absolute, ``~``, NUL)."""
    if not key or "\x00" in key or "\\" in key:
        raise InputError("unsafe_key", f"unsafe key {key!r}")
    if key.startswith("/") or key.startswith("~") or (len(key) > 1 and key[1] == ":"):
        raise InputError("unsafe_key", f"absolute key {key!r} refused")
    parts = key.split("/")
    if any(p in ("", ".", "..") or p.startswith("~") for p in parts):
        raise InputError("unsafe_key", f"key {key!r} has an empty, '.', '..' or '~' component")
    return key


# Inside :func:`deferring_sync`: the local files written so far, made durable together when
# the block ends instead of one fsync (plus one of its folder) per file.
_deferred: ContextVar[list | None] = ContextVar("pixarc_deferred_sync", default=None)


def deferring_sync(fn):
    """Run ``fn`` writing local files without an fsync per file; :func:`sync_deferred`
    (called by ``fn`` before it commits anything that refers to them, a manifest part)
    makes them durable at once.

    Each fsync costs a disk flush (about 10 ms on the project machine): two per bitstream
    were most of the archive job's time on small images. Atomicity is unchanged (temp
    name, then link or rename); what a crash before the sync can leave is a file whose
    bytes did not reach the disk, referenced by no committed row, and decode-checked
    before any reuse (:func:`pixarc.archive.try_reuse`), like any file an interrupted run
    leaves behind."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _deferred.set([])
        try:
            return fn(*args, **kwargs)
        finally:
            _deferred.reset(token)

    return wrapper


def sync_deferred() -> None:
    """Make the files written so far under :func:`deferring_sync` durable, and write the
    rest of the call (the manifest part, its commit marker) with an fsync each again."""
    pending = _deferred.get()
    if pending:
        _sync(pending)
    _deferred.set(None)


def _sync(paths: list) -> None:
    """Make ``paths`` (files, then their folders) durable: one ``syncfs`` of their
    filesystem where the C library has it, else an fsync each."""
    if not paths:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(posixpath.dirname(paths[0]), os.O_RDONLY)
        try:
            dev = os.stat(paths[0]).st_dev
            if libc.syncfs(fd) == 0 and all(_device_of(p) in (dev, None) for p in dict.fromkeys(paths)):
                return  # one stat per path: all on the filesystem just synced
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    for p in dict.fromkeys(paths):
        if os.path.isdir(p):
            _fsync_dir(p)
        elif os.path.exists(p):
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _device_of(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except FileNotFoundError:
        return None


def _durable_temp(path: str, data: bytes, fault_site: str) -> str:
    """Write ``data`` to a fresh temporary name beside ``path`` and fsync it (later, inside
    :func:`deferring_sync`)."""
    parent = posixpath.dirname(path)
    tag = uuid.uuid4().hex
    tmp = f"{path}.tmp-{tag}"
    if len(os.fsencode(posixpath.basename(tmp))) > 255:  # a long (but legal) name: a short temporary beside it
        tmp = posixpath.join(parent, f"{tag[:16]}.tmp-{tag}")
    try:
        try:
            f = open(tmp, "xb")
        except FileNotFoundError:  # the folder is new (usually it is there: no makedirs per file)
            os.makedirs(parent, exist_ok=True)
            f = open(tmp, "xb")
        with f:
            f.write(data)
            f.flush()
            if _deferred.get() is None:
                os.fsync(f.fileno())
        if fault_site:
            faults.point(fault_site)
    except BaseException:  # disk full, an injected fault: no half-written temp file stays behind
        _unlink_if_there(tmp)
        raise
    return tmp


def _unlink_if_there(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _note_written(path: str) -> None:
    pending = _deferred.get()
    if pending is not None:
        pending.insert(0, path)  # files before folders: _sync fsyncs in this order


def _fsync_dir(parent: str) -> None:
    """Make a rename or link in ``parent`` durable."""
    pending = _deferred.get()
    if pending is not None:
        pending.append(parent)
        return
    try:
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, fault_site: str = "") -> None:
    parent = posixpath.dirname(path)
    if isinstance(fs, LocalFileSystem):
        tmp = None
        try:
            tmp = _durable_temp(path, data, fault_site)
            os.replace(tmp, path)
            _note_written(path)
        finally:
            if tmp:
                _unlink_if_there(tmp)
        _fsync_dir(parent)
    else:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)


def write_new(fs: fsspec.AbstractFileSystem, path: str, data: bytes, fault_site: str = "") -> bool:
    """Write ``path`` only if nothing is there (never overwrite); False when it was taken.

    Local disks: temp file + fsync, then ``link`` to the name, which fails atomically if
    the name exists (a file, a folder or a symlink: nothing is written through a link).
    Object stores: the backend's ``xb`` mode where it has one, else an exists check.
    """
    parent = posixpath.dirname(path)
    if isinstance(fs, LocalFileSystem):
        tmp = None
        try:
            tmp = _durable_temp(path, data, fault_site)
            try:
                os.link(tmp, path)
                _note_written(path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem: check, then rename
                if os.path.lexists(path):
                    return False
                os.replace(tmp, path)
                _note_written(path)
        finally:
            if tmp:  # linked (or refused): the temporary name goes; renamed: it is gone already
                _unlink_if_there(tmp)
        _fsync_dir(parent)
        return True
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


def inside(fs: fsspec.AbstractFileSystem, root: str, path: str) -> bool:
    """Whether ``path`` really lies under ``root``: on local disks symlinks along the way
    are resolved, so a link leading outside ``root`` does not count as inside."""
    if not isinstance(fs, LocalFileSystem):
        return True  # object stores have no links; keys are checked by safe_key
    real_root = os.path.realpath(root)
    real = os.path.realpath(posixpath.dirname(path))
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def open_source(fs: fsspec.AbstractFileSystem, path: str, max_bytes: int):
    """Open a source object for reading, refusing what is not a regular file or is larger
    than ``max_bytes`` before a byte of it is read.

    Local disks: ``O_NONBLOCK`` open (a FIFO or device cannot block the open) and ``fstat``
    of the open descriptor, so a file swapped for a FIFO after the crawl is caught too.
    """
    if isinstance(fs, LocalFileSystem):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError("not_regular_file", "not a regular file (FIFO, socket or device); not read")
            check_size(st.st_size, max_bytes)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
    info = fs.info(path)
    if info.get("type", "file") not in ("file", None):
        raise InputError("not_regular_file", f"not a regular file ({info.get('type')}); not read")
    check_size(int(info.get("size") or 0), max_bytes)
    return fs.open(path, "rb")


def read_regular(fs: fsspec.AbstractFileSystem, path: str, max_bytes: int = 0) -> bytes:
    """The bytes of a regular file (see :func:`open_source`): never blocks on a FIFO."""
    with open_source(fs, path, max_bytes) as f:
        return f.read()


def check_size(size: int, max_bytes: int) -> None:
    if max_bytes and size > max_bytes:
        raise InputError("too_large", f"{size} bytes exceeds the limit of {max_bytes} bytes (--max-bytes); not read")


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    return fs.cat_file(path)
