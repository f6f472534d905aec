"""A core install: torch (and CompressAI) unimportable, every built-in plugin enabled. Every
command works; the learned codecs show as unavailable with the exact install line, and
Rich prints that line with its brackets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DRIVER = r'''
import json, sys
for name in ("torch", "compressai", "pytorch_msssim", "torchvision"):
    sys.modules[name] = None  # as if not installed: import fails, find_spec says absent
from click.testing import CliRunner
from pixarc.cli import main
src, work = sys.argv[1], sys.argv[2]
dest = work + "/d"
commands = [
    ["--help"], ["train", "--help"], ["plugins"], ["plugins", "--json"],
    ["archive", src, dest, "--json"], ["verify", dest, "--full", "--json"],
    ["restore", dest, work + "/out", "--json"], ["report", dest, "--html", work + "/r.html", "--json"],
    ["recompress", dest, "--json"], ["classify", src, "--json"], ["prune", dest, "--dry-run", "--json"],
    ["repair", dest, "--json"], ["export-bagit", dest, work + "/bag", "--json"],
]
results = []
for args in commands:
    res = CliRunner().invoke(main, args)
    results.append({"args": args, "code": res.exit_code, "stdout": res.stdout, "stderr": res.stderr,
                    "exception": repr(res.exception) if res.exception and res.exit_code else None})
results.append({"torch_imported": sys.modules.get("torch") is not None})
print(json.dumps(results))
'''


def test_every_command_works_without_torch(small_collection, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PIXARC_PLUGINS"}  # every built-in plugin
    env["COLUMNS"] = "200"
    out = subprocess.run([sys.executable, "-c", DRIVER, str(small_collection), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    *results, final = json.loads(out.stdout.strip().splitlines()[-1])
    assert final == {"torch_imported": False}
    for r in results:
        assert r["code"] == 0, (r["args"], r["exception"], r["stderr"][-2000:])
        if "--json" in r["args"]:
            doc = json.loads(r["stdout"])
            assert doc["ok"] is True, (r["args"], doc)
    by_args = {" ".join(r["args"][:1]) + (" --json" if "--json" in r["args"] else ""): r for r in results}
    text = by_args["plugins"]["stdout"]
    hint = "pip install 'pixarc[learned]' and pip install --no-deps compressai==1.2.8"
    assert hint in " ".join(text.split()), text  # the brackets survive Rich (tables may fold the line)
    doc = json.loads(by_args["plugins --json"]["stdout"])
    codecs = {c["codec"]: c for c in doc["codecs"]}
    learned = [c for c in codecs if c.endswith("-enhanced") or c == "callic"]
    assert "avif-enhanced" in learned and "callic" in learned
    for c in learned:  # listed, unavailable, and the reason is the install line
        assert codecs[c]["available"] is False and hint in codecs[c]["unavailable_reason"], codecs[c]
    assert codecs["png"]["available"] and codecs["avif"]["available"]
    assert doc["learned_dependencies_missing"] == ["torch", "compressai"]
    assert Path(tmp_path / "bag" / "bagit.txt").exists()
