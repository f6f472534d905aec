"""``selection = "rd"``: per image, the candidate reaching the route's target at the lowest
cost wins; the report says which codec won how often and what that saved."""

import json
import math
import os
import re
import types

import numpy as np
import pytest
from PIL import Image

from conftest import install_plugins
from pixarc import plugins, runs
from pixarc import device as devices
from pixarc.metrics import psnr
from pixarc.device import ON_CPU
from pixarc.codec import Codec, Decoded, Param
from pixarc.hookspecs import hookimpl
from pixarc.manifest import latest, read_manifest
from pixarc.manifest import row_from_record
from pixarc.plugins import build_plugin_manager
from pixarc.report import rd_summary

CODECS = ["webp", "jpeg", "jxl"]


class Palette(Codec):
    """A lossy test codec: ``quality`` q keeps 4**q colours; the payload is raw pixels."""

    lossless = False
    rate_param = "quality"

    def encode(self, src, params, device="cpu"):
        im = src.image.convert("RGB").quantize(2 ** (2 * params["quality"])).convert("RGB")
        return f"{im.width}|{im.height}|".encode() + im.tobytes()

    def decode(self, payload, device="cpu"):
        w, h, body = payload.split(b"|", 2)
        return Decoded(image=Image.frombytes("RGB", (int(w), int(h)), body))


def use_plugin(monkeypatch, name, codec_cls):
    """Install ``codec_cls`` as plugin ``name`` beside the built-ins, for the jobs."""
    mod = types.ModuleType(name)
    mod.register_codecs = hookimpl(lambda register: register(codec_cls))
    install_plugins(monkeypatch, **{name: mod})  # what the jobs' registries load


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    r = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:96]
    smooth = np.stack([128 + 90 * np.sin(xx / 11 + c) * np.cos(yy / 8) for c in range(3)], -1)
    edges = np.where((xx // 12 + yy // 12) % 2, 230, 25)[..., None].repeat(3, -1)
    for name, a in {"smooth": smooth + r.normal(0, 3, smooth.shape), "edges": edges,
                    "noisy": 128 + r.normal(0, 40, smooth.shape)}.items():
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(src / f"{name}.png")
    return src


def archive(images, tmp_path, selection, target):
    p = tmp_path / f"{selection}.toml"
    p.write_text(f'selection = "{selection}"\nmin_confidence = 1.1\n[routes.unknown]\nlossless = false\n'
                 f'codecs = {json.dumps(CODECS)}\n{target}\n')
    dest = tmp_path / f"d-{selection}-{abs(hash(target))}"
    runs.archive_local(str(images), str(dest), policy=str(p))
    return latest(read_manifest(str(dest))).to_pylist()


def compared(row):
    """The candidates' encodings the selection compared: decode-checked (``verified``) or
    measured only (``measured``: a PSNR target's candidates that were not kept)."""
    return [a for a in json.loads(row["attempts"]) if a["result"] in ("verified", "measured")]


def bisected(codec_id, image_path, target, row=None):
    """The selection before the fast search, as a reference: a bisection of the quality
    where every probe is a full, decode-checked encode (bytes of the one it keeps; with
    ``row``, its header stamped as the archive stamps it: key, run, predecessor)."""
    from pixarc.encode import encode_verified
    from pixarc.images import probe_and_load

    codec = plugins.default_registry().codec(codec_id)
    src = probe_and_load(image_path.read_bytes())
    if row is not None:
        src.extra["stamp"] = {"key": row["key"], "run_id": row["run_id"], "previous_sha256": ""}
    values = codec.rate_values()
    lo, hi, best = 0, len(values) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        enc = encode_verified(codec, codec.validate_params({"quality": values[mid]}), src, "unknown", devices.CPU)
        if enc.psnr >= target:
            best, hi = enc, mid - 1
        else:
            lo = mid + 1
    return None if best is None else len(best.blob)


def test_rd_selection_keeps_the_fewest_bytes_reaching_the_psnr_target(images, tmp_path):
    rows = archive(images, tmp_path, "rd", "target_psnr = 33.0")
    assert len(rows) == 3
    for r in rows:
        attempts = json.loads(r["attempts"])
        tried = compared(r)
        # a PSNR target: only the kept encoding was decode-checked, the others measured
        assert [a["codec"] for a in tried if a["result"] == "verified"] == [r["codec_id"]], tried
        # every candidate was either searched to the end and verified, or given up as soon
        # as a probe showed it could not undercut the bytes already kept
        searched = {a["codec"] for a in tried} | {a["codec"] for a in attempts if a["result"] == "pruned"}
        assert searched == set(CODECS) | {"store"}
        for a in attempts:
            if a["result"] == "pruned":
                assert "cannot undercut" in a["reason"]
        reaching = [a for a in tried if a["met"]]
        assert reaching and all(a["met"] == (a.get("psnr", math.inf) >= 33.0) for a in tried)
        assert r["bitstream_bytes"] == min(a["bytes"] for a in reaching)
        assert r["psnr"] >= 33.0
        # as few bytes as the bisection of every candidate would have kept (within 1 %)
        reference = [b for c in CODECS if (b := bisected(c, images / r["key"], 33.0, r)) is not None]
        assert reference and r["bitstream_bytes"] <= 1.01 * min(reference)
    (s,) = rd_summary([row_from_record(r) for r in rows])  # one route
    assert s.route == "unknown" and s.images == 3 and sum(s.wins.values()) == 3
    assert s.kept_bytes == sum(r["bitstream_bytes"] for r in rows)
    everywhere = [c for c in CODECS + ["store"] if all(any(a["codec"] == c for a in compared(r)) for r in rows)]
    assert s.best_bytes == min(sum(a["bytes"] for r in rows for a in compared(r) if a["codec"] == c)
                               for c in everywhere
                               if all(a["met"] for r in rows for a in compared(r) if a["codec"] == c))
    assert s.kept_bytes <= s.best_bytes  # per image never more than any codec meeting the target
    assert "won on" in s.text() and f"{s.best_codec} alone" in s.text()


def test_rate_search_probes_fewer_times_than_bisection_and_checks_only_what_it_keeps(images, monkeypatch):
    """Probes are judged by PSNR alone (one decode each); only the kept encoding is packed
    and decode-checked again; an RD bound stops a codec that cannot win early."""
    from pixarc import checks, ratesearch
    from pixarc.selection import encode_route
    from pixarc.images import probe_and_load
    from pixarc.policy import Candidate, Route

    ratesearch.forget()
    reg = plugins.default_registry()
    counts = {"encode": 0, "check": 0}
    webp = reg.codec("webp")
    real_encode, real_check = webp.encode, checks.decode_with
    monkeypatch.setattr(webp, "encode", lambda *a, **k: (counts.__setitem__("encode", counts["encode"] + 1),
                                                          real_encode(*a, **k))[1])
    monkeypatch.setattr(checks, "decode_with", lambda *a, **k: (counts.__setitem__("check", counts["check"] + 1),
                                                                 real_check(*a, **k))[1])
    import pixarc.encode as enc_mod
    monkeypatch.setattr(enc_mod, "decode_with", checks.decode_with)
    srcs = [probe_and_load((images / f"{n}.png").read_bytes()) for n in ("smooth", "edges")]  # reach 33 dB
    route = Route("unknown", False, (Candidate("webp", {}, ("psnr", 33.0)),), "rd")
    per_image = []
    for src in srcs:
        before = dict(counts)
        chosen, attempts = encode_route(src, route, reg, ON_CPU)
        assert chosen is not None and chosen.psnr >= 33.0
        per_image.append((counts["encode"] - before["encode"], counts["check"] - before["check"]))
    # bisection over webp's 101 qualities: 7 full encodes each; every one decode-checked
    assert all(checks_ == 1 for _, checks_ in per_image)
    assert sum(e for e, _ in per_image) < 7 * len(srcs)


def test_rd_selection_keeps_the_best_psnr_within_the_bpp_budget(images, tmp_path):
    rows = archive(images, tmp_path, "rd", "target_bpp = 1.5")
    assert len(rows) == 3
    fitted = 0
    for r in rows:
        tried = compared(r)
        within = [a for a in tried if a["met"]]
        assert all(a["met"] == (8 * a["bytes"] / (96 * 72) <= 1.5) for a in tried)
        if within:  # (a container header is counted too: a tiny budget may fit nothing)
            fitted += 1
            best = max(within, key=lambda a: a.get("psnr", math.inf))
            assert r["codec_id"] == best["codec"] and r["bitstream_bytes"] == best["bytes"]
    assert fitted >= 1, "no image had a candidate within the budget: the selection was never checked"


def test_rd_never_keeps_a_candidate_below_a_reachable_target(images, tmp_path):
    """("smallest" would keep the fewest bytes whatever their PSNR.)"""
    rows = archive(images, tmp_path, "rd", "target_psnr = 60.0")  # only store (lossless) reaches it
    assert len(rows) == 3
    for r in rows:
        assert r["codec_id"] == "store"


def test_unknown_selection_is_refused(tmp_path):
    from pixarc.errors import PolicyError
    from pixarc.policy import load_policy

    p = tmp_path / "p.toml"
    p.write_text('selection = "rd-ish"\n[routes.unknown]\ncodecs = ["png"]\n')
    with pytest.raises(PolicyError, match="selection"):
        load_policy(str(p))


def test_rd_summary_is_per_route_and_skips_codecs_that_missed_the_target():
    def row(route, codec, size, attempts, lossless=False):
        return {"status": "done", "route": route, "codec_id": codec, "bitstream_bytes": size, "lossless": lossless,
                "psnr": math.inf if lossless else 36.5, "attempts": json.dumps(attempts)}

    def a(codec, size, met=True, psnr=36.5):
        return {"codec": codec, "result": "verified", "bytes": size, "met": met, "psnr": psnr}

    rows = [
        row("natural", "avif", 100, [a("adaptive", 40, met=False, psnr=20.0), a("avif", 100), a("webp", 150)]),
        row("natural", "webp", 120, [a("adaptive", 50, met=False, psnr=21.0), a("avif", 130), a("webp", 120)]),
        row("line", "webp-lossless", 10, [{"codec": "webp-lossless", "result": "verified", "bytes": 10},
                                          {"codec": "png", "result": "verified", "bytes": 12}], lossless=True),
    ]
    line, natural = rd_summary([row_from_record(r) for r in rows])
    assert (natural.route, natural.wins, natural.kept_bytes) == ("natural", {"avif": 1, "webp": 1}, 220)
    assert (natural.best_codec, natural.best_bytes) == ("avif", 230)  # adaptive is smaller but missed 36 dB
    assert abs(natural.saved - (1 - 220 / 230)) < 1e-12
    assert (line.route, line.best_codec, line.kept_bytes, line.best_bytes) == ("line", "webp-lossless", 10, 10)
    assert "lossless" in line.text() and "avif alone" in natural.text()


def test_gpu_batches_skip_candidates_that_are_rate_searched(images, tmp_path, monkeypatch):
    """A candidate with a target is rate-searched image by image; encoding a batch at its
    plain parameters first (as today) would be thrown away: on a GPU, a full adaptation."""
    batches = []

    class FakeLossyGPU(Palette):
        codec_id = "test-lossygpu"
        prefers_gpu = True
        params_schema = {"quality": Param(int, 2, 1, 4)}

        def encode_batch(self, srcs, params, device="cpu"):
            batches.append(len(srcs))
            return super().encode_batch(srcs, params, device)

    use_plugin(monkeypatch, "lossygpu", FakeLossyGPU)
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    p = tmp_path / "p.toml"
    p.write_text('selection = "rd"\nmin_confidence = 1.1\n[routes.unknown]\nlossless = false\n'
                 'codecs = ["test-lossygpu", "webp"]\ntarget_psnr = 30.0\n')
    runs.archive_local(str(images), str(tmp_path / "d"), policy=str(p))
    rows = latest(read_manifest(str(tmp_path / "d"))).to_pylist()
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert all(any(a["codec"] == "test-lossygpu" and a["result"] == "target" for a in json.loads(r["attempts"]))
               for r in rows)
    assert batches == []


def test_screened_codec_goes_last_and_is_skipped_when_its_ceiling_cannot_win(images, tmp_path, monkeypatch):
    """A codec with a cheap PSNR ceiling (the adaptive one: a minute of adaptation per probe)
    is tried after the route's other candidates, although listed first, and skipped on the
    images where another candidate met the target its ceiling cannot reach; where none did,
    or where the ceiling is high enough, it is rate-searched as usual."""
    calls = []

    class Screened(Palette):
        codec_id = "test-screened"
        screened = True
        params_schema = {"quality": Param(int, 2, 1, 3), "ceiling": Param(float, 20.0, 0.0, 1000.0),
                         "floor": Param(int, 0, 0, 10**9)}

        def psnr_ceiling(self, src, params, device="cpu"):  # the contract before `below`: still called
            calls.append("ceiling")
            return params["ceiling"]

        def bytes_floor(self, src, params, psnr_goal, device="cpu"):
            calls.append("floor")
            return params["floor"] or None

        def encode(self, src, params, device="cpu"):
            calls.append("encode")
            return super().encode(src, params, device)

    use_plugin(monkeypatch, "screened", Screened)

    def run(name, target, ceiling, floor=0):
        p = tmp_path / f"{name}.toml"
        p.write_text(f'selection = "rd"\nmin_confidence = 1.1\n[params.test-screened]\nceiling = {ceiling}\n'
                     f'floor = {floor}\n'
                     f'[routes.unknown]\nlossless = false\ncodecs = ["test-screened", "webp"]\n{target}\n')
        calls.clear()
        runs.archive_local(str(images), str(tmp_path / name), policy=str(p))
        rows = latest(read_manifest(str(tmp_path / name))).to_pylist()
        assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
        met_target.update({r["key"]: any(a["codec"] == "webp" and a.get("met") for a in json.loads(r["attempts"]))
                           for r in rows})
        return {(r["key"], r["codec_id"]): [(a["codec"], a["result"], a.get("reason", "")) for a in json.loads(r["attempts"])]
                for r in rows}

    met_target: dict[str, bool] = {}  # per image: did webp's verified encode meet the target
    low = run("low", "target_psnr = 30.0", 25.0)  # webp reaches 30 dB on two of these; 25 dB cannot
    met = 0
    for (key, kept), attempts in low.items():
        assert [c for c, _, _ in attempts][:2] == ["webp", "webp"]  # target search + verified, then the screened one
        searched = [a for a in attempts if a[0] == "test-screened"]
        if met_target[key]:
            met += 1
            (screened,) = searched
            assert screened[1] == "screened" and "at most 25.0 dB" in screened[2] and screened[2].endswith("webp reached")
        else:  # webp missed the target (noise): no real candidate met it, so the screened one is searched
            assert searched[0][1] == "target", attempts  # (``store``, the last resort, is tried after it)
    assert met == 2 and "encode" in calls

    high = run("high", "target_psnr = 30.0", 1000.0)  # the ceiling allows a win: searched as usual
    assert "encode" in calls  # searched (to the end, or until it could not undercut webp)
    assert all({r for c, r, _ in a if c == "test-screened"} & {"target", "pruned"} for a in high.values())

    dear = run("dear", "target_psnr = 30.0", 1000.0, floor=10**8)  # may reach 30 dB, never in fewer bytes
    assert {"ceiling", "floor"} <= set(calls)
    for (key, kept), attempts in dear.items():
        screened = [a for a in attempts if a[0] == "test-screened"]
        if met_target[key]:
            assert len(screened) == 1 and screened[0][1] == "screened" and f"at least {10**8} bytes" in screened[0][2]
        else:
            assert screened[0][1] == "target"
    cheap = run("cheap", "target_psnr = 30.0", 1000.0, floor=1)  # a floor below webp's bytes: searched
    assert "encode" in calls

    unmet = run("unmet", "target_bpp = 0.001", 25.0)  # nobody fits 0.001 bpp: no ground to skip it
    assert "encode" in calls and "ceiling" not in calls
    assert all(("test-screened", "target") in [(c, r) for c, r, _ in a] for a in unmet.values())


def test_avif_and_avif_enhanced_share_one_encode_per_quality(images, monkeypatch):
    """RD selection with both: every AVIF bitstream (a probe of ``avif``, the enhanced
    codec's base, the searches' cheap tier at speed 9) is encoded once per image, whoever
    asks first."""
    from pixarc.selection import encode_route
    from pixarc.images import probe_and_load
    from pixarc.policy import Candidate, Route

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",enhance")
    reg = build_plugin_manager()
    enhanced = reg.codec("avif-enhanced")
    assert enhanced.base is reg.codec("avif")  # its base is this registry's (components): one memo, one encode
    src = probe_and_load((images / "smooth.png").read_bytes())
    if enhanced.unsupported_reason(src.info):
        pytest.skip(enhanced.unsupported_reason(src.info))
    avif_cls = type(reg.codec("avif"))
    encoded = []
    real = avif_cls.encode
    monkeypatch.setattr(avif_cls, "encode", lambda self, s, p, d=devices.CPU: (
        encoded.append((p["quality"], p["speed"])), real(self, s, p, d))[1])
    params = {"speed": 8, "subsampling": "4:4:4"}
    # filter "on": the enhanced codec cannot code plain AVIF, so both are searched
    route = Route("unknown", False, (Candidate("avif", params, ("psnr", 34.0)),
                                     Candidate("avif-enhanced", {**params, "filter": "on"}, ("psnr", 34.0))), "rd")
    chosen, attempts = encode_route(src, route, reg, ON_CPU)
    assert chosen is not None and {a.codec for a in attempts if a.result in ("target", "pruned")} == {
        "avif", "avif-enhanced"}
    assert encoded and len(encoded) == len(set(encoded)), sorted(encoded)  # no (quality, speed) encoded twice
    assert {speed for _, speed in encoded} == {8, 9}  # both searches located the target on AVIF's fast tier


def test_a_codec_another_candidate_reproduces_is_not_searched_twice(images, monkeypatch):
    """``avif-enhanced`` (filter auto) may code plain AVIF with one more byte: with the same
    AVIF settings in the route, plain AVIF is not searched (covered) but checked at the
    quality the enhanced codec kept; with other settings, or where the enhanced codec
    fails on the image, it is searched as usual."""
    from pixarc.selection import encode_route
    from pixarc.images import probe_and_load
    from pixarc.policy import Candidate, Route

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",enhance")
    reg = build_plugin_manager()
    enhanced = reg.codec("avif-enhanced")
    src = probe_and_load((images / "smooth.png").read_bytes())
    if enhanced.unsupported_reason(src.info):
        pytest.skip(enhanced.unsupported_reason(src.info))
    params = {"speed": 8, "subsampling": "4:4:4"}
    target = ("psnr", 34.0)

    def results(avif_params):
        route = Route("unknown", False, (Candidate("avif", avif_params, target),
                                         Candidate("avif-enhanced", params, target)), "rd")
        chosen, attempts = encode_route(src, route, reg, ON_CPU)
        assert chosen is not None and chosen.psnr >= 34.0
        return {(a.codec, a.result): a.reason for a in attempts}

    same = results(params)
    # not searched again, but checked at the quality the enhanced codec kept: verified there
    # exactly when plain AVIF meets the target at that quality too
    q = int(re.search(r"quality=(\d+)", same[("avif-enhanced", "target")]).group(1))
    plain = reg.codec("avif")
    at_q = psnr(src.image, plain.decode(plain.encode(src, plain.validate_params({**params, "quality": q}))).image)
    if at_q >= target[1]:
        assert same[("avif", "target")] == f"covered by avif-enhanced: its quality={q} meets the target too"
        assert len({("avif", "verified"), ("avif", "measured")} & set(same)) == 1  # kept (checked) or compared
    else:
        assert "covered by avif-enhanced" in same[("avif", "skipped")] and "short of the target" in same[
            ("avif", "skipped")]
        assert ("avif", "target") not in same
    other = results({**params, "speed": 9})  # other AVIF settings: a different candidate
    assert ("avif", "target") in other and ("avif", "skipped") not in other
    monkeypatch.setattr(type(enhanced), "encode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    failed = results(params)
    assert ("avif-enhanced", "failed") in failed and ("avif", "target") in failed


def test_a_bracket_far_from_the_bound_prunes_and_a_near_miss_searches_on():
    """Two probes bracketing RD selection's bound in bytes prune the codec when the line
    through them stays well below the goal at the bound; within the margin, the search
    goes on to its boundary."""
    import math as m

    from pixarc import ratesearch

    values = list(range(101))

    def measure(i):  # PSNR linear in log-bytes: 20 dB at 1 kB, +6 dB per doubling
        b = int(1000 * 2 ** (i / 10))
        return ratesearch.Probe(i, values[i], 20 + 6 * m.log2(b / 1000), b)

    goal = 44.0  # reached at 16 kB (index 40)
    ratesearch.forget()
    full = ratesearch.search(values, "psnr", goal, 10_000, measure, ("t", "none"))
    assert full.kept.index == 40 and full.kept.bytes == 16_000
    ratesearch.forget()
    far = ratesearch.search(values, "psnr", goal, 10_000, measure, ("t", "far"), bound=8_000)  # 6 dB short
    assert far.kept is None and far.interpolated is not None and far.interpolated < goal - 5
    assert len(far.probes) < len(full.probes) or len(far.probes) <= 3
    ratesearch.forget()
    near = ratesearch.search(values, "psnr", goal, 10_000, measure, ("t", "near"), bound=15_500)  # 0.3 dB short
    assert near.kept is not None and near.kept.index == 40  # searched to its boundary (the caller compares)
    ratesearch.forget()
    wins = ratesearch.search(values, "psnr", goal, 10_000, measure, ("t", "wins"), bound=17_000)
    assert wins.kept is not None and wins.kept.index == 40


def test_fallbacks_are_searched_only_where_no_candidate_met_the_target(images, tmp_path):
    """``fallbacks``: after every other candidate, and only where none of them reached the
    target (the lossy policy's JPEG XL and WebP behind AVIF)."""
    def run(name, target):
        p = tmp_path / f"{name}.toml"
        p.write_text(f'selection = "rd"\nmin_confidence = 1.1\n[routes.unknown]\nlossless = false\n'
                     f'codecs = ["jpeg"]\nfallbacks = ["webp"]\n{target}\n')
        runs.archive_local(str(images), str(tmp_path / name), policy=str(p))
        rows = latest(read_manifest(str(tmp_path / name))).to_pylist()
        assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
        return [({(a["codec"], a["result"]): a.get("reason", "") for a in json.loads(r["attempts"])},
                 any(a["codec"] == "jpeg" and a.get("met") for a in json.loads(r["attempts"]))) for r in rows]

    skipped = 0
    for attempts, jpeg_met in run("met", "target_psnr = 25.0"):  # JPEG reaches 25 dB on the smooth images
        assert ("jpeg", "target") in attempts
        if jpeg_met:  # WebP never searched
            skipped += 1
            assert "fallback, not needed: jpeg met the target" in attempts[("webp", "skipped")]
            assert ("webp", "target") not in attempts
        else:  # (noise: JPEG misses it) WebP searched
            assert ("webp", "target") in attempts and ("webp", "skipped") not in attempts
    assert skipped == 2
    for attempts, _ in run("unmet", "target_psnr = 200.0"):  # nobody reaches 200 dB: WebP is searched too
        assert ("webp", "target") in attempts and ("webp", "skipped") not in attempts
    from pixarc.policy import load_policy
    from pixarc.errors import PolicyError

    bad = tmp_path / "bad.toml"
    bad.write_text('[routes.unknown]\ncodecs = ["png"]\nfallbacks = "webp"\n')
    with pytest.raises(PolicyError, match="fallbacks must be a list"):
        load_policy(str(bad))
    assert load_policy("lossy").routes["natural"].fallbacks == ("jxl", "webp")


def test_a_kept_candidate_whose_decode_check_fails_gives_way_to_the_next(images, tmp_path, monkeypatch):
    """Only the kept encoding is decode-checked; where that check fails, the candidate is
    recorded as failed and the route runs again without it: the row keeps the next best,
    itself checked."""
    from pixarc import encode
    from pixarc.container import unpack
    from pixarc.errors import VerificationError

    first = {r["key"]: r for r in archive(images, tmp_path, "rd", "target_psnr = 33.0")}
    real, failed = encode._check_stored, {}

    def fails_once_per_image(codec, blob, device, same_pixels=False):
        source = unpack(blob).source_sha256
        if source not in failed:
            failed[source] = codec.codec_id
            raise VerificationError(f"{codec.codec_id}: injected check failure")
        return real(codec, blob, device, same_pixels)

    monkeypatch.setattr(encode, "_check_stored", fails_once_per_image)
    (tmp_path / "again").mkdir()
    rows = archive(images, tmp_path / "again", "rd", "target_psnr = 33.0")
    assert len(rows) == len(first) == 3 and len(failed) == 3
    for r in rows:
        attempts = json.loads(r["attempts"])
        loser = first[r["key"]]["codec_id"]  # what the selection kept when every check passed
        assert attempts[0] == {"codec": loser, "result": "failed",
                               "reason": f"kept, then its decode check failed: verification_failed: {loser}: "
                                         f"injected check failure"}, attempts[0]
        assert r["status"] == "done" and r["codec_id"] != loser
        assert [a["codec"] for a in attempts if a["result"] == "verified"] == [r["codec_id"]]
        assert r["bitstream_bytes"] >= first[r["key"]]["bitstream_bytes"]
