"""``python -m pixarc.cli``: the ``pixarc`` command."""

from . import run

run()
