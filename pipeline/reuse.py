"""Resuming: a bitstream an interrupted run wrote for the same source and route is reused
(after a decode check on the CPU, the path restore uses) instead of encoded again."""

from __future__ import annotations

import re
import time

from .checks import decode_container
from .codec import params_hash
from .container import unpack
from .encode import Encoded
from .errors import PixarcError
from .images import SourceImage
from .layout import bitstream_stem
from .plugins import Registry
from .policy import Route
from .storage import join


def _route_keys(route: Route, registry: Registry) -> set[tuple[str, str]]:
    """(codec id, params hash) of what the route may store. A rate-searched candidate's
    params are matched without its rate parameter: the search chose that per image."""
    keys = set()
    for c in route.candidates:
        if c.codec_id not in registry.codecs:
            continue
        codec = registry.codec(c.codec_id)
        try:
            params = codec.validate_params(c.params)
        except PixarcError:
            continue
        if c.target and codec.rate_param and not codec.lossless:
            params = {k: v for k, v in params.items() if k != codec.rate_param}
        keys.add((c.codec_id, params_hash(params)))
    return keys


def _stored_keys(head, registry: Registry) -> set[tuple[str, str]]:
    """(codec id, params hash) of a stored bitstream, with and without its rate parameter
    (:func:`_route_keys` has the latter for rate-searched candidates only)."""
    params = dict(head.meta.get("params", {}))
    keys = {(head.codec_id, params_hash(params))}
    codec = registry.codec(head.codec_id) if head.codec_id in registry.codecs else None
    if codec is not None and codec.rate_param and codec.rate_param in params:
        keys.add((head.codec_id, params_hash({k: v for k, v in params.items() if k != codec.rate_param})))
    return keys


def _versions(fs, root: str, key: str) -> list[str]:
    """DEST-relative names a bitstream of ``key`` can have (``<key>.pxa``, then the
    ``<key>.<sha12>.pxa`` written when that name was taken; ``<key>`` as
    :func:`~pixarc.layout.bitstream_stem` makes it, as :func:`write_version` does), those
    that exist."""
    stem = bitstream_stem(key)
    rel = stem + ".pxa"
    out = [rel]
    if not fs.exists(join(root, rel)):
        return []  # a later version is written only where this name was taken: nothing here
    parent, _, base = stem.rpartition("/")
    pattern = re.compile(re.escape(base) + r"\.[0-9a-f]{12}\.pxa")
    try:
        names = fs.ls(join(root, parent) if parent else root, detail=False)
    except (OSError, FileNotFoundError):
        names = []
    out += sorted((f"{parent}/{n}" if parent else n) for n in (x.rstrip("/").rsplit("/", 1)[-1] for x in names)
                  if pattern.fullmatch(n))
    return out


def try_reuse(fs, root: str, key: str, src: SourceImage, route: Route, registry: Registry
              ) -> tuple[Encoded, str] | None:
    """A bitstream left by an interrupted run for the same source and route, under either
    name a new version can take: decode-check it (on the CPU: the path restore uses,
    whatever encoded it). Returns it with its DEST-relative name."""
    wanted = None
    for rel in _versions(fs, root, key):
        path = join(root, rel)
        try:
            blob = fs.cat_file(path)
            head = unpack(blob, header_only=True)
            if wanted is None:
                wanted = _route_keys(route, registry)
            if (head.source_sha256 != src.sha256 or head.meta.get("domain", route.domain) != route.domain
                    or not _stored_keys(head, registry) & wanted):
                continue
            t0 = time.perf_counter()
            c, _ = decode_container(blob, registry)
            decode_s = time.perf_counter() - t0
        except (PixarcError, OSError):
            continue  # unusable: a fresh, verified encode is written under another name
        codec = registry.codec(c.codec_id)
        return Encoded.from_container(codec, c, blob, decode_s, codec.restore_device), rel
    return None
