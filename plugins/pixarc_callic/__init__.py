"""``callic``: learned lossless coding (CALLIC / MGCF, PAPERS.md §2), exact by construction.

Model in ``model.py``, wavefront inference in ``wavefront.py``, integer CDFs and the range
coder in ``coder.py``, per-image adaptation in ``adapt.py``, training in ``train.py``
(``pixarc train callic``). Weights: ``PIXARC_CALLIC_WEIGHTS`` (directories with a
``weights.json``, searched first) or this plugin's ``weights/``; sha256 first,
``weights_only=True``; the architecture comes from the manifest entry.

Payload (``HEADER``): ``u8 mode (1 = L, 3 = RGB), u8 patch, u32 width, u32 height`` then
three sections (``pack_sections``): the quantised weight increments (empty for the frozen
model, ``iterations = 0``), the range-coder stream, and the first 8 bytes of the sha256 of
the pixels, which the decoder checks (a corrupt stream cannot pass for a good one).

Exactness guarantee. The encoder derives every CDF with the decoder's own procedure
(same wavefront steps, same batch shapes, same merged weights), quantises the network
outputs to an integer grid and builds CDFs in integers only, and always runs that pass on
the CPU, even when adaptation ran on a GPU. Tested: round trips (random, odd sizes, grey,
smaller than a patch, adapted), decode with a different torch thread count than the
encode. Not guaranteed: decoding on a different CPU model or torch build (float
network outputs may differ in the last bit and flip a rounding); the archive's
decode-check at encode time and the pixel digest catch such a mismatch instead of
returning wrong pixels. GPU decode is not offered (``decode(device=...)`` runs on the CPU).
"""

from __future__ import annotations

import contextlib
import hashlib

from pixarc.codec import Decoded, Param
from pixarc.device import CPU
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.learned import LearnedCodec, one_thread, torch_device
from pixarc.payload import PayloadLayout

from .constants import ARCH, MAX_SIDE

HEADER = PayloadLayout(">BBII", "channels patch width height", sections=3, plausible=lambda p: (
    p.head.channels in (1, 3) and 16 <= p.head.patch <= 128
    and 0 < p.head.width <= MAX_SIDE and 0 < p.head.height <= MAX_SIDE))
_MODES = {"L": 1, "RGB": 3}


def _digest(pixels) -> bytes:
    return hashlib.sha256(pixels.contiguous().numpy().tobytes()).digest()[:8]


def code_image(model, geom, channels: int, coder, pixels=None):
    """Run the wavefront, sending ``pixels`` (H, W, 3) uint8 through ``coder`` (encoder) or
    receiving them (decoder, ``pixels`` None). Returns the (H, W, 3) pixels."""
    import torch

    from .coder import Quantised, code_channel
    from .wavefront import CHUNK, run

    inside_all = geom.inside()
    known_all = None if pixels is None else geom.to_patches(pixels)
    k = model.mixtures
    inside = known = n_p = None

    def code_step(t, i, j, raw):
        n = len(i)
        valid = inside[i, j].reshape(-1)
        q = Quantised(raw.reshape(n * n_p, -1)[valid], k, model.coef_q)
        truth = None if known is None else known[i, j].reshape(n * n_p, 3)[valid].long()
        decoded: list[torch.Tensor] = []
        for c in range(channels):
            mean = q.channel_mean(c, decoded)
            decoded.append(code_channel(q, c, mean, None if truth is None else truth[:, c], coder))
        values = torch.stack(decoded * 3 if channels == 1 else decoded, dim=1).to(torch.uint8)
        out = torch.zeros(n * n_p, 3, dtype=torch.uint8)
        out[valid] = values
        return out.view(n, n_p, 3)

    parts = []
    with one_thread():
        for first in range(0, geom.patches, CHUNK):  # fixed partition: the stream is chunk after chunk
            chunk = slice(first, min(first + CHUNK, geom.patches))
            inside = inside_all[:, :, chunk]
            known = None if known_all is None else known_all[:, :, chunk]
            n_p = inside.shape[2]
            parts.append(run(model, geom, code_step, n_p))
    return geom.from_patches(torch.cat(parts, dim=2))


class CallicCodec(LearnedCodec):
    codec_id = "callic"
    format_version = 1
    lossless = True
    prefers_gpu = False  # the coding pass runs on the CPU (see the exactness guarantee)
    determinism = "pixels"  # exact by construction, checked against the pixel digest
    modes = frozenset(_MODES)  # RGBA/LA: declined, the route falls back to another lossless codec
    max_side = MAX_SIDE
    params_schema = {
        "iterations": Param(int, 0, 0, 2000, "adaptation steps on this image (0: frozen model)"),
        "patch": Param(int, 64, 16, 128, "patch side; a patch takes 3·patch−2 sequential steps"),
    }
    description = "CALLIC learned lossless (MGCF + integer logistic-mixture CDFs, wavefront decode)"
    weights_env, weights_arch, train_command = "PIXARC_CALLIC_WEIGHTS", ARCH, "pixarc train callic"

    def version(self) -> str:
        import constriction  # noqa: F401  (the coder's version is part of what produced the bits)
        from importlib.metadata import version

        tag = self.encoding_weights[0].sha256[:12] if self.encoding_weights else "untrained"
        return f"callic-{tag} torch-{version('torch')} constriction-{version('constriction')}"

    def build_model(self, weights, state):
        from .constants import COEF_Q_FIRST
        from .model import MGCF

        e = weights.entry
        model = MGCF(int(e["dim"]), int(e["depth"]), int(e["kernel"]), int(e["mixtures"]),
                     coef_q=int(e.get("coef_q", COEF_Q_FIRST)))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model

    def base_model(self):
        """The frozen model (CPU, fp32), loaded once."""
        return self.model(self.require_weights())

    def encode(self, src, params, device=CPU):
        import numpy as np
        import torch

        from .coder import Encoder
        from .wavefront import Geometry

        torch_name = torch_device(device)  # adaptation may run on a GPU; coding always on the CPU
        mode = src.image.mode
        if mode not in _MODES:
            raise CodecError(f"callic: mode {mode} not supported")
        a = np.asarray(src.image, dtype=np.uint8)
        pixels = torch.from_numpy(np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a.copy())
        h, w = pixels.shape[:2]
        geom = Geometry.of(h, w, params["patch"])
        model, increments = self.base_model(), b""
        if params["iterations"] > 0:
            from .adapt import adapt

            with contextlib.nullcontext() if device.is_gpu else one_thread():
                model, increments = adapt(self.base_model(), pixels, geom, _MODES[mode], params["iterations"],
                                          torch_name)
        enc = Encoder()
        code_image(model, geom, _MODES[mode], enc, pixels)
        return HEADER.pack(_MODES[mode], params["patch"], w, h,
                           sections=(increments, enc.finish(), _digest(pixels)))

    def decode(self, payload, device=CPU):
        from pixarc.images import DEFAULT_MAX_PIXELS

        p = HEADER.read(payload, self.codec_id)
        channels, patch, w, h = p.head
        increments, stream, digest = p.sections
        if w * h > DEFAULT_MAX_PIXELS:  # a forged header must not buy hours of decoding
            raise CodecError(f"callic: payload claims {w}x{h} pixels, refused")
        with self.refusing("cannot decode"):
            pixels = self._decode(channels, patch, w, h, increments, stream)
        if _digest(pixels) != digest:
            raise CodecError("callic: decoded pixels do not match the stored digest (corrupt stream or "
                             "a platform whose float network outputs differ from the encoder's)")
        from PIL import Image

        a = pixels.numpy()
        return Decoded(image=Image.fromarray(a[..., 0] if channels == 1 else a, "L" if channels == 1 else "RGB"))

    def _decode(self, channels, patch, w, h, increments, stream):
        from .coder import Decoder
        from .wavefront import Geometry

        model = self.base_model()
        if increments:
            from .adapt import merge

            model = merge(model, increments)
        return code_image(model, Geometry.of(h, w, patch), channels, Decoder(stream))


@hookimpl
def register_codecs(register):
    register(CallicCodec)


@hookimpl
def register_commands(register):
    from .commands import train_callic  # click and the shared options only; the trainer loads when it runs

    register(train_callic, group="train")
