"""Context coding of SVR's codeword-index maps: tables conditioned on neighbours and stages.

The K residual-VQ index maps (K, u, v) are coded stage by stage, each in raster order. The
table of index z_k(i, j) is chosen by a context of what the decoder already has:

* ``L`` = z_k(i, j−1), the left neighbour in the same stage (``size`` in column 0: none);
* ``a`` = 1 when the upper neighbour z_k(i−1, j) equals ``L`` (flat vertically as well);
* ``b`` = 1 when the previous stage agrees with the left neighbour there:
  z_{k−1}(i, j) = z_{k−1}(i, j−1) (stage 0: always 0).

So 4·(size + 1) contexts per stage; with K = 4 and 64 codewords, 4 × 260 tables of 64
symbols. Why this design (measured on dev with tables counted on the training crops,
docs/svr.md): the full (left, previous-stage) context needs 64× more tables, most of them
nearly empty, and saves less than these two equality flags; the previous stage alone
saves half as much as the left neighbour.

A table is ``count · PRIOR_SCALE + prior``: the integer counts of its context over the
training images, plus the stage's marginal counts scaled to ``PRIOR_MASS`` pseudo-counts
(so a context seen rarely falls back to the stage's distribution); integer arithmetic
only, then :func:`pixarc.entropy.cdf_from_counts`, so every machine builds the same tables.
The counts ship as a file beside the weights, with its sha256 in ``weights.json``.

The decoder needs each symbol before it can choose the next one's table, so it decodes
one symbol per call of CompressAI's ``decode_stream`` (about 2 µs each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from pixarc.entropy import cdf_from_counts, rans_encode
from pixarc.errors import CodecError

PRIOR_SCALE = 1024
PRIOR_MASS = 16


def contexts_per_stage(size: int) -> int:
    return 4 * (size + 1)


def context_ids(z: np.ndarray, size: int) -> np.ndarray:
    """The context (0 .. 4·(size+1) − 1) of every index of the maps ``z`` (K, u, v),
    vectorised: what :meth:`ContextTables.decode` computes one symbol at a time."""
    z = z.astype(np.int64)
    left = np.full_like(z, size)
    left[:, :, 1:] = z[:, :, :-1]
    up_eq = np.zeros(z.shape, np.int64)
    up_eq[:, 1:, 1:] = z[:, :-1, 1:] == z[:, 1:, :-1]
    prev_eq = np.zeros(z.shape, np.int64)
    prev_eq[1:, :, 1:] = z[:-1, :, 1:] == z[:-1, :, :-1]
    return left * 4 + prev_eq * 2 + up_eq


def count(maps: Iterable[np.ndarray], k: int, size: int) -> np.ndarray:
    """Integer counts (K, contexts, size) of the index maps ``maps`` (each (K, u, v))."""
    counts = np.zeros((k, contexts_per_stage(size), size), np.int64)
    for z in maps:
        ids = context_ids(z, size)
        for s in range(k):
            np.add.at(counts[s], (ids[s].ravel(), z[s].astype(np.int64).ravel()), 1)
    return counts


@dataclass
class ContextTables:
    """The context tables of one weights file: its counts (K, contexts, size) and the
    sha256 of the file they came from (a payload names its first 32 bits)."""

    counts: np.ndarray
    sha256: str
    _cdfs: list[list[int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        c = self.counts
        if c.ndim != 3 or c.shape[1] != contexts_per_stage(c.shape[2]) or (c < 0).any():
            raise ValueError(f"context counts of shape {c.shape} (need K × 4·(size+1) × size, non-negative)")

    @property
    def k(self) -> int:
        return self.counts.shape[0]

    @property
    def size(self) -> int:
        return self.counts.shape[2]

    @property
    def tag(self) -> int:
        """What a payload records of these tables: the first 32 bits of their file's sha256."""
        return int(self.sha256[:8], 16)

    def cdfs(self) -> list[list[int]]:
        """All K · contexts tables, stage-major (table ``stage · contexts + context``)."""
        if self._cdfs is None:
            out = []
            for stage in self.counts:
                marginal = [int(x) for x in stage.sum(0)]
                total = max(1, sum(marginal))
                prior = [max(1, PRIOR_MASS * PRIOR_SCALE * m // total) for m in marginal]
                out += [cdf_from_counts([int(c) * PRIOR_SCALE + p for c, p in zip(row, prior)]) for row in stage]
            self._cdfs = out
        return self._cdfs

    def encode(self, z: np.ndarray) -> bytes:
        """The maps ``z`` (s, u, v), the first s ≤ K stages, stage by stage in raster order, as
        one rANS string (a stage's context needs only itself and the stage before, so the
        first s stages are coded by the first s stages' tables)."""
        if not 1 <= z.shape[0] <= self.k or (z.size and not 0 <= int(z.min()) <= int(z.max()) < self.size):
            raise ValueError("index maps do not match the context tables")
        first = np.arange(z.shape[0]) * contexts_per_stage(self.size)  # stage s's tables start here
        ids = context_ids(z, self.size) + first[:, None, None]
        return rans_encode(z.reshape(-1).tolist(), self.cdfs(), ids.reshape(-1).tolist())

    def decode(self, data: bytes, u: int, v: int, stages: int | None = None) -> np.ndarray:
        """The (stages, u, v) maps :meth:`encode` wrote (default: all K); CodecError on an
        index out of range."""
        from pixarc import compressai_compat

        compressai_compat.load()
        from compressai.ans import RansDecoder

        if len(data) < 8 or len(data) % 4:  # CompressAI's rANS writes 32-bit words, the final state in two
            raise CodecError(f"svr: an index-map string of {len(data)} bytes is not rANS output")
        cdfs, size, per = self.cdfs(), self.size, contexts_per_stage(self.size)
        length = [size + 2]
        stages = self.k if stages is None else stages
        if not 1 <= stages <= self.k:
            raise CodecError(f"svr: {stages} stages, the tables have {self.k}")
        z = np.zeros((stages, u, v), np.int64)
        dec = RansDecoder()
        dec.set_stream(data)
        step = dec.decode_stream
        for s in range(stages):
            zs, base = z[s].tolist(), s * per
            prev = z[s - 1].tolist() if s else None
            for i in range(u):
                row, up, pr = zs[i], zs[i - 1] if i else None, prev[i] if prev else None
                left = size
                for j in range(v):
                    if j:
                        ctx = left * 4 + (2 if pr is not None and pr[j] == pr[j - 1] else 0) + (
                            1 if up is not None and up[j] == left else 0)
                    else:
                        ctx = size * 4
                    sym = step([0], [cdfs[base + ctx]], length, [0])[0]
                    if not 0 <= sym < size:
                        raise CodecError("svr: codeword index out of range")
                    row[j] = left = sym
            z[s] = zs
        return z


# --------------------------------------------------------------- the shipped file
def tables_name(weights_name: str) -> str:
    """The context tables' file for a weights file: ``svr-w32-v2.pt`` → ``svr-w32-v2-context.pt``."""
    return weights_name[: -len(".pt")] + "-context.pt" if weights_name.endswith(".pt") else weights_name + "-context"


def load_tables(weights_path, entry) -> ContextTables | None:
    """The context tables a weights entry names (``"context_tables"``, a file beside it,
    listed with its sha256 in the same ``weights.json``): sha256 first, ``weights_only``
    loading; None when the entry names none (the weights code index maps context-free)."""
    from pathlib import Path

    from pixarc.weights import WeightsError, load_from_manifest

    name = entry.get("context_tables")
    if not name:
        return None
    state, sha = load_from_manifest(Path(weights_path).parent, name)
    try:
        counts = state["counts"].numpy().astype(np.int64)
        tables = ContextTables(counts, sha)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise WeightsError(f"{name}: not SVR context tables ({exc})") from None
    if int(entry.get("k", tables.k)) != tables.k or int(entry.get("size", tables.size)) != tables.size:
        raise WeightsError(f"{name}: tables for K={tables.k}, size={tables.size}, weights have "
                           f"K={entry.get('k')}, size={entry.get('size')}")
    return tables


def index_maps(model, files) -> Iterable[np.ndarray]:
    """The (K, u, v) index maps the encoder sends for each image file (padded as encode pads)."""
    import torch
    import torch.nn.functional as F

    from pixarc.tensors import image_tensor
    from pixarc.training import load_rgb

    for path in files:
        x = image_tensor(load_rgb(path), "cpu")
        x = F.pad(x, (0, (-x.shape[-1]) % 8, 0, (-x.shape[-2]) % 8), mode="replicate")
        with torch.no_grad():
            idx, _, _ = model.quantise(model.encoder(x))
        yield idx[0].numpy()


def ship_tables(weights_path, model, data) -> dict:
    """Count the index maps ``model`` sends for every image under ``data`` (the training
    images), save the counts beside ``weights_path`` and record them in its ``weights.json``
    (the tables' own entry with sha256, and ``context_tables`` in the weights' entry).
    Returns the tables' entry."""
    from pathlib import Path

    import torch

    from pixarc.training import data_sha256
    from pixarc.trainingdata import training_images
    from pixarc.weights import file_sha256, update_entries

    weights_path, data = Path(weights_path), Path(data)
    files = training_images(data)
    counts = count(index_maps(model.cpu().eval(), files), model.k, model.size)
    name = tables_name(weights_path.name)
    torch.save({"counts": torch.from_numpy(counts.astype(np.int32))}, weights_path.parent / name)
    blob = (weights_path.parent / name).read_bytes()
    entry = {"arch": "svr-context", "kind": "entropy-tables", "for": weights_path.name, "sha256": file_sha256(blob), "bytes": len(blob),
             "data": data.name, "data_sha256": data_sha256(data, files), "images": len(files),
             "positions": int(counts[0].sum()), "prior_mass": PRIOR_MASS, "prior_scale": PRIOR_SCALE,
             "source": f"pixarc svr context-tables --data {data.name} (index-map counts of the shipped encoder)"}
    update_entries(weights_path.parent, {name: entry}, replace=True)
    update_entries(weights_path.parent, {weights_path.name: {"context_tables": name}})
    return entry
