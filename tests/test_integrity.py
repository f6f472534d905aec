"""Archive integrity (issue 11): relocatable, one writer, nothing overwritten, bounded input,
actionable failures, truthful exit status, cross-device checks. Each test names the
guarantee it proves (docs/guarantees.md lists them)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import tree_digest
from pixarc import layout
from pixarc import recompress, runs
from pixarc.selection import encode_route
from pixarc.state import current_rows
from pixarc.images import sha256_hex
from pixarc.manifest import latest, read_manifest


def rows_by_key(dest) -> dict[str, dict]:
    return {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}


def rewrite_manifest(dest: Path, edit) -> None:
    """Rewrite every committed part through ``edit(list_of_row_dicts)`` (and fix its marker),
    to build manifests as older versions or a hostile hand wrote them."""
    for marker_path in sorted((dest / "manifest/commits").glob("*.json")):
        marker = json.loads(marker_path.read_text())
        part = dest / "manifest/parts" / marker["part"]
        table = pq.read_table(part)
        rows = table.to_pylist()
        edit(rows)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), buf)
        part.write_bytes(buf.getvalue())
        marker["sha256"] = sha256_hex(buf.getvalue())
        marker_path.write_text(json.dumps(marker))


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- 1. relocatable


def test_manifest_names_bitstreams_relative_to_dest(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    rows = rows_by_key(dest)
    assert len(rows) == 5  # the loop below checks every image, not none
    for key, r in rows.items():
        assert r["bitstream_uri"] == key + ".pxa", r["bitstream_uri"]
        assert (dest / r["bitstream_uri"]).is_file()


def test_verify_full_of_a_damaged_copy_reports_the_copy(small_collection, tmp_path):
    dest, copy = tmp_path / "dest", tmp_path / "copy"
    runs.archive_local(str(small_collection), str(dest))
    shutil.copytree(dest, copy)
    key = sorted(rows_by_key(copy))[0]
    flip_a_bit(copy / (key + ".pxa"))
    (copy / (sorted(rows_by_key(copy))[1] + ".pxa")).unlink()
    full = runs.verify_local(str(copy), full=True)
    assert {p.problem for p in full.problems} == {"hash_mismatch", "missing"}
    assert not runs.verify_local(str(dest), full=True).problems  # the original is intact
    # a moved archive restores from its own files
    shutil.rmtree(copy)
    moved = tmp_path / "moved"
    shutil.move(str(dest), str(moved))
    res = runs.restore_local(str(moved), str(tmp_path / "out"))
    assert res.totals.done == 5 and not res.problems


def test_recompress_apply_on_a_copy_never_touches_the_original(small_collection, tmp_path):
    dest, copy = tmp_path / "dest", tmp_path / "copy"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    before = tree_digest(dest)
    shutil.copytree(dest, copy)
    done = runs.recompress_local(str(copy), policy="default", min_saving=0.05, apply=True)
    assert done.applied >= 1
    assert tree_digest(dest) == before
    assert not runs.verify_local(str(dest), full=True).problems
    check = runs.verify_local(str(copy), full=True)
    assert check.totals.done == 5 and not check.problems


def test_legacy_absolute_uris_are_rebased_under_dest(small_collection, tmp_path):
    """Manifests written before relative paths named ``file:///old/dest/<key>.pxa``."""
    dest, copy = tmp_path / "dest", tmp_path / "copy"
    runs.archive_local(str(small_collection), str(dest))

    def absolute(rows):
        for r in rows:
            r["bitstream_uri"] = f"file://{dest}/{r['bitstream_uri']}"

    rewrite_manifest(dest, absolute)
    shutil.copytree(dest, copy)
    key = sorted(rows_by_key(copy))[0]
    flip_a_bit(copy / (key + ".pxa"))
    assert {(p.key, p.problem) for p in runs.verify_local(str(copy), full=True).problems} == {
        (key, "hash_mismatch")}
    assert not runs.verify_local(str(dest), full=True).problems
    shutil.rmtree(dest)
    out = tmp_path / "out"
    res = runs.restore_local(str(copy), str(out))
    assert res.totals.done == 4 and [p.key for p in res.problems] == [key]


@pytest.mark.parametrize("bad", ["../outside.pxa", "{outside}", "file://{outside}", "a/../../outside.pxa",
                                 "manifest/commits/x.json"])
def test_bitstream_paths_outside_dest_are_refused(small_collection, tmp_path, bad):
    dest = tmp_path / "dest"
    outside = tmp_path / "outside.pxa"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    victim = sorted(rows_by_key(dest))[0]
    shutil.copy(dest / (victim + ".pxa"), outside)  # a valid bitstream, but not DEST's
    untouched = outside.read_bytes()

    def hostile(rows):
        for r in rows:
            if r["key"] == victim:
                r["bitstream_uri"] = bad.format(outside=outside)

    rewrite_manifest(dest, hostile)
    v = runs.verify_local(str(dest), full=True)
    # the victim's own bitstream is now named by no row: an orphan, reported too
    expected = sorted([(victim + ".pxa", "orphan_bitstream"), (victim, "outside_dest")])
    assert sorted((p.key, p.problem) for p in v.problems) == expected
    assert "outside DEST" in next(p for p in v.problems if p.problem == "outside_dest").detail
    res = runs.restore_local(str(dest), str(tmp_path / "out"))
    assert sorted((p.key, p.problem) for p in res.problems) == expected
    assert not (tmp_path / "out" / victim).exists()
    out = runs.recompress_local(str(dest), policy="default", min_saving=0.0, apply=True)
    skipped = {d.key: d for d in out.decisions if d.action == "skip"}
    assert victim in skipped and "outside DEST" in skipped[victim].reason
    assert outside.read_bytes() == untouched


# --------------------------------------------------------------------------- 2. one writer


def cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "pixarc.cli", *args]


def test_second_writer_stops_with_a_message_while_the_first_holds_dest(small_collection, tmp_path):
    import subprocess

    from pixarc.lock import LockedError, hold

    dest = tmp_path / "dest"
    with hold(str(dest), "archive (another run)"):
        res = subprocess.run(cli("archive", str(small_collection), str(dest), "--engine", "local", "--no-progress"),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 4, res.stdout + res.stderr
        assert "locked by archive (another run)" in res.stderr and "Traceback" not in res.stderr
        with pytest.raises(LockedError, match="--wait"):
            runs.recompress_local(str(dest), apply=True)
    assert not (dest / "manifest").exists()  # the stopped run wrote nothing
    assert runs.archive_local(str(small_collection), str(dest)).totals.done == 5  # released


def test_concurrent_writers_lose_no_rows(small_collection, tmp_path):
    """Three archive runs started together on one DEST (--wait): all succeed, one at a
    time; every key ends with exactly one current row whose bitstream verifies."""
    import subprocess

    dest = tmp_path / "dest"
    procs = [subprocess.Popen(cli("archive", str(small_collection), str(dest), "--engine", "local", "--no-progress",
                                  "--shard-size", "2", "--wait", "120"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    done = [int(o.split(" done")[0].rsplit(" ", 1)[-1]) for o, _ in outs]
    assert sorted(done) == [0, 0, 5]  # one run archived everything, the others found it archived
    rows = rows_by_key(dest)
    assert len(rows) == 5 and read_manifest(str(dest)).num_rows == 5
    check = runs.verify_local(str(dest), full=True)
    assert check.totals.done == 5 and not check.problems  # lost rows: 0


def test_stale_lease_of_a_killed_run_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    from pixarc.lock import LeaseInfo, LockedError, hold, read_lease

    dest = tmp_path / "dest"
    (dest / ".pixarc").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)

    def lease(**kw):
        info = {**dict(owner="archive", host=socket.gethostname(), pid=pid, token="old", acquired_at=time.time(),
                       expires_at=time.time() + 3600), **kw}
        (dest / ".pixarc/lock.json").write_text(json.dumps(info))

    lease()  # a killed run on this host: its pid is gone
    with hold(str(dest), "archive") as mine:
        assert read_lease(str(dest)).token == mine.token
    lease(host="elsewhere", pid=1, expires_at=time.time() - 1)  # expired on another host
    with hold(str(dest), "archive") as mine:
        assert read_lease(str(dest)).token == mine.token
    lease(host="elsewhere", pid=1)  # alive elsewhere, not expired: respected
    with pytest.raises(LockedError, match="pid 1 on elsewhere"):
        hold(str(dest), "archive")
    assert read_lease(str(dest)).token == "old"


def test_lease_is_renewed_by_its_heartbeat_and_a_lost_lease_stops_the_commit(tmp_path):
    import time

    from pixarc.lock import LockedError, check_held, hold, read_lease

    dest = str(tmp_path / "dest")
    with hold(dest, "archive", ttl=0.6) as lease:
        first = read_lease(dest).expires_at
        time.sleep(0.9)
        assert read_lease(dest).expires_at > first
        (tmp_path / "dest/.pixarc/lock.json").unlink()  # taken from us
        with pytest.raises(LockedError, match="lost its lock"):
            check_held(dest, lease.token)


def test_lease_on_an_object_store_backend(tmp_path):
    """fsspec memory: create-exclusive through the backend's ``xb`` mode."""
    from pixarc.lock import LockedError, hold

    dest = f"memory://lock-{tmp_path.name}"
    with hold(dest, "archive"):
        with pytest.raises(LockedError):
            hold(dest, "archive")
    with hold(dest, "archive"):
        pass


# --------------------------------------------------------------------------- 3. nothing overwritten


def _rewrite_image(path: Path, angle: int) -> None:
    from PIL import Image

    Image.open(path).rotate(angle).save(path)


def test_changed_source_gets_a_new_bitstream_and_every_version_stays_restorable(small_collection, tmp_path):
    import time
    from datetime import datetime, timezone

    from pixarc.images import probe_and_load

    dest = tmp_path / "dest"
    key = "line/ocal_galicia_01.png"
    runs.archive_local(str(small_collection), str(dest))
    v1 = rows_by_key(dest)[key]
    v1_bytes = (small_collection / key).read_bytes()
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    _rewrite_image(small_collection / key, 90)
    runs.archive_local(str(small_collection), str(dest))
    v2 = rows_by_key(dest)[key]
    assert v2["bitstream_uri"] != v1["bitstream_uri"] and v2["replaces_sha256"] == v1["bitstream_sha256"]
    assert sha256_hex((dest / v1["bitstream_uri"]).read_bytes()) == v1["bitstream_sha256"], "v1 overwritten"
    assert not runs.verify_local(str(dest), full=True).problems

    def restored(**kw) -> str:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
        res = runs.restore_local(str(dest), str(out), pattern=key, **kw)
        assert res.totals.done == 1 and not res.problems, res.problems
        return probe_and_load((out / key).read_bytes()).pixels_sha256

    assert restored(version=1) == probe_and_load(v1_bytes).pixels_sha256 == restored(as_of=between)
    assert restored(version=2) == restored() == v2["pixels_sha256"] != v1["pixels_sha256"]
    # pruning old versions is explicit, and then the old version is gone (and says so)
    from pixarc.prune import prune

    dry = prune(str(dest), dry_run=True)
    assert dry.paths == [v1["bitstream_uri"]] and (dest / v1["bitstream_uri"]).exists()
    done = prune(str(dest))
    assert done.paths == [v1["bitstream_uri"]] and not (dest / v1["bitstream_uri"]).exists()
    res = runs.restore_local(str(dest), str(tmp_path / "after-prune"), pattern=key, version=1)
    assert [p.problem for p in res.problems] == ["missing"]
    assert not runs.verify_local(str(dest), full=True).problems  # current rows untouched


def test_restore_never_overwrites_unless_asked(small_collection, tmp_path):
    dest, out = tmp_path / "dest", tmp_path / "out"
    runs.archive_local(str(small_collection), str(dest))
    mine = out / "line/ocal_galicia_01.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own file")
    res = runs.restore_local(str(dest), str(out))
    assert res.totals.done == 4 and res.skipped == 1 and not res.problems
    assert mine.read_bytes() == b"my own file"
    res = runs.restore_local(str(dest), str(out), overwrite=True)
    assert res.totals.done == 5 and mine.read_bytes() != b"my own file"


def test_two_sources_never_restore_to_one_name(tmp_path):
    from conftest import encode_bytes, rng_image

    src, dest, out = tmp_path / "src", tmp_path / "dest", tmp_path / "out"
    src.mkdir()
    (src / "x.jpg").write_bytes(encode_bytes(rng_image("RGB", seed=1), "JPEG"))  # restores as PNG: x.jpg.png
    (src / "x.jpg.png").write_bytes(encode_bytes(rng_image("RGB", seed=2), "PNG"))  # restores as itself
    runs.archive_local(str(src), str(dest), policy="png")
    res = runs.restore_local(str(dest), str(out))
    assert res.totals.done == 2 and not res.problems and res.skipped == 0
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(files) == 2 and "x.jpg.png" in files
    from pixarc.images import probe_and_load

    rows = rows_by_key(dest)
    assert probe_and_load((out / "x.jpg.png").read_bytes()).pixels_sha256 == rows["x.jpg.png"]["pixels_sha256"]
    other = next(f for f in files if f != "x.jpg.png")
    assert probe_and_load((out / other).read_bytes()).pixels_sha256 == rows["x.jpg"]["pixels_sha256"]


def test_key_colliding_with_a_bitstream_path_gets_a_row_and_the_run_goes_on(tmp_path):
    from conftest import encode_bytes, rng_image

    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "a.pxa").mkdir(parents=True)
    (src / "a").write_bytes(encode_bytes(rng_image("RGB", seed=1), "PNG"))  # bitstream: a.pxa
    (src / "a.pxa/b.png").write_bytes(encode_bytes(rng_image("RGB", seed=2), "PNG"))  # needs folder a.pxa/
    (src / "c.png").write_bytes(encode_bytes(rng_image("RGB", seed=3), "PNG"))
    s = runs.archive_local(str(src), str(dest))
    rows = rows_by_key(dest)
    assert (rows["a.pxa/b.png"]["status"], rows["a.pxa/b.png"]["error"]) == ("rejected", "key_collision")
    assert "a.pxa" in rows["a.pxa/b.png"]["message"]
    assert rows["a"]["status"] == rows["c.png"]["status"] == "done" and s.totals.done == 2
    assert not runs.verify_local(str(dest), full=True).problems


def test_restore_never_writes_through_a_symlink_leading_outside_out(small_collection, tmp_path):
    dest, out, elsewhere = tmp_path / "dest", tmp_path / "out", tmp_path / "elsewhere"
    runs.archive_local(str(small_collection), str(dest))
    out.mkdir()
    elsewhere.mkdir()
    (out / "line").symlink_to(elsewhere, target_is_directory=True)
    res = runs.restore_local(str(dest), str(out), overwrite=True)
    assert [(p.key, p.problem) for p in res.problems] == [("line/ocal_galicia_01.png", "outside_out")]
    assert res.totals.done == 4 and not list(elsewhere.iterdir())


# --------------------------------------------------------------------------- 4. bounded, non-blocking input


def test_fifo_gets_a_rejected_row_and_never_blocks(tmp_path):
    import os
    import subprocess

    from conftest import encode_bytes, rng_image

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "a.png").write_bytes(encode_bytes(rng_image("RGB"), "PNG"))
    os.mkfifo(src / "pipe.png")  # nobody ever writes to it: reading it would block forever
    res = subprocess.run(cli("archive", str(src), str(dest), "--engine", "local", "--no-progress"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = rows_by_key(dest)
    assert (rows["pipe.png"]["status"], rows["pipe.png"]["error"]) == ("rejected", "not_regular_file")
    assert rows["a.png"]["status"] == "done"


def test_file_swapped_for_a_fifo_after_the_crawl_is_refused_at_read(tmp_path):
    """The crawl saw a file; at read time it is a FIFO: the read itself must not block."""
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "p.png")
    code = (
        "import sys; from pixarc.crawl import ImageRef; from pixarc.intake import intake;"
        "from pixarc.archive import source_row; from pixarc.plugins import default_registry;"
        "from pixarc.policy import load_policy;"
        "ref = ImageRef('file://' + sys.argv[1], 'p.png', 10, '');"
        "row = source_row(intake(ref, load_policy(None), default_registry()), 'r', 0);"
        "print(row.status, row.error)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png"), str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["rejected", "not_regular_file"], res.stdout + res.stderr


def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_file_over_the_byte_limit_is_refused_from_its_size(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    with open(src / "huge.png", "wb") as f:  # sparse: 64 MiB on paper, nothing on disk
        f.truncate(64 << 20)
    peak = _peak_bytes(lambda: runs.archive_local(str(src), str(dest), max_bytes=1 << 20))
    row = rows_by_key(dest)["huge.png"]
    assert (row["status"], row["error"]) == ("rejected", "too_large") and "1048576" in row["message"]
    assert peak < 8 << 20, f"peak {peak} bytes: the file was read"


def test_pixel_limit_is_checked_on_a_bounded_prefix(tmp_path):
    from test_images import raw_png

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    with open(src / "bomb.png", "wb") as f:  # a bomb header followed by 48 MiB (sparse)
        f.write(raw_png(50_000, 50_000, 8, 0, b""))
        f.truncate(48 << 20)
    peak = _peak_bytes(lambda: runs.archive_local(str(src), str(dest)))
    row = rows_by_key(dest)["bomb.png"]
    assert (row["status"], row["error"]) == ("rejected", "too_large")
    assert peak < 16 << 20, f"peak {peak} bytes: the whole object was read before the header check"


# --------------------------------------------------------------------------- 5. failures a person can act on


def _damage_part(dest: Path, index: int = 1) -> str:
    part = sorted((dest / "manifest/parts").glob("*.parquet"))[index]
    part.write_bytes(part.read_bytes()[:-7] + b"garbage")
    return part.name


def test_one_damaged_manifest_part_does_not_block_the_rest(small_collection, tmp_path):
    dest, out = tmp_path / "dest", tmp_path / "out"
    runs.archive_local(str(small_collection), str(dest), shard_size=2)  # parts of 2, 2 and 1 rows
    name = _damage_part(dest, 0)
    v = runs.verify_local(str(dest), full=True)
    # the damaged part, the two bitstreams its rows named (orphans now), and the run whose
    # recorded 5 done images the readable manifest no longer holds
    kinds = [p.problem for p in v.problems]
    assert (f"manifest/{name}", "corrupt_manifest_part") in [(p.key, p.problem) for p in v.problems]
    assert sorted(kinds) == ["corrupt_manifest_part", "orphan_bitstream", "orphan_bitstream", "rows_missing"]
    assert v.found == v.totals.done == 3  # the other parts' rows are checked and fine
    res = runs.restore_local(str(dest), str(out))
    assert res.totals.done == 3 and sorted(p.problem for p in res.problems) == sorted(kinds)


def test_damaged_part_and_missing_bitstream_are_repaired(small_collection, tmp_path):
    from pixarc.repair import repair

    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest), shard_size=2)
    before = rows_by_key(dest)
    _damage_part(dest, 0)
    gone = sorted(r.key for r in current_rows(str(dest)))[-1]  # in an intact part: bitstream deleted
    (dest / before[gone]["bitstream_uri"]).unlink()
    r = repair(str(dest))
    assert r.parts_rebuilt == 1 and r.rows_rebuilt == 2 and r.reencoded == [gone] and not r.unrepairable
    after = rows_by_key(dest)
    assert after.keys() == before.keys()
    for key, row in after.items():
        assert row["status"] == "done" and row["pixels_sha256"] == before[key]["pixels_sha256"], key
        assert row["source_sha256"] == before[key]["source_sha256"] and row["codec_id"] == before[key]["codec_id"]
    check = runs.verify_local(str(dest), full=True)
    assert check.totals.done == 5 and not check.problems, check.problems
    assert runs.restore_local(str(dest), str(tmp_path / "out")).totals.done == 5


def test_repair_refuses_a_source_that_no_longer_matches(small_collection, tmp_path):
    from pixarc.repair import repair

    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    key = "line/ocal_galicia_01.png"
    flip_a_bit(dest / (key + ".pxa"))
    _rewrite_image(small_collection / key, 90)
    r = repair(str(dest))
    assert r.reencoded == [] and [k for k, _ in r.unrepairable] == [key]
    assert "no longer matches" in r.unrepairable[0][1]


def test_missing_plugin_is_named_with_its_distribution_not_corruption(small_collection, tmp_path, monkeypatch):
    from pixarc.plugins import build_plugin_manager

    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    monkeypatch.setenv("PIXARC_PLUGINS", "webp,store,stats_classifier,default_router")  # png not installed
    v = runs.verify_local(str(dest), full=True, registry=build_plugin_manager())
    assert len(v.problems) == 5 and {p.problem for p in v.problems} == {"missing_plugin"}
    assert "codec 'png'" in v.problems[0].detail and "pip install pixarc" in v.problems[0].detail
    from pixarc.cli.render import problems_exit

    assert problems_exit(v.problems) == 4


@pytest.mark.parametrize("errno_name, text", [("ENOSPC", "disk full"), ("EACCES", "permission denied")])
def test_disk_full_and_permission_denied_are_one_line_and_exit_4(small_collection, tmp_path, monkeypatch,
                                                                  errno_name, text):
    import errno
    import os

    from click.testing import CliRunner

    from pixarc.cli import main

    def refuse(fs, path, data, fault_site=""):
        code = getattr(errno, errno_name)
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(layout, "write_new", refuse)
    res = CliRunner().invoke(main, ["archive", str(small_collection), str(tmp_path / "d"), "--engine", "local",
                                    "--no-progress"])
    assert res.exit_code == 4, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: " + text) and ".pxa" in lines[0], res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- 6. exit status


@pytest.mark.parametrize("command", [["verify"], ["restore", "OUT"], ["report"], ["recompress"]])
def test_commands_on_something_that_is_not_an_archive_exit_2(small_collection, tmp_path, command):
    from click.testing import CliRunner

    from pixarc.cli import main

    for target in (small_collection, tmp_path / "missing"):
        args = [command[0], str(target), *[str(tmp_path / "out") for _ in command[1:]], "--no-progress"]
        if command[0] == "report":
            args.remove("--no-progress")
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        assert "not a pixarc archive" in res.output and "Traceback" not in res.output


def test_archive_exits_1_when_an_object_ended_in_error(tmp_path):
    from click.testing import CliRunner

    from conftest import encode_bytes, rng_image
    from pixarc.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(encode_bytes(rng_image("RGB"), "PNG"))
    (src / "notes.txt").write_text("not an image")
    res = CliRunner().invoke(main, ["archive", str(src), str(tmp_path / "d"), "--engine", "local", "--no-progress"])
    assert res.exit_code == 1 and "1 done" in res.output and "1 errors" in res.output, res.output
    (src / "notes.txt").unlink()
    res = CliRunner().invoke(main, ["archive", str(src), str(tmp_path / "d2"), "--engine", "local", "--no-progress"])
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- 7. cross-device verified


class _GPUPlugin:
    """A lossless codec that 'encodes on a GPU' and whose CPU decode can be made to differ
    in one sample (the class of bug a same-device check cannot see)."""

    def __init__(self):
        self.cpu_differs = False
        self.decoded_on: list[str] = []
        from pixarc.codec import Codec, Decoded
        from pixarc.hookspecs import hookimpl

        plugin = self

        class FakeGPUCodec(Codec):
            codec_id = "fake-gpu"
            lossless = True
            prefers_gpu = True

            def encode(self, src, params, device="cpu"):
                im = src.image
                return f"{im.mode}|{im.width}|{im.height}|".encode() + im.tobytes()

            def decode(self, payload, device="cpu"):
                from PIL import Image

                plugin.decoded_on.append(str(device))  # a Device value; str: cpu, cuda, cuda:N
                mode, w, h, raw = payload.split(b"|", 3)
                raw = bytearray(raw)
                if not device.is_gpu and plugin.cpu_differs:
                    raw[0] ^= 1
                return Decoded(image=Image.frombytes(mode.decode(), (int(w), int(h)), bytes(raw)))

        @hookimpl
        def register_codecs(register):
            register(FakeGPUCodec)

        self.register_codecs = register_codecs


def test_gpu_encoded_bitstream_is_decode_checked_on_the_cpu_path_restore_uses(monkeypatch):
    from conftest import encode_bytes, rng_image
    from pixarc.device import DeviceMap
    from pixarc.images import probe_and_load
    from pixarc.plugins import build_plugin_manager
    from pixarc.policy import Candidate, Route

    plugin = _GPUPlugin()
    monkeypatch.setenv("PIXARC_PLUGINS", "png,store,fake_gpu")
    reg = build_plugin_manager(extra_plugins={"fake_gpu": plugin})
    src = probe_and_load(encode_bytes(rng_image("RGB"), "PNG"))
    route = Route("test", True, (Candidate("fake-gpu"), Candidate("png")))

    on_gpu = DeviceMap.resolve("cuda", reg.codecs)
    chosen, attempts = encode_route(src, route, reg, on_gpu)
    assert chosen.codec.codec_id == "fake-gpu" and "cpu" in plugin.decoded_on and "cuda" in plugin.decoded_on

    plugin.cpu_differs, plugin.decoded_on[:] = True, []
    chosen, attempts = encode_route(src, route, reg, on_gpu)
    assert chosen.codec.codec_id == "png", attempts  # the GPU bitstream failed its CPU check: fallback
    assert attempts[0].codec == "fake-gpu" and attempts[0].result == "failed"
    assert "CPU decode restore uses fails" in attempts[0].reason


def test_verify_sources_does_not_block_on_an_original_replaced_by_a_fifo(small_collection, tmp_path):
    import os
    import subprocess
    import sys

    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    victim = small_collection / "line/ocal_galicia_01.png"
    victim.unlink()
    os.mkfifo(victim)
    code = ("import sys; from pixarc import runs;"
            "print([(p.key, p.problem) for p in runs.verify_local(sys.argv[1], sources=True).problems])")
    res = subprocess.run([sys.executable, "-c", code, str(dest)], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "[('line/ocal_galicia_01.png', 'source_unreadable')]", res.stdout + res.stderr
