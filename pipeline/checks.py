"""Checks: read a bitstream, check its hash, decode it and check what comes out.

Every path that trusts a bitstream goes through here: the decode check at encode time,
restore, ``verify --full``, recompress, repair and the reuse of an interrupted run's
files. What a decode must reproduce depends on the codec's declared determinism
(:attr:`pixarc.codec.Codec.determinism`): the original bytes, the exact pixels, or, for
codecs whose pixels come out of float networks, the exact integers they decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Codec, Decoded
from .container import Container, unpack
from .device import CPU, ON_CPU, Device, DeviceMap, device_map
from .errors import (
    CodecError,
    ContainerError,
    InputError,
    MissingPluginError,
    PixarcError,
    PluginError,
    VerificationError,
)
from .images import pixels_sha256, sha256_hex
from .plugins import Registry
from .storage import get_fs


@dataclass(frozen=True)
class Problem:
    """One thing a restore, verify or repair found wrong with one key (or manifest part)."""

    key: str
    problem: str  # stable reason code (missing, hash_mismatch, ...)
    detail: str = ""


def check_decoded(c: Container, decoded: Decoded, codec: Codec | None = None) -> None:
    """Raise :class:`VerificationError` unless ``decoded`` is what ``c`` promises.

    Lossless: the original bytes or pixels. Lossy: the reconstruction recorded at encode
    time, by pixel hash; by the decoder's integers (fingerprint) when the codec declares
    ``determinism = "integers"`` (a GPU and a CPU may differ in the last float bit)."""
    if decoded.original is not None:
        if sha256_hex(decoded.original) != c.source_sha256:
            raise VerificationError("restored bytes differ from the original (sha256)")
        return
    im = decoded.image
    if im is None:
        raise VerificationError("codec returned neither pixels nor original bytes")
    if im.size != (c.width, c.height) or im.mode != c.mode:
        raise VerificationError(f"decoded {im.mode} {im.size}, container says {c.mode} {(c.width, c.height)}")
    if c.meta.get("lossless"):
        if pixels_sha256(im) != c.pixels_sha256:
            raise VerificationError("lossless decode does not reproduce the original pixels")
        return
    by_integers = c.meta.get("decoded_fingerprint") or (codec is not None and codec.determinism == "integers")
    if by_integers:
        if not decoded.fingerprint or decoded.fingerprint != c.meta.get("decoded_fingerprint"):
            raise VerificationError("decode does not reproduce the recorded latents")
    elif pixels_sha256(im) != c.meta.get("decoded_sha256"):
        raise VerificationError("lossy decode does not reproduce the recorded reconstruction (and its PSNR)")


def stored_pins(c: Container) -> dict[str, str]:
    """The weights a container's bitstream was made with, by component codec id: the header's
    ``weights_sha256`` for its own codec, ``meta["weights"]`` for every learned component."""
    pins = {str(k): str(v) for k, v in (c.meta.get("weights") or {}).items()}
    if c.weights_sha256:
        pins[c.codec_id] = c.weights_sha256
    return pins


def decode_with(c: Container, codec: Codec, device: Device = CPU) -> Decoded:
    """Decode a parsed container with ``codec`` on ``device`` (resolved for this codec) and
    check the result."""
    if c.format_version != codec.format_version:
        raise ContainerError(
            f"{c.codec_id} format version {c.format_version} not readable by this plugin "
            f"(reads {codec.format_version})"
        )
    if not codec.has_weights(c.weights_sha256):
        raise MissingPluginError(f"{c.codec_id}: bitstream needs weights {c.weights_sha256[:12]}..., not installed here")
    try:
        decoded = codec.decode_stored(c.payload, device, stored_pins(c))
    except PixarcError:
        raise
    except Exception as exc:  # a codec bug must not escape as an untyped crash
        raise CodecError(f"{c.codec_id}: decoder raised {type(exc).__name__}: {exc}") from None
    check_decoded(c, decoded, codec)
    return decoded


def decode_container(blob: bytes, registry: Registry, devices: DeviceMap = ON_CPU,
                     plugin_dist: str = "") -> tuple[Container, Decoded]:
    """Parse, decode and check a ``.pxa`` on its codec's device in ``devices`` (default: the
    CPU); every failure is a typed :class:`PixarcError`. A missing codec plugin is named,
    with the distribution to install when it is known."""
    devices = device_map(devices)
    c = unpack(blob)
    try:
        codec = registry.codec(c.codec_id)
    except PluginError:
        hint = (f"; install {plugin_dist} (e.g. pip install {plugin_dist})" if plugin_dist
                else "; install the plugin distribution that provides it")
        raise MissingPluginError(f"codec {c.codec_id!r} is not installed here (no plugin provides it); "
                                 f"the bitstream was not checked{hint}") from None
    return c, decode_with(c, codec, devices[c.codec_id])


def read_bitstream(uri: str, sha256: str | None = None) -> bytes:
    """A bitstream's bytes; with ``sha256``, checked against the manifest's hash."""
    fs, path = get_fs(uri)
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        raise InputError("missing", "bitstream missing (pruned, deleted or never copied)") from None
    if sha256 is not None and sha256_hex(blob) != sha256:
        raise VerificationError("bitstream sha256 differs from the manifest")
    return blob
