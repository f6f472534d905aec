"""``adaptive-mbt2018-mean``: CompressAI's mean-scale hyperprior, adapted per image.

Weights, first match wins (all loaded by sha256 first, then ``weights_only=True``):
1. ``PIXARC_ADAPTIVE_WEIGHTS``: directories (``os.pathsep``-separated) holding a
   ``weights.json`` (``{"files": {name: {"sha256", "quality", "N", "M", "lambda"}}}``);
2. weights shipped with this plugin (``weights/weights.json`` beside this file), made
   by pixarc's training code;
3. genuine CompressAI zoo checkpoints in the torch hub cache
   (``$TORCH_HOME/hub/checkpoints/mbt2018-mean-<q>-<sha256 prefix>.pth.tar``), checked
   against the sha256 prefix in their name, as torch.hub does.

Parameters: ``quality`` (rate point 1–8), ``latent_iters`` (SGA refinement steps; the
paper uses 2000), ``adapter_iters`` (paper: 500), ``lr`` and ``adapter_lr`` (paper: 1e-3
both; a short run needs larger steps), ``scales`` (resize factors in
(0, 1] searched by RD cost, a list such as ``[1.0, 0.75, 0.5]``; the chosen one is coded
exactly, in permille), ``seed``. The algorithm is in ``adapt.py``; the default iteration
counts come from a measured gain-versus-iterations curve (``docs/adaptive.md``).

Adapters travel only when they pay for themselves: the payload with them must cost less
than the payload without, in decoded bytes + λ·MSE against the original.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from pixarc import compressai_compat
from pixarc.codec import Decoded, Param
from pixarc.device import CPU
from pixarc.errors import CodecError
from pixarc.hookspecs import hookimpl
from pixarc.learned import LearnedCodec, WeightsFile, one_thread
from pixarc.metrics import psnr
from pixarc.payload import PayloadLayout
from pixarc.tensors import image_tensor, tensor_pixels

from .constants import ARCH, LAMBDAS, ZOO_NM

# The payload: the rate point, the resize factor in permille, the original size and the
# hyper-latent grid; three sections (z, y, adapters); the count of adapter symbols.
HEADER = PayloadLayout(">BHIIHH", "quality permille width height z_rows z_cols", sections=3, tail=">I",
                       plausible=lambda p: (1 <= p.head.permille <= 1000 and 0 < p.head.width <= 1 << 16
                                            and 0 < p.head.height <= 1 << 16 and 0 < p.head.z_rows <= 4096
                                            and 0 < p.head.z_cols <= 4096))


def _from_hub_cache() -> list[WeightsFile]:
    import hashlib

    try:
        import torch.hub

        folder = Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover
        return []
    out = []
    for path in sorted(folder.glob(f"{ARCH}-*-*.pth.tar")) if folder.exists() else []:
        m = re.fullmatch(rf"{ARCH}-(\d)-([0-9a-f]{{8}})\.pth\.tar", path.name)
        if not m:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest.startswith(m.group(2)):  # the zoo names files by their hash prefix
            q = int(m.group(1))
            entry = {"quality": q, "N": ZOO_NM[q][0], "M": ZOO_NM[q][1], "lambda": LAMBDAS[q]}
            out.append(WeightsFile(path, digest, entry, "compressai-zoo"))
    return out


def rd_lambda(ck: WeightsFile) -> float:
    """The rate-distortion weight a rate point was trained with (its entry's, else CompressAI's)."""
    return float(ck.entry.get("lambda", LAMBDAS.get(int(ck.entry["quality"]), 0.0067)))


# psnr_ceiling's first look: the base model over a 2x2 grid of 128-pixel blocks (a quarter
# of a 500x500 image, no entropy coding: 0.04 s where the full pass takes 0.2-0.9 s),
# trusted only with this much slack. On the natural, comic and vector dev images the
# blocks read between 2.1 dB below and 2.4 dB above the whole image.
SAMPLE_BLOCK = 128
SAMPLE_BLOCKS = 4
SAMPLED_SLACK_DB = 3.0


class AdaptiveCodec(LearnedCodec):
    codec_id = "adaptive-mbt2018-mean"
    format_version = 1
    lossless = False
    modes = frozenset({"RGB"})
    params_schema = {
        "quality": Param(int, 3, 1, 8, "rate point (CompressAI quality)"),
        "latent_iters": Param(int, 30, 0, 100_000, "SGA latent refinement steps (paper: 2000)"),
        "adapter_iters": Param(int, 25, 0, 100_000, "adapter training steps (paper: 500)"),
        "lr": Param(float, 5e-2, 1e-6, 1.0, "latent refinement Adam learning rate (1/10 for the last 20 %)"),
        "adapter_lr": Param(float, 1e-2, 1e-6, 1.0, "adapter Adam learning rate (1/10 for the last 20 %)"),
        "scales": Param(float, (1.0,), 0.001, 1.0, "resize factors in (0, 1] searched by RD cost, coded in "
                        "permille, e.g. [1.0, 0.75, 0.5]", many=True),
        "seed": Param(int, 0, 0, 2**31 - 1, "adapter initialisation seed"),
        "ceiling_margin_db": Param(float, 4.0, 0.0, 1000.0, "RD selection skips this codec on an image where "
                                   "the base model at the highest installed rate point, plus this margin, cannot "
                                   "beat another candidate (largest adaptation gain measured there on dev: "
                                   "+1.6 dB PSNR, +3.4 dB MS-SSIM); 1000 never skips"),
        "floor_factor": Param(float, 0.5, 0.0, 1.0, "RD selection skips this codec on an image where the base "
                              "model's bytes at the lowest rate point that may reach the PSNR target (its "
                              "ceiling), times this factor, are not below another candidate's bytes "
                              "(adaptation moves rate by far less than half); 0 never skips"),
    }
    description = "CompressAI mbt2018-mean + SGA latent refinement + rank-2 adapters"
    rate_param = "quality"
    weights_per_rate = True  # one CompressAI checkpoint per rate point
    screened = True
    weights_env, weights_arch, train_command = "PIXARC_ADAPTIVE_WEIGHTS", ARCH, "pixarc train lossy"

    def find_weights(self) -> list[WeightsFile]:
        return super().find_weights() + _from_hub_cache()  # the first file per quality wins

    def version(self) -> str:
        import torch
        from importlib.metadata import version

        return f"compressai {version('compressai')}, torch {torch.__version__}"

    def validate_params(self, params):
        """``scales`` as the bitstream codes them: distinct permille values, largest first."""
        out = super().validate_params(params)
        out["scales"] = tuple(p / 1000 for p in sorted({round(1000 * s) for s in out["scales"]}, reverse=True))
        return out

    def build_model(self, weights, state):
        compressai_compat.load()  # before any compressai import (see compressai_compat)
        from compressai.models import MeanScaleHyperprior
        from compressai.zoo.pretrained import load_pretrained

        state = state.get("state_dict", state) if isinstance(state, dict) else state
        model = MeanScaleHyperprior(int(weights.entry["N"]), int(weights.entry["M"]))
        model.load_state_dict(load_pretrained(state))
        if not any(k.endswith("_quantized_cdf") for k in state):
            model.update(force=True)
        return model

    def _checkpoint(self, quality: int) -> WeightsFile:
        return self.require_weights({"quality": quality})

    # ------------------------------------------------------------------ encode

    def encode(self, src, params, device=CPU):
        import torch

        ck = self._checkpoint(params["quality"])
        cpu, dev = self.model(ck), self.model(ck, device)
        permille = self._pick_scale(src.image, ck, params, device)
        with torch.enable_grad():
            return self._encode_at(cpu, dev, src.image, permille, ck, params, device)

    def psnr_ceiling(self, src, params, device=CPU, below=None) -> float:
        """The base model's PSNR at the highest installed rate point (no adaptation, full
        size: one forward pass and a decode) plus ``ceiling_margin_db``. With ``below`` (a
        PSNR goal): first the same from a forward pass over a few sampled blocks, plus
        ``SAMPLED_SLACK_DB`` for what the blocks may miss, returned when that already lies
        below the goal (the full pass only where the image comes close)."""
        top = self.rate_values()[-1]
        if below is not None:
            quick = self._sampled_psnr(src, top, device)
            if quick is not None and quick + params["ceiling_margin_db"] + SAMPLED_SLACK_DB < below:
                return quick + params["ceiling_margin_db"] + SAMPLED_SLACK_DB
        return self._base_point(src, params, top, device)[1] + params["ceiling_margin_db"]

    def _sampled_psnr(self, src, quality: int, device) -> float | None:
        """PSNR of the base model at ``quality`` (rounded latents, no entropy coding) over
        ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK`` pixels on a grid over the image; None
        when the blocks would cover most of it (the full pass costs little more there)."""
        import numpy as np
        import torch

        w, h = src.image.size
        side, b = round(SAMPLE_BLOCKS**0.5), SAMPLE_BLOCK
        if w < side * b or h < side * b or w * h < 2 * SAMPLE_BLOCKS * b * b:
            return None
        corners = [(min((2 * gx + 1) * w // (2 * side) - b // 2, w - b), min((2 * gy + 1) * h // (2 * side) - b // 2, h - b))
                   for gy in range(side) for gx in range(side)]
        boxes = [(max(0, x0), max(0, y0), max(0, x0) + b, max(0, y0) + b) for x0, y0 in corners]
        crops = [src.image.crop(b) for b in boxes]
        model = self.model(self._checkpoint(quality), device)
        # one intra-op thread: an estimate over 65 k pixels gains no time from a second
        # (0.057 s of CPU on one, 0.087 s on two for 0.044 s of wall here), and archive
        # workers already fill the CPUs
        with torch.no_grad(), contextlib.nullcontext() if device.is_gpu else one_thread():
            x_hat = model(torch.cat([image_tensor(c) for c in crops]).to(device.torch))["x_hat"].clamp(0, 1).cpu()
        ref = np.stack([np.asarray(c, dtype=np.float64) for c in crops])
        out = np.stack([tensor_pixels(x_hat[i : i + 1]).astype(np.float64) for i in range(len(crops))])
        mse = float(((out - ref) ** 2).mean())
        return 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")

    def bytes_floor(self, src, params, psnr_goal, device=CPU) -> int | None:
        """``floor_factor`` × the base model's bytes at the lowest rate point whose ceiling
        (base PSNR + ``ceiling_margin_db``) reaches ``psnr_goal``: a base forward per rate
        point from the lowest up, stopping at the first that may reach it (the ladder is
        monotone: docs/adaptive.md)."""
        if params["floor_factor"] <= 0:
            return None
        for q in self.rate_values():
            size, quality = self._base_point(src, params, q, device)
            if quality + params["ceiling_margin_db"] >= psnr_goal:
                return int(size * params["floor_factor"])
        return None

    def _base_point(self, src, params, quality: int, device) -> tuple[int, float]:
        """(payload bytes, PSNR) of the base model at one rate point (no adaptation, full
        size), once per image and rate point while a route is encoded (pixarc.memo)."""
        from pixarc import memo

        key = ("adaptive-base", self.codec_id, src.sha256, quality, params["seed"])
        known = memo.get(key)
        if known is None:
            ck = self._checkpoint(quality)
            payload = self._encode_at(self.model(ck), self.model(ck, device), src.image, 1000, ck, params, device,
                                      search=True)
            known = (len(payload), psnr(src.image, self.decode(payload, device).image))
            memo.put(key, known)
        return known

    def _pick_scale(self, image, ck, params, device) -> int:
        """The resize search: a base encode per factor, judged by RD cost at full size."""
        scales = _permille(params)
        if len(scales) == 1:
            return scales[0]
        cpu, dev = self.model(ck), self.model(ck, device)
        return min(scales, key=lambda permille: self._rd_cost(
            self._encode_at(cpu, dev, image, permille, ck, params, device, search=True), image, rd_lambda(ck), device))

    def encode_stages(self, src, params, device=CPU) -> dict[str, tuple[bytes, float]]:
        """For benchmarks: the payload after each stage of one adaptation, sharing the work,
        with the process CPU seconds that stage's full encode takes: ``base`` (no
        adaptation, scale 1), ``refine`` (latent refinement), ``adapters`` (the encoder's
        choice with or without them; refine and adapters are one pass, timed together),
        ``resize`` (the resize search over ``params["scales"]`` then the adapted encode at
        the factor it picks: the ``adapters`` payload when that is 1)."""
        import time

        import torch

        ck = self._checkpoint(params["quality"])
        cpu, dev = self.model(ck), self.model(ck, device)
        t0 = time.process_time()
        out = {"base": (self._encode_at(cpu, dev, src.image, 1000, ck, params, device, search=True),
                        time.process_time() - t0)}
        with torch.enable_grad():
            t0 = time.process_time()
            plain, chosen = self._encode_tensors(cpu, dev, [src.image], 1000, ck, params, device, both=True)[0]
            adapt_s = time.process_time() - t0
            out.update(refine=(plain, adapt_s), adapters=(chosen, adapt_s))
            t0 = time.process_time()
            permille = self._pick_scale(src.image, ck, params, device)
            search_s = time.process_time() - t0
            if permille == 1000:
                out["resize"] = (chosen, search_s + adapt_s)
            else:
                t0 = time.process_time()
                payload = self._encode_at(cpu, dev, src.image, permille, ck, params, device)
                out["resize"] = (payload, search_s + time.process_time() - t0)
        return out

    def encode_group(self, srcs, params, device):
        """Adapt same-size images at once: one batched latent refinement and one batched adapter
        fit (each image's loss term and Adam moments are its own), then each is entropy-coded
        alone. A resize search is per image."""
        import torch

        scales = _permille(params)
        if len(scales) > 1:
            return super().encode_group(srcs, params, device)
        ck = self._checkpoint(params["quality"])
        with torch.enable_grad():
            return self._encode_tensors(self.model(ck), self.model(ck, device), [s.image for s in srcs], scales[0],
                                        ck, params, device)

    def _encode_at(self, cpu, dev, image, permille, ck, params, device, search=False) -> bytes:
        return self._encode_tensors(cpu, dev, [image], permille, ck, params, device, search)[0]

    def _encode_tensors(self, cpu, dev, images, permille, ck, params, device, search=False, both=False) -> list:
        """Payloads of ``images`` (one size) coded at ``permille``; ``both``: per image the
        pair (payload without adapters, payload chosen)."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        from . import adapt

        w, h = images[0].size
        ws, hs = max(1, round(w * permille / 1000)), max(1, round(h * permille / 1000))
        work = [im if (ws, hs) == (w, h) else im.resize((ws, hs), Image.LANCZOS) for im in images]
        x = torch.cat([image_tensor(im) for im in work]).to(device.torch)
        x = F.pad(x, (0, (-ws) % 64, 0, (-hs) % 64), mode="replicate")
        # what is optimised is what the decoder delivers (cropped, upscaled) vs the original
        target = x[..., :hs, :ws] if (ws, hs) == (w, h) else torch.cat([image_tensor(im) for im in images]).to(device.torch)
        view = adapt.View((ws, hs), (w, h), device.torch)
        synth = adapt.Synthesis(dev.g_s)
        latent_iters = 0 if search else params["latent_iters"]
        lat = adapt.refine_latents(dev, synth, x, target, view, rd_lambda(ck), latent_iters, params["lr"])
        coded = []
        with torch.no_grad():
            for i in range(len(images)):  # entropy coding per image, on the CPU model
                z = lat.z[i : i + 1].cpu()
                z_strings = cpu.entropy_bottleneck.compress(z)
                z_hat = cpu.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
                sc, means = adapt.entropy_params(cpu, z_hat)
                idx = cpu.gaussian_conditional.build_indexes(sc)
                y_strings = cpu.gaussian_conditional.compress(lat.y[i : i + 1].cpu(), idx, means=means)
                y_hat = cpu.gaussian_conditional.decompress(y_strings, idx, means=means)
                coded.append((z_strings[0], y_strings[0], y_hat, z.shape[-2:]))
        symbols: list[list[int]] = [[] for _ in images]
        if params["adapter_iters"] and not search:
            y_hats = torch.cat([c[2] for c in coded]).to(device.torch)
            symbols, _, _ = adapt.train_adapters(synth, y_hats, target, view, rd_lambda(ck), params["adapter_iters"],
                                                 params["adapter_lr"], params["seed"])
        out = []
        for image, (z_str, y_str, _, z_shape), sym in zip(images, coded, symbols, strict=True):
            head = (int(ck.entry["quality"]), permille, w, h, *z_shape)
            plain = chosen = HEADER.pack(*head, sections=(z_str, y_str, b""), tail=(0,))
            if any(sym):  # sent only if it pays: decoded bytes + λ·MSE, both payloads decoded
                adapted = HEADER.pack(*head, sections=(z_str, y_str, adapt.encode_adapter(sym)), tail=(len(sym),))
                chosen = min((plain, adapted), key=lambda p: self._rd_cost(p, image, rd_lambda(ck), device))  # tie: plain
            out.append((plain, chosen) if both else chosen)
        return out

    def _rd_cost(self, payload: bytes, image, lam: float, device=CPU) -> float:
        """bpp + λ·MSE (8-bit scale, CompressAI's λ·255²·MSE on [0, 1]) of the decoded payload."""
        import numpy as np

        decoded = np.asarray(self.decode(payload, device).image, np.float64)
        mse = float(np.mean((decoded - np.asarray(image, np.float64)) ** 2))
        return 8 * len(payload) / (image.width * image.height) + lam * mse

    # ------------------------------------------------------------------ decode

    def decode(self, payload, device=CPU):
        p = HEADER.read(payload, self.codec_id)
        quality, permille, w, h, zr, zc = p.head
        blobs, (n_sym,) = p.sections, p.tail
        ck = self._checkpoint(quality)
        if n_sym not in (0, 2 * 2 * self.model(ck).g_s[-1].in_channels):
            raise CodecError(f"{self.codec_id}: adapter of {n_sym} values does not fit this model")
        with self.refusing("cannot decode"):  # rANS on corrupt strings, shape mismatches...
            return self._decode(ck, permille, w, h, (zr, zc), blobs, n_sym, device)

    def _decode(self, ck, permille, w, h, z_shape, blobs, n_sym, device) -> Decoded:
        import torch
        from PIL import Image

        from . import adapt

        ws, hs = max(1, round(w * permille / 1000)), max(1, round(h * permille / 1000))
        if (z_shape[0] * 64 < hs) or (z_shape[1] * 64 < ws):
            raise CodecError(f"{self.codec_id}: latent shape does not cover the image")
        cpu, dev = self.model(ck), self.model(ck, device)
        with torch.no_grad():
            z_hat = cpu.entropy_bottleneck.decompress([blobs[0]], z_shape)
            sc, means = adapt.entropy_params(cpu, z_hat)
            idx = cpu.gaussian_conditional.build_indexes(sc)
            y_hat = cpu.gaussian_conditional.decompress([blobs[1]], idx, means=means)
            symbols = adapt.decode_adapter(blobs[2], n_sym) if n_sym else []
            theta = torch.tensor(symbols, dtype=torch.float32, device=device.torch) * adapt.W_STEP if symbols else None
            x_hat = adapt.Synthesis(dev.g_s)(y_hat.to(device.torch), theta).clamp(0, 1)[0, :, :hs, :ws]
            pixels = tensor_pixels(x_hat)
            medians = cpu.entropy_bottleneck._get_medians()
            fp = adapt.fingerprint(torch.round(y_hat - means), torch.round(z_hat - medians), symbols)
        image = Image.fromarray(pixels)
        if (ws, hs) != (w, h):
            image = image.resize((w, h), Image.BICUBIC)
        return Decoded(image=image, fingerprint=fp)


def _permille(params) -> list[int]:
    """The resize factors as the bitstream codes them, largest first."""
    return sorted({round(1000 * s) for s in params["scales"]}, reverse=True)


@hookimpl
def register_codecs(register):
    if compressai_compat.available():
        register(AdaptiveCodec)


@hookimpl
def register_commands(register):
    from .commands import train_lossy  # click and the shared options only; the trainer loads when it runs

    register(train_lossy, group="train")
