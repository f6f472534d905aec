"""Kill the archive process at many points; every rerun must converge to the same archive."""

import os
import random
import subprocess
import sys

import pytest

from conftest import tree_digest
from pixarc import runs
from pixarc.manifest import latest, read_manifest

SITES = ["read", "encode", "encoded", "rename", "written", "part", "commit"]
# Bitstream bytes differ between runs (the header records when it was made and by which run),
# so convergence is judged on what they hold: the source, the codec, its settings, the pixels.
KEY_COLUMNS = ["key", "status", "error", "source_sha256", "pixels_sha256", "codec_id", "params",
               "decoded_sha256", "lossless"]


def kill_points() -> list[tuple[str, int]]:
    """Every site at its first hit, plus a seeded random sample of later hits (5 images, 3 shards)."""
    rng = random.Random(20261122)
    upper = {"read": 5, "encode": 5, "encoded": 5, "rename": 5, "written": 5, "part": 3, "commit": 3}
    points = [(s, 1) for s in SITES]
    while len(points) < 22:
        s = rng.choice(SITES)
        p = (s, rng.randint(2, upper[s]))
        if p not in points:
            points.append(p)
    return points


def archive_cmd(src, dest):
    return [sys.executable, "-m", "pixarc.cli", "archive", str(src), str(dest), "--engine", "local",
            "--policy", "png", "--shard-size", "2", "--no-progress"]


def state(dest) -> list[tuple]:
    t = latest(read_manifest(str(dest)))
    return sorted(tuple(r[c] for c in KEY_COLUMNS) for r in t.select(KEY_COLUMNS).to_pylist())


@pytest.mark.parametrize("site, nth", kill_points())
def test_kill_and_rerun_converges(site, nth, small_collection, tmp_path):
    reference = tmp_path / "reference"
    runs.archive_local(str(small_collection), str(reference), policy="png", shard_size=2)
    originals = tree_digest(small_collection)

    dest = tmp_path / "dest"
    env = {**os.environ, "PIXARC_FAULT": f"{site}:{nth}"}
    killed = subprocess.run(archive_cmd(small_collection, dest), env=env, capture_output=True, text=True)
    assert killed.returncode == 137, f"fault {site}:{nth} was never reached:\n{killed.stdout}{killed.stderr}"

    env.pop("PIXARC_FAULT")
    rerun = subprocess.run(archive_cmd(small_collection, dest), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    got, want = state(dest), state(reference)
    assert got == want, f"{site}:{nth}\nrerun: {rerun.stdout[-1500:]}\ndiff: {set(got) ^ set(want)}"
    assert read_manifest(str(dest)).num_rows == 5, "no duplicate rows across the killed run and the rerun"
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert all(".tmp-" not in r["bitstream_uri"] for r in rows)
    check = runs.verify_local(str(dest), full=True)
    assert check.totals.done == 5 and not check.problems, check.problems
    assert tree_digest(small_collection) == originals
