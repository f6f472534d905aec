"""``pixarc`` command line: archive, restore, verify, report, recompress, prune, repair, serve, plugins,
classify, train, export-bagit."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Iterator

import click
from rich.table import Table

from . import __version__, jsonout, progress, storageopts
from .cliopts import (ENGINE_HELP, engine_option, json_flag, no_progress_option, policy_help, runner_options,
                      storage_options)
from .console import console, err, say, styled, warn_text
from .errors import PixarcError
from .limits import DEFAULT_MAX_BYTES
from .remedy import INTEGRITY_PROBLEMS  # (re-exported: problems that mean the archive is damaged)


def _prefect_defaults() -> None:
    """Embedded defaults: no telemetry; run loggers at INFO (the one-line-per-shard logs reach
    the Prefect API and its UI) while the console shows warnings only (``--log-level`` raises
    it); a patient start for the temporary local API on a busy machine."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_ROOT_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def _starting_prefect() -> None:
    """Say so when Prefect is about to start a temporary API (seconds before any work)."""
    from .runs import prefect_api_configured

    _prefect_defaults()
    if not prefect_api_configured():
        err.print("starting Prefect (a temporary local API; set PREFECT_API_URL to use a server, "
                  "or --engine local)…")


# Seconds between progress lines when the output is not a terminal (PIXARC_PROGRESS_INTERVAL).
PROGRESS_INTERVAL = 10.0


def _progress_lines() -> bool:
    """Plain progress lines instead of a bar: a bar redrawn in place shows nothing in a log
    file or a pipe until the command ends."""
    return not (sys.stdout.isatty() and err.is_terminal)


@contextlib.contextmanager
def _progress(run_id: str, label: str, enabled: bool = True) -> Iterator[None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .progress import LineReporter, Rate

    if enabled and not jsonout.active() and _progress_lines():
        interval = float(os.environ.get("PIXARC_PROGRESS_INTERVAL", PROGRESS_INTERVAL))
        reporter = LineReporter(label, lambda text: print(text, file=sys.stderr, flush=True), interval)
        progress.listen(run_id, reporter.on_event)
        try:
            with reporter:
                yield
        finally:
            progress.forget(run_id)
        return
    rate = Rate()
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled or jsonout.active(),
        transient=False,
    )
    task = bar.add_task(label, total=None, rate="")

    def on_event(event: str, n: int) -> None:
        if event == "total":
            bar.update(task, total=n)
            return
        rate.update(event, n)
        bar.update(task, completed=rate.items, rate=rate.text())

    progress.listen(run_id, on_event)
    try:
        with bar:
            yield
    finally:
        progress.forget(run_id)


def _with_runner(flow, runner: str, workers: int, address: str | None):
    from .flows.runners import make_task_runner

    return flow.with_options(task_runner=make_task_runner(runner, workers, address))


def _engine(requested: str | None, runner: str) -> str:
    """auto -> prefect when a server is configured (or Dask is asked for), else local."""
    from .runs import prefect_api_configured

    requested = requested or "auto"
    if requested == "auto":
        return "prefect" if runner == "dask" or prefect_api_configured() else "local"
    if requested == "local" and runner == "dask":
        raise click.UsageError("--runner dask needs the prefect engine")
    return requested


def _run_flow(flow, label: str, show: bool, runner: str, workers: int, address: str | None, **params):
    """Run a job (a Prefect flow, or the same job in-process on the local engine) with a
    progress bar; errors end the command. A flow that ends Failed because it found
    problems still returns its summary (the caller reports them)."""
    from . import runs

    from .plan import new_run_id

    run_id = new_run_id()
    ctx = click.get_current_context()
    try:
        choice = _engine(ctx.meta.get("pixarc.engine"), runner)
        with _progress(run_id, label, show):
            if choice == "local":
                result = runs.LOCAL_JOBS[flow.name](runs.local_runner(workers), run_id=run_id, workers=workers,
                                                    **params)
            else:
                _starting_prefect()
                state = _with_runner(flow, runner, workers, address)(run_id=run_id, **params, return_state=True)
                result = state.result(raise_on_failure=False)
                if isinstance(result, runs.ProblemsFound):  # a Failed run that found problems
                    result = result.summary
                elif isinstance(result, BaseException):
                    raise result
    except (PixarcError, OSError, ValueError) as exc:
        _fail(exc)
    if hasattr(result, "problems"):
        jsonout.put(**jsonout.summary_fields(result, flow.name.removeprefix("pixarc-")))
    elif isinstance(result, list):  # recompress: one summary per shard
        decisions = [d for r in result for d in r.decisions]
        todo = [d for d in decisions if d.action == "recompress"]
        jsonout.put(run_id=run_id, applied=bool(params.get("apply")), decisions=decisions, to_recompress=len(todo),
                    bytes_before=sum(d.old_bytes for d in todo), bytes_after=sum(d.new_bytes for d in todo))
    return result


# Exit status (docs/guarantees.md): what a script can act on.
EXIT_OK = 0  # everything done and verified
EXIT_FAILED = 1  # the run finished, but some objects ended in error (see their rows)
EXIT_USAGE = 2  # bad arguments or policy, not a pixarc archive, missing source
EXIT_INTEGRITY = 3  # the archive is damaged: bitstreams or manifest parts missing, corrupt or altered
EXIT_UNAVAILABLE = 4  # could not run: DEST locked by another writer, disk full, permission denied, missing plugin


def _problems_exit(problems) -> int:
    reasons = {p.problem for p in problems}
    if reasons & INTEGRITY_PROBLEMS:
        return EXIT_INTEGRITY
    if reasons and reasons <= {"missing_plugin"}:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED if reasons else EXIT_OK


def _explain(exc: BaseException) -> tuple[str, int]:
    """One line a person can act on, and the exit status, for an error that ends a command."""
    import errno

    from .errors import ManifestError, MissingPluginError, storage_error
    from .lock import LockedError

    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"disk full{where}: free space or choose another DEST; nothing half-written is recorded, "
                    "rerun to resume"), EXIT_UNAVAILABLE
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {exc.strerror}; check the owner and mode of that path", EXIT_UNAVAILABLE
        return f"I/O error{where}: {exc.strerror or exc}", EXIT_UNAVAILABLE
    if isinstance(exc, (LockedError, MissingPluginError)):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, ManifestError):
        return f"{exc}; run pixarc repair DEST", EXIT_INTEGRITY
    if storage_error(exc):
        return (f"storage error: {type(exc).__name__}: {exc}; check the URL and --storage-option "
                "(endpoint_url, credentials)"), EXIT_UNAVAILABLE
    return str(exc), EXIT_USAGE


def _require_archive(dest: str) -> None:
    """Stop with "not a pixarc archive" (exit 2) before any flow starts."""
    from .layout import require_archive

    try:
        require_archive(dest)
    except PixarcError as exc:
        _fail(exc)


def _fail(exc: BaseException) -> None:
    sys.exit(_say_error(exc))


def _say_error(exc: BaseException) -> int:
    """Print the one line for ``exc``, record it for --json; the exit status it calls for."""
    from .errors import storage_error

    text, code = _explain(exc)
    jsonout.fail(text, "storage_error" if storage_error(exc) else getattr(exc, "reason", type(exc).__name__))
    err.print(styled(("error:", "red"), " ", text), soft_wrap=True)
    return code


def _device_value(_ctx, _param, value):
    """``--device`` checked before any work starts (a typo is a usage error, exit 2)."""
    from .device import check_request

    try:
        return check_request(value)
    except PixarcError as exc:
        raise click.BadParameter(str(exc)) from None


def _set_log_level(_ctx, _param, value):
    from .logs import configure_logging

    configure_logging(value, err)
    return value


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
            from .plugins import plugin_commands

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
            _end_json(_exit_code(exc.code), str(exc.code) if isinstance(exc.code, str) else None)
            raise
        except click.exceptions.Exit as exc:
            _end_json(exc.exit_code)
            raise
        except click.ClickException as exc:
            _end_json(exc.exit_code, exc.format_message(), "usage")
            raise
        except click.exceptions.Abort:
            _end_json(1, "aborted", "aborted")
            raise
        except Exception as exc:
            from .errors import storage_error

            if storage_error(exc):  # the store refused or could not be reached: no bug, one line
                code = _say_error(exc)
                _end_json(code)
                raise SystemExit(code) from None
            _end_json(1, f"unexpected {type(exc).__name__}: {exc} (a pixarc bug; the traceback is on stderr)",
                      "crash")
            raise
        _end_json(0)
        return result


def _exit_code(code) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _end_json(code: int, error: str | None = None, reason: str | None = None) -> None:
    if jsonout.active():
        click.echo(jsonout.finish(code, error, reason))
        jsonout.stop()
        console.quiet = False


@click.group(cls=RootGroup)
@click.version_option(__version__, prog_name="pixarc")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, expose_value=False, callback=_set_log_level,
              help="Console log level for pixarc and Prefect (info: one line per shard).")
def main() -> None:
    """pixarc: archive image collections with verified, self-describing bitstreams."""
    storageopts.reset()


# --------------------------------------------------------------------------- archive


@main.command()
@click.argument("src")
@click.argument("dest")
@click.option("--policy", default=None, help=policy_help("Routing policy [default: default]"))
@click.option("--shard-size", default=256, show_default=True, help="Images per shard (one Prefect task each).")
@runner_options
@storage_options("src", "dest")
@click.option("--engine", "engine_name", type=click.Choice(["auto", "prefect", "local"]), default="auto",
              show_default=True, help=ENGINE_HELP)
@click.option("--include", multiple=True, expose_value=False, callback=lambda c, p, v: c.meta.update(include=v),
              help="Only keys matching this glob (repeatable; * crosses /).")
@click.option("--exclude", multiple=True, expose_value=False, callback=lambda c, p, v: c.meta.update(exclude=v),
              help="Leave out keys matching this glob (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, expose_value=False,
              callback=lambda c, p, v: c.meta.update(limit=v), help="Archive at most this many new objects.")
@json_flag("archive")
@click.option("--dry-run", is_flag=True, help="Print the plan (domain -> codec) without writing anything.")
@click.option("--device", default="auto", show_default=True, callback=_device_value,
              help="Device for codecs that use one: auto (a GPU when the worker has one), cpu, cuda, cuda:N.")
@click.option("--batch-size", default=16, show_default=True, help="Images encoded together by GPU codecs.")
@click.option("--follow-symlinks", is_flag=True, help="Enter symlinked directories (loops are detected).")
@click.option("--wait", type=float, default=0.0, is_flag=False, flag_value=86400.0,
              help="When another run writes DEST: wait for it (up to SECONDS; a day without a value) "
                   "instead of stopping.")
@click.option("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, show_default=True,
              help="Refuse (rejected row) sources larger than this, from their size, before reading them; 0: no limit.")
@no_progress_option
def archive(src, dest, policy, shard_size, workers, runner, dask_address, engine_name, dry_run, device, batch_size,
            follow_symlinks, wait, max_bytes, no_progress):
    """Archive every image under SRC into DEST (paths or fsspec URLs)."""
    try:
        if dry_run:
            return _dry_run(src, policy, dest)
        from .plan import new_run_id

        run_id = new_run_id()
        with _progress(run_id, "archive", not no_progress):
            summary = _run_archive(src, dest, policy, shard_size, (runner, workers, dask_address), engine_name, run_id,
                                   device, batch_size, follow_symlinks, wait, max_bytes)
    except (PixarcError, OSError) as exc:
        _fail(exc)
    t = summary.totals
    say(f"run {summary.run_id}: {summary.found} found, {summary.skipped} already archived, "
        + (f"{summary.still_rejected} rejected or unreadable earlier (same settings, not archived), "
           if summary.still_rejected else "")
        + (f"{summary.retried} rejected earlier, retried, " if summary.retried else "")
        + f"{t.images} processed in {summary.shards} shard(s): {t.done} done"
        + (f" ({t.reused} reused)" if t.reused else "")
        + f", {t.rejected} rejected, {t.errors} errors, {t.failed} failed"
        + (f"; {summary.hidden} hidden file(s)/folder(s) not archived" if summary.hidden else "")
    )
    _print_report(dest)
    if t.failed or t.errors:
        jsonout.fail(f"{t.errors} object(s) ended in error, {t.failed} failed (their manifest rows say why)",
                     "objects_failed")
        sys.exit(EXIT_FAILED)


def _run_archive(src, dest, policy, shard_size, runner, engine_name, run_id, device, batch_size, follow_symlinks,
                 wait=0.0, max_bytes=DEFAULT_MAX_BYTES):
    from . import runs

    meta = click.get_current_context().meta
    select = {"include": list(meta.get("include") or ()), "exclude": list(meta.get("exclude") or ()),
              "limit": meta.get("limit")}
    kind, workers, address = runner
    if _engine(engine_name, kind) == "local":
        summary = runs.archive_job(runs.local_runner(workers), src, dest, policy, shard_size, run_id, device,
                                   batch_size, follow_symlinks, workers=workers, wait=wait, max_bytes=max_bytes,
                                   **select)
    else:
        _starting_prefect()
        from .flows import archive_flow

        flow = _with_runner(archive_flow, *runner)
        summary = flow(src=src, dest=dest, policy=policy, shard_size=shard_size, run_id=run_id, device=device,
                       batch_size=batch_size, follow_symlinks=follow_symlinks, wait=wait, max_bytes=max_bytes,
                       **select)
    jsonout.put(**jsonout.summary_fields(summary, "archive"))
    return summary


def _dry_run(src: str, policy_path: str | None, dest: str) -> None:
    from .dryrun import dry_run
    from .crawl import key_filter

    meta = click.get_current_context().meta
    plan = dry_run(src, dest, policy_path, key_filter(meta.get("include") or (), meta.get("exclude") or ()),
                   meta.get("limit"))
    jsonout.put(dry_run=True, src=src, dest=dest, policy=plan.policy, found=plan.found, skipped=plan.skipped,
                to_archive=plan.to_archive, bytes_to_archive=plan.bytes_to_archive, limited=plan.limited,
                objects=plan.rows, cost_estimate=[{"codec": c.codec, "images": c.images, "megapixels": c.megapixels,
                                                   "work": c.work, "seconds": c.seconds} for c in plan.costs.rows()])
    table = Table(title=f"plan for {src} -> {dest} (policy {plan.policy}) — nothing written")
    for col in ("key", "action", "domain", "conf", "route", "first codec tried", "note"):
        table.add_column(col)
    for r in plan.rows:
        table.add_row(r["key"], r["action"], r["domain"], r["confidence"], r["route"], r["codec"], r["note"])
    console.print(table)
    say(f"{plan.found} found, {plan.skipped} already archived (skipped), {plan.to_archive} to archive "
        f"({plan.bytes_to_archive / 1e6:.2f} MB)" + (" — stopped at --limit" if plan.limited else ""))
    costs = plan.costs.rows()
    if costs:
        from .dryrun import CROP, SEARCH_PROBES

        est = Table(title=f"encode time estimate per codec (an estimate: one timed encode of a {CROP}-px crop per "
                          f"codec x the megapixels routed to it; a rate search counted as {SEARCH_PROBES} encodes)")
        for col in ("codec", "images", "MP", "work", "s/MP", "est. seconds"):
            est.add_column(col)
        for c in costs:
            est.add_row(c.codec, str(c.images), f"{c.megapixels:.1f}", c.work, f"{c.seconds_per_mp:.2f}",
                        f"{c.seconds:.0f}")
        say(est)
        total = sum(c.seconds for c in costs if c.seconds == c.seconds)
        say(f"estimated encode time: about {total:.0f} s on one core (checks and I/O not included)")


# --------------------------------------------------------------------------- restore / verify


@main.command()
@click.argument("dest")
@click.argument("out")
@click.option("--filter", "pattern", default="*", show_default=True, help="Glob on archived keys.")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("--version", "version", type=click.IntRange(1), default=None,
              help="Restore each key's N-th archived content (1 = the first) instead of the current one.")
@click.option("--as-of", default=None, help="Restore what the archive held at this ISO time (UTC unless stated).")
@click.option("--overwrite", is_flag=True, help="Replace files already in OUT (default: keep them, report skipped).")
@runner_options
@storage_options("dest", "out")
@engine_option
@json_flag("restore")
@click.option("--device", default="cpu", show_default=True, callback=_device_value,
              help="Device for decoding with codecs that use one: cpu (what every bitstream was checked on), "
                   "auto, cuda, cuda:N.")
@no_progress_option
def restore(dest, out, pattern, domain, version, as_of, overwrite, workers, runner, dask_address, device, no_progress):
    """Decode every archived image of DEST (matching the filters) into OUT."""
    _prefect_defaults()
    _require_archive(dest)
    from .flows import restore_flow

    s = _run_flow(restore_flow, "restore", not no_progress, runner, workers, dask_address,
                  dest=dest, out=out, pattern=pattern, domain=domain, version=version, as_of=as_of,
                  overwrite=overwrite, device=device)
    say(f"restored {s.totals.done} of {s.found} image(s) into {out} ({s.totals.bytes_written} bytes)"
        + (f"; {s.totals.lossy} of them lossy: approximations of the originals, named <key>.lossy.png"
           if s.totals.lossy else "")
        + (f"; {s.skipped} already in OUT, kept (--overwrite to replace)" if s.skipped else ""))
    _exit_on_problems(s.problems, dest)


@main.command()
@click.argument("dest")
@click.option("--full", is_flag=True, help="Re-read, re-hash and re-decode every bitstream.")
@click.option("--sources", is_flag=True, help="Also re-hash the originals against their archived sha256.")
@click.option("--json-out", default=None, help="Write the result as JSON to this path.")
@runner_options
@storage_options("dest")
@engine_option
@json_flag("verify")
@click.option("--device", default="cpu", show_default=True, callback=_device_value,
              help="Device for decoding with codecs that use one: cpu (what every bitstream was checked on), "
                   "auto, cuda, cuda:N.")
@no_progress_option
@click.option("--record", is_flag=True,
              help="Add this verify's outcome to DEST's run records (shown by pixarc report). Without it "
                   "verify writes nothing into DEST (read-only archives are verified too).")
def verify(dest, full, sources, json_out, workers, runner, dask_address, device, no_progress, record):
    """Fixity check of DEST. Exit status 3 when anything is damaged, 4 when a plugin is missing."""
    _prefect_defaults()
    _require_archive(dest)
    from .flows import verify_flow

    s = _run_flow(verify_flow, "verify" + (" --full" if full else ""), not no_progress, runner, workers,
                  dask_address, dest=dest, full=full, sources=sources, device=device, record=record)
    mode = "full" if full else "fast"
    say(f"verify ({mode}): {s.totals.done} of {s.found} bitstream(s) OK, {len(s.problems)} problem(s)")
    _print_problems(s.problems)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"run_id": s.run_id, "mode": mode, "checked": s.found, "ok": s.totals.done,
                       "problems": [p.__dict__ for p in s.problems]}, f, indent=2)
    _exit_on_problems(s.problems, dest)


def _exit_on_problems(problems, dest: str) -> None:
    """Print the problems a run found and what to do next; end with the exit status they call for."""
    _print_problems(problems)
    code = _problems_exit(problems)
    if code:
        from .remedy import next_step

        step = next_step(problems, dest)
        err.print(styled(("next:", "bold"), " ", step), soft_wrap=True)
        jsonout.put(next_step=step)
        counts = {}
        for p in problems:
            counts[p.problem] = counts.get(p.problem, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        from .remedy import SOURCE_PROBLEMS

        reason = {EXIT_INTEGRITY: "integrity", EXIT_UNAVAILABLE: "missing_plugin"}.get(code, "not_written")
        if code == EXIT_FAILED and set(counts) <= SOURCE_PROBLEMS:
            reason = "source_problems"
        jsonout.fail(f"{len(problems)} problem(s): {what}", reason)
        sys.exit(code)


def _print_problems(problems) -> None:
    if not problems:
        return
    table = Table(title="problems", title_style="red")
    for col in ("key", "problem", "detail"):
        table.add_column(col)
    for p in problems:
        table.add_row(p.key, p.problem, p.detail)
    console.print(table)


# --------------------------------------------------------------------------- recompress / serve


@main.command()
@click.argument("dest")
@click.option("--policy", default=None, help=policy_help("The policy to recompress towards [default: default]"))
@click.option("--min-saving", default=0.1, show_default=True, help="Re-encode when the policy saves at least this fraction.")
@click.option("--apply", is_flag=True, help="Write the new bitstreams (without it: print the plan only).")
@click.option("--wait", type=float, default=0.0, is_flag=False, flag_value=86400.0,
              help="With --apply, when another run writes DEST: wait for it (up to SECONDS).")
@runner_options
@storage_options("dest")
@engine_option
@json_flag("recompress")
@click.option("--device", default="cpu", show_default=True, callback=_device_value,
              help="Device for codecs that use one (decoding lossless rows, trial and new encodes): cpu, auto, "
                   "cuda, cuda:N. New bitstreams are decode-checked on the CPU too.")
@no_progress_option
def recompress(dest, policy, min_saving, apply, wait, workers, runner, dask_address, device, no_progress):
    """Plan (default) or apply re-encoding of outdated rows and rows the policy stores smaller."""
    _prefect_defaults()
    _require_archive(dest)
    from .flows.recompress import recompress_flow

    results = _run_flow(recompress_flow, "recompress" + (" --apply" if apply else " (plan)"), not no_progress,
                        runner, workers, dask_address, dest=dest, policy=policy, min_saving=min_saving, apply=apply,
                        wait=wait, device=device)
    decisions = [d for r in results for d in r.decisions]
    todo = [d for d in decisions if d.action == "recompress"]
    table = Table(title=("applied" if apply else "plan (nothing written; --apply to do it)") + f": {dest}")
    for col in ("key", "reason", "from", "to", "bytes before", "bytes after", "saving"):
        table.add_column(col)
    for d in todo:
        table.add_row(d.key, d.reason, d.old_codec, d.new_codec, str(d.old_bytes), str(d.new_bytes),
                      f"{100 * d.saving:.1f} %")
    console.print(table)
    before = sum(d.old_bytes for d in todo)
    after = sum(d.new_bytes for d in todo)
    skipped = [d for d in decisions if d.action == "skip"]
    estimated = [d for d in decisions if d.estimated]
    say(f"{len(todo)} of {len(decisions)} bitstream(s) to re-encode: {before} -> {after} bytes"
        + (" (an estimate)" if any(d.estimated for d in todo) else "") + "; "
        f"{len(skipped)} skipped" + (f" (e.g. {skipped[0].key}: {skipped[0].reason})" if skipped else ""))
    if estimated:
        say(f"{len(estimated)} of {len(decisions)} decision(s) estimated from {len(decisions) - len(estimated)} "
            f"sampled encode(s) of rows like them (same route, codec and parameters); --apply encodes each")
    from .checks import Problem

    damaged = [Problem(d.key, d.problem, d.reason) for d in decisions if d.problem in INTEGRITY_PROBLEMS]
    if damaged:  # damage found by any command is damage: say so, and in the exit status
        err.print(f"{len(damaged)} bitstream(s) are damaged and were not re-encoded")
        _exit_on_problems(damaged, dest)


@main.command()
@click.argument("dest")
@click.option("--dry-run", is_flag=True, help="List what would be deleted, delete nothing.")
@click.option("--wait", type=float, default=0.0, is_flag=False, flag_value=86400.0,
              help="When another run writes DEST: wait for it (up to SECONDS).")
@storage_options("dest")
@json_flag("prune")
def prune(dest, dry_run, wait):
    """Delete the bitstreams of old versions (the only command that deletes archived data)."""
    from .prune import prune as run

    try:
        s = run(dest, dry_run=dry_run, wait=wait)
    except (PixarcError, OSError, ValueError) as exc:
        _fail(exc)
    for rel in s.paths:
        say(("would delete " if dry_run else "deleted ") + rel)
    say(f"{len(s.paths)} old-version bitstream(s), {s.bytes} bytes" + (" (dry run)" if dry_run else ""))
    jsonout.put(dest=dest, dry_run=dry_run, paths=list(s.paths), bytes=s.bytes)


@main.command()
@click.argument("dest")
@click.option("--wait", type=float, default=0.0, is_flag=False, flag_value=86400.0,
              help="When another run writes DEST: wait for it (up to SECONDS).")
@storage_options("dest")
@json_flag("repair")
def repair(dest, wait):
    """Rebuild damaged manifest parts from the bitstreams' headers; re-encode missing or damaged
    bitstreams from originals that still match their sha256. Exit 3 if something stays broken."""
    from .repair import repair as run

    try:
        s = run(dest, wait=wait)
    except (PixarcError, OSError, ValueError) as exc:
        _fail(exc)
    say(f"repair {s.run_id}: {s.parts_rebuilt} damaged manifest part(s) set aside, {s.rows_rebuilt} row(s) "
        f"rebuilt from bitstream headers, {len(s.reencoded)} bitstream(s) re-encoded from their originals"
        + (f"; removed {len(s.swept.temporaries)} temporary file(s) and {len(s.swept.uncommitted_parts)} "
           f"uncommitted manifest part(s) left by killed runs" if s.swept.temporaries or s.swept.uncommitted_parts
           else ""))
    for key, why in s.unrepairable:
        say(styled(("not repaired:", "red"), f" {key}: {why}"))
    jsonout.put(run_id=s.run_id, parts_rebuilt=s.parts_rebuilt, rows_rebuilt=s.rows_rebuilt,
                swept=s.swept.temporaries + s.swept.uncommitted_parts,
                reencoded=list(s.reencoded), unrepairable=[{"key": k, "reason": why} for k, why in s.unrepairable])
    if s.unrepairable:
        jsonout.fail(f"{len(s.unrepairable)} item(s) could not be repaired", "unrepairable")
        sys.exit(EXIT_INTEGRITY)


@main.command()
@click.argument("dest")
@click.option("--src", default=None, help="Source to archive on --archive-cron.")
@click.option("--archive-cron", default=None, help='Cron for archive runs, e.g. "0 2 * * *".')
@click.option("--archive-interval", default=None, type=click.FloatRange(min=1),
              help="Seconds between archive runs (instead of --archive-cron).")
@click.option("--verify-cron", default="0 3 * * 0", show_default=True, help="Cron for full verify runs ('' to disable).")
@click.option("--recompress-cron", default=None, help="Cron for recompress --apply runs.")
@click.option("--policy", default=None, help=policy_help("Policy of the archive and recompress runs"))
@click.option("--min-saving", default=0.1, show_default=True,
              help="Recompress runs re-encode rows the policy stores at least this fraction smaller.")
@click.option("--shard-size", default=None, type=click.IntRange(min=1), help="Images per shard of each run.")
@runner_options
@storage_options("src", "dest")
def serve(dest, src, archive_cron, archive_interval, verify_cron, recompress_cron, policy, min_saving, shard_size,
          workers, runner, dask_address):
    """Serve scheduled deployments (archive, verify, recompress) for DEST until stopped (SIGTERM or Ctrl-C)."""
    import signal

    # The runs execute in other processes, maybe other folders, and their artifacts are read
    # elsewhere: local paths go into the deployments absolute.
    dest, src = (os.path.abspath(p) if p and "://" not in p else p for p in (dest, src))
    try:  # what a run would refuse, refused now: a bad policy, a DEST that archives another source
        from .archive import cached_policy

        cached_policy(policy)
        if src:
            from .layout import claim_dest

            claim_dest(src, dest)
    except (PixarcError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    _prefect_defaults()
    from prefect import serve as prefect_serve

    from .flows.deployments import build_deployments
    from .flows.runners import make_task_runner

    try:
        deployments = build_deployments(dest, src, archive_cron, verify_cron or None, True, policy, recompress_cron,
                                        min_saving, shard_size, make_task_runner(runner, workers, dask_address),
                                        archive_interval)
    except ValueError as exc:
        _fail(exc)
    for d in deployments:
        sched = d.schedules[0].schedule if d.schedules else None
        when = getattr(sched, "cron", None) or (f"every {sched.interval}" if sched is not None else "manual")
        say(f"serving {d.name}: {when}")

    def stop(*_args):  # SIGTERM (systemd, docker stop, kill) ends like Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)

    # Prefect's runner installs its own SIGTERM handler, which calls sys.exit() from inside
    # the event loop (tracebacks of the cancelled tasks follow). Ctrl-C is its clean path:
    # asyncio cancels the runner's main task and `serve` returns; make SIGTERM take it.
    from prefect.runner import Runner

    Runner.handle_sigterm = lambda self, *args, **kwargs: stop()
    signal.signal(signal.SIGTERM, stop)
    # A background job of a script starts with SIGINT ignored (the shell does that), and then
    # neither Python nor asyncio installs its Ctrl-C handling: the SIGINT that stop() sends
    # would be dropped and serve would go on scheduling runs. Restore the default handler so
    # SIGTERM stops serve however it was started.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        prefect_serve(*deployments)
    except KeyboardInterrupt:
        pass
    finally:
        err.print("pixarc serve: stopped")


# --------------------------------------------------------------------------- report / plugins / classify


@main.command()
@click.argument("dest")
@click.option("--html", "html_out", default=None, help="Also write a self-contained HTML report here: per domain the bytes against the originals and "
                   "the best single codec and a table of every image; errors; low confidence; operating points.")
@storage_options("dest")
@json_flag("report")
def report(dest, html_out):
    """Tables by domain guess, route taken and codec (bytes, bpp, PSNR, MS-SSIM); low-confidence
    images; what is not archived and why; last run (date, policy) and last verify."""
    try:
        _print_report(dest, details=True)
        if html_out:
            from .manifest import latest, read_manifest, rows_from_table
            from .plugins import default_registry
            from .htmlreport import html_report

            table = latest(read_manifest(dest, damaged=[]))
            extra = [sec for answer in default_registry().pm.hook.report_sections(rows=table) if answer
                     for sec in answer]
            with open(html_out, "w") as f:
                f.write(html_report(dest, rows_from_table(table), extra))
            say(f"wrote {html_out}")
            jsonout.put(html=html_out)
        from .state import manifest_problems

        damaged = manifest_problems(dest)
    except (PixarcError, OSError, ValueError) as exc:
        _fail(exc)
    for p in damaged:
        err.print(styled(("warning:", "red"), f" {p.key}: {p.detail} (its rows are left out of this report)"))
    if damaged:
        jsonout.fail(f"{len(damaged)} damaged manifest part(s); run pixarc repair {dest}", "corrupt_manifest_part")
        sys.exit(EXIT_INTEGRITY)


def _print_report(dest: str, details: bool = False) -> None:
    from .report import COLUMNS, best_of_savings, fmt_quality, report_data, run_lines, summarise

    from .state import current_rows

    rows = current_rows(dest, status=None)
    groups, statuses = summarise(rows)
    data = report_data(dest, rows)
    if jsonout.active():
        jsonout.put(**data) if details else jsonout.put(report=data)
    table = Table(title=f"archive {dest}: {len(rows)} object(s)")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("domain", "route", "codec") else "left")
    for g in groups:
        psnr_text, ssim_text = fmt_quality(g)
        table.add_row(
            g.domain, g.route, g.codec, str(g.images), f"{g.source_bytes / 1e6:.2f}", f"{g.archive_bytes / 1e6:.2f}",
            f"{g.ratio:.2f}", f"{g.bpp:.3f}", psnr_text, ssim_text,
            end_section=len(groups) > 1 and g is groups[-2],  # rule above the "all" row
        )
    console.print(table)
    if statuses:
        say("status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    best = best_of_savings(rows)
    if best:
        t = Table(title="per-image best-of: what each codec alone would have stored")
        for col in ("codec", "images", "bytes alone", "bytes kept", "best-of saves"):
            t.add_column(col, justify="left" if col == "codec" else "right")
        for codec, n, alone, kept in best:
            t.add_row(codec, str(n), str(alone), str(kept), f"{100 * (1 - kept / alone):.1f} %")
        console.print(t)
    from .report import rd_summary

    for s in rd_summary(rows):
        say("per-image selection: " + s.text())
    if not details:
        return
    if data["low_confidence"]:
        t = Table(title="low confidence: routed as unknown")
        for col in ("key", "guess", "confidence", "codec"):
            t.add_column(col)
        for r in data["low_confidence"]:
            conf = r["confidence"]
            t.add_row(r["key"], r["guess"], "" if conf is None or conf != conf else f"{conf:.2f}", r["codec"])
        console.print(t)
    if data["not_archived"]:
        t = Table(title="not archived", title_style="red")
        for col in ("key", "status", "reason", "message"):
            t.add_column(col)
        for r in data["not_archived"]:
            t.add_row(r["key"], r["status"], r["reason"], r["message"])
        console.print(t)
    for line in run_lines(data):
        say(line)


@main.command()
@json_flag("plugins")
def plugins():
    """List loaded plugins, their hooks, codecs and classifiers, and which cannot run here and why."""
    from .plugins import default_registry

    from .plugins import LEARNED_HINT, missing_learned_dependencies

    reg = default_registry()
    missing = missing_learned_dependencies()
    table = Table(title="pixarc plugins")
    for col in ("name", "distribution", "version", "hooks", "provides"):
        table.add_column(col)
    plugin_docs = []
    for p in reg.plugins():
        provides = ", ".join(list(p.codecs) + [f"classifier:{c}" for c in p.classifiers])
        why = None
        if not provides and {"register_codecs", "register_classifiers"} & set(p.hooks):
            # learned-codec plugins register nothing without their dependencies
            why = f"nothing registered: {', '.join(missing)} not installed ({LEARNED_HINT})" if missing else \
                "nothing registered"
        table.add_row(p.name, p.distribution, p.version, ", ".join(p.hooks),
                      provides or warn_text(why or ""))
        plugin_docs.append({"name": p.name, "module": p.module, "distribution": p.distribution,
                            "version": p.version, "hooks": list(p.hooks), "codecs": list(p.codecs),
                            "classifiers": list(p.classifiers), "unavailable_reason": why})
    console.print(table)
    if missing:
        say(f"learned codecs unavailable: {', '.join(missing)} not installed ({LEARNED_HINT})")
    codecs = Table(title="codecs")
    for col in ("codec", "lossless", "modes", "version", "params", "available"):
        codecs.add_column(col)
    codec_docs = []
    for cid in sorted(reg.codecs):
        cls = reg.codecs[cid]
        why = reg.unavailable_reason("codec", cid)
        version, broken = _codec_version(reg, cid)
        why = why or broken
        params = ", ".join(f"{k}={v.default}" for k, v in cls.params_schema.items())
        modes = " ".join(sorted(cls.modes)) if cid != "store" else "any"
        codecs.add_row(cid, "yes" if cls.lossless else "no", modes, version, params,
                       "yes" if why is None else styled(("no", "yellow"), ": ", why))
        codec_docs.append({"codec": cid, "plugin": reg.owner.get(cid, ""), "lossless": bool(cls.lossless),
                           "modes": modes.split(), "version": version, "params": {k: v.default for k, v in
                                                                                   cls.params_schema.items()},
                           "available": why is None, "unavailable_reason": why})
    console.print(codecs)
    classifier_docs = []
    for name in sorted(reg.classifiers):
        why = reg.unavailable_reason("classifier", name)
        classifier_docs.append({"classifier": name, "plugin": reg.owner.get(name, ""), "available": why is None,
                                "unavailable_reason": why})
        if why:
            say(styled(f"classifier {name}: ", ("unavailable", "yellow"), ": ", why))
    jsonout.put(plugins=plugin_docs, codecs=codec_docs, classifiers=classifier_docs,
                learned_dependencies_missing=missing)


def _codec_version(reg, cid: str) -> tuple[str, str | None]:
    """A codec's version, or ("-", why) when it cannot be made or asked here (a learned
    codec asks torch for its version: without torch that is an ImportError)."""
    from .plugins import missing_dependency

    try:
        return reg.codec(cid).version(), None
    except PixarcError as exc:
        return "-", str(exc)
    except ImportError as exc:
        return "-", f"{cid}: {missing_dependency(exc)}"


@main.command()
@click.argument("src")
@click.option("--policy", default=None, help=policy_help("Policy whose classifier to use"))
@click.option("--jsonl", "as_json", is_flag=True, help="One JSON object per line, as each image is classified.")
@storage_options("src")
@json_flag("classify")
def classify(src, policy, as_json):
    """Print the domain and confidence of every image under SRC."""
    if as_json and jsonout.active():  # one JSON document per command, or a stream of lines: not both
        raise click.UsageError("--jsonl and --json exclude each other")
    from .classify import pick_classifier
    from .crawl import crawl
    from .intake import intake
    from .plugins import default_registry
    from .policy import load_policy

    pol = load_policy(policy)
    registry = default_registry()
    clf, note = pick_classifier(registry, pol)
    if note:
        err.print(note)
    images: list[dict] = []
    table = Table(title=f"{src} — classifier {clf.classifier_id}")
    for col in ("key", "domain", "confidence", "scores"):
        table.add_column(col)
    for ref in crawl(src):
        it = intake(ref, pol, registry, route=False)  # the same read/probe/classify as archive
        if it.error is not None:
            rec = {"key": ref.key, "domain": "-", "confidence": None, "error": f"{it.error.reason}: {it.error}"}
        elif it.src.image is None:
            rec = {"key": ref.key, "domain": "-", "confidence": None,
                   "error": "error: no canonical pixels: " + "; ".join(it.src.info.notes)}
        else:
            c = it.classification
            rec = {"key": ref.key, "domain": c.domain, "confidence": round(c.confidence, 4),
                   "scores": {k: round(v, 4) for k, v in c.scores.items()}}
        images.append(rec)
        if as_json:
            click.echo(json.dumps(rec))
        elif not jsonout.active():
            scores = rec.get("error") or " ".join(f"{k[:4]}={v:.2f}" for k, v in rec["scores"].items())
            conf = "" if rec["confidence"] is None else f"{rec['confidence']:.2f}"
            table.add_row(rec["key"], rec["domain"], conf, scores)
    jsonout.put(src=src, classifier=clf.classifier_id, note=note or None, images=images)
    if not as_json:
        console.print(table)


@main.group(cls=PluginGroup, plugin_group="train")
def train():
    """Train the models pixarc ships (reproducible: data order and seeds are fixed).

    The commands come from the installed plugins (hook ``register_commands``)."""


# --------------------------------------------------------------------------- interop


@main.command("export-bagit")
@click.argument("dest")
@click.argument("out")
@click.option("--filter", "pattern", default="*", show_default=True, help="Glob on archived keys.")
@click.option("--domain", default=None, help="Only this domain.")
@click.option("--workers", default=2, show_default=True, help="Shards restored concurrently.")
@click.option("--originals", is_flag=True,
              help="Bag the original files (read from their archived URIs, checked against their sha256) "
                   "instead of restored images.")
@storage_options("dest")
@json_flag("export-bagit")
def export_bagit(dest, out, pattern, domain, workers, originals):
    """Restore DEST's images (checked) into OUT, or with --originals copy the originals, and make
    OUT a BagIt bag (sha256 + sha512); pixarc-sources.tsv gives each file's original sha256."""
    from .bagexport import export_bagit as run

    try:
        res = run(dest, out, pattern, domain, workers, originals=originals)
    except (PixarcError, OSError, ValueError) as exc:
        _fail(exc)
    jsonout.put(out=res.out, run_id=res.run_id, payload=res.payload, images=res.images,
                payload_bytes=res.payload_bytes, identical_to_sources=res.identical, problems=res.problems,
                bag=not res.problems)
    if res.problems:
        err.print(styled(("no bag made", "red"), f": {len(res.problems)} problem(s) restoring {dest}"))
        _exit_on_problems(res.problems, dest)
    say(f"bag {out}: {res.images} {res.payload} image(s), {res.payload_bytes} bytes, "
        f"{res.identical} byte-identical to their originals (pixarc-sources.tsv), run {res.run_id}")


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


if __name__ == "__main__":  # pragma: no cover
    run()
