import json

import pytest
import torch

from pixarc.weights import WeightsError, file_sha256, hub_checkpoint, load_from_manifest, load_weights


@pytest.fixture
def shipped(tmp_path):
    sd = {"layer.weight": torch.arange(6, dtype=torch.float16).reshape(2, 3)}
    path = tmp_path / "tiny.pt"
    torch.save(sd, path)
    (tmp_path / "weights.json").write_text(json.dumps({"files": {"tiny.pt": {"sha256": file_sha256(path.read_bytes())}}}))
    return tmp_path


def test_load_checks_hash_and_returns_tensors(shipped):
    sd, digest = load_from_manifest(shipped, "tiny.pt")
    assert torch.equal(sd["layer.weight"], torch.arange(6, dtype=torch.float16).reshape(2, 3))
    assert len(digest) == 64


def test_tampered_file_is_refused(shipped):
    p = shipped / "tiny.pt"
    data = bytearray(p.read_bytes())
    data[-10] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="tampered"):
        load_from_manifest(shipped, "tiny.pt")


def test_no_hash_no_load(shipped):
    with pytest.raises(WeightsError, match="without a sha256"):
        load_weights(shipped / "tiny.pt", "")


def test_unlisted_file_is_refused(shipped):
    with pytest.raises(WeightsError, match="not listed"):
        load_from_manifest(shipped, "other.pt")


class Evil:
    def __reduce__(self):
        return (print, ("code ran during unpickling",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(WeightsError, match="safely"):
        load_weights(p, file_sha256(p.read_bytes()))
    assert "code ran" not in capsys.readouterr().out


def test_fsspec_urls_and_hub_cache_location(shipped):
    import fsspec

    data = (shipped / "tiny.pt").read_bytes()
    fsspec.filesystem("memory").pipe("/w/tiny.pt", data)
    sd = load_weights("memory://w/tiny.pt", file_sha256(data))
    assert "layer.weight" in sd
    assert hub_checkpoint("mbt2018-mean-3-e9f8e9e0.pth.tar").parts[-2] == "checkpoints"
