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
        import fsspec  # here, not at import: plugins load this module for `pixarc --help`

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


def manifest_entries(env_var: str, default_dir: Path, arch: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(file, entry) for every weights.json entry in the directories named by ``env_var``
    (``os.pathsep``-separated, searched first) and ``default_dir`` (a plugin's shipped
    weights), optionally only those of one architecture."""
    dirs = [Path(d) for d in os.environ.get(env_var, "").split(os.pathsep) if d] + [Path(default_dir)]
    out = []
    for d in dirs:
        if (d / "weights.json").exists():
            for name, entry in read_manifest(d / "weights.json").items():
                if arch is None or entry.get("arch", arch) == arch:
                    out.append((d / name, entry))
    return out


def as_shipped(state: dict) -> dict:
    """A state dict as :func:`save_weights` stores it: floating tensors as fp16, unless they
    are entropy statistics (``counts``)."""
    return {k: (v.half() if v.is_floating_point() and "counts" not in k else v) for k, v in state.items()}


def save_weights(out_dir: str | os.PathLike, name: str, state: dict, entry: dict[str, Any]) -> dict[str, Any]:
    """Save a state dict (:func:`as_shipped`) and record it, with its sha256 and ``entry``'s
    provenance, in ``out_dir/weights.json``."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(as_shipped(state), out_dir / name)
    entry = {**entry, "sha256": file_sha256((out_dir / name).read_bytes())}
    update_entries(out_dir, {name: entry}, replace=True)
    return entry


def update_entries(out_dir: str | os.PathLike, changes: dict[str, dict[str, Any]], replace: bool = False) -> None:
    """Add ``changes``' fields to the named entries of ``out_dir/weights.json`` (``replace``:
    the entries become ``changes``' own)."""
    manifest = Path(out_dir) / "weights.json"
    doc = json.loads(manifest.read_text()) if manifest.exists() else {"files": {}}
    for name, fields in changes.items():
        doc["files"][name] = dict(fields) if replace else {**doc["files"][name], **fields}
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True))


def shipped_weights_dir(plugin_file: str | os.PathLike) -> Path:
    """Where the weights a plugin ships live: ``weights/`` beside the plugin's module in a
    checkout (where training writes them), else the plugin's folder of the
    ``pixarc-weights`` distribution (what ``pip install 'pixarc[learned]'`` brings; the core
    wheel carries no weights)."""
    here = Path(plugin_file).resolve().parent
    beside = here / "weights"
    if (beside / "weights.json").exists():
        return beside
    try:
        import pixarc_weights
    except ImportError:
        return beside  # none installed: the plugin says so (no weights; pip install 'pixarc[learned]')
    packaged = Path(pixarc_weights.__file__).resolve().parent / here.name
    return packaged if (packaged / "weights.json").exists() else beside
