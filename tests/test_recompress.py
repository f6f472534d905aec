import pytest

from pixarc import recompress, runs
from pixarc.manifest import latest, read_manifest


def current(dest):
    return {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}


def test_plan_then_apply_policy_change(small_collection, tmp_path):
    dest = tmp_path / "d"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    before = current(dest)
    plan = runs.recompress_local(str(dest), policy="default", min_saving=0.05)
    decisions = {d.key: d for d in plan.decisions}
    assert len(decisions) == 5
    todo = {k for k, d in decisions.items() if d.action == "recompress"}
    assert todo, "the default policy (JXL/WebP) must beat PNG level 6 on some of these"
    assert all(decisions[k].saving >= 0.05 and decisions[k].new_codec != "png" for k in todo)
    assert current(dest) == before, "a plan writes nothing"

    applied = runs.recompress_local(str(dest), policy="default", min_saving=0.05, apply=True)
    assert applied.applied == len(todo)
    after = current(dest)
    for key in todo:
        assert after[key]["job"] == "recompress"
        assert after[key]["replaces_sha256"] == before[key]["bitstream_sha256"]
        assert after[key]["pixels_sha256"] == before[key]["pixels_sha256"]
        assert after[key]["bitstream_bytes"] < before[key]["bitstream_bytes"]
    assert runs.verify_local(str(dest), full=True).totals.done == 5
    # history keeps the old rows: lineage is complete
    assert read_manifest(str(dest)).num_rows == 5 + len(todo)
    again = runs.recompress_local(str(dest), policy="default", min_saving=0.05)
    assert not [d for d in again.decisions if d.action == "recompress"]


def test_outdated_codec_version_is_refreshed_without_the_originals(small_collection, tmp_path, monkeypatch):
    import shutil

    dest = tmp_path / "d"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    shutil.rmtree(small_collection)  # lossless rows recompress from the archive itself
    from pixarc_png import PNGCodec

    monkeypatch.setattr(PNGCodec, "version", lambda self: "Pillow 99 (new)")
    out = runs.recompress_local(str(dest), policy="png", apply=True)
    decisions = out.decisions
    assert {d.action for d in decisions} == {"recompress"} and all("outdated" in d.reason for d in decisions)
    assert all(r["codec_version"] == "Pillow 99 (new)" for r in current(dest).values())
    restored = runs.restore_local(str(dest), str(tmp_path / "out"))
    assert restored.totals.done == 5 and not restored.problems


def test_lossy_rows_need_their_original(small_collection, tmp_path):
    dest = tmp_path / "d"
    runs.archive_local(str(small_collection), str(dest), policy="lossy")
    lossy = [r for r in current(dest).values() if not r["lossless"]]
    assert lossy, "the lossy policy must produce some lossy rows here"
    for r in lossy:
        (small_collection / r["key"]).write_bytes(b"changed")
    out = runs.recompress_local(str(dest), policy="default", min_saving=0.0)
    skipped = {d.key: d for d in out.decisions if d.action == "skip"}
    assert {r["key"] for r in lossy} <= set(skipped)
    assert all("original" in skipped[r["key"]].reason for r in lossy)


@pytest.mark.prefect
def test_recompress_flow_and_deployments(small_collection, tmp_path):
    from pixarc.flows.deployments import build_deployments
    from pixarc.flows.recompress import recompress_flow

    dest = tmp_path / "d"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    res = recompress_flow(dest=str(dest), policy="default", min_saving=0.05, apply=True)
    assert res.applied >= 1
    deps = build_deployments(str(dest), src=str(small_collection), archive_cron="0 * * * *",
                             verify_cron="0 3 * * 0", recompress_cron="0 4 1 * *")
    by_flow = {d.name.split("-")[0]: d for d in deps}
    assert set(by_flow) == {"verify", "archive", "recompress"}
    crons = {k: d.schedules[0].schedule.cron for k, d in by_flow.items()}
    assert crons == {"verify": "0 3 * * 0", "archive": "0 * * * *", "recompress": "0 4 1 * *"}
    assert by_flow["verify"].parameters == {"dest": str(dest), "full": True, "record": True}
    assert by_flow["recompress"].parameters["apply"] is True
    # one run at a time per DEST; a run due meanwhile is skipped with Prefect's reason, not
    # queued (queued runs were re-scheduled each at "now + a wait" and ran out of order)
    for d in deps:
        assert d.concurrency_limit == 1
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW", d.name


def test_crash_before_commit_keeps_the_old_bitstream_referenced(small_collection, tmp_path, monkeypatch):
    dest = tmp_path / "d"
    runs.archive_local(str(small_collection), str(dest), policy="png")
    before = current(dest)

    def dies(*a, **kw):
        raise KeyboardInterrupt("killed before the manifest part was committed")

    monkeypatch.setattr(recompress, "write_part", dies)
    with pytest.raises(KeyboardInterrupt):
        runs.recompress_local(str(dest), policy="default", min_saving=0.05, apply=True)
    assert current(dest) == before
    check = runs.verify_local(str(dest), full=True)
    assert check.totals.done == 5  # every current row's bitstream is intact
    # ... and what the killed run wrote is named by no row: reported, never silently kept
    orphans = {p.key for p in check.problems}
    assert orphans and {p.problem for p in check.problems} == {"orphan_bitstream"}
    assert all(k.endswith(".pxa") and k not in {r["bitstream_uri"] for r in before.values()} for k in orphans)
    from pixarc.repair import repair

    assert repair(str(dest)).rows_rebuilt == len(orphans)  # their rows come back from their headers
    assert not runs.verify_local(str(dest), full=True).problems
    monkeypatch.undo()
    after = current(dest)
    adopted = {k for k, r in after.items() if r["bitstream_uri"] in orphans}
    assert adopted and all(after[k]["job"] == "repair" for k in adopted)  # the verified re-encodes are current
    done = runs.recompress_local(str(dest), policy="default", min_saving=0.05, apply=True)
    assert not any(d.key in adopted and d.action == "recompress" for d in done.decisions)
    for key in adopted:  # the version it replaced stays until prune
        assert (dest / before[key]["bitstream_uri"]).exists()
    assert not runs.verify_local(str(dest), full=True).problems
    restored = runs.restore_local(str(dest), str(tmp_path / "out"))
    assert restored.totals.done == 5 and not restored.problems


def test_plan_encodes_a_sample_and_estimates_the_rest(tmp_path, monkeypatch):
    """A plan must stay cheap on a large archive: per group of alike rows (route, codec,
    parameters) it encodes ``sample`` rows and estimates the others, and says so."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    yy, xx = np.mgrid[0:40, 0:56]
    for i in range(7):
        a = np.stack([100 + 60 * np.sin(xx / (5 + i) + c) for c in range(3)], -1)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(src / f"i{i}.png")
    dest = tmp_path / "d"
    runs.archive_local(str(src), str(dest), policy="png")
    encodes = []
    real = recompress.encode_route
    monkeypatch.setattr(recompress, "encode_route", lambda *a, **k: (encodes.append(1), real(*a, **k))[1])
    plan = runs.recompress_local(str(dest), policy="default", min_saving=0.0)
    decisions = plan.decisions
    assert len(decisions) == 7
    groups = {(r["route"], r["codec_id"], r["params_hash"]) for r in current(dest).values()}
    assert len(encodes) == 2 * len(groups) < 7  # two sampled rows per group, not one encode per row
    estimated = [d for d in decisions if d.estimated]
    assert len(estimated) == 7 - len(encodes)
    assert all("estimated from 2 sampled" in d.reason and d.new_bytes > 0 for d in estimated)
    applied = runs.recompress_local(str(dest), policy="default", min_saving=0.0, apply=True)
    assert not any(d.estimated for d in applied.decisions)  # --apply encodes every row
