"""pixarc: archive image collections with verified, self-describing bitstreams.

The import name is ``pixarc``; the sources live in ``pipeline/`` (the design card's
layout), mapped by ``pyproject.toml``.
"""

__version__ = "0.1.0"
