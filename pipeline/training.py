"""What every pixarc trainer shares: the training set, its fingerprint, safe checkpoints,
and the command-line options of ``pixarc train ...``.

The learned plugins (``pixarc train lossy|callic|svr|enhance``) each own their model and
loop; these three pieces are the same for all of them, so a weights manifest from any
trainer names its data the same way and a killed run never leaves a torn checkpoint.
Their commands come from the plugins (``register_commands``) with ``train_options``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def training_images(data: Path) -> list[Path]:
    """Every image under ``data``, sorted (so a seed reproduces a run); stops when there is none."""
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no training images under {data}")
    return files


def data_sha256(root: Path, files: list[Path]) -> str:
    """One hash for a training set: relative names and contents, in sorted order."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(Path(p).relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a checkpoint is whole or absent."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


DATA_HELP = "Folder of training images (e.g. ../shared/data/train/crops)."


def train_options(*, minutes: float, checkpoint_minutes: float = 5.0, resumable: bool = True,
                  data_help: str = DATA_HELP, out_help: str = "Folder for the checkpoint and its weights.json entry.",
                  minutes_help: str = "Time budget (this run; resumed runs add to it).",
                  resume_help: str = "Continue from <out>/<name>.ckpt."):
    """The options every ``pixarc train ...`` command shares, as one click decorator.

    Always ``--data``, ``--out``, ``--minutes``, ``--seed``; a ``resumable`` trainer also
    gets ``--steps`` (a cumulative step budget), ``--device``, ``--resume`` and
    ``--checkpoint-minutes``. Plugins add them through ``register_commands`` so the same
    flag means the same thing in every trainer; what differs per trainer is a default or
    a help text, passed here. They reach the command as the keyword arguments ``data``,
    ``out``, ``minutes``, ``seed``, ``steps``, ``device``, ``resume``, ``checkpoint_minutes``.
    """
    import click  # the CLI has it loaded already; trainers used as a library need not

    options = [
        click.option("--data", required=True, help=data_help),
        click.option("--out", required=True, help=out_help),
        click.option("--minutes", default=minutes, show_default=True, help=minutes_help),
    ]
    if resumable:
        options += [
            click.option("--steps", default=10**9, show_default=True, help="Step budget (cumulative over resumes)."),
            click.option("--device", default="cpu", show_default=True),
            click.option("--resume", is_flag=True, help=resume_help),
            click.option("--checkpoint-minutes", default=checkpoint_minutes, show_default=True),
        ]
    options.append(click.option("--seed", default=0, show_default=True))

    def decorate(fn):
        for option in reversed(options):  # click lists options in decorator order, top first
            fn = option(fn)
        return fn

    return decorate
