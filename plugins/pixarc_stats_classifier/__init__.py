"""``stats``: a domain classifier from cheap image statistics (no weights, ~ms per image).

Rules written from what the domains are, not fitted to data: photographs have many
colours and little pure white; line drawings are grey ink on white; vector art is a few
flat colours; screenshots are flat greys with axis-aligned edges; comics are painted
figures (many colours) on a flat background. Each domain gets a score in [0, 1]; the
confidence is the winner's share of the score mass. It stays as the fallback once a
learned classifier exists.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pixarc.classify import DOMAINS, Classification, Classifier, to_rgb8
from pixarc.hookspecs import hookimpl

_SIDE = 256


def features(image: Image.Image) -> dict[str, float]:
    """Statistics the rules use; NEAREST resampling keeps flat colours flat."""
    rgb = to_rgb8(image)
    if max(rgb.size) > _SIDE:
        scale = _SIDE / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.NEAREST)
    a = np.asarray(rgb, dtype=np.int32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]  # per-plane ops: reductions over a 3-axis are slow
    n = r.size
    keys = ((r << 16) | (g << 8) | b).ravel()
    _, counts = np.unique(keys, return_counts=True)
    counts = np.sort(counts)[::-1]
    hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    spread = hi - lo
    grey = (r + g + b) / 3.0
    gx = np.abs(np.diff(grey, axis=1))
    gy = np.abs(np.diff(grey, axis=0))
    strong_x, strong_y = gx > 48, gy > 48
    edges = (strong_x.sum() + strong_y.sum()) / max(1, gx.size + gy.size)
    # edge pixels whose neighbour along the edge is also an edge: long straight UI lines
    straight = 0.0
    if strong_x.any() or strong_y.any():
        run_x = (strong_x[1:, :] & strong_x[:-1, :]).sum()
        run_y = (strong_y[:, 1:] & strong_y[:, :-1]).sum()
        straight = (run_x + run_y) / max(1, strong_x.sum() + strong_y.sum())
    return {
        "unique": len(counts) / n,
        "top1": counts[0] / n,
        "top8": counts[:8].sum() / n,
        "gray": float((spread < 12).mean()),
        "white": float((lo > 235).mean()),
        "sat": float(spread.mean() / 255),
        "edges": float(edges),
        "straight": float(straight),
        "smooth": float(((gx > 0) & (gx < 8)).mean()),
    }


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def scores(f: dict[str, float]) -> dict[str, float]:
    flatness = f["top8"]
    return {
        "natural": _clip((1 - flatness) * (1 - f["white"]) * (0.5 + f["smooth"])),
        "line": _clip(f["gray"] * f["white"] * (1.2 if f["top8"] > 0.8 else 0.6)),
        "vector": _clip(flatness * (1 - f["gray"] * 0.7) * (0.5 + f["sat"]) * (1.0 - f["straight"] * 0.5)),
        "screenshot": _clip(flatness * f["gray"] * (0.4 + f["straight"]) * (1 - f["white"] * 0.5)),
        "comic": _clip((1 - flatness) * (0.3 + f["white"]) * (0.5 + f["sat"]) * (1.5 if f["top1"] > 0.2 else 0.7)),
    }


class StatsClassifier(Classifier):
    classifier_id = "stats"
    description = "image statistics + hand-written rules (no weights)"

    def classify(self, image: Image.Image) -> Classification:
        s = scores(features(image))
        total = sum(s.values())
        if total <= 0:
            return Classification("natural", 0.0, self.classifier_id, s)
        domain = max(DOMAINS, key=lambda d: s[d])
        return Classification(domain, s[domain] / total, self.classifier_id, s)


@hookimpl
def register_classifiers(register):
    register(StatsClassifier)
