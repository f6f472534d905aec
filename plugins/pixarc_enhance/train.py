"""Training the generic enhancement filter over a base codec's decodes.

    pixarc train enhance --data ../shared/data/train/crops --base avif --minutes 15 \\
        --out plugins/pixarc_enhance/weights [--resume] [--device cuda]

One model for every rate of the base: each training image is encoded by the base codec
(through the plugin registry, so any lossy base works) at ``--variants`` random rates drawn
from ``--rates`` (and, for bases with a ``subsampling`` parameter, both 4:2:0 and 4:4:4), and
the filter learns ``base decode -> original`` conditioned on the normalised rate and the
chroma flag (exactly what the codec feeds it). Loss: MSE; Adam; random patches and flips;
the learning rate follows the cumulative step count (``pixarc.training.cumulative_lr``),
and what ships is the exponential average of the weights (``WeightAverage``).

Training accumulates: without ``--resume`` a run continues from the newest shipped filter of
the same shape in ``--out`` (its fp16 weights, its cumulative steps, minutes and stages), so
``pixarc train enhance --minutes N`` always *adds* N minutes to the model that ships; a new
file ``enhance-<base>-c<C>-l<L>-v<n>.pt`` is written beside the old one (bitstreams name
their filter by sha256, so the old file must stay for decoding). ``--fresh`` starts over.
With ``--dev`` a fixed validation set (centre crops of the dev images, one base encode
each) is scored every ``--checkpoint-minutes``; the best average is what the run saves
(keep-if-better inside the run; ``benchmarks/enhance.py`` decides what ships).

Like ``pixarc train lossy``: ``--minutes`` time budget (``--steps`` a step budget), an
atomic full checkpoint ``<out>/<name>.ckpt`` every ``--checkpoint-minutes`` and at the end,
``--resume`` from it (on any device; the base-codec pool is rebuilt from the same seed, so
it is the same pool; its base payloads are cached beside the checkpoint). A final stage
refits the last layer exactly by least squares on ``--refit`` training patches. Weights are saved fp16 with their sha256 and provenance (steps,
minutes, devices, data sha256, rates) in ``<out>/weights.json``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from pixarc.training import atomic_save, data_sha256, training_images


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
    from pixarc.images import probe_and_load
    from pixarc.plugins import build_plugin_manager

    from . import enhanced

    codec = build_plugin_manager().make(enhanced(base))  # its base from the allowed plugins
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
    import numpy as np
    import torch
    import torch.nn.functional as F

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
        o = torch.from_numpy(orig[y : y + ph, x : x + pw].astype(np.float32) / 255).permute(2, 0, 1)[None]
        b = torch.from_numpy(dec[y : y + ph, x : x + pw].astype(np.float32) / 255).permute(2, 0, 1)[None]
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


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _score(net, pool, device: str) -> float:
    """Mean PSNR gain (dB) of ``net`` over the base decodes of a validation pool."""
    import numpy as np
    import torch

    gains = []
    with torch.no_grad():
        for orig, dec, cond in pool:
            o = torch.from_numpy(orig.astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)
            b = torch.from_numpy(dec.astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)
            y = (net(b, torch.tensor([cond], dtype=torch.float32, device=device)).clamp(0, 1) * 255).round() / 255
            mse_b, mse_y = float(((b - o) ** 2).mean()), float(((y - o) ** 2).mean())
            gains.append(10 * np.log10(max(mse_b, 1e-12) / max(mse_y, 1e-12)))
    return float(np.mean(gains))


def train(data: str, out: str, base: str = "avif", minutes: float = 15.0, steps: int = 10**9, batch: int = 16,
          patch: int = 96, lr: float = 1e-3, device: str = "cpu", seed: int = 0, channels: int = 32,
          layers: int = 6, rates: tuple[int, int] = (20, 95), variants: int = 2, resume: bool = False,
          checkpoint_minutes: float = 3.0, log_every: int = 50, refit: int = 600, fresh: bool = False,
          chroma: str = "both", dev: str | None = None, dev_per_domain: int = 2, half_life: int = 20_000,
          ema_decay: float = 0.999) -> dict:
    import numpy as np
    import torch

    from pixarc.training import TrainingRun

    from . import ARCH
    from .model import EnhanceNet

    def log(m: str) -> None:
        print(m, flush=True)

    root = Path(data)
    files = training_images(root)
    data_hash = data_sha256(root, files)
    stem = f"enhance-{base}-c{channels}-l{layers}"
    net = EnhanceNet(channels, layers).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    run = TrainingRun(net, opt, out=out, stem=stem, arch=ARCH, match={"base": base, "channels": channels,
                      "layers": layers}, device=device, lr=lr, minutes=minutes, steps=steps,
                      checkpoint_minutes=checkpoint_minutes, resume=resume, fresh=fresh, half_life=half_life,
                      ema_decay=ema_decay, log=log)
    net.to(memory_format=torch.channels_last)  # ≈1.2× faster steps on a CPU (oneDNN's NHWC kernels)
    key = f"{data_hash}:{base}:{rates}:{variants}:{seed}:{chroma}"
    pool = build_pool(files, base, rates, variants, seed, run.out_dir / (stem + ".pool.ckpt"), key, log=log,
                      chroma=chroma)
    val = []
    if dev:
        dev_files = [f for d in sorted(p for p in Path(dev).iterdir() if p.is_dir())
                     for f in training_images(d)[:dev_per_domain]]
        val = build_pool(dev_files, base, rates, 1, seed + 1, None, log=log, chroma=chroma, crop=256)
        log(f"validation: {len(val)} dev centre crops (model selection only; never trained on)")
    average = run.average.model
    best = (_score(average, val, device), {k: v.clone() for k, v in average.state_dict().items()}, run.step) \
        if val else None
    if best:
        log(f"validation at step {run.step}: {best[0]:+.3f} dB over the base")
    torch.manual_seed(seed + run.step)
    rng = random.Random(seed * 1_000_003 + run.step)  # a continued run draws new batches, reproducibly

    def batch_tensors():
        xs, bs, cs = [], [], []
        for _ in range(batch):
            orig, dec, cond = pool[rng.randrange(len(pool))]
            h, w = orig.shape[:2]
            ph, pw = min(patch, h), min(patch, w)
            y, x = rng.randint(0, h - ph), rng.randint(0, w - pw)
            o, d = orig[y : y + ph, x : x + pw], dec[y : y + ph, x : x + pw]
            if rng.random() < 0.5:
                o, d = o[:, ::-1], d[:, ::-1]
            xs.append(o[:patch, :patch])
            bs.append(d[:patch, :patch])
            cs.append(cond)
        side_h, side_w = min(a.shape[0] for a in xs), min(a.shape[1] for a in xs)

        def t(arrs):
            a = np.stack([a[:side_h, :side_w] for a in arrs]).astype(np.float32) / 255
            return torch.from_numpy(a).permute(0, 3, 1, 2).to(device).contiguous(memory_format=torch.channels_last)

        return t(xs), t(bs), torch.tensor(cs, dtype=torch.float32, device=device)

    def validate() -> None:
        nonlocal best
        if not val:
            return
        score = _score(average, val, device)
        if score > best[0]:
            best = (score, {k: v.clone() for k, v in average.state_dict().items()}, run.step)
        log(f"validation at step {run.step}: {score:+.3f} dB over the base (best {best[0]:+.3f} at {best[2]})")

    net.train()
    history, gains = [], []
    while run.next_step():
        x, xb, cond = batch_tensors()
        mse = torch.nn.functional.mse_loss(net(xb, cond), x)
        opt.zero_grad()
        mse.backward()
        opt.step()
        with torch.no_grad():
            base_mse = torch.nn.functional.mse_loss(xb, x)
        gains.append(float(10 * torch.log10(base_mse / mse.detach().clamp_min(1e-12))))
        if run.step % log_every == 0:
            gain = float(np.mean(gains))
            gains.clear()
            history.append({"step": run.step, "mse": float(mse.detach()), "gain_db": round(gain, 3)})
            log(f"step {run.step}: mse {float(mse.detach()):.6f} gain over base {gain:+.3f} dB "
                f"({run.elapsed_s:.0f} s, lr {opt.param_groups[0]['lr']:.1e})")
        if run.after_step():
            validate()
    validate()
    # every invocation's settings and last log line, so a continued run's provenance stays whole
    run.finish_stage(batch=batch, patch=patch, rates=list(rates), chroma=chroma, data=root.name,
                     data_sha256=data_hash, images=len(files), final=history[-1] if history else None,
                     **({"validation": {"gain_db": round(best[0], 3), "step": best[2]}} if best else {}))
    shipped = average
    if best:
        shipped.load_state_dict(best[1])
    tail = {k: v.clone() for k, v in shipped.tail.state_dict().items()}
    refit_info = refit_tail(shipped, pool, refit, patch, rng, device, log=log) if refit else None
    if refit_info and refit_info["kept"] and val:
        # the refit fits training patches exactly; it ships only if the validation set agrees
        after = _score(shipped, val, device)
        refit_info["validation_gain_db"] = [round(best[0], 3), round(after, 3)]
        if after <= best[0]:
            shipped.tail.load_state_dict(tail)
            refit_info["kept"] = False
        log(f"validation after the tail refit: {after:+.3f} dB ({'kept' if refit_info['kept'] else 'reverted'})")
    shipped = shipped.to("cpu").eval()
    return run.ship(shipped.state_dict(), {
        "base": base, "channels": channels, "layers": layers, "cond": shipped.cond, "batch": batch, "patch": patch,
        "lr": lr, "seed": seed, "rates": list(rates), "variants": variants, "images": len(files), "data": root.name,
        "chroma": chroma,  # "444": chosen for 4:4:4 bases only (EnhancedCodec.choose_weights)
        "data_sha256": data_hash, "params": sum(p.numel() for p in shipped.parameters()),
        "final": next((st["final"] for st in reversed(run.stages) if st.get("final")), None), "refit": refit_info,
        "source": f"pixarc train enhance --base {base} --channels {channels} --layers {layers} "
                  f"(cumulative steps)",
    })
