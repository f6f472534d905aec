"""``pixarc train lossy``, added to the core CLI through ``register_commands``.

Only click and the shared options load here; the trainer (torch, CompressAI) loads when
the command runs, so listing commands stays fast and works without torch.
"""

from __future__ import annotations

import click

from pixarc.training import report, train_options


@click.command("lossy")
@train_options(minutes=60.0, checkpoint_minutes=5.0)
@click.option("--quality", type=click.IntRange(1, 8), required=True, help="Rate point: sets λ (CompressAI convention).")
@click.option("--batch", default=16, show_default=True)
@click.option("--patch", default=128, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--N", "n", default=None, type=int, help="Channels (default: the zoo's for this quality).")
@click.option("--M", "m", default=None, type=int, help="Latent channels (default: the zoo's).")
@click.option("--init-from", default=None, help="Start from another rate point's weights (.pt in a weights.json folder, or .ckpt).")
def train_lossy(data, out, minutes, steps, device, resume, checkpoint_minutes, fresh, dev, seed, quality, batch, patch,
                lr, n, m, init_from):
    """Train a mbt2018-mean base model for the adaptive lossy codec (adds --minutes to the shipped rate point;
    resumable)."""
    from .train import train as run

    entry = run(data, quality, out, steps=steps, minutes=minutes, batch=batch, patch=patch, lr=lr, device=device,
                seed=seed, N=n, M=m, resume=resume, init_from=init_from, checkpoint_minutes=checkpoint_minutes,
                fresh=fresh, dev=dev)
    click.echo(report(out, entry))
