"""The enhancement filter: a small residual CNN that removes a base codec's artefacts.

    x̂ = b + tail(relu(body(relu(head([b − ½, c])))))      b: the base decode in [0, 1]

``c`` are two constant conditioning planes: the base rate parameter normalised to [0, 1]
over its schema range (the filter knows the rate it cleans up, so one model serves every
quality) and a chroma flag (1 for 4:4:4 bases, whose colour is not smeared). The filter
is applied in fixed tiles with a halo wider than its receptive field, so memory stays
bounded on large images, the tiles run on every CPU (each on one torch thread: the same
float operations whichever thread runs it), and the encoder and decoder run the very same
float operations. The bitstream names the :class:`Layout` (memory format and tile side).

Per-image adapters (``adapt.py``) only rescale the slices of the last convolution and
shift its bias: the decoder merges them into ``tail``'s weights, so they cost nothing at
decode time.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pixarc.device import cpu_threads
from pixarc.tensors import tensor_pixels

TILE = 512  # output tile side of layout 0; the halo covers the receptive field (one pixel per layer)


@dataclass(frozen=True)
class Layout:
    """How the filter's float operations are laid out: part of the bitstream (the header's
    flag bit 2), because another layout rounds the last float bit differently and so may
    move a sub-pixel by one grey level. Tiles are independent (each has its own halo), so
    they run on several threads with the very same float operations per tile."""

    code: int
    tile: int
    memory_format: torch.memory_format


NCHW = Layout(0, 512, torch.contiguous_format)  # the first bitstreams (format 1 without flag bit 2)
NHWC = Layout(1, 256, torch.channels_last)  # ≈1.6× faster on a CPU (oneDNN's channels-last kernels)
LAYOUTS = {lay.code: lay for lay in (NCHW, NHWC)}


class EnhanceNet(nn.Module):
    def __init__(self, channels: int = 32, layers: int = 6, cond: int = 2):
        super().__init__()
        if layers < 2:
            raise ValueError("the filter needs at least a head and a tail layer")
        self.channels, self.layers, self.cond = channels, layers, cond
        self.head = nn.Conv2d(3 + cond, channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers - 2))
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the identity: never worse than the base at step 0
        nn.init.zeros_(self.tail.bias)

    @property
    def halo(self) -> int:
        return self.layers + 2

    def features(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Activations entering ``tail``. ``x``: (B, 3, H, W) in [0, 1]; ``cond``: (B, cond)."""
        planes = cond[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        h = F.relu(self.head(torch.cat([x - 0.5, planes], 1)))
        for conv in self.body:
            h = F.relu(conv(h))
        return h

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.features(x, cond))


def tiles(height: int, width: int, halo: int, tile: int = TILE):
    """(out box, in box) pairs: out = (y0, y1, x0, x1) covers the image once, in = out
    grown by ``halo`` and clipped to the image. A fixed rule, so encoder and decoder agree."""
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            ob = (y0, min(height, y0 + tile), x0, min(width, x0 + tile))
            yield ob, grown(ob, halo, height, width)


def grown(box, halo: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``box`` (y0, y1, x0, x1) grown by ``halo`` on every side, clipped to the image."""
    y0, y1, x0, x1 = box
    return max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)


def crop_out(t: torch.Tensor, out_box, in_box) -> torch.Tensor:
    """The ``out_box`` part of a tensor computed over ``in_box``."""
    y0, y1, x0, x1 = out_box
    iy0, _, ix0, _ = in_box
    return t[..., y0 - iy0 : y1 - iy0, x0 - ix0 : x1 - ix0]


# ------------------------------------------------------------------ tiles on threads

_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (threads, the pool)
_POOL_LOCK = threading.Lock()


def workers() -> int:
    """Threads the tiles run on: the CPUs this process may use (``PIXARC_FILTER_THREADS``
    caps them). Each tile runs on one torch intra-op thread, whichever thread runs it."""
    cap = int(os.environ.get("PIXARC_FILTER_THREADS", "0") or 0)
    n = cpu_threads()
    return min(n, cap) if cap > 0 else n


def _map(fn, items: list) -> list:
    global _POOL
    n = min(workers(), len(items))
    if n <= 1:
        return [fn(i) for i in items]
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] < n:  # (a smaller one left to finish what it runs, then idle)
            _POOL = (n, ThreadPoolExecutor(n, thread_name_prefix="pixarc-filter"))
        pool = _POOL[1]
    return list(pool.map(fn, items))


_VARIANTS_LOCK = threading.Lock()


def laid_out(net: EnhanceNet, layout: Layout) -> EnhanceNet:
    """``net`` with its weights in ``layout``'s memory format (a copy, cached on the net)."""
    if layout.memory_format is torch.contiguous_format:
        return net
    with _VARIANTS_LOCK:
        variants = net.__dict__.setdefault("_laid_out", {})
        if layout.code not in variants:
            variants[layout.code] = copy.deepcopy(net).to(memory_format=layout.memory_format).eval()
        return variants[layout.code]


def _tail(layout: Layout, net: EnhanceNet, tail_weight, tail_bias):
    w = net.tail.weight if tail_weight is None else tail_weight
    b = net.tail.bias if tail_bias is None else tail_bias
    return w.contiguous(memory_format=layout.memory_format), b


def _boxes(net: EnhanceNet, shape, layout: Layout) -> list:
    return list(tiles(shape[2], shape[3], net.halo, layout.tile))


def _input(x: torch.Tensor, ib, layout: Layout) -> torch.Tensor:
    xi = x[..., ib[0] : ib[1], ib[2] : ib[3]]  # layout 0 takes the view, as the first bitstreams did
    return xi if layout.memory_format is torch.contiguous_format else xi.contiguous(memory_format=layout.memory_format)


@torch.no_grad()
def feature_tiles(net: EnhanceNet, x: torch.Tensor, cond: torch.Tensor, layout: Layout = NHWC) -> list:
    """[(out box, in box, input tile, features)] over the image: everything but the last layer,
    kept so the encoder can try several last layers (adapters) without recomputing it."""
    lnet = laid_out(net, layout)

    def one(boxes):
        ob, ib = boxes
        xi = _input(x, ib, layout)
        return ob, ib, xi, lnet.features(xi, cond)

    return _map(one, _boxes(net, x.shape, layout))


@torch.no_grad()
def finish(net: EnhanceNet, parts, shape, tail_weight=None, tail_bias=None, layout: Layout = NHWC) -> torch.Tensor:
    """The filter output from :func:`feature_tiles`; ``tail_weight``/``tail_bias`` replace the
    last layer's (adapters merged in). Unclamped float, ``shape`` = the input's."""
    w, b = _tail(layout, net, tail_weight, tail_bias)
    out = torch.empty(shape)

    def one(part):
        ob, ib, xi, h = part
        out[..., ob[0] : ob[1], ob[2] : ob[3]] = crop_out(xi + F.conv2d(h, w, b, padding=1), ob, ib)

    _map(one, parts)
    return out


@torch.no_grad()
def apply(net: EnhanceNet, x: torch.Tensor, cond: torch.Tensor, tail_weight=None, tail_bias=None,
          layout: Layout = NHWC) -> torch.Tensor:
    """Filter a (1, 3, H, W) image tile by tile (the decoder's path; the same float
    operations as :func:`feature_tiles` + :func:`finish`, one tile at a time)."""
    lnet = laid_out(net, layout)
    w, b = _tail(layout, net, tail_weight, tail_bias)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)

    def one(boxes):
        ob, ib = boxes
        xi = _input(x, ib, layout)
        out[..., ob[0] : ob[1], ob[2] : ob[3]] = crop_out(xi + F.conv2d(lnet.features(xi, cond), w, b, padding=1),
                                                          ob, ib)

    _map(one, _boxes(net, x.shape, layout))
    return out


def sample_blocks(height: int, width: int, halo: int, block: int = 128, count: int = 4) -> list:
    """Up to ``count`` (out box, in box) blocks of side ``block`` spread over the image
    (centres on a regular grid), or [] when they would cover most of it anyway: where the
    encoder compares settings of the filter before running the chosen one everywhere."""
    if height * width < 2 * count * block * block:
        return []
    side = max(1, round(count**0.5))
    out = []
    for gy in range(side):
        for gx in range(side):
            cy, cx = (2 * gy + 1) * height // (2 * side), (2 * gx + 1) * width // (2 * side)
            y0, x0 = min(max(0, cy - block // 2), height - block), min(max(0, cx - block // 2), width - block)
            ob = (y0, y0 + block, x0, x0 + block)
            out.append((ob, grown(ob, halo, height, width)))
    return out[:count]


def mosaic(arr, blocks: list) -> tuple:
    """The in boxes of ``blocks`` (from :func:`sample_blocks`) side by side in one small
    image: a grid of equal cells, each in box at its cell's top left and the rest of the
    cell its edge pixels repeated; with the blocks' (out box, in box) in the mosaic. An
    encoder's artifacts on the blocks, and the filter's gain over them, can be measured on
    it for the price of an encode of a fifth of a 768x512 image."""
    import numpy as np

    side = max(1, math.ceil(len(blocks) ** 0.5))
    rows = math.ceil(len(blocks) / side)
    ch = max(ib[1] - ib[0] for _, ib in blocks)
    cw = max(ib[3] - ib[2] for _, ib in blocks)
    out = np.empty((rows * ch, side * cw, *arr.shape[2:]), arr.dtype)
    out[...] = arr[blocks[0][1][0], blocks[0][1][2]]  # cells left empty (a partial last row)
    placed = []
    for n, (ob, ib) in enumerate(blocks):
        y, x = (n // side) * ch, (n % side) * cw
        piece = arr[ib[0] : ib[1], ib[2] : ib[3]]
        pad = ((0, ch - piece.shape[0]), (0, cw - piece.shape[1])) + ((0, 0),) * (arr.ndim - 2)
        out[y : y + ch, x : x + cw] = np.pad(piece, pad, mode="edge")
        dy, dx = y - ib[0], x - ib[2]
        placed.append(((ob[0] + dy, ob[1] + dy, ob[2] + dx, ob[3] + dx), (y, y + piece.shape[0], x, x + piece.shape[1])))
    return out, placed


def blocks_sse(a, orig, blocks: list) -> float:
    """SSE (0..255 scale) of ``a`` ((H, W, 3), any dtype) against ``orig`` ((H, W, 3)
    float64) over the out boxes of ``blocks``: what :func:`sampled_sse` measures of the
    filter, of an unfiltered image."""
    import numpy as np

    return sum(float(((a[y0:y1, x0:x1].astype(np.float64) - orig[y0:y1, x0:x1]) ** 2).sum())
               for (y0, y1, x0, x1), _ in blocks)


@torch.no_grad()
def sampled_sse(net: EnhanceNet, x: torch.Tensor, orig, blocks: list, cond: torch.Tensor,
                layout: Layout = NHWC) -> float:
    """SSE (0..255 scale, after rounding) of the filter over ``blocks`` against ``orig``
    ((H, W, 3) float64 array)."""
    import numpy as np

    lnet = laid_out(net, layout)

    def one(boxes):
        ob, ib = boxes
        xi = _input(x, ib, layout)
        y = tensor_pixels(crop_out(lnet(xi, cond), ob, ib)).astype(np.float64)
        return float(((y - orig[ob[0] : ob[1], ob[2] : ob[3]]) ** 2).sum())

    return sum(_map(one, blocks))


def to_uint8(x: torch.Tensor):
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 numpy array (round half to even, as torch does)."""
    return tensor_pixels(x)
