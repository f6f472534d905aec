"""Prefect flows: ``archive``, ``restore``, ``verify``, ``recompress`` (one task per shard).

Importing Prefect costs seconds, and the local engine never needs it: the names here are
light handles that import the real flow (``pixarc.flows.jobs``) on first real use, and
tell the CLI which job they stand for without that import.
"""

from __future__ import annotations

import importlib
from typing import Any

_FLOWS = {
    "archive_flow": "pixarc-archive",
    "restore_flow": "pixarc-restore",
    "verify_flow": "pixarc-verify",
    "recompress_flow": "pixarc-recompress",
}


class LazyFlow:
    """Stands for a flow of :mod:`pixarc.flows.jobs`; any use but ``.name`` loads it."""

    def __init__(self, attr: str, name: str):
        self._attr = attr
        self.name = name

    def load(self):
        return getattr(importlib.import_module("pixarc.flows.jobs"), self._attr)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.load(), item)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<LazyFlow {self.name}>"


def __getattr__(name: str) -> Any:
    if name in _FLOWS:
        return LazyFlow(name, _FLOWS[name])
    raise AttributeError(name)


def flow_for(job: str) -> LazyFlow:
    """The flow that runs the job named ``job`` (``archive``...): ``<job>_flow``, ``pixarc-<job>``."""
    attr = f"{job}_flow"
    if attr not in _FLOWS:
        raise KeyError(f"no Prefect flow runs the {job!r} job")
    return LazyFlow(attr, _FLOWS[attr])


__all__ = ["archive_flow", "restore_flow", "verify_flow", "recompress_flow"]
