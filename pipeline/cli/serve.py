"""``pixarc serve``: the archive's scheduled runs (archive, verify, recompress), served as
Prefect deployments until stopped."""

from __future__ import annotations

import os

import click

from ..console import err, say
from ..engine import prefect_defaults
from ..errors import PixarcError
from .options import policy_help, runner_options, storage_options
from .render import fail
from .root import main


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
        from ..archive import cached_policy

        cached_policy(policy)
        if src:
            from ..layout import claim_dest

            claim_dest(src, dest)
    except (PixarcError, FileNotFoundError, ValueError) as exc:
        fail(exc)
    prefect_defaults()
    from prefect import serve as prefect_serve

    from ..flows.deployments import build_deployments
    from ..flows.runners import make_task_runner

    try:
        deployments = build_deployments(dest, src, archive_cron, verify_cron or None, True, policy, recompress_cron,
                                        min_saving, shard_size, make_task_runner(runner, workers, dask_address),
                                        archive_interval)
    except ValueError as exc:
        fail(exc)
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
