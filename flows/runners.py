"""Task runners by name: the engine that executes shard tasks is configuration, not code.

* ``threads`` — Prefect's thread pool in this process (default; codecs release the GIL).
* ``dask`` — prefect-dask: a new ``LocalCluster`` of ``workers`` processes, or an existing
  scheduler at ``address`` (``tcp://host:8786``) whose workers run on other machines.
  Workers need pixarc installed and access to SRC/DEST URLs (object storage or a shared
  filesystem) and to the Prefect API (``PREFECT_API_URL``).
"""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

RUNNERS = ("threads", "dask")


def make_task_runner(kind: str = "threads", workers: int = 2, address: str | None = None):
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    raise ValueError(f"unknown task runner {kind!r}; choose from {RUNNERS}")
