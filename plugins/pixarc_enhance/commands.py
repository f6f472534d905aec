"""``pixarc train enhance``, added to the core CLI through ``register_commands``.

The trainer (torch) loads when the command runs, not when commands are listed.
"""

from __future__ import annotations

import click

from pixarc.training import report, train_options


@click.command("enhance")
@train_options(minutes=15.0, checkpoint_minutes=3.0)
@click.option("--base", default="avif", show_default=True, help="Lossy base codec whose artefacts the filter removes.")
@click.option("--rates", default="20,95", show_default=True, help="Range of the base rate parameter to train on.")
@click.option("--variants", default=2, show_default=True, help="Base encodes per training image.")
@click.option("--batch", default=16, show_default=True)
@click.option("--patch", default=96, show_default=True)
@click.option("--channels", default=32, show_default=True)
@click.option("--layers", default=6, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--refit", default=600, show_default=True, help="Training patches for the final least-squares refit of the last layer (0: none).")
@click.option("--chroma", type=click.Choice(["both", "444"]), default="both", show_default=True,
              help="Base chroma settings to train on (444: the lossy policy's).")
@click.option("--init-from", default=None,
              help="A wider filter in --out's weights.json (same --layers) whose strongest channels start a "
                   "--channels filter of a shape not shipped yet (then ignored).")
def train_enhance(data, out, minutes, steps, device, resume, checkpoint_minutes, fresh, dev, seed, base, rates,
                  variants, batch, patch, channels, layers, lr, refit, chroma, init_from):
    """Train the enhancement post-filter of `<base>-enhanced` (adds --minutes to the shipped filter; resumable)."""
    from .train import train as run

    lo, hi = (int(v) for v in rates.split(","))
    entry = run(data, out, base=base, minutes=minutes, steps=steps, batch=batch, patch=patch, lr=lr, device=device,
                seed=seed, channels=channels, layers=layers, rates=(lo, hi), variants=variants, resume=resume,
                checkpoint_minutes=checkpoint_minutes, refit=refit, chroma=chroma, dev=dev, fresh=fresh,
                init_from=init_from)
    click.echo(report(out, entry))
