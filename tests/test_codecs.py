"""Every registered codec: round trips, mode coverage, hostile payloads."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import encode_bytes, rng_image
from pixarc.codec import Decoded
from pixarc.engine import decode_container
from pixarc.errors import CodecError, ContainerError
from pixarc.images import probe_and_load
from pixarc.metrics import psnr
from pixarc.plugins import default_registry

REG = default_registry()
CODECS = sorted(REG.codecs)
MODES = ["L", "LA", "RGB", "RGBA", "I;16"]


def test_expected_builtin_codecs_present():
    assert {"png", "webp-lossless", "webp", "jpeg", "jxl-lossless", "jxl", "avif", "store"} <= set(CODECS)


@pytest.mark.parametrize("codec_id", CODECS)
@pytest.mark.parametrize("mode", MODES)
def test_round_trip(codec_id, mode):
    codec = REG.codec(codec_id)
    src = probe_and_load(encode_bytes(rng_image(mode, (37, 23)), "PNG"))  # odd sizes on purpose
    if codec.unsupported_reason(src.info):
        pytest.skip(f"{codec_id} does not take {mode}")
    params = codec.validate_params({})
    out = codec.decode(codec.encode(src, params), "cpu")
    assert isinstance(out, Decoded)
    if codec_id == "store":
        assert out.original == src.data
        return
    assert out.image.mode == mode and out.image.size == (37, 23)
    if codec.lossless:
        assert out.image.tobytes() == src.image.tobytes()
    else:
        assert psnr(src.image, out.image) > 8  # noise is the worst case for lossy codecs
        again = codec.decode(codec.encode(src, params), "cpu").image
        assert again.tobytes() == out.image.tobytes(), "lossy encode+decode must be deterministic"


@pytest.mark.parametrize("codec_id", [c for c in CODECS if c != "store"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=256))
def test_decoders_reject_garbage_cleanly(codec_id, data):
    try:
        REG.codec(codec_id).decode(data, "cpu")
    except CodecError:
        pass


@pytest.mark.parametrize("codec_id", [c for c in CODECS if c != "store"])
def test_truncated_payloads_raise_only_codec_error(codec_id):
    """A cut payload either decodes to something (caught later by the pixel check) or
    raises CodecError: never another exception type."""
    codec = REG.codec(codec_id)
    src = probe_and_load(encode_bytes(rng_image("RGB", (32, 32)), "PNG"))
    payload = codec.encode(src, codec.validate_params({}))
    raised = 0
    for cut in (0, 1, 3, len(payload) // 2, len(payload) - 1):
        try:
            codec.decode(payload[:cut], "cpu")
        except CodecError:
            raised += 1
    assert raised >= 3  # at least the header-less cuts are refused


def test_params_validation():
    png = REG.codec("png")
    assert png.validate_params({}) == {"compress_level": 9}
    with pytest.raises(CodecError, match="unknown"):
        png.validate_params({"qualiy": 3})
    with pytest.raises(CodecError, match="outside"):
        png.validate_params({"compress_level": 12})
    with pytest.raises(CodecError, match="not int"):
        png.validate_params({"compress_level": "high"})


def test_webp_refuses_sixteen_bit_and_oversize():
    from pixarc.images import ImageInfo

    webp = REG.codec("webp-lossless")
    assert "mode I;16" in webp.unsupported_reason(ImageInfo(10, 10, "I;16", 16, "PNG", "I;16"))
    assert "limit" in webp.unsupported_reason(ImageInfo(20000, 10, "RGB", 8, "PNG", "RGB"))


def test_container_with_unknown_codec_is_a_clear_error():
    from pixarc.container import Container, pack

    blob = pack(Container("no-such-codec", 1, 2, 2, "RGB", 8, "aa" * 32, sections={"DATA": b"x"}))
    from pixarc.errors import MissingPluginError  # a missing plugin is not corruption (issue 11)

    with pytest.raises(MissingPluginError, match="codec 'no-such-codec' is not installed"):
        decode_container(blob, REG)


def test_container_with_future_format_version_is_refused():
    from pixarc.container import Container, pack

    blob = pack(Container("png", 99, 2, 2, "RGB", 8, "aa" * 32, sections={"DATA": b"x"}))
    with pytest.raises(ContainerError, match="format version 99"):
        decode_container(blob, REG)


def test_bitstream_needing_unknown_weights_is_a_clear_error():
    from pixarc.container import Container, pack

    blob = pack(Container("png", 1, 2, 2, "RGB", 8, "aa" * 32, weights_sha256="ee" * 32, sections={"DATA": b"x"}))
    from pixarc.errors import MissingPluginError  # missing weights: install them; not corruption (issue 11)

    with pytest.raises(MissingPluginError, match="needs weights eeeeeeeeeeee"):
        decode_container(blob, REG)
