"""pixarc's plugin hooks: the one place the hook contract is defined.

Plugins are modules (or objects) with functions decorated by ``@pixarc.hookimpl`` and
are found through the ``pixarc`` entry-point group. Built-in codecs, the statistics
classifier and the default router ship as plugins of this same group.

The host passes ``register`` callbacks and owns collection and de-duplication; plugins
never return lists (as in ``llm``). Every hook below is documented with its exact
signature; ``tests/test_plugins.py`` checks that each one is exercised.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from .classify import Classification, Classifier
from .codec import Codec
from .images import ImageInfo
from .manifest import ManifestRow
from .policy import Policy, Route

hookspec = pluggy.HookspecMarker("pixarc")
hookimpl = pluggy.HookimplMarker("pixarc")

# ---------------------------------------------------------------------------
# Registration: called once when the plugin manager is built.
# ---------------------------------------------------------------------------


@hookspec
def register_codecs(register: Callable[[type[Codec]], None]) -> None:
    """Register codec classes.

    Called once per plugin manager. Call ``register(CodecClass)`` for each codec the
    plugin provides; the class must subclass :class:`pixarc.codec.Codec` and its
    ``codec_id`` must be unique across all plugins (a clash raises ``PluginError``).
    Import heavy dependencies (torch) inside the codec, not at module import time.
    """


@hookspec
def register_classifiers(register: Callable[[type[Classifier]], None]) -> None:
    """Register domain classifier classes.

    Call ``register(ClassifierClass)``; the class subclasses
    :class:`pixarc.classify.Classifier` and has a unique ``classifier_id``. The policy
    file names which classifier to use (and which one to fall back to).
    """


# ---------------------------------------------------------------------------
# Per-image decisions: called for every image while archiving.
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def route(info: ImageInfo, classification: Classification, policy: Policy) -> Route | None:
    """Choose how to encode one image.

    Called after classification with the image's facts (no pixels), the classifier's
    answer and the loaded policy. Return a :class:`pixarc.policy.Route` (ordered codec
    candidates with parameters) or ``None`` to let later plugins decide. The first
    non-None answer wins; the built-in router (``pixarc.routing``) runs last.
    """


# ---------------------------------------------------------------------------
# Records and reports.
# ---------------------------------------------------------------------------


@hookspec
def manifest_columns() -> "dict[str, Any] | None":
    """Extra manifest columns.

    Return ``{name: pyarrow.DataType}``; the names must not clash with the core schema
    in ``pixarc.manifest``. ``manifest_values`` fills them (into ``ManifestRow.extra``;
    missing values become null).
    """


@hookspec
def manifest_values(row: ManifestRow) -> "dict[str, Any] | None":
    """Values of a plugin's own manifest columns for one row.

    Called for every row an archive, recompress or repair run is about to commit (its
    status, codec and bitstream facts filled in). Return ``{name: value}`` for columns the
    plugin declared in ``manifest_columns``; other names are ignored, a column no plugin
    fills is null.
    """


@hookspec
def report_sections(rows: Any) -> "list[tuple[str, str]] | None":
    """Extra report sections.

    Called by ``pixarc report`` with the latest manifest rows (a ``pyarrow.Table``).
    Return a list of ``(title, markdown_text)`` pairs to append to the report.
    """
