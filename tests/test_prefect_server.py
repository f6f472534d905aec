"""A real Prefect server (SQLite), a served deployment of `archive`, runs checked through the API."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pixarc.flows.deployments import _slug



def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.prefect
def test_served_archive_deployment_runs_on_a_real_server(small_collection, tmp_path, prefect_server):
    api, env = prefect_server.api, dict(os.environ)
    served = None
    try:
        dest = tmp_path / "dest"
        served = subprocess.Popen([sys.executable, "-m", "pixarc.cli", "serve", str(dest), "--src", str(small_collection),
                                   "--verify-cron", ""], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import TaskRunSort
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        name = f"pixarc-archive/archive-{_slug(str(dest))}"
        with temporary_settings(updates={PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                deadline = time.time() + 60
                while True:  # the serve process registers the deployment
                    try:
                        client.read_deployment_by_name(name)
                        break
                    except Exception:
                        if time.time() > deadline or served.poll() is not None:
                            raise
                        time.sleep(0.5)
            run = run_deployment(name, parameters={"shard_size": 1}, timeout=180)
            assert run.state.is_completed(), run.state
            with get_client(sync_client=True) as client:
                tasks = [t for t in client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
                         if t.flow_run_id == run.id]
                assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == ["archive-shard"] * 5  # one per image
                assert all(t.state.is_completed() for t in tasks)
                assert client.read_flow_run(run.id).parameters["shard_size"] == 1
        from pixarc.manifest import latest, read_manifest

        assert latest(read_manifest(str(dest))).num_rows == 5
    finally:
        if served is not None:
            stop(served)


def _deployment_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


@pytest.mark.prefect
@pytest.mark.schedule
def test_schedule_fires_without_a_trigger(small_collection, tmp_path, prefect_server):
    """`pixarc serve` with a one-minute cron: the server's scheduler creates the run, the
    served process executes it, and nobody calls run_deployment. This fails when the
    installed SQLAlchemy breaks Prefect's scheduler (SQLAlchemy 2.1: "Can't evaluate bulk
    DML statement" every loop, no run ever scheduled)."""
    api, env = prefect_server.api, dict(os.environ)
    served = None
    try:
        dest = tmp_path / "dest"
        served = subprocess.Popen([sys.executable, "-m", "pixarc.cli", "serve", str(dest), "--src", str(small_collection),
                                   "--archive-cron", "* * * * *", "--verify-cron", "", "--shard-size", "2",
                                   "--workers", "2"], env=env,
                                  stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        name = f"pixarc-archive/archive-{_slug(str(dest))}"
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.time() + 150  # next minute boundary + the runner's poll + the run
            deployment = None
            runs: list = []
            while time.time() < deadline:
                assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                if deployment is None:
                    try:
                        deployment = client.read_deployment_by_name(name)
                    except Exception:
                        time.sleep(1)
                        continue
                runs = _deployment_runs(client, deployment.id)
                if any(r.state.is_completed() for r in runs):
                    break
                time.sleep(2)
            log = prefect_server.log.read_text()
            assert deployment is not None, log[-3000:]
            done = [r for r in runs if r.state.is_completed()]
            assert done, f"no completed scheduled run; runs: {[(r.name, r.state_name) for r in runs]}\n{log[-3000:]}"
            assert all(r.auto_scheduled for r in done)  # created by the scheduler, not triggered
            assert done[0].parameters["shard_size"] == 2  # serve's --shard-size reached the run
            assert deployment.global_concurrency_limit is not None
            assert deployment.global_concurrency_limit.limit == 1  # one run at a time per DEST
        assert "Can't evaluate bulk DML" not in log
        served.send_signal(signal.SIGTERM)  # stops cleanly: exit status 0, no traceback
        assert served.wait(60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert "Traceback" not in (tmp_path / "serve.log").read_text(), (tmp_path / "serve.log").read_text()[-4000:]
        from pixarc.manifest import latest, read_manifest

        assert latest(read_manifest(str(dest))).num_rows == 5
    finally:
        if served is not None:
            stop(served)


@pytest.mark.prefect
def test_serve_stops_on_sigterm_when_started_as_a_background_job(small_collection, tmp_path):
    """A script starts `pixarc serve` as a background job (the shell starts it with SIGINT
    ignored) and later sends SIGTERM: serve stops, exit status 0, no traceback."""
    log, pidfile, rcfile = tmp_path / "serve.log", tmp_path / "serve.pid", tmp_path / "serve.rc"
    script = tmp_path / "start.sh"
    probe = tmp_path / "sigint.txt"
    script.write_text(  # first a probe: how does a background job of this script find SIGINT?
        f'"{sys.executable}" -c "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)" > "{probe}" &\nwait\n'
        f'"{sys.executable}" -m pixarc.cli serve "{tmp_path / "dest"}" --src "{small_collection}" '
        f'--archive-interval 5 --verify-cron "" > "{log}" 2>&1 &\n'
        f'echo $! > "{pidfile}"\nwait $!\necho $? > "{rcfile}"\n')
    shell = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # registration against the server, on a busy machine
        while "serving archive" not in (log.read_text() if log.exists() else ""):
            assert shell.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        pid = int(pidfile.read_text())
        assert probe.read_text().strip() == "True", probe.read_text()  # SIGINT ignored: the case reported
        time.sleep(3)  # let it get into the runner's loop
        os.kill(pid, signal.SIGTERM)
        shell.wait(120)  # the old serve never stopped here: it went on scheduling runs
        assert rcfile.read_text().strip() == "0", log.read_text()[-3000:]
        text = log.read_text()
        assert "pixarc serve: stopped" in text and "Traceback" not in text, text[-3000:]
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)  # the script and the serve job it started
            shell.wait(10)


def test_serve_refuses_a_dest_claimed_by_another_source_at_start(small_collection, tmp_path):
    """The claim is checked when serve starts (before Prefect), not at the first run."""
    from click.testing import CliRunner

    from pixarc.cli import main
    from pixarc.layout import claim_dest

    other = tmp_path / "other"
    other.mkdir()
    claim_dest(str(other), str(tmp_path / "dest"))
    res = CliRunner().invoke(main, ["serve", str(tmp_path / "dest"), "--src", str(small_collection),
                                    "--verify-cron", ""])
    assert res.exit_code == 2 and "already archives" in res.output
