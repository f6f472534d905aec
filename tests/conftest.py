"""Shared fixtures. Prefect runs against a throw-away home; no installed third-party
plugin is loaded (the allowlist names the built-ins).

Prefect: every test that runs a flow is marked ``prefect`` and talks to one real API
server for the whole session (:func:`prefect_server`), started once with a patient
start-up timeout and stopped (its whole process group) when the session ends. Prefect's
temporary per-process API is switched off: each one is a server start that times out on
a busy machine ("Timed out while attempting to connect to ephemeral Prefect API server")
and a process that can outlive the test that started it.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="pixarc-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # run loggers reach the API (tests read them)
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # a quiet console
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"  # a flow outside the `prefect` fixture fails loudly
os.environ["PIXARC_PLUGINS"] = "png,webp,jpeg,jxl,avif,store,stats_classifier,default_router"  # + adaptive where a test sets weights
os.environ.pop("PIXARC_DISABLE_PLUGINS", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"


# Seconds the session's Prefect server may take to answer /health: it is started once, and
# a loaded 2-core machine was seen to need over a minute.
PREFECT_SERVER_START_TIMEOUT = float(os.environ.get("PIXARC_TEST_PREFECT_START_TIMEOUT", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the process group of ``proc`` (a server and its workers), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_for_health(api: str, proc: subprocess.Popen, seconds: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(api + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"prefect server not healthy after {seconds:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@dataclass(frozen=True)
class PrefectServer:
    api: str  # http://127.0.0.1:PORT/api
    log: Path  # the server's stdout and stderr


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> PrefectServer:
    """One real ``prefect server`` (SQLite, its own home) for the session."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = home / "server.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    atexit.register(stop_process_group, proc, 10)  # also when the session ends without teardown
    try:
        wait_for_health(api, proc, PREFECT_SERVER_START_TIMEOUT, log)
        yield PrefectServer(api, log)
    finally:
        stop_process_group(proc)


@pytest.fixture(autouse=True)
def _prefect_api(request):
    """Tests marked ``prefect`` run against the session's server: in this process (Prefect's
    settings) and in the processes they start (``PREFECT_API_URL`` in the environment)."""
    if request.node.get_closest_marker("prefect") is None:
        yield None
        return
    api = request.getfixturevalue("prefect_server").api
    from prefect.settings import PREFECT_API_URL, temporary_settings

    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_API_URL", api)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture
def small_collection(tmp_path) -> Path:
    """A few real example images of different domains and modes (fast codecs on them)."""
    src = tmp_path / "src"
    picks = [
        "screenshot/gimp_css-keywords.png",
        "screenshot/gimp_fonts-grid-dialog.png",
        "line/ocal_galicia_01.png",
        "misc/ocal_two_cats_palette.gif",
        "misc/mcmaster_13_q90.jpg",
    ]
    for p in picks:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / p, src / p)
    return src


def rng_image(mode: str, size=(48, 40), seed=0) -> Image.Image:
    r = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(r.integers(0, 65536, (h, w), dtype=np.uint16))
    a = r.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    image = Image.fromarray(a[..., 0] if len(mode) == 1 else a)
    assert image.mode == mode
    return image


def encode_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def install_plugins(monkeypatch, **plugins) -> None:
    """Make ``plugins`` (entry-point name -> module, or a module name that does not import)
    look installed and allowed: every registry built from the environment (the CLI's, a
    flow's) finds them through the entry-point group, as after a pip install."""
    import types
    from importlib import metadata as real

    from pixarc import plugins as loader

    eps = []
    for name, mod in plugins.items():
        if isinstance(mod, str):
            eps.append(real.EntryPoint(name, mod, "pixarc"))
        else:
            monkeypatch.setitem(sys.modules, mod.__name__, mod)
            eps.append(real.EntryPoint(name, mod.__name__, "pixarc"))
    monkeypatch.setattr(loader, "metadata", types.SimpleNamespace(
        entry_points=lambda group: [*real.entry_points(group=group), *eps]))
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + "," + ",".join(plugins))


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
