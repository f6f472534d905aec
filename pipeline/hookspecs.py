"""pixarc's plugin hooks: the one place the hook contract is defined.

Plugins are modules (or objects) with functions decorated by ``@pixarc.hookimpl`` and
are found through the ``pixarc`` entry-point group. Built-in codecs, the statistics
classifier and the default router ship as plugins of this same group.

The host passes ``register`` callbacks and owns collection and de-duplication; plugins
never return lists (as in ``llm``). Every hook below is documented with its exact
signature; ``tests/test_plugins.py`` checks that each one is exercised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import pluggy

if TYPE_CHECKING:  # records for the signatures only: a plugin imports this module cheaply
    import click  # (the CLI lists plugin commands for --help without pyarrow or numpy)

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
# Command line: called by ``pixarc.cli``, not when the plugin manager is built.
# ---------------------------------------------------------------------------


class RegisterCommand(Protocol):
    """The callback ``register_commands`` receives."""

    def __call__(self, command: "click.Command", group: str | None = None) -> None: ...


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Add commands to the ``pixarc`` command line.

    Called at most once per CLI invocation, and only when a command group is listed
    (``--help``) or asked for a name the core does not define: a core command such as
    ``pixarc archive`` starts without importing any plugin. Call
    ``register(command, group="train")`` with a :class:`click.Command` to add a sub-command
    to a group the core owns (today: ``"train"``), or ``register(command)`` for a
    top-level command. Build the command in a separate module (``commands.py``) imported
    inside this hook, and import the trainer (torch) inside the command's body, so
    ``pixarc --help`` stays fast. Shared training options come from
    :func:`pixarc.training.train_options`.

    A callback rather than the ``click.Group`` itself (as ``llm`` passes) because the host
    owns the command table, as it owns the codec table: a name that clashes with a core
    command or another plugin's is refused and reported, an unknown group is refused, and
    every command is attributed to its plugin. A plugin that fails to import or raises
    here is reported on stderr and skipped; it never breaks ``pixarc --help``.
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
