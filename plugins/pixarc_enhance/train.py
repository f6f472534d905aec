"""Training the generic enhancement filter over a base codec's decodes.

    pixarc train enhance --data ../shared/data/train/crops --base avif --minutes 15 \\
        --out plugins/pixarc_enhance/weights [--dev ../shared/data/dev] [--device cuda]

One model for every rate of the base: each training image is encoded by the base codec
(the ``<base>-enhanced`` codec of the plugin registry, so any lossy base works) at
``--variants`` random rates drawn from ``--rates`` (and, for bases with a ``subsampling``
parameter, both 4:2:0 and 4:4:4), and the filter learns ``base decode -> original``
conditioned on the normalised rate and the chroma flag (exactly what the codec feeds it).
Loss: MSE; Adam; random patches and flips. The base payloads are cached beside the
checkpoint (``<name>.pool.ckpt``), so a resumed or continued run decodes them instead of
re-encoding. ``--dev``: the mean PSNR gain over the base of dev centre crops (one base
encode each). A final stage refits the last layer exactly by least squares on ``--refit``
training patches; with ``--dev`` the refit is kept only if dev agrees.

The rest is :class:`pixarc.training.TrainingRun`: a run continues the newest shipped filter
of the same shape (``--fresh`` starts over, ``--resume`` continues a checkpoint), the
learning rate follows the cumulative step count, what ships is the weight average, as a
new ``enhance-<base>-c<C>-l<L>[-vN].pt`` (bitstreams name their filter by sha256, so the
old file stays) with every run's stage.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from pixarc.training import atomic_save

from .constants import ARCH


def torch_no_grad(fn):
    """``torch.no_grad`` without importing torch at module import time."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **k):
        import torch

        with torch.no_grad():
            return fn(*a, **k)

    return wrapper


def build_pool(files: list[Path], base: str, rates: tuple[int, int], variants: int, seed: int,
               cache: Path | None = None, key: str = "", log=print, chroma: str = "both",
               crop: int | None = None) -> list[tuple]:
    """(original uint8, base decode uint8, cond) for every image × variant, reproducibly.

    The base payloads are kept in ``cache`` (a few MB), so a resumed run decodes them
    instead of re-encoding (AVIF encodes cost minutes on a small CPU, decodes seconds)."""
    import numpy as np
    import torch

    from pixarc.device import CPU
    from pixarc.errors import PixarcError
    from pixarc.images import probe_and_load
    from pixarc.plugins import build_plugin_manager

    try:  # through the registry (as archive finds it), not by importing the plugin's own package
        codec = build_plugin_manager().codec(f"{base}-enhanced")
    except PixarcError:
        raise SystemExit(f"no {base}-enhanced codec registered (bases: PIXARC_ENHANCE_BASES)") from None
    if codec.base is None or codec.rate_param is None:
        raise SystemExit(f"base codec {base!r} is not installed or has no rate parameter")
    schema = codec.base.params_schema
    subs = {"subsampling": ["4:2:0", "4:4:4"] if schema["subsampling"].type is str else [2, 0]} \
        if "subsampling" in schema else {}
    if subs and chroma == "444":  # the setting the lossy policy uses
        subs["subsampling"] = subs["subsampling"][1:]
    cached = None
    if cache is not None and cache.exists():
        doc = torch.load(cache, weights_only=True)
        if doc.get("key") == key:
            cached = doc["payloads"]
            log(f"pool: decoding {len(cached)} cached base payloads from {cache.name}")
    rng = random.Random(seed)
    pool, payloads, t0 = [], [], time.time()
    for i, path in enumerate(files):
        src = probe_and_load(path.read_bytes())
        if src.image is None:
            continue
        if src.image.mode != "RGB" or crop:
            im = src.image.convert("RGB")
            if crop:
                w, h = im.size
                x0, y0 = max(0, (w - crop) // 2), max(0, (h - crop) // 2)
                im = im.crop((x0, y0, min(w, x0 + crop), min(h, y0 + crop)))
            src = probe_and_load(_png(im))
        for v in range(variants):
            params = {codec.rate_param: rng.randint(*rates)}
            if subs:
                params["subsampling"] = rng.choice(subs["subsampling"])
            params = codec.validate_params(params)
            bp = {k: params[k] for k in schema}
            payload = cached[len(payloads)].numpy().tobytes() if cached else codec.base.encode(src, bp, CPU)
            payloads.append(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
            im, _ = codec._base_decode(payload)
            pool.append((np.asarray(src.image), np.asarray(im), codec._cond(params)))
        if (i + 1) % 50 == 0:
            log(f"pool: {i + 1}/{len(files)} images ({time.time() - t0:.0f} s)")
    if cache is not None and not cached:
        atomic_save({"key": key, "payloads": payloads}, cache)
    return pool


@torch_no_grad
def refit_tail(net, pool, samples: int, patch: int, rng: random.Random, device: str, log=print) -> dict:
    """Least-squares refit of the last layer on the pool: with the body fixed, the filter
    output is linear in the last layer, so its best weights over a sample of training patches
    are a 289-unknown least-squares problem per colour, solved exactly (a cheap final stage
    that a few hundred SGD steps on a busy CPU do not reach)."""
    import torch
    import torch.nn.functional as F

    from pixarc.tensors import image_tensor

    C = net.channels
    n_in = 9 * C + 1
    gram = torch.zeros(n_in, n_in, dtype=torch.float64)
    corr = torch.zeros(n_in, 3, dtype=torch.float64)
    before = energy = 0.0
    t0 = time.time()
    for i in range(samples):
        orig, dec, cond = pool[rng.randrange(len(pool))]
        h, w = orig.shape[:2]
        ph, pw = min(patch, h), min(patch, w)
        y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
        o, b = image_tensor(orig[y : y + ph, x : x + pw]), image_tensor(dec[y : y + ph, x : x + pw])
        feats = net.features(b.to(device), torch.tensor([cond], dtype=torch.float32, device=device))
        cols = F.unfold(feats, 3, padding=1)[0].T.cpu()  # (pixels, 9C), the tail conv's inputs
        cols = torch.cat([cols, torch.ones(cols.shape[0], 1)], 1)
        target = (o - b)[0].reshape(3, -1).T  # (pixels, 3): the residual the tail must predict
        gram += (cols.T @ cols).double()
        corr += (cols.T @ target).double()
        pred = F.conv2d(feats.cpu(), net.tail.weight.cpu(), net.tail.bias.cpu(), padding=1)
        before += float(((pred - (o - b)) ** 2).sum())
        energy += float((target.double() ** 2).sum())
    ridge = 1e-6 * float(torch.diagonal(gram).mean())
    sol = torch.linalg.solve(gram + ridge * torch.eye(n_in, dtype=torch.float64), corr)  # (n_in, 3)
    # the solution's residual: |t|² − 2·solᵀc + solᵀGsol
    after = energy - float(2 * (sol * corr).sum() - (sol * (gram @ sol)).sum())
    if after < before:
        weight = sol[:-1].T.reshape(3, C, 3, 3)  # unfold orders columns channel-major, then ky, kx
        net.tail.weight.copy_(weight.float().to(net.tail.weight.device))
        net.tail.bias.copy_(sol[-1].float().to(net.tail.bias.device))
    log(f"least-squares tail refit on {samples} patches: SSE {before:.2f} -> {after:.2f} "
        f"({'kept' if after < before else 'discarded'}; {time.time() - t0:.0f} s)")
    return {"samples": samples, "patch": patch, "sse_before": round(before, 4), "sse_after": round(after, 4),
            "kept": after < before}


def narrowed(state: dict, channels: int) -> dict:
    """A filter of ``channels`` hidden channels cut out of a wider one's ``state`` (same depth):
    in every hidden layer the channels that carry most, by the norm of the weights that make
    them times the norm of the weights that read them, keep their weights; the next layer
    reads only those. The start of a narrower filter (``--init-from``): fine-tuning then
    recovers in minutes what training from random weights takes hours to learn."""
    import torch

    body = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.")})
    layers = ["head", *(f"body.{i}" for i in body), "tail"]
    w = {name: state[f"{name}.weight"].float() for name in layers}
    b = {name: state[f"{name}.bias"].float() for name in layers}
    wide = w["head"].shape[0]
    if not 0 < channels <= wide:
        raise ValueError(f"cannot narrow a filter of {wide} channels to {channels}")
    out: dict = {}
    kept_in = torch.arange(w["head"].shape[1])  # the input planes: all of them
    for name, reader in zip(layers[:-1], layers[1:]):
        made = w[name][:, kept_in].flatten(1).norm(dim=1)  # (out,) what makes each channel
        read = w[reader].transpose(0, 1).flatten(1).norm(dim=1)  # (out,) what reads it
        kept = torch.sort(torch.topk(made * read, channels).indices).values
        out[f"{name}.weight"] = w[name][kept][:, kept_in].clone()
        out[f"{name}.bias"] = b[name][kept].clone()
        kept_in = kept
    out["tail.weight"] = w["tail"][:, kept_in].clone()
    out["tail.bias"] = b["tail"].clone()
    return out


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _score(net, pool, device: str) -> float:
    """Mean PSNR gain (dB) of ``net`` over the base decodes of a validation pool."""
    import numpy as np
    import torch

    from pixarc.tensors import image_tensor

    gains = []
    with torch.no_grad():
        for orig, dec, cond in pool:
            o, b = image_tensor(orig, device), image_tensor(dec, device)
            y = (net(b, torch.tensor([cond], dtype=torch.float32, device=device)).clamp(0, 1) * 255).round() / 255
            mse_b, mse_y = float(((b - o) ** 2).mean()), float(((y - o) ** 2).mean())
            gains.append(10 * np.log10(max(mse_b, 1e-12) / max(mse_y, 1e-12)))
    return float(np.mean(gains))


def train(data: str, out: str, base: str = "avif", minutes: float = 15.0, steps: int = 10**9, batch: int = 16,
          patch: int = 96, lr: float = 1e-3, device: str = "cpu", seed: int = 0, channels: int = 32,
          layers: int = 6, rates: tuple[int, int] = (20, 95), variants: int = 2, resume: bool = False,
          checkpoint_minutes: float = 3.0, log_every: int = 50, refit: int = 600, fresh: bool = False,
          chroma: str = "both", dev: str | None = None, dev_per_domain: int = 2, half_life: int = 20_000,
          warmup: int = 200, ema_decay: float = 0.999, init_from: str | None = None) -> dict | None:
    """Train and ship; returns the new weights.json entry (None: dev kept the shipped filter).

    ``init_from``: a wider shipped filter of the same depth (a file named in ``out``'s
    weights.json) whose strongest channels (:func:`narrowed`) start this one, where no
    filter of this shape was shipped yet."""
    import torch

    from pixarc.tensors import batch_tensor
    from pixarc.training import TrainingRun, continuation, dev_images, random_crops
    from pixarc.weights import load_from_manifest

    from .model import EnhanceNet

    def log(m: str) -> None:
        print(m, flush=True)

    val = []
    if dev:
        val = build_pool(dev_images(Path(dev), dev_per_domain), base, rates, 1, seed + 1, None, log=log,
                         chroma=chroma, crop=256)
        log(f"dev: {len(val)} centre crops (model selection only; never trained on)")
    stem = f"enhance-{base}-c{channels}-l{layers}"
    net = EnhanceNet(channels, layers).to(device)
    match = {"base": base, "channels": channels, "layers": layers}
    start_from = None
    if init_from and not resume and not fresh and continuation(Path(out), ARCH, match) is None:
        wide, _ = load_from_manifest(out, init_from)
        start_from = (init_from, narrowed(wide, channels))
    run = TrainingRun(net, torch.optim.Adam(net.parameters(), lr=lr), out=out, stem=stem, arch=ARCH,
                      match=match, start_from=start_from, device=device, lr=lr,
                      minutes=minutes, steps=steps, checkpoint_minutes=checkpoint_minutes, resume=resume, fresh=fresh,
                      half_life=half_life, warmup=warmup, ema_decay=ema_decay, seed=seed, data=Path(data),
                      dev_score=(lambda m: _score(m, val, device)) if val else None,
                      dev_metric="gain_db", log=log)
    net.to(memory_format=torch.channels_last)  # ≈1.2× faster steps on a CPU (oneDNN's NHWC kernels)
    key = f"{run.data_hash}:{base}:{rates}:{variants}:{seed}:{chroma}"
    pool = build_pool(run.files, base, rates, variants, seed, run.out_dir / (stem + ".pool.ckpt"), key, log=log,
                      chroma=chroma)
    net.train()

    def step() -> dict:
        x, xb, cond = random_crops(pool, batch, patch, run.rng)
        x, xb = (batch_tensor(a, device, channels_last=True) for a in (x, xb))
        mse = torch.nn.functional.mse_loss(net(xb, torch.tensor(cond, dtype=torch.float32, device=device)), x)
        run.opt.zero_grad()
        mse.backward()
        run.opt.step()
        with torch.no_grad():
            base_mse = torch.nn.functional.mse_loss(xb, x)
        return {"mse": float(mse.detach()), "gain_db": float(10 * torch.log10(base_mse / mse.detach().clamp_min(1e-12)))}

    run.loop(step, log_every)
    # every invocation's settings and last logged numbers, so a continued run's provenance stays whole
    run.finish_stage(batch=batch, patch=patch, rates=list(rates), chroma=chroma)
    shipped = run.final_model()
    refit_info = refit_tail(shipped, pool, refit, patch, run.rng, device, log=log) if refit else None
    if refit_info and refit_info["kept"] and val:
        # the refit fits training patches exactly; it ships only if the dev set agrees
        before, after = run.best[0], _score(shipped, val, device)  # best: what final_model() holds
        refit_info["validation_gain_db"] = [round(before, 3), round(after, 3)]
        if after <= before:
            shipped.load_state_dict(run.best[1])
            refit_info["kept"] = False
        log(f"dev after the tail refit: {after:+.3f} dB ({'kept' if refit_info['kept'] else 'reverted'})")
    shipped = shipped.to("cpu").eval()
    return run.ship(shipped.state_dict(), {
        "base": base, "channels": channels, "layers": layers, "cond": shipped.cond, "batch": batch, "patch": patch,
        "lr": lr, "rates": list(rates), "variants": variants,
        "chroma": chroma,  # "444": chosen for 4:4:4 bases only (EnhancedCodec.choose_weights)
        "params": sum(p.numel() for p in shipped.parameters()), "refit": refit_info,
        "source": f"pixarc train enhance --base {base} --channels {channels} --layers {layers} "
                  f"(cumulative steps)",
    })
