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
import time
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

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if state is not None:
            self.model.load_state_dict(state)

    def update(self, model) -> None:
        import torch

        with torch.no_grad():
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


class TrainingRun:
    """One invocation of a trainer, in the shape every pixarc trainer shares, so that the
    minutes of many runs, on any device, add up to one model.

    Where it starts: ``resume`` continues ``<out>/<stem>.ckpt`` exactly (optimizer, weight
    average, step count); otherwise, unless ``fresh``, the newest shipped weights of
    ``out``'s ``weights.json`` whose entry matches ``match`` (same architecture and shape):
    their fp16 weights, their cumulative steps, minutes, devices and stages, with a fresh
    optimizer that warms up. The learning rate is :func:`cumulative_lr` of the cumulative
    step; what ships is the :class:`WeightAverage`. :meth:`ship` writes a new file
    ``<stem>[-vN].pt`` (stored bitstreams name the old one by its sha256) whose entry
    records every stage and the file it continues.

    A trainer's loop::

        run = TrainingRun(model, opt, out=..., stem=..., arch=..., match={...}, ...)
        while run.next_step():
            loss = ...; opt.zero_grad(); loss.backward(); opt.step()
            run.after_step()            # average, checkpoint when due
        run.finish_stage(batch=..., final=...)
        entry = run.ship(run.average.state_dict(), {...})
    """

    def __init__(self, model, opt, *, out, stem: str, arch: str, match: dict, device: str, lr: float,
                 minutes: float, steps: int = 10**9, checkpoint_minutes: float = 3.0, resume: bool = False,
                 fresh: bool = False, half_life: int = 20_000, warmup: int = 200, ema_decay: float = 0.999,
                 log=print):
        import torch

        from .weights import load_weights

        self.model, self.opt, self.lr, self.device = model, opt, lr, device
        self.out_dir = Path(out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem, self.arch, self.log = stem, arch, log
        self.ckpt_path = self.out_dir / f"{stem}.ckpt"
        self.budget_s, self.max_steps, self.every_s = minutes * 60, steps, checkpoint_minutes * 60
        self.half_life, self.warmup = half_life, warmup
        self.step, self.minutes_done, self.devices, self.stages = 0, 0.0, [], []
        self.since, self.parent = 0, None
        average = None
        if resume and self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, map_location=device, weights_only=True)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            self.step, self.minutes_done, self.devices = int(ck["step"]), float(ck["minutes"]), list(ck["devices"])
            self.stages, average, self.parent = list(ck.get("stages", [])), ck.get("ema"), ck.get("parent")
            self.since = int(ck.get("since", 0))
            log(f"resumed {self.ckpt_path} at step {self.step} ({self.minutes_done:.1f} min)")
        elif resume:
            raise SystemExit(f"--resume: no checkpoint {self.ckpt_path}")
        elif not fresh and (found := continuation(self.out_dir, arch, match)):
            path, entry = found
            state = load_weights(path, entry["sha256"], map_location=device)
            model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
            self.step, self.minutes_done = int(entry.get("steps", 0)), float(entry.get("minutes", 0.0))
            self.devices, self.stages = list(entry.get("devices", [])), list(entry.get("stages", []))
            self.since, self.parent = self.step, path.name
            log(f"continuing from the shipped {path.name} at cumulative step {self.step} "
                f"({self.minutes_done:.1f} min); fresh optimizer, {warmup} warm-up steps")
        if device not in self.devices:
            self.devices.append(device)
        self.average = WeightAverage(model, ema_decay, average)
        self.start_step = self.step
        self.t0 = self._last_ckpt = time.time()

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.t0

    def next_step(self) -> bool:
        """Start the next step (False when the step or time budget is spent): set its
        learning rate from the cumulative step count."""
        if self.step >= self.max_steps or self.elapsed_s >= self.budget_s:
            return False
        self.step += 1
        for g in self.opt.param_groups:
            g["lr"] = cumulative_lr(self.step, self.lr, since=self.since, half_life=self.half_life,
                                    warmup=self.warmup)
        return True

    def after_step(self) -> bool:
        """Update the weight average; write a checkpoint when one is due (True then)."""
        self.average.update(self.model)
        if time.time() - self._last_ckpt > self.every_s:
            self.save_checkpoint()
            self._last_ckpt = time.time()
            return True
        return False

    def save_checkpoint(self) -> None:
        atomic_save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                     "ema": self.average.state_dict(), "step": self.step, "since": self.since,
                     "parent": self.parent, "minutes": self.minutes_done + self.elapsed_s / 60,
                     "devices": self.devices, "stages": self.stages}, self.ckpt_path)

    def finish_stage(self, **fields) -> dict:
        """Record this invocation (steps, device, minutes, schedule and ``fields``) and checkpoint."""
        stage = {"steps": f"{self.start_step}-{self.step}", "device": self.device,
                 "minutes": round(self.elapsed_s / 60, 1), "lr": self.lr,
                 "schedule": f"cumulative_lr(half_life={self.half_life}), ema {self.average.decay}", **fields}
        self.stages.append(stage)
        self.save_checkpoint()
        return stage

    def ship(self, state: dict, entry: dict) -> dict:
        """Save ``state`` (fp16) as a new file beside the old ones, with the cumulative
        provenance (steps, minutes, devices, stages, the file it continues) in ``entry``."""
        from .weights import read_manifest, save_weights

        manifest = self.out_dir / "weights.json"
        taken = set(read_manifest(manifest)) if manifest.exists() else set()
        n = 1
        while (name := f"{self.stem}.pt" if n == 1 else f"{self.stem}-v{n}.pt") in taken:
            n += 1
        entry = {"arch": self.arch, **entry, "steps": self.step, "devices": self.devices, "stages": self.stages,
                 "minutes": round(self.minutes_done + self.elapsed_s / 60, 1),
                 **({"continues": self.parent} if self.parent else {})}
        return save_weights(self.out_dir, name, state, entry)
