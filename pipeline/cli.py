"""``pixarc`` command line: archive, restore, verify, report, recompress, serve, plugins, classify, train."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, engine, progress
from .errors import PixarcError

# Tables are wide; when piped (no terminal to measure) use 120 columns, not rich's 80.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)


def _prefect_defaults() -> None:
    """Embedded defaults for a local run: no telemetry, quiet logs, a temporary local API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_ROOT_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


@contextlib.contextmanager
def _progress(run_id: str, label: str, enabled: bool = True) -> Iterator[None]:
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )
    task = bar.add_task(label, total=None)

    def on_event(event: str, n: int) -> None:
        if event == "total":
            bar.update(task, total=n)
        else:
            bar.advance(task, n)

    progress.listen(run_id, on_event)
    try:
        with bar:
            yield
    finally:
        progress.forget(run_id)


def runner_options(fn):
    """--runner/--workers/--dask-address, shared by the commands that run a flow."""
    fn = click.option("--dask-address", default=None, help="Existing Dask scheduler (tcp://host:8786) for --runner dask.")(fn)
    fn = click.option("--runner", type=click.Choice(["threads", "dask"]), default="threads", show_default=True,
                      help="Task runner: a thread pool here, or Dask (a local cluster, or --dask-address).")(fn)
    fn = click.option("--workers", default=2, show_default=True, help="Shards processed concurrently.")(fn)
    return fn


def _with_runner(flow, runner: str, workers: int, address: str | None):
    from .flows.runners import make_task_runner

    return flow.with_options(task_runner=make_task_runner(runner, workers, address))


def _run_flow(flow, label: str, show: bool, runner: str, workers: int, address: str | None, **params):
    """Run a flow with the chosen task runner and a progress bar; errors end the command."""
    run_id = engine.new_run_id()
    try:
        with _progress(run_id, label, show):
            return _with_runner(flow, runner, workers, address)(run_id=run_id, **params)
    except (PixarcError, FileNotFoundError, ValueError) as exc:
        _fail(exc)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}")
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="pixarc")
def main() -> None:
    """pixarc: archive image collections with verified, self-describing bitstreams."""


# --------------------------------------------------------------------------- archive


@main.command()
@click.argument("src")
@click.argument("dest")
@click.option("--policy", default=None, help="Policy TOML (path/URL) or built-in name: default, png, lossy.")
@click.option("--shard-size", default=256, show_default=True, help="Images per shard (one Prefect task each).")
@runner_options
@click.option("--engine", "engine_name", type=click.Choice(["prefect", "local"]), default="prefect", show_default=True,
              help="prefect: a Prefect flow run (local temporary API unless PREFECT_API_URL is set); "
                   "local: the same shard functions in this process, no orchestration.")
@click.option("--dry-run", is_flag=True, help="Print the plan (domain -> codec) without writing anything.")
@click.option("--device", default="auto", show_default=True,
              help="Device for codecs that use one: auto (a GPU when the worker has one), cpu, cuda, cuda:N.")
@click.option("--batch-size", default=16, show_default=True, help="Images encoded together by GPU codecs.")
@click.option("--follow-symlinks", is_flag=True, help="Enter symlinked directories (loops are detected).")
@click.option("--no-progress", is_flag=True)
def archive(src, dest, policy, shard_size, workers, runner, dask_address, engine_name, dry_run, device, batch_size,
            follow_symlinks, no_progress):
    """Archive every image under SRC into DEST (paths or fsspec URLs)."""
    try:
        if dry_run:
            return _dry_run(src, policy)
        run_id = engine.new_run_id()
        with _progress(run_id, "archive", not no_progress):
            summary = _run_archive(src, dest, policy, shard_size, (runner, workers, dask_address), engine_name, run_id,
                                   device, batch_size, follow_symlinks)
    except (PixarcError, FileNotFoundError) as exc:
        _fail(exc)
    t = summary.totals
    console.print(
        f"run {summary.run_id}: {summary.found} found, {summary.skipped} already archived, "
        f"{t.images} processed in {summary.shards} shard(s): {t.done} done"
        + (f" ({t.reused} reused)" if t.reused else "")
        + f", {t.rejected} rejected, {t.errors} errors, {t.failed} failed"
    )
    _print_report(dest)
    if t.failed:
        sys.exit(1)


def _run_archive(src, dest, policy, shard_size, runner, engine_name, run_id, device, batch_size, follow_symlinks):
    if engine_name == "local":
        return engine.archive_local(src, dest, policy, shard_size, run_id, device, batch_size, follow_symlinks)
    _prefect_defaults()
    from .flows import archive_flow

    flow = _with_runner(archive_flow, *runner)
    return flow(src=src, dest=dest, policy=policy, shard_size=shard_size, run_id=run_id, device=device,
                batch_size=batch_size, follow_symlinks=follow_symlinks)


def _dry_run(src: str, policy_path: str | None) -> None:
    from .crawl import crawl
    from .plugins import default_registry
    from .routing import load_policy

    policy = load_policy(policy_path)
    registry = default_registry()
    table = Table(title=f"plan for {src} (policy {policy.name}) — nothing written")
    for col in ("key", "domain", "conf", "route", "first usable codec", "note"):
        table.add_column(col)
    for ref in crawl(src):
        p = engine.plan_one(ref, policy, registry)
        table.add_row(ref.key, p["domain"], p["confidence"], p["route"], p["codec"], p["note"])
    console.print(table)


# --------------------------------------------------------------------------- restore / verify


@main.command()
@click.argument("dest")
@click.argument("out")
@click.option("--filter", "pattern", default="*", show_default=True, help="Glob on archived keys.")
@click.option("--domain", default=None, help="Only this domain.")
@runner_options
@click.option("--no-progress", is_flag=True)
def restore(dest, out, pattern, domain, workers, runner, dask_address, no_progress):
    """Decode every archived image of DEST (matching the filters) into OUT."""
    _prefect_defaults()
    from .flows import restore_flow

    s = _run_flow(restore_flow, "restore", not no_progress, runner, workers, dask_address,
                  dest=dest, out=out, pattern=pattern, domain=domain)
    console.print(f"restored {s.totals.done} of {s.found} image(s) into {out} ({s.totals.archive_bytes} bytes)")
    _print_problems(s.problems)
    if s.problems:
        sys.exit(1)


@main.command()
@click.argument("dest")
@click.option("--full", is_flag=True, help="Re-read, re-hash and re-decode every bitstream.")
@click.option("--sources", is_flag=True, help="Also re-hash the originals against their archived sha256.")
@click.option("--json-out", default=None, help="Write the result as JSON to this path.")
@runner_options
@click.option("--no-progress", is_flag=True)
def verify(dest, full, sources, json_out, workers, runner, dask_address, no_progress):
    """Fixity check of DEST. Exit status 1 when anything is wrong."""
    _prefect_defaults()
    from .flows import verify_flow

    s = _run_flow(verify_flow, "verify" + (" --full" if full else ""), not no_progress, runner, workers,
                  dask_address, dest=dest, full=full, sources=sources)
    mode = "full" if full else "fast"
    console.print(f"verify ({mode}): {s.totals.done} of {s.found} bitstream(s) OK, {len(s.problems)} problem(s)")
    _print_problems(s.problems)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"run_id": s.run_id, "mode": mode, "checked": s.found, "ok": s.totals.done,
                       "problems": [p.__dict__ for p in s.problems]}, f, indent=2)
    if s.problems:
        sys.exit(1)


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
@click.option("--policy", default=None, help="The policy to recompress towards (default: the built-in default).")
@click.option("--min-saving", default=0.1, show_default=True, help="Re-encode when the policy saves at least this fraction.")
@click.option("--apply", is_flag=True, help="Write the new bitstreams (without it: print the plan only).")
@runner_options
@click.option("--no-progress", is_flag=True)
def recompress(dest, policy, min_saving, apply, workers, runner, dask_address, no_progress):
    """Plan (default) or apply re-encoding of outdated rows and rows the policy stores smaller."""
    _prefect_defaults()
    from .flows.recompress import recompress_flow

    results = _run_flow(recompress_flow, "recompress" + (" --apply" if apply else " (plan)"), not no_progress,
                        runner, workers, dask_address, dest=dest, policy=policy, min_saving=min_saving, apply=apply)
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
    console.print(f"{len(todo)} of {len(decisions)} bitstream(s) to re-encode: {before} -> {after} bytes; "
                  f"{len(skipped)} skipped" + (f" (e.g. {skipped[0].key}: {skipped[0].reason})" if skipped else ""))


@main.command()
@click.argument("dest")
@click.option("--src", default=None, help="Source to archive on --archive-cron.")
@click.option("--archive-cron", default=None, help='Cron for archive runs, e.g. "0 2 * * *".')
@click.option("--verify-cron", default="0 3 * * 0", show_default=True, help="Cron for full verify runs ('' to disable).")
@click.option("--recompress-cron", default=None, help="Cron for recompress --apply runs.")
@click.option("--policy", default=None)
@click.option("--min-saving", default=0.1, show_default=True)
def serve(dest, src, archive_cron, verify_cron, recompress_cron, policy, min_saving):
    """Serve scheduled deployments (archive, verify, recompress) for DEST until stopped."""
    _prefect_defaults()
    from prefect import serve as prefect_serve

    from .flows.deployments import build_deployments

    deployments = build_deployments(dest, src, archive_cron, verify_cron or None, True, policy, recompress_cron,
                                    min_saving)
    for d in deployments:
        console.print(f"serving {d.name}: {d.schedules[0].schedule.cron if d.schedules else 'manual'}")
    prefect_serve(*deployments)


# --------------------------------------------------------------------------- report / plugins / classify


@main.command()
@click.argument("dest")
@click.option("--html", "html_out", default=None, help="Also write a self-contained HTML report (tables + plots) here.")
def report(dest, html_out):
    """Per-domain, per-codec table of bytes, bpp, PSNR and MS-SSIM for DEST."""
    try:
        _print_report(dest)
        if html_out:
            from .manifest import latest, read_manifest
            from .plugins import default_registry
            from .report import html_report

            table = latest(read_manifest(dest))
            extra = [sec for answer in default_registry().pm.hook.report_sections(rows=table) if answer
                     for sec in answer]
            with open(html_out, "w") as f:
                f.write(html_report(dest, table.to_pylist(), extra))
            console.print(f"wrote {html_out}")
    except (PixarcError, FileNotFoundError, ValueError) as exc:
        _fail(exc)


def _print_report(dest: str) -> None:
    from .report import best_of_savings, fmt_quality, summarise

    rows = engine.current_rows(dest, status=None)
    groups, statuses = summarise(rows)
    table = Table(title=f"archive {dest}: {len(rows)} object(s)")
    for col in ("domain", "codec", "images", "source MB", "archive MB", "ratio", "bpp", "PSNR dB", "MS-SSIM"):
        table.add_column(col, justify="right" if col not in ("domain", "codec") else "left")
    for g in groups:
        psnr_text, ssim_text = fmt_quality(g)
        table.add_row(
            g.domain, g.codec, str(g.images), f"{g.source_bytes / 1e6:.2f}", f"{g.archive_bytes / 1e6:.2f}",
            f"{g.ratio:.2f}", f"{g.bpp:.3f}", psnr_text, ssim_text,
            end_section=len(groups) > 1 and g is groups[-2],  # rule above the "all" row
        )
    console.print(table)
    if statuses:
        console.print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    best = best_of_savings(rows)
    if best:
        t = Table(title="per-image best-of: what each codec alone would have stored")
        for col in ("codec", "images", "bytes alone", "bytes kept", "best-of saves"):
            t.add_column(col, justify="left" if col == "codec" else "right")
        for codec, n, alone, kept in best:
            t.add_row(codec, str(n), str(alone), str(kept), f"{100 * (1 - kept / alone):.1f} %")
        console.print(t)


@main.command()
def plugins():
    """List loaded plugins, their hooks, codecs and classifiers."""
    from .plugins import default_registry

    reg = default_registry()
    table = Table(title="pixarc plugins")
    for col in ("name", "distribution", "version", "hooks", "provides"):
        table.add_column(col)
    for p in reg.plugins():
        provides = ", ".join(list(p.codecs) + [f"classifier:{c}" for c in p.classifiers])
        table.add_row(p.name, p.distribution, p.version, ", ".join(p.hooks), provides)
    console.print(table)
    codecs = Table(title="codecs")
    for col in ("codec", "lossless", "modes", "version", "params"):
        codecs.add_column(col)
    for cid in sorted(reg.codecs):
        c = reg.codec(cid)
        params = ", ".join(f"{k}={v.default}" for k, v in c.params_schema.items())
        codecs.add_row(cid, "yes" if c.lossless else "no", " ".join(sorted(c.modes)) if cid != "store" else "any",
                       c.version(), params)
    console.print(codecs)


@main.command()
@click.argument("src")
@click.option("--policy", default=None, help="Policy whose classifier to use.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def classify(src, policy, as_json):
    """Print the domain and confidence of every image under SRC."""
    from .crawl import crawl
    from .images import probe_and_load
    from .plugins import default_registry
    from .routing import load_policy
    from .storage import get_fs

    from .classify import pick_classifier

    pol = load_policy(policy)
    clf, note = pick_classifier(default_registry(), pol)
    if note:
        err.print(note)
    table = Table(title=f"{src} — classifier {clf.classifier_id}")
    for col in ("key", "domain", "confidence", "scores"):
        table.add_column(col)
    for ref in crawl(src):
        fs, path = get_fs(ref.uri)
        try:
            src_img = probe_and_load(fs.cat_file(path), max_pixels=pol.max_pixels, formats=pol.formats)
            if src_img.image is None:
                raise PixarcError("no canonical pixels: " + "; ".join(src_img.info.notes))
            c = clf.classify(src_img.image)
            rec = {"key": ref.key, "domain": c.domain, "confidence": round(c.confidence, 4),
                   "scores": {k: round(v, 4) for k, v in c.scores.items()}}
        except PixarcError as exc:
            rec = {"key": ref.key, "domain": "-", "confidence": None, "error": f"{exc.reason}: {exc}"}
        if as_json:
            click.echo(json.dumps(rec))
        else:
            scores = rec.get("error") or " ".join(f"{k[:4]}={v:.2f}" for k, v in rec["scores"].items())
            conf = "" if rec["confidence"] is None else f"{rec['confidence']:.2f}"
            table.add_row(rec["key"], rec["domain"], conf, scores)
    if not as_json:
        console.print(table)


@main.group()
def train():
    """Train the models pixarc ships (reproducible: data order and seeds are fixed)."""


@train.command("lossy")
@click.option("--data", required=True, help="Folder of training images (e.g. ../shared/data/train/crops).")
@click.option("--quality", type=click.IntRange(1, 8), required=True, help="Rate point: sets λ (CompressAI convention).")
@click.option("--minutes", default=60.0, show_default=True, help="Time budget (this run; resumed runs add to it).")
@click.option("--steps", default=10**9, show_default=True, help="Step budget (cumulative over resumes).")
@click.option("--batch", default=16, show_default=True)
@click.option("--patch", default=128, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--N", "n", default=None, type=int, help="Channels (default: the zoo's for this quality).")
@click.option("--M", "m", default=None, type=int, help="Latent channels (default: the zoo's).")
@click.option("--resume", is_flag=True, help="Continue from <out>/<name>.ckpt.")
@click.option("--init-from", default=None, help="Start from another rate point's weights (.pt in a weights.json folder, or .ckpt).")
@click.option("--checkpoint-minutes", default=5.0, show_default=True)
@click.option("--out", required=True, help="Folder for the checkpoint and its weights.json entry.")
def train_lossy(data, quality, minutes, steps, batch, patch, lr, device, seed, n, m, resume, init_from,
                checkpoint_minutes, out):
    """Train a mbt2018-mean base model for the adaptive lossy codec (time budget, resumable)."""
    from pixarc_adaptive.train import train as run

    entry = run(data, quality, out, steps=steps, minutes=minutes, batch=batch, patch=patch, lr=lr, device=device,
                seed=seed, N=n, M=m, resume=resume, init_from=init_from, checkpoint_minutes=checkpoint_minutes)
    console.print(f"wrote {out} ({entry['sha256'][:16]}..., {entry['steps']} steps, {entry['minutes']} min, "
                  f"final {entry['final']})")


@train.command("classifier")
@click.option("--data", required=True, help="Folder with one sub-folder per domain (e.g. ../shared/data/train/whole).")
@click.option("--out", required=True, help="Folder for the weights and their weights.json entry.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--width", default=32, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def train_classifier(data, out, epochs, width, seed, device):
    """Train the `cnn` domain classifier."""
    from pixarc_cnn_classifier.train import train as run

    entry = run(data, out, epochs=epochs, width=width, seed=seed, device=device)
    console.print(f"wrote {out} ({entry['sha256'][:16]}..., training accuracy {entry['train_accuracy']:.3f})")


@train.command("svr")
@click.option("--data", required=True, help="Folder of training images (e.g. ../shared/data/train/crops).")
@click.option("--out", required=True, help="Folder for the checkpoint, the weights and their weights.json entry.")
@click.option("--minutes", default=10.0, show_default=True, help="Time budget (this run; resumed runs add to it).")
@click.option("--stage1-minutes", default=7.0, show_default=True, help="Cumulative minutes of stage 1 (codebooks).")
@click.option("--steps", default=10**9, show_default=True, help="Step budget (cumulative over resumes).")
@click.option("--stage1-steps", default=10**9, show_default=True, help="Cumulative steps of stage 1.")
@click.option("--batch", default=8, show_default=True)
@click.option("--patch", default=96, show_default=True)
@click.option("--width", default=32, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from <out>/svr-w<width>.ckpt.")
@click.option("--checkpoint-minutes", default=5.0, show_default=True)
def train_svr(data, out, minutes, stage1_minutes, steps, stage1_steps, batch, patch, width, lr, seed, device, resume,
              checkpoint_minutes):
    """Train the SVR codec (stage 1 codebooks, stage 2 predictor/filler/decoder, then its entropy tables)."""
    from pixarc_svr.train import train as run

    entry = run(data, out, minutes=minutes, stage1_minutes=stage1_minutes, steps=steps, stage1_steps=stage1_steps,
                batch=batch, patch=patch, width=width, lr=lr, seed=seed, device=device, resume=resume,
                checkpoint_minutes=checkpoint_minutes)
    console.print(f"wrote {out} ({entry['sha256'][:16]}..., {entry['steps']} steps, {entry['minutes']} min, "
                  f"stage {entry['stage']})")


if __name__ == "__main__":  # pragma: no cover
    main()
