"""The learned classifier's machinery on synthetic domains (tiny, seconds): held-out
selection and calibration, fp16 export with sha256 and provenance, loading, and the
policy's fallback without weights."""

import json
import os
import shutil

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


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    from pixarc_cnn_classifier.train import train

    root = tmp_path_factory.mktemp("cnn")
    data = root / "whole"
    for d in DOMAINS:
        (data / d).mkdir(parents=True)
        for i in range(6):
            synthetic(d, i).save(data / d / f"{i}.png")
    lines = []
    entry = train(str(data), str(root / "w"), augment_rounds=1, epochs=60, members=2, folds=3,
                  candidates=((0, 1e-2), (8, 1e-2)), log=lines.append)
    return entry, root, lines


@pytest.fixture
def trained(trained_once, tmp_path, monkeypatch):
    """A private copy of the trained weights, installed through the environment."""
    entry, root, lines = trained_once
    shutil.copytree(root / "w", tmp_path / "w")
    shutil.copytree(root / "whole", tmp_path / "whole")
    monkeypatch.setenv("PIXARC_CLASSIFIER_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",cnn_classifier")
    return entry, tmp_path / "w", lines


def test_training_learns_and_the_classifier_loads(trained):
    import torch

    from pixarc_cnn_classifier import CNNClassifier

    entry, out, lines = trained
    # no MANIFEST.tsv: every file is its own group, so held-out images are unseen files
    assert entry["heldout"]["accuracy"] >= 0.8 and entry["train_accuracy"] >= 0.9
    assert entry["images"] == {d: 6 for d in DOMAINS} and entry["augment_rounds"] == 1
    assert entry["samples"] == 60 and len(entry["data_sha256"]) == 64 and entry["devices"] == ["cpu"]
    assert any(line.lstrip().startswith("confidence") for line in lines)  # the reliability table
    state = torch.load(out / next(iter(json.loads((out / "weights.json").read_text())["files"])), weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert float(state["temperature"]) == pytest.approx(entry["temperature"], rel=1e-2)
    clf = CNNClassifier()
    assert clf.unavailable_reason() is None and clf.version() == entry["sha256"][:12]
    hits = 0
    for d in DOMAINS:
        c = clf.classify(synthetic(d, 100))
        assert abs(sum(c.scores.values()) - 1) < 1e-5 and 0 <= c.confidence <= 1
        assert c.confidence == max(c.scores.values()) and c.domain == max(c.scores, key=c.scores.get)
        hits += c.domain == d
    assert hits >= 3  # of 5; chance is 1 (the exact count moves with the torch thread count)


def test_retraining_supersedes_the_classifier_in_use(trained, tmp_path):
    """One classifier in use per folder: a new one (here of another shape, so trained from
    scratch) marks the previous one decode_only; its file stays (the classifications it
    made remain reproducible) and the plugin loads the new one."""
    from pixarc_cnn_classifier import CNNClassifier
    from pixarc_cnn_classifier.train import train

    entry, out, _ = trained
    before = json.loads((out / "weights.json").read_text())["files"]
    (old,) = before
    again = train(str(tmp_path / "whole"), str(out), augment_rounds=0, epochs=10, members=1, folds=2,
                  candidates=((0, 1e-2),), log=lambda _: None)
    files = json.loads((out / "weights.json").read_text())["files"]
    new = f"domainnet-f{again['n_features']}-h0.pt"
    assert set(files) == {old, new} and files[new]["sha256"] == again["sha256"] and "continues" not in files[new]
    assert files[old] == {**before[old], "decode_only": True, "superseded_by": new}
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "weights.json"])  # no checkpoint left behind
    assert CNNClassifier().version() == again["sha256"][:12]


def test_temperature_fixes_overconfident_logits():
    """Logits 4x too sharp for labels that are right 70 % of the time: T must come out > 1
    and bring the mean confidence near the accuracy."""
    import torch

    from pixarc_cnn_classifier.train import fit_temperature

    g = torch.Generator().manual_seed(0)
    n = 1000
    y = torch.randint(0, 5, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.7, y, (y + 1) % 5)
    logits = torch.full((n, 5), 0.0)
    logits[torch.arange(n), pred] = 8.0
    t = fit_temperature(logits, y)
    conf = torch.softmax(logits / t, 1).max(1).values.mean().item()
    assert t > 2 and abs(conf - 0.7) < 0.03


def test_statistics_do_not_depend_on_the_image_size():
    """A flat-colour drawing and its 3x NEAREST enlargement give close statistics: inputs
    are box-downscaled to a common size first."""
    from pixarc_cnn_classifier.features import N_FEATURES, features

    im = synthetic("vector", 3).resize((300, 225), Image.NEAREST)
    big = im.resize((900, 675), Image.NEAREST)
    a, b = features(im), features(big)
    assert a.shape == (N_FEATURES,) and np.isfinite(a).all()
    assert np.abs(a - b).mean() < 0.02
    assert np.abs(a - features(synthetic("natural", 3).resize((300, 225)))).mean() > 0.05


def test_policy_falls_back_to_stats_without_weights(monkeypatch, tmp_path):
    from pixarc import runs
    from pixarc.manifest import latest, read_manifest
    from pixarc.plugins import build_plugin_manager

    import pixarc_cnn_classifier

    monkeypatch.setenv("PIXARC_CLASSIFIER_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setattr(pixarc_cnn_classifier, "WEIGHTS_DIR", tmp_path / "none")  # as if none shipped
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",cnn_classifier")
    reg = build_plugin_manager()
    src = tmp_path / "src"
    src.mkdir()
    synthetic("vector", 1).save(src / "a.png")
    policy = tmp_path / "p.toml"
    policy.write_text('classifier = "cnn"\nfallback_classifier = "stats"\n[routes.unknown]\ncodecs = ["png"]\n')
    runs.archive_local(str(src), str(tmp_path / "d"), policy=str(policy), registry=reg)
    row = latest(read_manifest(str(tmp_path / "d"))).to_pylist()[0]
    assert row["classifier_id"] == "stats" and "classifier cnn unavailable (no weights installed)" in row["notes"]


def test_held_out_folds_keep_source_groups_together(tmp_path):
    """With a MANIFEST.tsv (as in ../shared/data/train), files from one source directory
    share a group, hence a fold: a redraw of a held-out portrait is never trained on."""
    from pixarc_cnn_classifier.train import collect, group_fold

    rows = ["set\tdomain\tfile\tsource_package\tsource_path"]
    for d in ("comic", "line"):
        (tmp_path / "train" / "whole" / d).mkdir(parents=True)
        for i in range(4):
            synthetic(d, i).save(tmp_path / "train" / "whole" / d / f"{i}.png")
            family = "elves" if i < 2 else "orcs"
            rows.append(f"whole\t{d}\ttrain/whole/{d}/{i}.png\tdebian:x\t/usr/share/{family}/{d}{i}.png")
    (tmp_path / "train" / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    samples = collect(str(tmp_path / "train" / "whole"))
    groups = [s.group for s in samples]
    assert groups == ["comic:debian:x:/usr/share/elves"] * 2 + ["comic:debian:x:/usr/share/orcs"] * 2 \
        + ["line:debian:x:/usr/share/elves"] * 2 + ["line:debian:x:/usr/share/orcs"] * 2
    assert all(group_fold(groups[i], 5) == group_fold(groups[i + 1], 5) for i in (0, 2, 4, 6))
    # without a manifest each file is its own group
    (tmp_path / "train" / "MANIFEST.tsv").unlink()
    assert len({s.group for s in collect(str(tmp_path / "train" / "whole"))}) == 8


def test_shipped_weights_are_listed_small_and_load(monkeypatch):
    """The committed weights: in weights.json with sha256 and provenance, fp16, under 1 MB,
    loadable through pixarc.weights, and classifying with calibrated-looking scores."""
    import torch

    import pixarc_cnn_classifier as plugin
    from pixarc.weights import file_sha256, read_manifest

    monkeypatch.delenv("PIXARC_CLASSIFIER_WEIGHTS", raising=False)
    files = read_manifest(plugin.WEIGHTS_DIR / "weights.json")
    (name, entry), = files.items()
    data = (plugin.WEIGHTS_DIR / name).read_bytes()
    assert len(data) < 1_000_000 and file_sha256(data) == entry["sha256"]
    for key in ("epochs", "minutes", "devices", "data_sha256", "temperature", "heldout"):
        assert key in entry, key
    state = torch.load(plugin.WEIGHTS_DIR / name, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    clf = plugin.CNNClassifier()
    assert clf.unavailable_reason() is None and clf.version() == entry["sha256"][:12]
    c = clf.classify(synthetic("line", 7).resize((384, 288), Image.NEAREST))
    assert abs(sum(c.scores.values()) - 1) < 1e-5 and c.domain in DOMAINS
