"""The ``lossy`` policy against plain AVIF, on the same images, in one run.

    .venv/bin/python benchmarks/lossy_policy.py [DEV_DIR] [--quality 60] [--reference 2] [--domains natural,comic]
        [--registry run|image] [--workers N [--rounds 3]] [--floor] [--policy lossy]

Measures, in this process, one domain folder of DEV_DIR after another (``archive_local``,
one worker, the same for both), each image archived alone by one then the other, so both
see the same machine load (after one warm-up image each, not counted):
1. ``--policy lossy`` (RD selection at ``target_psnr`` on natural/comic, lossless elsewhere);
2. plain AVIF at one fixed quality (``--quality``, speed 6, 4:4:4: the lossy policy's AVIF
   settings) on every image, ``selection = "first"``;
and prints per domain: seconds per image, bytes, mean PSNR / MS-SSIM, wins per codec, and
the ratio of the two times (wall clock, and process CPU seconds).

``--reference N``: on N images per lossy domain, also today's selection before the fast
rate search (a bisection of every lossy candidate's rate parameter in which every probe is
a full, decode-checked encode; the screened adaptive codec left out, as it is screened
out on these images), to compare bytes and time with the selection the policy made.
``--registry``: ``run`` (default) gives each policy one registry for all its images, as one
archive run over the collection has (its plugins and models load once, in the warm-up);
``image`` makes a fresh one per image (each image then pays the plugin and model loads).
``--workers N`` (N > 1): the domain folders as one collection, archived in one run per
policy on N workers as ``pixarc archive DEV --workers N`` runs it (its default is 2), over
``--rounds`` rounds with the policies' order swapped every round; per domain the seconds a
worker spent per image (from the rows), per round the whole run's wall clock and CPU per
image, and the median of the rounds' ratios. (Until 2026-12-07 each domain folder was its
own run of N shards, which paid the last image's wait on the other worker five times.)
``--floor`` (one worker): after each image's ``lossy`` run, the same image with only the
codec and parameters its row kept (:func:`kept_policy`: no classifier, no search, no
screening, no other candidate), timed the same way: what any selection ending in those
bitstreams pays at least (one encode, its decode check, the metrics), so the table shows
how much of the policy's time is the search.
Nothing here is a pass/fail threshold: it prints what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pixarc import runs  # noqa: E402
from pixarc.classify import DOMAINS  # noqa: E402
from pixarc.device import CPU  # noqa: E402
from pixarc.encode import encode_verified  # noqa: E402
from pixarc.images import probe_and_load  # noqa: E402
from pixarc.manifest import latest, read_manifest  # noqa: E402
from pixarc.plugins import default_registry  # noqa: E402
from pixarc.policy import load_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "dev"
LOSSY = "lossy"  # the policy measured (--policy)


def one_codec_policy(path: Path, codec: str, params: dict, lossless: bool) -> str:
    """A policy file that sends every image to ``codec`` with ``params`` and nothing else:
    no classifier worth the name (``stats``, every image below its confidence, so the
    ``unknown`` route), no search, no other candidate."""
    import json

    lines = ['selection = "first"', 'classifier = "stats"', "min_confidence = 1.1", f"[params.{codec}]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in sorted(params.items()) if v is not None]
    lines += ["[routes.unknown]", f"lossless = {json.dumps(bool(lossless))}", f'codecs = ["{codec}"]']
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def avif_policy(path: Path, quality: int) -> str:
    return one_codec_policy(path, "avif", {"quality": quality, "speed": 6, "subsampling": "4:4:4"}, False)


def kept_policy(path: Path, row: dict) -> str:
    """A policy that encodes one image with the codec and parameters a ``lossy`` row kept,
    nothing else (no classifier, no search, no screening, no other candidate): what any
    selection that ends in that bitstream must pay at least (one encode, its decode check,
    the metrics). The floor a better rate search could reach."""
    import json

    params = row["params"] if isinstance(row["params"], dict) else json.loads(row["params"] or "{}")
    return one_codec_policy(path, row["codec_id"], params, row["lossless"])


def run(src: Path, dest: Path, policy: str, registry=None, workers: int = 1) -> tuple[float, float, list[dict]]:
    """(wall seconds, process CPU seconds, done rows) of one archive run (``registry``: the
    plugins, and the models they loaded, to run with; None: a fresh registry), on ``workers``
    workers, the shards planned as ``pixarc archive`` plans them."""
    t0, c0 = time.perf_counter(), time.process_time()
    runs.archive_local(str(src), str(dest), policy=policy, registry=registry, workers=workers)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, [r for r in latest(read_manifest(str(dest))).to_pylist() if r["status"] == "done"]


def alternated(folder: Path, tmp: Path, policies: dict[str, str],
               registries: dict[str, object], floor: bool = False) -> dict[str, tuple[float, float, list[dict]]]:
    """Each image of ``folder`` archived alone with each policy in turn, so every policy sees
    the same machine load (a training or a test suite may share the machine): per policy,
    summed wall and CPU seconds and the rows. ``registries``: per policy, the registry its
    runs share (absent: a fresh one per image). ``floor``: after each image, also
    :func:`kept_policy` of its ``lossy`` row, as the policy ``floor`` (same registry as
    ``lossy``)."""
    out = {name: [0.0, 0.0, []] for name in (*policies, *(("floor",) if floor else ()))}
    for i, path in enumerate(sorted(folder.iterdir())):
        one = tmp / f"src-{folder.name}-{i}"
        one.mkdir()
        shutil.copy2(path, one / path.name)
        todo = list(policies.items())
        while todo:
            name, policy = todo.pop(0)
            t, c, rows = run(one, tmp / f"{name}-{folder.name}-{i}", policy, registries.get(name))
            out[name][0] += t
            out[name][1] += c
            out[name][2] += rows
            if floor and name == "lossy" and rows:
                todo.append(("floor", kept_policy(tmp / f"floor-{folder.name}-{i}.toml", rows[0])))
                registries.setdefault("floor", registries.get("lossy"))
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def collection(dev: Path, tmp: Path, domains: list[str], policies: dict[str, str], registries: dict[str, object],
               workers: int, rounds: int) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[dict]]]:
    """The domain folders as one collection, archived in one run per policy on ``workers``
    workers (as ``pixarc archive DEV --workers N`` runs it), ``rounds`` times, the policies'
    order swapped every round so neither always runs first on a machine whose speed drifts:
    per policy, (wall, CPU seconds) of each round, and the last round's rows (each row's key
    starts with its domain folder)."""
    src = dev
    if sorted(domains) != sorted(p.name for p in dev.iterdir() if p.is_dir()):
        src = tmp / "collection"
        for d in domains:
            shutil.copytree(dev / d, src / d)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in policies}
    rows: dict[str, list[dict]] = {}
    for r in range(rounds):
        order = list(policies.items()) if r % 2 == 0 else list(policies.items())[::-1]
        for name, policy in order:
            from pixarc import ratesearch

            ratesearch.forget()  # every round starts as a fresh process does
            with per_image_seconds() as seconds:
                t, c, rows[name] = run(src, tmp / f"{name}-all-{r}", policy, registries.get(name), workers)
            for row in rows[name]:
                row["worker_s"] = seconds.get(row["key"], math.nan) + row["classify_s"]
            times[name].append((t, c))
    return times, rows


@contextlib.contextmanager
def per_image_seconds():
    """Wall seconds each image took in its worker (``archive_one``: the codecs' search,
    encodes, decode checks, metrics and writes; the row's ``classify_s`` adds intake's
    classification), by key: the rows' own ``encode_s`` is the kept encode's alone."""
    from pixarc import archive

    seen: dict[str, float] = {}
    real = archive.archive_one

    def timed(it, row, *a, **kw):
        t0 = time.perf_counter()
        try:
            return real(it, row, *a, **kw)
        finally:
            seen[it.key] = time.perf_counter() - t0

    archive.archive_one = timed
    try:
        yield seen
    finally:
        archive.archive_one = real


def print_collection(dev: Path, tmp: Path, domains: list[str], policies: dict[str, str],
                     registries: dict[str, object], workers: int, rounds: int) -> dict[str, dict]:
    """:func:`collection`'s table: per domain (the last round's rows) the seconds a worker
    spent per image, bytes, PSNR, MS-SSIM and wins; then each round's wall clock and CPU
    seconds per image and the ratios, and their median: the result. The lossy rows by
    ``domain/name``."""
    times, rows = collection(dev, tmp, domains, policies, registries, workers, rounds)
    by_domain = {name: defaultdict(list) for name in rows}
    for name, rs in rows.items():
        for r in rs:
            by_domain[name][r["key"].split("/")[0]].append(r)
    for d in domains:
        lr, ar = by_domain["lossy"][d], by_domain["avif"][d]
        if not lr or not ar:
            print(f"{d:10s}  no rows")
            continue
        tl, ta = sum(r["worker_s"] for r in lr), sum(r["worker_s"] for r in ar)
        wins = Counter(r["codec_id"] for r in lr)
        print(f"{d:10s} {len(lr):2d} | {tl / len(lr):11.2f} {ta / len(ar):10.2f} {tl / ta:5.1f} {'':>5s} | "
              f"{sum(r['bitstream_bytes'] for r in lr):11d} {sum(r['bitstream_bytes'] for r in ar):10d} | "
              f"{mean(r['psnr'] for r in lr):8.2f} {mean(r['psnr'] for r in ar):7.2f} | "
              f"{mean(r['ms_ssim'] for r in lr):13.4f} {mean(r['ms_ssim'] for r in ar):12.4f} | "
              + ", ".join(f"{c} {k}" for c, k in wins.most_common()), flush=True)
    n = len(rows["lossy"])
    ratios, cpu_ratios = [], []
    for r, ((wl, cl), (wa, ca)) in enumerate(zip(times["lossy"], times["avif"])):
        ratios.append(wl / wa)
        cpu_ratios.append(cl / ca)
        print(f"{'round ' + str(r + 1):10s} {n:2d} | {wl / n:11.2f} {wa / n:10.2f} {wl / wa:5.2f} {cl / ca:5.2f} | "
              f"(wall clock and CPU seconds of the whole run per image, {workers} workers)")
    wins = Counter(r["codec_id"] for r in rows["lossy"])
    print(f"{'all':10s} {n:2d} | median ratio {statistics.median(ratios):.2f} (CPU {statistics.median(cpu_ratios):.2f}) | "
          f"{sum(r['bitstream_bytes'] for r in rows['lossy']):11d} {sum(r['bitstream_bytes'] for r in rows['avif']):10d} | "
          "wins: " + ", ".join(f"{c} {k}" for c, k in wins.most_common()))
    print("(per domain: seconds a worker spent per image, from the rows, while the other worker ran beside it; "
          "rounds: the whole run's wall clock and process CPU per image, the policies' order swapped every round; "
          "lossless rows count as exact and are left out of the dB means)")
    return {r["key"]: r for r in rows["lossy"]}


def bisected_selection(path: Path, domain: str) -> tuple[int, str, float]:
    """Today's selection before this change, for one image: every lossy candidate of the
    lossy policy's route bisected with full encodes; (bytes, codec, seconds)."""
    policy, reg = load_policy(LOSSY), default_registry()
    route = policy.routes[domain]
    src = probe_and_load(path.read_bytes())
    kind, goal = route.target
    best: tuple[int, str] | None = None
    t0 = time.perf_counter()
    for cid in route.codecs:
        if cid not in reg.codecs:
            continue
        codec = reg.codec(cid)
        if codec.screened or codec.unsupported_reason(src.info):
            continue
        params = codec.validate_params(policy.params_for(cid, route))
        values = codec.rate_values(params)
        lo, hi, kept = 0, len(values) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            enc = encode_verified(codec, {**params, codec.rate_param: values[mid]}, src, domain, CPU)
            if enc.psnr >= goal:
                kept, hi = enc, mid - 1
            else:
                lo = mid + 1
        if kept is not None and (best is None or len(kept.blob) < best[0]):
            best = (len(kept.blob), cid)
    return (*(best or (0, "-")), time.perf_counter() - t0)


def mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else math.nan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev", nargs="?", default=str(DEV))
    ap.add_argument("--quality", type=int, default=60, help="plain AVIF's fixed quality")
    ap.add_argument("--reference", type=int, default=2, help="images per lossy domain for today's bisection (0: none)")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--workers", type=int, default=1,
                    help="1: each image archived alone (one worker), the policies alternated per image; N > 1: "
                         "the domain folders as one collection in one run per policy on N workers, as "
                         "`pixarc archive DEV --workers N` (its default: 2) runs it")
    ap.add_argument("--rounds", type=int, default=3,
                    help="with --workers N > 1: runs per policy, alternated (the median ratio is the result)")
    ap.add_argument("--policy", default="lossy",
                    help="the policy measured as `lossy` (a built-in name or a file: e.g. an earlier lossy.toml)")
    ap.add_argument("--floor", action="store_true",
                    help="also each image with only the codec and parameters its lossy row kept (no search, no "
                         "classifier, no other candidate; one worker): the least any selection ending in the same "
                         "bitstreams pays")
    ap.add_argument("--registry", choices=("run", "image"), default="run",
                    help="run: each policy's images share one registry, as the images of one archive run do "
                         "(plugins and models load once); image: a fresh registry per image (every image "
                         "pays the plugin and model loads)")
    args = ap.parse_args()
    global LOSSY
    LOSSY = args.policy
    dev, tmp = Path(args.dev), Path(tempfile.mkdtemp(prefix="pixarc-lossy-"))
    plain = avif_policy(tmp / "avif.toml", args.quality)
    lossy_routes = {d for d, r in load_policy(LOSSY).routes.items() if not r.lossless}
    print(f"source: {dev}, cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; policy {LOSSY}; "
          f"plain AVIF q{args.quality}; "
          f"registry per {args.registry}; "
          + ("each image alone, one worker" if args.workers == 1 else
             f"the collection in one run per policy on {args.workers} workers, {args.rounds} rounds"))
    registries = {"lossy": default_registry(), "avif": default_registry()} if args.registry == "run" else {}
    # warm-up (imports, model loads, first plugin calls), not counted
    first = next(p for d in args.domains.split(",") for p in sorted((dev / d).iterdir()))
    (tmp / "warm").mkdir()
    shutil.copy2(first, tmp / "warm" / first.name)
    for name, policy in (("lossy", LOSSY), ("avif", plain)):
        run(tmp / "warm", tmp / f"warm-{name}", policy, registries.get(name))
    from pixarc import ratesearch

    ratesearch.forget()  # the rate search's model starts empty, as in a fresh process
    hdr = (f"{'domain':10s} {'n':>2s} | {'lossy s/img':>11s} {'avif s/img':>10s} {'ratio':>5s} {'cpu':>5s} | "
           f"{'lossy bytes':>11s} {'avif bytes':>10s} | {'lossy dB':>8s} {'avif dB':>7s} | "
           f"{'lossy MS-SSIM':>13s} {'avif MS-SSIM':>12s} | wins")
    print(hdr)
    lossy_rows: dict[str, dict] = {}
    if args.workers > 1:
        lossy_rows = print_collection(dev, tmp, args.domains.split(","), {"lossy": LOSSY, "avif": plain},
                                      registries, args.workers, args.rounds)
    else:
        totals = defaultdict(float)
        all_wins: Counter = Counter()
        for domain in args.domains.split(","):
            folder = dev / domain
            n = sum(1 for _ in folder.iterdir())
            res = alternated(folder, tmp, {"lossy": LOSSY, "avif": plain}, registries, floor=args.floor)
            (t_lossy, c_lossy, rows), (t_avif, c_avif, arows) = res["lossy"], res["avif"]
            wins = Counter(r["codec_id"] for r in rows)
            all_wins.update(wins)
            for r in rows:
                lossy_rows[f"{domain}/{r['key']}"] = r
            lb, ab = sum(r["bitstream_bytes"] for r in rows), sum(r["bitstream_bytes"] for r in arows)
            for k, v in (("lossy_s", t_lossy), ("avif_s", t_avif), ("lossy_c", c_lossy), ("avif_c", c_avif),
                         ("lossy_b", lb), ("avif_b", ab), ("n", n)):
                totals[k] += v
            print(f"{domain:10s} {n:2d} | {t_lossy / n:11.2f} {t_avif / n:10.2f} {t_lossy / t_avif:5.1f} "
                  f"{c_lossy / c_avif:5.1f} | "
                  f"{lb:11d} {ab:10d} | {mean(r['psnr'] for r in rows):8.2f} {mean(r['psnr'] for r in arows):7.2f} | "
                  f"{mean(r['ms_ssim'] for r in rows):13.4f} {mean(r['ms_ssim'] for r in arows):12.4f} | "
                  + ", ".join(f"{c} {k}" for c, k in wins.most_common()), flush=True)
            if "floor" in res:
                t_floor, c_floor, frows = res["floor"]
                fb = sum(r["bitstream_bytes"] for r in frows)
                totals["floor_s"] += t_floor
                totals["floor_c"] += c_floor
                totals["floor_b"] += fb
                print(f"{'  floor':10s} {len(frows):2d} | {t_floor / n:11.2f} {'':10s} {t_floor / t_avif:5.1f} "
                      f"{c_floor / c_avif:5.1f} | {fb:11d} (the kept codecs and parameters alone)", flush=True)
        n = totals["n"]
        print(f"{'all':10s} {int(n):2d} | {totals['lossy_s'] / n:11.2f} {totals['avif_s'] / n:10.2f} "
              f"{totals['lossy_s'] / totals['avif_s']:5.1f} {totals['lossy_c'] / totals['avif_c']:5.1f} | "
              f"{int(totals['lossy_b']):11d} {int(totals['avif_b']):10d} | "
              f"wins: " + ", ".join(f"{c} {k}" for c, k in all_wins.most_common()))
        if totals["floor_s"]:
            print(f"{'  floor':10s} {'':2s} | {totals['floor_s'] / n:11.2f} {'':10s} "
                  f"{totals['floor_s'] / totals['avif_s']:5.1f} {totals['floor_c'] / totals['avif_c']:5.1f} | "
                  f"{int(totals['floor_b']):11d} (floor: each image coded once with what its lossy row kept, no search)")
        print("(ratio: wall-clock lossy / plain AVIF; cpu: the same for process CPU seconds. Each image is archived "
              "alone by one policy then the other, so both see the same load; registry per run: the models the "
              "warm-up loaded serve every image, as in one run over the collection; lossy dB: mean over lossy rows; "
              "lossless rows count as exact and are left out of the mean)")

    if args.reference:
        print(f"\ntoday's selection (bisection, every probe fully encoded and checked) on {args.reference} "
              f"images per lossy domain, against the policy's rows above:")
        kept_new = kept_old = 0
        t_old = 0.0
        for domain in sorted(lossy_routes & set(args.domains.split(","))):
            for path in sorted((dev / domain).iterdir())[: args.reference]:
                row = lossy_rows.get(f"{domain}/{path.name}")
                if row is None or row["route"] != domain:
                    print(f"  {domain}/{path.name}: routed to {row and row['route']}, not compared")
                    continue
                old_bytes, old_codec, old_s = bisected_selection(path, domain)
                kept_new += row["bitstream_bytes"]
                kept_old += old_bytes
                t_old += old_s
                print(f"  {domain}/{path.name}: policy {row['codec_id']} {row['bitstream_bytes']} B "
                      f"({row['psnr']:.2f} dB); bisection {old_codec} {old_bytes} B in {old_s:.1f} s")
        if kept_old:
            print(f"  bytes: policy {kept_new} vs bisection {kept_old} -> {100 * (kept_new / kept_old - 1):+.2f} %; "
                  f"bisection {t_old:.1f} s for those images (their policy time is in the table above)")


if __name__ == "__main__":
    main()
