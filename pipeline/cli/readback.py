"""Reading the archive back: ``pixarc restore``, ``pixarc verify`` and ``pixarc export-bagit``."""

from __future__ import annotations

import json

import click

from ..console import err, say, styled
from ..errors import PixarcError
from . import jsonout, running
from .options import (DECODE_DEVICE_HELP, device_option, engine_option, json_flag, no_progress_option, runner_options,
                      storage_options)
from .render import exit_on_problems, fail, print_problems, show
from .root import main, registry


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
@device_option("cpu", DECODE_DEVICE_HELP)
@no_progress_option
def restore(dest, out, pattern, domain, version, as_of, overwrite, workers, runner, dask_address, device, no_progress):
    """Decode every archived image of DEST (matching the filters) into OUT."""
    from ..restore import RestoreJob

    s = running.run_on_archive(RestoreJob, dest, "restore", not no_progress, runner, workers, dask_address, out=out,
                               pattern=pattern, domain=domain, version=version, as_of=as_of, overwrite=overwrite,
                               device=device)
    show(s)
    exit_on_problems(s.problems, dest)


@main.command()
@click.argument("dest")
@click.option("--full", is_flag=True, help="Re-read, re-hash and re-decode every bitstream.")
@click.option("--sources", is_flag=True, help="Also re-hash the originals against their archived sha256.")
@click.option("--json-out", default=None, help="Write the result as JSON to this path.")
@runner_options
@storage_options("dest")
@engine_option
@json_flag("verify")
@device_option("cpu", DECODE_DEVICE_HELP)
@no_progress_option
@click.option("--record", is_flag=True,
              help="Add this verify's outcome to DEST's run records (shown by pixarc report). Without it "
                   "verify writes nothing into DEST (read-only archives are verified too).")
def verify(dest, full, sources, json_out, workers, runner, dask_address, device, no_progress, record):
    """Fixity check of DEST. Exit status 3 when anything is damaged, 4 when a plugin is missing."""
    from ..verify import VerifyJob

    s = running.run_on_archive(VerifyJob, dest, "verify" + (" --full" if full else ""), not no_progress, runner,
                               workers, dask_address, full=full, sources=sources, device=device, record=record)
    show(s)
    print_problems(s.problems)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"run_id": s.run_id, "mode": "full" if full else "fast", "checked": s.found,
                       "ok": s.totals.done, "problems": [p.__dict__ for p in s.problems]}, f, indent=2)
    exit_on_problems(s.problems, dest)


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
    from ..bagexport import export_bagit as run

    try:
        res = run(dest, out, pattern, domain, workers, originals=originals, registry=registry())
    except (PixarcError, OSError, ValueError) as exc:
        fail(exc)
    jsonout.put(out=res.out, run_id=res.run_id, payload=res.payload, images=res.images,
                payload_bytes=res.payload_bytes, identical_to_sources=res.identical, problems=res.problems,
                bag=not res.problems)
    if res.problems:
        err.print(styled(("no bag made", "red"), f": {len(res.problems)} problem(s) restoring {dest}"))
        exit_on_problems(res.problems, dest)
    say(f"bag {out}: {res.images} {res.payload} image(s), {res.payload_bytes} bytes, "
        f"{res.identical} byte-identical to their originals (pixarc-sources.tsv), run {res.run_id}")
