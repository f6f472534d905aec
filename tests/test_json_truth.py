"""--json tells the truth: one document per command, ``ok`` false on every non-zero exit
with ``error`` and ``reason``, and the documented fields (docs/operations.md, Scripting)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from conftest import encode_bytes, rng_image
from pixarc.cli import main


def run_json(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res, json.loads(res.stdout)  # exactly one document: json.loads refuses two


def assert_failed(res, doc, code: int, reason: str) -> None:
    assert res.exit_code == code, res.output
    assert doc["ok"] is False, doc
    assert doc["reason"] == reason, doc
    assert isinstance(doc["error"], str) and doc["error"].strip(), doc


@pytest.fixture
def archived(small_collection, tmp_path):
    dest = tmp_path / "d"
    res, doc = run_json("archive", small_collection, dest, "--json", "--shard-size", "2")
    assert res.exit_code == 0 and doc["ok"] is True, res.output
    return dest, doc


def test_archive_totals_are_the_runs(archived):
    dest, doc = archived
    totals = doc["totals"]
    assert set(totals) == {"images", "done", "reused", "rejected", "errors", "failed", "source_bytes",
                           "archive_bytes", "seconds", "workers"}
    stats = json.loads((dest / "manifest" / "runs" / f"{doc['run_id']}.json").read_text())
    assert totals["seconds"] == stats["seconds"]  # the run's wall clock, not the shards' times added up
    assert doc["shards"] == 5 and totals["done"] == 5  # 3 of 2 planned, re-cut for two workers: one per image


def test_a_crash_is_ok_false_with_exit_1(archived, monkeypatch):
    dest, _ = archived
    import pixarc.report

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(pixarc.report, "report_data", broken)
    res, doc = run_json("report", dest, "--json")
    assert_failed(res, doc, 1, "crash")
    assert "boom" in doc["error"]


def test_objects_that_failed_are_named_in_error_and_reason(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(encode_bytes(rng_image("RGB"), "PNG"))
    (src / "notes.txt").write_text("not an image")
    res, doc = run_json("archive", src, tmp_path / "d", "--json")
    assert_failed(res, doc, 1, "objects_failed")
    assert doc["totals"]["errors"] == 1 and doc["totals"]["done"] == 1


def test_verify_lists_a_problem_once_and_says_why_it_failed(archived):
    dest, _ = archived
    next(dest.rglob("*.pxa")).write_bytes(b"x")
    res, doc = run_json("verify", dest, "--json")
    assert_failed(res, doc, 3, "integrity")
    assert [p["problem"] for p in doc["problems"]] == ["size_mismatch"]
    assert set(doc["totals"]) == {"done"} and doc["totals"]["done"] == 4
    assert "size_mismatch" in doc["error"]


def test_usage_errors_and_missing_archives_are_ok_false(tmp_path):
    res, doc = run_json("verify", tmp_path / "nothing", "--json")
    assert_failed(res, doc, 2, "not_an_archive")
    res, doc = run_json("archive", tmp_path, tmp_path / "d", "--json", "--policy", "no-such-policy")
    assert res.exit_code == 2 and doc["ok"] is False and doc["error"], res.output


def test_repair_and_prune_speak_json(archived):
    dest, _ = archived
    res, doc = run_json("prune", dest, "--dry-run", "--json")
    assert res.exit_code == 0 and doc["command"] == "prune" and doc["ok"] is True and doc["paths"] == []
    res, doc = run_json("repair", dest, "--json")
    assert res.exit_code == 0 and doc["command"] == "repair" and doc["unrepairable"] == []
