"""Pillow <-> torch: the one conversion every learned codec and trainer uses.

Pixels go in as float32 in [0, 1] (``/ 255``), and come out clamped to [0, 1], scaled by
255 and rounded half to even (torch's rounding), then uint8. Encoder and decoder must
agree on this to the last bit: a reconstruction's hash is recorded in the container and
checked on every restore, so there is exactly one copy of it. torch is imported lazily
(the core runs without it).
"""

from __future__ import annotations

from typing import Any


def image_tensor(image: Any, device: str = "cpu"):
    """A Pillow RGB image (or an H×W×3 uint8 array) as a (1, 3, H, W) float32 tensor in [0, 1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None].to(device)


def tensor_pixels(x: Any):
    """A (3, H, W) or (1, 3, H, W) float tensor in [0, 1] as an H×W×3 uint8 numpy array."""
    import torch

    if x.dim() == 4:
        x = x[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def batch_tensor(arrays: Any, device: str = "cpu", *, unit: bool = True, channels_last: bool = False):
    """A (B, H, W, C) uint8 array as a (B, C, H, W) tensor: float32 in [0, 1] (``unit``, as
    :func:`image_tensor` converts) or the uint8 values themselves; ``channels_last``: in
    torch's channels-last memory format (faster convolutions on a CPU)."""
    import numpy as np
    import torch

    a = np.asarray(arrays, dtype=np.float32) / 255 if unit else np.ascontiguousarray(arrays)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
