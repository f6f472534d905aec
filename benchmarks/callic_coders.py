"""Which entropy coder for CALLIC: time to code one wavefront step's sub-pixels.

    .venv/bin/python benchmarks/callic_coders.py [--n 2000] [--repeat 5]

Same integer mixture CDFs (``pixarc_callic.coder``) for n symbols with random parameters,
coded three ways, each encode + decode checked for exactness:

* constriction range coder, 8 batched Bernoulli decisions per symbol (what CALLIC uses:
  C evaluated at 9 points per symbol);
* constriction range coder, one Categorical per symbol over the full 256-entry table
  (C evaluated at all 255 inner points);
* CompressAI's rANS (``compressai.ans``), full tables rescaled to its 16-bit precision and
  passed as Python lists, one table per symbol.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import constriction

    from pixarc import compressai_compat
    from pixarc_callic.coder import M, Decoder, Encoder, Quantised, cdf, code_channel, tables

    tables()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = args.n
    raw = torch.randn(n, 50)
    q = Quantised(raw, 5)
    mean = q.channel_mean(0, [])
    x = torch.randint(0, 256, (n,))

    def tree():
        enc = Encoder()
        code_channel(q, 0, mean, x, enc)
        out = code_channel(q, 0, mean, None, Decoder(enc.finish()))
        assert torch.equal(out, x)

    def full_table() -> torch.Tensor:
        inner = torch.stack([cdf(torch.full((n,), v), mean, q.inv[:, 0], q.w, q.total) for v in range(1, 256)], 1)
        return torch.cat([torch.zeros(n, 1, dtype=torch.int64), inner, torch.full((n, 1), M)], 1)

    def categorical():
        probs = full_table().diff(dim=1).double().numpy() / M
        fam = constriction.stream.model.Categorical(perfect=False)
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(x.numpy().astype(np.int32), fam, probs)
        dec = constriction.stream.queue.RangeDecoder(enc.get_compressed())
        assert np.array_equal(dec.decode(fam, probs), x.numpy())

    def rans():
        compressai_compat.load()
        from compressai.ans import RansDecoder, RansEncoder

        table = full_table()
        c16 = (table * ((1 << 16) - 256)) // M + torch.arange(257)  # 16-bit, every frequency >= 1
        cdfs = [row + [1 << 16] for row in c16.tolist()]  # + the end marker entry the coder's tables carry
        lengths, offsets, idx = [258] * n, [0] * n, list(range(n))
        data = RansEncoder().encode_with_indexes(x.tolist(), idx, cdfs, lengths, offsets)
        assert RansDecoder().decode_with_indexes(data, idx, cdfs, lengths, offsets) == x.tolist()

    for name, fn in (("constriction, 8 Bernoulli decisions", tree), ("constriction, Categorical 256", categorical),
                     ("compressai rANS, table per symbol", rans)):
        fn()
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            fn()
        ms = (time.perf_counter() - t0) / args.repeat * 1000
        print(f"{name:38s} {ms:8.1f} ms per {n} symbols (encode + decode, CDFs included)")


if __name__ == "__main__":
    main()
