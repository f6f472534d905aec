"""Entropy tables and the rANS coder the learned codecs share (CompressAI's, loaded through
:mod:`pixarc.compressai_compat`).

A table is part of a bitstream format: the encoder and every decoder, on any machine, must
build the same integers. So tables come from constants (:func:`logistic_cdf`: a
discretised zero-mean logistic, float64 arithmetic on constants, then CompressAI's
quantiser) or from integer counts (:func:`cdf_from_counts`: integer arithmetic only),
never from a network's float output. Tables are 16-bit CDFs in CompressAI's layout: the
symbols' cumulative frequencies, one escape bin, the total.

What a table codes is part of a format too: changing a constant here changes the bytes of
every codec that uses it (``tests/test_learned.py`` pins them).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

Table = Sequence[int]


def logistic_pmf(k: int, scale: float, step: float = 1.0) -> list[float]:
    """P(q), q = -k..k, of a zero-mean logistic of ``scale`` (in value units) over the values
    ``q·step``, each bin ±½ step wide, the end bins taking the tails."""

    def cdf(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v / scale))

    return [(1.0 if q == k else cdf((q + 0.5) * step)) - (0.0 if q == -k else cdf((q - 0.5) * step))
            for q in range(-k, k + 1)]


def cdf_from_pmf(pmf: Sequence[float], precision: int = 16) -> list[int]:
    """CompressAI's quantised CDF of ``pmf`` (+ an empty escape bin)."""
    from . import compressai_compat

    compressai_compat.load()
    from compressai._CXX import pmf_to_quantized_cdf

    return pmf_to_quantized_cdf(list(pmf) + [0.0], precision)


@lru_cache(maxsize=None)
def logistic_cdf(k: int, scale: float, step: float = 1.0) -> tuple[int, ...]:
    """The table of :func:`logistic_pmf` (symbols -k..k: code them with offset ``-k``)."""
    return tuple(cdf_from_pmf(logistic_pmf(k, scale, step)))


def cdf_from_counts(counts: Sequence[int]) -> list[int]:
    """A 16-bit table (the symbols, one escape bin, cumulative) from integer counts, in
    integer arithmetic only, so every machine builds the same table."""
    freqs = [max(1, int(c)) for c in counts] + [1]  # + the escape bin for out-of-range values
    total, scale = sum(freqs), 1 << 16
    q = [max(1, f * scale // total) for f in freqs]
    while (diff := scale - sum(q)) != 0:  # the rounding error goes to (or comes from) the largest bin
        i = max((j for j in range(len(q)) if diff > 0 or q[j] > 1), key=lambda j: (q[j], -j))
        q[i] += diff if diff > 0 else max(diff, 1 - q[i])
    cdf = [0]
    for f in q:
        cdf.append(cdf[-1] + f)
    return cdf


def _args(n: int, tables: Sequence[Table], which: Sequence[int] | None, offsets: Sequence[int] | int):
    which = [0] * n if which is None else list(which)
    offsets = [offsets] * len(tables) if isinstance(offsets, int) else list(offsets)
    return which, [list(t) for t in tables], [len(t) for t in tables], offsets


def rans_encode(symbols: Sequence[int], tables: Sequence[Table], which: Sequence[int] | None = None,
                offsets: Sequence[int] | int = 0) -> bytes:
    """``symbols`` coded with ``tables[which[i]]`` (all with table 0 by default); a symbol is
    coded as ``symbol - offset`` of its table (``offsets``: one per table, or one for all)."""
    from . import compressai_compat

    compressai_compat.load()
    from compressai.ans import RansEncoder

    return RansEncoder().encode_with_indexes(list(symbols), *_args(len(symbols), tables, which, offsets))


def rans_decode(data: bytes, count: int, tables: Sequence[Table], which: Sequence[int] | None = None,
                offsets: Sequence[int] | int = 0) -> list[int]:
    """The ``count`` symbols :func:`rans_encode` coded into ``data`` (rANS cannot tell a
    truncated or padded string: a caller that must, encodes the result again)."""
    from . import compressai_compat

    compressai_compat.load()
    from compressai.ans import RansDecoder

    return RansDecoder().decode_with_indexes(data, *_args(count, tables, which, offsets))
