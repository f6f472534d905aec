"""Summaries of an archive's manifest: tables by classifier guess, route taken and codec;
images routed for low confidence; objects not archived and why; the runs (date, policy)
and the last verify, from the per-run stats (:mod:`pixarc.runstats`)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from .manifest import ManifestRow


@dataclass
class Group:
    domain: str  # the classifier's guess
    codec: str
    route: str = ""  # the policy route taken (the guess, or `unknown` for low confidence)
    images: int = 0
    pixels: int = 0
    source_bytes: int = 0
    archive_bytes: int = 0
    psnr_sum: float = 0.0
    psnr_n: int = 0
    msssim_sum: float = 0.0
    msssim_n: int = 0
    lossless: int = 0

    @property
    def bpp(self) -> float:
        return 8.0 * self.archive_bytes / self.pixels if self.pixels else math.nan

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.archive_bytes if self.archive_bytes else math.nan

    @property
    def psnr(self) -> float:
        if self.psnr_n:
            return self.psnr_sum / self.psnr_n
        return math.inf if self.lossless else math.nan

    @property
    def ms_ssim(self) -> float:
        if self.msssim_n:
            return self.msssim_sum / self.msssim_n
        return 1.0 if self.lossless else math.nan


def summarise(rows: list[ManifestRow]) -> tuple[list[Group], dict[str, int]]:
    """Groups of done rows by (domain, codec), plus counts by status/reason."""
    groups: dict[tuple[str, str], Group] = {}
    statuses: dict[str, int] = defaultdict(int)
    total = Group("all", "all", "all")
    for r in rows:
        label = str(r.status) if r.status == "done" else f"{r.status}: {r.error}"
        statuses[label] += 1
        if r.status != "done":
            continue
        route = r.route or ""
        key = (r.domain, route, r.codec_id)
        for g in (groups.setdefault(key, Group(r.domain, r.codec_id, route)), total):
            g.images += 1
            g.pixels += r.width * r.height
            g.source_bytes += r.source_bytes
            g.archive_bytes += r.bitstream_bytes
            if r.lossless:
                g.lossless += 1
            else:
                if math.isfinite(r.psnr):
                    g.psnr_sum += r.psnr
                    g.psnr_n += 1
                if not math.isnan(r.ms_ssim):
                    g.msssim_sum += r.ms_ssim
                    g.msssim_n += 1
    out = sorted(groups.values(), key=lambda g: (g.domain, g.route, g.codec))
    if out:
        out.append(total)
    return out, dict(statuses)


def fmt_quality(g: Group) -> tuple[str, str]:
    if g.lossless == g.images:
        return "lossless", "1.0000"
    p = f"{g.psnr:.2f}" + ("" if not g.lossless else f" (+{g.lossless} lossless)")
    return p, f"{g.ms_ssim:.4f}"


COLUMNS = ("domain", "route", "codec", "images", "source MB", "archive MB", "ratio", "bpp", "PSNR dB", "MS-SSIM")


def group_label(g: Group) -> str:
    """The label a group has in the table's first three columns (and on the plot's bars)."""
    return f"{g.domain} / {g.route} / {g.codec}"


def low_confidence(rows: list[ManifestRow]) -> list[dict]:
    """Archived images the policy routed as `unknown` (classifier confidence below the policy's
    threshold, or a domain without a route): worth a look, and a hint for the classifier."""
    return [{"key": r.key, "guess": r.domain, "confidence": r.domain_confidence,
             "classifier": r.classifier_id, "codec": r.codec_id}
            for r in rows if r.status == "done" and r.route == "unknown"]


def not_archived(rows: list[ManifestRow]) -> list[dict]:
    """Objects that are not (or no longer) archived, with the stable reason and the message."""
    return [{"key": r.key, "status": str(r.status), "reason": r.error, "message": r.message}
            for r in rows if r.status != "done"]


def runs_summary(dest: str) -> dict:
    """The last archive run (date, policy) and the last verify (date, mode, outcome), from the
    per-run stats beside the manifest; empty entries for archives made before they existed."""
    from . import runstats

    runs = runstats.read_all(dest)
    archive = [r for r in runs if r.get("job") == "archive"]
    verify = [r for r in runs if r.get("job") == "verify"]
    out: dict = {"runs": len(runs), "archive_runs": len(archive), "last_archive": None, "last_verify": None}
    if archive:
        a = archive[-1]
        out["last_archive"] = {k: a.get(k) for k in ("run_id", "started", "finished", "policy", "policy_source",
                                                      "engine", "done", "errors", "failed", "seconds")}
    if verify:
        v = verify[-1]
        out["last_verify"] = {"run_id": v.get("run_id"), "started": v.get("started"),
                              "mode": "full" if v.get("full") else "fast", "checked": v.get("checked"),
                              "ok": v.get("ok"), "problems": v.get("problem_count"),
                              "status": "OK" if not v.get("problem_count") else "PROBLEMS"}
    return out


def run_lines(info: dict) -> list[str]:
    """Human lines for :func:`runs_summary` (CLI, markdown and HTML share them)."""
    lines = []
    a, v = info.get("last_archive"), info.get("last_verify")
    if a:
        lines.append(f"last archive run {a['run_id']} on {a['started']} with policy {a['policy']} "
                     f"({a['policy_source']}, {a['engine']} engine): {a['done']} done, {a['errors']} errors, "
                     f"{a['failed']} failed")
    else:
        lines.append("last archive run: no run statistics recorded")
    if v:
        lines.append(f"last verify {v['run_id']} on {v['started']} ({v['mode']}): {v['status']}, "
                     f"{v['ok']} of {v['checked']} OK, {v['problems']} problem(s)")
    else:
        lines.append("verify: never run (pixarc verify DEST --full)")
    return lines


def report_data(dest: str, rows: list[ManifestRow]) -> dict:
    """Everything a report shows, as plain data (``report --json`` prints it)."""
    groups, statuses = summarise(rows)
    return {"dest": dest, "objects": len(rows), "statuses": statuses,
            "groups": [group_dict(g) for g in groups], "low_confidence": low_confidence(rows),
            "not_archived": not_archived(rows), **runs_summary(dest)}


def group_dict(g: Group) -> dict:
    p, m = fmt_quality(g)
    return {"domain": g.domain, "route": g.route, "codec": g.codec, "images": g.images,
            "source_bytes": g.source_bytes, "archive_bytes": g.archive_bytes,
            "ratio": round(g.ratio, 4) if math.isfinite(g.ratio) else None, "bpp": round(g.bpp, 4) if
            math.isfinite(g.bpp) else None, "psnr": p, "ms_ssim": m}


def markdown_table(groups: list[Group], statuses: dict[str, int]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in groups:
        p, m = fmt_quality(g)
        lines.append(
            f"| {g.domain} | {g.route} | {g.codec} | {g.images} | {g.source_bytes / 1e6:.2f} | {g.archive_bytes / 1e6:.2f} "
            f"| {g.ratio:.2f} | {g.bpp:.3f} | {p} | {m} |"
        )
    if statuses:
        lines.append("")
        lines.append("Status: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    return "\n".join(lines)


def _png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def saved_bars(rows: list[ManifestRow]) -> list[tuple[str, float]]:
    """(label, % bytes saved) per table row, in the table's order and with its labels
    (``domain / route / codec``), the "all" row last."""
    groups, _ = summarise(rows)
    return [(group_label(g), 100 * (1 - g.archive_bytes / g.source_bytes) if g.source_bytes else 0.0)
            for g in groups]


def best_of_savings(rows: list[ManifestRow]) -> list[tuple[str, int, int, int]]:
    """For rows archived with ``selection = "smallest"``: per codec, (codec, images, bytes had
    that codec been used alone, bytes actually kept) over the rows where it was measured."""
    per_codec: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        if r.status != "done":
            continue
        sizes = {a.codec: a.bytes for a in r.attempts if a.compared}
        if len(sizes) < 2:
            continue
        kept = r.bitstream_bytes
        for codec, size in sizes.items():
            acc = per_codec[codec]
            acc[0] += 1
            acc[1] += size
            acc[2] += kept
    return sorted((c, n, alone, kept) for c, (n, alone, kept) in per_codec.items())


@dataclass
class RdSummary:
    """What per-image selection (``selection = "rd"`` or ``"smallest"``) bought on one route,
    over its rows where at least two candidates verified: which codec won how often, and
    the bytes kept against the best single codec of the same candidates, had it coded all
    of them."""

    route: str
    images: int
    wins: dict[str, int]
    kept_bytes: int
    kept_psnr: float  # mean over the lossy rows kept (NaN: all lossless)
    best_codec: str  # fewest bytes alone among the codecs that verified (and met the target) everywhere
    best_bytes: int
    best_psnr: float

    @property
    def saved(self) -> float:
        """Fraction of bytes saved against the best single codec."""
        return 1 - self.kept_bytes / self.best_bytes if self.best_bytes else math.nan

    def text(self) -> str:
        def db(v: float) -> str:
            return "lossless" if math.isnan(v) else f"{v:.2f} dB mean PSNR"

        won = ", ".join(f"{c} won on {n} image{'s' * (n != 1)}" for c, n in sorted(self.wins.items(),
                                                                                  key=lambda kv: -kv[1]))
        return (f"route {self.route}, {self.images} images: {won}; {self.kept_bytes} bytes kept ({db(self.kept_psnr)}) "
                f"vs {self.best_bytes} with {self.best_codec} alone ({db(self.best_psnr)}): "
                f"{100 * self.saved:.1f} % saved")


def rd_summary(rows: list[ManifestRow]) -> list[RdSummary]:
    """One :class:`RdSummary` per route (routes have different candidates)."""
    by_route: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        if r.status == "done":
            by_route[r.route].append(r)
    return [s for route in sorted(by_route) if (s := _route_summary(route, by_route[route])) is not None]


def _route_summary(route: str, rows: list[ManifestRow]) -> RdSummary | None:
    compared: list[ManifestRow] = []
    alone: dict[str, list] = defaultdict(lambda: [0, 0, 0.0, 0])  # codec: rows, bytes, psnr sum, psnr n
    missed: set[str] = set()
    for r in rows:
        measured = [a for a in r.attempts if a.compared]
        if len(measured) < 2:
            continue
        compared.append(r)
        for a in measured:
            acc = alone[a.codec]
            acc[0] += 1
            acc[1] += a.bytes
            if a.psnr is not None and math.isfinite(a.psnr):
                acc[2] += a.psnr
                acc[3] += 1
            if a.met is False:  # missed the route's target: no alternative for that image
                missed.add(a.codec)
    everywhere = {c: acc for c, acc in alone.items() if acc[0] == len(compared) and c not in missed}
    if not compared or not everywhere:
        return None
    best = min(everywhere, key=lambda c: everywhere[c][1])
    lossy = [r.psnr for r in compared if not r.lossless and math.isfinite(r.psnr)]
    wins: dict[str, int] = defaultdict(int)
    for r in compared:
        wins[r.codec_id] += 1
    b = everywhere[best]
    return RdSummary(route, len(compared), dict(wins), sum(r.bitstream_bytes for r in compared),
                     sum(lossy) / len(lossy) if lossy else math.nan, best, b[1], b[2] / b[3] if b[3] else math.nan)
