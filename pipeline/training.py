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


def cumulative_lr(step: int, lr: float, *, warmup: int = 200, half_life: int = 20_000, since: int = 0) -> float:
    """The learning rate at *cumulative* step ``step`` (all runs and devices together).

    ``lr`` decays as ``lr · (1 + step / half_life)^-½``, a function of the cumulative step
    only, so runs stacked one after another follow one curve (no per-run decay, no
    sawtooth); a run that starts without optimizer state (``since``: its first step)
    warms up linearly over ``warmup`` steps, so a fresh Adam does not jolt the weights.
    The annealing a per-run decay gave comes from the weight average
    (:class:`WeightAverage`) that is what a trainer ships.
    """
    scale = (1.0 + step / half_life) ** -0.5
    ramp = min(1.0, (step - since + 1) / warmup) if warmup > 0 else 1.0
    return lr * scale * ramp


class WeightAverage:
    """An exponential moving average of a model's parameters (what trainers ship).

    Averaging the last few thousand steps' weights does what a learning-rate drop at the
    end of each run did, without tying the schedule to one run's length.
    """

    def __init__(self, model, decay: float = 0.999, state: dict | None = None):
        import copy

        import torch

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if state is not None:
            self.model.load_state_dict(state)
        self._torch = torch

    def update(self, model) -> None:
        with self._torch.no_grad():
            for a, p in zip(self.model.parameters(), model.parameters()):
                a.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
            for a, b in zip(self.model.buffers(), model.buffers()):
                a.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()


def continuation(out_dir: Path, arch: str, match: dict) -> tuple[Path, dict] | None:
    """The shipped weights a run continues from: the newest encoding (not ``decode_only``)
    entry of ``out_dir/weights.json`` with this ``arch`` whose fields equal ``match``."""
    from .weights import read_manifest

    manifest = Path(out_dir) / "weights.json"
    if not manifest.exists():
        return None
    found = [(Path(out_dir) / name, e) for name, e in read_manifest(manifest).items()
             if e.get("arch") == arch and not e.get("decode_only") and all(e.get(k) == v for k, v in match.items())]
    return max(found, key=lambda f: int(f[1].get("steps", 0)), default=None)
