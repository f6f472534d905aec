"""The CLI's two terminals: ``console`` (stdout: tables, results) and ``err`` (stderr:
progress, warnings, errors).

Both have Rich markup turned off: text printed by pixarc carries keys, paths, codec
reasons and install lines such as ``pip install 'pixarc[learned]'``, and with markup on
Rich reads ``[learned]`` as a style tag and prints ``pip install 'pixarc'``. Colour is
given explicitly instead, with :func:`styled`, so no printed text is ever parsed.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.text import Text

# Tables are wide; when piped (no terminal to measure) use 120 columns, not rich's 80.
console = Console(width=None if sys.stdout.isatty() else 120, markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain strings and (text, style) pairs, e.g.
    ``styled(("error:", "red"), " ", message)``; no part is read as markup."""
    return Text.assemble(*parts)


def warn_text(text: str) -> Text:
    return Text(text, style="yellow")


def say(*objects) -> None:
    """A line of results on stdout, never wrapped by Rich: a narrow terminal folds it, and a
    script reading the output gets it whole ("... 0 failed", not "... 0" and "failed")."""
    console.print(*objects, soft_wrap=True)
