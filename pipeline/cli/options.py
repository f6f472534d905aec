"""Options several ``pixarc`` commands share, each defined once: ``--json``,
``--storage-option``, ``--engine``, the runner options, ``--device``, ``--wait`` and
``--no-progress``.

``--storage-option`` is applied before the command's body runs, so the first access to
SRC/DEST/OUT (the "is this an archive" check included) already uses the options;
applied any later, an ``s3://`` DEST is first looked up on AWS's own endpoint.
"""

from __future__ import annotations

import functools

import click

from .. import storageopts
from ..console import console, err
from . import jsonout


def json_flag(command: str):
    """--json: one JSON document on stdout instead of tables (see pixarc.cli.jsonout). The
    document is printed by the top-level group when the command ends (``pixarc.cli.root.RootGroup``)."""

    def callback(ctx, _param, value):
        if value:
            jsonout.start(command)
            console.quiet = True
        else:
            jsonout.stop()
            console.quiet = False
        return value

    return click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=callback, is_eager=True,
                        help="Print one JSON document on stdout (fields: docs/operations.md, Scripting).")


def _remember_storage(_ctx, param, value):
    try:
        storageopts.add(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    return value


def storage_options(*url_params: str):
    """--storage-option on a command whose URL arguments are ``url_params`` (e.g. "src",
    "dest"); the options are set in fsspec before the command's body runs."""

    def decorate(fn):
        @functools.wraps(fn)
        def applied_first(*args, **kwargs):
            storageopts.apply([kwargs.get(p) for p in url_params])
            for p in ("dest", "out"):
                if p in url_params and str(kwargs.get(p) or "").startswith("memory://"):
                    err.print(f"note: {p.upper()} {kwargs[p]} is in this process's memory: whatever is written "
                              "there is gone when pixarc exits (use a path or an object-store URL to keep it)")
            return fn(*args, **kwargs)

        return click.option(
            "--storage-option", "storage_options", multiple=True, expose_value=False, callback=_remember_storage,
            metavar="[PROTOCOL.]KEY=VALUE",
            help="fsspec option for the storage of " + "/".join(p.upper() for p in url_params)
                 + ", e.g. s3.endpoint_url=http://localhost:9000 (repeatable; without PROTOCOL it applies to "
                   "the protocols of the URLs given).")(applied_first)

    return decorate


def policy_help(what: str) -> str:
    from ..policies import builtin_policies

    return f"{what}: a built-in name ({', '.join(builtin_policies())}) or a policy TOML file (path/URL)."


def runner_options(fn):
    """--runner/--workers/--dask-address, shared by the commands that run a flow."""
    fn = click.option("--dask-address", default=None, help="Existing Dask scheduler (tcp://host:8786) for --runner dask.")(fn)
    fn = click.option("--runner", type=click.Choice(["threads", "dask"]), default="threads", show_default=True,
                      help="Task runner: a thread pool here, or Dask (a local cluster, or --dask-address).")(fn)
    fn = click.option("--workers", default=2, show_default=True, help="Shards processed concurrently.")(fn)
    return fn


ENGINE_HELP = ("prefect: a Prefect flow run (a temporary local API unless a server is configured); local: the "
               "same job in this process (no API to start); auto: prefect when a Prefect server is configured "
               "(PREFECT_API_URL or profile), else local.")


def _remember_engine(ctx, _param, value):
    ctx.meta["pixarc.engine"] = value
    return value


def engine_option(fn):
    """--engine for the commands that run a flow (archive has its own, same choices)."""
    return click.option("--engine", type=click.Choice(["auto", "prefect", "local"]), default="auto",
                        show_default=True, expose_value=False, callback=_remember_engine, help=ENGINE_HELP)(fn)


def no_progress_option(fn):
    return click.option("--no-progress", is_flag=True,
                        help="No progress bar on stderr (it is also off with --json).")(fn)


def _device_value(_ctx, _param, value):
    """``--device`` checked before any work (a typo is a usage error, exit 2)."""
    from ..device import check_request
    from ..errors import PixarcError

    try:
        return check_request(value)
    except PixarcError as exc:
        raise click.BadParameter(str(exc)) from None


def device_option(default: str, help: str):
    """--device on a command that runs a job: a request (auto, cpu, cuda, cuda:N), checked here."""
    return click.option("--device", default=default, show_default=True, callback=_device_value, help=help)


DECODE_DEVICE_HELP = ("Device for decoding with codecs that use one: cpu (what every bitstream was checked on), "
                      "auto, cuda, cuda:N.")


def wait_option(help: str = "When another run writes DEST: wait for it (up to SECONDS)."):
    """--wait on a command that writes DEST (a day without a value)."""
    return click.option("--wait", type=float, default=0.0, is_flag=False, flag_value=86400.0, help=help)
