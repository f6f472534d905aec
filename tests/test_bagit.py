"""export-bagit: a bag that can be held against the sources' sha256 (a tag file maps each
payload file to its original), and --originals, which bags the source bytes themselves."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
from click.testing import CliRunner

from pixarc import runs
from pixarc.cli import main

bagit = pytest.importorskip("bagit", reason="bagit-python is not installed: pip install 'pixarc[bagit]'")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(*args, code=0) -> dict:
    res = CliRunner().invoke(main, ["export-bagit", *map(str, args), "--json"])
    assert res.exit_code == code, res.output
    return json.loads(res.stdout)


def sources_tag(out) -> list[dict]:
    with open(out / "pixarc-sources.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_restored_bag_names_each_files_original_sha256(small_collection, tmp_path):
    dest, out = tmp_path / "d", tmp_path / "bag"
    runs.archive_local(str(small_collection), str(dest))
    doc = export(dest, out)
    assert doc["payload"] == "restored" and doc["images"] == 5
    bag = bagit.Bag(str(out))
    bag.validate()
    assert "pixarc-sources.tsv" in bag.tagfile_entries()  # covered by the tag manifests
    table = sources_tag(out)
    assert sorted(r["key"] for r in table) == sorted(str(p.relative_to(small_collection))
                                                     for p in small_collection.rglob("*") if p.is_file())
    for r in table:
        assert r["source_sha256"] == sha256(small_collection / r["key"])  # what the sources hold
        payload = bag.payload_entries()[r["path"]]["sha256"]
        assert r["identical_to_source"] == str(payload == r["source_sha256"])
    # the JPEG comes back as a PNG of its pixels: not the original's bytes, and the bag says so
    jpeg = next(r for r in table if r["key"].endswith(".jpg"))
    assert jpeg["path"].endswith(".jpg.png") and jpeg["identical_to_source"] == "False"
    assert bag.info["Pixarc-Payload"] == "restored"


def test_originals_bag_holds_the_source_bytes(small_collection, tmp_path):
    dest, out = tmp_path / "d", tmp_path / "bag"
    runs.archive_local(str(small_collection), str(dest))
    doc = export(dest, out, "--originals")
    assert doc["payload"] == "originals" and doc["images"] == 5 and doc["identical_to_sources"] == 5
    bag = bagit.Bag(str(out))
    bag.validate()
    for path, sums in bag.payload_entries().items():
        assert sums["sha256"] == sha256(small_collection / path.removeprefix("data/"))
    assert bag.info["Pixarc-Payload"] == "originals"


def test_originals_bag_refuses_a_changed_source(small_collection, tmp_path):
    dest, out = tmp_path / "d", tmp_path / "bag"
    runs.archive_local(str(small_collection), str(dest))
    changed = small_collection / "line" / "ocal_galicia_01.png"
    changed.write_bytes(changed.read_bytes() + b"\0")
    doc = export(dest, out, "--originals", code=1)
    assert doc["ok"] is False and doc["reason"] == "source_problems" and doc["bag"] is False
    assert [p["problem"] for p in doc["problems"]] == ["source_changed"]
    assert not (out / "bagit.txt").exists()
