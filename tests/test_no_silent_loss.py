"""No silent loss (issue 25): the last ways an archive could lie. Each test fails on the
code before its fix; docs/guarantees.md lists them."""

from __future__ import annotations

import io
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pixarc import runs
from pixarc.cli import main
from pixarc.manifest import latest, read_manifest, rows_from_table
from pixarc.repair import repair


def invoke(*args: str) -> tuple[int, str]:
    """Exit status and output, whitespace folded (Rich wraps lines at the terminal width)."""
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res.exit_code, " ".join(res.output.split())


def current(dest: Path) -> dict:
    return {r.key: r for r in rows_from_table(latest(read_manifest(str(dest))))}


def png_bytes(seed: int, size=(24, 16)) -> bytes:
    im = Image.new("RGB", size, (seed * 40 % 256, 90, 200 - seed * 13 % 200))
    im.putpixel((seed % size[0], 3), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes and mtime: any write shows."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- 1. deleted commit markers


@pytest.mark.parametrize("what", ["marker", "part and marker"])
def test_rows_hidden_by_a_deleted_commit_marker_are_found_and_rebuilt(small_collection, tmp_path, what):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest), shard_size=2)  # parts of 2, 2 and 1 rows
    before = current(dest)
    marker = sorted((dest / "manifest/commits").glob("*.json"))[0]
    marker.unlink()
    if what == "part and marker":
        (dest / "manifest/parts" / (marker.stem + ".parquet")).unlink()
    hidden = sorted(set(before) - set(current(dest)))
    assert len(hidden) == 2

    v = runs.verify_local(str(dest), full=True)
    orphans = sorted(p.key for p in v.problems if p.problem == "orphan_bitstream")
    assert orphans == sorted(before[k].bitstream_uri for k in hidden)
    assert [p.problem for p in v.problems if p.problem != "orphan_bitstream"] == ["rows_missing"]
    code, out = invoke("verify", str(dest), "--full", "--no-progress")
    assert code == 3 and "orphan_bitstream" in out, out

    r = repair(str(dest))
    assert r.rows_rebuilt == 2 and not r.unrepairable
    after = current(dest)
    assert sorted(after) == sorted(before)
    for key in hidden:  # the rebuilt row is the lost one: same run, content, bitstream
        assert after[key].run_id == before[key].run_id
        assert after[key].bitstream_sha256 == before[key].bitstream_sha256
        assert after[key].pixels_sha256 == before[key].pixels_sha256
    check = runs.verify_local(str(dest), full=True)
    assert check.totals.done == 5 and not check.problems, check.problems
    assert runs.restore_local(str(dest), str(tmp_path / "out")).totals.done == 5


# --------------------------------------------------------------------------- 2. version order travels


def test_repair_of_a_copied_archive_keeps_the_newest_version_current(tmp_path):
    src, dest, copy = tmp_path / "src", tmp_path / "dest", tmp_path / "copy"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(1))
    runs.archive_local(str(src), str(dest), policy="png")
    time.sleep(0.01)
    (src / "a.png").write_bytes(png_bytes(2, (30, 20)))  # the source changes: version 2
    runs.archive_local(str(src), str(dest), policy="png")
    v2 = current(dest)["a.png"]
    assert v2.width == 30
    # copied without times (cp -r, rsync without -t, an upload): v1 ends up looking newer
    shutil.copytree(dest, copy, copy_function=shutil.copyfile)
    now = time.time()
    os.utime(copy / v2.bitstream_uri, (now - 3600, now - 3600))
    os.utime(copy / "a.png.pxa", (now, now))
    for part in (copy / "manifest/parts").glob("*.parquet"):  # every row must come from a header
        part.write_bytes(part.read_bytes()[:-7] + b"garbage")
    r = repair(str(copy))
    assert r.rows_rebuilt == 2
    assert current(copy)["a.png"].bitstream_sha256 == v2.bitstream_sha256
    out = runs.restore_local(str(copy), str(tmp_path / "out"))
    assert out.totals.done == 1 and Image.open(tmp_path / "out" / "a.png").size == (30, 20)


# --------------------------------------------------------------------------- 3. rejections are not "archived"


def test_rejected_objects_are_retried_when_the_limits_change(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.png").write_bytes(png_bytes(i, (40 + 40 * i, 40)))
    sizes = sorted((src / f"{i}.png").stat().st_size for i in range(4))
    limit = str(sizes[1])  # the two larger files are refused from their size

    code, out = invoke("archive", str(src), str(dest), "--policy", "png", "--max-bytes", limit, "--no-progress")
    assert code == 0 and "2 rejected" in out, out
    code, out = invoke("archive", str(src), str(dest), "--policy", "png", "--max-bytes", limit, "--no-progress")
    assert "2 already archived" in out and "2 rejected or unreadable earlier" in out, out
    assert "0 processed" in out, out
    code, out = invoke("archive", str(src), str(dest), "--policy", "png", "--no-progress")
    assert code == 0 and "2 rejected earlier, retried" in out and "2 done" in out, out
    assert {r.status for r in current(dest).values()} == {"done"}


# --------------------------------------------------------------------------- 4. any name gets a row


def test_undecodable_and_overlong_file_names_get_rows_and_restore_under_their_names(tmp_path):
    src, dest, out = tmp_path / "src", tmp_path / "dest", tmp_path / "out"
    src.mkdir()
    names = [os.fsdecode(b"bad\xff.png"), "x" * 226 + ".png", "ok.png"]
    for i, name in enumerate(names):
        (src / name).write_bytes(png_bytes(i))
    s = runs.archive_local(str(src), str(dest), policy="png")
    assert s.totals.done == 3, current(dest)
    rows = current(dest)
    assert sorted(rows) == sorted(names)  # keys recorded faithfully, read back as the same text
    assert all(len(os.fsencode(part)) <= 255 for r in rows.values() for part in r.bitstream_uri.split("/"))
    assert not runs.verify_local(str(dest), full=True).problems
    res = runs.restore_local(str(dest), str(out))
    assert res.totals.done == 3 and not res.problems
    for i, name in enumerate(names):
        assert (out / name).is_file(), name


def test_a_hashed_bitstream_name_is_reused_after_a_killed_run(tmp_path):
    """The rerun after a run killed before its commit finds the bitstream of a key whose
    name was hashed (too long here) and reuses it, instead of writing a second version
    beside it and leaving the first one an orphan."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / ("y" * 226 + ".png")).write_bytes(png_bytes(3))
    runs.archive_local(str(src), str(dest), policy="png")
    for folder in ("commits", "parts", "runs"):  # as if killed before the commit (and its run record)
        for f in (dest / "manifest" / folder).iterdir():
            f.unlink()
    again = runs.archive_local(str(src), str(dest), policy="png")
    assert again.totals.done == 1 and again.totals.reused == 1
    assert len(list(dest.rglob("*.pxa"))) == 1
    assert not runs.verify_local(str(dest), full=True).problems


def test_a_row_the_manifest_cannot_hold_becomes_an_error_row_and_the_shard_commits(tmp_path, monkeypatch):
    from pixarc import archive

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(png_bytes(i))
    real = archive.fill_plugin_columns

    def broken(row, registry, columns):  # a plugin bug while handling one object
        if row.key == "1.png":
            raise RuntimeError("plugin exploded")
        return real(row, registry, columns)

    monkeypatch.setattr(archive, "fill_plugin_columns", broken)
    s = runs.archive_local(str(src), str(dest), policy="png")
    rows = current(dest)
    assert sorted(rows) == ["0.png", "1.png", "2.png"] and s.totals.done == 2
    assert rows["1.png"].status == "error" and "plugin exploded" in rows["1.png"].message


# --------------------------------------------------------------------------- 7. read-only commands


def test_verify_restore_report_and_export_bagit_never_write_into_dest(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    before = snapshot(dest)
    runs.verify_local(str(dest), full=True)
    assert invoke("verify", str(dest), "--full", "--no-progress")[0] == 0
    assert invoke("restore", str(dest), str(tmp_path / "out"), "--no-progress")[0] == 0
    assert invoke("report", str(dest))[0] == 0
    code, out = invoke("export-bagit", str(dest), str(tmp_path / "bag"))
    assert code == 0 and (tmp_path / "bag" / "bagit.txt").is_file(), out
    assert snapshot(dest) == before


def test_prune_of_a_missing_archive_creates_nothing(tmp_path):
    missing = tmp_path / "nonexistent"
    code, out = invoke("prune", str(missing))
    assert code == 2 and not missing.exists(), out


# --------------------------------------------------------------------------- 8. zip members


def test_every_zip_member_gets_a_row_and_hidden_ones_are_counted(tmp_path):
    z = tmp_path / "odd.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(z, "w") as f:
            for i, name in enumerate(["ok.png", "/abs.png", "dir\\back.png", "dup.png", "dup.png",
                                      ".hidden.png", "sub/.h2.png", "../slip.png"]):
                f.writestr(name, png_bytes(i))
    dest = tmp_path / "dest"
    s = runs.archive_local(f"zip://::{z}", str(dest), policy="png")
    rows = current(dest)
    assert len(rows) == 6 and s.hidden == 2, sorted(rows)
    reasons = sorted((r.status, r.error) for r in rows.values())
    assert reasons == [("done", ""), ("done", ""), ("rejected", "duplicate_key"), ("rejected", "unsafe_key"),
                       ("rejected", "unsafe_key"), ("rejected", "unsafe_key")]


# --------------------------------------------------------------------------- 9. leftovers, lost leases


def test_leftovers_of_killed_runs_are_swept_by_the_next_writer(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    old = time.time() - 3600
    temp = dest / ("line/x.png.pxa.tmp-" + "a" * 32)
    temp.write_bytes(b"half")
    fresh = dest / ("line/y.png.pxa.tmp-" + "b" * 32)  # a live writer's: too young to touch
    fresh.write_bytes(b"half")
    part = dest / "manifest/parts/20200101T000000Z-deadbeef-000000.parquet"
    part.write_bytes(b"uncommitted")
    for p in (temp, part):
        os.utime(p, (old, old))
    runs.archive_local(str(small_collection), str(dest), policy="png")  # nothing new, but a writer
    assert not temp.exists() and not part.exists() and fresh.exists()


def test_a_writer_that_lost_its_lease_writes_no_bitstream(small_collection, tmp_path):
    from pixarc.archive import ArchiveJob
    from pixarc.lock import LockedError, hold

    dest = tmp_path / "dest"
    job = ArchiveJob(str(small_collection), str(dest), "run-lost", policy="png", lease="a-token-nobody-holds")
    plan = job.plan()
    with hold(str(dest), "someone else"):
        with pytest.raises(LockedError):
            job.run_shard(plan.shards[0])
    assert not list(dest.rglob("*.pxa")) and not list(dest.rglob("*.tmp-*"))


# --------------------------------------------------------------------------- 10. damage means exit 3


def test_recompress_apply_over_damaged_bitstreams_exits_3(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    victim = sorted(current(dest).values(), key=lambda r: r.key)[0]
    data = bytearray((dest / victim.bitstream_uri).read_bytes())
    data[len(data) // 2] ^= 0x40
    (dest / victim.bitstream_uri).write_bytes(bytes(data))
    code, out = invoke("recompress", str(dest), "--policy", "default", "--min-saving", "0", "--apply",
                       "--no-progress")
    assert code == 3 and victim.key in out, out
