"""What every pixarc trainer shares: the run itself (:class:`TrainingRun`: resume / continue
the shipped weights / fresh, the cumulative learning rate, the weight average, safe
checkpoints, keep-if-better on dev, stages, a new weights file per run), plus, re-exported
from :mod:`pixarc.trainingdata` and :mod:`pixarc.trainingcli`, the training set and its
fingerprint, seeding, random crops, the dev set and the options of ``pixarc train ...``.

The learned plugins (``pixarc train lossy|callic|svr|enhance|classifier``) each own their
model, loss and data; the rest is here, so the minutes of many runs, on any device, add
up to one model in the same way for every trainer, a weights manifest from any trainer
records its provenance the same way, and a killed run never leaves a torn checkpoint.
Their commands come from the plugins (``register_commands``) with :func:`train_options`.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Mapping

# re-exported: a trainer imports everything it shares from here
from .trainingcli import DATA_HELP, DEV_HELP, report, train_options
from .trainingdata import (IMAGE_EXTENSIONS, atomic_save, centre_crop, data_sha256, dev_images, load_rgb,
                           random_crops, seeded, training_images)

__all__ = ["DATA_HELP", "DEV_HELP", "IMAGE_EXTENSIONS", "TrainingRun", "WeightAverage", "atomic_save", "centre_crop",
           "continuation", "cumulative_lr", "data_sha256", "dev_images", "load_rgb", "random_crops", "report",
           "seeded", "stages_of", "train_options", "training_images"]


# ------------------------------------------------------------------ the schedule


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


# ------------------------------------------------------------------ shipped weights


def continuation(out_dir: Path, arch: str, match: Mapping[str, Any]) -> tuple[Path, dict] | None:
    """The shipped weights a run continues from: the newest encoding (not ``decode_only``)
    entry of ``out_dir/weights.json`` with this ``arch`` whose fields equal ``match``."""
    from .weights import read_manifest

    manifest = Path(out_dir) / "weights.json"
    if not manifest.exists():
        return None
    found = [(Path(out_dir) / name, e) for name, e in read_manifest(manifest).items()
             if e.get("arch") == arch and not e.get("decode_only") and all(e.get(k) == v for k, v in match.items())]
    return max(found, key=lambda f: int(f[1].get("steps", 0)), default=None)


def stages_of(entry: Mapping[str, Any]) -> list[dict]:
    """The stages (one per run) an entry records; an entry written before runs recorded
    stages counts as one stage, summarised from its own fields (so a continuation's
    provenance still starts where those weights came from)."""
    if entry.get("stages"):
        return [dict(s) for s in entry["stages"]]
    if not entry.get("steps"):
        return []
    keep = ("minutes", "lr", "batch", "patch", "data", "data_sha256", "images", "final", "source", "runs")
    return [{"steps": f"0-{int(entry['steps'])}", "device": ",".join(entry.get("devices", [])) or "unknown",
             **{k: entry[k] for k in keep if k in entry}}]


def _float_state(state: Mapping[str, Any]) -> dict:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


# A single training step (or the loop between two) that takes longer than this was not
# training: the process was stopped (``kill -STOP`` while a benchmark had the CPU, a
# suspended machine). Such gaps count neither towards the run's budget nor its minutes.
PAUSE_S = 60.0


class TrainingRun:
    """One invocation of a trainer, in the shape every pixarc trainer shares, so that the
    minutes of many runs, on any device, add up to one model.

    Where it starts: ``resume`` continues ``<out>/<stem>.ckpt`` exactly (optimizers, weight
    average, step count, the trainer's ``extra`` state, the best dev score so far);
    ``start_from`` (a name and a state: another rate point's weights) starts a new model
    from those; otherwise, unless ``fresh``, the newest shipped weights of ``out``'s
    ``weights.json`` whose entry matches ``match`` (same architecture and shape): their
    fp16 weights, their cumulative steps, minutes, devices and stages (:attr:`continued`
    is their entry), with fresh optimizers that warm up. The learning rate of the
    optimizer attached as ``"opt"`` is :func:`cumulative_lr` of the cumulative step; what
    ships is the :class:`WeightAverage` (``ema_decay`` None: the model itself).

    With ``dev_score`` (the model → a number, higher is better), the average is scored at
    the start and at every checkpoint and the best one is what :meth:`final_model` holds
    (``track_best`` False: the last one), and :meth:`ship` writes nothing unless it beats
    the newest shipped weights of the same shape (scored as shipped, fp16), which it then
    supersedes (``decode_only``). :meth:`ship` writes a new file ``<stem>[-vN].pt`` (stored
    bitstreams name the old one by its sha256) whose entry records every stage (steps,
    device, minutes, learning rates, data sha256) and the file it continues.

    Budgets: ``minutes`` of this run (from ``started``, when the invocation began before
    the run), ``steps`` cumulative, ``run_steps`` of this run. ``data`` (a folder; its
    images are :attr:`files` unless given, hashed unless ``data_hash`` is) goes into every
    stage. ``checkpoints`` False: nothing written but the weights (trainers of seconds).

    A trainer::

        run = TrainingRun(model, opt, out=..., stem=..., arch=..., match={...}, data=..., ...)
        def step():
            loss = ...; opt.zero_grad(); loss.backward(); opt.step()
            return {"loss": float(loss)}       # logged as running means
        run.loop(step, log_every=50)           # budgets, lr, average, checkpoints, dev
        run.finish_stage(batch=..., patch=...)
        entry = run.ship(run.final_model().state_dict(), {...})   # None: kept the shipped
    """

    def __init__(self, model, opt=None, *, out, stem: str, arch: str, match: Mapping[str, Any], device: str,
                 lr: float, minutes: float, steps: int = 10**9, run_steps: int | None = None,
                 checkpoint_minutes: float = 3.0, resume: bool = False, fresh: bool = False,
                 half_life: int = 20_000, warmup: int = 200, ema_decay: float | None = 0.999, seed: int = 0,
                 data: Path | None = None, files: list[Path] | None = None, data_hash: str | None = None,
                 dev_score: Callable[[Any], float] | None = None, dev_metric: str = "dev score",
                 track_best: bool = True, start_from: tuple[str, Mapping[str, Any]] | None = None,
                 checkpoints: bool = True, started: float | None = None, log=print):
        import torch

        from .weights import load_weights

        self.model, self.lr, self.device, self.log = model, lr, device, log
        self.out_dir = Path(out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem, self.arch, self.match = stem, arch, dict(match)
        self.ckpt_path = self.out_dir / f"{stem}.ckpt"
        self.budget_s, self.max_steps, self.every_s = minutes * 60, steps, checkpoint_minutes * 60
        self.half_life, self.warmup, self.seed, self.checkpoints = half_life, warmup, seed, checkpoints
        self.dev_score, self.dev_metric = dev_score, dev_metric
        self.track_best = dev_score is not None and track_best
        self.data = Path(data) if data is not None else None
        self.files = files if files is not None or data is None else training_images(self.data)
        self.data_hash = data_hash or (data_sha256(self.data, self.files) if self.data is not None else None)
        self.step, self.minutes_done, self.devices, self.stages = 0, 0.0, [], []
        self.since, self.parent, self.init_from, self.continued = 0, None, None, None
        self.extra: dict[str, Any] = {}  # the trainer's own state, carried by checkpoints (e.g. svr's stage)
        self.history: list[dict] = []
        self.minutes_total: float | None = None  # set by finish_stage: the training time of all runs
        self.best: tuple[float, dict, int] | None = None  # (dev score, state, step)
        self.optimizers: dict[str, Any] = {}
        self.opt = None
        self._pending: dict[str, dict] = {}  # optimizer states of a resumed run, loaded by attach()
        self._lr_range: list[float] = []
        average = None
        if resume and self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, map_location=device, weights_only=True)
            model.load_state_dict(ck["model"])
            self._pending = {"opt": ck["opt"], **ck.get("optimizers", {})}
            self.step, self.minutes_done, self.devices = int(ck["step"]), float(ck["minutes"]), list(ck["devices"])
            self.stages, average, self.parent = list(ck.get("stages", [])), ck.get("ema"), ck.get("parent")
            self.since, self.init_from = int(ck.get("since", 0)), ck.get("init_from")
            self.extra, self.history = dict(ck.get("extra", {})), list(ck.get("history", []))
            if ck.get("best") is not None:
                self.best = (float(ck["best"]["score"]), ck["best"]["state"], int(ck["best"]["step"]))
            if ck.get("open_stage"):  # the stopped run's steps and minutes stay on the record, as its own stage
                self.stages.append({**ck["open_stage"], "interrupted": True})
            log(f"resumed {self.ckpt_path} at step {self.step} ({self.minutes_done:.1f} min)")
        elif resume:
            raise SystemExit(f"--resume: no checkpoint {self.ckpt_path}")
        elif start_from is not None:
            self.init_from, state = start_from
            model.load_state_dict(_float_state(state), strict=False)
            log(f"initialised from {self.init_from}")
        elif not fresh and (found := continuation(self.out_dir, arch, match)):
            path, entry = found
            model.load_state_dict(_float_state(load_weights(path, entry["sha256"], map_location=device)))
            self.step, self.minutes_done = int(entry.get("steps", 0)), float(entry.get("minutes", 0.0))
            self.devices, self.stages = list(entry.get("devices", [])), stages_of(entry)
            self.since, self.parent, self.continued = self.step, path.name, dict(entry)
            log(f"continuing from the shipped {path.name} at cumulative step {self.step} "
                f"({self.minutes_done:.1f} min); fresh optimizer, {warmup} warm-up steps")
        if device not in self.devices:
            self.devices.append(device)
        if run_steps is not None:
            self.max_steps = min(self.max_steps, self.step + run_steps)
        self.average = WeightAverage(model, ema_decay, average) if ema_decay else None
        self.start_step = self.step
        self.rng = seeded(seed, self.step)
        self.t0, self._last_ckpt = started or time.time(), time.time()
        self.paused_s, self._mark = 0.0, None  # stopped time (``PAUSE_S``), the clock's last reading
        if opt is not None:
            self.attach(opt)
        if self.track_best and self.best is None:
            self.validate()

    # ------------------------------------------------------------------ optimizers

    def attach(self, opt, name: str = "opt", *, restart: bool = False) -> None:
        """Use ``opt`` (``"opt"``: the optimizer whose learning rate follows the schedule;
        others are only checkpointed). A resumed run's state for ``name`` is loaded into
        it, unless ``restart``: a new optimizer mid-run (a new training stage), which warms
        up from this step."""
        self.optimizers[name] = opt
        if name == "opt":
            self.opt = opt
        if restart:
            self._pending.pop(name, None)
            if name == "opt":
                self.since = self.step
                if self.step > self.start_step:  # mid-step: this step already runs on the new optimizer
                    self._set_lr()
        elif name in self._pending:
            opt.load_state_dict(self._pending.pop(name))

    # ------------------------------------------------------------------ stepping

    @property
    def elapsed_s(self) -> float:
        """Training seconds of this invocation: wall time less the pauses (``PAUSE_S``)."""
        return time.time() - self.t0 - self.paused_s

    def _clock(self, judge: bool = True) -> None:
        """Read the clock at a step's start and end; with ``judge``, a gap since the last
        reading longer than ``PAUSE_S`` counts as paused (validation and checkpoints,
        between the end of ``after_step``'s own work and the next reading, are not judged)."""
        now = time.time()
        if judge and self._mark is not None and now - self._mark > PAUSE_S:
            self.paused_s += now - self._mark
            self.log(f"paused {(now - self._mark) / 60:.1f} min (not counted as training)")
        self._mark = now

    @property
    def lr_now(self) -> float:
        return self.opt.param_groups[0]["lr"] if self.opt is not None else self.lr

    def next_step(self) -> bool:
        """Start the next step (False when the step or time budget is spent): set its
        learning rate from the cumulative step count."""
        self._clock()
        if self.step >= self.max_steps or self.elapsed_s >= self.budget_s:
            return False
        self.step += 1
        self._set_lr()
        return True

    def _set_lr(self) -> None:
        lr = cumulative_lr(self.step, self.lr, since=self.since, half_life=self.half_life, warmup=self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr
        first = self._lr_range[0] if self._lr_range and self.step > self.start_step + 1 else lr
        self._lr_range = [first, lr]

    def after_step(self) -> bool:
        """Update the weight average; when a checkpoint is due, score dev and write one (True then)."""
        self._clock()
        if self.average is not None:
            self.average.update(self.model)
        if time.time() - self._last_ckpt > self.every_s:
            if self.track_best:
                self.validate()
            self.save_checkpoint()
            self._last_ckpt = time.time()
            self._clock(judge=False)
            return True
        return False

    def loop(self, step: Callable[[], Mapping[str, float] | None], log_every: int = 50) -> list[dict]:
        """Run ``step`` (one training step; it returns the numbers to log, or None for a
        step it skipped) until the step or time budget is spent. Every ``log_every`` steps
        (and after the last) the running means go to the log and to :attr:`history`."""
        sums: dict[str, list[float]] = {}  # name -> [sum, count]

        def flush() -> None:
            if sums:
                rec = {"step": self.step, **{k: float(f"{v / n:.5g}") for k, (v, n) in sums.items()}}
                self.history.append(rec)
                self.log(f"step {self.step}: " + " ".join(f"{k} {v:g}" for k, v in rec.items() if k != "step")
                         + f" ({self.elapsed_s:.0f} s, lr {self.lr_now:.1e})")
            sums.clear()

        while self.next_step():
            for k, v in (step() or {}).items():
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += float(v)
                acc[1] += 1
            if self.step % log_every == 0:
                flush()
            self.after_step()
        flush()
        return self.history

    # ------------------------------------------------------------------ dev, checkpoints

    @property
    def shipping(self):
        """The model whose weights ship: the average, or the model itself without one."""
        return self.average.model if self.average is not None else self.model

    def validate(self) -> float | None:
        """Score the weights that would ship on dev; keep them if they are the best so far."""
        if self.dev_score is None:
            return None
        score = self._score(self.shipping)
        if self.best is None or score > self.best[0]:
            self.best = (score, {k: v.detach().clone() for k, v in self.shipping.state_dict().items()}, self.step)
        self.log(f"dev at step {self.step}: {self.dev_metric} {score:.4f} (best {self.best[0]:.4f} at {self.best[2]})")
        return score

    def save_checkpoint(self, open_stage: bool = True) -> None:
        """``open_stage``: this invocation has not recorded its stage yet; the checkpoint
        carries it, so a run stopped before its end and continued with ``--resume`` keeps
        the stopped part's steps, minutes and device on the record (``interrupted``)."""
        if not self.checkpoints:
            return
        best = {"score": self.best[0], "state": self.best[1], "step": self.best[2]} if self.best else None
        atomic_save({"model": self.model.state_dict(), "opt": self.opt.state_dict() if self.opt else {},
                     "optimizers": {n: o.state_dict() for n, o in self.optimizers.items() if n != "opt"},
                     "ema": self.average.state_dict() if self.average is not None else None,
                     "step": self.step, "since": self.since, "parent": self.parent, "init_from": self.init_from,
                     "minutes": self.minutes_done + self.elapsed_s / 60, "devices": self.devices,
                     "stages": self.stages, "extra": self.extra, "history": self.history, "best": best,
                     "open_stage": self._stage() if open_stage and self.step > self.start_step else None},
                    self.ckpt_path)

    def final_model(self):
        """The model to ship: the weight average (or the model), holding the best dev
        weights of the run when there is a dev score."""
        if self.track_best:
            self.validate()
            self.shipping.load_state_dict(self.best[1])
            if self.stages and self.stages[-1]["steps"] == f"{self.start_step}-{self.step}":
                # this run's stage, recorded before that last score: it names the weights that ship
                self.stages[-1]["dev"] = {"score": round(self.best[0], 5), "step": self.best[2],
                                          "metric": self.dev_metric}
                self.save_checkpoint(open_stage=False)  # a later --resume continues from this record
        return self.shipping

    def finish_stage(self, **fields) -> dict:
        """Record this invocation (steps, device, minutes, learning rates, data, the last
        logged numbers, the dev score, and ``fields``) and checkpoint."""
        stage = self._stage(**fields)
        self.stages.append(stage)
        self.save_checkpoint(open_stage=False)
        self.minutes_total = round(self.minutes_done + self.elapsed_s / 60, 1)  # training time, as resumed from
        return stage

    def _stage(self, **fields) -> dict:
        return {"steps": f"{self.start_step}-{self.step}", "device": self.device,
                "minutes": round(self.elapsed_s / 60, 1), "lr": self.lr,
                "lr_range": [float(f"{v:.6g}") for v in self._lr_range],
                "schedule": f"cumulative_lr(half_life={self.half_life}, warmup={self.warmup})"
                            + (f", ema {self.average.decay}" if self.average is not None else ""),
                "seed": self.seed, **self._data_fields(),
                "final": self.history[-1] if self.history else None,
                **({"dev": {"score": round(self.best[0], 5), "step": self.best[2], "metric": self.dev_metric}}
                   if self.best else {}),
                **fields}

    def _data_fields(self) -> dict:
        if self.data_hash is None:
            return {}
        return {"data": self.data.name if self.data is not None else None, "data_sha256": self.data_hash,
                "images": len(self.files) if self.files is not None else None}

    # ------------------------------------------------------------------ shipping

    def _score(self, model) -> float:
        """``dev_score`` of ``model`` in eval mode, without gradients (its mode restored)."""
        import torch

        was = model.training
        try:
            with torch.no_grad():
                return float(self.dev_score(model.eval()))
        finally:
            model.train(was)

    def _scored(self, state: Mapping[str, Any]) -> float:
        """The dev score of ``state`` as it ships (fp16)."""
        from .weights import as_shipped

        model = copy.deepcopy(self.shipping).to(self.device)
        model.load_state_dict(_float_state(as_shipped(state)))
        return self._score(model)

    def ship(self, state: Mapping[str, Any], entry: Mapping[str, Any]) -> dict | None:
        """Save ``state`` (fp16) as a new file beside the old ones, with the cumulative
        provenance in its entry (steps, minutes, devices, stages, data, the file it
        continues, ``entry``'s fields); returns that entry. With a dev score: only when
        ``state`` beats the newest shipped weights of the same shape, marked superseded
        then; None (nothing written) otherwise."""
        from .weights import load_weights, read_manifest, save_weights, update_entries

        manifest = self.out_dir / "weights.json"
        rival = continuation(self.out_dir, self.arch, self.match) if self.dev_score is not None else None
        dev = None
        if self.dev_score is not None:
            score = self._scored(state)
            dev = {"metric": self.dev_metric, "score": round(score, 5)}
            if rival is not None:
                rival_score = self._scored(load_weights(rival[0], rival[1]["sha256"], map_location=self.device))
                dev.update(rival=rival[0].name, rival_score=round(rival_score, 5))
                if score <= rival_score:
                    self.log(f"not shipped: {self.dev_metric} {score:.4f} on dev, the shipped {rival[0].name} "
                             f"has {rival_score:.4f}")
                    return None
        taken = set(read_manifest(manifest)) if manifest.exists() else set()
        n = 1
        while (name := f"{self.stem}.pt" if n == 1 else f"{self.stem}-v{n}.pt") in taken:
            n += 1
        entry = {"arch": self.arch, "seed": self.seed, **self._data_fields(),
                 "final": next((st["final"] for st in reversed(self.stages) if st.get("final")), None),
                 **entry, "steps": self.step, "devices": self.devices, "stages": self.stages,
                 "minutes": self.minutes_total or round(self.minutes_done + self.elapsed_s / 60, 1),
                 **({"continues": self.parent} if self.parent else {}),
                 **({"init_from": self.init_from} if self.init_from else {}),
                 **({"dev": dev} if dev else {}), **({"supersedes": rival[0].name} if rival else {})}
        written = save_weights(self.out_dir, name, state, entry)
        if rival is not None:
            update_entries(self.out_dir, {rival[0].name: {"decode_only": True, "superseded_by": name}})
            self.log(f"{name} supersedes {rival[0].name} ({self.dev_metric} {dev['score']} > {dev['rival_score']})")
        return written
