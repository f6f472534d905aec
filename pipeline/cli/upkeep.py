"""Keeping an archive: ``pixarc recompress``, ``pixarc prune`` and ``pixarc repair``."""

from __future__ import annotations

import click

from ..console import err, say, styled
from ..errors import PixarcError
from ..remedy import INTEGRITY_PROBLEMS
from . import jsonout, running
from .options import (device_option, engine_option, json_flag, no_progress_option, policy_help, runner_options,
                      storage_options, wait_option)
from .render import EXIT_INTEGRITY, exit_on_problems, fail, fail_objects, show
from .root import main, registry


@main.command()
@click.argument("dest")
@click.option("--policy", default=None, help=policy_help("The policy to recompress towards [default: default]"))
@click.option("--min-saving", default=0.1, show_default=True, help="Re-encode when the policy saves at least this fraction.")
@click.option("--apply", is_flag=True, help="Write the new bitstreams (without it: print the plan only).")
@wait_option("With --apply, when another run writes DEST: wait for it (up to SECONDS).")
@runner_options
@storage_options("dest")
@engine_option
@json_flag("recompress")
@device_option("cpu", "Device for codecs that use one (decoding lossless rows, trial and new encodes): cpu, auto, "
                      "cuda, cuda:N. New bitstreams are decode-checked on the CPU too.")
@no_progress_option
def recompress(dest, policy, min_saving, apply, wait, workers, runner, dask_address, device, no_progress):
    """Plan (default) or apply re-encoding of outdated rows and rows the policy stores smaller."""
    from ..recompress import RecompressJob

    s = running.run_on_archive(RecompressJob, dest, "recompress" + (" --apply" if apply else " (plan)"), not no_progress,
                               runner, workers, dask_address, wait=wait, policy=policy, min_saving=min_saving,
                               apply=apply, device=device)
    show(s)
    damaged = [p for p in s.problems if p.problem in INTEGRITY_PROBLEMS]
    if damaged:  # damage found by any command is damage: say so, and in the exit status
        err.print(f"{len(damaged)} bitstream(s) are damaged and were not re-encoded")
        exit_on_problems(damaged, dest)


@main.command()
@click.argument("dest")
@click.option("--dry-run", is_flag=True, help="List what would be deleted, delete nothing.")
@wait_option()
@storage_options("dest")
@json_flag("prune")
def prune(dest, dry_run, wait):
    """Delete the bitstreams of old versions (the only command that deletes archived data)."""
    from ..prune import prune as run

    try:
        s = run(dest, dry_run=dry_run, wait=wait)
    except (PixarcError, OSError, ValueError) as exc:
        fail(exc)
    for rel in s.paths:
        say(("would delete " if dry_run else "deleted ") + rel)
    say(f"{len(s.paths)} old-version bitstream(s), {s.bytes} bytes" + (" (dry run)" if dry_run else ""))
    jsonout.put(dest=dest, dry_run=dry_run, paths=list(s.paths), bytes=s.bytes)


@main.command()
@click.argument("dest")
@wait_option()
@storage_options("dest")
@json_flag("repair")
def repair(dest, wait):
    """Rebuild damaged manifest parts from the bitstreams' headers; re-encode missing or damaged
    bitstreams from originals that still match their sha256. Exit 3 if something stays broken."""
    from ..repair import repair as run

    try:
        s = run(dest, wait=wait, registry=registry())
    except (PixarcError, OSError, ValueError) as exc:
        fail(exc)
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
        fail_objects(f"{len(s.unrepairable)} item(s) could not be repaired", "unrepairable", EXIT_INTEGRITY)
