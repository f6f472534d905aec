"""``pixarc report``: what DEST holds, by domain, route and codec; what is not archived and
why; the last runs. Archive prints the same tables after a run (:func:`print_report`)."""

from __future__ import annotations

import click
from rich.table import Table

from ..console import console, err, say, styled
from ..errors import PixarcError
from . import jsonout
from .options import json_flag, storage_options
from .render import EXIT_INTEGRITY, fail, fail_objects
from .root import main, registry


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
        print_report(dest, details=True)
        if html_out:
            from ..htmlreport import html_report
            from ..manifest import latest, read_manifest, rows_from_table

            table = latest(read_manifest(dest, damaged=[]))
            extra = [sec for answer in registry().pm.hook.report_sections(rows=table) if answer for sec in answer]
            with open(html_out, "w") as f:
                f.write(html_report(dest, rows_from_table(table), extra))
            say(f"wrote {html_out}")
            jsonout.put(html=html_out)
        from ..state import manifest_problems

        damaged = manifest_problems(dest)
    except (PixarcError, OSError, ValueError) as exc:
        fail(exc)
    for p in damaged:
        err.print(styled(("warning:", "red"), f" {p.key}: {p.detail} (its rows are left out of this report)"))
    if damaged:
        fail_objects(f"{len(damaged)} damaged manifest part(s); run pixarc repair {dest}", "corrupt_manifest_part",
                     EXIT_INTEGRITY)


def print_report(dest: str, details: bool = False) -> None:
    from ..report import COLUMNS, best_of_savings, fmt_quality, rd_summary, report_data, run_lines, summarise
    from ..state import current_rows

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
