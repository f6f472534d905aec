"""SVR (M-AdaCode, PAPERS.md §3) on a briefly trained tiny model: the method's parts
(all K index maps, filler over all K, residual-VQ basis, Gumbel one-hot m=1, no ids at
m=K, tables from kept predictions, every loss term run), resumable training, integer-only
bitstreams with m as the rate knob, and decoding that does not depend on the process or
the thread count."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import encode_bytes
from pixarc.images import probe_and_load

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def svr_weights(tmp_path_factory):
    from pixarc_svr.train import train

    root = tmp_path_factory.mktemp("svr")
    data = root / "data"
    data.mkdir()
    r = np.random.default_rng(0)
    for i in range(3):
        yy, xx = np.mgrid[0:104, 0:112]
        a = np.stack([128 + 90 * np.sin(xx / (5 + i) + c) for c in range(3)], -1) + r.normal(0, 8, (104, 112, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(data / f"{i}.png")
    # default patch size on purpose: MS-SSIM must run there; then a resumed run continues stage 2
    kw = dict(minutes=2, stage1_steps=3, batch=2, width=16, log_every=1, table_images=3, warmup=1)
    first = train(str(data), str(root / "w"), steps=5, **kw)
    entry = train(str(data), str(root / "w"), steps=7, resume=True, **kw)
    return root / "w", entry, first


@pytest.fixture
def svr(svr_weights, monkeypatch):
    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", str(svr_weights[0]))
    from pixarc_svr import SVRCodec

    return SVRCodec()


def image(w=70, h=45):
    r = np.random.default_rng(1)
    return probe_and_load(encode_bytes(Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG"))


def sections(payload):
    from pixarc_svr import read_payload

    return list(read_payload(payload, "svr").sections)


def tensor(src):
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(src.image, np.float32) / 255).permute(2, 0, 1)[None]
    return F.pad(x, (0, (-x.shape[-1]) % 8, 0, (-x.shape[-2]) % 8), mode="replicate")


class _Ladder:
    """A stand-in SVR model for the dev score: K = 2 stages of 4 codewords, PSNR set per
    stage (the output is the input plus a constant error), the selection symbols drawn from
    ``select`` values (more values, more bits)."""

    k, size = 2, 4

    def __init__(self, x, psnrs, select):
        self.x, self.psnrs, self.select = x, psnrs, select

    def analyse(self, x, m):
        g = torch.Generator().manual_seed(0)
        u, v = x.shape[-2] // 8, x.shape[-1] // 8
        return torch.randint(0, 4, (1, 2, u, v), generator=g), torch.randint(0, self.select, (1, u, v), generator=g), None

    def masked_from_symbols(self, m, sel, w, shape):
        return torch.zeros(1, 2, *shape[1:]), torch.zeros(1, 2, *shape[1:])

    def synthesise(self, idx, masked, mask, stages=None):
        return self.x + 10 ** (-self.psnrs[stages - 1] / 20)  # MSE = 10^(-PSNR/10) on [0, 1]


def test_the_dev_score_compares_quality_at_equal_rates_not_psnr_alone():
    from pixarc_svr.train import dev_score

    x = torch.full((1, 3, 64, 64), 0.5)

    def score(psnrs, select):
        return dev_score(_Ladder(x, psnrs, select), [x], bpp=(0.02, 0.08))

    cheap, costly, better = score((20.0, 24.0), 1), score((20.0, 24.0), 8), score((20.5, 24.5), 1)
    assert costly < cheap < better  # the same PSNR for 3 more bits per position scores lower


def test_weights_entry_and_resume(svr_weights):
    _, entry, first = svr_weights
    assert entry["arch"] == "svr" and len(entry["sha256"]) == 64 and len(entry["data_sha256"]) == 64
    assert (first["steps"], first["stage1_steps"]) == (5, 3)
    assert (entry["steps"], entry["stage1_steps"], entry["stage2_steps"]) == (7, 3, 4)  # continued, not restarted
    assert entry["devices"] == ["cpu"] and entry["minutes"] >= first["minutes"]
    assert [st["steps"] for st in entry["stages"]] == ["0-5", "5-7"]


def test_every_configured_loss_term_runs_at_the_default_patch(svr_weights):
    from pixarc_svr.train import LOSSES, ms_ssim_loss, train

    _, entry, _ = svr_weights
    for stage in (1, 2):
        logged = entry["final"][str(stage)]
        for name, weight in LOSSES[stage].items():
            assert weight > 0 and np.isfinite(logged[name]), (stage, name, logged)
    assert 0 < entry["final"]["2"]["ms_ssim"] < 1
    patch = inspect.signature(train).parameters["patch"].default
    x = torch.rand(2, 3, patch, patch, generator=torch.Generator().manual_seed(0))
    assert float(ms_ssim_loss(x, x)) < 1e-5 < float(ms_ssim_loss(x.flip(-1), x))


def test_all_k_index_maps_are_transmitted(svr):
    src = image()
    model = svr._model()
    with torch.no_grad():
        idx, _, _ = model.quantise(model.encoder(tensor(src)))
    for m in (1, 2, model.k):
        _, indices, _, _ = svr.decode_integers(svr.encode(src, svr.validate_params({"m": m})))
        assert torch.equal(torch.tensor(indices).view(6, 9, model.k).permute(2, 0, 1), idx[0]), m


def test_filler_re_predicts_every_codebook_from_the_degraded_latent():
    from pixarc_svr.model import SVRModel

    torch.manual_seed(0)
    model = SVRModel(width=8).eval()
    torch.nn.init.normal_(model.filler[-1].weight, std=0.5)  # a trained filler, not the identity start
    idx = torch.randint(0, model.size, (1, model.k, 2, 3))
    select = torch.zeros(1, 2, 3, dtype=torch.long)  # m = 1: codebook 0, positive, everywhere
    masked, mask = model.masked_from_symbols(1, select, None, (1, 2, 3))
    with torch.no_grad():
        y = model.fill(model.codewords(idx), masked, mask)
        other = idx.clone()
        other[0, 2, 0, 0] = (other[0, 2, 0, 0] + 1) % model.size  # a masked codebook's index
        y2 = model.fill(model.codewords(other), masked, mask)
    assert not torch.allclose(y[..., 0, 0], y2[..., 0, 0])  # masked codebooks still contribute
    assert torch.allclose(y[..., 1:, :], y2[..., 1:, :]) and torch.allclose(y[..., 0, 1:], y2[..., 0, 1:])


def test_basis_codebooks_are_residual_stages(svr):
    model = svr._model()
    with torch.no_grad():
        y = model.encoder(tensor(image()))
        idx, cw, res = model.quantise(y)
    assert torch.allclose(res[:, 0], y)
    for k in range(1, model.k):  # stage k quantises what stages < k left
        assert torch.allclose(res[:, k], res[:, k - 1] - cw[:, k - 1], atol=1e-6)
    errors = [float((y - cw[:, : k + 1].sum(1)).pow(2).mean()) for k in range(model.k)]
    assert errors[-1] < errors[0], errors


def test_m1_is_a_hard_gumbel_one_hot_with_sign_and_gradient():
    from pixarc_svr.model import SVRModel

    torch.manual_seed(0)
    model = SVRModel(width=8)
    w = torch.randn(2, model.k, 3, 4, requires_grad=True)
    masked, mask = model.mask_weights(w, 1, hard_noise=False)
    assert torch.equal(mask.sum(1), torch.ones(2, 3, 4))  # exactly one codebook per position
    best = w.abs().argmax(1, keepdim=True)
    assert torch.equal(torch.gather(masked, 1, best), torch.sign(torch.gather(w, 1, best)))  # sign kept
    (masked * torch.randn_like(masked)).sum().backward()
    assert w.grad.abs().sum() > 0  # straight-through: the selector is trained
    model.zero_grad()
    x = torch.rand(2, 3, 32, 32)
    model(x, 1)["x_hat"].mean().backward()
    assert model.predictor[-1].weight.grad.abs().sum() > 0
    # the bitstream side: (codebook, sign) as one symbol, decoded into the same ±1 one-hot map
    with torch.no_grad():
        wp = model.predictor(model.encoder(x))
        _, select, w_int = model.analyse(x, 1)
    dec, _ = model.masked_from_symbols(1, select, None, tuple(select.shape))
    assert w_int is None
    assert torch.equal(torch.gather(dec, 1, wp.abs().argmax(1, keepdim=True)),
                       torch.sign(torch.gather(wp, 1, wp.abs().argmax(1, keepdim=True))))


def test_stage_two_rate_term_prices_the_selection_symbols_and_trains_the_predictor():
    from pixarc_svr.model import SVRModel
    from pixarc_svr.train import selection_bpp

    torch.manual_seed(0)
    model = SVRModel(width=8)
    x = torch.rand(2, 3, 32, 32)
    out = model(x, 1)
    probs = out["select_probs"]
    assert probs.shape == (2, 2 * model.k, 4, 4)
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 4))
    with torch.no_grad():  # its most likely symbol is the one the encoder sends
        _, select, _ = model.analyse(x, 1)
    assert torch.equal(probs.argmax(1), select)
    selection_bpp(probs, 32 * 32).backward()
    assert model.predictor[-1].weight.grad.abs().sum() > 0

    def hard_entropy(w):  # bits per position of the symbols the encoder would send
        s = model.selection_probs(w).argmax(1).flatten()
        p = torch.bincount(s, minlength=2 * model.k).float() / s.numel()
        return float(-(p[p > 0] * p[p > 0].log2()).sum())

    # minimising the term alone concentrates the symbols the encoder sends
    w = torch.randn(4, model.k, 8, 8, requires_grad=True)
    before = hard_entropy(w.detach())
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        selection_bpp(model.selection_probs(w), 64).backward()
        opt.step()
    assert hard_entropy(w.detach()) < 0.5 * before, (before, hard_entropy(w.detach()))


def test_sections_per_m_no_ids_at_m_k_no_weights_at_m_1(svr):
    src = image()
    k = svr._model().k
    lengths = {m: [len(s) for s in sections(svr.encode(src, svr.validate_params({"m": m})))]
               for m in range(1, k + 1)}
    assert lengths[1][1] > 0 and lengths[1][2] == 0  # one-hot: (codebook, sign), no weights
    assert lengths[2][1] > 0 and lengths[2][2] > 0
    assert lengths[k][1] == 0 and lengths[k][2] > 0  # m = K: every codebook is kept, no ids
    assert all(n[0] > 0 for n in lengths.values())


def test_weight_table_counts_only_the_kept_predictions():
    from pixarc_svr.model import W_OFFSET, W_STEP, SVRModel
    from pixarc_svr.train import count_symbols

    model = SVRModel(width=8).eval()
    with torch.no_grad():
        model.predictor[-1].weight.zero_()
        model.predictor[-1].bias.copy_(torch.tensor([1.5, 0.25, -0.5, 1.0]))
    x = torch.rand(1, 3, 16, 24)  # 2 x 3 positions
    _, select, weight = count_symbols(model, [x])
    sym = lambda w: int(round(w / W_STEP)) + W_OFFSET  # noqa: E731
    assert weight[2, sym(1.5)] == 7 and weight[2, sym(1.0)] == 7  # 6 positions + add-one
    assert weight[2, sym(0.25)] == 1 and weight[2, sym(-0.5)] == 1  # masked: never sent, never counted
    assert weight[3, sym(-0.5)] == 7 and weight[3, sym(0.25)] == 1
    assert weight[4, sym(0.25)] == 7
    assert select[1, 0] == 7 and select[1].sum() == 7 + 2 * model.k - 1  # codebook 0, positive


def test_round_trip_every_m_and_symbols_grow_with_m(svr):
    src = image()
    bits = []
    for m in (1, 2, 3, 4):
        payload = svr.encode(src, svr.validate_params({"m": m}))
        a, b = svr.decode(payload), svr.decode(payload)
        assert a.image.size == (70, 45) and a.fingerprint == b.fingerprint
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        bits.append(svr.fixed_length_bits(m, 6, 9))
    # m is the rate knob in what is sent; entropy-coded sizes per m are measured by benchmarks/svr.py
    # on the trained weights (a tiny model's near-constant weights cost almost nothing)
    assert bits == sorted(set(bits)), bits


def test_tables_are_integer_and_valid():
    from pixarc.entropy import cdf_from_counts

    for counts in ([1, 1, 1], [100000, 1, 1, 5], [3] * 300, [7, 0, 2]):
        cdf = cdf_from_counts(counts)
        assert len(cdf) == len(counts) + 2 and cdf[0] == 0 and cdf[-1] == 1 << 16
        assert all(b > a for a, b in zip(cdf, cdf[1:])) and all(isinstance(c, int) for c in cdf)


def test_garbage_is_a_codec_error(svr):
    from pixarc.errors import CodecError

    payload = svr.encode(image(), svr.validate_params({"m": 2}))
    for cut in (0, 3, len(payload) // 2, len(payload) - 1):
        with pytest.raises(CodecError):
            svr.decode(payload[:cut])


def test_decode_is_the_same_in_a_fresh_process_with_one_thread(svr, svr_weights, tmp_path):
    payload = svr.encode(image(), svr.validate_params({"m": 3}))
    (tmp_path / "p.bin").write_bytes(payload)
    code = ("import sys, torch, numpy as np; torch.set_num_threads(1); from pixarc_svr import SVRCodec; "
            "d = SVRCodec().decode(open(sys.argv[1], 'rb').read()); np.save(sys.argv[2], np.asarray(d.image)); "
            "print('FP', d.fingerprint)")
    env = {**os.environ, "PIXARC_SVR_WEIGHTS": str(svr_weights[0])}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.bin"), str(tmp_path / "px.npy")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    here = svr.decode(payload)
    assert res.stdout.split("FP ")[1].strip() == here.fingerprint  # the same integers
    diff = np.abs(np.load(tmp_path / "px.npy").astype(int) - np.asarray(here.image).astype(int))
    assert diff.max() <= 1  # pixels from float convolutions: within one level


def test_lowrate_policy_targets_low_bpp():
    from pathlib import Path

    from pixarc.policy import load_policy

    pol = load_policy(str(Path(__file__).parents[1] / "pipeline" / "policies" / "lowrate.toml"))
    lossy = {d: r for d, r in pol.routes.items() if not r.lossless}
    assert lossy and all(r.target and r.target[0] == "bpp" and r.target[1] <= 0.3 for r in lossy.values())
    # SVR competes by RD cost on natural and comic, so it is kept only where it wins
    assert pol.selection == "rd" and {"natural", "comic"} <= set(lossy)
    assert all("svr" in r.codecs and {"avif", "webp", "jpeg"} <= set(r.codecs) for r in lossy.values())


def test_archive_routes_to_svr_with_a_bpp_target(svr_weights, monkeypatch, tmp_path):
    """A target_bpp route with SVR first, as lowrate.toml asks where SVR wins: m searched,
    decode-checked, verified, fingerprint recorded."""
    from pixarc import runs
    from pixarc.container import unpack
    from pixarc.manifest import latest, read_manifest
    from pixarc.plugins import build_plugin_manager

    monkeypatch.setenv("PIXARC_SVR_WEIGHTS", str(svr_weights[0]))
    monkeypatch.setenv("PIXARC_PLUGINS", os.environ["PIXARC_PLUGINS"] + ",svr")  # conftest allows built-ins only
    src_dir, dest = tmp_path / "src", tmp_path / "dest"
    src_dir.mkdir()
    Image.fromarray(np.asarray(image().image)).save(src_dir / "a.png")
    policy = tmp_path / "p.toml"
    policy.write_text('min_confidence = 1.1\n[routes.unknown]\nlossless = false\n'
                      'codecs = ["svr", "avif", "webp", "jpeg"]\ntarget_bpp = 8.0\n')
    reg = build_plugin_manager()
    runs.archive_local(str(src_dir), str(dest), policy=str(policy), device="cpu", registry=reg)
    row = {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}["a.png"]
    assert row["codec_id"] == "svr", row["notes"]
    assert not row["lossless"] and np.isfinite(row["psnr"])
    meta = unpack((dest / "a.png.pxa").read_bytes()).meta
    assert meta["params"]["stages"] == 4 and len(meta["decoded_fingerprint"]) == 64  # the most bits within 8 bpp
    assert not runs.verify_local(str(dest), full=True, registry=reg).problems


def test_shipped_weights_load_and_decode(monkeypatch):
    monkeypatch.delenv("PIXARC_SVR_WEIGHTS", raising=False)
    from pixarc_svr import SVRCodec

    path, entry = SVRCodec().weights[0].path, SVRCodec().weights[0].entry
    assert path.stat().st_size < 3_000_000 and entry["data_sha256"] and entry["steps"] > 0 and entry["minutes"] > 0
    c = SVRCodec()
    payload = c.encode(image(), c.validate_params({"m": 2}))
    assert c.decode(payload).image.size == (70, 45)


def test_without_weights_it_steps_aside(monkeypatch, tmp_path):
    from pixarc.images import ImageInfo
    from pixarc_svr import SVRCodec

    monkeypatch.delenv("PIXARC_SVR_WEIGHTS", raising=False)
    monkeypatch.setattr(SVRCodec, "weights_dir", tmp_path)  # neither PIXARC_SVR_WEIGHTS nor shipped ones

    reason = SVRCodec().unsupported_reason(ImageInfo(64, 64, "RGB", 8, "PNG", "RGB"))
    assert "no weights" in reason and "`pixarc train svr`" in reason
