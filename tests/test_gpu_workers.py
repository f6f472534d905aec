"""GPU scheduling without a GPU: a fake GPU codec proves the slot and the batching paths.

The codec below says ``prefers_gpu``; ``gpu_count`` is patched to 1. What is checked is
pixarc's side: shards that can use the GPU hold the per-host Prefect concurrency slot
(so two shards never encode at once on one GPU), images of a shard reach the codec as
one batch, and every payload of a batch is still packed, decoded and checked alone.
"""

import threading
import time
import types

import pytest

from conftest import encode_bytes, install_plugins, rng_image
from pixarc import runs
from pixarc import device as devices
from pixarc.codec import Codec, Decoded
from pixarc.device import CPU, DeviceMap
from pixarc.hookspecs import hookimpl
from pixarc.manifest import latest, read_manifest
from pixarc.plugins import build_plugin_manager

pytestmark = pytest.mark.prefect


class FakeGPUCodec(Codec):
    codec_id = "test-fakegpu"
    lossless = True
    prefers_gpu = True
    batch_hint = 8  # images per encode_batch call the (fake) device takes
    calls: list = []
    lock = threading.Lock()

    def encode(self, src, params, device=CPU):
        im = src.image
        return f"{im.mode}|{im.width}|{im.height}|".encode() + im.tobytes()

    def encode_batch(self, srcs, params, device=CPU):
        start = time.monotonic()
        time.sleep(0.3)  # long enough that two unguarded shards would overlap
        out = [self.encode(s, params, device) for s in srcs]
        with self.lock:
            FakeGPUCodec.calls.append((len(srcs), device, start, time.monotonic()))
        return out

    def decode(self, payload, device=CPU):
        from PIL import Image

        mode, w, h, body = payload.split(b"|", 3)
        return Decoded(image=Image.frombytes(mode.decode(), (int(w), int(h)), body))


def plugin():
    mod = types.ModuleType("fakegpu")

    @hookimpl
    def register_codecs(register):
        register(FakeGPUCodec)

    mod.register_codecs = register_codecs
    return mod


@pytest.fixture
def gpu_world(monkeypatch, tmp_path):
    install_plugins(monkeypatch, fakegpu=plugin())  # the flow's registry (built from the environment) has it
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    FakeGPUCodec.calls = []
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.png").write_bytes(encode_bytes(rng_image("RGB", (20 + i, 16), seed=i), "PNG"))
    policy = tmp_path / "gpu.toml"
    policy.write_text('min_confidence = 0.0\n[routes.unknown]\ncodecs = ["test-fakegpu", "png"]\n'
                      + "".join(f'[routes.{d}]\ncodecs = ["test-fakegpu", "png"]\n'
                                for d in ("natural", "comic", "line", "vector", "screenshot")))
    return src, tmp_path / "dest", str(policy)


def test_gpu_shards_take_the_slot_and_batch(gpu_world):
    from prefect.client.orchestration import get_client

    from pixarc.flows import archive_flow
    from pixarc.flows.jobs import gpu_limit_name
    from pixarc.flows.runners import make_task_runner

    src, dest, policy = gpu_world
    flow = archive_flow.with_options(task_runner=make_task_runner("threads", workers=2))
    summary = flow(src=str(src), dest=str(dest), policy=policy, shard_size=3, batch_size=8)
    assert summary.totals.done == 6
    calls = sorted(FakeGPUCodec.calls, key=lambda c: c[2])
    assert [c[0] for c in calls] == [3, 3], "one batch per shard"
    assert all(str(c[1]) == "cuda" for c in calls)  # the Device value the shard resolved
    assert calls[0][3] <= calls[1][2], "the GPU slot must keep the two shards' GPU work apart"
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(gpu_limit_name()).limit == 1
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert {r["codec_id"] for r in rows} == {"test-fakegpu"} and {r["device"] for r in rows} == {"cuda"}


def test_cpu_only_jobs_take_no_slot_and_do_not_batch(gpu_world, monkeypatch):
    src, dest, policy = gpu_world
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)  # a CPU worker: auto -> cpu
    runs.archive_local(str(src), str(dest), policy=policy, registry=build_plugin_manager())
    assert FakeGPUCodec.calls == []
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert {r["device"] for r in rows} == {"cpu"} and {r["codec_id"] for r in rows} == {"test-fakegpu"}


def test_failed_batch_falls_back_to_single_encodes(gpu_world, monkeypatch):
    src, dest, policy = gpu_world

    def broken(self, srcs, params, device=CPU):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(FakeGPUCodec, "encode_batch", broken)
    runs.archive_local(str(src), str(dest), policy=policy, registry=build_plugin_manager())
    rows = latest(read_manifest(str(dest))).to_pylist()
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    assert all("batch encode failed" in r["notes"] for r in rows)


def test_batches_follow_the_codecs_batch_hint(gpu_world, monkeypatch):
    """A shard's GPU batch is cut to the codec's ``batch_hint`` (what fits on the device)."""
    from conftest import encode_bytes, rng_image
    from pixarc.encode import batch_encode
    from pixarc.images import probe_and_load
    from pixarc.policy import Candidate, Route

    reg = build_plugin_manager()
    route = Route("unknown", True, (Candidate("test-fakegpu"), Candidate("png")))
    items = [(probe_and_load(encode_bytes(rng_image("RGB", (12, 8), seed=i), "PNG")), route) for i in range(5)]
    monkeypatch.setattr(FakeGPUCodec, "batch_hint", 2)
    out = batch_encode(items, reg, DeviceMap.resolve("auto", reg.codecs))
    assert [c[0] for c in FakeGPUCodec.calls] == [2, 2, 1]
    assert all(len(p) == 1 for p in out)  # every image got its payload
