"""``--storage-option [PROTOCOL.]KEY=VALUE``: fsspec options by flag, not only by environment.

fsspec takes per-protocol defaults from ``fsspec.config.conf`` (filled at import from
``FSSPEC_<PROTOCOL>_<KEY>`` variables and JSON/INI files in ``FSSPEC_CONFIG_DIR``, which
is the "by config" way). A flag sets the same table for this process and exports the
matching ``FSSPEC_*`` variable, so Dask worker processes started afterwards see it too.
Without ``PROTOCOL.`` an option applies to the protocols of the command's SRC/DEST URLs.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

_pending: list[tuple[str | None, str, object]] = []


def parse(text: str) -> tuple[str | None, str, object]:
    """``s3.endpoint_url=http://x`` -> ("s3", "endpoint_url", "http://x"); values that read as
    JSON (numbers, true/false, null, objects) are decoded."""
    if "=" not in text:
        raise ValueError(f"--storage-option wants [PROTOCOL.]KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    protocol, _, name = key.rpartition(".")
    if not name:
        raise ValueError(f"--storage-option {text!r} has no key")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return (protocol or None), name, value


def add(options: Iterable[str]) -> None:
    """Remember options given on the command line (applied by :func:`apply`)."""
    for text in options:
        _pending.append(parse(text))


def reset() -> None:
    _pending.clear()


def apply(urls: Iterable[str | None]) -> dict[str, dict[str, object]]:
    """Set the remembered options for their protocol, or for the protocols of ``urls``."""
    import fsspec.config
    from fsspec.core import split_protocol

    protocols = sorted({split_protocol(u)[0] or "file" for u in urls if u})
    applied: dict[str, dict[str, object]] = {}
    for protocol, name, value in _pending:
        for p in [protocol] if protocol else [p for p in protocols if p != "file"]:
            fsspec.config.conf.setdefault(p, {})[name] = value
            os.environ[f"FSSPEC_{p.upper()}_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
            applied.setdefault(p, {})[name] = value
    return applied
