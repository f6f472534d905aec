"""``svr``: masked adaptive codebooks (M-AdaCode), integers-only bitstreams.

Model and choices in ``model.py``; training in ``train.py`` (``pixarc train svr``).
Weights: ``PIXARC_SVR_WEIGHTS`` (directory with ``weights.json``) or this plugin's
``weights/``; sha256 first, ``weights_only=True``. Parameter ``m`` (1..K) is the rate
knob. Payload: ``u8 m, u16 width, u16 height, u16 u, u16 v`` then three rANS streams
(CompressAI's coder), each ``u32 length + bytes``: kept codebook ids (uniform over K),
codeword indices (one learned frequency table per codebook), weights on the integer
grid (one learned table; absent for m = 1). The decoder reads integers only, so every
device decodes the same symbols (``Decoded.fingerprint``); pixels then come from float
convolutions and may differ in the last bit across devices.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from pathlib import Path

from pixarc import compressai_compat
from pixarc.codec import Codec, Decoded, Param, pack_sections, unpack_sections
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.weights import manifest_entries

ARCH = "svr"
_HEAD = struct.Struct(">BHHHH")


def find_weights() -> tuple[Path, dict] | None:
    found = manifest_entries("PIXARC_SVR_WEIGHTS", Path(__file__).parent / "weights", ARCH)
    return found[0] if found else None


def _cdf(counts) -> list[int]:
    from compressai._CXX import pmf_to_quantized_cdf

    total = float(sum(counts))
    return pmf_to_quantized_cdf([float(c) / total for c in counts] + [0.0], 16)


class SVRCodec(Codec):
    codec_id = "svr"
    format_version = 1
    lossless = False
    prefers_gpu = True
    modes = frozenset({"RGB"})
    max_side = 65535
    params_schema = {"m": Param(int, 2, 1, 4, "codebooks kept per position (rate knob)")}
    description = "masked adaptive codebooks (M-AdaCode), integer-only bitstream"
    rate_param = "m"

    def __init__(self):
        compressai_compat.load()
        self._found = find_weights()
        self._models: dict[str, object] = {}
        self._lock = threading.RLock()  # the GPU copy is made from the CPU model, under the lock

    def version(self) -> str:
        return f"svr-{self._found[1]['sha256'][:12]}" if self._found else "untrained"

    def weights_for(self, params) -> str:
        return self._found[1]["sha256"] if self._found else ""

    def has_weights(self, sha256: str) -> bool:
        return bool(self._found) and self._found[1]["sha256"] == sha256

    def unsupported_reason(self, info):
        reason = super().unsupported_reason(info)
        if reason is None and not self._found:
            reason = "svr: no weights installed (pixarc train svr)"
        return reason

    def _model(self, device: str):
        with self._lock:
            if device not in self._models:
                if self._found is None:
                    raise CodecError("svr: no weights installed")
                if device == "cpu":
                    from pixarc.weights import WeightsError, load_weights

                    from .model import SVRModel

                    path, entry = self._found
                    try:
                        state = load_weights(path, entry["sha256"])
                    except WeightsError as exc:
                        raise CodecError(str(exc)) from None
                    model = SVRModel(width=int(entry["width"]))
                    model.load_state_dict(state)
                    self._models[device] = model.float().eval().requires_grad_(False)
                else:
                    import copy

                    self._models[device] = copy.deepcopy(self._model("cpu")).to(device)
            return self._models[device]

    def _tables(self, model):
        k = model.k
        index_cdfs = [_cdf(model.index_counts[i].tolist()) for i in range(k)]
        return index_cdfs, _cdf([1] * k), _cdf(model.weight_counts.tolist())

    def encode(self, src, params, device="cpu"):
        import numpy as np
        import torch
        import torch.nn.functional as F
        from compressai.ans import RansEncoder

        from .model import W_LEVELS

        model = self._model(device)
        m = params["m"]
        image = src.image
        w, h = image.size
        x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None].to(device)
        x = F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
        with torch.no_grad():
            idx, kept, w_int = model.analyse(x, m)
        idx_kept = torch.gather(idx, 1, kept)[0].cpu()
        kept, w_int = kept[0].cpu(), w_int[0].cpu()
        _, u, v = kept.shape
        index_cdfs, id_cdf, weight_cdf = self._tables(self._model("cpu"))
        order = lambda t: t.permute(1, 2, 0).reshape(-1).tolist()  # noqa: E731  raster, then slot
        ids, indices = order(kept), order(idx_kept)
        streams = [
            RansEncoder().encode_with_indexes(ids, [0] * len(ids), [id_cdf], [len(id_cdf)], [0]),
            RansEncoder().encode_with_indexes(indices, ids, index_cdfs, [len(c) for c in index_cdfs],
                                              [0] * len(index_cdfs)),
            b"" if m == 1 else RansEncoder().encode_with_indexes(
                order(w_int), [0] * len(ids), [weight_cdf], [len(weight_cdf)], [-(W_LEVELS // 2)]),
        ]
        return _HEAD.pack(m, w, h, u, v) + pack_sections(*streams)

    def decode(self, payload, device="cpu"):
        try:
            m, w, h, u, v = _HEAD.unpack_from(payload, 0)
            streams, pos = unpack_sections(payload, _HEAD.size, 3)
            if pos != len(payload):
                raise ValueError("trailing bytes")
        except (struct.error, ValueError) as exc:
            raise CodecError(f"svr: malformed payload ({exc})") from None
        if not (1 <= m <= 4 and 0 < w and 0 < h and u == (h + 7) // 8 and v == (w + 7) // 8):
            raise CodecError("svr: inconsistent header")
        try:
            return self._decode(m, w, h, u, v, streams, device)
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"svr: cannot decode ({type(exc).__name__}: {exc})") from None

    def _decode(self, m, w, h, u, v, streams, device) -> Decoded:
        import torch
        from compressai.ans import RansDecoder
        from PIL import Image

        from .model import W_LEVELS

        cpu = self._model("cpu")
        model = cpu if device == "cpu" else self._model(device)
        index_cdfs, id_cdf, weight_cdf = self._tables(cpu)
        n = u * v * m
        ids = RansDecoder().decode_with_indexes(streams[0], [0] * n, [id_cdf], [len(id_cdf)], [0])
        if any(not 0 <= i < cpu.k for i in ids):
            raise CodecError("svr: codebook id out of range")
        indices = RansDecoder().decode_with_indexes(streams[1], ids, index_cdfs, [len(c) for c in index_cdfs],
                                                    [0] * len(index_cdfs))
        weights = None
        if m > 1:
            weights = RansDecoder().decode_with_indexes(streams[2], [0] * n, [weight_cdf], [len(weight_cdf)],
                                                        [-(W_LEVELS // 2)])
        shape = lambda seq: torch.tensor(seq, dtype=torch.int64).view(u, v, m).permute(2, 0, 1)[None]  # noqa: E731
        kept, idx = shape(ids), shape(indices).clamp(0, cpu.size - 1)
        w_int = None if weights is None else shape(weights)
        with torch.no_grad():
            x = model.synthesise(idx.to(device), kept.to(device), None if w_int is None else w_int.to(device))
        pixels = (x[0, :, :h, :w].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        fp = hashlib.sha256(json.dumps([m, ids, indices, weights]).encode()).hexdigest()
        return Decoded(image=Image.fromarray(pixels), fingerprint=fp)


@hookimpl
def register_codecs(register):
    if compressai_compat.available():
        register(SVRCodec)
