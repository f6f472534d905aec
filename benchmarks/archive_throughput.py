"""Throughput of the archive job and what Prefect orchestration costs per shard.

    .venv/bin/python benchmarks/archive_throughput.py [SRC] [--repeats N] [--small 1000] [--tax-only]

Measures, in one run on this machine:
0. the per-image tax: ``--small`` generated 64x64 images through ``--policy png``
   (in-process, one shard) against a plain Pillow loop over the same files (read, decode,
   PNG encode at the same level, decode again): the ratio, and the pipeline's own time per
   image (everything but the codec's encode and decode), best of ``--repeats`` each,
   alternated so both see the same machine load; beside them the loop plus the least of
   what the archive promises per image (:func:`promised_loop`: hashes, the round-trip
   comparison, an atomic file; and with the bitstreams packed in one file instead), the
   part of the ratio no pipeline can remove;
1. images/s of the whole archive job (read, hash, classify, route, encode, decode-check,
   atomic write, manifest) with the PNG-only policy, in-process (`archive_local`);
2. the same job through the Prefect flow (temporary local API, warmed up first), with
   one shard per image, so (prefect - local) / shards is the orchestration cost per shard;
3. bytes and speed of each lossless codec on SRC, as ratios to PNG.
Nothing here is a pass/fail threshold: it prints what it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pixarc import runs  # noqa: E402
from pixarc.crawl import crawl  # noqa: E402
from pixarc.images import probe_and_load  # noqa: E402
from pixarc.plugins import default_registry  # noqa: E402
from pixarc.storage import get_fs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def small_images(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 64x64 RGB PNGs (a gradient plus noise: PNG works a little on each)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 64)[None, :, None]
    paths = []
    for i in range(n):
        a = (rng.random((64, 64, 3)) * 40 + ramp).astype(np.uint8)
        paths.append(folder / f"s{i:05d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def pillow_loop(paths: list[Path]) -> float:
    """What any archiver must do per image at the least: read, decode, PNG encode (level 6,
    as the png policy), decode the result."""
    import io

    from PIL import Image

    t0 = time.perf_counter()
    for p in paths:
        im = Image.open(io.BytesIO(p.read_bytes()))
        im.load()
        buf = io.BytesIO()
        im.save(buf, "PNG", compress_level=6)
        Image.open(io.BytesIO(buf.getvalue())).load()
    return time.perf_counter() - t0


def promised_loop(paths: list[Path], out: Path, packed: bool = False) -> float:
    """The Pillow loop plus the least of what an archive promises per image, nothing else:
    the sha256 of the source's bytes and of its pixels, the decoded result compared with the
    source pixels, and the bitstream written to its own file atomically (a temporary file
    renamed into place; no fsync, no container, no manifest row, no plan). ``packed``: the
    bitstreams appended to one file instead (synced once at the end), as an archive that
    packed each shard's bitstreams together would write them."""
    import hashlib
    import io
    import os

    from PIL import Image

    out.mkdir()
    pack = open(out / "pack.bin", "wb") if packed else None
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        im = Image.open(io.BytesIO(data))
        im.load()
        pixels = im.tobytes()
        hashlib.sha256(pixels).hexdigest()
        buf = io.BytesIO()
        im.save(buf, "PNG", compress_level=6)
        back = Image.open(io.BytesIO(buf.getvalue()))
        back.load()
        if back.tobytes() != pixels:
            raise AssertionError(f"{p}: PNG did not round-trip")
        if pack is not None:
            pack.write(buf.getvalue())
            continue
        tmp = out / f".{i}.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out / f"{i}.png")
    if pack is not None:
        pack.flush()
        os.fsync(pack.fileno())
        pack.close()
    return time.perf_counter() - t0


def per_image_tax(tmp: Path, n: int, repeats: int) -> None:
    paths = small_images(tmp / "small", n)
    runs.archive_local(str(tmp / "small"), str(tmp / "tax-warm"), policy="png", shard_size=n)  # imports, caches
    plain, promised, packed, piped = [], [], [], []
    for i in range(repeats):  # alternated: all see the same load (a training shares the machine)
        plain.append(pillow_loop(paths))
        promised.append(promised_loop(paths, tmp / f"promised-{i}"))
        packed.append(promised_loop(paths, tmp / f"packed-{i}", packed=True))
        t, s = timed(runs.archive_local, str(tmp / "small"), str(tmp / f"tax-{i}"), policy="png", shard_size=n)
        assert s.totals.done == n
        piped.append(t)
    tp, tm, ta = min(plain), min(promised), min(piped)
    print(f"per-image tax on {n} images of 64x64 (best of {repeats}): Pillow loop {tp:.2f} s "
          f"({1000 * tp / n:.2f} ms/img), archive --policy png {ta:.2f} s ({1000 * ta / n:.2f} ms/img): "
          f"ratio {ta / tp:.2f}, pipeline overhead {1000 * (ta - tp) / n:.2f} ms per image; the loop plus "
          f"the hashes, the round-trip comparison and an atomic file per image alone: {1000 * tm / n:.2f} ms/img, "
          f"ratio {tm / tp:.2f}; with the bitstreams appended to one file instead: {1000 * min(packed) / n:.2f} "
          f"ms/img, ratio {min(packed) / tp:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", nargs="?", default=str(ROOT / "examples" / "images"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small", type=int, default=1000, help="images for the per-image tax (0: skip it)")
    ap.add_argument("--tax-only", action="store_true", help="only the per-image tax")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pixarc-bench-"))
    if args.small:
        per_image_tax(tmp, args.small, args.repeats)
    if args.tax_only:
        return
    n = sum(1 for _ in crawl(args.src))
    print(f"source: {args.src} ({n} objects), cpu count {os.cpu_count()}")

    # 1. in-process throughput, PNG policy, one shard
    local_times = []
    for i in range(args.repeats):
        t, s = timed(runs.archive_local, args.src, str(tmp / f"local-{i}"), policy="png", shard_size=1000)
        assert s.totals.done == n
        local_times.append(t)
    t_local = statistics.median(local_times)
    print(f"archive (local engine, PNG): median {t_local:.2f} s -> {n / t_local:.1f} images/s")

    # 2. Prefect overhead per shard: one image per shard, both engines, after a warm-up
    from prefect.task_runners import ThreadPoolTaskRunner

    from pixarc.flows import archive_flow

    flow = archive_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    t_start, _ = timed(flow, src=args.src, dest=str(tmp / "warm"), policy="png", shard_size=1000)
    pre, loc = [], []
    for i in range(args.repeats):
        t, s = timed(flow, src=args.src, dest=str(tmp / f"pf-{i}"), policy="png", shard_size=1)
        pre.append(t)
        t2, _ = timed(runs.archive_local, args.src, str(tmp / f"l1-{i}"), policy="png", shard_size=1)
        loc.append(t2)
    tp, tl = statistics.median(pre), statistics.median(loc)
    print(f"first Prefect flow (starts the temporary local API): {t_start:.2f} s")
    print(f"{n} shards of 1 image: prefect {tp:.2f} s, local {tl:.2f} s -> "
          f"orchestration {1000 * (tp - tl) / n:.0f} ms per shard ({100 * (tp - tl) / tl:.0f} % of the work at 1 image/shard)")
    per_image = tl / n
    for shard in (100, 1000):
        print(f"  at {shard} images/shard that is {100 * (tp - tl) / n / (per_image * shard):.2f} % of PNG work")

    # 3. lossless codecs on the same images, relative to PNG
    reg = default_registry()
    sources = []
    for ref in crawl(args.src):
        fs, path = get_fs(ref.uri)
        src = probe_and_load(fs.cat_file(path))
        if src.image is not None:
            sources.append(src)
    pixels = sum(s.info.pixels for s in sources)
    results = {}
    for cid, params in (("png", {"compress_level": 9}), ("webp-lossless", {"method": 4}), ("jxl-lossless", {"effort": 7})):
        codec = reg.codec(cid)
        p = codec.validate_params(params)
        t0 = time.perf_counter()
        total = sum(len(codec.encode(s, p)) for s in sources)
        results[cid] = (total, time.perf_counter() - t0)
    base_bytes, base_t = results["png"]
    print(f"\nlossless codecs on {len(sources)} images ({pixels / 1e6:.1f} MP):")
    print(f"{'codec':15s} {'bpp':>7s} {'bytes/PNG':>10s} {'MP/s':>7s} {'time/PNG':>9s}")
    for cid, (b, t) in results.items():
        print(f"{cid:15s} {8 * b / pixels:7.3f} {b / base_bytes:10.3f} {pixels / 1e6 / t:7.2f} {t / base_t:9.2f}")


if __name__ == "__main__":
    main()
