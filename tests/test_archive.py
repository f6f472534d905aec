"""The archive job end to end through the engine (the flows call the same functions)."""

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from conftest import encode_bytes, rng_image, tree_digest
from pixarc import archive, runs
from pixarc.restore import restored_key
from pixarc.container import unpack
from pixarc.errors import InputError
from pixarc.images import pixels_sha256, probe_and_load
from pixarc.manifest import core_schema, latest, read_manifest


def rows_by_key(dest) -> dict[str, dict]:
    return {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}


def bad_inputs(root: Path) -> None:
    """Every kind of awkward file the foundation issue names."""
    (root / "bad").mkdir(parents=True)
    (root / "bad/empty.png").write_bytes(b"")
    (root / "bad/notes.txt").write_text("not an image")
    good = encode_bytes(rng_image("RGB", (64, 64)), "PNG")
    (root / "bad/truncated.png").write_bytes(good[: len(good) // 2])
    from test_images import raw_png

    (root / "bad/bomb.png").write_bytes(raw_png(50_000, 50_000, 8, 0, b""))
    (root / "odd").mkdir()
    (root / "odd/gray16.png").write_bytes(encode_bytes(rng_image("I;16"), "PNG"))
    (root / "odd/alpha.png").write_bytes(encode_bytes(rng_image("RGBA"), "PNG"))
    (root / "odd/palette.png").write_bytes(encode_bytes(rng_image("RGB").quantize(8), "PNG"))
    (root / "odd/gray.png").write_bytes(encode_bytes(rng_image("L"), "PNG"))
    (root / "odd/cmyk.jpg").write_bytes(encode_bytes(Image.new("CMYK", (16, 16), (1, 2, 3, 4)), "JPEG"))
    rows = b"".join(b"\x00" + np.arange(12, dtype=">u2").tobytes() for _ in range(3))
    (root / "odd/rgb48.png").write_bytes(raw_png(4, 3, 16, 2, rows))


def test_archive_verify_restore_round_trip(small_collection, tmp_path):
    dest, out = tmp_path / "dest", tmp_path / "restored"
    before = tree_digest(small_collection)
    s = runs.archive_local(str(small_collection), str(dest), shard_size=2)
    assert s.found == 5 and s.totals.done == 5 and s.shards == 3
    rows = rows_by_key(dest)
    for key, r in rows.items():
        assert r["status"] == "done" and r["verified"]
        blob = (dest / (key + ".pxa")).read_bytes()
        c = unpack(blob)
        assert c.source_sha256 == r["source_sha256"] and c.codec_id == r["codec_id"]
        assert r["bitstream_bytes"] == len(blob) and r["bpp"] == pytest.approx(8 * len(blob) / (r["width"] * r["height"]))
        assert r["lossless"] and r["psnr"] == float("inf") and r["ms_ssim"] == 1.0
    assert tree_digest(small_collection) == before, "originals must never change"

    restored = runs.restore_local(str(dest), str(out))
    assert restored.totals.done == 5 and not restored.problems
    for key, r in rows.items():
        name = restored_key(key, r["source_format"], True, r["codec_id"])
        img = Image.open(out / name)
        canonical = probe_and_load((out / name).read_bytes()).image
        assert pixels_sha256(canonical) == r["pixels_sha256"], key
        assert img.format == ("PNG" if name.endswith(".png") else r["source_format"])
    # a JPEG source restores as PNG next to its name, the palette GIF too
    assert (out / "misc/mcmaster_13_q90.jpg.png").exists() and (out / "misc/ocal_two_cats_palette.gif.png").exists()


def test_rerun_is_idempotent_and_picks_up_changes(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    first = read_manifest(str(dest)).num_rows
    again = runs.archive_local(str(small_collection), str(dest))
    assert again.skipped == 5 and again.totals.images == 0
    assert read_manifest(str(dest)).num_rows == first
    changed = small_collection / "line/ocal_galicia_01.png"
    Image.open(changed).rotate(90).save(changed)
    third = runs.archive_local(str(small_collection), str(dest))
    assert third.totals.images == 1 and third.totals.done == 1
    assert rows_by_key(dest)["line/ocal_galicia_01.png"]["source_sha256"] == probe_and_load(changed.read_bytes()).sha256


def test_interrupted_shard_resumes_by_reusing_verified_bitstreams(small_collection, tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    calls = {"n": 0}
    real = archive.archive_one

    def dies_on_third(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **kw)

    monkeypatch.setattr(archive, "archive_one", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        runs.archive_local(str(small_collection), str(dest))
    assert read_manifest(str(dest)).num_rows == 0  # the shard never committed
    monkeypatch.setattr(archive, "archive_one", real)
    s = runs.archive_local(str(small_collection), str(dest))
    assert s.totals.done == 5 and s.totals.reused == 2
    rows = rows_by_key(dest)
    assert len(rows) == 5 and read_manifest(str(dest)).num_rows == 5


def test_bad_inputs_each_get_a_row_and_the_run_goes_on(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    bad_inputs(src)
    before = tree_digest(src)
    s = runs.archive_local(str(src), str(dest), shard_size=4)
    rows = rows_by_key(dest)
    assert len(rows) == s.found == 10
    expect = {
        "bad/empty.png": ("error", "empty"),
        "bad/notes.txt": ("error", "not_an_image"),
        "bad/truncated.png": ("error", "truncated"),
        "bad/bomb.png": ("rejected", "too_large"),
    }
    for key, (status, reason) in expect.items():
        assert (rows[key]["status"], rows[key]["error"]) == (status, reason), key
        assert rows[key]["message"]
    for key in ("odd/gray16.png", "odd/alpha.png", "odd/palette.png", "odd/gray.png"):
        assert rows[key]["status"] == "done" and rows[key]["codec_id"] != "store", key
    assert rows["odd/gray16.png"]["mode"] == "I;16" and rows["odd/gray16.png"]["bit_depth"] == 16
    assert rows["odd/alpha.png"]["mode"] == "RGBA"
    assert "palette" in rows["odd/palette.png"]["notes"]
    for key in ("odd/cmyk.jpg", "odd/rgb48.png"):  # no faithful pixels: original bytes kept
        assert rows[key]["status"] == "done" and rows[key]["codec_id"] == "store", key
    assert tree_digest(src) == before
    # restore gives the CMYK JPEG back byte for byte
    out = tmp_path / "out"
    runs.restore_local(str(dest), str(out))
    assert (out / "odd/cmyk.jpg").read_bytes() == (src / "odd/cmyk.jpg").read_bytes()


def test_gray16_goes_to_a_codec_that_takes_it(tmp_path):
    """webp is first for line art but cannot do 16-bit: the fallback is recorded."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    ramp = np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (64, 1))
    (src / "g.png").write_bytes(encode_bytes(Image.fromarray(ramp), "PNG"))
    runs.archive_local(str(src), str(dest))
    r = rows_by_key(dest)["g.png"]
    attempts = json.loads(r["attempts"])
    assert r["status"] == "done" and r["codec_id"] in ("jxl-lossless", "png")
    assert [a["codec"] for a in attempts if a["result"] == "verified"] == [r["codec_id"]]


def test_lossy_policy_records_psnr_that_verify_reproduces(small_collection, tmp_path):
    dest = tmp_path / "dest"
    policy = tmp_path / "lossy.toml"
    policy.write_text(
        'version = 1\nmin_confidence = 0.0\n[params.webp]\nquality = 60\n'
        '[routes.unknown]\nlossless = false\ncodecs = ["webp"]\n'
        + "".join(f'[routes.{d}]\nlossless = false\ncodecs = ["webp"]\n'
                  for d in ("natural", "comic", "line", "vector", "screenshot"))
    )
    runs.archive_local(str(small_collection), str(dest), policy=str(policy))
    rows = rows_by_key(dest)
    for r in rows.values():
        assert r["codec_id"] == "webp" and not r["lossless"]
        assert 15 < r["psnr"] < 80 and 0.5 < r["ms_ssim"] <= 1.0
        c = unpack((dest / (r["key"] + ".pxa")).read_bytes())
        assert c.meta["psnr"] == pytest.approx(r["psnr"]) and c.meta["decoded_sha256"] == r["decoded_sha256"]
    v = runs.verify_local(str(dest), full=True)
    assert v.totals.done == len(rows) and not v.problems


def test_verify_detects_corruption_missing_and_tampering(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    rows = list(rows_by_key(dest).values())
    keys = [r["key"] for r in rows]
    victim = dest / (keys[0] + ".pxa")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit, same size: only the full check sees it
    victim.write_bytes(bytes(data))
    (dest / (keys[1] + ".pxa")).unlink()
    fast = runs.verify_local(str(dest), full=False)
    full = runs.verify_local(str(dest), full=True)
    assert {(p.key, p.problem) for p in fast.problems} == {(keys[1], "missing")}
    assert {(p.key, p.problem) for p in full.problems} == {(keys[1], "missing"), (keys[0], "hash_mismatch")}
    # restore refuses the corrupt one instead of writing a damaged image
    res = runs.restore_local(str(dest), str(tmp_path / "out"))
    assert {p.key for p in res.problems} == {keys[0], keys[1]}
    assert not (tmp_path / "out" / keys[0]).exists()


def test_fsspec_memory_and_zip_sources_and_memory_dest(small_collection, tmp_path):
    import zipfile

    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(small_collection.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(small_collection).as_posix())
    mem = fsspec.filesystem("memory")
    for p in sorted(small_collection.rglob("*")):
        if p.is_file():
            mem.pipe(f"/src-{tmp_path.name}/{p.relative_to(small_collection).as_posix()}", p.read_bytes())
    a = runs.archive_local(f"zip://::{zpath}", f"memory://dest-zip-{tmp_path.name}")
    b = runs.archive_local(f"memory://src-{tmp_path.name}", str(tmp_path / "dest-mem"))
    assert a.totals.done == b.totals.done == 5
    za = rows_by_key(f"memory://dest-zip-{tmp_path.name}")
    zb = rows_by_key(tmp_path / "dest-mem")
    assert za.keys() == zb.keys()
    same = ("codec_id", "params", "pixels_sha256", "decoded_sha256")  # bitstream bytes differ: their header dates them
    assert {k: [r[c] for c in same] for k, r in za.items()} == {k: [r[c] for c in same] for k, r in zb.items()}
    first = next(iter(za.values()))  # named relative to DEST, found in the memory DEST
    assert first["bitstream_uri"] == first["key"] + ".pxa"
    assert fsspec.filesystem("memory").isfile(f"/dest-zip-{tmp_path.name}/{first['bitstream_uri']}")


def test_zip_slip_keys_are_rejected_and_nothing_escapes(tmp_path):
    import zipfile

    zpath = tmp_path / "evil.zip"
    png = encode_bytes(rng_image("RGB"), "PNG")
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("ok/fine.png", png)
        z.writestr("../../escape.png", png)
    dest = tmp_path / "deep" / "dest"
    runs.archive_local(f"zip://::{zpath}", str(dest))
    rows = rows_by_key(dest)
    assert rows["ok/fine.png"]["status"] == "done"
    bad = [r for k, r in rows.items() if "escape" in k]
    assert len(bad) == 1 and bad[0]["status"] == "rejected" and bad[0]["error"] == "unsafe_key"
    assert not list(tmp_path.rglob("escape.png*"))


@pytest.mark.parametrize("key", ["../x.png", "/etc/passwd", "~/x", "a/../../b", "a//b", "c:\\x"])
def test_safe_key_refuses(key):
    from pixarc.storage import safe_key

    with pytest.raises(InputError):
        safe_key(key)


def test_one_dest_one_source(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    other = tmp_path / "other"
    shutil.copytree(small_collection, other)
    with pytest.raises(InputError, match="already archives"):
        runs.archive_local(str(other), str(dest))


def test_dest_inside_source_is_not_crawled(small_collection):
    dest = small_collection / "archive"
    runs.archive_local(str(small_collection), str(dest))
    s = runs.archive_local(str(small_collection), str(dest))
    assert s.found == 5  # the .pxa files and manifest under DEST are not sources


def test_manifest_has_the_design_columns():
    design = (
        "source_uri source_sha256 source_bytes source_format width height mode domain domain_confidence codec_id "
        "codec_version weights_sha256 params plugin_dist plugin_version bitstream_uri bitstream_sha256 "
        "bitstream_bytes bpp psnr ms_ssim lossless encode_s decode_s device verified status error run_id created_at"
    ).split()
    assert set(design) <= set(core_schema().names)


def test_plugin_provenance_is_recorded(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    r = next(iter(rows_by_key(dest).values()))
    assert r["plugin_dist"] == "pixarc" and r["plugin_version"]
    assert r["codec_version"].startswith(("Pillow", "imagecodecs")), r["codec_version"]  # the library that coded it


def test_verify_sources_detects_drift_of_the_originals(small_collection, tmp_path):
    dest = tmp_path / "dest"
    runs.archive_local(str(small_collection), str(dest))
    assert not runs.verify_local(str(dest), sources=True).problems
    (small_collection / "misc/mcmaster_13_q90.jpg").write_bytes(b"overwritten")
    (small_collection / "line/ocal_galicia_01.png").unlink()
    problems = {(p.key, p.problem) for p in runs.verify_local(str(dest), sources=True).problems}
    assert problems == {("misc/mcmaster_13_q90.jpg", "source_changed"), ("line/ocal_galicia_01.png", "source_gone")}
    assert not runs.verify_local(str(dest)).problems  # the archive itself is intact


def test_file_modified_while_archived_is_noted(small_collection, tmp_path, monkeypatch):
    import os


    real = archive.intake

    def touch_then_read(ref, *a, **kw):
        path = ref.uri.removeprefix("file://")
        os.utime(path, (1, 1))  # the file changes between crawl and read
        return real(ref, *a, **kw)

    monkeypatch.setattr(archive, "intake", touch_then_read)
    runs.archive_local(str(small_collection), str(tmp_path / "d"))
    rows = rows_by_key(tmp_path / "d")
    assert len(rows) == 5 and all("modified while being archived" in r["notes"] for r in rows.values())
