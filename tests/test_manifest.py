import json
import time

import pytest

from pixarc.manifest import ManifestRow, latest, read_manifest, rows_to_table, write_part


def row(key, run="r1", **kw):
    return ManifestRow(run, 0, key, f"file:///src/{key}", "done", **kw)


def test_part_commit_and_read(tmp_path):
    dest = str(tmp_path)
    write_part(dest, "r1", 0, rows_to_table([row("a"), row("b")]))
    t = read_manifest(dest)
    assert t.num_rows == 2 and sorted(t.column("key").to_pylist()) == ["a", "b"]


def test_uncommitted_part_is_invisible(tmp_path):
    dest = str(tmp_path)
    write_part(dest, "r1", 0, rows_to_table([row("a")]))
    (tmp_path / "manifest/commits/r1-000000.json").unlink()  # crash between part and marker
    assert read_manifest(dest).num_rows == 0


def test_tampered_part_is_detected(tmp_path):
    dest = str(tmp_path)
    write_part(dest, "r1", 0, rows_to_table([row("a")]))
    part = tmp_path / "manifest/parts/r1-000000.parquet"
    part.write_bytes(part.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="commit marker"):
        read_manifest(dest)


def test_latest_row_per_key_wins(tmp_path):
    dest = str(tmp_path)
    write_part(dest, "r1", 0, rows_to_table([row("a", codec_id="png"), row("b", codec_id="png")]))
    time.sleep(0.01)
    write_part(dest, "r2", 0, rows_to_table([row("a", run="r2", codec_id="webp")]))
    cur = {r["key"]: r for r in latest(read_manifest(dest)).to_pylist()}
    assert cur["a"]["codec_id"] == "webp" and cur["b"]["codec_id"] == "png"
    assert read_manifest(dest).num_rows == 3  # history is kept


def test_marker_records_rows_and_hash(tmp_path):
    write_part(str(tmp_path), "r1", 3, rows_to_table([row("a")]))
    marker = json.loads((tmp_path / "manifest/commits/r1-000003.json").read_text())
    assert marker["rows"] == 1 and len(marker["sha256"]) == 64


def test_plugin_column_clash_refused():
    import pyarrow as pa

    with pytest.raises(ValueError, match="clashes"):
        rows_to_table([row("a")], {"status": pa.string()})
