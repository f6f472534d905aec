"""Where things live in an archive (DEST) and the rules that keep them there.

Bitstreams are ``<key>.pxa``, or ``<key>.<sha12>.pxa`` for later versions, named in the
manifest relative to DEST so a copied or moved archive reads its own files. Nothing is
ever read from, written to or deleted outside DEST, and no bitstream is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from . import __version__
from .errors import InputError, NotAnArchiveError
from .images import sha256_hex
from .plan import STATE_DIR
from .storage import get_fs, join, safe_key, write_atomic, write_new

# A legacy row's absolute URI ends in ``<key>.pxa`` or, after a recompress, ``<key>.<sha12>.pxa``.
_LEGACY_TAIL = re.compile(r"(\.[0-9a-f]{12})?\.pxa")


def bitstream_rel(value: str, key: str) -> str:
    """The DEST-relative path of the bitstream a manifest row names.

    Rows name bitstreams relative to DEST, so an archive copied or moved elsewhere reads
    its own files. Rows written before that named absolute URIs (``file:///old/dest/k.pxa``):
    only their ``<key>[.<sha12>].pxa`` tail is kept, i.e. they are re-based under DEST.
    Anything that would resolve outside DEST (``..``, an absolute path that is not such a
    tail), or onto the archive's own state (``manifest/``, hidden names, not ``.pxa``), is
    refused: nothing is ever read from, written to or deleted outside DEST.
    """
    rel = value
    if "://" in value or value.startswith("/"):
        at = value.rfind("/" + key + ".")
        if at < 0 or not _LEGACY_TAIL.fullmatch(value[at + 1 + len(key):]):
            raise InputError("outside_dest", f"bitstream {value!r} of {key!r} lies outside DEST; refused")
        rel = value[at + 1:]
    try:
        safe_key(rel)
    except InputError:
        raise InputError("outside_dest", f"bitstream path {value!r} of {key!r} leads outside DEST; refused") from None
    if not rel.endswith(".pxa") or any(p.startswith(".") for p in rel.split("/")):
        raise InputError("outside_dest",
                         f"bitstream path {value!r} of {key!r} is outside DEST's bitstreams; refused")
    return rel


def resolve_bitstream(dest: str, value: str, key: str) -> str:
    """The URI, under ``dest``, of the bitstream a row names (see :func:`bitstream_rel`)."""
    fs, root = get_fs(dest)
    return fs.unstrip_protocol(join(root, bitstream_rel(value, key)))


def check_collision(key: str) -> None:
    """A folder named like a bitstream (``a.pxa/``) would collide with the bitstream of the
    file next to it (``a`` -> ``a.pxa``): whichever came second would fail or land inside
    the other. Refused up front, whatever the order, so the rest of the run goes on."""
    for folder in key.split("/")[:-1]:
        if folder.endswith(".pxa"):
            raise InputError("key_collision", f"folder {folder!r} of {key!r} has the name of a bitstream "
                                              f"(the one of {folder[:-4]!r}); refused")


# The longest file-name component (bytes) kept as it is: with ``.<sha12>.pxa`` and the
# temporary suffix ``.tmp-<32 hex>`` it still fits the 255 bytes most file systems allow.
NAME_MAX_KEPT = 200


def _component(part: str) -> str:
    """A key component as a DEST file name: itself when it is UTF-8 and short enough,
    else a readable prefix + ``~`` + 16 hex digits of its hash (the key itself is in
    the manifest row and in the bitstream's header)."""
    try:
        raw = part.encode("utf-8")
    except UnicodeEncodeError:
        raw = None
    if raw is not None and len(raw) <= NAME_MAX_KEPT:
        return part
    original = part.encode("utf-8", "surrogateescape")
    readable = original.decode("utf-8", "ignore")[:48].encode("utf-8")[:96].decode("utf-8", "ignore")
    return f"{readable}~{hashlib.sha256(original).hexdigest()[:16]}"


def bitstream_stem(key: str) -> str:
    """The DEST-relative name of ``key``'s bitstream, without ``.pxa``: the key itself,
    except for components a file system or object store may refuse (not UTF-8, too long)."""
    return "/".join(_component(p) for p in key.split("/"))


def write_version(fs, root: str, key: str, blob: bytes) -> str:
    """Store a new bitstream without overwriting anything; returns its DEST-relative path.

    ``<key>.pxa`` when free; taken (an older version of a changed source, or any other
    file) -> ``<key>.<sha12>.pxa``, named by the bitstream's own hash, so a file already
    there under that name holds these very bytes. (``<key>`` as :func:`bitstream_stem` makes it.)"""
    stem = bitstream_stem(key)
    rel = stem + ".pxa"
    if write_new(fs, join(root, rel), blob, fault_site="rename"):
        return rel
    rel = f"{stem}.{sha256_hex(blob)[:12]}.pxa"
    if write_new(fs, join(root, rel), blob, fault_site="rename"):
        return rel
    try:
        same = sha256_hex(fs.cat_file(join(root, rel))) == sha256_hex(blob)
    except (OSError, IsADirectoryError):
        same = False
    if not same:
        raise InputError("key_collision", f"{key!r}: both bitstream names {stem}.pxa and {rel} are taken")
    return rel


def claim_dest(src: str, dest: str) -> None:
    """One DEST archives one source root: keys of two sources would overwrite each other."""
    sfs, sroot = get_fs(src)
    source = sfs.unstrip_protocol(sroot)
    fs, root = get_fs(dest)
    marker = join(root, STATE_DIR, "source.json")
    if fs.exists(marker):
        claimed = json.loads(fs.cat_file(marker)).get("source")
        if claimed != source:
            raise InputError("dest_in_use", f"{dest} already archives {claimed}; use another DEST for {source}")
        return
    write_atomic(fs, marker, json.dumps({"source": source, "pixarc_version": __version__}).encode())


def require_archive(dest: str) -> None:
    """Raise :class:`NotAnArchiveError` unless ``dest`` holds a pixarc archive."""
    fs, root = get_fs(dest)
    if not (fs.exists(join(root, "manifest")) or fs.exists(join(root, STATE_DIR, "source.json"))):
        raise NotAnArchiveError(f"{dest} is not a pixarc archive (no manifest/ or {STATE_DIR}/source.json there)")


def dest_prefix(dest: str) -> str:
    """DEST's URI with a trailing slash: a crawl of a SRC holding DEST leaves it out."""
    fs, root = get_fs(dest)
    return fs.unstrip_protocol(root).rstrip("/") + "/"


_TEMP = re.compile(r"\.tmp-[0-9a-f]{32}\Z")


@dataclass
class Swept:
    temporaries: list[str] = field(default_factory=list)  # DEST-relative
    uncommitted_parts: list[str] = field(default_factory=list)


def sweep_leftovers(dest: str, older_than_s: float) -> Swept:
    """Remove what killed runs left behind, once it is older than ``older_than_s`` (the
    lease's lifetime: whoever wrote it cannot be alive and holding DEST any more): temporary
    files (``*.tmp-<hex>``) and manifest parts that never got their commit marker (their
    bitstreams are reused by the rerun, or adopted by ``pixarc repair``). Only a holder of
    DEST's lease calls this. Age is the file's own mtime: it says how long ago it was
    written here, not which version is newer."""
    import time

    fs, root = get_fs(dest)
    prefix = root.rstrip("/") + "/"
    now, out = time.time(), Swept()

    def old(path: str) -> bool:
        try:
            info = fs.info(path)
            m = info.get("mtime") or info.get("LastModified")
            t = m.timestamp() if hasattr(m, "timestamp") else float(m)
        except (OSError, TypeError, ValueError):
            return False
        return now - t > older_than_s

    if not fs.exists(root):
        return out
    for path in fs.find(root):
        if _TEMP.search(path) and old(path):
            fs.rm(path)
            out.temporaries.append(path[len(prefix):] if path.startswith(prefix) else path)
    parts, commits = join(root, "manifest", "parts"), join(root, "manifest", "commits")
    if fs.exists(parts):
        committed = {p.rsplit("/", 1)[-1][: -len(".json")] for p in fs.ls(commits, detail=False)} \
            if fs.exists(commits) else set()
        for path in fs.ls(parts, detail=False):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".parquet") and name[: -len(".parquet")] not in committed and old(path):
                fs.rm(path)
                out.uncommitted_parts.append("manifest/parts/" + name)
    return out
