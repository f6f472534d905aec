"""The recompression flow (plan, or apply): defined in :mod:`pixarc.flows.jobs` with the
other flows; this name stays importable without importing Prefect."""

from __future__ import annotations

from . import LazyFlow

recompress_flow = LazyFlow("recompress_flow", "pixarc-recompress")
