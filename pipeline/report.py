"""Summaries of an archive's manifest: per-domain, per-codec tables."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class Group:
    domain: str
    codec: str
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


def summarise(rows: list[dict]) -> tuple[list[Group], dict[str, int]]:
    """Groups of done rows by (domain, codec), plus counts by status/reason."""
    groups: dict[tuple[str, str], Group] = {}
    statuses: dict[str, int] = defaultdict(int)
    total = Group("all", "all")
    for r in rows:
        label = r["status"] if r["status"] == "done" else f"{r['status']}: {r['error']}"
        statuses[label] += 1
        if r["status"] != "done":
            continue
        for g in (groups.setdefault((r["domain"], r["codec_id"]), Group(r["domain"], r["codec_id"])), total):
            g.images += 1
            g.pixels += r["width"] * r["height"]
            g.source_bytes += r["source_bytes"]
            g.archive_bytes += r["bitstream_bytes"]
            if r["lossless"]:
                g.lossless += 1
            else:
                if math.isfinite(r["psnr"]):
                    g.psnr_sum += r["psnr"]
                    g.psnr_n += 1
                if not math.isnan(r["ms_ssim"]):
                    g.msssim_sum += r["ms_ssim"]
                    g.msssim_n += 1
    out = sorted(groups.values(), key=lambda g: (g.domain, g.codec))
    if out:
        out.append(total)
    return out, dict(statuses)


def fmt_quality(g: Group) -> tuple[str, str]:
    if g.lossless == g.images:
        return "lossless", "1.0000"
    p = f"{g.psnr:.2f}" + ("" if not g.lossless else f" (+{g.lossless} lossless)")
    return p, f"{g.ms_ssim:.4f}"


def markdown_table(groups: list[Group], statuses: dict[str, int]) -> str:
    lines = [
        "| domain | codec | images | source MB | archive MB | ratio | bpp | PSNR dB | MS-SSIM |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in groups:
        p, m = fmt_quality(g)
        lines.append(
            f"| {g.domain} | {g.codec} | {g.images} | {g.source_bytes / 1e6:.2f} | {g.archive_bytes / 1e6:.2f} "
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


def plots(rows: list[dict]) -> list[tuple[str, str]]:
    """(title, base64 PNG) pairs: bytes saved per domain and codec; rate-distortion of lossy rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    out = []
    groups = defaultdict(lambda: [0, 0])
    for r in done:
        g = groups[(r["domain"], r["codec_id"])]
        g[0] += r["source_bytes"]
        g[1] += r["bitstream_bytes"]
    if groups:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(groups) + 1.2))
        labels = [f"{d} / {c}" for d, c in groups]
        saved = [100 * (1 - b / a) if a else 0 for a, b in groups.values()]
        ax.barh(labels, saved, color=["#4c72b0" if s >= 0 else "#c44e52" for s in saved])
        ax.set_xlabel("bytes saved versus the originals (%)")
        ax.axvline(0, color="black", lw=0.8)
        out.append(("Bytes saved per domain and codec", _png(fig)))
        plt.close(fig)
    lossy = [r for r in done if not r["lossless"] and math.isfinite(r["psnr"])]
    if lossy:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for codec in sorted({r["codec_id"] for r in lossy}):
            sel = [r for r in lossy if r["codec_id"] == codec]
            axes[0].scatter([r["bpp"] for r in sel], [r["psnr"] for r in sel], label=codec, s=18)
            axes[1].scatter([r["bpp"] for r in sel], [r["ms_ssim"] for r in sel], label=codec, s=18)
        axes[0].set(xlabel="bpp", ylabel="PSNR (dB)", title="rate-distortion (PSNR)")
        axes[1].set(xlabel="bpp", ylabel="MS-SSIM", title="rate-distortion (MS-SSIM)")
        axes[0].legend()
        out.append(("Rate-distortion of lossy rows", _png(fig)))
        plt.close(fig)
    return out


def html_report(dest: str, rows: list[dict], extra_sections: list[tuple[str, str]]) -> str:
    import html

    groups, statuses = summarise(rows)
    body = [f"<h1>pixarc archive report</h1><p><code>{html.escape(dest)}</code>: {len(rows)} object(s)</p>"]
    body.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in (
        "domain", "codec", "images", "source MB", "archive MB", "ratio", "bpp", "PSNR dB", "MS-SSIM")) + "</tr>")
    for g in groups:
        p, m = fmt_quality(g)
        cells = (g.domain, g.codec, g.images, f"{g.source_bytes / 1e6:.2f}", f"{g.archive_bytes / 1e6:.2f}",
                 f"{g.ratio:.2f}", f"{g.bpp:.3f}", p, m)
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    body.append("</table>")
    body.append("<p>" + html.escape(", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))) + "</p>")
    if selection := rd_summary(rows):
        body.append("<h2>Per-image selection</h2>" + "".join(f"<p>{html.escape(s.text())}</p>" for s in selection))
    problems = [r for r in rows if r["status"] != "done"]
    if problems:
        body.append("<h2>Not archived</h2><table><tr><th>key</th><th>status</th><th>reason</th><th>message</th></tr>")
        for r in problems:
            body.append("<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in ("key", "status", "error", "message"))
                        + "</tr>")
        body.append("</table>")
    for title, png in plots(rows):
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    for title, text in extra_sections:
        body.append(f"<h2>{html.escape(title)}</h2><pre>{html.escape(text)}</pre>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child,td:nth-child(2){text-align:left}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>pixarc report</title><style>{style}</style></head>" \
           f"<body>{''.join(body)}</body></html>"


def best_of_savings(rows: list[dict]) -> list[tuple[str, int, int, int]]:
    """For rows archived with ``selection = "smallest"``: per codec, (codec, images, bytes had
    that codec been used alone, bytes actually kept) over the rows where it verified."""
    import json

    per_codec: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        if r["status"] != "done":
            continue
        verified = {a["codec"]: a["bytes"] for a in json.loads(r["attempts"] or "[]") if a.get("result") == "verified"}
        if len(verified) < 2:
            continue
        kept = r["bitstream_bytes"]
        for codec, size in verified.items():
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


def rd_summary(rows: list[dict]) -> list[RdSummary]:
    """One :class:`RdSummary` per route (routes have different candidates)."""
    by_route: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "done":
            by_route[r["route"]].append(r)
    return [s for route in sorted(by_route) if (s := _route_summary(route, by_route[route])) is not None]


def _route_summary(route: str, rows: list[dict]) -> RdSummary | None:
    import json

    compared: list[dict] = []
    alone: dict[str, list] = defaultdict(lambda: [0, 0, 0.0, 0])  # codec: rows, bytes, psnr sum, psnr n
    missed: set[str] = set()
    for r in rows:
        verified = [a for a in json.loads(r["attempts"] or "[]") if a.get("result") == "verified"]
        if len(verified) < 2:
            continue
        compared.append(r)
        for a in verified:
            acc = alone[a["codec"]]
            acc[0] += 1
            acc[1] += a["bytes"]
            if math.isfinite(a.get("psnr", math.inf)):
                acc[2] += a["psnr"]
                acc[3] += 1
            if a.get("met") is False:  # missed the route's target: no alternative for that image
                missed.add(a["codec"])
    everywhere = {c: acc for c, acc in alone.items() if acc[0] == len(compared) and c not in missed}
    if not compared or not everywhere:
        return None
    best = min(everywhere, key=lambda c: everywhere[c][1])
    lossy = [r["psnr"] for r in compared if not r["lossless"] and math.isfinite(r["psnr"])]
    wins: dict[str, int] = defaultdict(int)
    for r in compared:
        wins[r["codec_id"]] += 1
    b = everywhere[best]
    return RdSummary(route, len(compared), dict(wins), sum(r["bitstream_bytes"] for r in compared),
                     sum(lossy) / len(lossy) if lossy else math.nan, best, b[1], b[2] / b[3] if b[3] else math.nan)
