"""The learned classifier's machinery on synthetic domains (no train/whole here yet):
training, fp16 export with sha256, loading, and the policy's fallback without weights."""

import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixarc.classify import DOMAINS


def synthetic(domain: str, seed: int) -> Image.Image:
    """Five trivially different 'domains', enough to see the training loop learn."""
    r = np.random.default_rng(seed)
    if domain == "natural":
        return Image.fromarray(r.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    im = Image.new("RGB", (96, 72), "white" if domain in ("line", "comic") else (200, 200, 200))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = int(r.integers(0, 80)), int(r.integers(0, 60))
        if domain == "line":
            d.line((x, y, x + 15, y + 10), fill="black", width=1)
        elif domain == "vector":
            d.ellipse((x, y, x + 20, y + 15), fill=tuple(int(v) for v in r.integers(0, 256, 3)))
        elif domain == "screenshot":
            d.rectangle((x, y, x + 18, y + 6), outline=(60, 60, 60), fill=(235, 235, 235))
        else:
            d.ellipse((x, y, x + 25, y + 25), fill=tuple(int(v) for v in r.integers(100, 256, 3)),
                      outline="black", width=2)
    return im


@pytest.fixture
def trained(tmp_path, monkeypatch):
    from pixarc_cnn_classifier.train import train

    data = tmp_path / "whole"
    for d in DOMAINS:
        (data / d).mkdir(parents=True)
        for i in range(6):
            synthetic(d, i).save(data / d / f"{i}.png")
    entry = train(str(data), str(tmp_path / "w"), epochs=12, width=8, lr=1e-2, batch=10)
    monkeypatch.setenv("PIXARC_CLASSIFIER_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",cnn_classifier")
    return entry


def test_training_learns_and_the_classifier_loads(trained):
    from pixarc_cnn_classifier import CNNClassifier

    assert trained["train_accuracy"] >= 0.8 and trained["images"] == {d: 6 for d in DOMAINS}
    clf = CNNClassifier()
    assert clf.unavailable_reason() is None and clf.version() == trained["sha256"][:12]
    hits = 0
    for d in DOMAINS:
        c = clf.classify(synthetic(d, 100))
        assert abs(sum(c.scores.values()) - 1) < 1e-5 and 0 <= c.confidence <= 1
        hits += c.domain == d
    assert hits >= 4


def test_policy_falls_back_to_stats_without_weights(monkeypatch, tmp_path):
    from pixarc import engine
    from pixarc.manifest import latest, read_manifest
    from pixarc.plugins import build_plugin_manager

    monkeypatch.setenv("PIXARC_CLASSIFIER_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",cnn_classifier")
    reg = build_plugin_manager()
    monkeypatch.setattr(engine, "default_registry", lambda: reg)
    src = tmp_path / "src"
    src.mkdir()
    synthetic("vector", 1).save(src / "a.png")
    policy = tmp_path / "p.toml"
    policy.write_text('classifier = "cnn"\nfallback_classifier = "stats"\n[routes.unknown]\ncodecs = ["png"]\n')
    engine.archive_local(str(src), str(tmp_path / "d"), policy=str(policy))
    row = latest(read_manifest(str(tmp_path / "d"))).to_pylist()[0]
    assert row["classifier_id"] == "stats" and "classifier cnn unavailable (no weights installed)" in row["notes"]
