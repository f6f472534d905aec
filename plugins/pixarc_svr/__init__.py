"""``svr``: masked adaptive codebooks (M-AdaCode, PAPERS.md §3), integer-only bitstreams.

Model and choices in ``model.py``; training in ``train.py`` (``pixarc train svr``).
Weights: ``PIXARC_SVR_WEIGHTS`` (directory with ``weights.json``) or this plugin's
``weights/``; sha256 first, ``weights_only=True``. Parameter ``m`` (1..K): m = K sends all
K weights (AdaCode), 1 < m < K the top-m weights and which codebooks they belong to, m = 1
the one-hot mode (codebook and sign, no weights); with the shipped weights it moves the
rate by ~0.05 bpp and PSNR by <= 0.2 dB. Parameter ``stages`` (1..K, default K): only the
first s residual stages' index maps are sent (context layout only); the rate knob that
moves quality (measured in docs/svr.md, benchmarks/svr_stages.py).

Payload (format 2): ``u8 m, u16 width, u16 height, u16 u, u16 v`` then three rANS
sections (CompressAI's coder), each ``u32 length + bytes``:
  1. all K codeword-index maps, raster order then codebook, one learned table per codebook;
     or, when the head's first byte carries ``CONTEXT`` (0x80, with m in its low bits), the
     context layout ``u8 m|0x80, u8 stages, u16 width, u16 height, u16 u, u16 v, u32 tables``
     (``tables``: the context tables' file sha256, first 32 bits): the first ``stages``
     maps, stage by stage, each index with a table chosen by its context (left neighbour,
     two equality flags; ``context.py``); the decoder sets the codewords of the stages not
     sent to zero. New encodes use the context layout when the weights have context
     tables; payloads without the flag decode as before;
  2. the selection symbol per position (empty for m = K): m = 1: 2·codebook + (weight < 0),
     1 < m < K: the kept set's number among the C(K, m) sets; one learned table per m;
  3. the kept weights on the integer grid (empty for m = 1), one learned table per m.
The tables are built from integer counts with integer arithmetic (``pixarc.entropy``), and
rANS runs on the CPU, so every device decodes the same integers (``Decoded.fingerprint``);
pixels then come from float convolutions and may differ in the last bit across devices.
"""

from __future__ import annotations

import hashlib
import json

from pixarc import compressai_compat
from pixarc.codec import Decoded, Param
from pixarc.device import CPU
from pixarc.entropy import cdf_from_counts, rans_decode, rans_encode
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.learned import LearnedCodec
from pixarc.payload import Payload, PayloadLayout
from pixarc.tensors import image_tensor, tensor_pixels

from .constants import ARCH

CONTEXT = 0x80  # in the head's first byte: the index maps are context-coded (HEADER_CONTEXT)


def _plausible(p: Payload) -> bool:
    return (1 <= p.head.m & ~CONTEXT <= 4 and p.head.width > 0 and p.head.height > 0
            and p.head.u == (p.head.height + 7) // 8 and p.head.v == (p.head.width + 7) // 8)


HEADER = PayloadLayout(">BHHHH", "m width height u v", sections=3,
                       plausible=lambda p: not p.head.m & CONTEXT and _plausible(p))
HEADER_CONTEXT = PayloadLayout(">BBHHHHI", "m stages width height u v tables", sections=3,
                               plausible=lambda p: bool(p.head.m & CONTEXT) and 1 <= p.head.stages <= 4
                               and _plausible(p))


def read_payload(payload: bytes, codec_id: str = "svr") -> Payload:
    """A payload of either layout (the first byte tells which), checked."""
    context = bool(payload[:1]) and bool(payload[0] & CONTEXT)
    return (HEADER_CONTEXT if context else HEADER).read(payload, codec_id)


class SVRCodec(LearnedCodec):
    codec_id = "svr"
    format_version = 2  # 2: all K index maps, selection symbols, per-m tables
    lossless = False
    modes = frozenset({"RGB"})
    max_side = 65535
    params_schema = {"m": Param(int, 2, 1, 4, "codebooks kept per position (weights sent for the kept ones)"),
                     "stages": Param(int, 4, 1, 4, "residual stages sent, the first s (the rate knob: "
                                                   "fewer stages, fewer bits, lower quality)")}
    description = "masked adaptive codebooks (M-AdaCode), integer-only bitstream"
    # what target_psnr / target_bpp search: the stages sent span 4.4 dB on dev between 1 and
    # 4 (PSNR rises with each on 39 of 40 images); m moves PSNR by <= 0.1 dB (docs/svr.md)
    rate_param = "stages"
    weights_env, weights_arch, train_command = "PIXARC_SVR_WEIGHTS", ARCH, "pixarc train svr"

    def version(self) -> str:
        return f"svr-{self.encoding_weights[0].sha256[:12]}" if self.encoding_weights else "untrained"

    def build_model(self, weights, state):
        compressai_compat.load()  # the rANS coder; before any compressai import
        from .model import SVRModel

        return SVRModel.from_weights(weights.entry, state)

    def _model(self, device=CPU):
        return self.model(self.require_weights(), device)

    def _tables(self, model) -> dict:
        """The rANS tables of a model, built once from its integer counts: table k < K codes
        codebook k's indices, then the selection symbol and the weights, one per m."""
        if getattr(model, "_pixarc_tables", None) is None:
            from .model import select_symbols

            k = model.k
            index = [cdf_from_counts(model.index_counts[i].tolist()) for i in range(k)]
            select = {m: cdf_from_counts(model.select_counts[m, : select_symbols(k, m)].tolist())
                      for m in range(1, k) if select_symbols(k, m)}
            weight = {m: cdf_from_counts(model.weight_counts[m].tolist()) for m in range(2, k + 1)}
            model._pixarc_tables = {"index": index, "select": select, "weight": weight}
        return model._pixarc_tables

    def rate_values(self, params=None) -> list[int]:
        """The stage counts a rate search may probe: all of them with context tables (the
        only layout that sends fewer than K), else K alone."""
        k = self._model().k
        return list(range(1, k + 1)) if self.context_tables() is not None else [k]

    def context_tables(self):
        """The context tables of the weights in use (None: they code index maps context-free)."""
        from .context import load_tables

        model, weights = self._model(), self.require_weights()
        if not hasattr(model, "_pixarc_context"):
            model._pixarc_context = load_tables(weights.path, weights.entry)
        return model._pixarc_context

    def fixed_length_bits(self, m: int, u: int, v: int) -> int:
        """What the same symbols would cost in a plain fixed-length code (for the benchmark)."""
        from .model import W_LEVELS, select_symbols

        model = self._model()
        bits = lambda n: (n - 1).bit_length()  # noqa: E731
        nsel = select_symbols(model.k, m)
        per = model.k * bits(model.size) + (bits(nsel) if nsel else 0) + (m * bits(W_LEVELS) if m > 1 else 0)
        return u * v * per

    def encode(self, src, params, device=CPU):
        return self.encode_with(src, params, device, context=True)

    def encode_with(self, src, params, device=CPU, context: bool = True) -> bytes:
        """``encode``; ``context=False`` writes the context-free layout (what format 2 wrote
        before context tables existed) even when the weights have context tables."""
        import torch
        import torch.nn.functional as F

        from .model import W_OFFSET

        model = self._model(device)
        m = params["m"]
        image = src.image
        w, h = image.size
        x = image_tensor(image, device.torch)
        x = F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
        with torch.no_grad():
            idx, select, w_int = model.analyse(x, m)
        u, v = idx.shape[-2:]
        tables = self._tables(self._model())
        raster = lambda t: t[0].permute(1, 2, 0).reshape(-1).tolist()  # noqa: E731  raster, then codebook/slot
        k = model.k
        ctx = self.context_tables() if context else None
        stages = params.get("stages", k)
        if stages > k or stages < k and ctx is None:
            raise CodecError(f"svr: stages={stages} needs context tables and at most K={k}")
        if ctx is not None:
            streams = [ctx.encode(idx[0, :stages].cpu().numpy())]
        else:
            streams = [rans_encode(raster(idx.cpu()), tables["index"], list(range(k)) * (u * v), [0] * k)]
        streams.append(b"" if select is None else rans_encode(select[0].reshape(-1).tolist(), [tables["select"][m]]))
        streams.append(b"" if w_int is None else rans_encode(raster(w_int.cpu()), [tables["weight"][m]],
                                                             offsets=-W_OFFSET))
        if ctx is not None:
            return HEADER_CONTEXT.pack(m | CONTEXT, stages, w, h, u, v, ctx.tag, sections=streams)
        return HEADER.pack(m, w, h, u, v, sections=streams)

    def decode(self, payload, device=CPU):
        p = read_payload(payload, self.codec_id)
        with self.refusing("cannot decode"):
            return self._decode(p, device)

    def decode_integers(self, payload: bytes) -> tuple[int, list[int], list[int] | None, list[int] | None]:
        """The integers of a payload (m, index maps, selection, weights), on the CPU only:
        rANS with integer tables, so the same on every machine. The index maps are the
        stages sent (all K, or the payload's ``stages``), raster order then stage."""
        return self._integers(read_payload(payload, self.codec_id))

    def _integers(self, p: Payload) -> tuple[int, list[int], list[int] | None, list[int] | None]:
        from .model import W_LEVELS, W_OFFSET, select_symbols

        cpu = self._model()
        m, streams = p.head.m & ~CONTEXT, p.sections
        k, tables, n = cpu.k, self._tables(cpu), p.head.u * p.head.v
        if m > k:
            raise CodecError(f"svr: m={m} > K={k}")
        if p.head.m & CONTEXT:
            ctx = self.context_tables()
            if ctx is None or ctx.tag != p.head.tables:
                raise CodecError(f"svr: payload coded with context tables {p.head.tables:08x}, the weights have "
                                 f"{'none' if ctx is None else f'{ctx.tag:08x}'}")
            # the same integers, in the context-free layout's order (raster, then codebook)
            indices = ctx.decode(streams[0], p.head.u, p.head.v, p.head.stages).transpose(1, 2, 0).reshape(-1).tolist()
        else:
            indices = rans_decode(streams[0], k * n, tables["index"], list(range(k)) * n, [0] * k)
        if any(not 0 <= i < cpu.size for i in indices):
            raise CodecError("svr: codeword index out of range")
        select = weights = None
        nsel = select_symbols(k, m)
        if nsel:
            select = rans_decode(streams[1], n, [tables["select"][m]])
            if any(not 0 <= s < nsel for s in select):
                raise CodecError("svr: selection symbol out of range")
        if m > 1:
            weights = rans_decode(streams[2], n * m, [tables["weight"][m]], offsets=-W_OFFSET)
            if any(not -W_OFFSET <= q <= W_LEVELS - 1 - W_OFFSET for q in weights):
                raise CodecError("svr: weight out of range")
        return m, indices, select, weights

    def _decode(self, p: Payload, device) -> Decoded:
        import torch
        from PIL import Image

        from .model import select_symbols

        w, h, u, v, streams = p.head.width, p.head.height, p.head.u, p.head.v, p.sections
        m, indices, select, weights = self._integers(p)
        cpu = self._model()
        k = cpu.k
        if (not select_symbols(k, m)) != (not streams[1]) or (m == 1) != (not streams[2]):
            raise CodecError("svr: sections do not match m")
        model = self._model(device)
        stages = getattr(p.head, "stages", k)
        idx = torch.tensor(indices, dtype=torch.int64).view(u, v, stages).permute(2, 0, 1)[None]
        idx = torch.cat([idx, torch.zeros(1, k - stages, u, v, dtype=torch.int64)], 1)  # unsent: zero codewords
        sel = None if select is None else torch.tensor(select, dtype=torch.int64).view(1, u, v)
        w_int = None if weights is None else torch.tensor(weights, dtype=torch.int64).view(u, v, m).permute(2, 0, 1)[None]
        masked, mask = cpu.masked_from_symbols(m, sel, w_int, (1, u, v))
        with torch.no_grad():
            x = model.synthesise(idx.to(device.torch), masked.to(device.torch), mask.to(device.torch), stages)
        pixels = tensor_pixels(x[0, :, :h, :w])
        ints = [m, indices, select, weights] if stages == k else [m, stages, indices, select, weights]
        fp = hashlib.sha256(json.dumps(ints).encode()).hexdigest()
        return Decoded(image=Image.fromarray(pixels), fingerprint=fp)


@hookimpl
def register_codecs(register):
    if compressai_compat.available():
        register(SVRCodec)


@hookimpl
def register_commands(register):
    from .commands import svr, train_svr  # click and the shared options only; the trainer loads when it runs

    register(train_svr, group="train")
    register(svr)
