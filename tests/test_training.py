"""Training that accumulates (issue 26), for the shared toolkit and for every trainer.

Two runs of 3 steps make one model of 6: the second continues the first's shipped fp16
weights at its cumulative step (the learning rate follows the cumulative count, no
sawtooth), writes a new ``-v2`` file beside the first (which stays, byte for byte: archived
bitstreams name it by sha256), and its entry lists both runs' stages. With ``--dev`` a run
ships only if it beats what ships (keep-if-better). Tiny models, seconds each; nothing
here trains for real.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from pixarc.training import TrainingRun, cumulative_lr, stages_of  # noqa: E402

DOMAINS3 = ("natural", "line", "vector")


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "weights.json").read_text())["files"]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------ the toolkit, on a toy model


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))


TARGET = torch.tensor([1.0, -2.0, 3.0, 0.5])


def toy_run(out, steps, *, lr=0.5, away=False, dev=False, log=None, **kw) -> tuple[TrainingRun, dict | None]:
    """A run of the toy (Adam towards TARGET; ``away``: from it) up to cumulative step ``steps``; ships."""
    model = Toy()
    run = TrainingRun(model, torch.optim.Adam(model.parameters(), lr=lr, maximize=away), out=out, stem="toy", arch="toy",
                      match={"width": 4}, device="cpu", lr=lr, minutes=5, steps=steps, half_life=2, warmup=2,
                      ema_decay=None, dev_score=(lambda m: -float(((m.w - TARGET) ** 2).sum())) if dev else None,
                      log=log if log is not None else (lambda _: None), **kw)

    def step():
        loss = ((model.w - TARGET) ** 2).sum()
        run.opt.zero_grad()
        loss.backward()
        run.opt.step()
        return {"loss": float(loss.detach())}

    run.loop(step, log_every=1)
    run.finish_stage()
    return run, run.ship(run.final_model().state_dict(), {"width": 4})


def test_two_runs_make_one_model(tmp_path):
    _, first = toy_run(tmp_path, 3)
    first_file = sha(tmp_path / "toy.pt")
    run, second = toy_run(tmp_path, 6)
    files = manifest(tmp_path)
    assert set(files) == {"toy.pt", "toy-v2.pt"} and files["toy-v2.pt"] == second
    assert files["toy.pt"] == first and sha(tmp_path / "toy.pt") == first_file == first["sha256"]  # kept as it was
    assert second["steps"] == 6 and second["continues"] == "toy.pt"
    assert [st["steps"] for st in second["stages"]] == ["0-3", "3-6"] and second["stages"][0] == first["stages"][0]
    # the schedule continues at cumulative step 4 (a fresh optimizer warms up from there), no restart at 1
    lrs = [cumulative_lr(s, 0.5, since=3, half_life=2, warmup=2) for s in (4, 6)]
    assert second["stages"][1]["lr_range"] == pytest.approx(lrs, rel=1e-5)
    assert lrs[0] != pytest.approx(cumulative_lr(1, 0.5, since=0, half_life=2, warmup=2), rel=1e-3)
    # and the weights continue: six steps towards the target, not three
    three, _ = toy_run(tmp_path / "fresh", 3)
    assert float(((run.model.w.detach() - TARGET) ** 2).sum()) < float(((three.model.w.detach() - TARGET) ** 2).sum())
    assert second["minutes"] >= first["minutes"] and second["devices"] == ["cpu"]


def test_fresh_starts_over_and_resume_continues_the_checkpoint_exactly(tmp_path):
    toy_run(tmp_path, 3)
    _, fresh = toy_run(tmp_path, 2, fresh=True)
    assert fresh["steps"] == 2 and "continues" not in fresh and len(fresh["stages"]) == 1
    # --resume: the checkpoint of the last run (the fresh one), optimizer state and all
    run, resumed = toy_run(tmp_path, 4, resume=True)
    assert resumed["steps"] == 4 and [st["steps"] for st in resumed["stages"]] == ["0-2", "2-4"]
    assert run.opt.state_dict()["state"][0]["step"] == 4  # Adam's own count went on from the checkpoint's
    with pytest.raises(SystemExit, match="no checkpoint"):
        toy_run(tmp_path / "empty", 1, resume=True)


def test_a_run_stopped_before_its_end_keeps_its_steps_on_the_record(tmp_path):
    """Killed between checkpoints, then continued with --resume: the stopped part is a stage
    of its own (its steps, minutes, device, marked ``interrupted``), not lost from the record."""
    toy_run(tmp_path, 2)
    model = Toy()
    run = TrainingRun(model, torch.optim.Adam(model.parameters(), lr=0.5), out=tmp_path, stem="toy", arch="toy",
                      match={"width": 4}, device="cpu", lr=0.5, minutes=5, steps=8, half_life=2, warmup=2,
                      ema_decay=None, checkpoint_minutes=0, log=lambda _: None)

    def step():
        if run.step == 5:  # the process dies during step 5: the last checkpoint holds step 4
            raise KeyboardInterrupt
        loss = ((model.w - TARGET) ** 2).sum()
        run.opt.zero_grad()
        loss.backward()
        run.opt.step()

    with pytest.raises(KeyboardInterrupt):
        run.loop(step, log_every=1)
    _, resumed = toy_run(tmp_path, 6, resume=True)
    assert [st["steps"] for st in resumed["stages"]] == ["0-2", "2-4", "4-6"] and resumed["steps"] == 6
    assert resumed["stages"][1]["interrupted"] is True and resumed["stages"][1]["device"] == "cpu"
    assert "interrupted" not in resumed["stages"][2] and "interrupted" not in resumed["stages"][0]


def test_a_stopped_process_does_not_count_its_pause_as_training(tmp_path, monkeypatch):
    """A step during which the process was stopped for longer than ``PAUSE_S`` (kill -STOP
    while a benchmark runs) adds nothing to the run's minutes or budget; normal steps do."""
    import pixarc.training as training

    now = [1000.0]
    monkeypatch.setattr(training.time, "time", lambda: now[0])
    model = Toy()
    run = TrainingRun(model, torch.optim.Adam(model.parameters(), lr=0.5), out=tmp_path, stem="toy", arch="toy",
                      match={"width": 4}, device="cpu", lr=0.5, minutes=1, steps=6, half_life=2, warmup=2,
                      ema_decay=None, log=lambda _: None)

    def step():
        now[0] += 3 * training.PAUSE_S if run.step == 3 else 5.0  # step 3: stopped for 3 minutes
        loss = ((model.w - TARGET) ** 2).sum()
        run.opt.zero_grad()
        loss.backward()
        run.opt.step()

    run.loop(step, log_every=1)
    assert run.step == 6  # a 60 s budget: the pause did not spend it
    assert run.elapsed_s == pytest.approx(5 * 5.0)
    run.finish_stage()
    assert run.minutes_total == round(25 / 60, 1)


def test_a_run_that_does_not_beat_the_shipped_weights_on_dev_does_not_ship(tmp_path):
    _, first = toy_run(tmp_path, 3, dev=True)
    assert first["dev"]["score"] < 0 and "rival" not in first
    before = (tmp_path / "weights.json").read_text()
    lines = []
    # away from the target: worse on dev at every step; without the in-run pick of the best
    # weights it is the last, worse, weights that meet the shipped ones
    run, second = toy_run(tmp_path, 6, away=True, dev=True, track_best=False, log=lines.append)
    assert second is None and (tmp_path / "weights.json").read_text() == before
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["toy.pt"]
    assert any(line.startswith("not shipped") for line in lines)
    # with the in-run pick, the best weights of a worse run are the start: not better either
    _, again = toy_run(tmp_path, 9, away=True, dev=True)
    assert again is None and (tmp_path / "weights.json").read_text() == before


def test_a_better_run_on_dev_ships_and_supersedes(tmp_path):
    _, first = toy_run(tmp_path, 3, dev=True)
    # no checkpoint (and no dev score) inside these short runs: the score after the last
    # step picks the weights, and the stage's record names that step, not the start's
    assert first["stages"][-1]["dev"]["step"] == 3 and first["stages"][-1]["dev"]["score"] > -14.25
    _, second = toy_run(tmp_path, 6, dev=True)
    files = manifest(tmp_path)
    assert second["dev"]["score"] > second["dev"]["rival_score"] and second["dev"]["rival"] == "toy.pt"
    assert second["supersedes"] == "toy.pt"
    assert files["toy.pt"] == {**first, "decode_only": True, "superseded_by": "toy-v2.pt"}
    # the next run continues the better weights, and compares with them
    _, third = toy_run(tmp_path, 9, dev=True)
    assert third["continues"] == "toy-v2.pt" and third["steps"] == 9


def test_an_entry_written_before_stages_counts_as_one(tmp_path):
    from pixarc.weights import save_weights

    save_weights(tmp_path, "toy.pt", {"w": torch.zeros(4)},
                 {"arch": "toy", "width": 4, "steps": 40, "minutes": 2.0, "devices": ["cuda"], "runs": [1, 2],
                  "data_sha256": "ab" * 32})
    _, entry = toy_run(tmp_path, 43)
    assert [st["steps"] for st in entry["stages"]] == ["0-40", "40-43"]
    assert entry["stages"][0]["device"] == "cuda" and entry["stages"][0]["runs"] == [1, 2]
    assert entry["devices"] == ["cuda", "cpu"] and entry["minutes"] >= 2.0
    assert stages_of({"steps": 0}) == []


# ------------------------------------------------------------------ every trainer


def _image(domain: str, i: int) -> Image.Image:
    r = np.random.default_rng(10 * DOMAINS3.index(domain) + i)
    yy, xx = np.mgrid[0:64, 0:64]
    if domain == "natural":
        a = np.stack([128 + 60 * np.sin(xx / (3 + i) + c) + 30 * np.cos(yy / 5) for c in range(3)], -1)
        a = a + r.normal(0, 12, a.shape)
    elif domain == "line":
        a = np.full((64, 64, 3), 255.0)
        a[(xx + 2 * yy + 7 * i) % 11 == 0] = 0
    else:
        a = np.stack([np.where((xx // (8 + i) + yy // 8) % 2, 40.0 * c, 220.0) for c in range(3)], -1)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three domains of four 64-px images: training data, and (the first two of each) dev."""
    root = tmp_path_factory.mktemp("train-data")
    for d in DOMAINS3:
        (root / d).mkdir()
        for i in range(4):
            _image(d, i).save(root / d / f"{i}.png")
    return root


QUIET = {"log_every": 1}


def _enhance(data, out, steps, lr=1e-3, dev=None):
    from pixarc_enhance.train import train

    return train(str(data), str(out), steps=steps, batch=2, patch=32, channels=4, layers=3, variants=1, refit=0,
                 lr=lr, half_life=2, warmup=2, dev=dev and str(dev), dev_per_domain=1, **QUIET)


def _callic(data, out, steps, lr=2e-3, dev=None):
    from pixarc_callic.train import train

    return train(str(data), str(out), steps=steps, batch=2, patch=32, dim=8, depth=1, kernel=5, mixtures=2,
                 lr=lr, half_life=2, warmup=2, dev=dev and str(dev), dev_side=32, **QUIET)


def _svr(data, out, steps, lr=5e-4, dev=None):
    from pixarc_svr.train import train

    return train(str(data), str(out), steps=steps, stage1_steps=3, batch=2, patch=48, width=8, lr=lr, half_life=2,
                 warmup=2, table_images=2, dev=dev and str(dev), **QUIET)


def _lossy(data, out, steps, lr=1e-4, dev=None):
    from pixarc_adaptive.train import train

    return train(str(data), 3, str(out), steps=steps, batch=2, patch=64, N=8, M=12, lr=lr, half_life=2, warmup=2,
                 dev=dev and str(dev), **QUIET)


def _classifier(data, out, steps, lr=None, dev=None):
    """Each call fits 3 epochs (``steps``: what that makes); ``lr``: a run that wrecks the model
    (on a training set that is the dev set too, a larger rate only fits it harder)."""
    import pixarc_cnn_classifier.train as t

    if lr is not None:  # restored by the test's monkeypatch
        fit_epoch = t.epoch

        def wrecking(model, opt, x, y):
            loss = fit_epoch(model, opt, x, y)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 10)
            return loss

        t.epoch = wrecking
    return t.train(str(data), str(out), augment_rounds=0, epochs=3, members=1, folds=2, candidates=((0, 1e-2),),
                   dev=dev and str(dev), log=lambda _: None)


# kind: (trainer, the first file, the schedule it ran on: lr, half_life, warmup, a destructive lr)
TRAINERS = {
    "enhance": (_enhance, "enhance-avif-c4-l3", (1e-3, 2, 2), 10.0),
    "callic": (_callic, "callic-d8-l1-k5-m2", (2e-3, 2, 2), 1e3),
    "svr": (_svr, "svr-w8", (5e-4, 2, 2), 1e3),
    "lossy": (_lossy, "mbt2018-mean-q3-N8-M12", (1e-4, 2, 2), 1e3),
    "classifier": (_classifier, "domainnet-f119-h0", (1e-2, 1000, 0), 1e3),
}


@pytest.fixture
def plugins_on(monkeypatch):
    import pixarc_cnn_classifier.train as t

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",enhance")  # the enhance trainer's codec
    monkeypatch.setattr(t, "epoch", t.epoch)


@pytest.mark.parametrize("kind", TRAINERS)
def test_every_trainer_continues_its_shipped_weights(kind, data, tmp_path, plugins_on):
    train, stem, (lr, half_life, warmup), _ = TRAINERS[kind]
    out = tmp_path / "w"
    first = train(data, out, 3)
    first_sha = sha(out / f"{stem}.pt")
    second = train(data, out, 6)
    files = manifest(out)
    assert files[f"{stem}-v2.pt"] == second and second["continues"] == f"{stem}.pt"
    assert sha(out / f"{stem}.pt") == first_sha == first["sha256"]  # the old file is kept, unchanged
    old = {k: v for k, v in files[f"{stem}.pt"].items() if k not in ("decode_only", "superseded_by")}
    assert old == first
    assert second["steps"] == 6 and [st["steps"] for st in second["stages"]] == ["0-3", "3-6"]
    assert all(len(st["data_sha256"]) == 64 and st["device"] == "cpu" and st["minutes"] >= 0
               for st in second["stages"])
    assert second["minutes"] >= first["minutes"] and second["devices"] == ["cpu"]
    # the schedule goes on from the cumulative step; svr's run enters stage 2 (a new optimizer,
    # warming up from there) at its first step
    since = 4 if kind == "svr" else 3
    expected = [cumulative_lr(s, lr, since=since, half_life=half_life, warmup=warmup) for s in (4, 6)]
    restarted = [cumulative_lr(s, lr, since=0, half_life=half_life, warmup=warmup) for s in (1, 3)]
    assert second["stages"][1]["lr_range"] == pytest.approx(expected, rel=1e-5) != restarted
    if kind == "svr":
        assert (first["stage"], second["stage"], second["stage1_steps"], second["stage2_steps"]) == (1, 2, 3, 3)


@pytest.mark.parametrize("kind", TRAINERS)
def test_every_trainer_keeps_the_shipped_weights_when_dev_says_so(kind, data, tmp_path, plugins_on, capsys):
    train, stem, _, destructive = TRAINERS[kind]
    out = tmp_path / "w"
    first = train(data, out, 3, dev=data)
    assert np.isfinite(first["dev"]["score"])
    before = (out / "weights.json").read_text()
    assert train(data, out, 6, lr=destructive, dev=data) is None
    assert (out / "weights.json").read_text() == before
    # no file beyond what the first run listed (its weights, and svr's context tables beside them)
    assert f"{stem}.pt" in json.loads(before)["files"]
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(json.loads(before)["files"])


@pytest.mark.parametrize("channels", [32, 16])
def test_the_shipped_enhance_entries_continue(data, tmp_path, plugins_on, channels):
    """The entries the enhance trainer writes today (``stages``, ``continues``, ``chroma``,
    ``data_sha256``, as in the shipped weights.json and what a long run in progress will
    add) are continued by the shared toolkit: one more step on top of the newest."""
    from pixarc_enhance.train import train

    out = tmp_path / "w"
    shutil.copytree(Path(__file__).parents[1] / "plugins" / "pixarc_enhance" / "weights", out)
    before = manifest(out)
    # each shipped width (the 32-channel filter, the 16-channel one of the lossy policy) is
    # its own line of continuations
    name, newest = max(((n, e) for n, e in before.items() if not e.get("decode_only")
                        and (e["channels"], e["layers"]) == (channels, 6)), key=lambda f: f[1]["steps"])
    entry = train(str(data), str(out), steps=newest["steps"] + 1, batch=2, patch=32, variants=1, refit=0,
                  log_every=1, channels=channels, layers=6)
    assert entry["continues"] == name and entry["steps"] == newest["steps"] + 1
    assert entry["stages"][:-1] == newest["stages"] and entry["stages"][-1]["steps"] == \
        f"{newest['steps']}-{newest['steps'] + 1}"
    assert entry["minutes"] >= newest["minutes"] and {k: manifest(out)[k] for k in before} == before
