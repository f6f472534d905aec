"""Building the plugin manager: discovery, allow/deny lists, tracing, registries.

Environment variables:
    PIXARC_PLUGINS          comma-separated allowlist of entry-point names; when set,
                            nothing else loads (built-ins included unless named).
    PIXARC_DISABLE_PLUGINS  comma-separated denylist of entry-point names.
    PIXARC_TRACE_HOOKS      when set to 1, every hook call is logged (logger
                            ``pixarc.hooks``, level DEBUG... printed at INFO).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Callable

import pluggy

from . import hookspecs
from .errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .classify import Classifier
    from .codec import Codec

ENTRY_POINT_GROUP = "pixarc"
log = logging.getLogger("pixarc.hooks")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    codecs: tuple[str, ...] = ()
    classifiers: tuple[str, ...] = ()


def missing_dependency(exc: ImportError) -> str:
    """A reader's version of an ImportError: which package is missing and how to get it."""
    if not exc.name:
        return str(exc)
    name = exc.name.split(".")[0]
    if name in ("torch", "compressai", "torchvision", "einops", "scipy"):
        return f"needs {name}, which is not installed ({LEARNED_HINT})"
    return f"needs {name}, which is not installed ({exc})"


LEARNED_HINT = "pip install 'pixarc[learned]' and pip install --no-deps compressai==1.2.8"


def missing_learned_dependencies() -> list[str]:
    """Which of the learned codecs' dependencies are absent (checked without importing them)."""
    import importlib.util

    return [m for m in ("torch", "compressai") if importlib.util.find_spec(m) is None]


def _env_list(name: str) -> tuple[str, ...] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return tuple(sorted({x.strip() for x in raw.split(",") if x.strip()}))


@dataclass(frozen=True)
class PluginSelection:
    """Which entry-point plugins a registry loads: the allowlist (None: all) and the denylist."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> "PluginSelection":
        """The lists of ``PIXARC_PLUGINS`` and ``PIXARC_DISABLE_PLUGINS``, read now."""
        return cls(_env_list("PIXARC_PLUGINS"), _env_list("PIXARC_DISABLE_PLUGINS") or ())

    def wants(self, name: str) -> bool:
        return (self.allow is None or name in self.allow) and name not in self.deny


class ComponentCycle(PluginError):
    """A codec's components (``Codec.components``) lead back to itself."""


class Registry:
    """Codecs and classifiers collected from plugins, keyed by their stable ids.

    A job record carries its registry. Sent to another process (a Dask worker) a registry
    travels as its :class:`PluginSelection` and is rebuilt there, once per process and
    selection (:func:`load_registry`); one holding in-process plugins (``extra_plugins``)
    cannot travel and says so."""

    def __init__(self, pm: pluggy.PluginManager, dists: dict[str, tuple[str, str, str]],
                 selection: PluginSelection | None = None, in_process: tuple[str, ...] = ()):
        from .classify import Classifier
        from .codec import Codec

        self.pm = pm
        self.selection = selection or PluginSelection()
        self.in_process = in_process  # plugins given as objects, not entry points
        self.codecs: dict[str, type[Codec]] = {}
        self.classifiers: dict[str, type[Classifier]] = {}
        self.owner: dict[str, str] = {}  # codec/classifier id -> plugin name
        self.dists = dists  # plugin name -> (module, distribution, version)

        for impl in pm.hook.register_codecs.get_hookimpls():
            impl.function(register=functools.partial(self._add, self.codecs, Codec, "codec_id", impl.plugin_name))
        for impl in pm.hook.register_classifiers.get_hookimpls():
            impl.function(
                register=functools.partial(self._add, self.classifiers, Classifier, "classifier_id", impl.plugin_name)
            )
        self._instances: dict[str, object] = {}
        # Shards share a registry across threads: one thread makes an instance (and its
        # components) at a time, and sees only its own chain (a component cycle is refused).
        self._lock = threading.RLock()
        self._making: list[str] = []

    def __reduce__(self):
        if self.in_process:
            raise PluginError(f"a registry with in-process plugins ({', '.join(self.in_process)}) cannot be sent to "
                              "another process; install them as entry points, or run on threads")
        return load_registry, (self.selection,)

    def _add(self, table: dict, base: type, id_attr: str, plugin: str, cls: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin {plugin!r} registered {cls!r}, which is not a {base.__name__}")
        key = getattr(cls, id_attr, None)
        if not key or not isinstance(key, str):
            raise PluginError(f"plugin {plugin!r}: {cls.__name__} has no {id_attr}")
        if key in table and table[key] is not cls:
            raise PluginError(f"{id_attr} {key!r} registered by both {self.owner[key]!r} and {plugin!r}")
        table[key] = cls
        self.owner[key] = plugin

    def _instance(self, kind: str, table: dict, item_id: str):
        if item_id not in table:
            raise PluginError(f"no plugin provides {kind} {item_id!r} (known: {sorted(table)})")
        key = f"{kind}:{item_id}"
        with self._lock:
            if key not in self._instances:
                cls = table[item_id]
                try:
                    self._instances[key] = self._make(cls, item_id) if kind == "codec" else cls()
                except ImportError as exc:  # e.g. a learned codec without torch: skipped with this reason
                    raise PluginError(f"{kind} {item_id!r} is unavailable: {missing_dependency(exc)}") from exc
            return self._instances[key]

    def make(self, cls: "type[Codec]") -> "Codec":
        """A new instance of a codec class, registered here or not (a trainer's composite over
        any base), with its components from this registry, as :meth:`codec` makes them."""
        return self._make(cls, cls.codec_id)

    def _make(self, cls: "type[Codec]", codec_id: str) -> "Codec":
        """A codec instance, its components (``Codec.components``) made first, from this
        registry, and passed to its constructor (None where this registry cannot make one)."""
        with self._lock:
            if codec_id in self._making:
                chain = " -> ".join([*self._making, codec_id])
                raise ComponentCycle(f"codec {codec_id!r} is built on itself ({chain})")
            self._making.append(codec_id)
            try:
                parts: dict[str, Codec | None] = {}
                for keyword, part_id in cls.components.items():
                    try:
                        parts[keyword] = self.codec(part_id)
                    except ComponentCycle:
                        raise
                    except PluginError:
                        parts[keyword] = None  # not installed or disabled here: the codec says why
                return cls(**parts)
            finally:
                self._making.pop()

    def unavailable_reason(self, kind: str, item_id: str) -> str | None:
        """Why a registered codec/classifier cannot be used here (a missing dependency such as
        torch, no weights), or None. Codecs are asked about a plain 256x256 RGB image."""
        try:
            if kind == "classifier":
                return self.classifier(item_id).unavailable_reason()
            codec = self.codec(item_id)
        except PluginError as exc:
            return str(exc)
        from .images import ImageInfo

        probe = ImageInfo(256, 256, "RGB", 8, "PNG", "RGB")
        return codec.unsupported_reason(probe) if "RGB" in getattr(codec, "modes", ("RGB",)) else None

    def codec(self, codec_id: str) -> "Codec":
        """A (cached) codec instance; raises PluginError if no plugin provides it."""
        return self._instance("codec", self.codecs, codec_id)

    def classifier(self, classifier_id: str) -> "Classifier":
        """A (cached) classifier instance; raises PluginError if no plugin provides it."""
        return self._instance("classifier", self.classifiers, classifier_id)

    def provenance(self, item_id: str) -> tuple[str, str]:
        """(distribution, version) of the plugin that registered ``item_id``."""
        _, dist, version = self.dists.get(self.owner.get(item_id, ""), ("", "", ""))
        return dist, version

    def plugins(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if name is None or plugin is None:
                continue
            module, dist, version = self.dists.get(name, (getattr(plugin, "__name__", str(plugin)), "", ""))
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            out.append(
                PluginInfo(
                    name,
                    module,
                    dist,
                    version,
                    hooks,
                    tuple(k for k, v in self.owner.items() if v == name and k in self.codecs),
                    tuple(k for k, v in self.owner.items() if v == name and k in self.classifiers),
                )
            )
        return sorted(out, key=lambda p: p.name)


def build_plugin_manager(extra_plugins: dict[str, object] | None = None,
                         selection: PluginSelection | None = None) -> Registry:
    """A new registry of the plugins of the entry-point group that ``selection`` allows
    (default: the environment's allow/deny lists, read now).

    ``extra_plugins`` (name -> module/object) lets tests and embedding code add plugins
    without installing a distribution; they are subject to the same lists.
    """
    selection = selection or PluginSelection.from_env()
    pm, dists = _load_plugins(extra_plugins, selection=selection)
    return Registry(pm, dists, selection, tuple(n for n in (extra_plugins or {}) if selection.wants(n)))


@functools.lru_cache(maxsize=8)
def load_registry(selection: PluginSelection) -> Registry:
    """The registry a job record's registry becomes in another process (a Dask worker):
    built once per process and selection, so its codecs (and their models) load once
    there, not once per shard. Nothing in this process looks it up otherwise."""
    return build_plugin_manager(selection=selection)


def default_registry() -> Registry:
    """A new registry of the plugins the environment allows (embedding, benchmarks). pixarc
    itself never looks a registry up: the CLI makes one per command and hands it to the job
    record, a flow makes one per run."""
    return build_plugin_manager()


def _load_plugins(extra_plugins: dict[str, object] | None = None,
                  broken: Callable[[str, str], None] | None = None, selection: PluginSelection | None = None,
                  ) -> tuple[pluggy.PluginManager, dict[str, tuple[str, str, str]]]:
    """The plugin manager and each plugin's (module, distribution, version). A plugin that
    fails to import raises PluginError, or, when ``broken`` is given, is reported to it
    (name, reason) and skipped."""
    pm = pluggy.PluginManager("pixarc")
    pm.add_hookspecs(hookspecs)
    wanted = (selection or PluginSelection.from_env()).wants

    dists: dict[str, tuple[str, str, str]] = {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if not wanted(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            if broken is None:
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
            broken(ep.name, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
            continue
        pm.register(plugin, name=ep.name)
        dist = ep.dist.name if ep.dist else ""
        version = ep.dist.version if ep.dist else ""
        dists[ep.name] = (ep.value, dist, version)
    for name, plugin in (extra_plugins or {}).items():
        if wanted(name):
            pm.register(plugin, name=name)
            dists[name] = (getattr(plugin, "__name__", type(plugin).__name__), "", "")
    if os.environ.get("PIXARC_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(lambda msg: log.info(msg.rstrip()))
        pm.enable_tracing()
    return pm, dists


# Groups the core CLI creates and plugins may add to (``register(command, group=...)``).
COMMAND_GROUPS = ("train",)


@dataclass(frozen=True)
class PluginCommand:
    """A command a plugin added through ``register_commands``; ``group`` None is top level."""

    plugin: str
    group: str | None
    command: "click.Command"


def plugin_commands(core: dict[str | None, set[str]], extra_plugins: dict[str, object] | None = None,
                    ) -> tuple[list[PluginCommand], list[tuple[str, str]]]:
    """Collect the commands of the allowed plugins for the CLI.

    ``core`` names the commands the core defines in each group (None: top level); a plugin
    command may not take one of those names, nor one another plugin took first. Returns the
    commands and the problems as (plugin, reason): a plugin that fails to import, raises in
    its hook or registers something refused is reported, never fatal, so ``pixarc --help``
    works with a broken plugin installed.
    """
    import click

    problems: list[tuple[str, str]] = []
    pm, _ = _load_plugins(extra_plugins, broken=lambda name, why: problems.append((name, why)))
    taken: dict[tuple[str | None, str], str] = {(g, n): "the core" for g, names in core.items() for n in names}
    out: list[PluginCommand] = []

    def register(plugin: str, command: click.Command, group: str | None = None) -> None:
        # A refused command is reported and skipped; the plugin's other commands still count.
        if not isinstance(command, click.Command):
            problems.append((plugin, f"registered {command!r}, which is not a click.Command"))
        elif group is not None and group not in COMMAND_GROUPS:
            problems.append((plugin, f"command {command.name!r}: no group {group!r} "
                                     f"(groups: {', '.join(COMMAND_GROUPS)})"))
        elif (group, command.name) in taken:
            where = f"pixarc {group} {command.name}" if group else f"pixarc {command.name}"
            problems.append((plugin, f"{where} is already defined by {taken[group, command.name]}"))
        else:
            taken[group, command.name] = f"plugin {plugin!r}"
            out.append(PluginCommand(plugin, group, command))

    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(register=functools.partial(register, impl.plugin_name))
        except Exception as exc:  # a plugin's bug must not take the whole command line down
            problems.append((impl.plugin_name, f"register_commands failed: {type(exc).__name__}: {exc}"))
    return out, problems
