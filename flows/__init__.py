"""Prefect flows: ``archive``, ``restore``, ``verify`` (one task per shard)."""

from .jobs import archive_flow, restore_flow, verify_flow

__all__ = ["archive_flow", "restore_flow", "verify_flow"]
