"""Shared fixtures. Prefect runs against a throw-away home; no installed third-party
plugin is loaded (the allowlist names the built-ins)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="pixarc-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # run loggers reach the API (tests read them)
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # a quiet console
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PIXARC_PLUGINS"] = "png,webp,jpeg,jxl,avif,store,stats_classifier,default_router"  # + adaptive where a test sets weights
os.environ.pop("PIXARC_DISABLE_PLUGINS", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"


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


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
