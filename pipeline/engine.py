"""The work itself, free of Prefect: plan, archive, restore and verify one shard.

Flows (``pixarc.flows``) call these functions from one task per shard. Everything that
crosses a task boundary is a small record (:class:`Shard`, the config dataclasses and
the summaries); pixels and bitstreams are read and written here, by URI.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from . import __version__, faults, progress
from .classify import UNKNOWN, Classification, pick_classifier
from .codec import Codec, Decoded, params_hash
from .container import Container, pack, unpack
from .crawl import ImageRef, crawl
from .errors import (
    CodecError,
    ContainerError,
    InputError,
    MissingPluginError,
    NotAnArchiveError,
    PixarcError,
    PluginError,
    VerificationError,
)
from .lock import check_held, hold
from .images import HEADER_PREFIX, SourceImage, check_header, pixels_sha256, probe_and_load, sha256_hex
from .manifest import (
    STATUS_DONE,
    STATUS_ERROR,
    STATUS_FAILED,
    STATUS_REJECTED,
    ManifestRow,
    latest,
    read_manifest,
    rows_to_table,
    write_part,
)
from .metrics import ms_ssim, psnr
from .plugins import Registry, default_registry
from .policy import Policy, Route, load_policy
from .storage import check_size, get_fs, inside, join, open_source, read_regular, safe_key, write_atomic, write_new

REJECT_REASONS = {"too_large", "format_not_allowed", "unsafe_key", "key_collision", "not_regular_file"}
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: a source is held in memory while it is archived
STATE_DIR = ".pixarc"
RESTORE_AS_IS = {"PNG", "TIFF", "BMP", "PPM"}  # lossless pixels re-encode faithfully to these


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def bitstream_path(dest_root: str, key: str) -> str:
    return join(dest_root, key + ".pxa")


# A legacy row's absolute URI ends in ``<key>.pxa`` or, after a recompress, ``<key>.<sha12>.pxa``.
_LEGACY_TAIL = re.compile(r"(\.[0-9a-f]{12})?\.pxa")


def bitstream_rel(value: str, key: str) -> str:
    """The DEST-relative path of the bitstream a manifest row names.

    Rows name bitstreams relative to DEST, so an archive copied or moved elsewhere reads
    its own files. Rows written before that named absolute URIs (``file:///old/dest/k.pxa``):
    only their ``<key>[.<sha12>].pxa`` tail is kept, i.e. they are re-based under DEST.
    Anything that would resolve outside DEST (``..``, an absolute path that is not such a
    tail), or onto the archive's own state (``manifest/``, hidden names, not ``.pxa``), is
    refused: nothing is ever read from, written to or deleted outside DEST.
    """
    rel = value
    if "://" in value or value.startswith("/"):
        at = value.rfind("/" + key + ".")
        if at < 0 or not _LEGACY_TAIL.fullmatch(value[at + 1 + len(key):]):
            raise InputError("outside_dest", f"bitstream {value!r} of {key!r} lies outside DEST; refused")
        rel = value[at + 1:]
    try:
        safe_key(rel)
    except InputError:
        raise InputError("outside_dest", f"bitstream path {value!r} of {key!r} leads outside DEST; refused") from None
    if not rel.endswith(".pxa") or any(p.startswith(".") for p in rel.split("/")):
        raise InputError("outside_dest",
                         f"bitstream path {value!r} of {key!r} is outside DEST's bitstreams; refused")
    return rel


def resolve_bitstream(dest: str, value: str, key: str) -> str:
    """The URI, under ``dest``, of the bitstream a row names (see :func:`bitstream_rel`)."""
    fs, root = get_fs(dest)
    return fs.unstrip_protocol(join(root, bitstream_rel(value, key)))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Shard:
    """A unit of work handed to one task: where its item list lives, and its size."""

    index: int
    uri: str
    count: int


@dataclass(frozen=True)
class ArchiveConfig:
    dest: str
    run_id: str
    policy: str | None = None
    device: str = "auto"  # auto: a GPU for codecs that use one, when the worker has one
    batch_size: int = 16  # images encoded together by GPU codecs
    lease: str = ""  # token of the one-writer lease held for DEST (checked before each commit)
    max_bytes: int = DEFAULT_MAX_BYTES  # larger sources are refused from their size (0: no limit)


@dataclass
class ShardSummary:
    shard: int
    images: int = 0
    done: int = 0
    reused: int = 0
    rejected: int = 0
    errors: int = 0
    failed: int = 0
    source_bytes: int = 0
    archive_bytes: int = 0
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)  # host:pid that ran the shard(s)

    def add(self, other: "ShardSummary") -> None:
        self.workers.extend(other.workers)
        for name in ("images", "done", "reused", "rejected", "errors", "failed", "source_bytes", "archive_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds


@dataclass
class VerifyProblem:
    key: str
    problem: str
    detail: str = ""


@dataclass
class RunSummary:
    run_id: str
    found: int
    skipped: int
    shards: int
    totals: ShardSummary
    problems: list[VerifyProblem] = field(default_factory=list)


@dataclass
class Plan:
    run_id: str
    shards: list[Shard]
    total: int = 0  # objects found by the crawl
    skipped: int = 0  # already archived, unchanged


@dataclass
class CheckSummary:
    """What a restore or verify task did with its shard."""

    shard: int
    ok: int = 0  # bitstreams verified (verify) or images written (restore)
    skipped: int = 0  # restore: files already in OUT, kept
    bytes_written: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)


# --------------------------------------------------------------------------- plans


def _write_plan(base: str, run_id: str, kind: str, items: Iterable[dict], shard_size: int) -> tuple[list[Shard], int]:
    """Chunk ``items`` into shard files under ``base/.pixarc/<kind>/<run_id>/``."""
    fs, root = get_fs(base)
    shards: list[Shard] = []
    total = 0
    batch: list[dict] = []

    def flush() -> None:
        path = join(root, STATE_DIR, kind, run_id, f"shard-{len(shards):06d}.json")
        write_atomic(fs, path, json.dumps(batch, default=str).encode())
        shards.append(Shard(len(shards), fs.unstrip_protocol(path), len(batch)))
        batch.clear()

    for item in items:
        batch.append(item)
        total += 1
        if len(batch) >= shard_size:
            flush()
    if batch:
        flush()
    return shards, total


def drop_plan(base: str, kind: str, run_id: str) -> None:
    """Remove a finished run's shard lists (they only matter while the run is going)."""
    fs, root = get_fs(base)
    path = join(root, STATE_DIR, kind, run_id)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def load_shard(shard: Shard) -> list[dict]:
    fs, path = get_fs(shard.uri)
    return json.loads(fs.cat_file(path))


def _claim_dest(src: str, dest: str) -> None:
    """One DEST archives one source root: keys of two sources would overwrite each other."""
    sfs, sroot = get_fs(src)
    source = sfs.unstrip_protocol(sroot)
    fs, root = get_fs(dest)
    marker = join(root, STATE_DIR, "source.json")
    if fs.exists(marker):
        claimed = json.loads(fs.cat_file(marker)).get("source")
        if claimed != source:
            raise InputError("dest_in_use", f"{dest} already archives {claimed}; use another DEST for {source}")
        return
    write_atomic(fs, marker, json.dumps({"source": source, "pixarc_version": __version__}).encode())


def plan_archive(src: str, dest: str, run_id: str, shard_size: int = 256, follow_symlinks: bool = False,
                 select: Callable[[str], bool] | None = None, limit: int | None = None) -> Plan:
    """Crawl ``src``, drop what the manifest already holds unchanged, write shard lists.

    An object is skipped when its newest row has the same URI, size and mtime/ETag and a
    final status (done, rejected, error); ``failed`` rows are retried. ``select(key)``
    leaves out keys (``--include/--exclude``); ``limit`` stops the crawl once that many
    objects are planned (``--limit``).
    """
    _claim_dest(src, dest)
    wanted = ["source_uri", "source_bytes", "source_mtime", "status", "bitstream_sha256"]
    # keys of a damaged part are archived again (reusing their verified bitstreams)
    current = latest(read_manifest(dest, columns=wanted, damaged=[]))
    known: dict[str, tuple[int, str]] = {}
    previous: dict[str, str] = {}  # key -> bitstream of its current version (lineage of a new one)
    if current.num_rows:
        cols = current.select(["key", *wanted]).to_pylist()
        known = {
            r["source_uri"]: (r["source_bytes"], r["source_mtime"]) for r in cols if r["status"] != STATUS_FAILED
        }
        previous = {r["key"]: r["bitstream_sha256"] for r in cols if r["status"] == STATUS_DONE}
    dest_fs, dest_root = get_fs(dest)
    dest_prefix = dest_fs.unstrip_protocol(dest_root).rstrip("/") + "/"
    counts = {"total": 0, "skipped": 0}

    def todo() -> Iterator[dict]:
        for ref in crawl(src, follow_symlinks=follow_symlinks):
            if ref.uri.startswith(dest_prefix) or (select is not None and not select(ref.key)):
                continue  # the archive itself, when DEST lies inside SRC; or filtered out
            if limit is not None and counts["total"] - counts["skipped"] >= limit:
                break
            counts["total"] += 1
            if known.get(ref.uri) == (ref.size, ref.mtime):
                counts["skipped"] += 1
                continue
            yield {**asdict(ref), "replaces": previous.get(ref.key, "")}

    shards, planned = _write_plan(dest, run_id, "archive", todo(), shard_size)
    progress.set_total(run_id, planned)
    return Plan(run_id, shards, counts["total"], counts["skipped"])


# --------------------------------------------------------------------------- checks


def check_decoded(c: Container, decoded: Decoded) -> None:
    """Raise :class:`VerificationError` unless ``decoded`` is what ``c`` promises."""
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
    elif c.meta.get("decoded_fingerprint"):
        if decoded.fingerprint != c.meta["decoded_fingerprint"]:
            raise VerificationError("decode does not reproduce the recorded latents")
    elif pixels_sha256(im) != c.meta.get("decoded_sha256"):
        raise VerificationError("lossy decode does not reproduce the recorded reconstruction (and its PSNR)")


def decode_container(blob: bytes, registry: Registry, device: str = "cpu") -> tuple[Container, Decoded]:
    """Parse, decode and check a ``.pxa``; every failure is a typed :class:`PixarcError`."""
    c = unpack(blob)
    try:
        codec = registry.codec(c.codec_id)
    except PluginError:
        raise MissingPluginError(f"codec {c.codec_id!r} is not installed here (no plugin provides it); "
                                 "the bitstream was not checked") from None
    return c, decode_with(c, codec, device)


def _decode_item(blob: bytes, registry: Registry, item: dict) -> tuple[Container, Decoded]:
    """:func:`decode_container`, a missing plugin named with the distribution to install."""
    try:
        return decode_container(blob, registry)
    except MissingPluginError as exc:
        dist = item.get("plugin_dist") or "the plugin distribution that provides it"
        raise MissingPluginError(f"{exc}; install {dist} (e.g. pip install {dist})" if item.get("plugin_dist")
                                 else f"{exc}; install {dist}") from None


def decode_with(c: Container, codec: Codec, device: str = "cpu") -> Decoded:
    """Decode a parsed container with ``codec`` and check the result against the header."""
    if c.format_version != codec.format_version:
        raise ContainerError(
            f"{c.codec_id} format version {c.format_version} not readable by this plugin "
            f"(reads {codec.format_version})"
        )
    if not codec.has_weights(c.weights_sha256):
        raise MissingPluginError(f"{c.codec_id}: bitstream needs weights {c.weights_sha256[:12]}..., not installed here")
    try:
        decoded = codec.decode(c.payload, codec_device(codec, device))
    except PixarcError:
        raise
    except Exception as exc:  # a codec bug must not escape as an untyped crash
        raise CodecError(f"{c.codec_id}: decoder raised {type(exc).__name__}: {exc}") from None
    check_decoded(c, decoded)
    return decoded


# --------------------------------------------------------------------------- devices


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


def codec_device(codec: Codec, requested: str) -> str:
    """The device a codec runs on: CPU for codecs that do not use one; ``auto`` picks a GPU
    when this process has one (checked only when such a codec is about to run)."""
    if not (codec.prefers_gpu or codec.needs_gpu):
        return "cpu"
    if requested == "auto":
        return "cuda" if gpu_count() else "cpu"
    return requested


def _device_reason(codec: Codec, requested: str) -> str | None:
    if codec.needs_gpu and not codec_device(codec, requested).startswith("cuda"):
        return f"{codec.codec_id} needs a GPU and this worker has none"
    return None


def uses_gpu(cfg: "ArchiveConfig", registry: Registry) -> bool:
    """Whether shards of this job can put work on a GPU (and so must hold a GPU slot)."""
    if cfg.device == "cpu":
        return False
    gpu_codecs = [c for c in registry.codecs.values() if c.prefers_gpu or c.needs_gpu]
    return bool(gpu_codecs) and (cfg.device != "auto" or gpu_count() > 0)


# --------------------------------------------------------------------------- archive


@dataclass
class _Encoded:
    codec: Codec
    params: dict[str, Any]
    blob: bytes
    container: Container
    psnr: float
    ms_ssim: float
    decoded_sha256: str
    encode_s: float
    decode_s: float


def _encode_verified(
    codec: Codec, params: dict[str, Any], src: SourceImage, route: Route, device: str, payload: bytes | None = None
) -> _Encoded:
    """Encode (unless ``payload`` was batch-encoded already), pack, decode the packed bytes
    again and check them."""
    faults.point("encode")
    t0 = time.perf_counter()
    if payload is None:
        payload = codec.encode(src, params, device)
    encode_s = time.perf_counter() - t0
    faults.point("encoded")
    info = src.info
    meta: dict[str, Any] = {
        "params": params,
        "codec_version": codec.version(),
        "lossless": codec.lossless,
        "source_format": info.source_format,
        "source_mode": info.source_mode,
        "domain": route.domain,
        "notes": list(info.notes),
        "pixarc_version": __version__,
    }
    sections = {"DATA": payload}
    if src.icc_profile:
        sections["ICCP"] = src.icc_profile
    if src.exif:
        sections["EXIF"] = src.exif
    container = Container(
        codec.codec_id,
        codec.format_version,
        info.width,
        info.height,
        info.mode,
        info.bit_depth,
        src.sha256,
        src.pixels_sha256,
        codec.weights_for(params),
        meta,
        sections,
    )
    quality = (math.inf, 1.0)
    decoded_sha = src.pixels_sha256
    if not codec.lossless:
        # Decode once to learn what the bitstream reconstructs; record it in the header.
        first = codec.decode(payload, device)
        recon = first.image
        if recon is None or recon.size != src.image.size or recon.mode != src.image.mode:
            raise VerificationError(f"{codec.codec_id}: reconstruction has the wrong geometry or mode")
        quality = (psnr(src.image, recon), ms_ssim(src.image, recon))
        decoded_sha = pixels_sha256(recon)
        meta.update(psnr=quality[0], ms_ssim=quality[1], decoded_sha256=decoded_sha)
        if first.fingerprint:
            meta["decoded_fingerprint"] = first.fingerprint
    blob = pack(container)
    t0 = time.perf_counter()
    decode_with(unpack(blob), codec, device)  # the check on the very bytes that will be stored
    if device != "cpu":
        # Restore decodes on the CPU (any machine, no GPU needed): a check on the encoding
        # GPU alone proves nothing about that path, so the CPU decode must pass it too.
        try:
            decode_with(unpack(blob), codec, "cpu")
        except PixarcError as exc:
            raise VerificationError(f"encoded on {device}, but the CPU decode restore uses fails its check: "
                                    f"{exc}") from None
    decode_s = time.perf_counter() - t0
    return _Encoded(codec, params, blob, container, quality[0], quality[1], decoded_sha, encode_s, decode_s)


def _fill_from_source(row: ManifestRow, src: SourceImage) -> None:
    info = src.info
    row.source_sha256 = src.sha256
    row.source_bytes = len(src.data)
    row.source_format = info.source_format
    row.width, row.height, row.mode, row.bit_depth = info.width, info.height, info.mode, info.bit_depth
    row.pixels_sha256 = src.pixels_sha256


def _fill_from_encoded(row: ManifestRow, enc: _Encoded, registry: Registry, bitstream_uri: str, device: str) -> None:
    codec = enc.codec
    row.codec_id = codec.codec_id
    row.codec_version = codec.version()
    row.format_version = codec.format_version
    row.weights_sha256 = codec.weights_for(enc.params)
    row.params = json.dumps(enc.params, sort_keys=True)
    row.params_hash = params_hash(enc.params)
    row.plugin_dist, row.plugin_version = registry.provenance(codec.codec_id)
    row.bitstream_uri = bitstream_uri
    row.bitstream_sha256 = sha256_hex(enc.blob)
    row.bitstream_bytes = len(enc.blob)
    row.bpp = 8.0 * len(enc.blob) / max(1, row.width * row.height)
    row.psnr, row.ms_ssim = enc.psnr, enc.ms_ssim
    row.lossless = codec.lossless
    row.decoded_sha256 = enc.decoded_sha256
    row.encode_s, row.decode_s = enc.encode_s, enc.decode_s
    row.device = device
    row.verified = True
    row.status = STATUS_DONE


def encode_route(
    src: SourceImage, route: Route, registry: Registry, device: str, exclude: frozenset[str] = frozenset(),
    payloads: dict[tuple[str, str], bytes] | None = None,
) -> tuple[_Encoded | None, list[dict[str, Any]]]:
    """Try the route's candidates in order (all of them for ``selection = "smallest"`` or
    ``"rd"``; for ``"rd"`` the winner is the lowest :func:`rd_key` at the route's target).

    Returns the chosen verified encoding (or None) and a record of every attempt.
    ``payloads`` holds encodings already made in a batch, keyed by (codec id, params hash);
    they are packed and checked exactly like fresh ones.
    """
    chosen: _Encoded | None = None
    attempts: list[dict[str, Any]] = []
    target = next((c.target for c in route.candidates if c.target), None)
    for cand in route.candidates:
        if cand.codec_id in exclude:
            attempts.append({"codec": cand.codec_id, "result": "skipped", "reason": "excluded"})
            continue
        try:
            codec = registry.codec(cand.codec_id)
        except PluginError:
            attempts.append({"codec": cand.codec_id, "result": "skipped", "reason": "not installed"})
            continue
        why = codec.unsupported_reason(src.info) or _device_reason(codec, device)
        if why:
            attempts.append({"codec": cand.codec_id, "result": "skipped", "reason": why})
            continue
        try:
            params = codec.validate_params(cand.params)
            if cand.target and codec.rate_param and not codec.lossless:
                enc, note = _encode_to_target(codec, params, src, route, codec_device(codec, device), cand.target)
                attempts.append({"codec": cand.codec_id, "result": "target", "reason": note})
            else:
                ready = (payloads or {}).get((codec.codec_id, params_hash(params)))
                enc = _encode_verified(codec, params, src, route, codec_device(codec, device), ready)
        except PixarcError as exc:
            attempts.append({"codec": cand.codec_id, "result": "failed", "reason": f"{exc.reason}: {exc}"})
            continue
        except Exception as exc:  # a codec bug costs this candidate, not the run
            attempts.append({"codec": cand.codec_id, "result": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            continue
        attempt = {"codec": cand.codec_id, "result": "verified", "bytes": len(enc.blob)}
        if not codec.lossless:
            attempt["psnr"] = enc.psnr
        if target:
            attempt["met"] = _meets(enc, target, src.info.pixels)
        attempts.append(attempt)
        if route.selection == "rd":
            if chosen is None or rd_key(enc, target, src.info.pixels) < rd_key(chosen, target, src.info.pixels):
                chosen = enc
        elif chosen is None or len(enc.blob) < len(chosen.blob):
            chosen = enc
        if route.selection == "first":
            break
    return chosen, attempts


def _meets(enc: _Encoded, target: tuple[str, float], pixels: int) -> bool:
    kind, goal = target
    return enc.psnr >= goal if kind == "psnr" else 8 * len(enc.blob) / max(1, pixels) <= goal


def rd_key(enc: _Encoded, target: tuple[str, float] | None, pixels: int) -> tuple:
    """Order of candidates for ``selection = "rd"`` (lowest wins): those meeting the route's
    target first; among them the fewest bytes for ``target_psnr`` and the highest PSNR for
    ``target_bpp``; among those missing it, the closest (highest PSNR, resp. fewest bytes).
    Without a target: the fewest bytes, as ``"smallest"``."""
    size = len(enc.blob)
    if target is None:
        return (0, size)
    met = _meets(enc, target, pixels)
    if target[0] == "psnr":
        return (0, size) if met else (1, -enc.psnr, size)
    return (0, -enc.psnr, size) if met else (1, size)


def _encode_to_target(
    codec: Codec, params: dict[str, Any], src: SourceImage, route: Route, device: str, target: tuple[str, float]
) -> tuple[_Encoded, str]:
    """Bisect the codec's rate parameter: the fewest bits with PSNR >= target, or the most
    bits with bpp <= target. Every probe is a full, decode-checked encode."""
    kind, goal = target
    values = codec.rate_values()  # increasing rate; a learned codec: the rate points it has weights for
    if not values:
        raise CodecError(f"{codec.codec_id}: no {codec.rate_param} value to search")
    lo, hi = 0, len(values) - 1
    pixels = max(1, src.info.pixels)

    def ok(enc: _Encoded) -> bool:
        return enc.psnr >= goal if kind == "psnr" else 8 * len(enc.blob) / pixels <= goal

    probed: dict[int, _Encoded] = {}

    def probe(value: int) -> _Encoded:
        if value not in probed:
            probed[value] = _encode_verified(codec, {**params, codec.rate_param: value}, src, route, device)
        return probed[value]

    best: _Encoded | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        enc = probe(values[mid])
        if ok(enc):
            best = enc
            if kind == "psnr":
                hi = mid - 1  # fewer bits may still reach the PSNR
            else:
                lo = mid + 1  # more bits may still fit the budget
        elif kind == "psnr":
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:  # unreachable target: the closest end of the range (already probed last)
        best = probe(values[-1] if kind == "psnr" else values[0])
        return best, f"{kind} target {goal} not reachable; used {codec.rate_param}={best.params[codec.rate_param]}"
    return best, f"{kind} target {goal}: {codec.rate_param}={best.params[codec.rate_param]} after {len(probed)} probes"


def fallback_note(attempts: list[dict[str, Any]]) -> str:
    fallbacks = [a for a in attempts if a["result"] in ("skipped", "failed")]
    if not fallbacks:
        return ""
    return "fallback: " + "; ".join(f"{a['codec']} {a['result']} ({a['reason']})" for a in fallbacks)


def _try_reuse(fs, path: str, src: SourceImage, route: Route, registry: Registry, device: str) -> _Encoded | None:
    """A bitstream left by an interrupted run for the same source and route: decode-check it."""
    try:
        if not fs.exists(path):
            return None
        blob = fs.cat_file(path)
        head = unpack(blob, header_only=True)
        wanted = {(c.codec_id, params_hash(registry.codec(c.codec_id).validate_params(c.params)))
                  for c in route.candidates if c.codec_id in registry.codecs}
        got = (head.codec_id, params_hash(head.meta.get("params", {})))
        if head.source_sha256 != src.sha256 or got not in wanted:
            return None
        t0 = time.perf_counter()
        c, _ = decode_container(blob, registry, "cpu")  # the path restore uses, whatever encoded it
        decode_s = time.perf_counter() - t0
    except (PixarcError, OSError):
        return None  # unusable: it will be overwritten by a fresh, verified encode
    codec = registry.codec(c.codec_id)
    lossless = bool(c.meta.get("lossless"))
    return _Encoded(
        codec,
        dict(c.meta.get("params", {})),
        blob,
        c,
        math.inf if lossless else float(c.meta.get("psnr", math.nan)),
        1.0 if lossless else float(c.meta.get("ms_ssim", math.nan)),
        c.pixels_sha256 if lossless else c.meta.get("decoded_sha256", ""),
        0.0,
        decode_s,
    )


def _stamp_now(fs, path: str) -> str:
    from .crawl import _stamp

    try:
        return _stamp(fs.info(path))
    except (OSError, ValueError):
        return ""


@dataclass
class _Prepared:
    """An image read, checked, classified and routed: ready for its codec."""

    row: ManifestRow
    key: str
    src: SourceImage | None = None  # None: the row is final already (rejected / error)
    route: Route | None = None
    notes: list[str] = field(default_factory=list)


def _check_collision(key: str) -> None:
    """A folder named like a bitstream (``a.pxa/``) would collide with the bitstream of the
    file next to it (``a`` -> ``a.pxa``): whichever came second would fail or land inside
    the other. Refused up front, whatever the order, so the rest of the run goes on."""
    for folder in key.split("/")[:-1]:
        if folder.endswith(".pxa"):
            raise InputError("key_collision", f"folder {folder!r} of {key!r} has the name of a bitstream "
                                              f"(the one of {folder[:-4]!r}); refused")


def prepare(ref: ImageRef, shard: int, cfg: ArchiveConfig, policy: Policy, registry: Registry) -> _Prepared:
    """Read, hash, decode, classify and route one object; never raises for bad input."""
    row = ManifestRow(
        cfg.run_id, shard, ref.key, ref.uri, "", source_bytes=ref.size, source_mtime=ref.mtime,
        pixarc_version=__version__,
    )
    prep = _Prepared(row, ref.key)
    notes = prep.notes
    try:
        prep.key = safe_key(ref.key)
        _check_collision(prep.key)
        sfs, spath = get_fs(ref.uri)
        if ref.kind != "file":
            raise InputError("not_regular_file", f"a {ref.kind} entry, not a regular file (FIFO, socket, device); "
                                                 "not read")
        check_size(ref.size, cfg.max_bytes)  # refused from the crawl's size: not even opened
        faults.point("read")
        try:
            with open_source(sfs, spath, cfg.max_bytes) as f:
                head = f.read(HEADER_PREFIX)
                check_header(head, max_pixels=policy.max_pixels, formats=policy.formats)
                data = head + f.read(cfg.max_bytes + 1 - len(head)) if cfg.max_bytes else head + f.read()
            check_size(len(data), cfg.max_bytes)  # grew since it was opened
        except (OSError, ValueError) as exc:
            raise InputError("io_error", f"cannot read source: {exc}") from None
        if len(data) != ref.size:
            notes.append(f"size changed since crawl ({ref.size} -> {len(data)} bytes)")
        elif ref.mtime and _stamp_now(sfs, spath) not in ("", ref.mtime):
            notes.append("modified while being archived: the bytes read are what is archived and hashed")
        src = probe_and_load(data, max_pixels=policy.max_pixels, formats=policy.formats)
    except InputError as exc:
        row.status = STATUS_REJECTED if exc.reason in REJECT_REASONS else STATUS_ERROR
        row.error, row.message = exc.reason, str(exc)
        row.notes = "; ".join(notes)
        return prep
    _fill_from_source(row, src)
    notes.extend(src.info.notes)

    if src.image is not None:
        t0 = time.perf_counter()
        classifier, note = pick_classifier(registry, policy)
        if note:
            notes.append(note)
        try:
            classification = classifier.classify(src.image)
        except Exception as exc:  # a broken classifier degrades to the unknown route
            classification = Classification(UNKNOWN, 0.0, classifier.classifier_id)
            notes.append(f"classifier {classifier.classifier_id} failed: {exc}")
        row.classify_s = time.perf_counter() - t0
    else:
        classification = Classification(UNKNOWN, 0.0, "")
    row.domain, row.domain_confidence, row.classifier_id = (
        classification.domain, classification.confidence, classification.classifier_id,
    )
    route = registry.pm.hook.route(info=src.info, classification=classification, policy=policy)
    row.route = route.domain
    if route.reason:
        notes.append(f"route {route.domain}: {route.reason}")
    prep.src, prep.route = src, route
    return prep


def archive_one(
    ref: ImageRef, shard: int, cfg: ArchiveConfig, policy: Policy, registry: Registry,
    prepared: _Prepared | None = None, payloads: dict[tuple[str, str], bytes] | None = None,
) -> ManifestRow:
    """Archive one object; never raises for a bad input (the row says what happened).

    ``prepared``/``payloads`` come from :func:`archive_shard`'s batched GPU pass: the image
    already prepared, and payloads already encoded for some (codec, params hash) pairs.
    """
    prep = prepared or prepare(ref, shard, cfg, policy, registry)
    row, src, route, notes = prep.row, prep.src, prep.route, prep.notes
    if src is None:
        return row
    dfs, droot = get_fs(cfg.dest)
    rel = prep.key + ".pxa"
    path = join(droot, rel)
    attempts: list[dict[str, Any]] = []
    chosen = _try_reuse(dfs, path, src, route, registry, cfg.device)
    if chosen is not None:
        notes.append("reused the verified bitstream of an interrupted run")
        attempts.append({"codec": chosen.codec.codec_id, "result": "reused"})
    else:
        chosen, attempts = encode_route(src, route, registry, cfg.device, payloads=payloads)
        if chosen is not None:
            try:
                rel = _write_version(dfs, droot, prep.key, chosen.blob)
            except InputError as exc:
                row.status, row.error, row.message = STATUS_REJECTED, exc.reason, str(exc)
                return row
            faults.point("written")
    row.attempts = json.dumps(attempts)
    row.notes = "; ".join(filter(None, notes + [fallback_note(attempts)]))
    if chosen is None:
        row.status, row.error = STATUS_FAILED, "no_codec"
        row.message = "no candidate codec produced a verified bitstream"
        return row
    _fill_from_encoded(row, chosen, registry, rel, codec_device(chosen.codec, cfg.device))
    return row


def _write_version(fs, root: str, key: str, blob: bytes) -> str:
    """Store a new bitstream without overwriting anything; returns its DEST-relative path.

    ``<key>.pxa`` when free; taken (an older version of a changed source, or any other
    file) -> ``<key>.<sha12>.pxa``, named by the bitstream's own hash, so a file already
    there under that name holds these very bytes."""
    rel = key + ".pxa"
    if write_new(fs, join(root, rel), blob, fault_site="rename"):
        return rel
    rel = f"{key}.{sha256_hex(blob)[:12]}.pxa"
    if write_new(fs, join(root, rel), blob, fault_site="rename"):
        return rel
    try:
        same = sha256_hex(fs.cat_file(join(root, rel))) == sha256_hex(blob)
    except (OSError, IsADirectoryError):
        same = False
    if not same:
        raise InputError("key_collision", f"{key!r}: both bitstream names {key}.pxa and {rel} are taken")
    return rel


@functools.lru_cache(maxsize=8)
def _policy(path: str | None) -> Policy:
    return load_policy(path)


def _extra_columns(registry: Registry) -> dict:
    cols: dict = {}
    for answer in registry.pm.hook.manifest_columns():
        if answer:
            cols.update(answer)
    return cols


def _worker_id() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def batch_encode(prepared: list[_Prepared], cfg: ArchiveConfig, registry: Registry) -> dict[int, dict]:
    """Encode together, per (GPU codec, params), the images whose first usable candidate is
    a GPU codec. Returns ``{id(prepared): {(codec_id, params_hash): payload}}``; a failed
    batch returns nothing for its images, which then take the per-image path (and its
    fallbacks)."""
    groups: dict[tuple[str, str], list[_Prepared]] = {}
    params_of: dict[tuple[str, str], dict] = {}
    for p in prepared:
        if p.src is None:
            continue
        for cand in p.route.candidates:
            if cand.codec_id not in registry.codecs:
                continue
            codec = registry.codec(cand.codec_id)
            if codec.unsupported_reason(p.src.info) or _device_reason(codec, cfg.device):
                continue
            # a candidate with a target is rate-searched per image: a batch at the plain
            # params would be thrown away
            searched = cand.target and codec.rate_param and not codec.lossless
            if codec_device(codec, cfg.device).startswith("cuda") and not searched:
                try:
                    params = codec.validate_params(cand.params)
                except PixarcError:
                    break
                key = (codec.codec_id, params_hash(params))
                groups.setdefault(key, []).append(p)
                params_of[key] = params
            break  # only the first usable candidate is batched
    out: dict[int, dict] = {}
    for key, members in groups.items():
        codec = registry.codec(key[0])
        try:
            payloads = codec.encode_batch([m.src for m in members], params_of[key], codec_device(codec, cfg.device))
        except Exception as exc:  # the images fall back to one-by-one encoding
            for m in members:
                m.notes.append(f"batch encode failed ({type(exc).__name__}: {exc}); encoded alone")
            continue
        for m, payload in zip(members, payloads):
            if isinstance(payload, (bytes, bytearray)):
                out.setdefault(id(m), {})[key] = bytes(payload)
    return out


_REF_FIELDS = frozenset(f.name for f in fields(ImageRef))


def archive_shard(shard: Shard, cfg: ArchiveConfig, registry: Registry | None = None) -> ShardSummary:
    """Archive every object of a shard and commit its manifest part."""
    registry = registry or default_registry()
    policy = _policy(cfg.policy)
    t0 = time.perf_counter()
    rows = []
    loaded = load_shard(shard)
    items = [ImageRef(**{k: v for k, v in item.items() if k in _REF_FIELDS}) for item in loaded]
    replaces = {item["key"]: item.get("replaces", "") for item in loaded}
    if not uses_gpu(cfg, registry):
        for ref in items:  # one image in memory at a time
            rows.append(archive_one(ref, shard.index, cfg, policy, registry))
            progress.advance(cfg.run_id)
            progress.add_bytes(cfg.run_id, rows[-1].source_bytes)
    else:  # GPU: prepare a batch, encode it together on the device, then check each image
        for i in range(0, len(items), cfg.batch_size):
            prepared = [prepare(ref, shard.index, cfg, policy, registry) for ref in items[i : i + cfg.batch_size]]
            payloads = batch_encode(prepared, cfg, registry)
            for ref, prep in zip(items[i : i + cfg.batch_size], prepared):
                rows.append(archive_one(ref, shard.index, cfg, policy, registry, prep, payloads.get(id(prep))))
                progress.advance(cfg.run_id)
                progress.add_bytes(cfg.run_id, rows[-1].source_bytes)
    for r in rows:  # a new version of a changed source records the bitstream it succeeds
        if r.status == STATUS_DONE and replaces.get(r.key) not in (None, "", r.bitstream_sha256):
            r.replaces_sha256 = replaces[r.key]
    if cfg.lease:  # a run that lost its lease (stalled past expiry) must not commit
        check_held(cfg.dest, cfg.lease)
    write_part(cfg.dest, cfg.run_id, shard.index, rows_to_table(rows, _extra_columns(registry)))
    s = ShardSummary(shard.index, images=len(rows), seconds=time.perf_counter() - t0, workers=[_worker_id()])
    for r in rows:
        s.source_bytes += r.source_bytes
        if r.status == STATUS_DONE:
            s.done += 1
            s.archive_bytes += r.bitstream_bytes
            s.reused += "reused" in r.notes
        elif r.status == STATUS_REJECTED:
            s.rejected += 1
        elif r.status == STATUS_ERROR:
            s.errors += 1
        else:
            s.failed += 1
    return s


def summarise_run(plan: Plan, summaries: Iterable[ShardSummary]) -> RunSummary:
    totals = ShardSummary(-1)
    for s in summaries:
        totals.add(s)
    return RunSummary(plan.run_id, plan.total, plan.skipped, len(plan.shards), totals)


def archive_local(
    src: str, dest: str, policy: str | None = None, shard_size: int = 256, run_id: str | None = None,
    device: str = "auto", batch_size: int = 16, follow_symlinks: bool = False, wait: float = 0.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> RunSummary:
    """The archive job without Prefect: same plan, same shard function, one process.

    For embedding and for measuring what orchestration costs; the flows are the
    product path.
    """
    run_id = run_id or new_run_id()
    _policy(policy)
    with hold(dest, "archive", wait) as lease:
        plan = plan_archive(src, dest, run_id, shard_size, follow_symlinks)
        cfg = ArchiveConfig(dest=dest, run_id=run_id, policy=policy, device=device, batch_size=batch_size,
                            lease=lease.token, max_bytes=max_bytes)
        summary = summarise_run(plan, [archive_shard(s, cfg) for s in plan.shards])
        drop_plan(dest, "archive", run_id)
    return summary


def plan_one(ref: ImageRef, policy: Policy, registry: Registry) -> dict[str, str]:
    """What ``archive`` would do with one object, without encoding or writing (dry run)."""
    try:
        safe_key(ref.key)
        if ref.kind != "file":
            raise InputError("not_regular_file", f"a {ref.kind} entry, not a regular file; not read")
        fs, path = get_fs(ref.uri)
        with open_source(fs, path, DEFAULT_MAX_BYTES) as f:  # never blocks on a FIFO swapped in
            src = probe_and_load(f.read(), max_pixels=policy.max_pixels, formats=policy.formats)
    except InputError as exc:
        status = STATUS_REJECTED if exc.reason in REJECT_REASONS else STATUS_ERROR
        return {"domain": "-", "confidence": "", "route": "-", "codec": f"({status})", "note": f"{exc.reason}: {exc}"}
    c = (
        pick_classifier(registry, policy)[0].classify(src.image)
        if src.image is not None
        else Classification(UNKNOWN, 0.0, "")
    )
    route = registry.pm.hook.route(info=src.info, classification=c, policy=policy)
    skipped = []
    for cand in route.candidates:
        codec = registry.codecs.get(cand.codec_id)
        why = "not installed" if codec is None else registry.codec(cand.codec_id).unsupported_reason(src.info)
        if not why:
            note = "; ".join(skipped + list(src.info.notes) + ([route.reason] if route.reason else []))
            return {"domain": c.domain, "confidence": f"{c.confidence:.2f}", "route": route.domain,
                    "codec": cand.codec_id, "note": note}
        skipped.append(f"{cand.codec_id}: {why}")
    return {"domain": c.domain, "confidence": f"{c.confidence:.2f}", "route": route.domain, "codec": "-",
            "note": "; ".join(skipped)}


# --------------------------------------------------------------------------- restore / verify


def require_archive(dest: str) -> None:
    """Raise :class:`NotAnArchiveError` unless ``dest`` holds a pixarc archive."""
    fs, root = get_fs(dest)
    if not (fs.exists(join(root, "manifest")) or fs.exists(join(root, STATE_DIR, "source.json"))):
        raise NotAnArchiveError(f"{dest} is not a pixarc archive (no manifest/ or {STATE_DIR}/source.json there)")


def manifest_problems(dest: str) -> list[VerifyProblem]:
    """Damaged manifest parts (left out by every reader), one problem each."""
    damaged: list[tuple[str, str]] = []
    read_manifest(dest, columns=[], damaged=damaged)
    return [VerifyProblem(f"manifest/{name}", "corrupt_manifest_part", why + "; run pixarc repair DEST")
            for name, why in damaged]


def current_rows(dest: str, pattern: str = "*", domain: str | None = None, status: str | None = STATUS_DONE,
                 columns: list[str] | None = None) -> list[dict]:
    """The newest row per key, filtered; ``columns`` limits what is read (and held)."""
    require_archive(dest)
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "status", "domain"]))
    # a damaged part is left out (the rest stays usable); verify and repair report it
    rows = latest(read_manifest(dest, columns=columns, damaged=[])).to_pylist()
    return [
        r
        for r in rows
        if (status is None or r["status"] == status)
        and fnmatch.fnmatch(r["key"], pattern)
        and (domain is None or r["domain"] == domain)
    ]


_ROW_FIELDS = (
    "key", "bitstream_uri", "bitstream_bytes", "bitstream_sha256", "source_format", "codec_id", "lossless",
    "source_uri", "source_sha256", "plugin_dist",
)


def with_location(dest: str, row: dict) -> dict:
    """``row`` with ``bitstream_uri`` resolved under ``dest``, or ``unsafe`` saying why not."""
    try:
        return {**row, "bitstream_uri": resolve_bitstream(dest, row["bitstream_uri"], row["key"])}
    except InputError as exc:
        return {**row, "bitstream_uri": "", "unsafe": str(exc)}


def _unsafe(item: dict) -> None:
    if item.get("unsafe"):
        raise InputError("outside_dest", item["unsafe"])


def plan_rows(base: str, run_id: str, kind: str, rows: list[dict], shard_size: int,
              dest: str | None = None) -> list[Shard]:
    items = ({k: r[k] for k in (*_ROW_FIELDS, "name") if k in r} for r in rows)
    if dest is not None:
        items = (with_location(dest, item) for item in items)
    progress.set_total(run_id, len(rows))
    return _write_plan(base, run_id, kind, items, shard_size)[0]


def restored_key(key: str, source_format: str, lossless: bool, codec_id: str) -> str:
    if codec_id == "store" or (lossless and source_format in RESTORE_AS_IS):
        return key
    return key + ".png"


def restored_names(rows: list[dict]) -> dict[str, str]:
    """Key -> file name under OUT, one name per key: a key restored as itself keeps its
    name; one converted to PNG gets ``<key>.png`` unless another key already restores
    there (``x.jpg`` next to ``x.jpg.png``), then ``<key>.<n>.png``. Computed over every
    selected row, so a ``--filter`` run names files as the full restore would."""
    natural = {r["key"]: restored_key(r["key"], r["source_format"], r["lossless"], r["codec_id"]) for r in rows}
    taken = {name for key, name in natural.items() if name == key}
    names: dict[str, str] = {}
    for key in sorted(natural):
        name = natural[key]
        if name != key:
            n = 0
            while name in taken:
                n += 1
                name = f"{key}.{n}.png"
            taken.add(name)
        names[key] = name
    return names


def restore_shard(shard: Shard, out: str, run_id: str, registry: Registry | None = None,
                  overwrite: bool = False) -> CheckSummary:
    """Decode and check every bitstream of a shard, then write the images under ``out``.

    A file already in ``out`` is kept (counted as skipped) unless ``overwrite``; nothing
    is written through a symlink that leads outside ``out``."""
    import io

    registry = registry or default_registry()
    ofs, oroot = get_fs(out)
    s = CheckSummary(shard.index)
    for item in load_shard(shard):
        key = item["key"]
        try:
            safe_key(key)
            _unsafe(item)
            name = item.get("name") or key
            target = join(oroot, safe_key(name))
            if not inside(ofs, oroot, target):
                raise InputError("outside_out", f"{name}: a symlink in OUT leads outside {out}; not written")
            bfs, bpath = get_fs(item["bitstream_uri"])
            try:
                blob = bfs.cat_file(bpath)
            except FileNotFoundError:
                raise InputError("missing", "bitstream missing (pruned, deleted or never copied)") from None
            if sha256_hex(blob) != item["bitstream_sha256"]:
                raise VerificationError("bitstream sha256 differs from the manifest")
            c, decoded = _decode_item(blob, registry, item)
            if decoded.original is not None:
                data = decoded.original
            else:
                fmt = item["source_format"] if name == key else "PNG"
                buf = io.BytesIO()
                kwargs: dict[str, Any] = {}
                if "ICCP" in c.sections:
                    kwargs["icc_profile"] = c.sections["ICCP"]
                if "EXIF" in c.sections:
                    kwargs["exif"] = c.sections["EXIF"]
                decoded.image.save(buf, fmt, **kwargs)
                data = buf.getvalue()
            if overwrite:
                write_atomic(ofs, target, data)  # replaces a symlink itself, never writes through it
            elif not write_new(ofs, target, data):
                s.skipped += 1
                progress.advance(run_id)
                continue
            s.ok += 1
            s.bytes_written += len(data)
        except (PixarcError, OSError) as exc:
            s.problems.append(VerifyProblem(key, getattr(exc, "reason", "io_error"), str(exc)))
        progress.advance(run_id)
    return s


def _source_problem(item: dict) -> VerifyProblem | None:
    """Compare the original (if still there) with the hash archived for it."""
    try:
        fs, path = get_fs(item["source_uri"])
        if not fs.exists(path):
            return VerifyProblem(item["key"], "source_gone", item["source_uri"])
        if sha256_hex(read_regular(fs, path)) != item["source_sha256"]:
            return VerifyProblem(item["key"], "source_changed", "the original no longer matches its archived sha256")
    except (OSError, ValueError, InputError) as exc:
        return VerifyProblem(item["key"], "source_unreadable", str(exc))
    return None


def verify_shard(
    shard: Shard, full: bool, run_id: str, registry: Registry | None = None, sources: bool = False
) -> CheckSummary:
    """Fast: bitstream present with the recorded size. Full: also sha256, decode, pixel check.
    ``sources``: also re-hash the originals (drift or bit rot at the source)."""
    registry = registry or default_registry()
    s = CheckSummary(shard.index)
    for item in load_shard(shard):
        key = item["key"]
        problem = None
        try:
            _unsafe(item)
            bfs, bpath = get_fs(item["bitstream_uri"])
            if not bfs.exists(bpath):
                problem = VerifyProblem(key, "missing", "bitstream missing")
            elif (size := bfs.size(bpath)) != item["bitstream_bytes"]:
                problem = VerifyProblem(key, "size_mismatch", f"{size} bytes, manifest says {item['bitstream_bytes']}")
            elif full:
                blob = bfs.cat_file(bpath)
                if sha256_hex(blob) != item["bitstream_sha256"]:
                    problem = VerifyProblem(key, "hash_mismatch", "bitstream sha256 differs from the manifest")
                else:
                    _decode_item(blob, registry, item)
        except (PixarcError, OSError) as exc:
            problem = VerifyProblem(key, getattr(exc, "reason", "io_error"), str(exc))
        if problem is None and sources:
            problem = _source_problem(item)
        if problem is None:
            s.ok += 1
        else:
            s.problems.append(problem)
        progress.advance(run_id)
    return s


def parse_as_of(text: str) -> datetime:
    """An ISO 8601 time (``2026-11-24``, ``2026-11-24T10:00``, ...); UTC unless it says otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError("usage", f"--as-of {text!r} is not an ISO 8601 time (e.g. 2026-11-24T10:00:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def select_rows(dest: str, version: int | None = None, as_of: datetime | None = None,
                columns: list[str] | None = None) -> list[dict]:
    """The ``done`` row to restore per key: the current one; the one the archive held at
    ``as_of``; or its ``version``-th content (1 = the first archived; versions are the
    distinct source hashes in order). A version re-encoded by recompress is read from its
    newest bitstream: the same content."""
    if version is None and as_of is None:
        return current_rows(dest, columns=columns)
    require_archive(dest)
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "status", "domain", "source_sha256"]))
    history: dict[str, list[dict]] = {}
    for r in sorted(read_manifest(dest, columns=columns, damaged=[]).to_pylist(), key=lambda r: r["created_at"]):
        history.setdefault(r["key"], []).append(r)
    out = []
    for rows in history.values():
        done = [r for r in rows if r["status"] == STATUS_DONE]
        if as_of is not None:
            then = [r for r in rows if r["created_at"] <= as_of]
            if not then or then[-1]["status"] != STATUS_DONE:
                continue
            sha = then[-1]["source_sha256"]
        else:
            versions = list(dict.fromkeys(r["source_sha256"] for r in done))
            if not 1 <= version <= len(versions):
                continue
            sha = versions[version - 1]
        out.append([r for r in done if r["source_sha256"] == sha][-1])
    return out


def plan_restore(
    dest: str, out: str, run_id: str, pattern: str = "*", domain: str | None = None, shard_size: int = 256,
    version: int | None = None, as_of: datetime | None = None,
) -> tuple[int, list[Shard]]:
    rows = select_rows(dest, version, as_of, columns=list(_ROW_FIELDS))
    names = restored_names(rows)
    rows = [{**r, "name": names[r["key"]]} for r in rows
            if fnmatch.fnmatch(r["key"], pattern) and (domain is None or r["domain"] == domain)]
    return len(rows), plan_rows(out, run_id, "restore", rows, shard_size, dest)


def finish_checks(base: str, kind: str, run_id: str, found: int, shards: list[Shard],
                  results: list[CheckSummary]) -> RunSummary:
    """Totals of a restore or verify run; its shard lists are removed."""
    totals = ShardSummary(-1, images=found)
    problems: list[VerifyProblem] = []
    skipped = 0
    for r in results:
        totals.done += r.ok
        totals.archive_bytes += r.bytes_written
        problems.extend(r.problems)
        skipped += r.skipped
    drop_plan(base, kind, run_id)
    return RunSummary(run_id, found, skipped, len(shards), totals, problems)


def plan_verify(dest: str, run_id: str, shard_size: int = 1024) -> tuple[int, list[Shard]]:
    rows = current_rows(dest, columns=list(_ROW_FIELDS))
    return len(rows), plan_rows(dest, run_id, "verify", rows, shard_size, dest)


def restore_local(dest: str, out: str, pattern: str = "*", domain: str | None = None, shard_size: int = 256,
                  run_id: str | None = None, version: int | None = None, as_of: datetime | None = None,
                  overwrite: bool = False) -> RunSummary:
    """``restore`` without Prefect (see :func:`archive_local`)."""
    run_id = run_id or new_run_id()
    found, shards = plan_restore(dest, out, run_id, pattern, domain, shard_size, version, as_of)
    results = [restore_shard(s, out, run_id, overwrite=overwrite) for s in shards]
    summary = finish_checks(out, "restore", run_id, found, shards, results)
    summary.problems[:0] = manifest_problems(dest)
    return summary


def verify_local(
    dest: str, full: bool = False, shard_size: int = 1024, run_id: str | None = None, sources: bool = False
) -> RunSummary:
    """``verify`` without Prefect (see :func:`archive_local`)."""
    run_id = run_id or new_run_id()
    found, shards = plan_verify(dest, run_id, shard_size)
    results = [verify_shard(s, full, run_id, sources=sources) for s in shards]
    summary = finish_checks(dest, "verify", run_id, found, shards, results)
    summary.problems[:0] = manifest_problems(dest)
    return summary
