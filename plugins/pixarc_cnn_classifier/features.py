"""Cheap, scale-robust image statistics for the learned domain classifier.

Every image is first brought to a common scale (box-downscaled so its longest side is at
most ``SIDE``, the way ``train/whole`` was made), so the statistics do not depend on how
large the original was. What each group is for:

* palette: photographs and painted comics have thousands of colours, vector art and
  screenshots a handful that cover most pixels, line art two or three;
* flatness and gradients: exact-zero neighbour differences mark rendered flat fills,
  small non-zero ones painted shading or sensor noise, a Laplacian residual the noise;
* background and border: comics and clip-art sit on white, screenshots on grey panels
  framed by straight lines;
* edges: orientation (UI is axis-aligned), straight runs, ink share (dark thin strokes);
* colour: saturation and grey share (screenshots and line art are grey, vector art is
  saturated); exactly neutral mid-tones (r = g = b) are UI greys, rarely paint;
* texture words: thresholded LBP histograms at two scales (text, strokes, flat fills and
  painted noise give different mixes); straight edge runs (panels, table rules).

All histograms use ``bincount`` on integers (no sorting), keeping a 256-px image near
10 ms of CPU.

``NAMES`` lists the vector's entries in order; ``feature_vector`` returns float32 numpy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 256

_GRAD_BINS = (0, 1, 3, 8, 24, 64, 128, 256)  # |difference| bin edges (grey levels)


def normalise(rgb: Image.Image, side: int = SIDE) -> Image.Image:
    """Box-downscale so the longest side is at most ``side`` (``reduce`` first: fast)."""
    longest = max(rgb.size)
    if longest > 2 * side:
        rgb = rgb.reduce(longest // side)  # integer box reduction, still >= side
        longest = max(rgb.size)
    if longest > side:
        s = side / longest
        rgb = rgb.resize((max(1, round(rgb.width * s)), max(1, round(rgb.height * s))), Image.BOX)
    return rgb


def _share(mask: np.ndarray) -> float:
    return np.count_nonzero(mask) / max(1, mask.size)


def shrink(image: Image.Image, side: int = SIDE) -> Image.Image:
    """Integer box reduction of a canonical image *before* its RGB conversion, so a big
    photo costs a few ms: RGB and L reduce directly; alpha modes band by band (Pillow's
    RGBA reduce premultiplies the whole image first, ~10x slower); 16-bit grey in numpy.
    ``normalise`` finishes the job on the small result."""
    k = max(image.size) // side
    if k < 2:
        return image
    if image.mode in ("L", "RGB"):
        return image.reduce(k)
    if image.mode in ("LA", "RGBA"):
        return Image.merge(image.mode, [band.reduce(k) for band in image.split()])
    if image.mode == "I;16":
        a = np.asarray(image, dtype=np.uint16)
        h, w = a.shape[0] // k * k, a.shape[1] // k * k
        a = a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)) / 257
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(1, counts.sum())
    return float(-(p * np.log2(p)).sum())


def _palette(keys: np.ndarray, n: int) -> list[float]:
    _, counts = np.unique(keys, return_counts=True)
    counts = np.sort(counts)[::-1]
    c = np.cumsum(counts) / n
    k90 = int(np.searchsorted(c, 0.9)) + 1
    k99 = int(np.searchsorted(c, 0.99)) + 1
    return [np.log1p(len(counts)) / np.log1p(n), c[0], c[min(3, len(c) - 1)], c[min(15, len(c) - 1)],
            c[min(63, len(c) - 1)], np.log1p(k90) / 10, np.log1p(k99) / 10, _entropy(counts) / 24]


def _hist(values: np.ndarray, edges=_GRAD_BINS) -> list[float]:
    """Shares of non-negative integers in [edges[i], edges[i+1]) (bincount: no sorting)."""
    c = np.concatenate([[0], np.cumsum(np.bincount(values, minlength=edges[-1] + 1))])
    return [float((c[b] - c[a]) / max(1, values.size)) for a, b in zip(edges, edges[1:])]


def _quantile(values: np.ndarray, q: float) -> float:
    """Quantile of non-negative integers via their histogram."""
    c = np.cumsum(np.bincount(values))
    return float(np.searchsorted(c, q * values.size))


# rotation-invariant uniform LBP: map each 8-bit neighbour pattern to the number of set
# bits when it has at most two 0/1 transitions around the circle (0-8), else 9
def _riu2_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        table[code] = sum(bits) if transitions <= 2 else 9
    return table


_RIU2 = _riu2_table()


def _lbp(y: np.ndarray, thresholds=(6, 32)) -> list[float]:
    """Local texture words (LBP with a contrast threshold): flat fills, thin strokes,
    corners, text and painted noise give different mixes. 10 shares per threshold."""
    y = y.astype(np.int16)
    c = y[1:-1, 1:-1]
    h, w = y.shape
    out = []
    for t in thresholds:
        ct = c + t
        code = np.zeros(c.shape, dtype=np.uint8)
        for bit, (dy, dx) in enumerate(((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))):
            code |= (y[dy:h - 2 + dy, dx:w - 2 + dx] > ct).view(np.uint8) << bit
        hist = np.bincount(code.ravel(), minlength=256)  # histogram of codes, then map: no gather
        out += list(np.bincount(_RIU2, weights=hist, minlength=10) / max(1, c.size))
    return out


def _long_edges(edge: np.ndarray, axis: int, run: int = 16) -> float:
    """Windows of ``run`` consecutive edge pixels along ``axis``, per edge pixel: about the
    share of edge pixels in long straight runs (UI frames, panels, table rules)."""
    total = int(edge.sum())
    if total == 0 or edge.shape[axis] < run:
        return 0.0
    e = edge if axis == 1 else edge.T
    cs = np.zeros((e.shape[0], e.shape[1] + 1), dtype=np.int32)
    np.cumsum(e, axis=1, out=cs[:, 1:])
    full = (cs[:, run:] - cs[:, :-run]) == run
    return float(np.count_nonzero(full) / total)


def features(rgb: Image.Image) -> np.ndarray:
    """The statistics of one 8-bit RGB image (any size) as a float32 vector."""
    rgb = normalise(rgb)
    a = np.asarray(rgb, dtype=np.int32)
    if a.shape[0] < 3 or a.shape[1] < 3:  # degenerate images: pad so differences exist
        a = np.pad(a, ((0, max(0, 3 - a.shape[0])), (0, max(0, 3 - a.shape[1])), (0, 0)), mode="edge")
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    n = r.size
    out: list[float] = []

    # palette: exact colours and colours quantised to 4 bits per channel
    out += _palette(((r << 16) | (g << 8) | b).ravel(), n)
    out += _palette((((r >> 4) << 8) | ((g >> 4) << 4) | (b >> 4)).ravel(), n)

    hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    spread = hi - lo
    y = (299 * r + 587 * g + 114 * b) // 1000  # integer luminance: bincounts instead of sorts
    sat = (255 * spread) // np.maximum(hi, 1)
    out += [_share(lo > 235), _share(hi < 40), _share(spread < 12),
            float(spread.mean() / 255), float(spread.std() / 255), float(sat.mean() / 255),
            _quantile(sat.ravel(), 0.9) / 255, float(y.mean() / 255), float(y.std() / 255)]
    # exactly neutral pixels (r = g = b): UI greys are, rendered or painted colour is not
    tone = (lo > 16) & (hi < 240)
    neutral = spread == 0
    out += [_share(neutral), float(np.count_nonzero(neutral & tone) / max(1, np.count_nonzero(tone))), _share(tone)]
    yh = np.bincount((y >> 5).ravel(), minlength=8)
    out += list(yh / n) + [_entropy(yh) / 3]

    # neighbour differences of the luminance and of the colour (max over channels)
    d = np.concatenate([np.abs(np.diff(y, axis=1)).ravel(), np.abs(np.diff(y, axis=0)).ravel()])
    # per-plane maxima: a reduction over the 3-axis is slow
    cdx = np.maximum(np.maximum(np.abs(np.diff(r, axis=1)), np.abs(np.diff(g, axis=1))), np.abs(np.diff(b, axis=1)))
    cdy = np.maximum(np.maximum(np.abs(np.diff(r, axis=0)), np.abs(np.diff(g, axis=0))), np.abs(np.diff(b, axis=0)))
    cd = np.concatenate([cdx.ravel(), cdy.ravel()])
    out += _hist(d) + _hist(cd) + [float(d.mean() / 64)]
    # flat share: a pixel identical to its right and lower neighbour
    flat = (cdx[:-1, :] == 0) & (cdy[:, :-1] == 0)
    out.append(_share(flat))
    # among non-flat, non-edge pixels (|d| in 1..23): how smooth the shading is
    mid = (cd > 0) & (cd < 24)
    out.append(_share(mid))

    # Laplacian residual: noise/texture vs clean renders
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
    lap = lap.ravel()
    out += [_share(lap == 0), _share(lap < 4), _quantile(lap, 0.5) / 16,
            _quantile(lap, 0.9) / 64]

    # edges: orientation and straightness
    gx = y[1:-1, 2:] - y[1:-1, :-2]
    gy = y[2:, 1:-1] - y[:-2, 1:-1]
    strong = gx * gx + gy * gy > 48 * 48
    ns = int(strong.sum())
    if ns:
        ax = (5 * np.abs(gx) < np.abs(gy)) | (5 * np.abs(gy) < np.abs(gx))
        axis_share = float((ax & strong).sum() / ns)
        sx, sy = np.abs(np.diff(y, axis=1)) > 48, np.abs(np.diff(y, axis=0)) > 48
        straight = float(((sx[1:, :] & sx[:-1, :]).sum() + (sy[:, 1:] & sy[:, :-1]).sum())
                         / max(1, sx.sum() + sy.sum()))
    else:
        axis_share = straight = 0.0
    out += [_share(strong), axis_share, straight]
    # long straight rows/columns: fraction of rows whose horizontal difference is zero over
    # 90 % of the row (panels, separators) vs rows with content
    out += [_share(np.mean(cdx == 0, axis=1) > 0.9), _share(np.mean(cdy == 0, axis=0) > 0.9)]

    out += [_long_edges(np.abs(np.diff(y, axis=0)) > 32, 1), _long_edges(np.abs(np.diff(y, axis=1)) > 32, 0)]
    # texture words at this scale and at half of it
    out += _lbp(y)
    half = (y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2]).reshape(y.shape[0] // 2, 2, y.shape[1] // 2, 2).mean((1, 3))
    out += _lbp(half) if min(half.shape) >= 3 else [0.0] * 20

    # background and border
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bkeys = (border[:, 0] << 16) | (border[:, 1] << 8) | border[:, 2]
    _, bcounts = np.unique(bkeys, return_counts=True)
    bl = np.minimum(np.minimum(border[:, 0], border[:, 1]), border[:, 2])
    bh = np.maximum(np.maximum(border[:, 0], border[:, 1]), border[:, 2])
    out += [float(bcounts.max() / len(bkeys)), _share(bl > 235), _share((bh - bl) < 12),
            float(bl.mean() / 255)]
    # foreground: pixels that are not the most common border colour
    top = bkeys[np.argmax(np.bincount(np.unique(bkeys, return_inverse=True)[1]))]
    fg = ((r << 16) | (g << 8) | b) != top
    fgs = _share(fg)
    out.append(fgs)
    if fg.any():
        fr, fgg, fb = r[fg], g[fg], b[fg]
        fk = ((fr >> 3) << 10) | ((fgg >> 3) << 5) | (fb >> 3)
        _, fc = np.unique(fk, return_counts=True)
        fsp = (np.maximum(np.maximum(fr, fgg), fb) - np.minimum(np.minimum(fr, fgg), fb))
        out += [np.log1p(len(fc)) / np.log1p(fg.sum()), float(np.sort(fc)[::-1][:8].sum() / fg.sum()),
                _share(fsp < 12), float(fsp.mean() / 255), _share(y[fg] < 80)]
        # flat share inside the foreground
        fgi = fg[:-1, :-1]
        out.append(float((flat & fgi).sum() / max(1, fgi.sum())))
    else:
        out += [0.0] * 6
    # aspect ratio and size (after normalisation: small sources stay small)
    h, w = a.shape[:2]
    out += [float(np.log(w / h)), float(min(h, w) / SIDE), float(max(h, w) / SIDE)]
    return np.nan_to_num(np.asarray(out, dtype=np.float32))


N_FEATURES = len(features(Image.new("RGB", (16, 16))))
