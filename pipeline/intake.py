"""Intake: read -> probe -> classify -> route, one object at a time.

The same steps serve ``archive`` (which then encodes), ``archive --dry-run`` (which stops
at the first usable codec) and ``classify`` (which stops at the classification), so the
three always agree on what an object is and where it goes. Bad input never raises out of
:func:`intake`: the result says why (a stable reason and a message).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import faults
from .classify import UNKNOWN, Classification, pick_classifier
from .crawl import ImageRef, stamp
from .errors import InputError
from .images import HEADER_PREFIX, SourceImage, check_header, probe_and_load
from .layout import check_collision
from .plugins import Registry
from .policy import Policy, Route
from .storage import check_size, get_fs, open_source, safe_key

REJECT_REASONS = frozenset({"too_large", "format_not_allowed", "unsafe_key", "key_collision", "not_regular_file",
                            "duplicate_key"})
NO_CLASSIFIER = "none"  # policy ``classifier = "none"``: every image takes the unknown route
from .limits import DEFAULT_MAX_BYTES  # noqa: E402,F401  (re-exported: callers import it from here)


@dataclass
class Intake:
    """What intake learned about one object. ``error`` set: the object stops here."""

    ref: ImageRef
    key: str
    src: SourceImage | None = None
    classification: Classification | None = None
    route: Route | None = None
    classify_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: InputError | None = None

    @property
    def rejected(self) -> bool:
        """Refused by policy or safety (vs an unreadable source)."""
        return self.error is not None and self.error.reason in REJECT_REASONS


def read_source(ref: ImageRef, policy: Policy, max_bytes: int, notes: list[str]) -> SourceImage:
    """Read and probe one object, bounded: refused from its crawl size, a 64 KiB header
    check before the rest is read, never blocking on a FIFO swapped in after the crawl."""
    if ref.kind == "duplicate":
        raise InputError("duplicate_key", "an earlier member of the same zip file has this very name: only one of "
                                          "them could be restored under it; not read (extract it by hand)")
    if ref.kind != "file":
        raise InputError("not_regular_file", f"a {ref.kind} entry, not a regular file (FIFO, socket, device); "
                                             "not read")
    check_size(ref.size, max_bytes)  # refused from the crawl's size: not even opened
    sfs, spath = get_fs(ref.uri)
    faults.point("read")
    try:
        with open_source(sfs, spath, max_bytes) as f:
            head = f.read(HEADER_PREFIX)
            if len(head) == HEADER_PREFIX:  # a shorter read is the whole object: the probe checks it alone
                check_header(head, max_pixels=policy.max_pixels, formats=policy.formats)
            data = head + _read_rest(f, len(head), ref.size, max_bytes)
        check_size(len(data), max_bytes)  # grew since it was opened
    except (OSError, ValueError) as exc:
        raise InputError("io_error", f"cannot read source: {exc}") from None
    if len(data) != ref.size:
        notes.append(f"size changed since crawl ({ref.size} -> {len(data)} bytes)")
    elif ref.mtime and _stamp_now(sfs, spath) not in ("", ref.mtime):
        notes.append("modified while being archived: the bytes read are what is archived and hashed")
    return probe_and_load(data, max_pixels=policy.max_pixels, formats=policy.formats)


def _read_rest(f, have: int, expected: int, max_bytes: int) -> bytes:
    """The rest of a source after its header: what the crawl said is there, plus whatever
    it grew by, at most ``max_bytes`` + 1 in all (one byte over tells it is too large).
    Asking for the whole limit in one read would make Python allocate a buffer of that
    size (1 GiB by default) per object: milliseconds per small image."""
    limit = max_bytes + 1 - have if max_bytes else None
    first = max(0, expected + 1 - have)
    if limit is not None:
        first = min(first, limit)
    chunks = [f.read(first)] if first else []
    if not chunks or len(chunks[0]) == first:  # the file may be longer than the crawl saw
        rest = f.read(limit - first) if limit is not None else f.read()
        chunks.append(rest)
    return b"".join(chunks)


def _stamp_now(fs, path: str) -> str:
    try:
        return stamp(fs.info(path))
    except (OSError, ValueError):
        return ""


def classify_image(src: SourceImage, policy: Policy, registry: Registry, notes: list[str]) -> Classification:
    """The policy's classifier (or its fallback) on the canonical pixels; a broken
    classifier degrades to the ``unknown`` route with a note, never fails the object."""
    if src.image is None:
        return Classification(UNKNOWN, 0.0, "")
    if policy.classifier == NO_CLASSIFIER:  # a policy with one route for everything: nothing to decide
        return Classification(UNKNOWN, 1.0, NO_CLASSIFIER)
    classifier, note = pick_classifier(registry, policy)
    if note:
        notes.append(note)
    try:
        return classifier.classify(src.image)
    except Exception as exc:
        notes.append(f"classifier {classifier.classifier_id} failed: {exc}")
        return Classification(UNKNOWN, 0.0, classifier.classifier_id)


def intake(ref: ImageRef, policy: Policy, registry: Registry, max_bytes: int = DEFAULT_MAX_BYTES,
           route: bool = True) -> Intake:
    """Read, probe, classify and (with ``route``) route one object."""
    out = Intake(ref, ref.key)
    try:
        out.key = safe_key(ref.key)
        check_collision(out.key)
        out.src = read_source(ref, policy, max_bytes, out.notes)
    except InputError as exc:
        out.error = exc
        return out
    out.notes.extend(out.src.info.notes)
    t0 = time.perf_counter()
    out.classification = classify_image(out.src, policy, registry, out.notes)
    out.classify_s = time.perf_counter() - t0 if out.src.image is not None else 0.0
    if route:
        out.route = registry.pm.hook.route(info=out.src.info, classification=out.classification, policy=policy)
        if out.route.reason:
            out.notes.append(f"route {out.route.domain}: {out.route.reason}")
    return out
