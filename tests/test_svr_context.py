"""SVR's context-coded index maps (context.py) and the ``stages`` rate knob: exact round
trips, fewer bits than the context-free tables, refused forgeries, old payloads still
decoding to the same integers and pixels, the shipped tables, the counting command."""

import numpy as np
import pytest
from PIL import Image

from conftest import encode_bytes
from pixarc.images import probe_and_load
import test_svr
from test_svr import image, sections, tensor

torch = pytest.importorskip("torch")
svr_weights, svr = test_svr.svr_weights, test_svr.svr  # the same fixtures (the tiny model trains once here too)


# --------------------------------------------------------------- context-coded index maps
def blocky_maps(rng, k=2, size=8, u=12, v=16, block=4):
    """Index maps with the structure of flat content: constant blocks per stage, later
    stages often repeating where the earlier ones do."""
    z = np.zeros((k, u, v), np.int64)
    for s in range(k):
        z[s] = np.kron(rng.integers(0, size, (u // block, v // block)), np.ones((block, block), np.int64))
    return z


def test_context_ids_match_the_decoder_and_round_trip():
    from pixarc.entropy import cdf_from_counts, rans_encode
    from pixarc_svr.context import ContextTables, context_ids, contexts_per_stage, count

    rng = np.random.default_rng(0)
    train_maps = [blocky_maps(rng) for _ in range(30)]
    tables = ContextTables(count(train_maps, 2, 8), "ab" * 32)
    assert tables.counts.shape == (2, contexts_per_stage(8), 8) and tables.counts.sum() == 30 * 2 * 12 * 16
    for z in (blocky_maps(rng), rng.integers(0, 8, (2, 5, 7)), np.zeros((2, 1, 1), np.int64)):
        assert np.array_equal(tables.decode(tables.encode(z), *z.shape[1:]), z)
    z = blocky_maps(rng)
    ids = context_ids(z, 8)
    assert ids[0, 0, 0] == 8 * 4  # column 0: no left neighbour
    assert ids[1, 3, 5] == z[1, 3, 4] * 4 + 2 * (z[0, 3, 5] == z[0, 3, 4]) + (z[1, 2, 5] == z[1, 3, 4])
    # fewer bits than the context-free tables (per-stage marginal counts of the same training maps)
    free = [cdf_from_counts(tables.counts[s].sum(0).tolist()) for s in range(2)]
    plain = rans_encode(z.transpose(1, 2, 0).reshape(-1).tolist(), free, [0, 1] * (12 * 16))
    assert len(tables.encode(z)) < 0.7 * len(plain), (len(tables.encode(z)), len(plain))


def test_context_decode_refuses_an_escaped_index():
    from pixarc.entropy import rans_encode
    from pixarc.errors import CodecError
    from pixarc_svr.context import ContextTables, count

    tables = ContextTables(count([np.zeros((2, 3, 3), np.int64)], 2, 8), "cd" * 32)
    junk = rans_encode([9] * 18, tables.cdfs(), [0] * 18)  # 9 >= size: coded through the escape bin
    with pytest.raises(CodecError):
        tables.decode(junk, 3, 3)


def test_training_ships_context_tables_with_their_sha256(svr_weights):
    import json

    from pixarc.weights import file_sha256
    from pixarc_svr.context import contexts_per_stage

    root, entry, _ = svr_weights
    files = json.loads((root / "weights.json").read_text())["files"]
    name = entry["context_tables"]
    ctx = files[name]
    assert ctx["arch"] == "svr-context" and ctx["sha256"] == file_sha256((root / name).read_bytes())
    assert ctx["for"] in files and files[ctx["for"]]["sha256"] == entry["sha256"]
    counts = torch.load(root / name, weights_only=True)["counts"]
    assert tuple(counts.shape) == (entry["k"], contexts_per_stage(entry["size"]), entry["size"])
    assert int(counts[0].sum()) == ctx["positions"] == 3 * 13 * 14  # every position of the 3 training images


def test_context_payload_round_trips_to_the_same_integers_as_the_old_layout(svr):
    from pixarc_svr import CONTEXT

    src = image()
    for m in (1, 2, 4):
        params = svr.validate_params({"m": m})
        new, old = svr.encode(src, params), svr.encode_with(src, params, context=False)
        assert new[0] == m | CONTEXT and old[0] == m
        a, b = svr.decode(new), svr.decode(old)
        assert a.fingerprint == b.fingerprint and svr.decode_integers(new) == svr.decode_integers(old)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_context_coding_saves_bits_on_a_structured_image(monkeypatch):
    """With the shipped weights and tables (the tiny fixture's tables count 546 positions of
    noise: too few to say anything; the tiny-table test above covers the mechanism)."""
    from pixarc_svr import SVRCodec

    monkeypatch.delenv("PIXARC_SVR_WEIGHTS", raising=False)
    c = SVRCodec()
    yy, xx = np.mgrid[0:128, 0:192]  # flat 64-px blocks: 8 x 8 latent positions each
    a = np.stack([(xx // 64) * 60, (yy // 64) * 50, ((xx // 64 + yy // 64) % 2) * 180], -1).astype(np.uint8)
    src = probe_and_load(encode_bytes(Image.fromarray(a), "PNG"))
    params = c.validate_params({"m": 1})
    new, old = sections(c.encode(src, params)), sections(c.encode_with(src, params, context=False))
    assert len(new[0]) < 0.8 * len(old[0]), (len(new[0]), len(old[0]))
    assert new[1:] == old[1:]  # only the index maps are coded differently


def test_malformed_context_payloads_are_codec_errors(svr, svr_weights, monkeypatch, tmp_path):
    import json
    import shutil

    from pixarc.errors import CodecError
    from pixarc_svr import CONTEXT, HEADER_CONTEXT, SVRCodec

    payload = svr.encode(image(), svr.validate_params({"m": 2}))
    head = HEADER_CONTEXT.parse(payload)
    secs = sections(payload)
    forged = [
        HEADER_CONTEXT.pack(*head[:-1], head.tables ^ 1, sections=secs),  # other tables
        HEADER_CONTEXT.pack(7 | CONTEXT, *head[1:], sections=secs),  # m out of range
        bytes([payload[0] & ~CONTEXT]) + payload[1:],  # the flag cleared: the old layout misreads it
        HEADER_CONTEXT.pack(*head, sections=[secs[0][:-1], *secs[1:]]),  # index maps cut (consistent lengths)
        HEADER_CONTEXT.pack(*head, sections=[b"", *secs[1:]]),  # no index maps
        payload[:-1], payload + b"\0",
    ]
    for i, bad in enumerate(forged):
        with pytest.raises(CodecError):
            svr.decode(bad)
    # weights whose entry names no context tables cannot read a context payload (and write the old layout)
    bare = tmp_path / "bare"
    shutil.copytree(svr_weights[0], bare)
    doc = json.loads((bare / "weights.json").read_text())
    for e in doc["files"].values():
        e.pop("context_tables", None)
    (bare / "weights.json").write_text(json.dumps(doc))
    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", str(bare))
    plain = SVRCodec()
    with pytest.raises(CodecError, match="context tables"):
        plain.decode(payload)
    assert not plain.encode(image(), plain.validate_params({"m": 2}))[0] & CONTEXT
    # the rate knob (stages) needs the context layout: without tables a search probes K alone
    assert svr.rate_values() == [1, 2, 3, 4] and plain.rate_values() == [4]


def test_tampered_context_tables_are_refused(svr_weights, monkeypatch, tmp_path):
    import shutil

    from pixarc.weights import WeightsError
    from pixarc_svr import SVRCodec

    copy = tmp_path / "w"
    shutil.copytree(svr_weights[0], copy)
    name = svr_weights[1]["context_tables"]
    data = bytearray((copy / name).read_bytes())
    data[-100] ^= 1
    (copy / name).write_bytes(bytes(data))
    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", str(copy))
    with pytest.raises(WeightsError, match="sha256"):
        SVRCodec().context_tables()


def test_format2_payloads_written_before_context_coding_still_decode(monkeypatch):
    """Payloads written by the code before context tables existed (commit bf49511, the
    v2 weights, kept for decoding): the same integers (fingerprint) and the same pixels as then
    (within one level: float convolutions)."""
    import json
    from pathlib import Path

    from pixarc.device import CPU
    from pixarc_svr import CONTEXT, SVRCodec

    monkeypatch.delenv("PIXARC_SVR_WEIGHTS", raising=False)
    data = Path(__file__).parent / "data"
    doc = json.loads((data / "svr_format2.json").read_text())
    c = SVRCodec()
    # the weights they were made with are still installed (for decoding, once newer ones encode)
    assert doc["weights"] in {w.sha256 for w in c.weights}
    for m, rec in doc["payloads"].items():
        payload = bytes.fromhex(rec["hex"])
        assert payload[0] == int(m) and not payload[0] & CONTEXT
        decoded = c.decode_stored(payload, CPU, {c.codec_id: doc["weights"]})  # as an archive's container pins them
        assert decoded.fingerprint == rec["fingerprint"], m
        then = np.asarray(Image.open(data / f"svr_format2_m{m}.png")).astype(int)
        assert np.abs(np.asarray(decoded.image).astype(int) - then).max() <= 1, m


def test_shipped_context_tables_are_small_and_used(monkeypatch):
    from pixarc_svr import CONTEXT, SVRCodec

    monkeypatch.delenv("PIXARC_SVR_WEIGHTS", raising=False)
    c = SVRCodec()
    w = c.encoding_weights[0]
    name = w.entry["context_tables"]
    assert (w.path.parent / name).stat().st_size < 500_000
    tables = c.context_tables()
    assert tables is not None and tables.sha256 == tables.sha256.lower() and len(tables.sha256) == 64
    assert c.encode(image(), c.validate_params({"m": 1}))[0] == 1 | CONTEXT


# --------------------------------------------------------------- stages: the first s residual stages sent
def test_stages_send_a_prefix_of_the_maps_and_decode_only_it(svr):
    from pixarc.errors import CodecError
    from pixarc.tensors import tensor_pixels
    from pixarc_svr import HEADER_CONTEXT

    src, model = image(), svr._model()
    full = svr.decode_integers(svr.encode(src, svr.validate_params({"m": 1})))[1]
    assert svr.encode(src, svr.validate_params({"m": 1})) == svr.encode(src, svr.validate_params({"m": 1, "stages": 4}))
    lengths = []
    for s in (1, 2, 3):
        payload = svr.encode(src, svr.validate_params({"m": 1, "stages": s}))
        assert HEADER_CONTEXT.parse(payload).stages == s
        _, indices, select, _ = svr.decode_integers(payload)
        per = np.array(full).reshape(6, 9, model.k)
        assert indices == per[:, :, :s].reshape(-1).tolist()  # the first s stages, nothing else
        lengths.append(len(sections(payload)[0]))
        # the decoder sees the stages sent: the others' codewords are zero
        with torch.no_grad():
            idx, sel, _ = model.analyse(tensor(src), 1)
            cw = model.codewords(idx)
            cw[:, s:] = 0
            masked, mask = model.masked_from_symbols(1, sel, None, tuple(sel.shape))
            ref = tensor_pixels(model.decoder(model.fill(cw, masked, mask))[0, :, :45, :70])
        assert np.abs(np.asarray(svr.decode(payload).image).astype(int) - ref.astype(int)).max() <= 1, s
    assert lengths == sorted(lengths) and len(set(lengths)) == 3, lengths
    with pytest.raises(CodecError):  # the context-free layout has no room for fewer stages
        svr.encode_with(src, svr.validate_params({"m": 1, "stages": 2}), context=False)
    with pytest.raises(CodecError):
        svr.validate_params({"stages": 5})


def test_stages_are_a_monotone_rate_knob_with_the_shipped_weights(monkeypatch):
    """Fewer stages: fewer bits and lower PSNR, on a real photograph (examples/, not dev)."""
    from pathlib import Path

    from pixarc.metrics import psnr
    from pixarc_svr import SVRCodec

    monkeypatch.delenv("PIXARC_SVR_WEIGHTS", raising=False)
    c = SVRCodec()
    path = sorted((Path(__file__).parents[1] / "examples" / "images" / "natural").glob("*"))[0]
    src = probe_and_load(path.read_bytes())
    points = []
    for s in (1, 2, 3, 4):
        payload = c.encode(src, c.validate_params({"m": 1, "stages": s}))
        points.append((len(payload), psnr(src.image.convert("RGB"), c.decode(payload).image)))
    sizes, psnrs = zip(*points)
    assert list(sizes) == sorted(sizes) and list(psnrs) == sorted(psnrs), points
    assert psnrs[-1] - psnrs[0] > 2.0, points


def test_context_tables_command_counts_the_training_images(svr_weights, monkeypatch, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from pixarc_svr.commands import svr as svr_group

    copy = tmp_path / "w"
    shutil.copytree(svr_weights[0], copy)
    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", str(copy))
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(data / "flat.png")  # 5 x 7 positions
    res = CliRunner().invoke(svr_group, ["context-tables", "--data", str(data)])
    assert res.exit_code == 0, res.output
    files = json.loads((copy / "weights.json").read_text())["files"]
    entry = files[svr_weights[1]["context_tables"]]
    assert entry["images"] == 1 and entry["positions"] == 35
    from pixarc_svr import SVRCodec

    tables = SVRCodec().context_tables()
    assert tables.sha256 == entry["sha256"] and tables.counts[0].sum() == 35
