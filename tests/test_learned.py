"""The learned-codec contract (``pixarc.learned.LearnedCodec``) on a toy codec with a
one-layer model, and typed list parameters (``Param(many=True)``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import encode_bytes
from pixarc.codec import Codec, Decoded, Param, params_hash
from pixarc.device import CPU, Device
from pixarc.errors import CodecError
from pixarc.images import ImageInfo, probe_and_load
from pixarc.learned import LearnedCodec

torch = pytest.importorskip("torch")
RGB = ImageInfo(8, 8, "RGB", 8, "PNG", "RGB")


class Toy(LearnedCodec):
    codec_id = "toy-learned"
    lossless = False
    modes = frozenset({"RGB"})
    rate_param = "q"
    params_schema = {"q": Param(int, 1, 1, 3, "rate point"),
                     "gains": Param(float, (1.0,), 0.0, 2.0, "per-pass gains", many=True)}
    weights_env, weights_arch, train_command = "PIXARC_TOY_WEIGHTS", "toy", "pixarc train toy"
    weights_per_rate = True
    builds = 0
    groups: list[int] = []

    def build_model(self, weights, state):
        type(self).builds += 1
        time.sleep(0.05)  # long enough for racing threads to meet in model()
        net = torch.nn.Linear(3, 3)
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return net

    def encode(self, src, params, device=CPU):
        net = self.model(self.require_weights(params), device)
        return bytes(net.weight.shape)

    def encode_group(self, srcs, params, device):
        type(self).groups.append(len(srcs))
        return super().encode_group(srcs, params, device)

    def decode(self, payload, device=CPU):
        return Decoded(image=Image.new("RGB", (1, 1)), fingerprint="0" * 64)


def _save(folder, name, q):
    from pixarc.weights import save_weights

    torch.manual_seed(q)
    return save_weights(folder, name, torch.nn.Linear(3, 3).state_dict(), {"arch": "toy", "q": q, "source": "test"})


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Weights for q = 1 and q = 3 in $PIXARC_TOY_WEIGHTS; nothing shipped."""
    monkeypatch.setattr(Toy, "weights_dir", tmp_path / "shipped")
    monkeypatch.setattr(Toy, "builds", 0)
    monkeypatch.setattr(Toy, "groups", [])
    monkeypatch.setenv("PIXARC_TOY_WEIGHTS", str(tmp_path / "w"))
    entries = {q: _save(tmp_path / "w", f"toy-q{q}.pt", q) for q in (1, 3)}
    return Toy(), entries, tmp_path / "w"


def test_weights_chosen_per_rate_point_from_the_manifest(toy):
    codec, entries, _ = toy
    assert codec.rate_values() == [1, 3]  # a target search probes only installed rate points
    assert codec.weights_for({"q": 3}) == entries[3]["sha256"] != entries[1]["sha256"]
    assert codec.weights_for({"q": 2}) == ""
    assert codec.has_weights(entries[1]["sha256"]) and not codec.has_weights("f" * 64)
    with pytest.raises(CodecError, match=r"no weights installed for q=2 \(installed: q \[1, 3\]\).*pixarc train toy"):
        codec.require_weights({"q": 2})
    assert codec.unsupported_reason(RGB) is None


def test_weights_are_per_rate_point_only_where_the_codec_says_so(tmp_path, monkeypatch):
    """A trainer's provenance list ("stages": one record per continuation) shares its name
    with SVR's rate parameter: a codec whose files serve every rate still takes its first
    file and searches its whole range."""
    from pixarc.weights import save_weights

    class Staged(Toy):
        codec_id, rate_param, weights_per_rate = "toy-staged", "stages", False
        params_schema = {"stages": Param(int, 4, 1, 4, "residual stages sent")}

    monkeypatch.setattr(Staged, "weights_dir", tmp_path / "shipped")
    monkeypatch.setenv("PIXARC_TOY_WEIGHTS", str(tmp_path / "w"))
    first = save_weights(tmp_path / "w", "toy-v2.pt", torch.nn.Linear(3, 3).state_dict(),
                         {"arch": "toy", "source": "test", "stages": [{"steps": "0-5"}, {"steps": "5-7"}]})
    codec = Staged()
    assert codec.weights_for({"stages": 2}) == codec.weights_for({}) == first["sha256"]
    assert codec.rate_values() == [1, 2, 3, 4]
    assert codec.unsupported_reason(RGB) is None


def test_without_weights_it_steps_aside_naming_the_train_command(tmp_path, monkeypatch):
    monkeypatch.setattr(Toy, "weights_dir", tmp_path / "shipped")
    monkeypatch.delenv("PIXARC_TOY_WEIGHTS", raising=False)
    reason = Toy().unsupported_reason(RGB)
    assert reason.startswith("toy-learned: no weights installed")
    assert "$PIXARC_TOY_WEIGHTS" in reason and str(tmp_path / "shipped") in reason
    assert reason.endswith("make them with `pixarc train toy`")
    assert Toy().unsupported_reason(ImageInfo(8, 8, "L", 8, "PNG", "L")).startswith("mode L")  # the usual checks first


def test_a_weights_file_that_does_not_match_its_manifest_is_refused(toy):
    codec, entries, folder = toy
    path = folder / "toy-q1.pt"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one byte changed: the manifest's sha256 no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(CodecError, match="tampered or wrong file"):
        codec.model(codec.require_weights({"q": 1}))
    assert Toy.builds == 0  # nothing was built from the bad bytes
    net = codec.model(codec.require_weights({"q": 3}))  # the intact file still loads, as itself
    torch.manual_seed(3)
    assert Toy.builds == 1 and torch.equal(net.weight, torch.nn.Linear(3, 3).weight.half().float())


def test_the_model_cache_is_per_weights_file_and_device(toy, monkeypatch):
    codec, _, _ = toy
    q1, q3 = codec.require_weights({"q": 1}), codec.require_weights({"q": 3})
    cpu = codec.model(q1, CPU)
    assert codec.model(q1, Device("cpu")) is cpu and Toy.builds == 1
    assert codec.model(q3, CPU) is not cpu and Toy.builds == 2
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # what is tested is the cache, not CUDA
    gpu0, gpu1 = codec.model(q1, Device("cuda")), codec.model(q1, Device("cuda", 1))
    assert len({id(cpu), id(gpu0), id(gpu1)}) == 3
    assert codec.model(q1, Device("cuda")) is gpu0 and codec.model(q1, Device("cuda", 1)) is gpu1
    assert torch.equal(gpu0.weight, cpu.weight) and Toy.builds == 2  # copied from the CPU model, not rebuilt


def test_concurrent_first_use_builds_once(toy):
    codec, _, _ = toy
    w = codec.require_weights({"q": 1})
    got = []
    threads = [threading.Thread(target=lambda: got.append(codec.model(w))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Toy.builds == 1 and len({id(m) for m in got}) == 1


def test_only_device_values_are_accepted(toy):
    codec, _, _ = toy
    w = codec.require_weights({"q": 1})
    with pytest.raises(TypeError, match="Device"):
        codec.model(w, "cpu")
    src = probe_and_load(encode_bytes(Image.new("RGB", (4, 4)), "PNG"))
    with pytest.raises(TypeError, match="Device"):
        codec.encode(src, codec.validate_params({}), "cuda")


def test_declared_contract():
    assert (Toy.determinism, Toy.restore_device, Toy.prefers_gpu) == ("integers", CPU, True)
    assert Toy.batch_hint > 1 and Toy.memory_hint_mb > 0


def test_encode_batch_groups_images_of_one_size(toy):
    codec, _, _ = toy
    r = np.random.default_rng(0)
    srcs = [probe_and_load(encode_bytes(Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG"))
            for w, h in ((8, 6), (5, 5), (8, 6), (8, 6))]
    out = codec.encode_batch(srcs, codec.validate_params({"q": 3}))
    assert sorted(Toy.groups) == [1, 3] and all(p == bytes((3, 3)) for p in out)
    failed = codec.encode_batch(srcs[:2], codec.validate_params({"q": 2}))  # no weights for q = 2
    assert all(isinstance(e, CodecError) for e in failed)


def test_importing_learned_plugins_does_not_import_torch():
    code = ("import sys; import pixarc.learned, pixarc_adaptive, pixarc_svr, pixarc_callic, pixarc_enhance\n"
            "from pixarc.images import ImageInfo\n"
            "info = ImageInfo(8, 8, 'RGB', 8, 'PNG', 'RGB')\n"
            "print([c().unsupported_reason(info) for c in (pixarc_svr.SVRCodec, pixarc_callic.CallicCodec)])\n"
            "print('TORCH', 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=os.environ.copy())
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("TORCH False"), res.stdout  # discovery and step-aside read JSON only


# ---------------------------------------------------------------- typed list parameters


def test_list_params_are_validated_per_element_and_stored_as_tuples(toy):
    codec, _, _ = toy
    toml = tomllib.loads("[params.toy-learned]\ngains = [0.5, 1.5, 0.5]\n")["params"]["toy-learned"]
    p = codec.validate_params(toml)
    assert p["gains"] == (0.5, 1.5, 0.5)  # order kept
    hash(tuple(p.items()))  # hashable (a list would raise TypeError)
    assert json.loads(json.dumps(p))["gains"] == [0.5, 1.5, 0.5]
    assert params_hash(p) == params_hash({**p, "gains": [0.5, 1.5, 0.5]})  # a manifest's JSON list, same key
    assert codec.validate_params({"gains": 1})["gains"] == (1.0,)  # one bare element: a list of one
    assert codec.validate_params({})["gains"] == (1.0,)


@pytest.mark.parametrize("value, match", [("0.5,1.5", "give a list of float"), (["0.5"], "give a list of float"),
                                          ([0.5, 2.5], r"gains=2.5 outside \[0.0, 2.0\]"), ([], "at least one"),
                                          ([[0.5]], "give a list of float"), ([0.5, "x"], "give a list of float")])
def test_bad_list_params_are_refused(toy, value, match):
    codec, _, _ = toy
    with pytest.raises(CodecError, match=match):
        codec.validate_params({"gains": value})


def test_the_learned_plugins_take_typed_lists():
    from pixarc_enhance import OWN_PARAMS

    strengths = OWN_PARAMS["strengths"]
    assert strengths.many and strengths.type is float and strengths.default == (0.0, 0.1, 0.25, -0.1)
    with pytest.raises(CodecError, match="give a list"):
        strengths.check("avif-enhanced", "strengths", "0,0.1,0.25,-0.1")

    class Plain(Codec):  # a codec without weights: scalar parameters behave as before
        codec_id, lossless = "plain", True
        params_schema = {"level": Param(int, 3, 0, 9)}
        encode = decode = None

    assert Plain().validate_params({"level": "4"}) == {"level": 4}


def test_refusing_turns_decoder_failures_into_codec_errors(toy):
    codec, _, _ = toy
    with pytest.raises(CodecError, match=r"^toy-learned: malformed payload \(ValueError: trailing bytes\)$"):
        with codec.refusing("malformed payload"):
            raise ValueError("trailing bytes")
    with pytest.raises(CodecError, match="^already typed$"):  # a CodecError passes unchanged
        with codec.refusing("cannot decode"):
            raise CodecError("already typed")


def test_a_payload_layout_packs_reads_and_refuses():
    from pixarc.payload import PayloadLayout

    layout = PayloadLayout(">BH", "kind size", sections=2, tail=">I",
                           plausible=lambda p: p.head.kind in (1, 2) and len(p.sections[0]) <= p.head.size)
    payload = layout.pack(1, 9, sections=(b"abc", b""), tail=(7,))
    assert payload == struct.pack(">BH", 1, 9) + struct.pack(">I", 3) + b"abc" + struct.pack(">I", 0) + \
        struct.pack(">I", 7)
    p = layout.read(payload, "x")
    assert (p.head.kind, p.head.size, p.sections, p.tail, p.rest) == (1, 9, (b"abc", b""), (7,), b"")
    assert layout.parse(payload).size == 9 and layout.size == 3
    with pytest.raises(CodecError, match=r"^x: malformed payload \(ValueError: trailing bytes\)$"):
        layout.read(payload + b"!", "x")
    for cut in (0, 2, 5, len(payload) - 1):  # never a struct.error or an IndexError
        with pytest.raises(CodecError, match="^x: malformed payload"):
            layout.read(payload[:cut], "x")
    with pytest.raises(CodecError, match="^x: implausible header values$"):
        layout.read(layout.pack(3, 9, sections=(b"abc", b""), tail=(7,)), "x")
    rest = PayloadLayout(">B", "flags", sections=1, rest=True)
    assert rest.read(rest.pack(1, sections=(b"base",), rest=b"more"), "x").rest == b"more"
    with pytest.raises(ValueError):
        layout.pack(1, 9, sections=(b"abc",), tail=(7,))


def test_entropy_tables_are_pinned():
    """The tables are part of the bitstream formats (enhance and adaptive adapters, svr's
    per-weights tables): the same integers as before they moved to pixarc.entropy, on every
    machine; a change here breaks archived bitstreams."""
    import hashlib

    pytest.importorskip("torch")
    from pixarc.entropy import cdf_from_counts, logistic_cdf, rans_decode, rans_encode

    def digest(table):
        return hashlib.sha256(json.dumps(list(table)).encode()).hexdigest()

    enhance, adaptive = logistic_cdf(15, 0.35), logistic_cdf(7, 0.05, 0.06)  # pixarc_enhance / _adaptive .adapt
    assert (len(enhance), digest(enhance)) == (33, "f7f178128a76c11d32b78cbda73066c8fc9d4716537286c9b6a1e8bb6893c5f8")
    assert (len(adaptive), digest(adaptive)) == (17, "77b43544f9560b987262052aba439461cd75e3a4f0ceb829427ee9be33930da9")
    counts = cdf_from_counts([5, 0, 17, 1000, 3, 3, 90])
    assert digest(counts) == "9053d545f696317c4abb68509b5be2d19037b764f527a6de47a46b5c6ffd2cfd"
    symbols = [-7, 0, 3, 7, 1, -1, 0, 0]
    assert rans_decode(rans_encode(symbols, [adaptive], offsets=-7), len(symbols), [adaptive], offsets=-7) == symbols


def test_decode_only_weights_still_decode_but_never_encode(toy):
    """Weights replaced by better ones stay installed, marked ``decode_only``: archives made
    with them still decode, new encodes never pick them (nor list their rate point)."""
    import json

    codec, entries, folder = toy
    doc = json.loads((folder / "weights.json").read_text())
    doc["files"]["toy-q3.pt"]["decode_only"] = True
    (folder / "weights.json").write_text(json.dumps(doc))
    codec = Toy()
    assert codec.rate_values() == [1]
    assert codec.has_weights(entries[3]["sha256"])  # a bitstream made with them is still readable
    assert codec.weights_for({"q": 3}) == "" and codec.weights_for({"q": 1}) == entries[1]["sha256"]
    doc["files"]["toy-q1.pt"]["decode_only"] = True
    (folder / "weights.json").write_text(json.dumps(doc))
    assert "no weights installed" in Toy().unsupported_reason(RGB)  # nothing left to encode with


def test_every_shipped_weights_file_is_hashed_fp16_with_provenance_and_all_fit_30_mb():
    """The brief's budget and record for shipped weights, over every plugin: each file's
    sha256 matches its manifest entry, its tensors are fp16, the entry says what trained it
    (steps, minutes, devices, data hash), and all files together stay under 30 MB."""
    import torch

    from pixarc.weights import file_sha256

    manifests = sorted((Path(__file__).parents[1] / "plugins").glob("pixarc_*/weights/weights.json"))
    assert len(manifests) >= 5  # adaptive, callic, classifier, enhance, svr
    total = 0
    for manifest in manifests:
        for name, entry in json.loads(manifest.read_text())["files"].items():
            path = manifest.parent / name
            data = path.read_bytes()
            total += len(data)
            assert file_sha256(data) == entry["sha256"], path
            state = torch.load(path, weights_only=True)
            if entry.get("kind") == "entropy-tables":  # integer counts beside the weights they code for
                assert entry["for"] in json.loads(manifest.read_text())["files"] and entry["data_sha256"], path
                assert state and all(not t.is_floating_point() for t in state.values()), path
                continue
            assert {"steps", "minutes", "devices", "data_sha256"} <= set(entry), (path, sorted(entry))
            state = state.get("state_dict", state)
            floats = [t for t in state.values() if torch.is_tensor(t) and t.is_floating_point()]
            assert floats and all(t.dtype == torch.float16 for t in floats), path
    assert total < 30 * 10**6, total


class Tagged(Toy):
    """Its reconstruction depends on the weights it decodes with (the fingerprint is their
    sha256), as a real learned codec's does."""

    def encode(self, src, params, device=CPU):
        self.require_weights(params)
        return struct.pack(">BHH", params["q"], *src.image.size)

    def decode(self, payload, device=CPU):
        q, w, h = struct.unpack(">BHH", payload)
        return Decoded(image=Image.new("RGB", (w, h)), fingerprint=self.require_weights({"q": q}).sha256)


def test_a_stored_bitstream_decodes_with_the_weights_it_was_made_with(toy):
    """Better weights for a rate point are shipped and the old ones kept as decode_only: a
    bitstream made before is decoded (restore, verify) with the old ones, named by its
    container, not with the ones a new encode picks."""
    from pixarc.checks import decode_with
    from pixarc.container import unpack
    from pixarc.encode import encode_verified
    from pixarc.errors import VerificationError
    from pixarc.images import probe_and_load

    _, entries, folder = toy
    src = probe_and_load(encode_bytes(Image.new("RGB", (9, 7)), "PNG"))
    blob = encode_verified(Tagged(), Tagged().validate_params({"q": 1}), src, "natural", CPU).blob
    assert unpack(blob).weights_sha256 == entries[1]["sha256"]

    new = _save(folder, "toy-q1-v2.pt", 11)  # retrained q = 1 ...
    doc = json.loads((folder / "weights.json").read_text())
    doc["files"]["toy-q1-v2.pt"]["q"] = 1
    doc["files"]["toy-q1.pt"]["decode_only"] = True  # ... replaces the old file for new encodes
    (folder / "weights.json").write_text(json.dumps(doc))
    codec = Tagged()
    assert codec.weights_for({"q": 1}) == new["sha256"] != entries[1]["sha256"]
    c = unpack(blob)
    assert codec.decode(c.payload).fingerprint == new["sha256"]  # what a decode without the container's word does
    assert decode_with(c, codec, CPU).fingerprint == entries[1]["sha256"]  # restore/verify: the old weights
    assert codec.select_weights({"q": 1}).sha256 == new["sha256"]  # the pin ends with the decode
    with pytest.raises(VerificationError, match="latents"):  # and the check catches the wrong weights
        from pixarc.checks import check_decoded

        check_decoded(c, codec.decode(c.payload), codec)
    with pytest.raises(CodecError, match="not installed"):
        codec.decode_stored(c.payload, CPU, {codec.codec_id: "e" * 64})

    class Picky(Tagged):  # its own rule for new encodes (as the enhancement filter has)
        def choose_weights(self, params=None):
            return [w for w in self.encoding_weights if w.entry["q"] == 1][-1]

    picky = Picky()
    assert picky.select_weights({"q": 1}).sha256 == new["sha256"]
    assert decode_with(c, picky, CPU).fingerprint == entries[1]["sha256"]  # the pin holds for it too


def test_a_composite_bitstream_pins_the_weights_of_its_learned_base(toy, tmp_path, monkeypatch):
    """``<base>-enhanced`` over a learned base: after better base weights ship (the old ones
    kept decode_only), an old bitstream still decodes with the base weights it was made with
    (issue 25.5). The container records every component's weights; the decode gets them."""
    from pixarc.checks import decode_with, stored_pins
    from pixarc.container import unpack
    from pixarc.encode import encode_verified
    from pixarc.images import probe_and_load
    from pixarc_enhance import enhanced
    from pixarc_enhance.model import EnhanceNet
    from pixarc.weights import save_weights

    _, entries, folder = toy
    net = EnhanceNet(channels=4, layers=3)
    filters = tmp_path / "filters"
    save_weights(filters, "f.pt", net.state_dict(), {"arch": "enhance-cnn", "base": "avif", "channels": 4,
                                                      "layers": 3, "cond": 2, "source": "test"})
    monkeypatch.setenv("PIXARC_ENHANCE_WEIGHTS", str(filters))
    composite = enhanced("toy-learned")(base=Tagged())
    params = composite.validate_params({"q": 1, "filter": "on", "adapters": "none", "rd_lambda": 1.0})
    src = probe_and_load(encode_bytes(Image.new("RGB", (16, 12), (90, 40, 200)), "PNG"))
    blob = encode_verified(composite, params, src, "natural", CPU).blob
    c = unpack(blob)
    assert stored_pins(c)["toy-learned"] == entries[1]["sha256"]

    new = _save(folder, "toy-q1-v2.pt", 11)  # better base weights ship for q = 1 ...
    doc = json.loads((folder / "weights.json").read_text())
    doc["files"]["toy-q1-v2.pt"]["q"] = 1
    doc["files"]["toy-q1.pt"]["decode_only"] = True  # ... the old ones kept for decoding only
    (folder / "weights.json").write_text(json.dumps(doc))
    later = enhanced("toy-learned")(base=Tagged())
    assert later.base.weights_for({"q": 1}) == new["sha256"]
    decoded = decode_with(c, later, CPU)  # raises VerificationError if the base used the new weights
    assert decoded.image.size == (16, 12)


def test_learned_decodes_run_with_one_thread_whatever_the_process_uses(toy):
    """Float kernels sum in a thread-count-dependent order: a reconstruction must come out the
    same on 1 and on many threads, so stored bitstreams decode on one intra-op thread (25.6)."""
    seen = []

    class Watching(Toy):
        def decode(self, payload, device=CPU):
            seen.append(torch.get_num_threads())
            return super().decode(payload, device)

    codec = Watching()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        codec.decode_stored(b"x", CPU, {codec.codec_id: codec.weights_for({"q": 1})})
        assert seen == [1] and torch.get_num_threads() == 2  # and the process's setting is back
    finally:
        torch.set_num_threads(before)


def test_shipped_svr_reconstruction_is_the_same_on_one_and_two_threads():
    """A real learned decode, through the archive's path, at 1 and 2 torch threads."""
    from pixarc.checks import decode_with
    from pixarc.container import unpack
    from pixarc.encode import encode_verified
    from pixarc.images import pixels_sha256
    from pixarc_svr import SVRCodec

    codec = SVRCodec()
    if codec.unsupported_reason(RGB):
        pytest.skip(codec.unsupported_reason(RGB))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    src = probe_and_load(encode_bytes(image, "PNG"))
    before = torch.get_num_threads()
    hashes = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            blob = encode_verified(codec, codec.validate_params({}), src, "natural", CPU).blob
            hashes.append(pixels_sha256(decode_with(unpack(blob), codec, CPU).image))
    finally:
        torch.set_num_threads(before)
    assert hashes[0] == hashes[1]
