"""Learned codecs: what every codec with trained weights shares, in one base class.

A learned codec ships its weights beside its module (``weights/`` with a ``weights.json``
manifest: sha256 and provenance per file) and may find more in directories named by an
environment variable. :class:`LearnedCodec` owns that part of the contract:

- discovery: every ``weights.json`` entry of the codec's architecture, the environment
  variable's directories first, then the shipped folder (:meth:`LearnedCodec.find_weights`);
- choice: the file an encode uses (:meth:`choose_weights`; entries marked
  ``"decode_only": true`` — weights replaced by better ones, kept so that archives made
  with them still decode — are never chosen for a new encode): per rate point for a codec
  that says so (``weights_per_rate``: each entry names the ``rate_param`` value it was
  trained for, and :meth:`rate_values` lists those), the first file otherwise;
  ``weights_for``/``has_weights`` answer from the manifest. A stored bitstream is decoded
  with the weights its container names (:meth:`decode_stored` pins them for the duration
  of the subclass's ``decode``), so shipping better weights never changes how an existing
  archive decodes;
- loading: sha256 first, then ``weights_only=True`` (:mod:`pixarc.weights`), once per
  (weights file, :class:`~pixarc.device.Device`), under a lock: the CPU copy from the file, a
  GPU copy from the CPU one (:meth:`model`); the subclass only builds the network
  (:meth:`build_model`);
- stepping aside: without weights, :meth:`unsupported_reason` says which weights are missing,
  where they were looked for, and the ``pixarc train ...`` command that makes them;
- devices: only :class:`~pixarc.device.Device` values are accepted (``device.torch`` is the
  name torch understands); torch is imported lazily, never by importing a plugin;
- declarations: ``prefers_gpu``, ``determinism = "integers"`` (pixels come out of float
  networks; the decoder's integers, :attr:`Decoded.fingerprint`, are what reproduces),
  ``restore_device = CPU``, batch and memory hints;
- batching: :meth:`encode_batch` sends same-size images to :meth:`encode_group` together,
  which a subclass overrides with real batched work (the default encodes one by one).

The core never imports a plugin: plugins subclass this (``from pixarc.learned import
LearnedCodec``).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from .codec import Codec
from .device import CPU, Device
from .errors import CodecError
from .images import SourceImage
from .payload import refusing
from .weights import WeightsError, load_weights, manifest_entries


# (codec, weights) while LearnedCodec.decode_stored runs: per thread and task, so parallel
# decodes with different weights do not see each other's choice.
_DECODING_WITH: contextvars.ContextVar[tuple["LearnedCodec", "WeightsFile"] | None] = \
    contextvars.ContextVar("pixarc_decoding_with", default=None)


@dataclass(frozen=True)
class WeightsFile:
    """One weights file this installation can load, described by its manifest entry."""

    path: Path
    sha256: str
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    origin: str = ""  # "shipped", the environment variable that named its directory, or another source


_ONE_THREAD = threading.RLock()


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch intra-op thread, then restore the caller's setting. One
    process-wide (re-entrant) lock keeps concurrent users from resetting each other's."""
    import torch

    with _ONE_THREAD:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


@contextlib.contextmanager
def same_everywhere(device: Device):
    """Run a CPU decode with one intra-op thread (:func:`one_thread`). Float kernels split
    their sums by thread count, so a reconstruction decoded with 1 and with 2 threads can
    differ by ±1 in a few sub-pixels; the recorded reconstruction hash (and PSNR) must
    reproduce on any machine restore runs on. What still differs between CPUs (instruction
    sets) and from GPU to CPU is in docs/guarantees.md."""
    if device.is_gpu:
        yield
        return
    with one_thread():
        yield


def torch_device(device: Device) -> str:
    """``device`` as torch names it; anything but a :class:`Device` is a caller's bug."""
    if not isinstance(device, Device):
        raise TypeError(f"a learned codec takes a pixarc.device.Device, not {device!r}")
    return device.torch


class LearnedCodec(Codec):
    """Base class of codecs with trained weights. A subclass sets ``weights_env``,
    ``weights_arch`` and ``train_command`` beside the usual :class:`Codec` attributes and
    implements :meth:`build_model`, ``encode`` and ``decode``.

    Class attributes (beyond :class:`Codec`'s):
        weights_env: environment variable naming extra weights directories
            (``os.pathsep``-separated), searched before the shipped ones.
        weights_arch: the ``arch`` of the manifest entries this codec reads (entries
            without one are taken too).
        weights_dir: the shipped weights directory; None: ``weights/`` beside the module
            that defines the class.
        train_command: the command that makes the weights, quoted when they are missing.
        weights_per_rate: one weights file per value of ``rate_param``, named in its entry
            (``"quality": 3``). Said, not guessed from the entries: a trainer's provenance
            may use a key that is also a codec's rate parameter (SVR's ``stages``).
    """

    weights_env: ClassVar[str] = ""
    weights_arch: ClassVar[str | None] = None
    weights_dir: ClassVar[Path | None] = None
    train_command: ClassVar[str] = ""
    weights_per_rate: ClassVar[bool] = False
    prefers_gpu = True
    determinism = "integers"
    restore_device = CPU
    batch_hint = 8
    memory_hint_mb = 1024
    requires: ClassVar[tuple[str, ...]] = ("torch",)  # modules the codec cannot run without

    def __init__(self) -> None:
        self.weights: list[WeightsFile] = self.find_weights()
        self._models: dict[tuple[str, Device], Any] = {}
        self._lock = threading.RLock()  # a GPU copy is made from the CPU model, under the same lock

    # ------------------------------------------------------------------ discovery

    @classmethod
    def shipped_weights(cls) -> Path:
        if cls.weights_dir is not None:
            return Path(cls.weights_dir)
        from .weights import shipped_weights_dir

        return shipped_weights_dir(sys.modules[cls.__module__].__file__)

    def find_weights(self) -> list[WeightsFile]:
        """Every usable weights file, in search order (the first match wins). Reads JSON
        only; a subclass may append other sources (e.g. a model zoo cache)."""
        shipped = self.shipped_weights()
        return [WeightsFile(path, entry["sha256"], entry, "shipped" if path.parent == shipped else self.weights_env)
                for path, entry in manifest_entries(self.weights_env, shipped, self.weights_arch)]

    @property
    def encoding_weights(self) -> list[WeightsFile]:
        """The weights a new encode may use: all but those kept for decoding only."""
        return [w for w in self.weights if not w.entry.get("decode_only")]

    def _per_rate(self) -> bool:
        """Whether each weights file serves one rate point (``weights_per_rate``)."""
        return self.weights_per_rate and self.rate_param is not None and bool(self.encoding_weights)

    def select_weights(self, params: Mapping[str, Any] | None = None) -> WeightsFile | None:
        """The weights for ``params``, None when not installed: inside :meth:`decode_stored`
        the weights the bitstream was made with, otherwise :meth:`choose_weights`."""
        pinned = _DECODING_WITH.get()
        if pinned is not None and pinned[0] is self:
            return pinned[1]
        return self.choose_weights(params)

    def choose_weights(self, params: Mapping[str, Any] | None = None) -> WeightsFile | None:
        """The weights a new encode with ``params`` uses, None when not installed: the first
        file trained for ``params[rate_param]`` when files are per rate point, else the
        first. A subclass with another rule overrides this (never :meth:`select_weights`,
        which keeps stored bitstreams on their own weights)."""
        usable = self.encoding_weights
        if not self._per_rate():
            return usable[0] if usable else None
        rp = self.rate_param
        if params is None or rp not in params:
            return None
        return next((w for w in usable if rp in w.entry and int(w.entry[rp]) == int(params[rp])), None)

    def require_weights(self, params: Mapping[str, Any] | None = None) -> WeightsFile:
        """:meth:`select_weights`, or a CodecError saying what is missing and how to make it."""
        found = self.select_weights(params)
        if found is None:
            raise CodecError(self.missing_weights(params))
        return found

    def missing_weights(self, params: Mapping[str, Any] | None = None) -> str:
        rp = self.rate_param
        point = f" for {rp}={params[rp]}" if self._per_rate() and params and rp in params else ""
        where = (f"${self.weights_env} or " if self.weights_env else "") + str(self.shipped_weights())
        have = f" (installed: {rp} {self.rate_values()})" if point else ""
        make = f"; make them with `{self.train_command}`" if self.train_command else ""
        arch = f"{self.weights_arch!r} " if self.weights_arch else ""
        return f"{self.codec_id}: no weights installed{point}{have}: looked for {arch}entries in " \
               f"weights.json under {where}{make}"

    # ------------------------------------------------------------------ the Codec contract

    def rate_values(self, params: Mapping[str, Any] | None = None) -> list[int]:
        """The rate points with weights when files are per rate point, else the whole range."""
        if self._per_rate():
            rp = self.rate_param
            return sorted({int(w.entry[rp]) for w in self.encoding_weights if rp in w.entry})
        return super().rate_values(params)

    def weights_for(self, params: Mapping[str, Any]) -> str:
        found = self.select_weights(params)
        return found.sha256 if found else ""  # '': an encode with these params would fail

    def has_weights(self, sha256: str) -> bool:
        return any(w.sha256 == sha256 for w in self.weights)

    def unsupported_reason(self, info):
        missing = self.missing_requirements()
        if missing:  # said before anything imports them (``version()`` would import torch)
            from .plugins import LEARNED_HINT

            return f"{self.codec_id}: needs {', '.join(missing)}, which is not installed ({LEARNED_HINT})"
        reason = super().unsupported_reason(info)
        if reason is None and not self.encoding_weights:
            reason = self.missing_weights()
        return reason

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """Which of :attr:`requires` are not installed (looked up, not imported)."""
        import importlib.util

        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    # ------------------------------------------------------------------ models

    def build_model(self, weights: WeightsFile, state: Any):
        """The network for ``weights`` from its loaded ``state`` (CPU, fp32; the base puts it in
        eval mode without gradients). Architecture numbers come from ``weights.entry``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model")

    def model(self, weights: WeightsFile, device: Device = CPU):
        """The network for ``weights`` on ``device``, built once per (file, device)."""
        key = (weights.sha256, device)
        torch_name = torch_device(device)
        with self._lock:
            if key not in self._models:
                if device.is_gpu:
                    import copy

                    self._models[key] = copy.deepcopy(self.model(weights, CPU)).to(torch_name)
                else:
                    try:
                        state = load_weights(weights.path, weights.sha256)
                    except WeightsError as exc:
                        raise CodecError(str(exc)) from None
                    self._models[key] = self.build_model(weights, state).eval().requires_grad_(False)
            return self._models[key]

    # ------------------------------------------------------------------ decoding

    def decode_stored(self, payload: bytes, device: Device, pins: Mapping[str, str]):
        """``decode`` with the weights ``pins`` names for this codec (decode-only ones
        included), not the ones a new encode would pick; on the CPU with one intra-op thread
        (:func:`same_everywhere`). Composite codecs get every component's pin through
        :meth:`decode_pinned`."""
        sha = pins.get(self.codec_id, "")
        weights = next((w for w in self.weights if w.sha256 == sha), None) if sha else None
        if sha and weights is None:
            raise CodecError(f"{self.codec_id}: bitstream needs weights {sha[:12]}..., not installed here")
        token = _DECODING_WITH.set((self, weights)) if weights is not None else None
        try:
            with same_everywhere(device):
                return self.decode_pinned(payload, device, pins)
        finally:
            if token is not None:
                _DECODING_WITH.reset(token)

    def decode_pinned(self, payload: bytes, device: Device, pins: Mapping[str, str]):
        """The decode of :meth:`decode_stored` (this codec's own weights already pinned): a
        codec built over other learned codecs overrides it to pass ``pins`` on to them."""
        return self.decode(payload, device)

    def refusing(self, what: str):
        """Any failure inside becomes ``CodecError("<codec>: <what> (<type>: <message>)")``
        (:func:`pixarc.payload.refusing`; payload heads: :class:`pixarc.payload.PayloadLayout`)."""
        return refusing(self.codec_id, what)

    # ------------------------------------------------------------------ batches

    def encode_batch(self, srcs: list[SourceImage], params: Mapping[str, Any], device: Device = CPU):
        """Same-size images are encoded together by :meth:`encode_group` (one tensor batch); a
        group that fails returns its exception for each member (the engine then encodes those
        one by one)."""
        torch_device(device)
        if len(srcs) < 2:
            return super().encode_batch(srcs, params, device)
        out: list = [None] * len(srcs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, src in enumerate(srcs):
            groups.setdefault(src.image.size, []).append(i)
        for members in groups.values():
            try:
                results = self.encode_group([srcs[i] for i in members], params, device)
            except Exception as exc:
                results = [exc] * len(members)
            for i, result in zip(members, results, strict=True):
                out[i] = result
        return out

    def encode_group(self, srcs: list[SourceImage], params: Mapping[str, Any], device: Device) -> list:
        """Payloads (or exceptions) for images of one size; override with batched work."""
        return Codec.encode_batch(self, srcs, params, device)
