"""The core wheel carries no model weights; the pixarc-weights distribution, built from this
repository, carries every file the plugins' weights.json files name, and the plugins find
them there when their own folder has none (a regular install)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Both wheels, built from a copy of the tree (a build writes build/ folders)."""
    tree = tmp_path_factory.mktemp("tree")
    keep = ["pyproject.toml", "README.md", "pipeline", "flows", "plugins", "packaging"]
    for name in keep:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        else:
            shutil.copy(src, tree / name)
    out = tmp_path_factory.mktemp("wheels")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(out), str(tree), str(tree / "packaging" / "pixarc-weights")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {w.name.split("-")[0]: w for w in out.glob("*.whl")}


def shipped_files() -> dict[str, set[str]]:
    """plugin module -> the weight files its weights.json names (and weights.json)."""
    out = {}
    for manifest in sorted(ROOT.glob("plugins/pixarc_*/weights/weights.json")):
        files = set(json.loads(manifest.read_text())["files"])
        out[manifest.parent.parent.name] = files | {"weights.json"}
    return out


def test_the_core_wheel_has_no_weights(wheels):
    names = zipfile.ZipFile(wheels["pixarc"]).namelist()
    assert {"pixarc/cli/__init__.py", "pixarc/cli/render.py", "pixarc/policies/lowrate.toml"} <= set(names)
    assert [n for n in names if n.endswith(".pt") or "/weights/" in n] == []
    meta = zipfile.ZipFile(wheels["pixarc"]).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: pixarc-weights==0.1.0; extra == \"learned\"" in meta


def test_the_weights_distribution_has_every_shipped_file(wheels):
    expected = shipped_files()
    assert {"pixarc_adaptive", "pixarc_svr", "pixarc_enhance", "pixarc_callic", "pixarc_cnn_classifier"} <= set(expected)
    names = set(zipfile.ZipFile(wheels["pixarc_weights"]).namelist())
    for plugin, files in expected.items():
        assert len(files) >= 2, (plugin, files)  # weights.json and at least one file it names
        for f in files:
            assert f"pixarc_weights/{plugin}/{f}" in names, (plugin, f)


def test_a_plugin_without_its_own_folder_finds_the_distributions(tmp_path):
    pixarc_weights = pytest.importorskip("pixarc_weights", reason="pixarc-weights is not installed (make setup)")
    from pixarc.weights import shipped_weights_dir

    module = tmp_path / "pixarc_svr" / "__init__.py"  # a plugin installed from the core wheel
    module.parent.mkdir()
    module.write_text("")
    assert shipped_weights_dir(module) == Path(pixarc_weights.__file__).resolve().parent / "pixarc_svr"
    assert shipped_weights_dir(ROOT / "plugins" / "pixarc_svr" / "__init__.py") == \
        ROOT / "plugins" / "pixarc_svr" / "weights"  # a checkout reads its own (training writes there)
