"""The enhancement post-filter codec (``<base>-enhanced``): tiny filters, tiny images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import encode_bytes
from pixarc.errors import CodecError
from pixarc.images import probe_and_load


def textured(w=72, h=56, seed=0) -> Image.Image:
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 90 * np.sin(xx / 5 + c) * np.cos(yy / 4) for c in range(3)], -1)
    a[h // 3 : h // 2, w // 4 : w // 2] = (250, 20, 30)  # a flat red block with sharp edges
    return Image.fromarray(np.clip(a + r.normal(0, 3, a.shape), 0, 255).astype(np.uint8))


def _save(folder, net, name="tiny.pt", base="avif"):
    from pixarc.weights import save_weights
    from pixarc_enhance import ARCH

    return save_weights(folder, name, net.state_dict(), {"arch": ARCH, "base": base, "channels": net.channels,
                                                         "layers": net.layers, "cond": net.cond, "source": "test"})


@pytest.fixture
def tiny_filter(tmp_path, monkeypatch):
    """A 3-layer, 6-channel filter with a small random (non-identity) last layer."""
    from pixarc_enhance.model import EnhanceNet

    torch.manual_seed(0)
    net = EnhanceNet(channels=6, layers=3)
    with torch.no_grad():
        net.tail.weight.normal_(0, 0.01)
    folder = tmp_path / "w"
    entry = _save(folder, net)
    monkeypatch.setenv("PIXARC_ENHANCE_WEIGHTS", str(folder))
    return folder, entry


def codec(base="avif"):
    """``<base>-enhanced`` made as a registry makes it: with that registry's ``base`` codec."""
    from pixarc.plugins import build_plugin_manager
    from pixarc_enhance import enhanced

    return build_plugin_manager().make(enhanced(base))


def sse(a: Image.Image, b: Image.Image) -> float:
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum())


@pytest.fixture
def with_enhance(monkeypatch):
    """The conftest allowlist plus this plugin (installed through its entry point)."""
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",enhance")


def test_registered_for_several_bases_with_the_base_rate_parameter(tiny_filter, with_enhance):
    from pixarc.plugins import build_plugin_manager

    reg = build_plugin_manager()
    for base in ("avif", "webp", "jxl"):
        c = reg.codec(f"{base}-enhanced")
        assert c.rate_param == "quality" and c.base.codec_id == base
        assert {"quality", "filter", "adapters"} <= set(c.params_schema)
    c = reg.codec("avif-enhanced")
    p = c.validate_params({"quality": 40, "subsampling": "4:4:4"})
    assert p["speed"] == 6 and p["filter"] == "auto"
    with pytest.raises(CodecError):
        c.validate_params({"nonsense": 1})
    assert c.weights_for(p) == tiny_filter[1]["sha256"] and c.has_weights(tiny_filter[1]["sha256"])
    assert "avif (Pillow" in c.version()
    # a rate search probes the base's distinct encodes (each probe is one of them + the filter)
    for tune in ("", "psnr"):
        p = c.validate_params({"quality": 40, "subsampling": "4:4:4", "tune": tune})
        assert c.rate_values(p) == c.base.rate_values({"subsampling": "4:4:4", "tune": tune})
    assert c.rate_values(p) != c.rate_values(c.validate_params({})) != list(range(101))


def test_the_base_is_the_one_of_the_registry_that_makes_the_codec(tiny_filter, monkeypatch):
    """The registry passes its own base codec in (``Codec.components``): an allowlist that
    leaves the base out leaves the enhanced codec without one, and it says so."""
    from pixarc.images import ImageInfo
    from pixarc.plugins import build_plugin_manager

    monkeypatch.setenv("PIXARC_PLUGINS", "png,webp,store,stats_classifier,default_router,enhance")  # no avif
    reg = build_plugin_manager()
    assert reg.codec("webp-enhanced").base is reg.codec("webp")
    assert reg.codec("avif-enhanced").base is None
    info = ImageInfo(64, 48, "RGB", 8, "PNG", "RGB")
    assert "base codec 'avif' is not installed" in reg.codec("avif-enhanced").unsupported_reason(info)


def test_filter_on_round_trips_deterministically(tiny_filter):
    from pixarc_enhance import HEADER

    c = codec()
    src = probe_and_load(encode_bytes(textured(), "PNG"))
    payload = c.encode(src, c.validate_params({"quality": 40, "filter": "on", "adapters": "none"}))
    head = HEADER.read(payload, c.codec_id).head
    assert (head.flags, head.mode) == (1 | 4, 0) and head.cond_permille <= 1000  # on, channels-last layout
    assert head.tag == bytes.fromhex(c.weights_for(c.validate_params({"quality": 40})))[: len(head.tag)]
    a, b = c.decode(payload), c.decode(payload)
    assert a.image.size == (72, 56) and a.image.mode == "RGB"
    assert a.image.tobytes() == b.image.tobytes() and a.fingerprint == b.fingerprint
    base = c.base.decode(c.base.encode(src, c.base.validate_params({"quality": 40}))).image
    assert a.image.tobytes() != base.tobytes()  # the filter did something


def test_filter_off_is_exactly_the_base_codec(tiny_filter):
    c = codec()
    src = probe_and_load(encode_bytes(textured(), "PNG"))
    payload = c.encode(src, c.validate_params({"quality": 50, "filter": "off"}))
    base_payload = c.base.encode(src, c.base.validate_params({"quality": 50}))
    assert payload == b"\0" + base_payload
    assert c.decode(payload).image.tobytes() == c.base.decode(base_payload).image.tobytes()


def test_a_filter_that_loses_is_switched_off(tmp_path, monkeypatch):
    from pixarc_enhance.model import EnhanceNet

    torch.manual_seed(1)
    net = EnhanceNet(channels=6, layers=3)
    with torch.no_grad():
        net.tail.weight.normal_(0, 0.5)  # a filter that wrecks the image
    _save(tmp_path, net, "bad.pt")
    monkeypatch.setenv("PIXARC_ENHANCE_WEIGHTS", str(tmp_path))
    c = codec()
    src = probe_and_load(encode_bytes(textured(), "PNG"))
    payload = c.encode(src, c.validate_params({"quality": 50}))
    assert payload[0] == 0  # coded "off"
    base = c.base.decode(c.base.encode(src, c.base.validate_params({"quality": 50}))).image
    assert c.decode(payload).image.tobytes() == base.tobytes()
    forced = c.decode(c.encode(src, c.validate_params({"quality": 50, "filter": "on", "adapters": "none"}))).image
    assert sse(src.image, forced) > sse(src.image, base)


def test_adapter_fit_predicts_the_merged_filter_and_lowers_distortion(tiny_filter, monkeypatch):
    from pixarc_enhance import adapt
    from pixarc_enhance.model import feature_tiles, finish

    c = codec()
    net = c.model(c.select_weights())
    src = textured(80, 64, seed=3)
    base = probe_and_load(encode_bytes(src, "PNG"))
    dec = c.base.decode(c.base.encode(base, c.base.validate_params({"quality": 30}))).image
    x = torch.from_numpy(np.asarray(src, np.float32) / 255).permute(2, 0, 1)[None]
    xb = torch.from_numpy(np.asarray(dec, np.float32) / 255).permute(2, 0, 1)[None]
    parts = feature_tiles(net, xb, torch.tensor([[0.3, 0.0]]))
    stats = adapt.statistics(net, parts, x)
    plain = float((((finish(net, parts, xb.shape) - x) * 255).double() ** 2).sum())
    assert stats.sse0 == pytest.approx(plain, rel=1e-6)
    for mode in (1, 2):
        symbols, predicted, bits = adapt.fit(stats, mode, lam=1.0)
        assert len(symbols) == adapt.n_params(mode, net.channels) and any(symbols)
        assert max(map(abs, symbols)) <= adapt.K and bits > 0
        w, b = adapt.merged_tail(net, mode, symbols)
        real = float((((finish(net, parts, xb.shape, w, b) - x) * 255).double() ** 2).sum())
        assert real == pytest.approx(predicted, rel=1e-4)
        assert real < plain
    # a tiny λ (bits are dear): nothing is worth sending
    assert not any(adapt.fit(stats, 1, lam=1e-9)[0])
    # the residual taken from the filter's output the encoder has already: the same statistics
    given = adapt.statistics(net, parts, x, finish(net, parts, xb.shape))
    assert given.sse0 == pytest.approx(stats.sse0, rel=1e-6)
    np.testing.assert_allclose(given.corr, stats.corr, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(given.gram, stats.gram)
    for mode in (1, 2):
        assert adapt.fit(given, mode, lam=1.0)[0] == adapt.fit(stats, mode, lam=1.0)[0]
    # a big image's statistics sample every second row and column, scaled to the whole image
    monkeypatch.setattr(adapt, "SUBSAMPLE_PIXELS", 1000)
    sampled = adapt.statistics(net, parts, x)
    assert sampled.sse0 == stats.sse0
    off = np.linalg.norm(sampled.gram - stats.gram) / np.linalg.norm(stats.gram)
    assert 0 < off < 0.05
    symbols, predicted, _ = adapt.fit(sampled, 2, lam=1.0)
    w, b = adapt.merged_tail(net, 2, symbols)
    real = float((((finish(net, parts, xb.shape, w, b) - x) * 255).double() ** 2).sum())
    assert real < plain and real == pytest.approx(predicted, rel=0.02)


def test_adapters_travel_in_the_payload(tiny_filter):
    from pixarc_enhance import HEADER, adapt

    c = codec()
    src = probe_and_load(encode_bytes(textured(80, 64, seed=3), "PNG"))
    p = {"quality": 30, "filter": "on", "rd_lambda": 1.0}
    none = c.encode(src, c.validate_params({**p, "adapters": "none"}))
    shared = c.encode(src, c.validate_params({**p, "adapters": "shared"}))
    assert HEADER.parse(shared).mode == 1 and HEADER.parse(none).mode == 0
    assert len(shared) > len(none)
    assert sse(src.image, c.decode(shared).image) < sse(src.image, c.decode(none).image)
    symbols = list(range(-adapt.K, adapt.K + 1)) + [0] * 9
    assert adapt.decode_symbols(adapt.encode_symbols(symbols), len(symbols)) == symbols


def test_both_layouts_decode_with_their_own_float_operations(tiny_filter, monkeypatch):
    """Bitstreams written before the channels-last layout (flag bit 2 clear) decode with the
    contiguous 512-pixel tiles they were made with; new ones with channels-last 256-pixel
    tiles; either on any number of tile threads, to the same bytes."""
    import pixarc_enhance
    from pixarc_enhance import HEADER, adapt, model

    monkeypatch.setattr(pixarc_enhance, "WIENER", False)  # the rest: adapter symbols only
    c = codec()
    src = probe_and_load(encode_bytes(textured(300, 560, seed=5), "PNG"))
    new = c.encode(src, c.validate_params({"quality": 30, "filter": "on", "adapters": "shared", "rd_lambda": 1.0}))
    p = HEADER.read(new, c.codec_id)
    flags, mode, cond_pm = p.head.flags, p.head.mode, p.head.cond_permille
    assert flags & 4 and mode == 1
    old = bytes([flags & 3]) + new[1:]  # the same payload as the first bitstreams wrote it
    net = c.model(c.select_weights())
    base_im, _ = c._base_decode(p.sections[0])
    xb = torch.from_numpy(np.asarray(base_im, np.float32) / 255).permute(2, 0, 1)[None]
    coded = p.rest
    w, b = adapt.merged_tail(net, mode, adapt.decode_symbols(coded, adapt.n_params(mode, net.channels)))
    cond = torch.tensor([[cond_pm / 1000, float(flags >> 1 & 1)]])
    seen = []
    real_apply = model.apply
    monkeypatch.setattr(model, "apply", lambda *a: seen.append(a[-1]) or real_apply(*a))
    for payload, layout in ((new, model.NHWC), (old, model.NCHW)):
        seen.clear()
        monkeypatch.setenv("PIXARC_FILTER_THREADS", "1")
        serial = c.decode(payload).image.tobytes()
        monkeypatch.setenv("PIXARC_FILTER_THREADS", "4")
        assert c.decode(payload).image.tobytes() == serial
        assert seen == [layout, layout]  # the float operations the bitstream was made with
        want = model.to_uint8(real_apply(net, xb, cond, w, b, layout))
        assert serial == Image.fromarray(want).tobytes()
    # the two layouts are really two computations (several tiles of different sides)
    assert len(list(model.tiles(560, 300, net.halo, model.NHWC.tile))) == 6
    assert len(list(model.tiles(560, 300, net.halo, model.NCHW.tile))) == 2


def test_conditioning_offsets_are_compared_on_sampled_blocks(tiny_filter, monkeypatch):
    """On an image bigger than the sample, the encoder runs the whole-image filter once
    (for the offset the blocks chose), not once per offset."""
    import pixarc_enhance
    from pixarc_enhance import model

    calls = []
    real = model.feature_tiles
    monkeypatch.setattr(model, "feature_tiles", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    c = codec()
    src = probe_and_load(encode_bytes(textured(400, 400, seed=2), "PNG"))
    assert model.sample_blocks(400, 400, 3) and not model.sample_blocks(72, 56, 3)
    c.encode(src, c.validate_params({"quality": 40, "filter": "on", "adapters": "none"}))
    assert len(calls) == 1 and len(pixarc_enhance.OWN_PARAMS["strengths"].default) == 4
    calls.clear()
    small = probe_and_load(encode_bytes(textured(), "PNG"))
    c.encode(small, c.validate_params({"quality": 40, "filter": "on", "adapters": "none"}))
    assert len(calls) == 4  # small images: every offset on the whole image, as before


def test_malformed_payloads_raise_codec_error(tiny_filter):
    c = codec()
    src = probe_and_load(encode_bytes(textured(), "PNG"))
    good = c.encode(src, c.validate_params({"quality": 40, "filter": "on", "adapters": "shared", "rd_lambda": 1.0}))
    assert good[1] == 1  # adapters sent
    bad = [b"", good[:5], good[:20], bytes([8]) + good[1:], good[:4] + b"\0" * 4 + good[8:],
           good[:1] + bytes([3]) + good[2:], good[:-3], b"\0" + good[1:]]
    for payload in bad:
        with pytest.raises(CodecError):
            c.decode(payload)


def test_archive_records_the_filter_and_verifies(tiny_filter, with_enhance, tmp_path):
    from pixarc import runs
    from pixarc.container import unpack
    from pixarc.manifest import latest, read_manifest
    from pixarc.plugins import build_plugin_manager

    src_dir, dest = tmp_path / "src", tmp_path / "dest"
    src_dir.mkdir()
    textured(72, 56).save(src_dir / "a.png")
    policy = tmp_path / "p.toml"
    policy.write_text('min_confidence = 1.1\n[params.avif-enhanced]\nquality = 40\nfilter = "on"\n'
                      '[routes.unknown]\nlossless = false\ncodecs = ["avif-enhanced", "png"]\n')
    reg = build_plugin_manager()  # the jobs run with it (the filter found under the fixture's variable)
    runs.archive_local(str(src_dir), str(dest), policy=str(policy), registry=reg)
    row = {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}["a.png"]
    assert row["codec_id"] == "avif-enhanced" and row["weights_sha256"] == tiny_filter[1]["sha256"]
    assert "avif (Pillow" in row["codec_version"] and np.isfinite(row["psnr"])
    assert not runs.verify_local(str(dest), full=True, registry=reg).problems
    meta = unpack((dest / "a.png.pxa").read_bytes()).meta
    code = (
        "import sys; from pixarc.checks import decode_container; from pixarc.plugins import build_plugin_manager;"
        "c, d = decode_container(open(sys.argv[1], 'rb').read(), build_plugin_manager());"
        "print('FP', d.fingerprint)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(dest / "a.png.pxa")], capture_output=True, text=True,
                         timeout=300, env=os.environ.copy())
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("FP ")[1].strip() == meta["decoded_fingerprint"]


def test_missing_base_or_weights_step_aside(monkeypatch, tmp_path):
    from pixarc.images import ImageInfo
    from pixarc_enhance import enhanced

    monkeypatch.setenv("PIXARC_ENHANCE_WEIGHTS", str(tmp_path))
    info = ImageInfo(8, 8, "RGB", 8, "PNG", "RGB")
    assert "not installed" in enhanced("no-such-codec")().unsupported_reason(info)
    monkeypatch.setattr("pixarc_enhance.EnhancedCodec.weights_dir", tmp_path / "none")
    reason = codec().unsupported_reason(info)
    assert "no weights" in reason and "`pixarc train enhance --base avif`" in reason


def test_training_cli_writes_weights_and_resumes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pixarc.cli import main

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",enhance")  # its plugin adds the command

    data = tmp_path / "data" / "d"
    data.mkdir(parents=True)
    for i in range(2):
        textured(64, 64, seed=i).save(data / f"{i}.png")
    out = tmp_path / "out"
    args = ["train", "enhance", "--data", str(tmp_path / "data"), "--out", str(out), "--batch", "2",
            "--patch", "32", "--channels", "4", "--layers", "3", "--variants", "1", "--refit", "4"]
    res = CliRunner().invoke(main, args + ["--steps", "3"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, args + ["--steps", "5", "--resume"])
    assert res.exit_code == 0, res.output
    files = json.loads((out / "weights.json").read_text())["files"]
    entry = files["enhance-avif-c4-l3-v2.pt"]  # a new file: bitstreams name the first one by its sha256
    assert files["enhance-avif-c4-l3.pt"]["steps"] == 3
    assert entry["steps"] == 5 and entry["devices"] == ["cpu"] and len(entry["data_sha256"]) == 64
    assert [st["steps"] for st in entry["stages"]] == ["0-3", "3-5"]
    assert entry["arch"] == "enhance-cnn" and entry["base"] == "avif" and entry["rates"] == [20, 95]
    refit = entry["refit"]  # least squares cannot do worse than the tail it replaces
    assert refit["samples"] == 4 and refit["kept"] and refit["sse_after"] < refit["sse_before"]
    assert (out / "enhance-avif-c4-l3.pool.ckpt").exists()  # the resumed run decoded cached payloads
    from pixarc.weights import load_from_manifest

    state, _ = load_from_manifest(out, "enhance-avif-c4-l3-v2.pt")
    assert all(v.dtype == torch.float16 for v in state.values())

    # without --resume (and with no checkpoint at all) a run continues the newest shipped filter:
    # its cumulative steps, its stages, its minutes; the schedule follows the cumulative count
    (out / "enhance-avif-c4-l3.ckpt").unlink()
    res = CliRunner().invoke(main, args + ["--steps", "8"])
    assert res.exit_code == 0, res.output
    third = json.loads((out / "weights.json").read_text())["files"]["enhance-avif-c4-l3-v3.pt"]
    assert third["continues"] == "enhance-avif-c4-l3-v2.pt" and third["steps"] == 8
    assert [st["steps"] for st in third["stages"]] == ["0-3", "3-5", "5-8"]
    assert third["minutes"] >= entry["minutes"]


def test_the_learning_rate_is_a_function_of_the_cumulative_step():
    """Runs stacked one after another follow one decay curve (no per-run sawtooth); only a
    run that starts with a fresh optimizer warms up."""
    from pixarc.training import cumulative_lr

    one_run = [cumulative_lr(s, 1e-3, since=0) for s in range(1000, 3000)]
    split = [cumulative_lr(s, 1e-3, since=0) for s in range(1000, 2000)] + \
        [cumulative_lr(s, 1e-3, since=0) for s in range(2000, 3000)]
    assert one_run == split
    assert all(a >= b for a, b in zip(one_run, one_run[1:]))  # never rises again
    assert cumulative_lr(5000, 1e-3, since=5000) < cumulative_lr(5199, 1e-3, since=5000) \
        == cumulative_lr(5199, 1e-3, since=0)  # a continuation warms up, then rejoins the curve


def test_lossy_policy_weighs_the_enhanced_codec_by_rd_cost(tiny_filter, with_enhance, tmp_path, monkeypatch):
    """The built-in ``lossy`` policy lists ``avif-enhanced`` among the RD candidates of its
    lossy routes; an RD archive rate-searches it next to AVIF, keeps the fewest bytes that
    reach the target, and the report says which codec won."""
    from pixarc import plugins, runs
    from pixarc.manifest import latest, read_manifest, rows_from_table
    from pixarc.policy import load_policy
    from pixarc.report import rd_summary

    lossy = load_policy("lossy")
    for domain in ("natural", "comic"):
        assert "avif-enhanced" in lossy.routes[domain].codecs and lossy.routes[domain].target
    from pixarc_enhance import OWN_PARAMS

    base = {k: v for k, v in lossy.params["avif-enhanced"].items() if k not in OWN_PARAMS}
    assert base == lossy.params["avif"]  # same base settings as plain AVIF (the filter's own aside)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    for i in range(2):
        textured(64, 48, seed=i).save(src_dir / f"{i}.png")
    policy = tmp_path / "p.toml"
    # filter "on": plain AVIF is then a codec of its own (with "auto" the enhanced codec
    # covers it: test_rd_selection.py::test_a_codec_another_candidate_reproduces_...)
    policy.write_text('selection = "rd"\nmin_confidence = 1.1\n[params.avif-enhanced]\nspeed = 8\nfilter = "on"\n'
                      '[params.avif]\nspeed = 8\n[routes.unknown]\nlossless = false\n'
                      'codecs = ["avif-enhanced", "avif"]\ntarget_psnr = 30.0\n')
    runs.archive_local(str(src_dir), str(tmp_path / "d"), policy=str(policy), registry=plugins.build_plugin_manager())
    rows = rows_from_table(latest(read_manifest(str(tmp_path / "d"))))
    assert len(rows) == 2
    for r in rows:
        tried = {a.codec: a for a in r.attempts if a.compared}
        assert set(tried) >= {"avif-enhanced", "avif"}
        reaching = [a for a in tried.values() if a.met]
        assert reaching and r.bitstream_bytes == min(a.bytes for a in reaching)
    (s,) = rd_summary(rows)
    assert sum(s.wins.values()) == 2 and set(s.wins) <= {"avif-enhanced", "avif", "store"}


def test_a_filter_trained_on_444_bases_serves_444_only(tmp_path, monkeypatch):
    """A filter whose entry says ``"chroma": "444"`` (trained on 4:4:4 bases only) is the
    one chosen for 4:4:4 encodes; 4:2:0 and bases without the setting keep the general one."""
    from pixarc_enhance.model import EnhanceNet

    folder = tmp_path / "w"
    general = _save(folder, EnhanceNet(channels=4, layers=3), "general.pt")
    only444 = _save(folder, EnhanceNet(channels=4, layers=3), "only444.pt")
    doc = json.loads((folder / "weights.json").read_text())
    doc["files"]["only444.pt"]["chroma"] = "444"
    (folder / "weights.json").write_text(json.dumps(doc))
    monkeypatch.setenv("PIXARC_ENHANCE_WEIGHTS", str(folder))
    c = codec()
    assert c.weights_for(c.validate_params({"quality": 60, "subsampling": "4:4:4"})) == only444["sha256"]
    assert c.weights_for(c.validate_params({"quality": 60, "subsampling": "4:2:0"})) == general["sha256"]
    assert codec("webp").weights_for(codec("webp").validate_params({"quality": 60})) == general["sha256"]


@pytest.mark.parametrize("mode", ["on", "off-by-rd"])
def test_the_kept_payload_is_decoded_once_and_the_encoders_reconstruction_is_checked(tiny_filter, mode):
    """The encoder's own reconstruction (pixels and fingerprint) is the first decode of the
    payload it returns; the decode-check of the stored bytes is then the only decode, and
    it compares with what that reconstruction wrote into the header: a reconstruction off
    by one pixel value fails the check."""
    from pixarc import memo
    from pixarc.device import CPU
    from pixarc.encode import encode_verified
    from pixarc.errors import VerificationError
    from pixarc.images import pixels_sha256

    c = codec()
    src = probe_and_load(encode_bytes(textured(), "PNG"))
    params = c.validate_params({"quality": 40, "filter": "on" if mode == "on" else "auto",
                                **({"rd_lambda": 1e-9} if mode == "off-by-rd" else {})})  # ~bits only: off
    decodes = []
    real = type(c).decode
    type(c).decode, restore = (lambda self, *a, **k: (decodes.append(1), real(self, *a, **k))[1]), real
    try:
        with memo.scope():
            enc = encode_verified(c, params, src, "natural", CPU)
        assert len(decodes) == 1  # the check; the first decode was the encoder's
        assert (enc.container.payload[0] == 0) == (mode == "off-by-rd")
        with memo.off():
            again = real(c, enc.container.payload)
        assert enc.decoded_sha256 == pixels_sha256(again.image)
        assert enc.container.meta["decoded_fingerprint"] == again.fingerprint

        def off_by_one(codec_, payload, decoded):
            a = np.asarray(decoded.image).copy()
            a[0, 0, 0] ^= 1
            memo_note(codec_, payload, type(decoded)(image=Image.fromarray(a), fingerprint=decoded.fingerprint))

        memo_note, memo.note_decoded = memo.note_decoded, off_by_one
        try:
            with memo.scope(), pytest.raises(VerificationError):
                encode_verified(c, params, src, "natural", CPU)
        finally:
            memo.note_decoded = memo_note
    finally:
        type(c).decode = restore


def test_the_per_image_linear_filter_travels_where_it_pays(tiny_filter, monkeypatch):
    """Flag bit 3: 36 coefficients of a per-image 5x5 filter on the learned filter's output,
    fitted by least squares; sent when they pay by RD cost (here: λ makes distortion all that
    counts, then bits all that counts), decoded exactly as the encoder measured it."""
    import pixarc_enhance
    from pixarc import memo
    from pixarc.device import CPU
    from pixarc.encode import encode_verified
    from pixarc_enhance import HEADER, wiener

    c = codec()
    src = probe_and_load(encode_bytes(textured(80, 64, seed=3), "PNG"))
    p = {"quality": 30, "filter": "on", "adapters": "none"}
    with memo.scope():
        enc = encode_verified(c, c.validate_params({**p, "rd_lambda": 1e6}), src, "natural", CPU)  # checked
    sent = enc.container.payload
    assert sent[0] & pixarc_enhance.WIENER_FLAG and len(HEADER.read(sent, c.codec_id).rest) == wiener.SIZE
    plain = c.encode(src, c.validate_params({**p, "rd_lambda": 1e-9}))  # bits are all that count: not sent
    assert not plain[0] & pixarc_enhance.WIENER_FLAG and HEADER.read(plain, c.codec_id).rest == b""
    assert sse(src.image, c.decode(sent).image) < sse(src.image, c.decode(plain).image)
    with pytest.raises(CodecError):  # the flag without its coefficients
        c.decode(bytes([plain[0] | pixarc_enhance.WIENER_FLAG]) + plain[1:])
    y = np.random.default_rng(1).uniform(-3, 260, (9, 7, 3))
    assert np.array_equal(wiener.filtered(y, np.zeros((3, len(wiener.OFFSETS)), np.int64)),
                          np.clip(np.rint(y), 0, 255).astype(np.uint8))  # zero coefficients: the output as it was
    coefs = np.arange(-18, 18).reshape(3, 12)
    assert np.array_equal(wiener.unpack(wiener.pack(coefs)), coefs)
    whole = wiener.filtered(y, coefs)
    monkeypatch.setattr(wiener, "BAND", 2)  # bands of 2 rows: the same pixels
    assert np.array_equal(wiener.filtered(y, coefs), whole)


def alike_everywhere(side: int = 384) -> np.ndarray:
    """A (side, side, 3) uint8 image that looks alike everywhere (waves and noise): a few
    sampled blocks read it as the whole image does."""
    r = np.random.default_rng(1)
    yy, xx = np.mgrid[0:side, 0:side]
    a = np.stack([128 + 60 * np.sin(xx / 9 + k) * np.cos(yy / 13) for k in range(3)], -1) + r.normal(0, 8, (side, side, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def test_sampled_gain_estimates_the_filters_gain_for_the_rate_search(tiny_filter, monkeypatch):
    """The base tier's estimate for a rate search (``RateProxy.gap_estimate``): the filter's
    gain over the base on a few sampled blocks, close to the whole image's on an image that
    looks alike everywhere; NaN where it cannot tell (an image the blocks would nearly cover,
    the filter off)."""
    import math

    import pixarc_enhance
    from pixarc import memo
    from pixarc.device import CPU
    from pixarc.metrics import psnr

    monkeypatch.setattr(pixarc_enhance, "WIENER", False)  # the filter's own gain, as the blocks see it
    c = codec()
    a = alike_everywhere()
    src = probe_and_load(encode_bytes(Image.fromarray(a), "PNG"))
    p = c.validate_params({"quality": 40, "subsampling": "4:4:4", "filter": "on", "adapters": "none", "strengths": [0.0]})
    proxy = c.rate_proxies(p)[-1]  # the base at the codec's own settings: the encode the filter runs on
    assert proxy.codec is c.base and proxy.params["speed"] == p["speed"] and proxy.gap_estimate is not None
    with memo.scope():
        estimate = proxy.gap_estimate(src, p, CPU)
        base = c.base.decode(memo.encode(c.base, src, {k: p[k] for k in c.base.params_schema})).image
        whole = psnr(src.image, c.decode(c.encode(src, p)).image) - psnr(src.image, base)
    assert math.isfinite(estimate) and abs(estimate - whole) < 0.05 + 0.2 * abs(whole), (estimate, whole)
    small = probe_and_load(encode_bytes(Image.fromarray(a[:200, :200]), "PNG"))
    assert math.isnan(c.sampled_gain(small, p))
    assert math.isnan(c.sampled_gain(src, {**p, "filter": "off"}))


def test_a_mosaic_of_the_blocks_holds_them_whole_and_in_place():
    from pixarc_enhance.model import mosaic, sample_blocks

    a = np.random.default_rng(3).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    blocks = sample_blocks(300, 420, 8, 64, 4)
    m, placed = mosaic(a, blocks)
    assert m.shape[0] * m.shape[1] < a.shape[0] * a.shape[1] / 2 and len(placed) == len(blocks)
    for (ob, ib), (mob, mib) in zip(blocks, placed):
        assert np.array_equal(m[mob[0] : mob[1], mob[2] : mob[3]], a[ob[0] : ob[1], ob[2] : ob[3]])
        assert np.array_equal(m[mib[0] : mib[1], mib[2] : mib[3]], a[ib[0] : ib[1], ib[2] : ib[3]])


def test_the_gap_over_the_fast_tier_is_estimated_on_a_mosaic_without_a_full_base_encode(tiny_filter, monkeypatch):
    """The cheapest tier's estimate for a rate search: how far the codec (base + filter)
    lies above the fast base encode, measured on a mosaic of the sampled blocks, close to
    the whole image's gap on an image that looks alike everywhere, and made without any
    encode of the whole image (the search's first probe is placed with it); the filter's
    gain it measured then serves the base tier's estimate with no other filter pass. NaN
    where it cannot tell."""
    import math

    import pixarc_enhance
    from pixarc import memo
    from pixarc.device import CPU
    from pixarc.metrics import psnr
    from pixarc_enhance import model

    monkeypatch.setattr(pixarc_enhance, "WIENER", False)  # the filter's own gain, as the blocks see it
    c = codec()
    a = alike_everywhere()
    src = probe_and_load(encode_bytes(Image.fromarray(a), "PNG"))
    p = c.validate_params({"quality": 40, "subsampling": "4:4:4", "filter": "on", "adapters": "none", "strengths": [0.0]})
    fast, base_tier = c.rate_proxies(p)
    assert fast.codec is c.base and fast.params["speed"] > p["speed"] and base_tier.codec is c.base
    passes = []
    real = model.sampled_sse
    monkeypatch.setattr(model, "sampled_sse", lambda *a, **k: (passes.append(1), real(*a, **k))[1])
    with memo.scope():
        estimate = fast.gap_estimate(src, p, CPU)
        assert memo.stats().get("encode_misses") == 2  # the mosaic at both speeds, nothing of the whole image
        gain = base_tier.gap_estimate(src, p, CPU)
        assert memo.stats().get("encode_misses") == 2 and len(passes) == 1  # the mosaic's filter gain, reused
        fp = {k: fast.params[k] for k in fast.params} | {"quality": p["quality"]}
        faster = c.base.decode(c.base.encode(src, fp)).image
        whole = psnr(src.image, c.decode(c.encode(src, p)).image) - psnr(src.image, faster)
    assert math.isfinite(estimate) and math.isfinite(gain)
    assert abs(estimate - whole) < 0.1 + 0.2 * abs(whole), (estimate, whole)
    small = probe_and_load(encode_bytes(Image.fromarray(a[:200, :200]), "PNG"))
    assert math.isnan(c.mosaic_gap(fast, small, p))
    assert math.isnan(c.mosaic_gap(fast, src, {**p, "filter": "off"}))


def test_a_narrower_filter_starts_from_the_strongest_channels_of_a_wider_one():
    """``narrowed`` keeps, per hidden layer, the channels with the largest (made × read)
    weight norms and wires the next layer to them: at full width it is the same filter;
    narrower, every layer has the new width and the kept channels are the strong ones."""
    from pixarc_enhance.model import EnhanceNet
    from pixarc_enhance.train import narrowed

    torch.manual_seed(0)
    wide = EnhanceNet(channels=8, layers=4)
    with torch.no_grad():
        wide.tail.weight.normal_(0, 0.1)
        wide.head.weight[[1, 5]] *= 50  # two channels of the head that carry far more than the rest
    x, cond = torch.rand(1, 3, 20, 24), torch.tensor([[0.5, 1.0]])
    same = EnhanceNet(channels=8, layers=4)
    same.load_state_dict(narrowed(wide.state_dict(), 8))
    assert torch.equal(same(x, cond), wide(x, cond))
    state = narrowed(wide.state_dict(), 3)
    narrow = EnhanceNet(channels=3, layers=4)
    narrow.load_state_dict(state)  # every shape fits
    kept = [i for i in range(8) if any(torch.equal(wide.head.weight[i], w) for w in state["head.weight"])]
    assert {1, 5} <= set(kept) and len(kept) == 3
    # the next layer reads exactly the kept channels: its rows are the wide layer's, those columns
    rows = wide.body[0].weight[:, kept]
    assert all(any(torch.equal(r, w) for r in rows) for w in state["body.0.weight"])
    with pytest.raises(ValueError):
        narrowed(wide.state_dict(), 9)


def test_training_a_narrower_filter_starts_from_a_shipped_wider_one(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pixarc.cli import main
    from pixarc_enhance.model import EnhanceNet
    from pixarc_enhance.train import narrowed

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",enhance")
    data = tmp_path / "data" / "d"
    data.mkdir(parents=True)
    textured(64, 64).save(data / "0.png")
    out = tmp_path / "out"
    torch.manual_seed(1)
    _save(out, EnhanceNet(channels=6, layers=3), "enhance-avif-c6-l3.pt")
    args = ["train", "enhance", "--data", str(tmp_path / "data"), "--out", str(out), "--batch", "2", "--patch", "32",
            "--channels", "4", "--layers", "3", "--variants", "1", "--refit", "0", "--init-from",
            "enhance-avif-c6-l3.pt", "--lr", "1e-9"]
    res = CliRunner().invoke(main, args + ["--steps", "1"])
    assert res.exit_code == 0, res.output
    files = json.loads((out / "weights.json").read_text())["files"]
    entry = files["enhance-avif-c4-l3.pt"]
    assert entry["init_from"] == "enhance-avif-c6-l3.pt" and entry["channels"] == 4 and entry["steps"] == 1
    from pixarc.weights import load_from_manifest

    wide, _ = load_from_manifest(out, "enhance-avif-c6-l3.pt")
    got, _ = load_from_manifest(out, "enhance-avif-c4-l3.pt")
    want = narrowed({k: v.float() for k, v in wide.items()}, 4)
    assert all(torch.allclose(got[k].float(), want[k], atol=1e-3) for k in want)  # one step at lr 1e-9
    # once a filter of this width is shipped, a run continues it (the wider one is not read again)
    res = CliRunner().invoke(main, args + ["--steps", "2"])
    assert res.exit_code == 0, res.output
    second = json.loads((out / "weights.json").read_text())["files"]["enhance-avif-c4-l3-v2.pt"]
    assert second["continues"] == "enhance-avif-c4-l3.pt" and second["steps"] == 2


def test_filter_channels_caps_the_filter_width_and_the_widest_is_the_default(tmp_path, monkeypatch):
    from pixarc_enhance.model import EnhanceNet

    folder = tmp_path / "w"
    narrow = _save(folder, EnhanceNet(channels=3, layers=3), "a-narrow.pt")  # listed first (sorted names)
    wide = _save(folder, EnhanceNet(channels=5, layers=3), "b-wide.pt")
    monkeypatch.setenv("PIXARC_ENHANCE_WEIGHTS", str(folder))
    c = codec()

    def chosen(**params):
        return c.weights_for(c.validate_params({"quality": 60, **params}))

    assert chosen() == wide["sha256"] and chosen(filter_channels=8) == wide["sha256"]
    assert chosen(filter_channels=4) == narrow["sha256"] and chosen(filter_channels=3) == narrow["sha256"]
    assert chosen(filter_channels=2) == narrow["sha256"]  # none that narrow: the narrowest there is
    src = probe_and_load(encode_bytes(textured(), "PNG"))
    payload = c.encode(src, c.validate_params({"quality": 60, "filter_channels": 4, "filter": "on"}))
    assert payload[0] & 1 and c.decode(payload).image.size == textured().size
    assert bytes.fromhex(narrow["sha256"])[:4] in payload[:12]  # the header names the narrow filter
