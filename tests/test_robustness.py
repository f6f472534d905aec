"""Hostile bitstreams: every defect ends in a typed error, never a crash, hang or huge allocation."""

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import encode_bytes, rng_image
from pixarc.container import Container, pack, unpack
from pixarc.checks import decode_container
from pixarc.errors import ContainerError, PixarcError
from pixarc.images import probe_and_load
from pixarc.plugins import default_registry
from test_images import raw_png

REG = default_registry()
PIXEL_CODECS = [c for c in sorted(REG.codecs) if c != "store"]


def archived(codec_id: str, mode: str = "RGB") -> tuple[bytes, Container]:
    """A real container as the archive job writes it (lossy ones with their recorded hash)."""
    from pixarc.device import CPU
    from pixarc.encode import encode_verified

    codec = REG.codec(codec_id)
    src = probe_and_load(encode_bytes(rng_image(mode, (40, 24)), "PNG"))
    enc = encode_verified(codec, codec.validate_params({}), src, "test", CPU)
    return enc.blob, unpack(enc.blob)


@pytest.mark.parametrize("codec_id", PIXEL_CODECS + ["store"])
@settings(max_examples=40, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_flipped_payload_with_valid_crcs_never_passes_as_good(codec_id, pos, bit):
    """An attacker (or bit rot before packing) can forge the CRCs; the pixel check still holds."""
    blob, c = archived(codec_id)
    data = bytearray(c.payload)
    pos %= len(data)
    data[pos] ^= 1 << bit
    c.sections["DATA"] = bytes(data)
    try:
        _, decoded = decode_container(pack(c), REG)
    except PixarcError:
        return
    # decoding succeeded: then it must really be the promised content
    # (possible when the flip hit bytes the format ignores)
    _, clean = decode_container(blob, REG)
    if codec_id == "store":
        assert decoded.original == clean.original
    else:
        assert decoded.image.tobytes() == clean.image.tobytes()


def test_payload_claiming_huge_dimensions_is_refused_cheaply():
    c = Container("png", 1, 12_000, 12_000, "L", 8, "aa" * 32, "bb" * 32,
                  meta={"lossless": True}, sections={"DATA": b"\x01L" + raw_png(12_000, 12_000, 8, 0, b"")})
    with pytest.raises(PixarcError, match="refused"):
        decode_container(pack(c), REG)


def test_header_geometry_lie_is_caught():
    blob, c = archived("png")
    c.width += 1
    with pytest.raises(PixarcError, match="container says"):
        decode_container(pack(c), REG)


def test_codec_swap_in_header_is_caught():
    _, c = archived("png")
    c.codec_id = "webp-lossless"
    with pytest.raises(PixarcError):
        decode_container(pack(c), REG)


@pytest.mark.parametrize("codec_id", PIXEL_CODECS)
def test_decode_in_a_fresh_process_matches(codec_id, tmp_path):
    """The cross-process/device matrix: what this process encoded, a new interpreter decodes
    to the same pixels (learned codecs join this matrix by registering)."""
    blob, c = archived(codec_id)
    path = tmp_path / "x.pxa"
    path.write_bytes(blob)
    code = (
        "import json,sys; from pixarc.checks import decode_container; from pixarc.images import pixels_sha256;"
        "from pixarc.plugins import default_registry;"
        "c,d=decode_container(open(sys.argv[1],'rb').read(), default_registry());"
        "print(json.dumps({'sha': pixels_sha256(d.image)}))"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    expected = c.pixels_sha256 if c.meta["lossless"] else c.meta["decoded_sha256"]
    assert json.loads(res.stdout.strip().splitlines()[-1])["sha"] == expected


def test_store_of_a_bomb_source_is_rejected_before_store(tmp_path):
    from pixarc import runs
    from pixarc.manifest import latest, read_manifest

    (tmp_path / "src").mkdir()
    (tmp_path / "src/bomb.png").write_bytes(raw_png(60_000, 60_000, 8, 2, b""))
    runs.archive_local(str(tmp_path / "src"), str(tmp_path / "d"))
    row = latest(read_manifest(str(tmp_path / "d"))).to_pylist()[0]
    assert row["status"] == "rejected" and row["error"] == "too_large" and row["codec_id"] == ""
    assert not list((tmp_path / "d").glob("*.pxa"))


def test_unknown_section_is_skipped_but_checked():
    blob, c = archived("png")
    c.sections["XTRA"] = b"future metadata"
    c2, _ = decode_container(pack(c), REG)
    assert c2.sections["XTRA"] == b"future metadata"
    with pytest.raises(ContainerError):
        unpack(pack(c)[:-2])
