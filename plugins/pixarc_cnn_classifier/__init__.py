"""``cnn``: the learned domain classifier (image statistics + a small network, calibrated).

The input is a vector of cheap, scale-robust statistics (``features.py``: palette size and
coverage, flat-region share, gradient and Laplacian histograms, background/border,
saturation, edge orientation) computed on the image box-downscaled to at most 256 px, so
inference costs about 10 ms on one CPU core whatever the image size. A small ensemble of
MLPs maps it to the five domains; its logits are divided by a temperature fitted on
held-out training images, so the reported confidence is a calibrated probability (see
``benchmarks/classifier.py``'s reliability table).

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
from pixarc.weights import shipped_weights_dir

from .constants import ARCH, FORMAT
from .model import build_model

WEIGHTS_DIR = shipped_weights_dir(__file__)  # beside this module, or in the pixarc-weights distribution


def find_weights() -> tuple[Path, dict] | None:
    from pixarc.weights import manifest_entries

    found = [e for e in manifest_entries("PIXARC_CLASSIFIER_WEIGHTS", WEIGHTS_DIR, ARCH)
             if e[1].get("format") == FORMAT and not e[1].get("decode_only")]  # decode_only: superseded
    return found[0] if found else None


class NumpyNet:
    """The loaded model's forward pass in numpy: no torch threads or dispatch per image
    (torch ops this small cost more in overhead than in arithmetic, and contend for
    cores with the codecs)."""

    def __init__(self, model):
        import numpy as np

        def arr(t):
            return t.detach().float().numpy().astype(np.float32)

        self.mean, self.std, self.temperature = arr(model.mean), arr(model.std), float(model.temperature)
        self.layers = []
        for head in model.heads:
            linears = [m for m in (head if hasattr(head, "__iter__") else [head]) if hasattr(m, "weight")]
            self.layers.append([(arr(m.weight).T.copy(), arr(m.bias)) for m in linears])

    def probabilities(self, feats):
        import numpy as np

        x = (feats - self.mean) / self.std
        logits = 0.0
        for layers in self.layers:
            h = x
            for i, (w, b) in enumerate(layers):
                h = h @ w + b
                if i < len(layers) - 1:
                    h = np.maximum(h, 0)
            logits = logits + h
        z = logits / len(self.layers) / self.temperature
        e = np.exp(z - z.max())
        return e / e.sum()


class CNNClassifier(Classifier):
    classifier_id = "cnn"
    description = "image statistics + small MLP ensemble, temperature-calibrated, trained on train/whole"

    def __init__(self):
        self._found = find_weights()
        self._model = None
        self._lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        import importlib.util

        from pixarc.plugins import LEARNED_HINT

        if importlib.util.find_spec("torch") is None:  # weights load through torch: fall back to stats
            return f"needs torch, which is not installed ({LEARNED_HINT})"
        return None if self._found else "no weights installed"

    def version(self) -> str:
        return self._found[1]["sha256"][:12] if self._found else "untrained"

    def _net(self):
        with self._lock:
            if self._model is None:
                from pixarc.weights import WeightsError, load_weights

                from .features import N_FEATURES

                path, entry = self._found
                if int(entry["n_features"]) != N_FEATURES:
                    raise WeightsError(f"{path} expects {entry['n_features']} statistics, this plugin computes {N_FEATURES}")
                state = load_weights(path, entry["sha256"])
                model = build_model(N_FEATURES, int(entry["hidden"]), int(entry["members"]))
                model.load_state_dict(state)
                self._model = NumpyNet(model.float().eval())
            return self._model

    def classify(self, image: Image.Image) -> Classification:
        from .features import features, shrink

        probs = self._net().probabilities(features(to_rgb8(shrink(image))))
        scores = dict(zip(DOMAINS, map(float, probs)))
        domain = max(scores, key=scores.get)
        return Classification(domain, scores[domain], self.classifier_id, scores)


@hookimpl
def register_classifiers(register):
    register(CNNClassifier)


@hookimpl
def register_commands(register):
    from .commands import train_classifier  # click and the shared options only; the trainer loads when it runs

    register(train_classifier, group="train")
