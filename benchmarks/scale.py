"""Scale: crawl + hash + classify + manifest for 100 000 small images, memory and throughput.

    .venv/bin/python benchmarks/scale.py [--n 100000] [--shard-size 1000] [--workdir /tmp/pixarc-scale]

1. Generates N small PNGs (16..96 px, crops of the images in ../shared/data/dev, evaluation
   data, never used for training) once, cached under the workdir.
2. Runs the archive pipeline *minus the codec* (crawl, plan into shard lists, read, sha256,
   decode + canonicalise, classify, route, manifest part per shard) in a fresh process for
   N/10, N/2 and N images, reporting images/s and peak RSS, so memory flatness is visible.
3. Times PNG encode + decode-check of a sample, the cost the pipeline overhead is compared to.
4. Runs the same index shards as Prefect tasks and in-process: Prefect overhead per shard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "dev"


def generate(target: Path, n: int) -> None:
    from PIL import Image

    marker = target / f".complete-{n}"
    if marker.exists():
        return
    sources = sorted(DEV.glob("*/*.png")) or sorted((ROOT / "examples" / "images").rglob("*.png"))
    images = [Image.open(p).convert("RGB") for p in sources]
    rng = random.Random(0)
    for i in range(n):
        im = images[i % len(images)]
        w, h = rng.randint(16, 96), rng.randint(16, 96)
        x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
        d = target / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        im.crop((x, y, x + w, y + h)).save(d / f"{i:07d}.png", compress_level=1)
    marker.write_text("ok")


def index_shard(shard, dest: str, run_id: str) -> int:
    """Everything the archive job does per image except the codec (the pipeline overhead)."""
    from pixarc.archive import cached_policy, source_row
    from pixarc.crawl import ImageRef
    from pixarc.intake import intake
    from pixarc.manifest import rows_to_table, write_part
    from pixarc.plan import load_shard
    from pixarc.plugins import default_registry

    reg = default_registry()
    policy = cached_policy(None)
    rows = []
    for item in load_shard(shard):
        ref = ImageRef(**{k: v for k, v in item.items() if k != "replaces"})
        rows.append(source_row(intake(ref, policy, reg), run_id, shard.index))  # read, probe, classify, route
    write_part(dest, run_id, shard.index, rows_to_table(rows))
    return len(rows)


def run_index(src: str, dest: str, shard_size: int) -> dict:
    from pixarc.archive import ArchiveJob
    from pixarc.plan import new_run_id

    t0 = time.perf_counter()
    run_id = new_run_id()
    plan = ArchiveJob(src, dest, run_id, shard_size=shard_size, follow_symlinks=True).plan()
    t_plan = time.perf_counter() - t0
    n = sum(index_shard(s, dest, run_id) for s in plan.shards)
    total = time.perf_counter() - t0
    return {"images": n, "seconds": total, "plan_s": t_plan,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(args) -> None:
    """One measurement in a fresh process (so peak RSS is this run's alone)."""
    print(json.dumps(run_index(args.src, args.dest, args.shard_size)))


def png_cost(src_dir: Path, sample: int = 500) -> float:
    from pixarc.device import CPU
    from pixarc.encode import encode_verified
    from pixarc.images import probe_and_load
    from pixarc.plugins import default_registry

    files = sorted(src_dir.rglob("*.png"))[:sample]
    codec = default_registry().codec("png")
    params = codec.validate_params({"compress_level": 6})
    srcs = [probe_and_load(p.read_bytes()) for p in files]
    t0 = time.perf_counter()
    for s in srcs:
        encode_verified(codec, params, s, "x", CPU)
    return (time.perf_counter() - t0) / len(srcs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workdir", default="/tmp/pixarc-scale")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--src")
    ap.add_argument("--dest")
    args = ap.parse_args()
    if args.child:
        return child(args)

    work = Path(args.workdir)
    src = work / f"images-{args.n}"
    t0 = time.perf_counter()
    generate(src, args.n)
    print(f"collection: {args.n} PNGs under {src} (ready in {time.perf_counter() - t0:.0f} s)")

    results = []
    for n in sorted({args.n // 10, args.n // 2, args.n}):
        sub = work / f"view-{n}"
        if not sub.exists():  # a collection of n images: the first n/1000 folders
            sub.mkdir(parents=True)
            for d in [d for d in sorted(src.iterdir()) if d.is_dir()][: max(1, n // 1000)]:
                (sub / d.name).symlink_to(d)
        dest = work / f"dest-{n}-{time.time_ns()}"
        out = subprocess.run([sys.executable, __file__, "--child", "--src", str(sub), "--dest", str(dest),
                              "--shard-size", str(args.shard_size)], capture_output=True, text=True, check=True,
)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['images']:>7d} images: {r['seconds']:7.1f} s ({r['images'] / r['seconds']:6.0f} images/s, "
              f"plan {r['plan_s']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB")

    per_image = results[-1]["seconds"] / results[-1]["images"]
    png = png_cost(src)
    print(f"pipeline without codec: {1000 * per_image:.2f} ms/image; PNG encode + decode-check: {1000 * png:.2f} ms/image")
    print(f"pipeline overhead = {100 * per_image / png:.0f} % of PNG encode time on these small images")

    # Prefect overhead per shard, at this shard size
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    from pixarc.archive import ArchiveJob
    from pixarc.plan import new_run_id

    n_small = min(args.n, 20 * args.shard_size)
    sub = work / f"view-{n_small}"
    if not sub.exists():
        sub.mkdir(parents=True)
        for d in [d for d in sorted(src.iterdir()) if d.is_dir()][: max(1, n_small // 1000)]:
            (sub / d.name).symlink_to(d)

    @task(cache_policy=NO_CACHE)
    def index_task(shard, dest: str, run_id: str) -> int:
        return index_shard(shard, dest, run_id)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def index_flow(shards, dest: str, run_id: str) -> int:
        return sum(f.result() for f in [index_task.submit(s, dest, run_id) for s in shards])

    dest = str(work / f"pf-{time.time_ns()}")
    run_id = new_run_id()
    shards = ArchiveJob(str(sub), dest, run_id, shard_size=args.shard_size, follow_symlinks=True).plan().shards
    index_flow(shards[:1], dest + "-warm", run_id)  # start the temporary API outside the timing
    t0 = time.perf_counter()
    index_flow(shards, dest, run_id)
    t_prefect = time.perf_counter() - t0
    run2 = new_run_id()
    shards2 = ArchiveJob(str(sub), dest + "-local", run2, shard_size=args.shard_size, follow_symlinks=True).plan().shards
    t0 = time.perf_counter()
    for s in shards2:
        index_shard(s, dest + "-local", run2)
    t_local = time.perf_counter() - t0
    over = (t_prefect - t_local) / len(shards)
    print(f"Prefect: {len(shards)} shards of {args.shard_size}: {t_prefect:.1f} s vs {t_local:.1f} s in-process -> "
          f"{1000 * over:.0f} ms per shard = {100 * over / (png * args.shard_size):.2f} % of the shard's PNG work")


if __name__ == "__main__":
    main()
