"""``pixarc report DEST --html FILE``: one self-contained page a person reads.

What it shows, per domain (the classifier's guess): the bytes kept against the originals
and against the best single codec (when the archive recorded the other candidates'
encodings), and a table of every image (key, codec, bytes, bpp, PSNR, time, status);
then the objects not archived and the images routed for low confidence, each section
saying "none" when it is empty; then the plots: bytes saved per row of the summary
table and, where the archive has lossy rows, every codec's operating points (bpp, PSNR of
each verified encoding) coloured by domain. The numbers come from :mod:`pixarc.report`,
which the terminal and ``--json`` reports share.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from .manifest import ManifestRow
from .report import (COLUMNS, _png, _route_summary, fmt_quality, low_confidence, not_archived, rd_summary,
                     run_lines, runs_summary, saved_bars, summarise)

UNCLASSIFIED = "(not classified)"
IMAGE_COLUMNS = ("key", "codec", "bytes", "bpp", "PSNR (dB)", "time (s)", "status")


@dataclass
class DomainSummary:
    """One domain's rows and what they cost."""

    domain: str
    rows: list[ManifestRow]
    images: int  # archived (done)
    source_bytes: int
    archive_bytes: int
    best_codec: str = ""  # the best single codec among the candidates every image tried ("" unknown)
    best_bytes: int = 0
    compared: int = 0  # images the best-single-codec figure is over
    compared_kept: int = 0  # bytes kept on those images

    def text(self) -> str:
        if not self.images:
            return f"{len(self.rows)} object(s), none archived."
        kept = self.archive_bytes / self.source_bytes if self.source_bytes else math.nan
        line = (f"{self.images} image(s) archived: {self.source_bytes:,} bytes of originals kept in "
                f"{self.archive_bytes:,} bytes ({100 * kept:.1f} % of the originals).")
        if self.best_codec:
            line += (f" Against the best single codec, {self.best_codec}, on the {self.compared} image(s) where "
                     f"several candidates were encoded: {self.best_bytes:,} bytes alone")
            if self.compared_kept:
                line += f", {100 * (1 - self.compared_kept / self.best_bytes):.1f} % saved by per-image selection."
        else:
            line += " Best single codec: not known (one candidate was encoded per image; no alternative recorded)."
        return line


def domain_summaries(rows: list[ManifestRow]) -> list[DomainSummary]:
    by_domain: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_domain[r.domain or UNCLASSIFIED].append(r)
    out = []
    for domain in sorted(by_domain):
        sel = by_domain[domain]
        done = [r for r in sel if r.status == "done"]
        s = DomainSummary(domain, sel, len(done), sum(r.source_bytes for r in done),
                          sum(r.bitstream_bytes for r in done))
        best = _route_summary(domain, done)
        if best is not None:
            s.best_codec, s.best_bytes, s.compared, s.compared_kept = (best.best_codec, best.best_bytes, best.images,
                                                                         best.kept_bytes)
        out.append(s)
    return out


def _cell(value: object, numeric: bool = False) -> str:
    cls = " class='n'" if numeric else ""
    return f"<td{cls}>{html.escape(str(value))}</td>"


def _table(headers: tuple[str, ...] | list[str], rows: list[tuple], numeric: set[int] = frozenset()) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(_cell(c, i in numeric) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _image_row(r: ManifestRow) -> tuple:
    if r.status != "done":
        return (r.key, r.codec_id or "-", "-", "-", "-", f"{r.encode_s:.2f}" if r.encode_s else "-",
                f"{r.status}: {r.error}")
    psnr = "lossless" if r.lossless else (f"{r.psnr:.2f}" if math.isfinite(r.psnr) else "-")
    bpp = f"{r.bpp:.3f}" if math.isfinite(r.bpp) else "-"
    return (r.key, r.codec_id, f"{r.bitstream_bytes:,}", bpp, psnr, f"{r.encode_s:.2f}", "done")


def operating_points(rows: list[ManifestRow]) -> dict[str, list[tuple[str, float, float]]]:
    """codec -> (domain, bpp, PSNR) of every verified lossy encoding the archive recorded
    (each candidate an image tried, not only the one kept)."""
    points: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for r in rows:
        if r.status != "done" or not (r.width and r.height):
            continue
        pixels = r.width * r.height
        seen = set()
        for a in r.attempts:
            if a.compared and a.bytes and a.psnr is not None and math.isfinite(a.psnr):
                points[a.codec].append((r.domain or UNCLASSIFIED, 8 * a.bytes / pixels, a.psnr))
                seen.add(a.codec)
        if not r.lossless and math.isfinite(r.psnr) and r.codec_id not in seen:
            points[r.codec_id].append((r.domain or UNCLASSIFIED, r.bpp, r.psnr))
    return dict(points)


def rd_plot(rows: list[ManifestRow]) -> str | None:
    """Base64 PNG: one panel per codec, its operating points coloured by domain; None
    without lossy rows."""
    points = operating_points(rows)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted({d for pts in points.values() for d, _, _ in pts})
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(domains)}
    codecs = sorted(points)
    cols = min(3, len(codecs))
    nrows = math.ceil(len(codecs) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    psnrs = [p for pts in points.values() for _, _, p in pts]
    lo, hi = min(psnrs), max(psnrs)
    pad = max(1.0, (3.0 - (hi - lo)) / 2)  # never a sub-dB axis that makes noise look like a trend
    for ax, codec in zip(axes.flat, codecs):
        for d in domains:
            sel = [(b, p) for dd, b, p in points[codec] if dd == d]
            if sel:
                ax.scatter([b for b, _ in sel], [p for _, p in sel], s=22, color=colours[d], label=d, alpha=0.85)
        ax.set_title(f"{codec} ({len(points[codec])} point(s))", fontsize=10)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB)")
        ax.set_xlim(left=0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(codecs):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[d], label=d) for d in domains]
    fig.legend(handles=handles, loc="upper center", ncol=min(6, len(domains)), title="domain",
               bbox_to_anchor=(0.5, 1.02 + 0.02 * nrows))
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def bars_plot(rows: list[ManifestRow]) -> str | None:
    bars = saved_bars(rows)
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.2))
    saved = [v for _, v in bars]
    ax.barh(range(len(bars)), saved, color=["#4c72b0" if s >= 0 else "#c44e52" for s in saved])
    ax.set_yticks(range(len(bars)), [label for label, _ in bars])
    ax.invert_yaxis()  # first table row on top, like the table
    ax.set_xlabel("bytes saved versus the originals (%)")
    ax.axvline(0, color="black", lw=0.8)
    png = _png(fig)
    plt.close(fig)
    return png


def html_report(dest: str, rows: list[ManifestRow], extra_sections: list[tuple[str, str]]) -> str:
    groups, statuses = summarise(rows)
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = [f"<h1>pixarc archive report</h1><p><code>{html.escape(dest)}</code>: {len(rows)} object(s); "
            f"report made {made}</p>",
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in run_lines(runs_summary(dest))) + "</ul>",
            "<h2 id='summary'>Summary by domain, route and codec</h2>"]
    table_rows = []
    for g in groups:
        p, m = fmt_quality(g)
        table_rows.append((g.domain, g.route, g.codec, g.images, f"{g.source_bytes / 1e6:.2f}",
                           f"{g.archive_bytes / 1e6:.2f}", f"{g.ratio:.2f}", f"{g.bpp:.3f}", p, m))
    body.append(_table(COLUMNS, table_rows, set(range(3, 10))))
    body.append("<p>Status: " + html.escape(", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none")
                + "</p>")
    for s in rd_summary(rows):
        body.append(f"<p class='sel'>Per-image selection: {html.escape(s.text())}</p>")

    for d in domain_summaries(rows):
        body.append(f"<h2 class='domain'>Domain: {html.escape(d.domain)}</h2><p>{html.escape(d.text())}</p>")
        body.append(_table(IMAGE_COLUMNS, [_image_row(r) for r in sorted(d.rows, key=lambda r: r.key)], {2, 3, 4, 5}))

    problems = not_archived(rows)
    body.append("<h2 id='errors'>Errors: not archived</h2>")
    body.append(_table(("key", "status", "reason", "message"),
                       [tuple(r[k] for k in ("key", "status", "reason", "message")) for r in problems])
                if problems else "<p class='none'>none</p>")
    low = low_confidence(rows)
    body.append("<h2 id='low-confidence'>Low confidence (routed as unknown)</h2>")
    if low:
        body.append(_table(("key", "guess", "confidence", "codec"),
                           [(r["key"], r["guess"], "" if r["confidence"] is None or r["confidence"] != r["confidence"]
                             else f"{r['confidence']:.2f}", r["codec"]) for r in low]))
    else:
        body.append("<p class='none'>none</p>")

    if (png := bars_plot(rows)) is not None:
        title = "Bytes saved per row of the summary table (domain / route / codec)"
        body.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{png}'>")
    if (png := rd_plot(rows)) is not None:
        title = "Operating points of each codec (every verified lossy encoding), coloured by domain"
        body.append(f"<h2 id='rd'>{title}</h2><img alt='{title}' src='data:image/png;base64,{png}'>")
    for title, text in extra_sections:
        body.append(f"<h2>{html.escape(title)}</h2><pre>{html.escape(text)}</pre>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}td.n{text-align:right}"
             "th{background:#f3f3f3}p.none{color:#666;font-style:italic}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pixarc report: {html.escape(dest)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
