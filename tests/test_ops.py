"""Operations: the local engine by default, work spread over workers, scripting (--json,
filters, dry run, storage options, log level), installs without torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import fsspec
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import rng_image
from pixarc import engine, runs
from pixarc.archive import ArchiveJob
from pixarc.plan import load_shard
from pixarc.state import current_rows
from pixarc.cli import main
from pixarc.manifest import latest, read_manifest


def invoke(*args, code=0):
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


def jdoc(*args, code=0) -> dict:
    """The one JSON document a --json command prints on stdout (stderr kept apart)."""
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return json.loads(res.stdout)


@pytest.fixture
def forty(tmp_path):
    src = tmp_path / "forty"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        rng_image("RGB", (24, 20), seed=i).save(src / f"d{i % 4}" / f"im{i:02d}.png")
    return src


def test_a_temporary_prefect_api_is_announced(monkeypatch, capsys):
    """--engine prefect without a server starts Prefect's temporary API (seconds): say so."""
    from pixarc.cli import running

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(engine, "prefect_api_configured", lambda: False)
    running.starting_prefect()
    assert "starting Prefect" in capsys.readouterr().err
    monkeypatch.setattr(engine, "prefect_api_configured", lambda: True)
    running.starting_prefect()
    assert "starting Prefect" not in capsys.readouterr().err


def test_local_engine_is_the_default_without_a_server(small_collection, tmp_path, monkeypatch):
    """No PREFECT_API_URL: no Prefect API is started (Prefect is not even imported)."""
    code = (
        "import sys; from pixarc.cli import main\n"
        "try:\n    main(['archive', sys.argv[1], sys.argv[2], '--no-progress'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'prefect' not in sys.modules, 'prefect imported'\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(small_collection), str(tmp_path / "d")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "5 done" in out.stdout and "starting Prefect" not in out.stderr
    assert time.perf_counter() - t0 < 60  # generous on a shared machine; the note has the measured times
    assert engine.prefect_api_configured() is False
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert engine.prefect_api_configured() is True


def test_profile_with_an_api_url_counts_as_configured(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert engine.prefect_api_configured() is False
    (tmp_path / "profiles.toml").write_text('active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://s:4200/api"\n')
    assert engine.prefect_api_configured() is True


def test_two_workers_on_forty_images_use_two_workers(forty, tmp_path, monkeypatch):
    seen: dict[int, tuple[str, float, float]] = {}
    real = ArchiveJob.run_shard

    def spy(job, shard):
        t0 = time.perf_counter()
        time.sleep(0.2)  # long enough that two workers overlap
        out = real(job, shard)
        seen[shard.index] = (threading.current_thread().name, t0, time.perf_counter())
        return out

    monkeypatch.setattr(ArchiveJob, "run_shard", spy)
    doc = jdoc("archive", str(forty), str(tmp_path / "d"), "--workers", "2", "--json")
    assert doc["shards"] == 8 and doc["totals"]["done"] == 40  # 4 per worker (plan.spread)
    assert len({name for name, _, _ in seen.values()}) == 2  # two threads
    spans = sorted((t0, t1) for _, t0, t1 in seen.values())
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:]))  # ... at the same time


def test_spread_recuts_a_small_plan_evenly(forty, tmp_path):
    plan = ArchiveJob(str(forty), str(tmp_path / "d"), "r1", shard_size=256).plan()
    assert [s.count for s in plan.shards] == [40]
    planned = sorted(item["key"] for item in load_shard(plan.shards[0]))
    shards = runs.spread(str(tmp_path / "d"), "archive", "r1", plan.shards, 3)
    assert [s.count for s in shards] == [4] * 10  # 4 shards per worker: 12 asked, 10 of 4 images
    keys = [item["key"] for s in shards for item in load_shard(s)]
    assert sorted(keys) == planned and len(set(keys)) == 40
    fresh = ArchiveJob(str(forty), str(tmp_path / "f"), "r3", shard_size=256).plan()
    assert [s.count for s in runs.spread(str(tmp_path / "f"), "archive", "r3", fresh.shards, 2)] == [5] * 8
    big = ArchiveJob(str(forty), str(tmp_path / "e"), "r2", shard_size=5).plan()
    assert runs.spread(str(tmp_path / "e"), "archive", "r2", big.shards, 2) == big.shards  # enough shards already
    assert runs.spread(str(tmp_path / "e"), "archive", "r2", big.shards, 1) == big.shards  # one worker: as planned


def test_progress_rate_counts_items_once_and_shows_rates():
    from pixarc.progress import Rate

    r = Rate()
    for _ in range(3):
        r.update("advance", 1)
        r.update("bytes", 1_000_000)
    r.update("shard", 3)  # the same three items, reported by the runner
    r.update("shard_bytes", 3_000_000)
    assert r.items == 3 and r.bytes == 3_000_000
    r.update("shard", 2)  # a shard from another process: no per-item events came
    assert r.items == 5
    assert re.fullmatch(r"[0-9.]+ img/s [0-9.]+ (B|kB|MB|GB)/s", r.text()), r.text()  # items and bytes


def test_json_documents(small_collection, tmp_path):
    dest, out = tmp_path / "d", tmp_path / "o"
    doc = jdoc("archive", str(small_collection), str(dest), "--json")
    assert doc["command"] == "archive" and doc["ok"] and doc["found"] == 5 and doc["totals"]["done"] == 5
    assert doc["report"]["groups"][-1]["domain"] == "all" and doc["report"]["groups"][-1]["images"] == 5
    doc = jdoc("verify", str(dest), "--full", "--json")
    assert doc["command"] == "verify" and doc["ok"] and doc["totals"]["done"] == 5 and doc["problems"] == []
    doc = jdoc("restore", str(dest), str(out), "--json")
    assert doc["command"] == "restore" and doc["totals"]["done"] == 5
    doc = jdoc("report", str(dest), "--json")
    assert doc["command"] == "report" and doc["objects"] == 5 and {g["codec"] for g in doc["groups"]} > {"all"}
    doc = jdoc("recompress", str(dest), "--json")
    assert doc["command"] == "recompress" and len(doc["decisions"]) == 5 and doc["applied"] is False
    doc = jdoc("plugins", "--json")
    assert {c["codec"] for c in doc["codecs"]} >= {"png", "webp-lossless", "store"}
    doc = jdoc("classify", str(small_collection), "--json")
    assert len(doc["images"]) == 5 and all(0 <= r["confidence"] <= 1 for r in doc["images"])
    victim = next(dest.rglob("*.pxa"))
    victim.write_bytes(b"x")
    doc = jdoc("verify", str(dest), "--json", code=3)  # exit 3: the archive is damaged
    assert doc["ok"] is False and doc["problems"][0]["problem"] == "size_mismatch"
    doc = jdoc("archive", str(tmp_path / "nowhere"), str(tmp_path / "d2"), "--json", code=2)
    assert doc["ok"] is False and doc["error"]


def test_include_exclude_limit(small_collection, tmp_path):
    doc = jdoc("archive", str(small_collection), str(tmp_path / "a"), "--include", "screenshot/*",
               "--exclude", "*fonts*", "--json")
    assert doc["found"] == 1 and doc["totals"]["done"] == 1
    assert [r["key"] for r in latest(read_manifest(str(tmp_path / "a"))).to_pylist()] == \
        ["screenshot/gimp_css-keywords.png"]
    doc = jdoc("archive", str(small_collection), str(tmp_path / "b"), "--limit", "2", "--json")
    assert doc["totals"]["done"] == 2
    doc = jdoc("archive", str(small_collection), str(tmp_path / "b"), "--limit", "2", "--json")
    assert doc["skipped"] == 2 and doc["totals"]["done"] == 2  # the next two new ones
    assert latest(read_manifest(str(tmp_path / "b"))).num_rows == 4


def test_dry_run_accounts_for_what_dest_has(small_collection, tmp_path):
    dest = tmp_path / "d"
    invoke("archive", str(small_collection), str(dest), "--include", "line/*", "--include", "misc/*")
    doc = jdoc("archive", str(small_collection), str(dest), "--dry-run", "--json")
    actions = {r["key"]: r["action"] for r in doc["objects"]}
    assert doc["found"] == 5 and doc["skipped"] == 3 and doc["to_archive"] == 2
    assert actions["line/ocal_galicia_01.png"] == "skip" and actions["screenshot/gimp_css-keywords.png"] == "archive"
    assert doc["bytes_to_archive"] == sum((small_collection / k).stat().st_size for k, a in actions.items()
                                          if a == "archive")
    text = invoke("archive", str(small_collection), str(dest), "--dry-run")
    assert "5 found, 3 already archived (skipped), 2 to archive" in text
    assert latest(read_manifest(str(dest))).num_rows == 3  # nothing written


def test_storage_option_reaches_fsspec(tmp_path):
    from pixarc import storageopts

    assert storageopts.parse("s3.endpoint_url=http://localhost:9000") == ("s3", "endpoint_url", "http://localhost:9000")
    assert storageopts.parse("anon=true") == (None, "anon", True)
    with pytest.raises(ValueError):
        storageopts.parse("nokey")
    storageopts.reset()
    storageopts.add(["auto_mkdir=false", "memory.skip_instance_cache=true"])
    try:
        applied = storageopts.apply(["file:///tmp/x", "memory://bucket/y"])
        assert applied == {"memory": {"auto_mkdir": False, "skip_instance_cache": True}}
        assert fsspec.config.conf["memory"]["skip_instance_cache"] is True
        a, b = fsspec.filesystem("memory"), fsspec.filesystem("memory")
        assert a is not b  # the option took effect: instances are no longer cached
        assert os.environ["FSSPEC_MEMORY_SKIP_INSTANCE_CACHE"] == "true"  # for worker processes
    finally:
        fsspec.config.conf.pop("memory", None)
        os.environ.pop("FSSPEC_MEMORY_SKIP_INSTANCE_CACHE", None)
        os.environ.pop("FSSPEC_MEMORY_AUTO_MKDIR", None)
        storageopts.reset()
    # through the CLI: the option (no protocol given) applies to DEST's protocol
    rng_image("RGB", (16, 16)).save(tmp_path / "one.png")
    src = tmp_path / "src"
    src.mkdir()
    shutil.move(tmp_path / "one.png", src / "one.png")
    try:
        doc = jdoc("archive", str(src), "memory://bucket/opts-dest", "--storage-option", "skip_instance_cache=true",
                   "--json")
        assert doc["totals"]["done"] == 1
        assert fsspec.config.conf["memory"] == {"skip_instance_cache": True}
    finally:
        fsspec.config.conf.pop("memory", None)
        os.environ.pop("FSSPEC_MEMORY_SKIP_INSTANCE_CACHE", None)
        fsspec.filesystem("memory").rm("/bucket/opts-dest", recursive=True)


def test_log_level_info_shows_one_line_per_shard(small_collection, tmp_path):
    res = CliRunner().invoke(main, ["--log-level", "info", "archive", str(small_collection), str(tmp_path / "d"),
                                    "--shard-size", "2", "--workers", "1", "--no-progress"])  # as planned: 3 shards
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "archive shard " in ln]
    assert len(lines) == 3, res.output
    res = CliRunner().invoke(main, ["archive", str(small_collection), str(tmp_path / "e"), "--no-progress"])
    assert "archive shard " not in res.output  # the default level is warning


BLOCK_TORCH = """
import sys
for name in ('torch', 'compressai', 'pytorch_msssim', 'torchvision'):
    sys.modules[name] = None  # as if not installed: import fails, find_spec says absent
"""


def test_core_works_without_torch(small_collection, tmp_path):
    """Crawl, conventional codecs, manifest, verify, reports and `plugins` with torch absent;
    the learned codecs say why they cannot run."""
    code = BLOCK_TORCH + (
        "from pixarc.cli import main\n"
        "for args in (['plugins', '--json'], ['archive', sys.argv[1], sys.argv[2], '--json'],\n"
        "             ['verify', sys.argv[2], '--full', '--json'], ['report', sys.argv[2], '--json']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
        "assert sys.modules['torch'] is None  # never really imported\n"
    )
    env = {**os.environ, "PIXARC_PLUGINS": os.environ["PIXARC_PLUGINS"] + ",adaptive,svr,cnn_classifier",
           "PIXARC_ADAPTIVE_WEIGHTS": str(tmp_path / "none"), "PIXARC_SVR_WEIGHTS": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-c", code, str(small_collection), str(tmp_path / "d")], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    docs, text, depth = [], "", 0
    for line in out.stdout.splitlines(keepends=True):  # four JSON documents, one after another
        text += line
        depth += line.count("{") - line.count("}")
        if depth == 0 and text.strip():
            docs.append(json.loads(text))
            text = ""
    plugins, archived, verified, report = docs
    codecs = {c["codec"]: c for c in plugins["codecs"]}
    assert codecs["png"]["available"] and codecs["jxl-lossless"]["available"]
    assert plugins["learned_dependencies_missing"] == ["torch", "compressai"]
    by_name = {p["name"]: p for p in plugins["plugins"]}
    for learned in ("adaptive", "svr"):  # they register no codec without torch/compressai, and say so
        assert by_name[learned]["codecs"] == [] and "torch" in by_name[learned]["unavailable_reason"]
        assert "pixarc[learned]" in by_name[learned]["unavailable_reason"]
    cnn = {c["classifier"]: c for c in plugins["classifiers"]}["cnn"]
    assert not cnn["available"] and cnn["unavailable_reason"]  # no torch, or no weights first
    assert archived["totals"]["done"] == 5 and verified["ok"] and report["objects"] == 5


def test_ms_ssim_needs_no_torch():
    code = BLOCK_TORCH + (
        "from conftest import rng_image\nfrom pixarc.metrics import ms_ssim\n"
        "a = rng_image('RGB', (200, 180)); print(ms_ssim(a, a))\nassert sys.modules['torch'] is None\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(float(out.stdout.strip()) - 1.0) < 1e-9


# --------------------------------------------------------------------------- reports, stats, interop


def test_run_stats_beside_the_manifest(small_collection, tmp_path):
    from pixarc import runstats

    dest = tmp_path / "d"
    doc = jdoc("archive", str(small_collection), str(dest), "--policy", "png", "--json")
    invoke("verify", str(dest), "--full", "--record")  # verify writes into DEST only when asked
    recs = runstats.read_all(str(dest))
    assert [r["job"] for r in recs] == ["archive", "verify"]
    a, v = recs
    assert a["run_id"] == doc["run_id"] and (dest / "manifest" / "runs" / f"{a['run_id']}.json").exists()
    assert a["policy"] == "png" and a["done"] == 5 and a["source_bytes"] == doc["totals"]["source_bytes"]
    assert a["images_per_s"] > 0 and a["engine"] == "local" and a["started"] <= a["finished"]
    assert v["full"] is True and v["checked"] == 5 and v["ok"] == 5 and v["problems"] == []


def test_report_shows_route_low_confidence_errors_runs_and_verify(examples_dir, tmp_path):
    src = tmp_path / "src"
    picks = ["comic/wesnoth_dwarves_runemaster.png", "line/ocal_galicia_01.png", "misc/mcmaster_13_q90.jpg"]
    for p in picks:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(examples_dir / p, src / p)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    dest = tmp_path / "d"
    invoke("archive", str(src), str(dest), "--policy", "lossy", code=1)  # exit 1: broken.png ended in error
    text = invoke("report", str(dest))
    assert "verify: never run" in text
    invoke("verify", str(dest), "--record")
    doc = jdoc("report", str(dest), "--json")
    rows = {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}
    unknown = [k for k, r in rows.items() if r["status"] == "done" and r["route"] == "unknown"]
    assert unknown, "the wesnoth sprite is a low-confidence example"
    assert [r["key"] for r in doc["low_confidence"]] == unknown
    assert {(g["domain"], g["route"], g["codec"]) for g in doc["groups"][:-1]} == {
        (r["domain"], r["route"], r["codec_id"]) for r in rows.values() if r["status"] == "done"}
    assert doc["not_archived"] == [{"key": "broken.png", "status": "error", "reason": rows["broken.png"]["error"],
                                    "message": rows["broken.png"]["message"]}]
    run_id = doc["last_archive"]["run_id"]
    assert doc["last_archive"]["policy"] == "lossy" and set(rows[k]["run_id"] for k in rows) == {run_id}
    assert doc["last_archive"]["started"][:10].replace("-", "") == run_id[:8]  # the run date
    assert doc["last_verify"]["status"] == "OK" and doc["last_verify"]["checked"] == 3
    text = invoke("report", str(dest), "--html", str(tmp_path / "r.html"))
    assert "low confidence" in text and "not archived" in text and "last verify" in text and "policy lossy" in text
    page = (tmp_path / "r.html").read_text()
    assert "<th>route</th>" in page and "Low confidence" in page and "last verify" in page


def test_plot_bars_follow_the_table(small_collection, tmp_path):
    from pixarc.report import group_label, saved_bars, summarise

    dest = tmp_path / "d"
    runs.archive_local(str(small_collection), str(dest), policy="lossy")
    rows = current_rows(str(dest), status=None)
    groups, _ = summarise(rows)
    bars = saved_bars(rows)
    assert [label for label, _ in bars] == [group_label(g) for g in groups]  # same labels, same order
    assert len(bars) >= 3 and bars[-1][0] == "all / all / all"
    g = groups[0]
    assert abs(bars[0][1] - 100 * (1 - g.archive_bytes / g.source_bytes)) < 1e-9


def test_lossy_policy_never_stores_bigger_than_the_lossless_default(examples_dir, tmp_path):
    """Where `lossy` takes a lossless route (low confidence included), its bytes are at most
    what the default policy stores for the same image: its candidates are the default's
    (the vector image here is one where JPEG XL is the smaller, as on 6 of the 8 dev vector
    images; on line and vector art WebP is only a fallback in `lossy`, see lossy.toml)."""
    from pixarc.policy import load_policy

    lossy_policy, default_policy = load_policy("lossy"), load_policy("default")
    for name, route in lossy_policy.routes.items():
        if route.lossless:  # the same codecs, some of them demoted to fallbacks, at the same efforts
            assert set(route.codecs) | set(route.fallbacks) == set(default_policy.routes[name].codecs) | set(
                default_policy.routes[name].fallbacks), name
            assert route.params == default_policy.routes[name].params, name
    src = tmp_path / "src"
    for p in ["comic/wesnoth_dwarves_runemaster.png", "comic/wesnoth_goblins_spearman.png",
              "vector/ocal_hot_dog_juliane_krug_r.png", "screenshot/gimp_css-keywords.png"]:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(examples_dir / p, src / p)
    runs.archive_local(str(src), str(tmp_path / "lossy"), policy="lossy")
    runs.archive_local(str(src), str(tmp_path / "default"), policy="default")
    lossy = {r.key: r for r in current_rows(str(tmp_path / "lossy"))}
    default = {r.key: r for r in current_rows(str(tmp_path / "default"))}
    lossless = [k for k, r in lossy.items() if r.lossless]
    assert any(lossy[k].route == "unknown" for k in lossless)
    for k in lossless:
        assert lossy[k].bitstream_bytes <= default[k].bitstream_bytes, (k, lossy[k].codec_id)
        if lossy[k].codec_id == "store":  # the original bytes, kept only where the default kept them too
            assert default[k].codec_id == "store" and lossy[k].bitstream_bytes < lossy[k].source_bytes + 1024
        else:
            assert lossy[k].bitstream_bytes <= lossy[k].source_bytes, k


def test_export_bagit_is_a_valid_bag(small_collection, tmp_path):
    bagit = pytest.importorskip("bagit")
    dest, out = tmp_path / "d", tmp_path / "bag"
    runs.archive_local(str(small_collection), str(dest))
    doc = jdoc("export-bagit", str(dest), str(out), "--json")
    assert doc["ok"] and doc["images"] == 5
    bag = bagit.Bag(str(out))
    bag.validate()  # raises BagValidationError when anything is off
    assert len(list(bag.payload_files())) == 5 and bag.info["External-Identifier"] == str(dest)
    assert set(bag.algorithms) == {"sha256", "sha512"}
    restored = out / "data" / "line" / "ocal_galicia_01.png"
    assert Image.open(restored).tobytes() == Image.open(small_collection / "line" / "ocal_galicia_01.png").tobytes()
    restored.write_bytes(restored.read_bytes() + b"x")  # the bag notices tampering
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(out)).validate()
    invoke("export-bagit", str(dest), str(out), code=2)  # not empty: refused


def test_export_bagit_makes_no_bag_when_restore_finds_problems(small_collection, tmp_path):
    dest, out = tmp_path / "d", tmp_path / "bag"
    runs.archive_local(str(small_collection), str(dest))
    victim = next(dest.rglob("*.pxa"))
    victim.write_bytes(victim.read_bytes()[:-3] + b"abc")
    text = invoke("export-bagit", str(dest), str(out), code=3)  # exit 3: the archive is damaged
    assert "no bag made" in text and not (out / "bagit.txt").exists()


def test_device_is_a_checked_value_on_every_job(small_collection, tmp_path):
    """``--device`` on archive, restore, verify and recompress: a typo is a usage error
    before any work; a valid one runs and the rows record what actually ran (codecs that
    use no accelerator ran on the CPU)."""
    dest = tmp_path / "d"
    for cmd in (["archive", str(small_collection), str(dest)], ["restore", str(dest), str(tmp_path / "o")],
                ["verify", str(dest)], ["recompress", str(dest)]):
        res = CliRunner().invoke(main, [*cmd, "--device", "gpu0", "--no-progress"])
        assert res.exit_code == 2 and "device 'gpu0' is not one of" in res.output, (cmd, res.output)
    assert not dest.exists()  # refused before anything was written
    doc = jdoc("archive", str(small_collection), str(dest), "--device", "cuda:1", "--json")
    assert doc["totals"]["done"] == 5
    assert {r.device for r in current_rows(str(dest))} == {"cpu"}  # PNG/JXL/WebP use no GPU
    assert jdoc("verify", str(dest), "--full", "--device", "cpu", "--json")["ok"] is True
    assert jdoc("restore", str(dest), str(tmp_path / "o"), "--device", "auto", "--json")["totals"]["done"] == 5
    from pixarc.device import CPU, Device

    assert Device.parse("cuda:1").torch == "cuda:1" and Device.parse("CPU") == CPU and str(CPU) == "cpu"


def test_devices_are_resolved_once_per_shard_into_a_map(small_collection, tmp_path, monkeypatch):
    """A shard resolves the job's request once into codec id -> Device (not per image and
    candidate); only Device values go deeper, and a string there is a clear error."""
    from pixarc import device as devices
    from pixarc.device import CPU, Device, DeviceMap
    from pixarc.selection import encode_route
    from pixarc.errors import InputError
    from pixarc.images import probe_and_load
    from pixarc.plugins import build_plugin_manager
    from pixarc.policy import Candidate, Route

    class Accelerated:
        prefers_gpu, needs_gpu = True, False

    reg = build_plugin_manager()
    assert DeviceMap.resolve("cuda:1", {"png": type(reg.codec("png")), "x": Accelerated}).devices == {
        "png": CPU, "x": Device("cuda", 1)}  # codecs without an accelerator run on the CPU
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    assert not DeviceMap.resolve("auto", {"x": Accelerated}).uses_gpu
    calls = []
    real = devices.resolve
    monkeypatch.setattr(devices, "resolve", lambda codec, request: (calls.append(codec), real(codec, request))[1])
    s = runs.archive_local(str(small_collection), str(tmp_path / "d"), registry=reg)  # 5 images, 1 shard
    assert s.totals.done == 5 and len(calls) == len(reg.codecs)
    src = probe_and_load((small_collection / "line/ocal_galicia_01.png").read_bytes())
    with pytest.raises(TypeError, match="DeviceMap"):
        encode_route(src, Route("line", True, (Candidate("png"),)), reg, "cpu")
    with pytest.raises(InputError, match="not one of"):
        ArchiveJob("src", "dest", "run", device="gpu0")  # a job record parses its request
