"""``pixarc train classifier``, added to the core CLI through ``register_commands``.

The trainer (torch) loads when the command runs, not when commands are listed.
"""

from __future__ import annotations

import click

from pixarc.training import report, train_options


@click.command("classifier")
@train_options(minutes=8.0, resumable=False,
               data_help="Folder with one sub-folder per domain (e.g. ../shared/data/train/whole).",
               out_help="Folder for the weights and their weights.json entry.",
               minutes_help="Time budget (bounds the augmentation rounds).",
               dev_help="Folder of dev images (<domain>/ sub-folders): the new classifier replaces the one in use "
                        "only if its log-loss there is lower.")
@click.option("--extra", multiple=True, help="More <domain>/ folders used for training only (e.g. ../shared/data/train/crops).")
@click.option("--augment", default=6, show_default=True, help="Augmented copies per whole image.")
@click.option("--epochs", default=300, show_default=True)
@click.option("--members", default=5, show_default=True, help="Ensemble size.")
@click.option("--folds", default=5, show_default=True, help="Held-out folds (by source group) for selection and calibration.")
def train_classifier(data, out, minutes, fresh, dev, seed, extra, augment, epochs, members, folds):
    """Train the `cnn` domain classifier (selected and calibrated on held-out training images)."""
    from .train import train as run

    entry = run(data, out, extra=extra, augment_rounds=augment, epochs=epochs, members=members, folds=folds,
                minutes=minutes, seed=seed, fresh=fresh, dev=dev)
    click.echo(report(out, entry) if entry is None else
               f"wrote {out} ({entry['sha256'][:16]}..., held-out accuracy {entry['heldout']['accuracy']:.3f}, "
               f"temperature {entry['temperature']:.2f}, {entry['minutes']:.1f} min)")
