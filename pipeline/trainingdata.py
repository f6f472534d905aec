"""What a pixarc trainer trains on: the training images and their fingerprint, seeding,
random crops, the dev set, centre crops, and safe checkpoint writes. The run itself is
:mod:`pixarc.training`, which re-exports these names (the trainers' one import).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Callable, Sequence

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


def load_rgb(path: Path):
    """An image file as an H×W×3 uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def seeded(seed: int, step: int) -> random.Random:
    """Seed Python's, numpy's and torch's generators from ``seed`` and the cumulative step
    a run starts at, and return the generator its batches are drawn from: a run
    reproduces, and a continued run draws new batches."""
    import numpy as np
    import torch

    random.seed(seed + step)
    np.random.seed((seed + step) % 2**32)
    torch.manual_seed(seed + step)
    return random.Random(seed * 1_000_003 + step)


def random_crops(pool: Sequence, count: int, patch: int, rng: random.Random, *, multiple: int = 1,
                 flip: bool = True, augment: Callable | None = None) -> tuple:
    """``count`` random crops of at most ``patch`` pixels a side (a multiple of ``multiple``
    where the image allows), randomly mirrored, as uint8 arrays (count, H, W, C) cut to the
    smallest crop. An item of ``pool`` is an H×W×C array or a tuple of them (e.g. an
    original and its decode, cropped alike) with other values (passed through as lists);
    ``augment(arrays, rng)`` may change a crop's arrays. Returns one stack per array of an
    item and one list per other value; a single stack for plain arrays."""
    import numpy as np

    def cut(side: int) -> int:
        return min(patch, side // multiple * multiple or side)

    drawn = []
    for _ in range(count):
        item = pool[rng.randrange(len(pool))]
        item = item if isinstance(item, tuple) else (item,)
        arrays = [v for v in item if isinstance(v, np.ndarray)]
        h, w = arrays[0].shape[:2]
        ph, pw = cut(h), cut(w)
        y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
        crops = [a[y : y + ph, x : x + pw] for a in arrays]
        if flip and rng.random() < 0.5:
            crops = [c[:, ::-1] for c in crops]
        if augment is not None:
            crops = augment(crops, rng)
        it = iter(crops)
        drawn.append(tuple(next(it) if isinstance(v, np.ndarray) else v for v in item))
    side_h = min(d[0].shape[0] for d in drawn)
    side_w = min(d[0].shape[1] for d in drawn)
    side_h, side_w = side_h // multiple * multiple or side_h, side_w // multiple * multiple or side_w
    out = tuple(np.stack([np.ascontiguousarray(d[i][:side_h, :side_w]) for d in drawn])
                if isinstance(drawn[0][i], np.ndarray) else [d[i] for d in drawn] for i in range(len(drawn[0])))
    return out if len(out) > 1 else out[0]


def dev_images(dev: Path, per_domain: int = 2) -> list[Path]:
    """A small fixed model-selection set: the first ``per_domain`` images (sorted) of each
    sub-folder of ``dev`` (one per domain), or of ``dev`` itself when it has none."""
    dev = Path(dev)
    folders = sorted(p for p in dev.iterdir() if p.is_dir()) or [dev]
    return [f for d in folders for f in training_images(d)[:per_domain]]


def centre_crop(a, side: int, multiple: int = 1):
    """The centre ``side``×``side`` of an H×W×C array (smaller images: whole), each side
    cut down to a multiple of ``multiple``."""
    h, w = a.shape[:2]
    ch, cw = min(side, h) // multiple * multiple or h, min(side, w) // multiple * multiple or w
    y, x = (h - ch) // 2, (w - cw) // 2
    return a[y : y + ch, x : x + cw]


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a checkpoint is whole or absent."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
