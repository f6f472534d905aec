"""Fault injection for the crash-safety tests.

``PIXARC_FAULT="site:n"`` ends the process abruptly (``os._exit(137)``, like SIGKILL:
no cleanup, no flush) the n-th time execution reaches ``point(site)``. Unset, a point
costs one environment lookup. Sites: ``read``, ``encode``, ``encoded``, ``rename``
(bitstream temp file written and synced, not yet renamed), ``written``, ``part``
(manifest part written, commit marker not yet), ``commit``.
"""

from __future__ import annotations

import os
from collections import Counter

_hits: Counter[str] = Counter()


def point(site: str) -> None:
    spec = os.environ.get("PIXARC_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name == site:
        _hits[site] += 1
        if _hits[site] == int(nth or 1):
            os._exit(137)
