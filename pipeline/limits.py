"""Limits on what a source may cost before it is read (here, not in ``intake``, so the CLI
can show the defaults in ``--help`` without importing the archive machinery)."""

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: a source is held in memory while it is archived
