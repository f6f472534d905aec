"""`pixarc train lossy`: step and time budgets, resumable checkpoints, rate-point fine-tuning,
and the provenance a shipped file carries."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("torch")

from pixarc.cli import main  # noqa: E402

NAME = "mbt2018-mean-q{q}-N8-M12{v}.pt"


@pytest.fixture(autouse=True)
def _adaptive_plugin(monkeypatch):
    """`pixarc train lossy` comes from the adaptive plugin, which conftest's allowlist leaves out."""
    import os

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",adaptive")


def _train(data, out, q, *extra):
    res = CliRunner().invoke(main, ["train", "lossy", "--data", str(data), "--quality", str(q), "--batch", "2",
                                    "--patch", "64", "--N", "8", "--M", "12", "--out", str(out), *extra],
                             catch_exceptions=False)
    return res


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    r = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(r.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def entry(out, q, v=""):
    return json.loads((out / "weights.json").read_text())["files"][NAME.format(q=q, v=v)]


def test_resume_continues_the_step_count_and_minutes(data, tmp_path):
    out = tmp_path / "w"
    assert _train(data, out, 3, "--steps", "2").exit_code == 0
    first = entry(out, 3)
    assert first["steps"] == 2 and (out / "mbt2018-mean-q3-N8-M12.ckpt").exists()
    assert len(first["data_sha256"]) == 64 and first["devices"] == ["cpu"]
    res = _train(data, out, 3, "--steps", "4", "--resume")
    assert res.exit_code == 0, res.output
    second = entry(out, 3, "-v2")  # a new file: bitstreams name the first one by its sha256
    assert entry(out, 3) == first and second["steps"] == 4 and second["final"]["step"] == 4
    assert second["minutes"] >= first["minutes"] and second["sha256"] != first["sha256"]


def test_resume_without_a_checkpoint_refuses(data, tmp_path):
    res = CliRunner().invoke(main, ["train", "lossy", "--data", str(data), "--quality", "3", "--N", "8", "--M", "12",
                                    "--steps", "1", "--resume", "--out", str(tmp_path / "none")])
    assert res.exit_code != 0 and "no checkpoint" in res.output


def test_time_budget_stops_before_the_step_budget(data, tmp_path):
    out = tmp_path / "w"
    assert _train(data, out, 3, "--steps", "100000", "--minutes", "0.002").exit_code == 0
    assert entry(out, 3)["steps"] < 100


def test_init_from_another_rate_point_records_its_origin(data, tmp_path):
    out = tmp_path / "w"
    assert _train(data, out, 3, "--steps", "1").exit_code == 0
    res = _train(data, out, 5, "--steps", "1", "--init-from", str(out / NAME.format(q=3, v="")))
    assert res.exit_code == 0, res.output
    e = entry(out, 5)
    assert e["init_from"] == NAME.format(q=3, v="") and e["lambda"] == 0.025
