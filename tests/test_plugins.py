"""The hook contract (datasette-style: every hook documented and exercised) and loading rules."""

import inspect
import logging
import types
from pathlib import Path

import pytest

from conftest import encode_bytes, rng_image
from pixarc import plugins
from pixarc import hookspecs, runs
from pixarc.classify import Classification, Classifier
from pixarc.codec import Codec, Decoded, Param
from pixarc.errors import PluginError
from pixarc.hookspecs import hookimpl
from pixarc.manifest import latest, read_manifest
from pixarc.plugins import build_plugin_manager
from pixarc.policy import Candidate, Route

@pytest.fixture
def allow_testplug(monkeypatch):
    import os

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",testplug,clash,bad")


HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "pixarc_spec")]


def test_hooks_are_the_documented_set():
    assert sorted(HOOKS) == sorted(["register_codecs", "register_classifiers", "route", "manifest_columns",
                                    "manifest_values", "report_sections"])


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook):
    fn = getattr(hookspecs, hook)
    assert fn.__doc__ and len(fn.__doc__.split()) > 15, f"{hook} needs a real docstring"
    assert inspect.signature(fn).return_annotation is not inspect.Signature.empty
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != "test_plugins.py")
    this = Path(__file__).read_text().split("# --- hook " + "exercises", 1)[1]
    assert hook in tests or hook in this, f"no test exercises {hook}"


# --- hook exercises ---------------------------------------------------------


class ReverseCodec(Codec):
    """A toy third-party codec: raw bytes reversed (lossless)."""

    codec_id = "test-reverse"
    lossless = True
    params_schema = {"pad": Param(int, 0, 0, 4)}

    def encode(self, src, params, device="cpu"):
        im = src.image
        head = f"{im.mode}|{im.width}|{im.height}|".encode()
        return head + im.tobytes()[::-1]

    def decode(self, payload, device="cpu"):
        from PIL import Image

        mode, w, h, body = payload.split(b"|", 3)
        return Decoded(image=Image.frombytes(mode.decode(), (int(w), int(h)), body[::-1]))


def third_party_plugin():
    mod = types.ModuleType("pixarc_test_plugin")

    @hookimpl
    def register_codecs(register):
        register(ReverseCodec)

    @hookimpl
    def route(info, classification, policy):
        if info.width == 13:  # routes only 13-px-wide images; others fall through
            return Route("custom", True, (Candidate("test-reverse"),), "first", "13 px wide")
        return None

    @hookimpl
    def manifest_columns():
        import pyarrow as pa

        return {"test_flag": pa.string()}

    @hookimpl
    def manifest_values(row):
        return {"test_flag": f"{row.status}:{row.codec_id}", "not_declared": 1}  # the second is ignored

    @hookimpl
    def report_sections(rows):
        return [("Test", f"{rows.num_rows} rows")]

    @hookimpl
    def register_classifiers(register):
        register(AlwaysVector)

    mod.register_codecs, mod.route, mod.manifest_columns, mod.report_sections, mod.register_classifiers = (
        register_codecs, route, manifest_columns, report_sections, register_classifiers,
    )
    mod.manifest_values = manifest_values
    return mod


class AlwaysVector(Classifier):
    classifier_id = "always-vector"

    def classify(self, image):
        return Classification("vector", 0.99, self.classifier_id)


def test_third_party_codec_route_and_columns(tmp_path, monkeypatch, allow_testplug):
    reg = build_plugin_manager({"testplug": third_party_plugin()})
    assert "test-reverse" in reg.codecs and reg.owner["test-reverse"] == "testplug"
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "narrow.png").write_bytes(encode_bytes(rng_image("RGB", (13, 9)), "PNG"))
    (src / "wide.png").write_bytes(encode_bytes(rng_image("RGB", (30, 9)), "PNG"))
    monkeypatch.setattr(plugins, "default_registry", lambda: reg)
    runs.archive_local(str(src), str(dest))
    table = read_manifest(str(dest))
    rows = {r["key"]: r for r in latest(table).to_pylist()}
    assert rows["narrow.png"]["codec_id"] == "test-reverse" and rows["narrow.png"]["route"] == "custom"
    assert rows["wide.png"]["codec_id"] != "test-reverse"  # the built-in router answered
    assert "test_flag" in table.column_names and "not_declared" not in table.column_names
    assert {k: r["test_flag"] for k, r in rows.items()} == {"narrow.png": "done:test-reverse",
                                                          "wide.png": f"done:{rows['wide.png']['codec_id']}"}
    assert reg.pm.hook.report_sections(rows=table) == [[("Test", "2 rows")]]
    # recompress fills them too, in its own rows
    runs.recompress_local(str(dest), policy="png", min_saving=0.0, apply=True)
    new = [r for r in read_manifest(str(dest)).to_pylist() if r["job"] == "recompress"]
    assert new and all(r["test_flag"] == f"done:{r['codec_id']}" for r in new)


def test_third_party_classifier_named_by_policy(tmp_path, monkeypatch, allow_testplug):
    reg = build_plugin_manager({"testplug": third_party_plugin()})
    assert reg.owner["always-vector"] == "testplug"
    policy = tmp_path / "p.toml"
    policy.write_text('classifier = "always-vector"\n[routes.unknown]\ncodecs = ["png"]\n'
                      '[routes.vector]\ncodecs = ["webp-lossless"]\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(encode_bytes(rng_image("RGB", (30, 9)), "PNG"))
    monkeypatch.setattr(plugins, "default_registry", lambda: reg)
    runs.archive_local(str(src), str(tmp_path / "d"), policy=str(policy))
    row = latest(read_manifest(str(tmp_path / "d"))).to_pylist()[0]
    assert (row["domain"], row["classifier_id"], row["codec_id"]) == ("vector", "always-vector", "webp-lossless")


def test_duplicate_codec_id_is_refused(allow_testplug):
    class Clash(ReverseCodec):
        codec_id = "png"

    mod = types.ModuleType("clash")

    @hookimpl
    def register_codecs(register):
        register(Clash)

    mod.register_codecs = register_codecs
    with pytest.raises(PluginError, match="registered by both"):
        build_plugin_manager({"clash": mod})


def test_registering_a_non_codec_is_refused(allow_testplug):
    mod = types.ModuleType("bad")

    @hookimpl
    def register_codecs(register):
        register(dict)

    mod.register_codecs = register_codecs
    with pytest.raises(PluginError, match="not a Codec"):
        build_plugin_manager({"bad": mod})


def test_allowlist_and_denylist(monkeypatch):
    monkeypatch.setenv("PIXARC_PLUGINS", "png,store,stats_classifier,default_router")
    reg = build_plugin_manager({"testplug": third_party_plugin()})
    assert set(reg.codecs) == {"png", "store"}, "an unlisted plugin must not load"
    monkeypatch.delenv("PIXARC_PLUGINS")
    monkeypatch.setenv("PIXARC_DISABLE_PLUGINS", "webp,jxl")
    reg = build_plugin_manager()
    assert "webp" not in reg.codecs and "jxl-lossless" not in reg.codecs and "png" in reg.codecs


def test_builtins_come_through_the_entry_point_group():
    reg = build_plugin_manager()
    infos = {p.name: p for p in reg.plugins()}
    assert infos["png"].distribution == "pixarc" and infos["png"].codecs == ("png",)
    assert infos["stats_classifier"].classifiers == ("stats",)
    assert "route" in infos["default_router"].hooks
    assert reg.provenance("webp")[0] == "pixarc"


def test_tracing_logs_hook_calls(monkeypatch, caplog):
    monkeypatch.setenv("PIXARC_TRACE_HOOKS", "1")
    reg = build_plugin_manager()
    from pixarc.classify import Classification
    from pixarc.images import ImageInfo
    from pixarc.policy import load_policy

    with caplog.at_level(logging.INFO, logger="pixarc.hooks"):
        reg.pm.hook.route(info=ImageInfo(4, 4, "RGB", 8, "PNG", "RGB"),
                          classification=Classification("line", 0.9, "stats"), policy=load_policy())
    assert any("route" in r.message for r in caplog.records)
