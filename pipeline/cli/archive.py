"""``pixarc archive``: archive SRC into DEST, or with ``--dry-run`` say what it would do."""

from __future__ import annotations

import click
from rich.table import Table

from ..console import console, say
from ..errors import PixarcError
from ..limits import DEFAULT_MAX_BYTES
from . import jsonout, running
from .options import (device_option, engine_option, json_flag, no_progress_option, policy_help, runner_options,
                      storage_options, wait_option)
from .render import fail, fail_objects, show
from .report import print_report
from .root import main, registry


@main.command()
@click.argument("src")
@click.argument("dest")
@click.option("--policy", default=None, help=policy_help("Routing policy [default: default]"))
@click.option("--shard-size", default=256, show_default=True, help="Images per shard (one Prefect task each).")
@runner_options
@storage_options("src", "dest")
@engine_option
@click.option("--include", multiple=True, expose_value=False, callback=lambda c, p, v: c.meta.update(include=v),
              help="Only keys matching this glob (repeatable; * crosses /).")
@click.option("--exclude", multiple=True, expose_value=False, callback=lambda c, p, v: c.meta.update(exclude=v),
              help="Leave out keys matching this glob (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, expose_value=False,
              callback=lambda c, p, v: c.meta.update(limit=v), help="Archive at most this many new objects.")
@json_flag("archive")
@click.option("--dry-run", is_flag=True, help="Print the plan (domain -> codec) without writing anything.")
@device_option("auto", "Device for codecs that use one: auto (a GPU when the worker has one), cpu, cuda, cuda:N.")
@click.option("--batch-size", default=16, show_default=True, help="Images encoded together by GPU codecs.")
@click.option("--follow-symlinks", is_flag=True, help="Enter symlinked directories (loops are detected).")
@wait_option("When another run writes DEST: wait for it (up to SECONDS; a day without a value) instead of stopping.")
@click.option("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, show_default=True,
              help="Refuse (rejected row) sources larger than this, from their size, before reading them; 0: no limit.")
@no_progress_option
def archive(src, dest, policy, shard_size, workers, runner, dask_address, dry_run, device, batch_size,
            follow_symlinks, wait, max_bytes, no_progress):
    """Archive every image under SRC into DEST (paths or fsspec URLs)."""
    meta = click.get_current_context().meta
    try:
        if dry_run:
            return _dry_run(src, policy, dest)
        from ..archive import ArchiveJob
        from ..plan import new_run_id

        job = ArchiveJob(src, dest, new_run_id(), policy=policy, device=device, batch_size=batch_size,
                         max_bytes=max_bytes, shard_size=shard_size, follow_symlinks=follow_symlinks,
                         include=tuple(meta.get("include") or ()), exclude=tuple(meta.get("exclude") or ()),
                         limit=meta.get("limit"), registry=registry())
        summary = running.run(job, "archive", not no_progress, runner, workers, dask_address, wait=wait)
    except (PixarcError, OSError) as exc:
        fail(exc)
    show(summary)
    print_report(dest)
    t = summary.totals
    if t.failed or t.errors:
        fail_objects(f"{t.errors} object(s) ended in error, {t.failed} failed (their manifest rows say why)",
                     "objects_failed")


def _dry_run(src: str, policy_path: str | None, dest: str) -> None:
    from ..crawl import key_filter
    from ..dryrun import dry_run

    meta = click.get_current_context().meta
    plan = dry_run(src, dest, policy_path, key_filter(meta.get("include") or (), meta.get("exclude") or ()),
                   meta.get("limit"), registry=registry())
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
        from ..dryrun import CROP, SEARCH_PROBES

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
