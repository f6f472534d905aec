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
