"""``cnn``: a small learned domain classifier (CNN on a 128-px thumbnail + image statistics).

Trained by ``pixarc train classifier`` on ``train/whole``; weights come from
``PIXARC_CLASSIFIER_WEIGHTS`` (a directory with ``weights.json``) or this plugin's
``weights/`` directory, loaded by sha256 first and with ``weights_only=True``. Without
weights it reports itself unavailable and the policy's ``fallback_classifier`` (the
statistics classifier) is used, with a note in the manifest row.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from pixarc.classify import DOMAINS, Classification, Classifier, to_rgb8
from pixarc.hookspecs import hookimpl

ARCH = "domainnet"
SIDE = 128


def find_weights() -> tuple[Path, dict] | None:
    from pixarc.weights import manifest_entries

    found = manifest_entries("PIXARC_CLASSIFIER_WEIGHTS", Path(__file__).parent / "weights", ARCH)
    return found[0] if found else None


def build_model(width: int, n_features: int):
    import torch.nn as nn

    class DomainNet(nn.Module):
        """conv(s2) ×4 → global average → [· , statistics] → linear over the five domains."""

        def __init__(self):
            super().__init__()
            chans = [3, width, 2 * width, 4 * width, 4 * width]
            layers = []
            for a, b in zip(chans, chans[1:]):
                layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
            self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(4 * width + n_features, len(DOMAINS))

        def forward(self, x, feats):
            import torch

            return self.head(torch.cat([self.body(x), feats], dim=1))

    return DomainNet()


def inputs(image: Image.Image):
    """(thumbnail tensor 3×128×128 in [0, 1], statistics vector) for one canonical image."""
    import numpy as np
    import torch
    from pixarc_stats_classifier import features

    rgb = to_rgb8(image)
    thumb = rgb.resize((SIDE, SIDE), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(thumb, dtype=np.float32) / 255).permute(2, 0, 1)
    f = features(rgb)
    return x, torch.tensor([f[k] for k in sorted(f)], dtype=torch.float32)


class CNNClassifier(Classifier):
    classifier_id = "cnn"
    description = "small CNN + image statistics, trained on train/whole"

    def __init__(self):
        self._found = find_weights()
        self._model = None
        self._lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        return None if self._found else "no weights installed"

    def version(self) -> str:
        return self._found[1]["sha256"][:12] if self._found else "untrained"

    def _net(self):
        with self._lock:
            if self._model is None:
                from pixarc.weights import load_weights

                path, entry = self._found
                state = load_weights(path, entry["sha256"])
                model = build_model(int(entry["width"]), int(entry["n_features"]))
                model.load_state_dict(state)
                self._model = model.float().eval()
            return self._model

    def classify(self, image: Image.Image) -> Classification:
        import torch

        x, f = inputs(image)
        with torch.no_grad():
            probs = torch.softmax(self._net()(x[None], f[None]), dim=1)[0].tolist()
        scores = dict(zip(DOMAINS, probs))
        domain = max(scores, key=scores.get)
        return Classification(domain, scores[domain], self.classifier_id, scores)


@hookimpl
def register_classifiers(register):
    register(CNNClassifier)
