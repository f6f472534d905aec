"""``pixarc`` command line: archive, restore, verify, report, recompress, prune, repair, serve,
plugins, classify, train, export-bagit.

One module per command group (``archive``, ``readback``, ``upkeep``, ``serve``, ``report``,
``inspect``), the ``pixarc`` group itself and the plugins' commands (``root``), one renderer
for summaries, tables, problems, JSON and exit codes (``render``), how a job runs from here
(``running``: engine, progress) and the shared options (``options``). Plugins add commands
through the ``register_commands`` hook.
"""

from __future__ import annotations

import sys

from . import archive, inspect, readback, report, serve, upkeep  # noqa: F401  (they add their commands to main)
from .root import main

__all__ = ["main", "run"]


def run() -> None:
    """The ``pixarc`` command. Once a command has finished (its results committed and its
    exit status decided), leave without interpreter finalisation when Prefect was not used:
    native thread pools (pyarrow, torch) were seen to abort in their static destructors at
    exit (about 1 run in 20 when several runs contend for one DEST), turning a clean run's
    status 0 into 134. With Prefect loaded, exit normally so its atexit hooks stop the
    temporary API server."""
    import logging
    import os

    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if "prefect" in sys.modules:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
