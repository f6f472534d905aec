"""The product path: CLI -> Prefect flows (temporary local API) -> engine."""

import inspect
import json
import types
import typing

import pytest
from click.testing import CliRunner

from pixarc.cli import main
from pixarc.manifest import latest, read_manifest


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def invoke(runner, *args, code=0):
    res = runner.invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


@pytest.mark.prefect
def test_archive_verify_restore_through_prefect(runner, small_collection, tmp_path):
    dest, out = tmp_path / "dest", tmp_path / "out"
    text = invoke(runner, "archive", str(small_collection), str(dest), "--shard-size", "1", "--no-progress",
                  "--engine", "prefect")
    assert "starting Prefect" not in text  # a server is configured (the session's): no temporary API
    assert "5 found" in text and "5 done" in text
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert len(rows) == 5 and all(r["status"] == "done" for r in rows)
    # the summary table shows what the manifest holds: one (domain, route, codec) line per group
    printed = {tuple(c.strip() for c in line.split("│")[1:4]) for line in text.splitlines() if line.startswith("│")}
    assert {(r["domain"], r["route"], r["codec_id"]) for r in rows} <= printed, text
    run_id = rows[0]["run_id"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_DESC)
        archive_runs = [fr for fr in flow_runs if fr.parameters.get("run_id") == run_id]
        assert len(archive_runs) == 1 and archive_runs[0].state.is_completed()
        task_runs = client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
        shard_tasks = [t for t in task_runs if t.flow_run_id == archive_runs[0].id]
        # 5 images, shards of 1: one task per shard, named by job and shard
        assert sorted(t.name for t in shard_tasks) == [f"archive-shard-{i}" for i in range(5)]
        params = archive_runs[0].parameters
        assert set(params) == {"src", "dest", "policy", "shard_size", "run_id", "device", "batch_size",
                                "follow_symlinks", "include", "exclude", "limit", "wait", "max_bytes"}
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        import time

        for _ in range(40):  # run logs reach the API in batches, shortly after the run
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[archive_runs[0].id])))
            shard_lines = sorted(lg.message for lg in logs if lg.message.startswith("archive shard "))
            if len(shard_lines) >= 5:
                break
            time.sleep(0.5)
        assert [m.split(":")[0] for m in shard_lines] == [f"archive shard {i}" for i in range(5)]
        assert all(lg.level == 20 for lg in logs if lg.message.startswith("archive shard "))  # INFO: the UI's default
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[archive_runs[0].id])), limit=10)
        from pixarc.flows.jobs import dest_key

        assert len(arts) == 1 and arts[0].key == f"pixarc-archive-{dest_key(str(dest))}"
        assert run_id in arts[0].data and "| all | all | 5 |" in arts[0].data

    text = invoke(runner, "archive", str(small_collection), str(dest), "--no-progress", "--engine", "prefect")
    assert "5 already archived" in text
    text = invoke(runner, "verify", str(dest), "--full", "--no-progress", "--engine", "prefect")
    assert "5 of 5 bitstream(s) OK" in text
    text = invoke(runner, "restore", str(dest), str(out), "--no-progress", "--engine", "prefect")
    assert "restored 5 of 5" in text

    victim = next(dest.rglob("*.pxa"))
    victim.write_bytes(victim.read_bytes()[:-5])
    text = invoke(runner, "verify", str(dest), "--no-progress", "--json-out", str(tmp_path / "v.json"),
                  "--engine", "prefect", code=3)
    assert "size_mismatch" in text
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["problems"][0]["problem"] == "size_mismatch"
    with get_client(sync_client=True) as client:  # what the operator sees: a red run and a problems artifact
        runs = [fr for fr in client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_DESC)
                if fr.parameters.get("run_id") == report["run_id"]]
        assert len(runs) == 1 and runs[0].state.is_failed(), runs[0].state
        assert "1 problem(s)" in runs[0].state.message
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])), limit=10)
        keyed = [a for a in arts if a.key]  # (Prefect adds an unkeyed one describing the exception)
        assert [a.key for a in keyed] == [f"pixarc-verify-problems-{dest_key(str(dest))}"]
        assert "size_mismatch" in keyed[0].data and victim.stem.split(".")[0] in keyed[0].data
        # what to run next, with DEST as an absolute URI (the artifact is read far from the run)
        assert f"pixarc repair {dest.resolve().as_uri()}" in keyed[0].data, keyed[0].data
        assert f"pixarc repair {dest.resolve().as_uri()}" in runs[0].state.message


@pytest.mark.prefect
def test_a_verify_that_finds_damage_fails_without_a_traceback(small_collection, tmp_path):
    """Damage found is a result, not a crash: exit 3, a Failed run, the next step; no traceback."""
    import os
    import subprocess
    import sys

    dest = tmp_path / "dest"
    invoke(CliRunner(), "archive", str(small_collection), str(dest), "--engine", "local", "--no-progress")
    victim = next(dest.rglob("*.pxa"))
    victim.write_bytes(victim.read_bytes()[:-5])
    res = subprocess.run([sys.executable, "-m", "pixarc.cli", "verify", str(dest), "--engine", "prefect",
                          "--no-progress"], capture_output=True, text=True, timeout=600, env=dict(os.environ),
                         cwd=tmp_path)
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"next: pixarc repair {dest.resolve().as_uri()}" in res.stderr, res.stderr[-3000:]


def test_tasks_take_only_small_records():
    """Pixels and bitstreams never travel through task parameters or results: a task gets a
    job record of small values, whose registry travels as its allowlist."""
    import pickle

    from pixarc import jobs as contract
    from pixarc.flows import jobs
    from pixarc.plan import Shard
    from pixarc.plugins import Registry, build_plugin_manager

    hints = typing.get_type_hints(jobs.shard_task.fn)
    hints.pop("return")
    assert set(hints) == {"job", "shard"} and hints["shard"] is Shard
    small = {str, bool, int, float, type(None), tuple}  # what a job record may hold
    job_types = [contract.job_class(name) for name in contract.JOBS]
    assert len(job_types) == 4  # archive, restore, verify, recompress
    for job in job_types:
        for name, hint in typing.get_type_hints(job).items():
            if name in ("name", "holder", "retries", "writes") or hint is Registry:
                continue  # class constants; the registry (below)
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            kinds = set(typing.get_args(hint)) if union else {hint}
            assert {typing.get_origin(k) or k for k in kinds} <= small, (job.__name__, name, hint)
            if typing.get_origin(hint) is tuple:
                assert set(typing.get_args(hint)) <= {str, ...}, (job.__name__, name, hint)
    reg = build_plugin_manager()
    record = contract.job_class("archive")("src", "dest", "run", registry=reg)
    sent = pickle.dumps(record)  # what a Dask worker receives
    assert len(sent) < 2000, len(sent)
    back = pickle.loads(sent)
    assert back == record and back.registry.selection == reg.selection and set(back.registry.codecs) == set(reg.codecs)


def test_every_job_is_a_flow_with_the_records_parameters():
    """The engine runs a job on Prefect by passing its record's parameters to its flow."""
    from pixarc import flows
    from pixarc import jobs as contract
    from pixarc.flows import jobs as prefect_jobs  # noqa: F401  (the real flows)

    for name in contract.JOBS:
        record = contract.job_class(name)(*(["src", "dest"] if name in ("archive", "restore") else ["dest"]),
                                          run_id="r")
        accepted = set(inspect.signature(flows.flow_for(name).fn).parameters)
        assert set(contract.parameters(record)) <= accepted, (name, set(contract.parameters(record)) - accepted)
        assert flows.flow_for(name).name == f"pixarc-{name}"


def test_local_engine_cli_and_report(runner, small_collection, tmp_path):
    dest = tmp_path / "d"
    text = invoke(runner, "archive", str(small_collection), str(dest), "--engine", "local", "--no-progress")
    assert "5 done" in text
    text = invoke(runner, "report", str(dest), "--html", str(tmp_path / "r.html"))
    assert "all" in text and "lossless" in text and "status: done 5" in text
    page = (tmp_path / "r.html").read_text()
    assert page.count("<tr>") >= 3 and "data:image/png;base64," in page and "Bytes saved" in page


def test_dry_run_writes_nothing(runner, small_collection, tmp_path):
    dest = tmp_path / "never"
    text = invoke(runner, "archive", str(small_collection), str(dest), "--dry-run")
    assert "nothing written" in text and "misc/mcmaster_13_q90.jpg" in text
    assert not dest.exists()


def test_plugins_and_classify_commands(runner, small_collection):
    text = invoke(runner, "plugins")
    for name in ("png", "webp-lossless", "jxl-lossless", "avif", "store", "default_router"):
        assert name in text
    res = runner.invoke(main, ["classify", str(small_collection), "--jsonl"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]  # stderr may carry a fallback note
    assert len(recs) == 5
    assert all(r["domain"] in ("natural", "comic", "line", "vector", "screenshot") for r in recs)
    assert all(0.0 <= r["confidence"] <= 1.0 for r in recs)


def test_bad_policy_is_a_clean_cli_error(runner, small_collection, tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[routes.line]\ncodecs = []\n")
    text = invoke(runner, "archive", str(small_collection), str(tmp_path / "d"), "--policy", str(bad),
                  "--engine", "local", code=2)
    assert "error" in text
