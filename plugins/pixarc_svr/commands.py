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
