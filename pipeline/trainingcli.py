"""The command-line options every ``pixarc train ...`` command shares, and the line it
ends with. Plugins add their trainers through ``register_commands`` with
:func:`train_options` (re-exported by :mod:`pixarc.training`).
"""

from __future__ import annotations

DATA_HELP = "Folder of training images (e.g. ../shared/data/train/crops)."
DEV_HELP = ("Folder of dev images (one sub-folder per domain): the run ships its best weights only if they "
            "score better there than the newest shipped weights of the same shape (which they then supersede).")


def train_options(*, minutes: float, checkpoint_minutes: float = 5.0, resumable: bool = True,
                  continues: bool = True, dev: bool = True, data_help: str = DATA_HELP,
                  out_help: str = "Folder for the checkpoint and its weights.json entry.",
                  minutes_help: str = "Time budget of this run (minutes added to the model).",
                  resume_help: str = "Continue from <out>/<name>.ckpt.", dev_help: str = DEV_HELP):
    """The options every ``pixarc train ...`` command shares, as one click decorator.

    Always ``--data``, ``--out``, ``--minutes``, ``--seed``; a trainer that ``continues``
    the shipped weights gets ``--fresh``, one with a ``dev`` score ``--dev``; a
    ``resumable`` one ``--steps`` (a cumulative step budget), ``--device``, ``--resume``
    and ``--checkpoint-minutes``. Plugins add them through ``register_commands`` so the
    same flag means the same thing in every trainer; what differs per trainer is a
    default or a help text, passed here. They reach the command as the keyword arguments
    ``data``, ``out``, ``minutes``, ``seed``, ``fresh``, ``dev``, ``steps``, ``device``,
    ``resume``, ``checkpoint_minutes``.
    """
    import click  # the CLI has it loaded already; trainers used as a library need not

    options = [
        click.option("--data", required=True, help=data_help),
        click.option("--out", required=True, help=out_help),
        click.option("--minutes", default=minutes, show_default=True, help=minutes_help),
    ]
    if resumable:
        options += [
            click.option("--steps", default=10**9, show_default=True, help="Step budget (cumulative over runs)."),
            click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps, ..."),
            click.option("--resume", is_flag=True, help=resume_help),
            click.option("--checkpoint-minutes", default=checkpoint_minutes, show_default=True),
        ]
    if continues:
        options.append(click.option("--fresh", is_flag=True, help="Start from random weights instead of "
                                    "continuing the newest shipped weights of the same shape."))
    if dev:
        options.append(click.option("--dev", default=None, help=dev_help))
    options.append(click.option("--seed", default=0, show_default=True))

    def decorate(fn):
        for option in reversed(options):  # click lists options in decorator order, top first
            fn = option(fn)
        return fn

    return decorate


def report(out: str, entry: dict | None) -> str:
    """The line a ``pixarc train`` command ends with."""
    if entry is None:
        return f"kept the shipped weights in {out}: this run did not score better on --dev (its checkpoint remains)"
    return (f"wrote {out} ({entry['sha256'][:16]}..., {entry['steps']} steps, {entry['minutes']} min, "
            f"final {entry.get('final')})")
