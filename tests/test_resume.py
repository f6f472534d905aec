"""A killed run's verified bitstreams are reused by the rerun, whatever the policy: a
rate-searched lossy candidate (its quality chosen per image), and a new version written
beside an older one (``<key>.<sha12>.pxa``)."""

import json

import numpy as np
import pytest
from PIL import Image

from pixarc import archive, runs
from pixarc.manifest import latest, read_manifest


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    for i in range(4):
        a = np.stack([128 + 80 * np.sin(xx / (7 + i) + c) * np.cos(yy / (5 + i)) for c in range(3)], -1)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(src / f"p{i}.png")
    return src


def killed_after(monkeypatch, n):
    """archive_one that raises (a kill) once ``n`` objects have been archived and written."""
    real, calls = archive.archive_one, {"n": 0}

    def wrapper(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return out

    monkeypatch.setattr(archive, "archive_one", wrapper)
    return real


def lossy_policy(tmp_path):
    p = tmp_path / "lossy.toml"
    p.write_text('selection = "rd"\nmin_confidence = 1.1\n[routes.unknown]\nlossless = false\n'
                 'codecs = ["webp", "jpeg"]\ntarget_psnr = 34.0\n')
    return str(p)


def test_rerun_reuses_rate_searched_bitstreams(photos, tmp_path, monkeypatch):
    dest, policy = tmp_path / "dest", lossy_policy(tmp_path)
    real = killed_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        runs.archive_local(str(photos), str(dest), policy=policy)
    assert read_manifest(str(dest)).num_rows == 0 and len(list(dest.glob("*.pxa"))) == 3
    monkeypatch.setattr(archive, "archive_one", real)
    s = runs.archive_local(str(photos), str(dest), policy=policy)
    assert s.totals.done == 4 and s.totals.reused == 3
    rows = latest(read_manifest(str(dest))).to_pylist()
    reused = [r for r in rows if "reused" in r["notes"]]
    assert len(reused) == 3 and all(r["verified"] and r["psnr"] >= 34.0 for r in reused)
    assert all(json.loads(r["attempts"])[0]["result"] == "reused" for r in reused)
    assert len(list(dest.glob("*.pxa"))) == 4  # nothing encoded twice


def test_rerun_reuses_a_new_version_written_beside_the_old_one(photos, tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    runs.archive_local(str(photos), str(dest))
    changed = photos / "p1.png"
    Image.open(changed).rotate(90).save(changed)  # p1.png.pxa is taken: the new one gets p1.png.<sha12>.pxa
    real = killed_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        runs.archive_local(str(photos), str(dest))
    (written,) = [p for p in dest.glob("p1.png.*.pxa")]
    monkeypatch.setattr(archive, "archive_one", real)
    s = runs.archive_local(str(photos), str(dest))
    assert s.totals.done == 1 and s.totals.reused == 1
    row = [r for r in latest(read_manifest(str(dest))).to_pylist() if r["key"] == "p1.png"][0]
    assert row["bitstream_uri"] == written.name and "reused" in row["notes"]
    assert sorted(p.name for p in dest.glob("p1*.pxa")) == sorted(["p1.png.pxa", written.name])


def test_a_bitstream_of_another_route_is_not_reused(photos, tmp_path, monkeypatch):
    """Same source, but the rerun's policy routes it to other codecs: encoded afresh."""
    dest = tmp_path / "dest"
    real = killed_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        runs.archive_local(str(photos), str(dest), policy=lossy_policy(tmp_path))
    monkeypatch.setattr(archive, "archive_one", real)
    s = runs.archive_local(str(photos), str(dest), policy="png")
    assert s.totals.done == 4 and s.totals.reused == 0
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert {r["codec_id"] for r in rows} == {"png"}
