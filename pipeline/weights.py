"""Model weights: the only way pixarc loads them. sha256 first, then ``weights_only=True``.

A weights manifest (``weights.json`` beside the files a plugin ships) lists each file::

    {"files": {"mbt2018-mean-q3.pt": {"sha256": "...", "bytes": 123, "source": "pixarc train ...", "license": "..."}}}

``load_weights`` refuses a file whose sha256 differs from what the caller expects, and
never unpickles arbitrary objects (torch's ``weights_only`` loader). A user-supplied
checkpoint (a CompressAI zoo file in the torch hub cache, or any fsspec path/URL) is
loaded the same way, with the hash the user or the zoo names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import fsspec

from .errors import PixarcError


class WeightsError(PixarcError):
    reason = "weights_error"


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    with open(path) as f:
        doc = json.load(f)
    files = doc.get("files")
    if not isinstance(files, dict):
        raise WeightsError(f"{path}: weights manifest needs a 'files' object")
    return files


def load_weights(uri: str | os.PathLike, sha256: str, map_location: str = "cpu") -> Any:
    """Read ``uri`` (path or fsspec URL), check its sha256, load with ``weights_only=True``."""
    import torch

    if not sha256 or len(sha256) != 64:
        raise WeightsError(f"refusing to load {uri} without a sha256 to check it against")
    try:
        with fsspec.open(str(uri), "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights {uri}: {exc}") from None
    actual = file_sha256(data)
    if actual != sha256:
        raise WeightsError(f"weights {uri} have sha256 {actual[:16]}..., expected {sha256[:16]}... (tampered or wrong file)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # an unpickling refusal or a corrupt archive
        raise WeightsError(f"weights {uri} could not be loaded safely: {exc}") from None


def load_from_manifest(directory: str | os.PathLike, name: str, map_location: str = "cpu") -> tuple[Any, str]:
    """Load a shipped file named in ``directory/weights.json``; returns (object, sha256)."""
    directory = Path(directory)
    entry = read_manifest(directory / "weights.json").get(name)
    if entry is None:
        raise WeightsError(f"{name} is not listed in {directory / 'weights.json'}")
    return load_weights(directory / name, entry["sha256"], map_location), entry["sha256"]


def hub_checkpoint(filename: str) -> Path:
    """Where torch hub keeps a downloaded checkpoint (CompressAI's zoo uses this cache)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / filename
