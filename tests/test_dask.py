"""The same archive flow on a real Dask LocalCluster (2 worker processes) via prefect-dask."""

import os

import pytest

from pixarc.manifest import latest, read_manifest

pytestmark = pytest.mark.prefect


def test_archive_through_a_local_dask_cluster(small_collection, tmp_path):
    from pixarc.flows import archive_flow
    from pixarc.flows.runners import make_task_runner

    from pixarc import progress

    dest = tmp_path / "dest"
    events: list[tuple[str, int]] = []
    progress.listen("dask-run", lambda event, n: events.append((event, n)))
    flow = archive_flow.with_options(task_runner=make_task_runner("dask", workers=2))
    try:
        summary = flow(src=str(small_collection), dest=str(dest), shard_size=1, policy="png", run_id="dask-run")
    finally:
        progress.forget("dask-run")
    assert summary.totals.done == 5 and summary.shards == 5
    # the progress bar moves under Dask: per-shard events from the flow's process (per-image
    # events happen in the worker processes, where nobody listens)
    assert sum(n for e, n in events if e == "shard") == 5 and not [e for e, _ in events if e == "advance"]
    assert sum(n for e, n in events if e == "shard_bytes") == summary.totals.source_bytes
    pids = {w.rsplit(":", 1)[1] for w in summary.totals.workers}
    assert str(os.getpid()) not in pids, "shards must run in the Dask worker processes"
    assert 1 <= len(pids) <= 2
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert len(rows) == 5 and all(r["status"] == "done" for r in rows)


def test_unknown_runner_is_refused():
    from pixarc.flows.runners import make_task_runner

    with pytest.raises(ValueError, match="unknown task runner"):
        make_task_runner("spark")
