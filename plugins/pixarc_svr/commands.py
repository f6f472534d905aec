"""``pixarc train svr``, added to the core CLI through ``register_commands``.

The trainer (torch, CompressAI) loads when the command runs, not when commands are listed.
"""

from __future__ import annotations

import click

from pixarc.training import report, train_options


@click.command("svr")
@train_options(minutes=10.0, checkpoint_minutes=5.0,
               out_help="Folder for the checkpoint, the weights and their weights.json entry.",
               resume_help="Continue from <out>/svr-w<width>.ckpt.")
@click.option("--stage1-minutes", default=7.0, show_default=True, help="Cumulative minutes of stage 1 (codebooks).")
@click.option("--stage1-steps", default=10**9, show_default=True, help="Cumulative steps of stage 1.")
@click.option("--batch", default=8, show_default=True)
@click.option("--patch", default=96, show_default=True)
@click.option("--width", default=32, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
def train_svr(data, out, minutes, steps, device, resume, checkpoint_minutes, fresh, dev, seed, stage1_minutes,
              stage1_steps, batch, patch, width, lr):
    """Train the SVR codec (stage 1 codebooks, stage 2 predictor/filler/decoder, then its entropy tables;
    adds --minutes to the shipped model)."""
    from .train import train as run

    entry = run(data, out, minutes=minutes, stage1_minutes=stage1_minutes, steps=steps, stage1_steps=stage1_steps,
                batch=batch, patch=patch, width=width, lr=lr, seed=seed, device=device, resume=resume,
                checkpoint_minutes=checkpoint_minutes, fresh=fresh, dev=dev)
    click.echo(report(out, entry))


@click.group("svr")
def svr():
    """SVR tools that need no training."""


@svr.command("context-tables")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="The TRAINING images (e.g. ../shared/data/train/crops); never dev.")
@click.option("--weights", "weights_name", default=None,
              help="Weights file name in the shipped weights.json (default: the one new encodes use).")
def context_tables(data, weights_name):
    """Count the index maps the shipped encoder sends over --data and ship them as the
    context tables of those weights (a file beside them, sha256 in weights.json)."""
    from pathlib import Path

    from pixarc.weights import load_weights, manifest_entries, shipped_weights_dir

    from .constants import ARCH
    from .context import ship_tables
    from .model import SVRModel

    # the codec's own search (PIXARC_SVR_WEIGHTS first, then the shipped folder), without
    # importing the codec module (it imports this one)
    found = [(path, e) for path, e in manifest_entries("PIXARC_SVR_WEIGHTS", shipped_weights_dir(
        Path(__file__).with_name("__init__.py")), ARCH) if (path.name == weights_name if weights_name
                                                              else not e.get("decode_only"))]
    if not found:
        raise click.ClickException(f"svr: no weights {weights_name or '(any)'} installed")
    path, e = found[0]
    entry = ship_tables(path, SVRModel.from_weights(e, load_weights(path, e["sha256"])), data)
    click.echo(f"{entry['for']}: context tables from {entry['images']} images, {entry['positions']} positions, "
               f"{entry['bytes']} bytes, sha256 {entry['sha256'][:12]}")
