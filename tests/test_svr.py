"""SVR machinery on a briefly trained tiny model (no train/crops here): the two-stage
training loop, integer-only bitstreams, m as the rate knob, cross-process decode."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import encode_bytes
from pixarc.images import probe_and_load


@pytest.fixture(scope="module")
def svr_weights(tmp_path_factory):
    from pixarc_svr.train import train

    root = tmp_path_factory.mktemp("svr")
    data = root / "data"
    data.mkdir()
    r = np.random.default_rng(0)
    for i in range(3):
        yy, xx = np.mgrid[0:96, 0:128]
        a = np.stack([128 + 90 * np.sin(xx / (5 + i) + c) for c in range(3)], -1) + r.normal(0, 8, (96, 128, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(data / f"{i}.png")
    entry = train(str(data), str(root / "w"), stage1_steps=4, stage2_steps=4, batch=2, patch=64, width=16)
    return root / "w", entry


@pytest.fixture
def svr(svr_weights, monkeypatch):
    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", str(svr_weights[0]))
    from pixarc_svr import SVRCodec

    return SVRCodec()


def image(w=70, h=45):
    r = np.random.default_rng(1)
    return probe_and_load(encode_bytes(Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG"))


def test_weights_entry(svr_weights):
    _, entry = svr_weights
    assert entry["arch"] == "svr" and entry["stage1_steps"] == 4 and len(entry["sha256"]) == 64


def test_round_trip_every_m_and_rate_grows_with_m(svr):
    src = image()
    sizes = {}
    for m in (1, 2, 3, 4):
        payload = svr.encode(src, svr.validate_params({"m": m}))
        a, b = svr.decode(payload), svr.decode(payload)
        assert a.image.size == (70, 45) and a.fingerprint == b.fingerprint
        sizes[m] = len(payload)
    assert sizes[1] < sizes[2] < sizes[4], sizes  # m is the rate knob: >= 3 distinct operating points


def test_m1_sends_no_weights(svr):
    from pixarc_svr import _HEAD

    payload = svr.encode(image(), svr.validate_params({"m": 1}))
    pos = _HEAD.size
    lengths = []
    for _ in range(3):
        n = int.from_bytes(payload[pos : pos + 4], "big")
        lengths.append(n)
        pos += 4 + n
    assert lengths[2] == 0 and lengths[0] > 0 and lengths[1] > 0


def test_garbage_is_a_codec_error(svr):
    from pixarc.errors import CodecError

    payload = svr.encode(image(), svr.validate_params({"m": 2}))
    for cut in (0, 3, len(payload) // 2, len(payload) - 1):
        with pytest.raises(CodecError):
            svr.decode(payload[:cut])


def test_fresh_process_decodes_the_same_integers(svr, svr_weights, tmp_path):
    payload = svr.encode(image(), svr.validate_params({"m": 3}))
    (tmp_path / "p.bin").write_bytes(payload)
    code = ("import sys; from pixarc_svr import SVRCodec; "
            "print('FP', SVRCodec().decode(open(sys.argv[1], 'rb').read()).fingerprint)")
    env = {**os.environ, "PIXARC_SVR_WEIGHTS": str(svr_weights[0])}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.bin")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("FP ")[1].strip() == svr.decode(payload).fingerprint


def test_without_weights_it_steps_aside(monkeypatch):
    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", "/nonexistent")
    from pixarc.images import ImageInfo
    from pixarc_svr import SVRCodec

    assert "no weights" in SVRCodec().unsupported_reason(ImageInfo(64, 64, "RGB", 8, "PNG", "RGB"))
