"""The enhancement filter: a small residual CNN that removes a base codec's artefacts.

    x̂ = b + tail(relu(body(relu(head([b − ½, c])))))      b: the base decode in [0, 1]

``c`` are two constant conditioning planes: the base rate parameter normalised to [0, 1]
over its schema range (the filter knows the rate it cleans up, so one model serves every
quality) and a chroma flag (1 for 4:4:4 bases, whose colour is not smeared). The filter
is applied in fixed tiles with a halo wider than its receptive field, so memory stays
bounded on large images and the encoder and decoder run the very same float operations.

Per-image adapters (``adapt.py``) only rescale the slices of the last convolution and
shift its bias: the decoder merges them into ``tail``'s weights, so they cost nothing at
decode time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixarc.tensors import tensor_pixels

TILE = 512  # output tile side; the halo covers the receptive field (one pixel per layer)


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
            y1, x1 = min(height, y0 + tile), min(width, x0 + tile)
            iy0, ix0 = max(0, y0 - halo), max(0, x0 - halo)
            iy1, ix1 = min(height, y1 + halo), min(width, x1 + halo)
            yield (y0, y1, x0, x1), (iy0, iy1, ix0, ix1)


def crop_out(t: torch.Tensor, out_box, in_box) -> torch.Tensor:
    """The ``out_box`` part of a tensor computed over ``in_box``."""
    y0, y1, x0, x1 = out_box
    iy0, _, ix0, _ = in_box
    return t[..., y0 - iy0 : y1 - iy0, x0 - ix0 : x1 - ix0]


@torch.no_grad()
def feature_tiles(net: EnhanceNet, x: torch.Tensor, cond: torch.Tensor) -> list:
    """[(out box, in box, input tile, features)] over the image: everything but the last layer,
    kept so the encoder can try several last layers (adapters) without recomputing it."""
    out = []
    for ob, ib in tiles(x.shape[2], x.shape[3], net.halo):
        xi = x[..., ib[0] : ib[1], ib[2] : ib[3]]
        out.append((ob, ib, xi, net.features(xi, cond)))
    return out


@torch.no_grad()
def finish(net: EnhanceNet, parts, shape, tail_weight=None, tail_bias=None) -> torch.Tensor:
    """The filter output from :func:`feature_tiles`; ``tail_weight``/``tail_bias`` replace the
    last layer's (adapters merged in). Unclamped float, ``shape`` = the input's."""
    w = net.tail.weight if tail_weight is None else tail_weight
    b = net.tail.bias if tail_bias is None else tail_bias
    out = torch.empty(shape)
    for ob, ib, xi, h in parts:
        out[..., ob[0] : ob[1], ob[2] : ob[3]] = crop_out(xi + F.conv2d(h, w, b, padding=1), ob, ib)
    return out


@torch.no_grad()
def apply(net: EnhanceNet, x: torch.Tensor, cond: torch.Tensor, tail_weight=None, tail_bias=None) -> torch.Tensor:
    """Filter a (1, 3, H, W) image tile by tile (the decoder's path; the same float
    operations as :func:`feature_tiles` + :func:`finish`, one tile at a time)."""
    w = net.tail.weight if tail_weight is None else tail_weight
    b = net.tail.bias if tail_bias is None else tail_bias
    out = torch.empty_like(x)
    for ob, ib in tiles(x.shape[2], x.shape[3], net.halo):
        xi = x[..., ib[0] : ib[1], ib[2] : ib[3]]
        out[..., ob[0] : ob[1], ob[2] : ob[3]] = crop_out(xi + F.conv2d(net.features(xi, cond), w, b, padding=1), ob, ib)
    return out


def to_uint8(x: torch.Tensor):
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 numpy array (round half to even, as torch does)."""
    return tensor_pixels(x)
