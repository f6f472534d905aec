"""What a newcomer hits first: help that lists what exists, errors that say what would
work, nothing vanishing without a word, output that reads whole, a quick --help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pixarc.cli import main

ROOT = Path(__file__).resolve().parents[1]


def builtin_policies() -> list[str]:
    """The policy files shipped (read here from the tree, not from the code under test)."""
    return sorted(p.stem for p in (ROOT / "pipeline" / "policies").glob("*.toml"))


def test_builtin_policies_are_all_listed_in_help_and_readme():
    assert "lowrate" in builtin_policies()
    text = CliRunner().invoke(main, ["archive", "--help"]).output
    synopsis = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("pixarc archive SRC DEST"))
    for name in builtin_policies():
        assert name in text, name
        assert re.search(rf"--policy [^\]]*\b{name}\b", synopsis), synopsis


def test_an_unknown_policy_name_lists_the_built_ins(small_collection, tmp_path):
    res = CliRunner().invoke(main, ["archive", str(small_collection), str(tmp_path / "d"), "--policy", "lowrat"])
    assert res.exit_code == 2
    assert all(name in res.output for name in builtin_policies()), res.output


def _commands(group: click.Group, ctx: click.Context, prefix: str = ""):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + name, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, click.Context(cmd, parent=ctx, info_name=name), prefix + name + " ")


def test_every_option_of_every_core_command_has_help():
    ctx = click.Context(main, info_name="pixarc")
    commands = dict(_commands(main, ctx))
    assert {"archive", "restore", "verify", "serve", "report", "export-bagit"} <= set(commands)
    missing = [f"{name} {opt.opts[0]}" for name, cmd in commands.items() if not isinstance(cmd, click.Group)
               for opt in cmd.params if isinstance(opt, click.Option) and not opt.hidden and not (opt.help or "").strip()
               and opt.opts[0] != "--help"]
    assert missing == []


def test_a_memory_dest_is_announced(small_collection, tmp_path):
    res = CliRunner().invoke(main, ["archive", str(small_collection), "memory://bucket/newcomer", "--no-progress"])
    try:
        assert res.exit_code == 0, res.output
        assert "gone when pixarc exits" in res.stderr
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/bucket/newcomer", recursive=True)


def test_the_summary_line_is_never_wrapped(small_collection, tmp_path, monkeypatch):
    from pixarc import console

    monkeypatch.setattr(console.console, "width", 50)
    res = CliRunner().invoke(main, ["archive", str(small_collection), str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("run "))
    assert line.endswith("0 errors, 0 failed"), res.stdout


def test_byte_rates_are_shown_in_a_unit_that_shows_them():
    from pixarc.progress import byte_rate

    assert byte_rate(40_000) == "40.0 kB/s"  # was "0.0 MB/s"
    assert byte_rate(2_500_000) == "2.5 MB/s"
    assert byte_rate(12) == "12 B/s"


def test_help_imports_no_heavy_machinery():
    """--help is quick on a busy machine because it imports little: no pyarrow, fsspec's
    backends, Prefect or torch (timings are not asserted: they depend on the load)."""
    code = ("import sys\nfrom pixarc.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES ' + ' '.join(sorted(m for m in sys.modules if '.' not in m)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PIXARC_PLUGINS"})  # every plugin
    modules = set(out.stdout.split("MODULES ", 1)[1].split())
    assert "archive" in out.stdout and not modules & {"pyarrow", "prefect", "torch", "matplotlib", "fsspec"}, \
        sorted(modules & {"pyarrow", "prefect", "torch", "matplotlib", "fsspec"})
