"""No per-image tax: what the pipeline does per image besides the codec's own work is
counted (not timed): fsyncs, classifications, URL parsing."""

import os

import fsspec
import numpy as np
from PIL import Image

from pixarc import runs


def tiny(tmp_path, n):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(src / f"{i}.png")
    return src


def test_png_policy_pays_no_fsync_classification_or_url_parsing_per_image(tmp_path, monkeypatch):
    n = 12
    src = tiny(tmp_path, n)
    runs.archive_local(str(src), str(tmp_path / "warm"), policy="png")  # plugin discovery etc.
    counts = {"fsync": 0, "url_to_fs": 0, "classify": 0}
    real_fsync, real_url = os.fsync, fsspec.core.url_to_fs
    monkeypatch.setattr(os, "fsync", lambda fd: (counts.__setitem__("fsync", counts["fsync"] + 1), real_fsync(fd))[1])
    monkeypatch.setattr(fsspec.core, "url_to_fs",
                        lambda *a, **k: (counts.__setitem__("url_to_fs", counts["url_to_fs"] + 1), real_url(*a, **k))[1])
    from pixarc_stats_classifier import StatsClassifier

    real_classify = StatsClassifier.classify
    monkeypatch.setattr(StatsClassifier, "classify",
                        lambda self, im: (counts.__setitem__("classify", counts["classify"] + 1), real_classify(self, im))[1])
    s = runs.archive_local(str(src), str(tmp_path / "d"), policy="png")
    assert s.totals.done == n
    # the run's own state (plan, lease, manifest part and marker) costs a fixed number of
    # fsyncs; the bitstreams are made durable together: nothing grows with the images
    assert counts["fsync"] < n
    assert counts["url_to_fs"] < n  # local paths skip fsspec's URL parser
    assert counts["classify"] == 0  # one route for everything: nothing to classify


def test_reading_a_source_asks_for_its_size_not_the_byte_limit(tmp_path):
    """A read of the whole 1 GiB limit makes Python allocate that much per object; the
    rest after the header is read at the crawl's size (+1 byte to notice growth), and a
    file that grew since is still read whole, or refused past the limit."""
    import io

    from pixarc.intake import _read_rest

    class Counting(io.BytesIO):
        asked: list = []

        def read(self, n=-1):
            self.asked.append(n)
            return super().read(n)

    body = bytes(range(256)) * 400  # 102 400 bytes
    f = Counting(body)
    f.read(100)
    Counting.asked.clear()
    assert _read_rest(f, 100, len(body), 1 << 30) == body[100:]
    assert max(Counting.asked) <= len(body)  # never the 1 GiB limit
    grown = Counting(body + b"more")  # grew by 4 bytes after the crawl
    grown.read(100)
    assert _read_rest(grown, 100, len(body), 1 << 30) == body[100:] + b"more"
    capped = Counting(body)
    capped.read(100)
    assert len(_read_rest(capped, 100, 1000, 5000)) == 5000 + 1 - 100  # one byte over: refused by the caller
