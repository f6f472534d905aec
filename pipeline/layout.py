"""Where things live in an archive (DEST) and the rules that keep them there.

Bitstreams are ``<key>.pxa``, or ``<key>.<sha12>.pxa`` for later versions, named in the
manifest relative to DEST so a copied or moved archive reads its own files. Nothing is
ever read from, written to or deleted outside DEST, and no bitstream is overwritten.
"""

from __future__ import annotations

import json
import re

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


def write_version(fs, root: str, key: str, blob: bytes) -> str:
    """Store a new bitstream without overwriting anything; returns its DEST-relative path.

    ``<key>.pxa`` when free; taken (an older version of a changed source, or any other
    file) -> ``<key>.<sha12>.pxa``, named by the bitstream's own hash, so a file already
    there under that name holds these very bytes."""
    rel = key + ".pxa"
    if write_new(fs, join(root, rel), blob, fault_site="rename"):
        return rel
    rel = f"{key}.{sha256_hex(blob)[:12]}.pxa"
    if write_new(fs, join(root, rel), blob, fault_site="rename"):
        return rel
    try:
        same = sha256_hex(fs.cat_file(join(root, rel))) == sha256_hex(blob)
    except (OSError, IsADirectoryError):
        same = False
    if not same:
        raise InputError("key_collision", f"{key!r}: both bitstream names {key}.pxa and {rel} are taken")
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
