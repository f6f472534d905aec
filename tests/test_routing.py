import pytest

from pixarc.classify import Classification
from pixarc.errors import PolicyError
from pixarc.images import ImageInfo
from pixarc.plugins import default_registry
from pixarc.policy import load_policy

RGB = ImageInfo(100, 80, "RGB", 8, "PNG", "RGB")


def route(info, domain, conf, policy=None):
    reg = default_registry()
    return reg.pm.hook.route(info=info, classification=Classification(domain, conf, "stats"),
                             policy=policy or load_policy())


def test_builtin_policies_load():
    for name in ("default", "png", "lossy", "lowrate"):
        p = load_policy(name)
        assert "unknown" in p.routes


def test_confident_domain_uses_its_route_and_ends_with_store():
    r = route(RGB, "line", 0.9)
    assert r.domain == "line" and r.lossless
    assert [c.codec_id for c in r.candidates] == ["jxl-lossless", "webp-lossless", "png", "store"]
    assert r.candidates[0].params == {"effort": 10}  # the route's own params over the policy's


def test_low_confidence_goes_to_unknown_with_reason():
    r = route(RGB, "line", 0.1)
    assert r.domain == "unknown" and "confidence" in r.reason


def test_not_pixel_faithful_goes_to_store():
    info = ImageInfo(10, 10, "CMYK", 0, "JPEG", "CMYK", pixel_faithful=False, notes=("mode CMYK...",))
    r = route(info, "unknown", 0.0)
    assert [c.codec_id for c in r.candidates] == ["store"]


def test_route_params_override_global_params(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('[params.png]\ncompress_level = 3\n[routes.unknown]\ncodecs = ["png"]\n'
                 '[routes.line]\ncodecs = ["png"]\n[routes.line.params.png]\ncompress_level = 1\n')
    pol = load_policy(str(p))
    assert route(RGB, "line", 1.0, pol).candidates[0].params == {"compress_level": 1}
    assert route(RGB, "natural", 1.0, pol).candidates[0].params == {"compress_level": 3}


@pytest.mark.parametrize(
    "text, match",
    [
        ('[routes.line]\ncodecs = ["png"]\n', "unknown"),
        ('[routes.unknown]\ncodecs = []\n', "non-empty"),
        ('[routes.cats]\ncodecs = ["png"]\n[routes.unknown]\ncodecs = ["png"]\n', "unknown domain"),
        ('selection = "best"\n[routes.unknown]\ncodecs = ["png"]\n', "selection"),
        ("this is [not toml", "invalid TOML"),
    ],
)
def test_bad_policies_are_clear_errors(tmp_path, text, match):
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(PolicyError, match=match):
        load_policy(str(p))


def test_missing_policy_file():
    with pytest.raises(PolicyError, match="not found"):
        load_policy("/nonexistent/policy.toml")


def test_smallest_selection_keeps_the_smallest_verified(small_collection, tmp_path):
    from pixarc import runs
    from pixarc.manifest import latest, read_manifest
    import json

    p = tmp_path / "p.toml"
    p.write_text('selection = "smallest"\nmin_confidence = 0.0\n[routes.unknown]\ncodecs = ["png", "webp-lossless"]\n'
                 + "".join(f'[routes.{d}]\ncodecs = ["png", "webp-lossless"]\n'
                           for d in ("natural", "comic", "line", "vector", "screenshot")))
    runs.archive_local(str(small_collection), str(tmp_path / "d"), policy=str(p))
    for r in latest(read_manifest(str(tmp_path / "d"))).to_pylist():
        tried = {a["codec"]: a["bytes"] for a in json.loads(r["attempts"]) if a["result"] in ("verified", "measured")}
        # only the kept encoding is decode-checked; the others were measured and dropped
        assert [a["codec"] for a in json.loads(r["attempts"]) if a["result"] == "verified"] == [r["codec_id"]]
        # store (the original file) is a candidate too: with "smallest" it wins when the
        # source is already smaller than any re-encode
        assert set(tried) == {"png", "webp-lossless", "store"}, r["key"]
        assert r["bitstream_bytes"] == min(tried.values())
    from pixarc.manifest import rows_from_table
    from pixarc.report import best_of_savings

    rows = rows_from_table(latest(read_manifest(str(tmp_path / "d"))))  # typed, as the report reads them
    best = {codec: (n, alone, kept) for codec, n, alone, kept in best_of_savings(rows)}
    assert set(best) == {"png", "webp-lossless", "store"}
    for codec, (n, alone, kept) in best.items():
        assert n == 5 and kept == sum(r.bitstream_bytes for r in rows) and alone >= kept


@pytest.mark.parametrize("kind, goal", [("psnr", 36.0), ("bpp", 1.0)])
def test_target_modes_search_the_rate_point(small_collection, tmp_path, kind, goal):
    import json

    from pixarc import runs
    from pixarc.manifest import latest, read_manifest

    p = tmp_path / "t.toml"
    p.write_text(f'min_confidence = 1.1\n[routes.unknown]\nlossless = false\ncodecs = ["webp"]\ntarget_{kind} = {goal}\n')
    runs.archive_local(str(small_collection), str(tmp_path / "d"), policy=str(p))
    rows = latest(read_manifest(str(tmp_path / "d"))).to_pylist()
    reached = 0
    for r in rows:
        q = json.loads(r["params"])["quality"]
        note = [a for a in json.loads(r["attempts"]) if a["result"] == "target"][0]["reason"]
        if "not reachable" in note:
            continue
        reached += 1
        if kind == "psnr":
            assert r["psnr"] >= goal, r["key"]
        else:
            assert r["bpp"] <= goal + 1e-9, r["key"]
        assert f"quality={q}" in note
    assert reached >= 1, [r["attempts"] for r in rows]  # the search must have met the goal somewhere


def test_both_targets_is_an_error(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[routes.unknown]\ncodecs = ["webp"]\ntarget_psnr = 30\ntarget_bpp = 1\n')
    with pytest.raises(PolicyError, match="both"):
        load_policy(str(p))
