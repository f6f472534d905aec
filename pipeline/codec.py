"""The codec contract every codec plugin implements.

A codec turns a :class:`~pixarc.images.SourceImage` into a payload (bytes) and back.
The container (``container.py``) wraps that payload with identity, geometry and fixity,
so a codec only deals with its own bits.

Subclass :class:`Codec`, set the class attributes, implement :meth:`Codec.encode` and
:meth:`Codec.decode`, and register the class from the ``register_codecs`` hook. Devices
arrive as :class:`~pixarc.device.Device` values, never strings. A codec built on other
codecs declares them in :attr:`Codec.components` and receives them in its constructor.
"""

from __future__ import annotations

import json
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from PIL import Image

from .device import CPU, Device
from .errors import CodecError
from .images import DEFAULT_MAX_PIXELS, ImageInfo, SourceImage

DETERMINISM = ("pixels", "integers")


@dataclass(frozen=True)
class Param:
    """One entry of a codec's parameter schema.

    ``many``: the value is a non-empty list of ``type`` elements (a TOML or JSON list),
    each converted and range-checked on its own and stored as a tuple, so params stay
    hashable and JSON-able. One bare element counts as a list of one; a string is refused
    for non-string elements (no comma-separated lists to parse).
    """

    type: type
    default: Any
    min: float | None = None
    max: float | None = None
    help: str = ""
    many: bool = False

    def check(self, codec_id: str, name: str, value: Any) -> Any:
        """``value`` converted to the declared type and range-checked; CodecError otherwise."""
        if not self.many:
            return self._element(codec_id, name, value)
        items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not items:
            raise CodecError(f"{codec_id}: {name} needs at least one value")
        for v in items:  # typed elements only: "0.5,1" or ["0.5"] would need parsing
            if isinstance(v, (list, tuple, dict)) or (isinstance(v, str) and self.type is not str):
                raise CodecError(f"{codec_id}: {name}={value!r}: give a list of {self.type.__name__}")
        return tuple(self._element(codec_id, name, v) for v in items)

    def _element(self, codec_id: str, name: str, value: Any) -> Any:
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise CodecError(f"{codec_id}: {name}={value!r} is not {self.type.__name__}") from None
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise CodecError(f"{codec_id}: {name}={value} outside [{self.min}, {self.max}]")
        return value


@dataclass(frozen=True)
class Decoded:
    """What a codec's ``decode`` returns: canonical pixels, or the exact original bytes.

    ``fingerprint``: for codecs whose pixels come out of float networks, a hash of the
    integers the decoder reconstructed (latents, increments). It is device-independent,
    so the archive checks it instead of the pixel hash, which may differ in the last bit
    between a GPU and a CPU.
    """

    image: Image.Image | None = None
    original: bytes | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class RateProxy:
    """A much cheaper encode of the same image whose PSNR over the rate parameter runs
    parallel to a codec's (:meth:`Codec.rate_proxies`): ``codec`` with ``params`` (its rate
    parameter set by the search to the same values), the PSNR offset between the two
    drifting by less than ``margin_db`` from one rate value to the next.

    ``gap_estimate(src, params, device)``: optional, for this image, a cheap estimate of the
    dB the codec with ``params`` (rate parameter set) lies above this tier (a post-filter's
    gain measured on a few sampled blocks); NaN when it cannot tell. A rate search places
    the codec's first probe with it instead of with other images' gaps; how far it runs
    from the gaps then measured is learned like the gaps themselves."""

    codec: "Codec"
    params: Mapping[str, Any]
    margin_db: float
    gap_estimate: Callable[[SourceImage, Mapping[str, Any], Device], float] | None = None


class Codec(ABC):
    """Base class of codec plugins.

    Class attributes:
        codec_id: stable identifier written into every container; never reuse one.
        format_version: bump when the payload layout changes; decoders refuse versions
            they do not know.
        lossless: whether decode restores the canonical pixels bit for bit.
        modes: canonical modes the codec accepts.
        params_schema: parameter name -> :class:`Param`.
        needs_gpu / prefers_gpu: scheduling hints for the flows.
        max_side: largest width or height the codec can encode (None: unlimited).
        rate_param: the integer parameter whose increase spends more bits (``quality``,
            ``m``...); policies with ``target_psnr``/``target_bpp`` search it.
        restore_device: the device restore decodes on. Every bitstream is decode-checked
            there before its row says done, whatever device encoded it.
        determinism: ``pixels``: a decode reproduces the same pixels on every device;
            ``integers``: only the integers the decoder reconstructs (its
            :attr:`Decoded.fingerprint`) are reproduced exactly, pixels from float networks
            may differ in the last bit between devices, so the check compares fingerprints.
        batch_hint / memory_hint_mb: images per :meth:`encode_batch` call that suit the
            codec, and its peak memory per megapixel, for schedulers and ``--batch-size``.
        screened: :meth:`psnr_ceiling` gives a cheap bound; RD selection then tries the
            codec after the route's other candidates and skips it when the bound shows it
            cannot beat what they already reached.
        components: the codecs this one is built on (a composite, e.g. a filter over a base
            codec), as constructor keyword -> codec id. The registry that makes an instance
            makes each component first, from itself (so an allowlist decides both), and
            passes it under that keyword: ``cls(base=registry.codec("avif"))``, or ``None``
            when no plugin here provides it (say so in :meth:`unsupported_reason`). Codecs
            without components are made as ``cls()``. A codec never looks a registry up.
    """

    codec_id: ClassVar[str]
    format_version: ClassVar[int] = 1
    lossless: ClassVar[bool]
    modes: ClassVar[frozenset[str]] = frozenset({"L", "LA", "RGB", "RGBA"})
    params_schema: ClassVar[Mapping[str, Param]] = {}
    needs_gpu: ClassVar[bool] = False
    prefers_gpu: ClassVar[bool] = False
    max_side: ClassVar[int | None] = None
    description: ClassVar[str] = ""
    rate_param: ClassVar[str | None] = None  # integer parameter that raises the rate (for targets)
    restore_device: ClassVar[Device] = CPU
    determinism: ClassVar[str] = "pixels"
    batch_hint: ClassVar[int] = 1
    memory_hint_mb: ClassVar[int] = 0
    screened: ClassVar[bool] = False
    components: ClassVar[Mapping[str, str]] = {}

    def rate_values(self, params: Mapping[str, Any] | None = None) -> list[int]:
        """The values of ``rate_param`` a ``target_psnr``/``target_bpp`` search may probe, in
        increasing rate: its whole range by default; a learned codec lists the rate points
        it has weights for; a codec whose neighbouring values often make the same bitstream
        (AVIF) lists one value per distinct encode. ``params``: the other parameters the
        search holds fixed (None: the defaults), where they decide which values differ."""
        spec = self.params_schema[self.rate_param]
        return list(range(int(spec.min), int(spec.max) + 1))

    def psnr_ceiling(self, src: SourceImage, params: Mapping[str, Any], device: Device = CPU,
                     below: float | None = None) -> float | None:
        """An optimistic bound on the PSNR (dB) any encode of ``src`` with ``params`` reaches,
        at any value of ``rate_param``, for far less work than one encode (None: no bound).
        ``below``: the PSNR goal the bound will be compared with; a codec may answer with a
        looser, cheaper bound when that already lies below it. Codecs that implement it set
        :attr:`screened`; a bound that is not really an upper bound costs the archive a
        candidate that might have won."""
        return None

    def reproduces(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(codec id, parameters) of another codec every encode of which this codec, with
        ``params``, can also make to within a few header bytes (a composite that may code
        its base alone); None for most codecs. RD selection then searches only this one when
        a route lists both with those parameters: the other's search would be repeated
        inside this one's."""
        return None

    def rate_proxies(self, params: Mapping[str, Any]) -> tuple[RateProxy, ...]:
        """Cheaper encodes whose PSNR runs parallel to this codec's with ``params`` over the
        rate values, cheapest first (the same encoder at its fastest setting; the base a
        filter improves): a ``target_psnr`` search locates the target on them and probes
        this codec itself only around it (:mod:`pixarc.ratesearch`, "Tiers"). () for most."""
        return ()

    def bytes_floor(self, src: SourceImage, params: Mapping[str, Any], psnr_goal: float,
                    device: Device = CPU) -> int | None:
        """An optimistic bound on the bytes of any encode of ``src`` with ``params`` that
        reaches ``psnr_goal`` dB, for far less work than one encode (None: no bound). RD
        selection skips a screened codec whose floor is not below the bytes another
        candidate already reached the goal with. Same caveat as :meth:`psnr_ceiling`."""
        return None

    def weights_for(self, params: Mapping[str, Any]) -> str:
        """sha256 of the weights an encode with ``params`` uses ('' for codecs without weights).

        Learned codecs usually have one weights file per rate point, so this depends on the
        parameters. It is written into the container header and the manifest.
        """
        return ""

    def has_weights(self, sha256: str) -> bool:
        """Whether this installation can decode a bitstream made with weights ``sha256``."""
        return sha256 == ""

    def version(self) -> str:
        """Version of the implementation producing the bits (library versions)."""
        return "1"

    def unsupported_reason(self, info: ImageInfo) -> str | None:
        """Why this codec cannot take an image with ``info``, or None if it can."""
        if not info.pixel_faithful:
            return "image has no faithful canonical pixels"
        if info.mode not in self.modes:
            return f"mode {info.mode} not supported by {self.codec_id}"
        if self.max_side is not None and max(info.width, info.height) > self.max_side:
            return f"{info.width}x{info.height} exceeds {self.codec_id}'s limit of {self.max_side} px"
        return None

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in, unknown names and out-of-range values refused."""
        params = dict(params or {})
        unknown = set(params) - set(self.params_schema)
        if unknown:
            raise CodecError(f"{self.codec_id}: unknown parameter(s) {sorted(unknown)}")
        out: dict[str, Any] = {}
        for name, spec in self.params_schema.items():
            out[name] = spec.check(self.codec_id, name, params.get(name, spec.default))
        return out

    @abstractmethod
    def encode(self, src: SourceImage, params: Mapping[str, Any], device: Device = CPU) -> bytes:
        """Encode ``src`` (already checked with :meth:`unsupported_reason`) into a payload."""

    def encode_batch(
        self, srcs: list[SourceImage], params: Mapping[str, Any], device: Device = CPU
    ) -> list[bytes | Exception]:
        """Encode several images at once (one entry per image, an exception for a failure).

        Called for codecs with ``prefers_gpu``/``needs_gpu`` when the shard runs on a GPU, so
        per-image adaptation can share the device; the default encodes one by one. Every
        payload still goes through the same pack-decode-check as a single encode.
        """
        out: list[bytes | Exception] = []
        for src in srcs:
            try:
                out.append(self.encode(src, params, device))
            except Exception as exc:
                out.append(exc)
        return out

    @abstractmethod
    def decode(self, payload: bytes, device: Device = CPU) -> Decoded:
        """Decode a payload produced by :meth:`encode`. Raise :class:`CodecError` on bad input."""

    def weights_pins(self, params: Mapping[str, Any]) -> dict[str, str]:
        """The weights of every learned component an encode with ``params`` uses, by codec id
        (``{}`` without weights). A composite codec (a filter over a learned base) names its
        base's too. The container records them all, and a decode gets them back as ``pins``."""
        sha = self.weights_for(params)
        return {self.codec_id: sha} if sha else {}

    def decode_stored(self, payload: bytes, device: Device, pins: Mapping[str, str]) -> Decoded:
        """Decode a payload read back from an archive. ``pins`` (codec id -> sha256, from the
        container) names the weights each learned component encoded it with. Codecs without
        weights just decode; a learned codec decodes with exactly those weights, whatever it
        would encode with now, and passes its components' pins on."""
        return self.decode(payload, device)

    def decode_batch(self, payloads: list[bytes], device: Device = CPU) -> list[Decoded | Exception]:
        """Decode several payloads at once (one entry each, an exception for a failure);
        the default decodes one by one."""
        out: list[Decoded | Exception] = []
        for payload in payloads:
            try:
                out.append(self.decode(payload, device))
            except Exception as exc:
                out.append(exc)
        return out


def params_hash(params: Mapping[str, Any]) -> str:
    """Stable hash of a parameter dict (part of the idempotency key)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_payload_image(payload: bytes, expected_format: str, codec_id: str) -> Image.Image:
    """Open a Pillow-encoded payload, refusing anything but ``expected_format``."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():  # the size check below is the project's own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(payload))
        if (im.format or "").upper() != expected_format:
            raise CodecError(f"{codec_id}: payload is {im.format}, expected {expected_format}")
        if im.width * im.height > DEFAULT_MAX_PIXELS:
            raise CodecError(f"{codec_id}: payload claims {im.width}x{im.height} pixels, refused")
        im.load()
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"{codec_id}: cannot decode payload ({type(exc).__name__}: {exc})") from None
    return im


def pack_sections(*blobs: bytes) -> bytes:
    """Length-prefixed (u32) byte strings, for codec payload layouts."""
    import struct

    return b"".join(struct.pack(">I", len(b)) + b for b in blobs)


def unpack_sections(payload: bytes, pos: int, count: int) -> tuple[list[bytes], int]:
    """Read ``count`` sections written by :func:`pack_sections` from ``pos``; raises
    ValueError when one would run past the end. Returns the sections and the end position."""
    import struct

    out = []
    for _ in range(count):
        if pos + 4 > len(payload):
            raise ValueError("truncated section length")
        (n,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        if pos + n > len(payload):
            raise ValueError("truncated section")
        out.append(bytes(payload[pos : pos + n]))
        pos += n
    return out, pos
