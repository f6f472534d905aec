"""Exact integer CDFs for the discretised logistic mixture, and the range coder around them.

Why integers: a lossless decoder must rebuild the encoder's probabilities bit for bit.
The network's float outputs are quantised once, to an integer grid, by the very same
wavefront procedure in the encoder and the decoder (``wavefront.py``); from there on
everything is integer arithmetic plus table look-ups, so it is identical on every device:

* mean μ in 1/16 pixel, log-scale on a 1/8 grid, mixture logits on a 1/8 grid, channel
  coefficients (G|R, B|R, B|G) on a 1/64 grid;
* the logistic CDF σ is a table (2^20 fixed point, 1/1024 steps over [−16, 16]); the
  inverse scales and mixture weights are tables too. The tables are exact roundings
  (Python's ``decimal``, software arithmetic, wherever a float ``exp`` that may differ by
  an ulp between CPUs could change the integer): the same integers on every machine;
* the CDF of symbol v (0..256) is ``C(v) = v + ⌊F(v − ½)·(M − 256) / (2^20·W)⌋`` with F
  the integer mixture CDF and W the sum of the integer mixture weights: strictly
  increasing, C(0) = 0, C(256) = M = 2^20, so every symbol has a non-zero frequency.

Coding: each 8-bit sub-pixel is sent as 8 binary decisions down the symbol range
(lo, mid, hi), each with probability ``(C(hi) − C(mid)) / (C(hi) − C(lo))``. The product of
the decisions is exactly ``(C(v+1) − C(v)) / M``, but a decision needs C at one point only:
9 CDF evaluations per sub-pixel instead of 257 for a full table. The decisions of all
positions of a wavefront step are coded in one batched call of constriction's range coder
(Bernoulli model, float64 probabilities formed from the integers by one IEEE division,
hence identical on both sides). Measured faster than CompressAI's rANS, which needs a
Python list per CDF table (see README / the issue note).
"""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_EVEN, Decimal, getcontext

import numpy as np
import torch

from .constants import COEF_Q, COEF_Q_FIRST  # noqa: F401  (COEF_Q_FIRST: importable from here too)

MEAN_Q = 16          # mean grid: 1/16 pixel
LS_Q = 8             # log-scale grid: 1/8
LS_MIN, LS_MAX = -24, 40  # log-scale range on the grid (e^-3 .. e^5 pixels), as in model.py
LOGIT_Q = 8          # mixture logit grid: 1/8
LOGIT_SPAN = 88      # logits more than 11 below the largest get weight 0
Z = 1024             # sigmoid table steps per unit
Z_MAX = 16           # table covers [-16, 16]
T_BITS = 20          # sigmoid table fixed point
W_BITS = 10          # mixture weight fixed point
INV_BITS = 16        # inverse-scale fixed point
M_BITS = 20          # CDF total
M = 1 << M_BITS


def _round(d: Decimal) -> int:
    return int(d.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@functools.lru_cache(maxsize=1)
def tables() -> dict[str, torch.Tensor]:
    """The integer tables, derived with decimal arithmetic (platform independent)."""
    getcontext().prec = 40
    # float64 first (fast); any value within 1e-6 of a rounding boundary, where a libm's last
    # bit could matter, is recomputed in decimal: the table is the exact rounding everywhere
    i = np.arange(Z_MAX * Z + 1, dtype=np.float64)
    approx = (1 << T_BITS) / (1.0 + np.exp(i / Z))
    half = np.floor(approx + 0.5).astype(np.int64).tolist()
    for n in np.flatnonzero(np.abs(approx - np.floor(approx) - 0.5) < 1e-6).tolist():
        half[n] = _round(Decimal(1 << T_BITS) / (1 + (Decimal(n) / Z).exp()))
    # sigmoid(-i/Z) for i >= 0 is half[i]; sigmoid(i/Z) = 2^20 - sigmoid(-i/Z) (exact symmetry)
    sig = half[::-1] + [(1 << T_BITS) - v for v in half[1:]]
    inv = [_round(Decimal(1 << INV_BITS) * Z / (MEAN_Q * (Decimal(l) / LS_Q).exp())) for l in range(LS_MIN, LS_MAX + 1)]
    wexp = [_round(Decimal(1 << W_BITS) * (Decimal(-j) / LOGIT_Q).exp()) for j in range(LOGIT_SPAN + 1)]
    return {"sig": torch.tensor(sig, dtype=torch.int64), "inv": torch.tensor(inv, dtype=torch.int64),
            "wexp": torch.tensor(wexp, dtype=torch.int64)}


class Quantised:
    """Integer mixture parameters of n positions: weights (n, K), W (n,), per channel c the
    means (n, K) in 1/16 pixel before channel conditioning, inverse scales (n, K), and the
    coefficients (n, 3, K) on the 1/``coef_q`` grid (a property of the weights: their entry's
    ``coef_q``)."""

    def __init__(self, raw: torch.Tensor, k: int, coef_q: int = COEF_Q):
        from .model import split_params

        tab = tables()
        logits, means, log_scales, coeffs = split_params(raw.float(), k)
        lq = torch.round(logits * LOGIT_Q).to(torch.int64)
        gap = (lq.max(dim=-1, keepdim=True).values - lq).clamp(0, LOGIT_SPAN)
        self.w = tab["wexp"][gap]
        self.total = self.w.sum(-1)
        self.means = torch.round(means * MEAN_Q).to(torch.int64).clamp(-64 * MEAN_Q, 320 * MEAN_Q)
        ls = torch.round(log_scales * LS_Q).to(torch.int64).clamp(LS_MIN, LS_MAX)
        self.inv = tab["inv"][ls - LS_MIN]
        self.coef_q = coef_q
        self.coef = torch.round(coeffs * coef_q).to(torch.int64)

    def select(self, keep: torch.Tensor) -> "Quantised":
        out = object.__new__(Quantised)
        for name in ("w", "total", "means", "inv", "coef"):
            setattr(out, name, getattr(self, name)[keep])
        out.coef_q = self.coef_q
        return out

    def channel_mean(self, c: int, decoded: list[torch.Tensor]) -> torch.Tensor:
        """Means of channel c (n, K), conditioned on the already decoded R (and G) values."""
        m = self.means[:, c]
        if c == 0:
            return m
        centred_r = (decoded[0][:, None] * MEAN_Q - 2040)  # 16·(x_R − 127.5)
        if c == 1:
            return m + torch.div(self.coef[:, 0] * centred_r, self.coef_q, rounding_mode="floor")
        centred_g = (decoded[1][:, None] * MEAN_Q - 2040)
        return m + torch.div(self.coef[:, 1] * centred_r + self.coef[:, 2] * centred_g, self.coef_q,
                             rounding_mode="floor")


def cdf(v: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor, w: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """C(v) for symbols v in 1..255 (n,), mixture parameters (n, K): integers only."""
    sig = tables()["sig"]
    edge = (v * MEAN_Q - MEAN_Q // 2)[:, None]              # v − ½ in 1/16 pixel
    u = ((edge - mean) * inv) >> INV_BITS                   # arithmetic shift: floor
    idx = u.clamp(-Z_MAX * Z, Z_MAX * Z) + Z_MAX * Z
    f = (w * sig[idx]).sum(-1)
    return v + (f * (M - 256)) // (total << T_BITS)


def code_channel(q: Quantised, c: int, mean: torch.Tensor, known: torch.Tensor | None, bits) -> torch.Tensor:
    """Send (known given) or receive (known None) one 8-bit sub-pixel per position, as 8
    binary decisions; ``bits(p1, b)`` codes bits b (or decodes when b is None) with P(1)=p1."""
    n = mean.shape[0]
    lo = torch.zeros(n, dtype=torch.int64)
    hi = torch.full((n,), 256, dtype=torch.int64)
    c_lo = torch.zeros(n, dtype=torch.int64)
    c_hi = torch.full((n,), M, dtype=torch.int64)
    for _ in range(8):
        mid = (lo + hi) >> 1
        c_mid = cdf(mid, mean, q.inv[:, c], q.w, q.total)
        p1 = (c_hi - c_mid).double() / (c_hi - c_lo).double()
        if known is not None:
            b = known >= mid
            bits(p1, b)
        else:
            b = bits(p1, None)
        lo = torch.where(b, mid, lo)
        c_lo = torch.where(b, c_mid, c_lo)
        hi = torch.where(b, hi, mid)
        c_hi = torch.where(b, c_hi, c_mid)
    return lo


def symbol_bits(q: Quantised, c: int, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Ideal code length (bits) of symbols x under the integer CDF (for tests and estimates)."""
    lo_c = torch.where(x > 0, cdf(x.clamp(1, 255), mean, q.inv[:, c], q.w, q.total), torch.zeros_like(x))
    hi_c = torch.where(x < 255, cdf((x + 1).clamp(1, 255), mean, q.inv[:, c], q.w, q.total), torch.full_like(x, M))
    return -torch.log2((hi_c - lo_c).double() / M)


class Encoder:
    """Batched binary decisions into constriction's range coder."""

    def __init__(self):
        import constriction

        self._enc = constriction.stream.queue.RangeEncoder()
        self._model = constriction.stream.model.Bernoulli(perfect=False)

    def __call__(self, p1: torch.Tensor, b: torch.Tensor) -> None:
        if len(p1):
            self._enc.encode(b.numpy().astype(np.int32), self._model, p1.numpy())

    def finish(self) -> bytes:
        return self._enc.get_compressed().astype("<u4").tobytes()


class Decoder:
    def __init__(self, data: bytes):
        import constriction

        if len(data) % 4:
            raise ValueError("range coder stream is not a whole number of words")
        self._dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        self._model = constriction.stream.model.Bernoulli(perfect=False)

    def __call__(self, p1: torch.Tensor, b: None) -> torch.Tensor:
        if not len(p1):
            return torch.zeros(0, dtype=torch.bool)
        return torch.from_numpy(np.asarray(self._dec.decode(self._model, p1.numpy())).astype(np.bool_))
