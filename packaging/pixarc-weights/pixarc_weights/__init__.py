"""Trained weights of pixarc's learned plugins: ``<plugin module>/weights.json`` and the
files it names (see pixarc.weights.shipped_weights_dir)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
