"""Every registered codec: round trips, mode coverage, hostile payloads."""

import numpy as np
import pytest
from PIL import Image
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import encode_bytes, rng_image
from pixarc.codec import Decoded
from pixarc.checks import decode_container
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
    """Random bytes are refused with a CodecError: never another exception, and never an
    image (a decoder that returned a blank picture for garbage would fail here)."""
    with pytest.raises(CodecError):
        REG.codec(codec_id).decode(data, "cpu")


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


# --------------------------------------------------------------------------- settings that matter
# Each test measures both sides in the test itself: no remembered byte counts.


def _example_crop(rel: str, box):
    from conftest import EXAMPLES

    return probe_and_load(encode_bytes(Image.open(EXAMPLES / rel).convert("RGB").crop(box), "PNG"))


@pytest.mark.parametrize("name", ["ocal_3_faces_lumen_design_stu_01.png", "ocal_eris_apple_nurbldoff_01.png"])
def test_jxl_lossless_whole_image_no_larger_than_its_halves(name):
    """pillow-jxl-plugin 1.3.8 (jpegxl-rs 0.15, libjxl 0.12.0) codes few-colour images over
    512 px a side badly: a 520x520 line drawing came out 10-20 % larger than its two
    520x260 halves encoded separately (25-30 % larger files on the dev line art). A sound
    encoder codes the whole in fewer bytes than the halves (libjxl 0.11: 0.87-0.91)."""
    codec = REG.codec("jxl-lossless")
    params = codec.validate_params({})
    whole = _example_crop(f"line/{name}", (0, 0, 520, 520))
    halves = [_example_crop(f"line/{name}", (0, y, 520, y + 260)) for y in (0, 260)]
    n_whole = len(codec.encode(whole, params))
    n_halves = sum(len(codec.encode(h, params)) for h in halves)
    assert n_whole <= n_halves, f"jxl-lossless: whole {n_whole} B > halves {n_halves} B ({codec.version()})"


def _stripes(size=(48, 32)):
    """1-px red/blue columns: chroma detail that 4:2:0 cannot carry."""
    a = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    a[:, 0::2, 0] = 220
    a[:, 1::2, 2] = 220
    a[:, :, 1] = 40
    return probe_and_load(encode_bytes(Image.fromarray(a), "PNG"))


def test_avif_444_keeps_chroma_that_420_loses():
    avif = REG.codec("avif")
    src = _stripes()
    got = {}
    for sub in ("4:2:0", "4:4:4"):
        payload = avif.encode(src, avif.validate_params({"quality": 90, "subsampling": sub}))
        got[sub] = psnr(src.image, avif.decode(payload).image)
    assert got["4:4:4"] > got["4:2:0"] + 6, got  # 4:2:0 averages the stripes into one colour


def test_avif_rejects_unknown_subsampling_and_tune():
    avif = REG.codec("avif")
    with pytest.raises(CodecError, match="subsampling"):
        avif.validate_params({"subsampling": "4:1:1"})
    with pytest.raises(CodecError, match="tune"):
        avif.validate_params({"tune": "fast"})


def test_avif_tune_reaches_the_encoder():
    avif = REG.codec("avif")
    src = probe_and_load(encode_bytes(rng_image("RGB", (40, 40), seed=3), "PNG"))
    sizes = {t: len(avif.encode(src, avif.validate_params({"tune": t}))) for t in ("", "psnr")}
    assert sizes[""] != sizes["psnr"], sizes


@pytest.mark.parametrize("codec_id,default", [("webp", 6), ("webp-lossless", 4)])
def test_webp_default_method_and_method_reaches_the_encoder(codec_id, default):
    codec = REG.codec(codec_id)
    assert codec.validate_params({})["method"] == default
    src = _example_crop("vector/ocal_orange_dave_pena_01.png", (200, 200, 264, 264))
    sizes = {m: len(codec.encode(src, codec.validate_params({"method": m}))) for m in (0, 6)}
    assert sizes[0] != sizes[6], sizes


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_jxl_lossless_decodes_payloads_of_the_previous_binding(mode):
    """Archives written when jxl-lossless went through pillow-jxl-plugin stay readable."""
    import io

    pytest.importorskip("pillow_jxl")
    image = rng_image(mode, (37, 23))
    buf = io.BytesIO()
    image.save(buf, "JXL", lossless=True, effort=3, num_threads=1)
    old_payload = bytes([len(mode)]) + mode.encode() + buf.getvalue()
    out = REG.codec("jxl-lossless").decode(old_payload).image
    assert out.mode == mode and out.tobytes() == image.tobytes()


def test_jxl_lossless_effort_10_reaches_the_encoder():
    """Effort 10 (cjxl 0.7's -e 9) is accepted, lossless, and not silently effort 9."""
    codec = REG.codec("jxl-lossless")
    src = _example_crop("line/ocal_3_faces_lumen_design_stu_01.png", (200, 300, 328, 428))
    payloads = {e: codec.encode(src, codec.validate_params({"effort": e})) for e in (9, 10)}
    assert codec.decode(payloads[10]).image.tobytes() == src.image.tobytes()
    assert payloads[9] != payloads[10]


def test_jxl_lossless_bytes_do_not_depend_on_the_thread_count(monkeypatch):
    """libjxl runs on the process's CPUs (as libaom does for AVIF): an archive made on a
    machine with more cores must hold the same bytes. An image of several 256-px groups,
    so threads have groups to share."""
    import pixarc_jxl

    codec = REG.codec("jxl-lossless")
    src = _example_crop("vector/ocal_bicycle_philippe_colin_01.png", (0, 0, 600, 520))
    params = codec.validate_params({"effort": 7})
    payloads = {}
    for n in (1, 3):
        monkeypatch.setattr(pixarc_jxl, "cpu_threads", lambda n=n: n)
        payloads[n] = codec.encode(src, params)
    assert payloads[1] == payloads[3]
    assert codec.decode(payloads[3]).image.tobytes() == src.image.tobytes()


@pytest.mark.parametrize("tune", ["", "psnr"])
def test_avif_rate_values_are_one_quality_per_distinct_encode(tune):
    """A rate search over AVIF probes each encode once: the qualities it skips make the same
    bitstream as the value below them, the ones it keeps all differ (on an image that is not
    the one the values were measured on, at the lossy policy's speed)."""
    avif = REG.codec("avif")
    params = avif.validate_params({"speed": 6, "subsampling": "4:4:4", "tune": tune})
    values = avif.rate_values(params)
    assert values[0] == 0 and values[-1] == 100 and values == sorted(set(values))
    assert len(values) < 101  # libavif repeats encodes: a search over all 101 wastes probes
    yy, xx = np.mgrid[0:64, 0:64]
    a = np.stack([60 + 2 * xx, 40 + 2 * yy, 120 + xx - yy], -1) + np.random.default_rng(5).normal(0, 20, (64, 64, 3))
    src = probe_and_load(encode_bytes(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), "PNG"))
    made = {q: avif.encode(src, {**params, "quality": q}) for q in range(101)}
    for q in range(101):
        start = max(v for v in values if v <= q)
        assert made[q] == made[start], (q, start)  # a skipped quality repeats its run's first
    assert all(made[a] != made[b] for a, b in zip(values, values[1:]))
