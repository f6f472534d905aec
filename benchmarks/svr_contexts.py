"""Which context for SVR's index maps? Each candidate's tables counted on the training crops,
its cost measured on dev (how context.py's design was chosen).

    .venv/bin/python benchmarks/svr_contexts.py [--train ../shared/data/train/crops] [--dev ../shared/data/dev]

The index maps are the shipped encoder's. For each design: the number of table cells it
would ship (stages × contexts × 64) and, per dev domain, the ideal code length of the
maps (−log2 of each index's 16-bit table probability, the tables built as context.py
builds them: counts · PRIOR_SCALE + the stage's marginal at PRIOR_MASS pseudo-counts) as a
change against the context-free tables (one per stage). rANS adds a few bytes per image.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixarc.trainingdata import training_images

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Design:
    name: str
    contexts: int  # per stage

    def ids(self, z: np.ndarray, s: int, size: int) -> np.ndarray:
        """The context of each index of stage ``s`` of the maps ``z`` (K, u, v)."""
        zs = z[s].astype(np.int64)
        left = np.full_like(zs, size)
        left[:, 1:] = zs[:, :-1]
        up = np.full_like(zs, size)
        up[1:] = zs[:-1]
        prev = z[s - 1].astype(np.int64) if s else np.zeros_like(zs)
        prev_eq = np.zeros_like(zs)
        if s:
            prev_eq[:, 1:] = prev[:, 1:] == prev[:, :-1]
        up_eq = np.zeros_like(zs)
        up_eq[1:, 1:] = zs[:-1, 1:] == zs[1:, :-1]
        return {"free": np.zeros_like(zs), "previous stage": prev, "left": left, "up": up,
                "left + previous stage": left * size + prev,
                "left + previous-stage flag": left * 2 + prev_eq,
                "left + two flags (shipped)": left * 4 + prev_eq * 2 + up_eq}[self.name]


def designs(size: int) -> list[Design]:
    n = size + 1
    return [Design("free", 1), Design("previous stage", size), Design("left", n), Design("up", n),
            Design("left + previous stage", n * size), Design("left + previous-stage flag", 2 * n),
            Design("left + two flags (shipped)", 4 * n)]


def code_lengths(design: Design, train: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Per stage, −log2 P(symbol | context) as context.py's table construction gives it."""
    from pixarc.entropy import cdf_from_counts
    from pixarc_svr.context import PRIOR_MASS, PRIOR_SCALE

    out = []
    for s in range(train[0].shape[0]):
        counts = np.zeros((design.contexts, size), np.int64)
        for z in train:
            np.add.at(counts, (design.ids(z, s, size).ravel(), z[s].astype(np.int64).ravel()), 1)
        marginal = counts.sum(0)
        prior = [max(1, PRIOR_MASS * PRIOR_SCALE * int(m) // max(1, int(marginal.sum()))) for m in marginal]
        bits = np.zeros((design.contexts, size))
        for c, row in enumerate(counts):
            cdf = np.array(cdf_from_counts([int(x) * PRIOR_SCALE + p for x, p in zip(row, prior)]))
            bits[c] = -np.log2(np.diff(cdf)[:size] / 65536)
        out.append(bits)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default=str(ROOT.parent / "shared" / "data" / "train" / "crops"))
    ap.add_argument("--dev", default=str(ROOT.parent / "shared" / "data" / "dev"))
    args = ap.parse_args()
    from pixarc_svr import SVRCodec
    from pixarc_svr.context import index_maps

    model = SVRCodec()._model()
    train = list(index_maps(model, training_images(Path(args.train))))
    dev = {p: z for p, z in zip(sorted(Path(args.dev).glob("*/*")), index_maps(model, sorted(Path(args.dev).glob("*/*"))))}
    domains = sorted({p.parent.name for p in dev})
    base = None
    print(f"{'design':28s} {'cells':>8s}  " + "  ".join(f"{d:>16s}" for d in domains))
    for design in designs(model.size):
        bits = code_lengths(design, train, model.size)
        per = {d: 0.0 for d in domains}
        for p, z in dev.items():
            per[p.parent.name] += sum(bits[s][design.ids(z, s, model.size).ravel(), z[s].astype(np.int64).ravel()].sum()
                                      for s in range(z.shape[0]))
        base = base or per
        cells = design.contexts * model.size * model.k
        print(f"{design.name:28s} {cells:8d}  " + "  ".join(
            f"{per[d] / 8000:7.1f} kB {per[d] / base[d] - 1:+5.0%}" for d in domains), flush=True)


if __name__ == "__main__":
    main()
