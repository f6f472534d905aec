"""Manifest rows of an object: as intake left it, filled from a verified encoding, the
plugins' own columns, the error row of an object whose handling raised, and a shard's
part (a row the manifest cannot hold becomes its object's error row).

Archive, recompress and repair all build their rows here, so a row means the same
whichever job wrote it.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .codec import params_hash
from .encode import Encoded
from .images import sha256_hex
from .intake import Intake
from .manifest import STATUS_DONE, STATUS_ERROR, STATUS_REJECTED, ManifestRow, rows_to_table
from .plugins import Registry


def source_row(it: Intake, run_id: str, shard: int) -> ManifestRow:
    """The row of an object as intake left it (final already when intake refused it)."""
    ref = it.ref
    row = ManifestRow(run_id, shard, ref.key, ref.uri, STATUS_DONE, source_bytes=ref.size, source_mtime=ref.mtime,
                      pixarc_version=__version__)
    if it.error is not None:
        row.status = STATUS_REJECTED if it.rejected else STATUS_ERROR
        row.error, row.message, row.notes = it.error.reason, str(it.error), "; ".join(it.notes)
        return row
    src, info = it.src, it.src.info
    row.source_sha256, row.source_bytes, row.source_format = src.sha256, len(src.data), info.source_format
    row.width, row.height, row.mode, row.bit_depth = info.width, info.height, info.mode, info.bit_depth
    row.pixels_sha256 = src.pixels_sha256
    c = it.classification
    row.domain, row.domain_confidence, row.classifier_id, row.classify_s = (
        c.domain, c.confidence, c.classifier_id, it.classify_s)
    row.route = it.route.domain
    return row


def fill_encoded(row: ManifestRow, enc: Encoded, registry: Registry, bitstream_rel: str) -> None:
    """Fill ``row`` from a verified encoding stored at ``bitstream_rel`` (under DEST)."""
    codec = enc.codec
    row.codec_id, row.codec_version, row.format_version = codec.codec_id, codec.version(), codec.format_version
    row.weights_sha256 = codec.weights_for(enc.params)
    row.params, row.params_hash = dict(enc.params), params_hash(enc.params)
    row.plugin_dist, row.plugin_version = registry.provenance(codec.codec_id)
    row.bitstream_uri = bitstream_rel
    row.bitstream_sha256, row.bitstream_bytes = sha256_hex(enc.blob), len(enc.blob)
    row.bpp = 8.0 * len(enc.blob) / max(1, row.width * row.height)
    row.psnr, row.ms_ssim = enc.psnr, enc.ms_ssim
    row.lossless = codec.lossless
    row.decoded_sha256 = enc.decoded_sha256
    row.encode_s, row.decode_s = enc.encode_s, enc.decode_s
    row.device = str(enc.device)  # what actually ran
    row.verified = True
    row.status = STATUS_DONE


def plugin_columns(registry: Registry) -> dict[str, Any]:
    """Extra manifest columns plugins declare (``manifest_columns`` hook)."""
    cols: dict[str, Any] = {}
    for answer in registry.pm.hook.manifest_columns():
        if answer:
            cols.update(answer)
    return cols


def fill_plugin_columns(row: ManifestRow, registry: Registry, columns: dict[str, Any]) -> None:
    """Values of the plugins' columns for a finished row (``manifest_values`` hook)."""
    if not columns:
        return
    for answer in registry.pm.hook.manifest_values(row=row):
        for name, value in (answer or {}).items():
            if name in columns:
                row.extra[name] = value


def failed_row(row: ManifestRow, exc: BaseException) -> ManifestRow:
    """The error row of an object whose handling raised (a codec or plugin bug, a name the
    manifest cannot hold...): only what any row can hold, and why."""
    reason = getattr(exc, "reason", "") or "internal_error"
    message = f"{type(exc).__name__}: {exc}"
    return ManifestRow(row.run_id, row.shard, row.key, row.source_uri, STATUS_ERROR, source_bytes=row.source_bytes,
                       source_mtime=row.source_mtime, source_sha256=row.source_sha256, error=reason,
                       message=message, pixarc_version=row.pixarc_version)


def manifest_table(rows: list[ManifestRow], columns: dict[str, Any]) -> tuple[list[ManifestRow], Any]:
    """The shard's part. A row the manifest cannot hold (a plugin column of the wrong type,
    text Parquet refuses) becomes that object's error row; the others commit."""
    try:
        return rows, rows_to_table(rows, columns)
    except Exception:  # rare: find the culprit(s) row by row
        kept = []
        for r in rows:
            try:
                rows_to_table([r], columns)
            except Exception as exc:
                r = failed_row(r, exc)
            kept.append(r)
        return kept, rows_to_table(kept, columns)
