"""The hook contract (datasette-style: every hook documented and exercised) and loading rules."""

import inspect
import logging
import sys
import types
from pathlib import Path

import pluggy
import pytest

from conftest import encode_bytes, install_plugins, rng_image
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


def _hook_names() -> list[str]:
    """The hooks pluggy finds in the contract module (not a hand-kept list, not source text)."""
    pm = pluggy.PluginManager("pixarc")
    pm.add_hookspecs(hookspecs)
    return sorted(name for name, caller in vars(pm.hook).items() if getattr(caller, "spec", None) is not None)


HOOKS = _hook_names()


def test_the_contract_has_hooks():
    # guards the parametrized checks below against an empty list (they would all pass vacuously)
    assert {"register_codecs", "route", "register_commands"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    fn = getattr(hookspecs, hook)
    assert fn.__doc__ and len(fn.__doc__.split()) > 15, f"{hook} needs a real docstring"
    assert inspect.signature(fn).return_annotation is not inspect.Signature.empty
    docs = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    assert f"`{hook}(" in docs, f"docs/plugins.md does not list {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    """datasette's rule: each hook has a behavioural test named after it, in this module."""
    tests = {name for name, fn in inspect.getmembers(sys.modules[__name__], inspect.isfunction)
             if fn.__module__ == __name__}
    assert f"test_hook_{hook}" in tests, f"write test_hook_{hook} in tests/test_plugins.py"


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


@pytest.fixture
def archived(tmp_path, monkeypatch, allow_testplug):
    """Two images archived with the third-party plugin loaded: 13 px wide (its route) and 30."""
    reg = build_plugin_manager({"testplug": third_party_plugin()})
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "narrow.png").write_bytes(encode_bytes(rng_image("RGB", (13, 9)), "PNG"))
    (src / "wide.png").write_bytes(encode_bytes(rng_image("RGB", (30, 9)), "PNG"))
    runs.archive_local(str(src), str(dest), registry=reg)
    table = read_manifest(str(dest))
    return reg, dest, table, {r["key"]: r for r in latest(table).to_pylist()}


def test_hook_register_codecs(allow_testplug):
    reg = build_plugin_manager({"testplug": third_party_plugin()})
    assert reg.owner["test-reverse"] == "testplug" and reg.codecs["test-reverse"] is ReverseCodec
    assert "register_codecs" in {p.name: p for p in reg.plugins()}["testplug"].hooks
    from pixarc.images import probe_and_load

    src = probe_and_load(encode_bytes(rng_image("RGB", (13, 9)), "PNG"))
    codec = reg.codec("test-reverse")
    assert codec.decode(codec.encode(src, codec.validate_params({}))).image.tobytes() == src.image.tobytes()


def test_hook_route(archived):
    _, _, _, rows = archived
    assert (rows["narrow.png"]["codec_id"], rows["narrow.png"]["route"]) == ("test-reverse", "custom")
    assert rows["narrow.png"]["status"] == "done"
    assert rows["wide.png"]["codec_id"] != "test-reverse"  # None from the plugin: the built-in router answered
    assert rows["wide.png"]["route"] != "custom"


def test_hook_manifest_columns(archived):
    """The declared column is in the schema of every manifest part, with its type (its
    values come from ``manifest_values``, below); an undeclared name never becomes one."""
    import pyarrow as pa

    from pixarc.manifest import schema

    _, _, table, rows = archived
    assert table.schema.field("test_flag").type == pa.string()
    assert "not_declared" not in table.column_names
    assert all(rows[k]["test_flag"] is not None for k in rows)
    with pytest.raises(ValueError, match="clashes"):
        schema({"codec_id": pa.string()})  # a plugin column may not shadow a core one


def test_hook_manifest_values(archived):
    """The plugin's values land in its columns, for archive rows and for the rows a
    recompress writes."""
    reg, dest, _, rows = archived
    assert {k: r["test_flag"] for k, r in rows.items()} == {"narrow.png": "done:test-reverse",
                                                          "wide.png": f"done:{rows['wide.png']['codec_id']}"}
    runs.recompress_local(str(dest), policy="png", min_saving=0.0, apply=True, registry=reg)
    new = [r for r in read_manifest(str(dest)).to_pylist() if r["job"] == "recompress"]
    assert new and all(r["test_flag"] == f"done:{r['codec_id']}" for r in new)


def test_hook_report_sections(archived, monkeypatch):
    from click.testing import CliRunner

    from pixarc.cli import main

    reg, dest, table, _ = archived
    assert reg.pm.hook.report_sections(rows=latest(table)) == [[("Test", "2 rows")]]
    html = dest.parent / "r.html"  # the command runs with the registry it is given (as obj)
    res = CliRunner().invoke(main, ["report", str(dest), "--html", str(html)], obj=reg, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text = html.read_text()
    assert "<h2>Test</h2><pre>2 rows</pre>" in text  # the plugin's section made it into the report


def test_hook_register_classifiers(tmp_path, monkeypatch, allow_testplug):
    reg = build_plugin_manager({"testplug": third_party_plugin()})
    assert reg.owner["always-vector"] == "testplug"
    policy = tmp_path / "p.toml"
    policy.write_text('classifier = "always-vector"\n[routes.unknown]\ncodecs = ["png"]\n'
                      '[routes.vector]\ncodecs = ["webp-lossless"]\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(encode_bytes(rng_image("RGB", (30, 9)), "PNG"))
    runs.archive_local(str(src), str(tmp_path / "d"), policy=str(policy), registry=reg)
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


def test_a_composite_gets_its_components_from_the_registry_that_makes_it(monkeypatch, allow_testplug):
    """``Codec.components``: the registry makes the base first, from itself, and passes it to
    the composite's constructor; one it cannot make is passed as None; a cycle is refused."""
    import os

    class Wrapper(ReverseCodec):
        codec_id = "test-wrapper"
        components = {"inner": "test-reverse"}

        def __init__(self, inner=None):
            self.inner = inner

    class Loop(ReverseCodec):
        codec_id = "test-loop"
        components = {"other": "test-loop"}

        def __init__(self, other=None):
            self.other = other

    mod = types.ModuleType("pixarc_test_wrap")
    mod.register_codecs = hookimpl(lambda register: [register(Wrapper), register(Loop)])
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",wrap")
    reg = build_plugin_manager({"testplug": third_party_plugin(), "wrap": mod})
    assert reg.codec("test-wrapper").inner is reg.codec("test-reverse")
    made = reg.make(Wrapper)  # a class made outside the codec table gets the same components
    assert made is not reg.codec("test-wrapper") and made.inner is reg.codec("test-reverse")
    with pytest.raises(PluginError, match="built on itself"):
        reg.codec("test-loop")
    assert build_plugin_manager({"wrap": mod}).codec("test-wrapper").inner is None  # test-reverse not installed


def test_a_registry_travels_as_its_allowlist(allow_testplug):
    """A job record carries its registry; to another process (a Dask worker) it goes as its
    allow/deny lists and is rebuilt there once. In-process plugins cannot go: it says so."""
    import pickle

    reg = build_plugin_manager()
    sent = pickle.dumps(reg)
    back = pickle.loads(sent)
    assert len(sent) < 500 and back.selection == reg.selection and set(back.codecs) == set(reg.codecs)
    assert pickle.loads(sent) is back  # once per process and selection: models load once per worker
    with pytest.raises(PluginError, match="in-process plugins"):
        pickle.dumps(build_plugin_manager({"testplug": third_party_plugin()}))


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


# --- commands (register_commands) -------------------------------------------


def command_plugin(name="pixarc_test_commands"):
    import click

    mod = types.ModuleType(name)

    @click.command("hello")
    @click.option("--who", default="world")
    def hello(who):
        click.echo(f"hello {who}")

    @click.command("greet")
    def greet():
        click.echo("greetings")

    @click.command("archive")
    def archive():  # clashes with the core command: refused, the core's stays
        click.echo("hijacked")

    @click.command("nowhere")
    def nowhere():
        pass

    @hookimpl
    def register_commands(register):
        register(hello, group="train")
        register(archive)
        register(nowhere, group="no-such-group")
        register(greet)  # after two refused ones: still added

    mod.register_commands = register_commands
    return mod


def raising_plugin():
    mod = types.ModuleType("pixarc_test_raising")

    @hookimpl
    def register_commands(register):
        raise RuntimeError("boom")

    mod.register_commands = register_commands
    return mod


def test_hook_register_commands(monkeypatch):
    from click.testing import CliRunner

    from pixarc.cli import main

    install_plugins(monkeypatch, cmds=command_plugin())
    res = CliRunner().invoke(main, ["train", "hello", "--who", "pixarc"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout == "hello pixarc\n", res.output
    res = CliRunner().invoke(main, ["greet"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout == "greetings\n", res.output
    res = CliRunner().invoke(main, ["--help"], catch_exceptions=False)
    assert res.exit_code == 0 and "greet" in res.stdout
    assert "already defined by the core" in res.stderr and "no group 'no-such-group'" in res.stderr
    train_help = CliRunner().invoke(main, ["train", "--help"], catch_exceptions=False).stdout
    assert "hello" in train_help and "nowhere" not in train_help
    assert main.get_command(click_context(main), "archive").callback.__module__ == "pixarc.cli.archive"  # core wins


def click_context(group):
    import click

    return click.Context(group)


def test_a_broken_plugin_is_reported_and_help_still_works(monkeypatch):
    from click.testing import CliRunner

    from pixarc.cli import main

    install_plugins(monkeypatch, cmds=command_plugin(), missing="pixarc_no_such_module_1234", raising=raising_plugin())
    res = CliRunner().invoke(main, ["--help"], catch_exceptions=False)
    assert res.exit_code == 0 and "greet" in res.stdout and "archive" in res.stdout
    assert "plugin 'missing' skipped" in res.stderr and "pixarc_no_such_module_1234" in res.stderr
    assert "plugin 'raising' skipped" in res.stderr and "boom" in res.stderr
    res = CliRunner().invoke(main, ["train", "hello"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout == "hello world\n"


LEARNED_TRAINERS = {"adaptive": "lossy", "svr": "svr", "callic": "callic", "enhance": "enhance",
                    "cnn_classifier": "classifier"}


def _train_commands(monkeypatch, allow: str) -> set[str]:
    from click.testing import CliRunner

    from pixarc.cli import main

    monkeypatch.setenv("PIXARC_PLUGINS", allow)
    res = CliRunner().invoke(main, ["train", "--help"], catch_exceptions=False)
    assert res.exit_code == 0 and not res.stderr, res.output
    listed = res.stdout.split("Commands:", 1)[1].split() if "Commands:" in res.stdout else []
    return set(LEARNED_TRAINERS.values()) & set(listed)


def test_train_lists_the_commands_of_loaded_plugins_only(monkeypatch):
    import os

    base = os.environ["PIXARC_PLUGINS"]
    assert _train_commands(monkeypatch, base + "," + ",".join(LEARNED_TRAINERS)) == set(LEARNED_TRAINERS.values())
    assert _train_commands(monkeypatch, base) == set()
    assert _train_commands(monkeypatch, base + ",svr,cnn_classifier") == {"svr", "classifier"}


def test_train_options_are_shared_and_unchanged(monkeypatch):
    """Every trainer takes the shared options from pixarc.training.train_options, with the
    defaults the commands had when they lived in the core."""
    import os

    from click.testing import CliRunner

    from pixarc.cli import main

    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + "," + ",".join(LEARNED_TRAINERS))
    ctx = click_context(main)
    train = main.get_command(ctx, "train")
    defaults = {name: {p.name: p.default for p in train.get_command(ctx, name).params}
                for name in LEARNED_TRAINERS.values()}
    assert {n: d["minutes"] for n, d in defaults.items()} == \
        {"lossy": 60.0, "svr": 10.0, "callic": 10.0, "enhance": 15.0, "classifier": 8.0}
    assert {n: d.get("checkpoint_minutes") for n, d in defaults.items()} == \
        {"lossy": 5.0, "svr": 5.0, "callic": 3.0, "enhance": 3.0, "classifier": None}
    for name, d in defaults.items():
        assert d["seed"] == 0 and {"data", "out", "fresh", "dev"} <= set(d), name  # every trainer continues
        if name != "classifier":
            assert (d["steps"], d["device"]) == (10**9, "cpu") and "resume" in d, name
    res = CliRunner().invoke(main, ["train", "svr", "--out", "x"])
    assert res.exit_code == 2 and "--data" in res.output  # required, as before


def test_the_core_imports_no_plugin_and_listing_commands_imports_no_torch():
    import ast
    import os
    import subprocess

    root = Path(__file__).parents[1]
    plugin_packages = {p.name for p in (root / "plugins").iterdir() if (p / "__init__.py").exists()}
    for path in [*(root / "pipeline").rglob("*.py"), *(root / "flows").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not {n.split(".")[0] for n in names} & plugin_packages, f"{path.name} imports a plugin"
    code = ("import sys\nfrom click.testing import CliRunner\nfrom pixarc.cli import main\n"
            "r = CliRunner().invoke(main, ['archive', '--help'])\nassert r.exit_code == 0\n"
            "assert not [m for m in sys.modules if m.startswith('pixarc_')], 'a core command loaded plugins'\n"
            "r = CliRunner().invoke(main, ['train', '--help'])\nassert r.exit_code == 0 and 'lossy' in r.stdout\n"
            "assert 'pixarc_adaptive' in sys.modules and 'torch' not in sys.modules\n")
    env = {**os.environ, "PIXARC_PLUGINS": os.environ["PIXARC_PLUGINS"] + "," + ",".join(LEARNED_TRAINERS)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def _plugin_imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same plugin it imports (at the top or inside a function):
    ``from . import x`` names a sibling module or the package's ``__init__``."""
    import ast

    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        edges = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 or (node.module or "").split(".")[0] == package.name:
                mod = (node.module or "").removeprefix(package.name).lstrip(".") if not node.level else node.module
                if mod:
                    edges.add(mod.split(".")[0])
                else:
                    edges.update(a.name if a.name in modules else "__init__" for a in node.names)
    return graph


@pytest.mark.parametrize("plugin", sorted(p.name for p in (Path(__file__).parents[1] / "plugins").iterdir()
                                          if len(list(p.glob("*.py"))) > 1))
def test_a_plugins_modules_import_each_other_without_a_loop(plugin):
    """Constants live in their own module, so no module of a plugin needs one that needs it
    back (``__init__`` → commands → train → ``__init__`` was such a loop)."""
    graph = _plugin_imports(Path(__file__).parents[1] / "plugins" / plugin)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    loops = sorted(m for m in graph if m in reach(m))
    assert not loops, f"{plugin}: import loops through {loops}: {graph}"


def test_benchmarks_and_tests_import_no_private_plugin_names():
    import ast

    root = Path(__file__).parents[1]
    plugin_packages = {p.name for p in (root / "plugins").iterdir() if (p / "__init__.py").exists()}
    found = []
    for path in [*(root / "benchmarks").glob("*.py"), *(root / "tests").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in plugin_packages:
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found
