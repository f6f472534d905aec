"""The ``pixarc`` group: plugin commands (``register_commands``), the one ``--json``
document per command, ``--log-level``, and the registry a command runs with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .. import __version__, storageopts
from ..console import err, styled
from .render import end_json, exit_code, say_error

if TYPE_CHECKING:  # pragma: no cover
    from ..plugins import Registry


def registry() -> Registry:
    """The plugins this command runs with: the registry given as ``obj`` to ``main``
    (embedding, tests), else one built from the environment's allow/deny lists, once per
    command. It goes into the job records; nothing else looks a registry up."""
    from ..plugins import Registry, build_plugin_manager

    root = click.get_current_context().find_root()
    if isinstance(root.obj, Registry):
        return root.obj
    if "pixarc.registry" not in root.meta:
        root.meta["pixarc.registry"] = build_plugin_manager()
    return root.meta["pixarc.registry"]


class PluginGroup(click.Group):
    """A command group plugins add to through ``register_commands``. The core's own commands
    are found without loading any plugin; plugins load on the first listing (``--help``) or
    unknown name, once per invocation, and a broken one is reported on stderr, not fatal."""

    def __init__(self, *args, plugin_group: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.plugin_group = plugin_group  # None: the top level

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        root = ctx.find_root()
        found = root.meta.get("pixarc.plugin_commands")
        if found is None:
            from ..plugins import plugin_commands

            groups = [root.command, *(c for c in root.command.commands.values() if isinstance(c, PluginGroup))]
            core = {g.plugin_group: set(g.commands) for g in groups if isinstance(g, PluginGroup)}
            commands, problems = plugin_commands(core)
            for plugin, why in problems:
                err.print(styled((f"plugin {plugin!r} skipped", "yellow"), ": ", why))
            found = root.meta["pixarc.plugin_commands"] = {}
            for c in commands:
                found.setdefault(c.group, {})[c.command.name] = c.command
        return found.get(self.plugin_group, {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugin_commands(ctx).get(cmd_name)


class RootGroup(PluginGroup):
    """The ``pixarc`` group: however a command ends (a return, ``sys.exit``, a usage error, a
    crash), its ``--json`` document is printed once, with ``ok`` matching the exit status."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except SystemExit as exc:
            end_json(exit_code(exc.code), str(exc.code) if isinstance(exc.code, str) else None)
            raise
        except click.exceptions.Exit as exc:
            end_json(exc.exit_code)
            raise
        except click.ClickException as exc:
            end_json(exc.exit_code, exc.format_message(), "usage")
            raise
        except click.exceptions.Abort:
            end_json(1, "aborted", "aborted")
            raise
        except Exception as exc:
            from ..errors import storage_error

            if storage_error(exc):  # the store refused or could not be reached: no bug, one line
                code = say_error(exc)
                end_json(code)
                raise SystemExit(code) from None
            end_json(1, f"unexpected {type(exc).__name__}: {exc} (a pixarc bug; the traceback is on stderr)", "crash")
            raise
        end_json(0)
        return result


def _set_log_level(_ctx, _param, value):
    from ..logs import configure_logging

    configure_logging(value, err)
    return value


@click.group(cls=RootGroup)
@click.version_option(__version__, prog_name="pixarc")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, expose_value=False, callback=_set_log_level,
              help="Console log level for pixarc and Prefect (info: one line per shard).")
def main() -> None:
    """pixarc: archive image collections with verified, self-describing bitstreams."""
    storageopts.reset()


@main.group(cls=PluginGroup, plugin_group="train")
def train():
    """Train the models pixarc ships (reproducible: data order and seeds are fixed).

    The commands come from the installed plugins (hook ``register_commands``)."""
