"""Devices as values: what a codec runs on, resolved once and carried typed.

A job asks for ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked where it enters: the CLI,
the flows, a job's record, :func:`check_request`); each shard turns that into a
:class:`DeviceMap` once (codec id -> :class:`Device`; codecs that use no accelerator always
get the CPU), and only :class:`Device` values travel on: to the codec, into the manifest
row (what actually ran) and into the decode check. Restore, verify and recompress take the
same ``--device``.

Finding out whether a GPU exists must not import torch on machines that have none
(importing it costs seconds), so :func:`gpu_count` looks for the device files first.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

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
    def parse(cls, text: str) -> "Device":
        """``cpu``, ``cuda`` or ``cuda:N`` as a value (``auto`` is a request, see :func:`resolve`)."""
        kind, _, index = str(text).strip().lower().partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
            raise InputError("usage", f"device {text!r} is not one of auto, cpu, cuda, cuda:N")
        return cls(kind, int(index) if index else None)


CPU = Device("cpu")


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count): the
    threads a codec's own pool may use on one image, as libaom does for AVIF by default.
    A codec's output must not depend on it."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def check_request(text: str) -> str:
    """A ``--device`` request checked at a public boundary (before any work): ``auto`` or a
    device name, lower-cased; anything else is a usage error."""
    if not isinstance(text, str):
        raise TypeError(f"a device request is a string (auto, cpu, cuda, cuda:N), not {text!r}")
    request = text.strip().lower()
    if request != "auto":
        Device.parse(text)
    return request


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
    import sys

    return sys.platform.startswith("linux") and not (
        glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"))


def uses_accelerator(codec: "Codec | type[Codec]") -> bool:
    return bool(codec.prefers_gpu or codec.needs_gpu)


def resolve(codec: "Codec | type[Codec]", request: str) -> Device:
    """The device ``codec`` runs on for a job that asked for ``request`` (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``): the CPU for codecs that use no accelerator; ``auto`` is a GPU when
    this process has one (looked up only when such a codec is asked about)."""
    if not uses_accelerator(codec):
        return CPU
    if request == "auto":
        return Device("cuda") if gpu_count() else CPU
    return Device.parse(request)


def unavailable_reason(codec: "Codec", device: Device) -> str | None:
    """Why ``codec`` cannot run on ``device`` (it needs a GPU and got none), or None."""
    if codec.needs_gpu and not device.is_gpu:
        return f"{codec.codec_id} needs a GPU and this worker has none"
    return None


@dataclass(frozen=True)
class DeviceMap:
    """Where each codec of a shard runs: codec id -> :class:`Device`, resolved once per shard
    from the job's request (:meth:`resolve`). Codecs it does not name run on the CPU."""

    request: str = "cpu"
    devices: Mapping[str, Device] = field(default_factory=dict)

    @classmethod
    def resolve(cls, request: str, codecs: "Mapping[str, type[Codec]]") -> "DeviceMap":
        """The map for ``request`` over ``codecs`` (a registry's codec classes)."""
        request = check_request(request)
        return cls(request, {cid: resolve(codec, request) for cid, codec in codecs.items()})

    def __getitem__(self, codec_id: str) -> Device:
        return self.devices.get(codec_id, CPU)

    @property
    def uses_gpu(self) -> bool:
        """Whether any codec runs on a GPU (a shard then batches its GPU encodes and, on
        Prefect, holds a GPU slot)."""
        return any(d.is_gpu for d in self.devices.values())


ON_CPU = DeviceMap()  # every codec on the CPU (restore's device for every bitstream)


def device_map(value: DeviceMap) -> DeviceMap:
    """``value`` if it is a :class:`DeviceMap`; a clear error for anything else (a ``"cpu"``
    string is parsed at the public boundaries, the jobs' records, never deeper)."""
    if not isinstance(value, DeviceMap):
        raise TypeError(f"expected a pixarc.device.DeviceMap (DeviceMap.resolve(request, registry.codecs)), "
                        f"not {value!r}")
    return value
