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



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def start_server(tmp_path: Path) -> tuple[subprocess.Popen, str, dict]:
    """A real ``prefect server`` on a free port with its own SQLite home."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = open(tmp_path / "server.log", "w")  # a file, not a pipe: a full pipe would block the server
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return server, api, env


@pytest.mark.prefect
def test_served_archive_deployment_runs_on_a_real_server(small_collection, tmp_path):
    server, api, env = start_server(tmp_path)
    served = None
    try:
        wait_for(api + "/health", server)
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
            run = run_deployment(name, parameters={"shard_size": 2}, timeout=180)
            assert run.state.is_completed(), run.state
            with get_client(sync_client=True) as client:
                tasks = [t for t in client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
                         if t.flow_run_id == run.id]
                assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == ["archive-shard"] * 3
                assert all(t.state.is_completed() for t in tasks)
                assert client.read_flow_run(run.id).parameters["shard_size"] == 2
        from pixarc.manifest import latest, read_manifest

        assert latest(read_manifest(str(dest))).num_rows == 5
    finally:
        if served is not None:
            stop(served)
        stop(server)


def _deployment_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


@pytest.mark.prefect
@pytest.mark.schedule
def test_schedule_fires_without_a_trigger(small_collection, tmp_path):
    """`pixarc serve` with a one-minute cron: the server's scheduler creates the run, the
    served process executes it, and nobody calls run_deployment. This fails when the
    installed SQLAlchemy breaks Prefect's scheduler (SQLAlchemy 2.1: "Can't evaluate bulk
    DML statement" every loop, no run ever scheduled)."""
    server, api, env = start_server(tmp_path)
    served = None
    try:
        wait_for(api + "/health", server)
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
            log = (tmp_path / "server.log").read_text()
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
        stop(server)


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
