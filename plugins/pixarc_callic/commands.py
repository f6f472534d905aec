"""``pixarc train callic``, added to the core CLI through ``register_commands``.

The trainer (torch, constriction) loads when the command runs, not when commands are listed.
"""

from __future__ import annotations

import click

from pixarc.training import report, train_options


@click.command("callic")
@train_options(minutes=10.0, checkpoint_minutes=3.0)
@click.option("--batch", default=8, show_default=True)
@click.option("--patch", default=64, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--dim", default=32, show_default=True)
@click.option("--depth", default=3, show_default=True)
@click.option("--kernel", default=7, show_default=True)
@click.option("--mixtures", default=5, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch CPU threads (1 is fastest on a busy CPU).")
def train_callic(data, out, minutes, steps, device, resume, checkpoint_minutes, fresh, dev, seed, batch, patch, lr,
                 dim, depth, kernel, mixtures, threads):
    """Pre-train the CALLIC (MGCF) lossless model (adds --minutes to the shipped model; resumable)."""
    from .train import train as run

    entry = run(data, out, minutes=minutes, steps=steps, batch=batch, patch=patch, lr=lr, dim=dim, depth=depth,
                kernel=kernel, mixtures=mixtures, device=device, seed=seed, resume=resume,
                checkpoint_minutes=checkpoint_minutes, threads=threads, fresh=fresh, dev=dev)
    click.echo(report(out, entry))
