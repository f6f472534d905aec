"""``--log-level``: where pixarc's log lines go. A module of its own, light to import: the
CLI configures logging while parsing its options, before a command's first progress line,
and must not pull in the job modules (pyarrow, the codecs) for it."""

from __future__ import annotations

import logging
from typing import Any


def configure_logging(level: str, console: Any = None) -> None:
    """``--log-level``: pixarc's loggers (one line per shard at INFO) to stderr, and the same
    level for Prefect's console handler (its run loggers still send INFO to the API)."""
    import os

    level = level.upper()
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    logger = logging.getLogger("pixarc")
    logger.setLevel(level)
    if not any(getattr(h, "_pixarc", False) for h in logger.handlers):
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
        handler._pixarc = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
