"""# pixarc in ten minutes: archive, inspect, restore, verify

Run it: `.venv/bin/python examples/walkthrough.py [WORKDIR]` (after `make setup`).

This script is the literate tour of pixarc's main job on the bundled collection
(`examples/images`: 25 real images over five domains plus a JPEG, a greyscale PNG and a
palette GIF). Everything runs locally: the Prefect flows start a temporary local API,
the archive goes to a folder. Swap the paths for `s3://...`, `zip://...` or any fsspec
URL and nothing else changes.
"""

# ## Setup
# The flows are plain Prefect flows; the CLI (`pixarc archive ...`) calls the same ones.
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pixarc import runs  # noqa: E402
from pixarc.flows import archive_flow, restore_flow, verify_flow  # noqa: E402
from pixarc.manifest import latest, read_manifest  # noqa: E402

HERE = Path(__file__).resolve().parent
work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="pixarc-walkthrough-"))
src, dest, out = HERE / "images", work / "archive", work / "restored"

# ## 1. Archive
# One flow run; the crawl writes shard lists, one Prefect task archives each shard.
# Each image is read once, hashed, classified, routed by the policy (here the default:
# lossless, JPEG XL / WebP / PNG by domain, the original bytes as the last resort),
# encoded, **decoded again and checked**, then written atomically. Each shard commits
# one immutable Parquet part of the manifest.
summary = archive_flow(src=str(src), dest=str(dest), shard_size=10)
print(f"archived {summary.totals.done}/{summary.found} in {summary.shards} shards")
assert summary.totals.done == summary.found

# ## 2. The manifest is a Parquet dataset
# One row per attempt; `latest` gives the current state per key. Every column of the
# design card is there: hashes, codec and plugin versions, bpp, PSNR, MS-SSIM, timings.
rows = latest(read_manifest(str(dest))).to_pylist()
for r in rows[:5]:
    print(f"{r['key']:45s} {r['domain']:10s} {r['codec_id']:14s} {r['bpp']:.3f} bpp  {r['notes'][:40]}")
saved = sum(r["source_bytes"] for r in rows) - sum(r["bitstream_bytes"] for r in rows)
print(f"bytes saved versus the originals: {saved / 1e6:.2f} MB")

# ## 3. Re-running is free
# Unchanged objects (same URI, size and mtime as their newest row) are skipped; changed
# ones are archived again. An interrupted run resumes: bitstreams already written are
# decode-checked and reused instead of re-encoded.
again = archive_flow(src=str(src), dest=str(dest))
print(f"second run: {again.skipped} skipped, {again.totals.images} processed")
assert again.totals.images == 0

# ## 4. Restore
# Lossless rows restore to the original format when it can hold the pixels (PNG, TIFF,
# BMP, PPM) and to `<name>.png` otherwise; the JPEG source comes back as exact pixels.
restored = restore_flow(dest=str(dest), out=str(out))
print(f"restored {restored.totals.done} images into {out}")
assert not restored.problems

# ## 5. Verify, and catch damage
# Fast mode checks presence and size; full mode re-reads, re-hashes and re-decodes.
# Here one bit of one bitstream is flipped behind pixarc's back.
victim = dest / (rows[0]["key"] + ".pxa")
data = bytearray(victim.read_bytes())
data[len(data) // 2] ^= 1
victim.write_bytes(bytes(data))
from pixarc.runs import ProblemsFound  # noqa: E402

fast = verify_flow(dest=str(dest))
try:  # a verify that finds problems ends its flow run Failed; the summary comes with it
    full = verify_flow(dest=str(dest), full=True)
except ProblemsFound as exc:
    full = exc.summary
print(f"fast verify problems: {len(fast.problems)}; full verify problems: {[p.problem for p in full.problems]}")
assert not fast.problems and [p.key for p in full.problems] == [rows[0]["key"]]

# ## 6. Without Prefect
# The same shard functions run in-process, for embedding or to measure orchestration cost.
local = runs.verify_local(str(dest), full=True)
assert len(local.problems) == 1
print("walkthrough complete:", work)
