"""Crawling sources through fsspec into small, picklable :class:`ImageRef` records."""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from fsspec.implementations.local import LocalFileSystem

from .storage import get_fs


@dataclass(frozen=True)
class ImageRef:
    uri: str  # protocol-qualified URL of the object
    key: str  # path relative to the crawl root ('/'-separated); checked by storage.safe_key
    size: int
    mtime: str  # mtime, ETag or '' — whatever the filesystem offers to detect change
    kind: str = "file"  # fsspec entry type; "other" = FIFO, socket, device: never read


def stamp(entry: dict) -> str:
    for k in ("mtime", "LastModified", "last_modified", "ETag", "etag", "md5Hash", "created"):
        if entry.get(k) is not None:
            return str(entry[k])
    return ""


def object_uri(src: str, fs, path: str) -> str:
    """A URL that reopens ``path`` alone, chained filesystems (``zip://::...``) included."""
    uri = fs.unstrip_protocol(path)
    if "::" in src:
        uri += "::" + src.split("::", 1)[1]
    return uri


def zip_members(src: str, fs, hidden: bool) -> Iterator[ImageRef]:
    """Every member of a zip file, by its raw name, in the zip's own order: fsspec's listing
    folds duplicate names into one and strips a leading '/', which would lose members
    without a row. Absolute, backslash and '..' names keep their raw key (the archive job
    rejects them as ``unsafe_key``); the second member of a name gets its own key
    ``<name> (zip member <n>)`` and kind ``duplicate`` (rejected as ``duplicate_key``)."""
    seen: set[str] = set()
    for n, info in enumerate(fs.zip.infolist(), 1):
        name = info.filename
        if info.is_dir():
            continue
        if any(p.startswith(".") and p != ".." for p in name.replace("\\", "/").split("/")):
            if hidden:
                yield ImageRef(object_uri(src, fs, name), name, info.file_size, "", "hidden")
            continue
        kind, key = "file", name
        if name in seen:
            kind, key = "duplicate", f"{name} (zip member {n})"
        seen.add(name)
        yield ImageRef(object_uri(src, fs, name), key, info.file_size, "", kind)  # "": as fsspec lists members


def crawl(src: str, include: str = "*", follow_symlinks: bool = False, hidden: bool = False) -> Iterator[ImageRef]:
    """Yield every file under ``src`` (a path or fsspec URL) in sorted order.

    Hidden names (leading '.') are not archived: with ``hidden`` each hidden file or folder
    is yielded once with kind ``hidden`` (so the archive can count them), else skipped.
    Members of a zip/tar under '..' are yielded
    with their '..' keys so that the archive job rejects them visibly (zip slip). Symlinked directories are skipped unless
    ``follow_symlinks``; then a directory already visited (by real path) is not entered
    again, so symlink loops end. Listing is per directory, so memory stays bounded by the
    widest directory, not the collection.
    """
    fs, root = get_fs(src)
    if getattr(fs, "protocol", None) in ("zip", ("zip",)) and root in ("", "/") and hasattr(fs, "zip"):
        yield from (r for r in zip_members(src, fs, hidden) if fnmatch.fnmatch(posixpath.basename(r.key), include))
        return
    if fs.isfile(root):
        info = fs.info(root)
        yield ImageRef(object_uri(src, fs, root), posixpath.basename(root), int(info.get("size") or 0), stamp(info))
        return
    if not fs.isdir(root):
        raise FileNotFoundError(f"source not found: {src}")
    local = isinstance(fs, LocalFileSystem)
    seen: set[str] = set()
    stack = [root]
    prefix = root.rstrip("/") + "/" if root not in ("", "/") else root

    def key_of(name: str) -> str:
        return name[len(prefix) :] if name.startswith(prefix) else name.lstrip("/")
    while stack:
        d = stack.pop()
        if local:
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
        entries = sorted(fs.ls(d, detail=True), key=lambda e: e["name"], reverse=True)
        files = []
        for e in entries:
            name = e["name"].rstrip("/")
            base = posixpath.basename(name)
            if not base or name == d:
                continue
            if base.startswith(".") and base != "..":
                if hidden:  # not archived, but counted: never silently
                    yield ImageRef(object_uri(src, fs, name), key_of(name), int(e.get("size") or 0), stamp(e),
                                   "hidden")
                continue  # '..' (only in archives) is entered so its members surface with
                # unsafe keys and get a 'rejected' row
            if e.get("islink"):  # local only: describe the target, not the link
                try:
                    e = {**fs.info(os.path.realpath(name)), "name": name}
                except OSError:
                    continue  # dangling link
                if e.get("type") == "directory" and not follow_symlinks:
                    continue
            if e.get("type") == "directory":
                stack.append(name)
            elif fnmatch.fnmatch(base, include):
                files.append(e)
        for e in reversed(files):
            name = e["name"]
            kind = e.get("type") or "file"
            yield ImageRef(object_uri(src, fs, name), key_of(name), int(e.get("size") or 0), stamp(e),
                           "file" if kind == "file" else str(kind))


def key_filter(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Callable[[str], bool] | None:
    """``--include/--exclude`` globs on keys (``*`` crosses ``/``): a key is taken when it
    matches some include (or none are given) and no exclude."""
    if not include and not exclude:
        return None
    return lambda key: (not include or any(fnmatch.fnmatch(key, g) for g in include)) and not any(
        fnmatch.fnmatch(key, g) for g in exclude)
