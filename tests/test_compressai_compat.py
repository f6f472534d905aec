"""CompressAI's model code works without torchvision and torch-geometric (not installable here)."""

import subprocess
import sys


def test_models_entropy_coder_and_zoo_table_load_without_torchvision():
    code = r"""
import sys
from pixarc import compressai_compat
compressai_compat.load()
import torch
from compressai.models import MeanScaleHyperprior
from compressai.zoo.image import model_urls
torch.manual_seed(0)
m = MeanScaleHyperprior(N=8, M=12).eval()
m.update(force=True)
x = torch.rand(1, 3, 64, 64)
out = m.compress(x)
rec = m.decompress(out["strings"], out["shape"])["x_hat"]
assert rec.shape == x.shape
assert "mbt2018-mean" in model_urls
bad = sorted(k for k in sys.modules if k.split(".")[0] in ("torchvision", "torch_geometric"))
print("LOADED", bad)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LOADED []" in res.stdout
