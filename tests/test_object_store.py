"""Every command that takes a DEST or SRC against a real S3 server process (moto_server on
127.0.0.1, started and stopped here), its endpoint given only by --storage-option."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import fsspec
import pytest
from click.testing import CliRunner

pytest.importorskip("s3fs", reason="s3fs (the fsspec S3 backend) is not installed: pip install -e '.[test]'")
pytest.importorskip("moto.server", reason="moto[server] is not installed: pip install -e '.[test]'")

from pixarc.cli import main  # noqa: E402

BUCKET = "pixarc-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on a free local port, with one bucket; stopped after the module."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120  # generous: the machine may be busy
        while True:
            assert proc.poll() is None, "moto_server exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.time() < deadline, "moto_server did not start in 120 s"
                time.sleep(0.3)
        fs = fsspec.filesystem("s3", endpoint_url=url, key="testing", secret="testing", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def s3_options(s3_endpoint, monkeypatch):
    """The --storage-option flags for the server; fsspec's process-wide defaults that the
    flags set are taken back afterwards."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    yield ["--storage-option", f"s3.endpoint_url={s3_endpoint}", "--storage-option", "s3.key=testing",
           "--storage-option", "s3.secret=testing"]
    _forget_s3_options()


def _forget_s3_options() -> None:
    fsspec.config.conf.pop("s3", None)
    for name in [n for n in os.environ if n.startswith("FSSPEC_S3_")]:
        del os.environ[name]


def jdoc(*args, code=0) -> dict:
    """One command as in a fresh process: what an earlier command set in fsspec is gone."""
    _forget_s3_options()
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.exception)
    doc = json.loads(res.stdout)
    assert doc["ok"] is (code == 0), doc
    return doc


def test_every_command_applies_storage_options_before_the_first_access(small_collection, tmp_path, s3_options):
    dest = f"s3://{BUCKET}/arc"
    doc = jdoc("archive", small_collection, dest, "--json", *s3_options)
    assert doc["totals"]["done"] == 5
    doc = jdoc("verify", dest, "--full", "--json", *s3_options)
    assert doc["totals"]["done"] == 5 and doc["problems"] == []
    doc = jdoc("restore", dest, tmp_path / "out", "--json", *s3_options)
    assert doc["totals"]["done"] == 5 and len(list((tmp_path / "out").rglob("*.png"))) >= 3
    doc = jdoc("recompress", dest, "--json", *s3_options)
    assert len(doc["decisions"]) == 5
    doc = jdoc("report", dest, "--json", *s3_options)
    assert doc["objects"] == 5
    doc = jdoc("prune", dest, "--dry-run", "--json", *s3_options)
    assert doc["paths"] == []
    doc = jdoc("repair", dest, "--json", *s3_options)
    assert doc["unrepairable"] == []
    doc = jdoc("export-bagit", dest, tmp_path / "bag", "--json", *s3_options)
    assert doc["images"] == 5 and doc["bag"] is True
    # a SRC on the object store too: classify and archive read it there
    src = f"s3://{BUCKET}/src"
    fs = fsspec.filesystem("s3", endpoint_url=s3_options[1].split("=", 1)[1], key="testing", secret="testing")
    fs.put(str(small_collection), f"{BUCKET}/src", recursive=True)
    doc = jdoc("classify", src, "--json", *s3_options)
    assert len(doc["images"]) == 5
    doc = jdoc("archive", src, f"s3://{BUCKET}/arc2", "--json", *s3_options)
    assert doc["totals"]["done"] == 5


def test_an_unreachable_endpoint_is_one_line_and_ok_false(small_collection, tmp_path, s3_options):
    dest = f"s3://{BUCKET}/arc3"
    jdoc("archive", small_collection, dest, "--json", *s3_options)
    closed = f"http://127.0.0.1:{_free_port()}"
    bad = ["--storage-option", f"s3.endpoint_url={closed}", "--storage-option", "s3.key=testing",
           "--storage-option", "s3.secret=testing",
           "--storage-option", 's3.config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2}']
    _forget_s3_options()
    res = CliRunner().invoke(main, ["verify", dest, "--json", *bad])
    assert res.exit_code == 4, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["reason"] == "storage_error" and closed in doc["error"], doc
    assert "Traceback" not in res.stderr and "storage error" in res.stderr
