"""What to do about the problems a verify or restore found: one next step a person can run,
with DEST as an absolute URI (a Prefect artifact or a log line is read elsewhere, later,
by someone who does not know which folder the run was started in)."""

from __future__ import annotations

from typing import Iterable

# Problems that mean the archive is damaged (else: the environment, the sources or OUT).
INTEGRITY_PROBLEMS = frozenset({"missing", "size_mismatch", "hash_mismatch", "corrupt_container",
                                "verification_failed", "codec_error", "outside_dest", "corrupt_manifest_part",
                                "orphan_bitstream", "rows_missing"})
SOURCE_PROBLEMS = frozenset({"source_changed", "source_gone", "source_unreadable"})


def absolute_uri(url: str) -> str:
    """``url`` as an absolute URI (``file:///abs/path`` for a local path)."""
    from .storage import get_fs

    fs, path = get_fs(url)  # fsspec makes a local path absolute
    return fs.unstrip_protocol(path)


def next_step(problems: Iterable, dest: str) -> str:
    """The command (or action) that deals with ``problems`` of the archive at ``dest``."""
    codes = {p.problem for p in problems}
    uri = absolute_uri(dest)
    steps = []
    if codes & INTEGRITY_PROBLEMS:
        steps.append(f"pixarc repair {uri}  (then pixarc verify {uri} --full)")
    if "missing_plugin" in codes:
        steps.append("install the distribution named in each missing_plugin detail, then rerun")
    if codes & SOURCE_PROBLEMS:
        steps.append(f"the originals changed or went away: archive them again (pixarc archive SRC {uri}) "
                     "or accept the change")
    if not steps and codes:
        steps.append("see each problem's detail, fix the cause, then rerun")
    return "; ".join(steps)
