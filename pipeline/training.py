"""What every pixarc trainer shares: the training set, its fingerprint, safe checkpoints.

The learned plugins (``pixarc train lossy|callic|svr|enhance``) each own their model and
loop; these three pieces are the same for all of them, so a weights manifest from any
trainer names its data the same way and a killed run never leaves a torn checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def training_images(data: Path) -> list[Path]:
    """Every image under ``data``, sorted (so a seed reproduces a run); stops when there is none."""
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no training images under {data}")
    return files


def data_sha256(root: Path, files: list[Path]) -> str:
    """One hash for a training set: relative names and contents, in sorted order."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(Path(p).relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a checkpoint is whole or absent."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
