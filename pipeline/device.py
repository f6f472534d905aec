"""Devices as values: what a codec runs on, resolved once and carried typed.

A job asks for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; :func:`resolve` turns that into a
:class:`Device` once per shard and codec (codecs that use no accelerator always get the
CPU), and that value travels to the codec, into the manifest row (what actually ran) and
into the decode check. Restore, verify and recompress take the same ``--device``.

Finding out whether a GPU exists must not import torch on machines that have none
(importing it costs seconds), so :func:`gpu_count` looks for the device files first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .codec import Codec

REQUESTS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Device:
    """A concrete device: ``cpu``, or ``cuda`` with an optional index."""

    kind: str = "cpu"
    index: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch(self) -> str:
        """The name torch understands (``cpu``, ``cuda``, ``cuda:1``)."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    def __str__(self) -> str:  # what the manifest's ``device`` column records
        return self.torch

    @classmethod
    def parse(cls, text: "str | Device") -> "Device":
        """``cpu``, ``cuda`` or ``cuda:N`` as a value (``auto`` is a request, see :func:`resolve`)."""
        if isinstance(text, Device):
            return text
        kind, _, index = str(text).strip().lower().partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
            raise InputError("usage", f"device {text!r} is not one of auto, cpu, cuda, cuda:N")
        return cls(kind, int(index) if index else None)


CPU = Device("cpu")


def check_request(text: str) -> str:
    """A ``--device`` value checked early (before any work): ``auto`` or a device name."""
    if str(text).strip().lower() != "auto":
        Device.parse(text)
    return str(text).strip().lower()


@functools.lru_cache(maxsize=None)
def gpu_count() -> int:
    """CUDA devices visible to this process (0 without torch or without a GPU)."""
    if _no_gpu_device_files():  # importing torch only to learn "none" costs seconds at start
        return 0
    try:
        import torch
    except ImportError:  # pragma: no cover
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _no_gpu_device_files() -> bool:
    """On Linux an NVIDIA GPU shows up as /dev/nvidiaN (ROCm: /dev/kfd; WSL2: /dev/dxg);
    without one torch would report no CUDA device either."""
    import glob
    import os
    import sys

    return sys.platform.startswith("linux") and not (
        glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"))


def uses_accelerator(codec: "Codec") -> bool:
    return bool(codec.prefers_gpu or codec.needs_gpu)


def resolve(codec: "Codec", requested: "str | Device") -> Device:
    """The device ``codec`` runs on for a job that asked for ``requested``: the CPU for codecs
    that use no accelerator; ``auto`` is a GPU when this process has one (looked up only
    when such a codec is about to run)."""
    if not uses_accelerator(codec):
        return CPU
    if isinstance(requested, Device):
        return requested
    if str(requested).lower() == "auto":
        return Device("cuda") if gpu_count() else CPU
    return Device.parse(requested)


def unavailable_reason(codec: "Codec", requested: "str | Device") -> str | None:
    """Why ``codec`` cannot run for this request (it needs a GPU and there is none), or None."""
    if codec.needs_gpu and not resolve(codec, requested).is_gpu:
        return f"{codec.codec_id} needs a GPU and this worker has none"
    return None


def may_use_gpu(requested: "str | Device", codecs: "list[Codec] | list[type[Codec]]") -> bool:
    """Whether a job with this request can put work on a GPU (and must hold a GPU slot)."""
    if isinstance(requested, Device):
        return requested.is_gpu
    if str(requested).lower() == "cpu":
        return False
    return any(uses_accelerator(c) for c in codecs) and (str(requested).lower() != "auto" or gpu_count() > 0)
