"""The HTML report a person reads: per domain the bytes against the originals and the best
single codec and a table of every image; errors and low confidence ("none" when empty);
each codec's operating points coloured by domain; rendered in a real browser."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from pixarc.htmlreport import IMAGE_COLUMNS, html_report, operating_points
from pixarc.manifest import Attempt, ManifestRow


def row(key, domain, codec, nbytes, psnr=None, attempts=(), status="done", route=None, conf=0.9, error=""):
    lossless = psnr is None
    r = ManifestRow("run", 0, key, f"file:///src/{key}", status, source_bytes=40_000, width=100, height=100,
                    domain=domain, domain_confidence=conf, route=route or domain, codec_id=codec,
                    bitstream_bytes=nbytes, bpp=8 * nbytes / 10_000, psnr=float("nan") if lossless else psnr,
                    lossless=lossless, encode_s=0.5, error=error, message=error and "cannot identify image",
                    attempts=[Attempt(c, "verified", bytes=b, psnr=p) for c, b, p in attempts])
    return r


ROWS = [
    row("n/a.png", "natural", "avif", 900, 36.0, [("avif", 900, 36.0), ("webp", 1200, 35.5)]),
    row("n/b.png", "natural", "webp", 1000, 36.5, [("avif", 1300, 36.2), ("webp", 1000, 36.5)]),
    row("n/c.png", "natural", "avif", 800, 34.0, [("avif", 800, 34.0), ("webp", 1100, 33.0)]),
    row("l/x.png", "line", "png", 3000),
    row("u/low.png", "comic", "png", 2500, route="unknown", conf=0.2),
    row("bad.txt", "", "", 0, status="error", error="not_an_image"),
]


class Sections(HTMLParser):
    """h2 title -> (text, tables as lists of rows) of what follows it."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current, self.tag, self.cell = None, None, None

    def handle_starttag(self, tag, attrs):
        self.tag = tag
        if tag == "h2":
            self.current = ""
        elif tag == "table" and self.current is not None:
            self.sections[self.current]["tables"].append([])
        elif tag == "tr" and self.current is not None:
            self.sections[self.current]["tables"][-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img" and self.current is not None:
            self.sections[self.current]["imgs"].append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag == "h2":
            self.sections[self.current] = {"text": "", "tables": [], "imgs": []}
        elif tag in ("td", "th") and self.current is not None:
            self.sections[self.current]["tables"][-1][-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.tag == "h2" and self.current is not None and self.current not in self.sections:
            self.current += data
        elif self.cell is not None:
            self.cell += data
        elif self.current in self.sections:
            self.sections[self.current]["text"] += data


def parse(page: str) -> Sections:
    p = Sections()
    p.feed(page)
    return p


def test_each_domain_has_its_bytes_and_a_table_of_every_image(tmp_path):
    page = html_report(str(tmp_path), ROWS, [])
    s = parse(page).sections
    natural = s["Domain: natural"]
    table = natural["tables"][0]
    assert tuple(table[0]) == IMAGE_COLUMNS
    assert [r[0] for r in table[1:]] == ["n/a.png", "n/b.png", "n/c.png"]
    assert table[1][1:] == ["avif", "900", "0.720", "36.00", "0.50", "done"]
    assert "120,000 bytes of originals kept in 2,700 bytes (2.2 % of the originals)" in natural["text"]
    # best single codec over the images that tried both: avif alone 3000, webp alone 3300; kept 2700
    assert "best single codec, avif" in natural["text"] and "3,000 bytes alone" in natural["text"]
    assert "10.0 % saved by per-image selection" in natural["text"]
    assert "not known" in s["Domain: line"]["text"]  # one candidate per image: said, not invented
    assert [r[0] for r in s["Domain: (not classified)"]["tables"][0][1:]] == ["bad.txt"]
    assert s["Domain: (not classified)"]["tables"][0][1][-1] == "error: not_an_image"


def test_errors_and_low_confidence_are_listed_or_say_none(tmp_path):
    s = parse(html_report(str(tmp_path), ROWS, [])).sections
    assert [r[0] for r in s["Errors: not archived"]["tables"][0][1:]] == ["bad.txt"]
    assert [r[0] for r in s["Low confidence (routed as unknown)"]["tables"][0][1:]] == ["u/low.png"]
    clean = [r for r in ROWS if r.status == "done" and r.route != "unknown"]
    s = parse(html_report(str(tmp_path), clean, [])).sections
    for title in ("Errors: not archived", "Low confidence (routed as unknown)"):
        assert s[title]["tables"] == [] and s[title]["text"].strip() == "none", s[title]


def test_operating_points_are_every_verified_encoding_coloured_by_domain(tmp_path):
    points = operating_points(ROWS)
    assert sorted(points) == ["avif", "webp"]
    assert len(points["avif"]) == 3 and len(points["webp"]) == 3  # every candidate, not only those kept
    assert {d for d, _, _ in points["avif"]} == {"natural"}
    page = html_report(str(tmp_path), ROWS, [])
    rd = [t for t in parse(page).sections if t.startswith("Operating points")]
    assert len(rd) == 1
    lossless_only = [r for r in ROWS if r.lossless or r.status != "done"]
    assert not [t for t in parse(html_report(str(tmp_path), lossless_only, [])).sections
                if t.startswith("Operating points")]  # no lossy rows: no empty plot


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (apt-get install chromium)")
def test_the_report_renders_in_a_real_browser(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(html_report(str(tmp_path), ROWS, []))
    shot = tmp_path / "shot.png"
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,3000",
                    page.as_uri()], capture_output=True, timeout=180, check=True)
    im = Image.open(shot).convert("L")
    assert im.size == (1200, 3000)
    # something was drawn over the whole page: text and tables near the top, the plots further down
    top, bottom = im.crop((0, 0, 1200, 600)), im.crop((0, 1500, 1200, 3000))
    assert top.getextrema()[0] < 100 and bottom.getextrema()[0] < 200
    # the embedded plots decode as images (a broken data: URI would render as an empty box)
    srcs = [s for sec in parse(page.read_text()).sections.values() for s in sec["imgs"]]
    assert len(srcs) == 2  # bytes saved, operating points
    for src in srcs:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
