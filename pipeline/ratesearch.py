"""The rate search behind ``target_psnr`` / ``target_bpp``: which value of a codec's rate
parameter to keep, in few probes.

A probe encodes at one rate value and is judged by PSNR (``target_psnr``) or by its bytes
(``target_bpp``) only: no container check, no second decode. The caller fully
decode-checks the one probe it keeps (:func:`pixarc.encode.encode_verified`).

The search finds the same boundary as a bisection over the codec's rate values (the
fewest bits reaching the PSNR, the most bits within the budget), assuming the measure is
monotone in the rate value, but in fewer probes:

1. it starts where the codec's earlier searches in this process ended for the same
   target (a per-codec model of which rate value reaches it; the middle of the range
   at first), or, when another codec was searched on the same image already, at that
   codec's result plus the offset between the two seen on earlier images;
2. from one probe it steps by the measure's slope (dB or log-bytes per rate step: learned
   from this codec's earlier searches, a generic slope at first);
3. once the boundary is bracketed, it interpolates between the bracket's ends (a secant
   step on PSNR, or on log-bytes for a bpp budget), falling back to bisection when an
   interpolated probe does not halve the bracket.

``bound``: RD selection's current best bytes (a candidate that already met the PSNR
target). The search stops as soon as a probe shows this codec cannot undercut it: a
probe that misses the target with at least ``bound`` bytes means every value reaching the
target costs more (bytes grow with the rate value). It also stops once two probes
bracket ``bound`` in bytes (one below it missing the target, one above it reaching it)
and the line through them in (log bytes, PSNR) gives at most ``goal − BOUND_MARGIN_DB``
at ``bound`` bytes: a codec's PSNR is close to linear in log-bytes across one such
bracket, and the margin keeps the near misses searching to the end.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable

# Generic slopes of the measure over a codec's whole rate range, before any history:
# JPEG/WebP/AVIF/JXL quality 0..100 span roughly 20 dB and a factor of 30 in bytes.
PRIOR_SPAN = {"psnr": 20.0, "bpp": math.log(30.0)}
HISTORY = 16  # searches remembered per (codec, target)
BOUND_MARGIN_DB = 0.5  # an interpolated PSNR this far below the goal at ``bound`` bytes prunes


@dataclass
class Probe:
    """One probed rate value: what the caller's ``measure`` returned for it."""

    index: int
    value: int
    psnr: float
    bytes: int
    data: object = None  # the caller's (payload, reconstruction...), for the one kept


@dataclass
class Outcome:
    kept: Probe | None  # None: pruned by ``bound``
    probes: list[Probe] = field(default_factory=list)
    pruned_by: Probe | None = None  # the probe that showed the bound cannot be undercut
    interpolated: float | None = None  # pruned by the bracket: the PSNR it gives at ``bound`` bytes
    reached: bool = True  # False: the target is out of the codec's range (kept = closest end)

    @property
    def note(self) -> str:
        return f"after {len(self.probes)} probes"


@dataclass
class _History:
    ends: list[int] = field(default_factory=list)  # indices where searches ended
    slopes: list[float] = field(default_factory=list)  # measure per index step
    offsets: dict[tuple, list[int]] = field(default_factory=dict)  # anchor key -> end - anchor's end


_model: dict[tuple, _History] = {}
_lock = threading.Lock()


def _measure(kind: str, p: Probe) -> float:
    # an exact reconstruction (infinite PSNR) counts as 100 dB: steps stay finite
    return min(p.psnr, 100.0) if kind == "psnr" else math.log(max(1, p.bytes))


def search(values: list[int], kind: str, goal: float, pixels: int, measure: Callable[[int], Probe],
           model_key: tuple, bound: int | None = None, anchor: tuple[tuple, int] | None = None) -> Outcome:
    """Find the boundary described above. ``measure(index)`` probes ``values[index]``.

    ``kind``: ``psnr`` (keep the lowest value with PSNR >= goal) or ``bpp`` (keep the
    highest value with 8 * bytes / pixels <= goal). ``anchor``: (model key, index) where
    another codec's search on the same image ended; this codec then starts at that index
    plus the offset it showed against that codec before (images differ far more than
    codecs do: the offset is steadier than the index itself)."""
    n = len(values)
    probes: dict[int, Probe] = {}
    target = goal if kind == "psnr" else math.log(goal * max(1, pixels) / 8)

    def ok(p: Probe) -> bool:  # monotone in the index: False ... False True ... True
        return p.psnr >= goal if kind == "psnr" else 8 * p.bytes / max(1, pixels) > goal

    def probe(i: int) -> Probe:
        if i not in probes:
            probes[i] = measure(i)
        return probes[i]

    with _lock:
        hist = _model.setdefault(model_key, _History())
        start = sorted(hist.ends)[len(hist.ends) // 2] if hist.ends else n // 2
        offsets = hist.offsets.get(anchor[0], []) if anchor else []
        if offsets:
            start = anchor[1] + sorted(offsets)[len(offsets) // 2]
        slope = sorted(hist.slopes)[len(hist.slopes) // 2] if hist.slopes else PRIOR_SPAN[kind] / max(1, n - 1)
    lo, hi = -1, n  # ok(lo) is False, ok(hi) is True (virtual ends)
    i = min(max(start, 0), n - 1)
    secant_last = False  # the previous probe was an interpolated guess
    budget = 2 * max(1, math.ceil(math.log2(n + 1))) + 2  # past it: plain bisection
    while True:
        p = probe(i)
        if ok(p):
            hi = i
        else:
            lo = i
        if kind == "psnr" and bound is not None:
            direct = not ok(p) and p.bytes >= bound  # this probe misses with bytes to spare
            at_bound = None if direct else _psnr_at(probes.values(), bound, goal)
            if direct or (at_bound is not None and at_bound <= goal - BOUND_MARGIN_DB):
                _remember(model_key, None, probes, kind, anchor)
                return Outcome(None, sorted(probes.values(), key=lambda q: q.index), pruned_by=p,
                               interpolated=at_bound)
        if hi - lo <= 1:
            break
        if lo >= 0 and hi < n:  # bracketed
            m_lo, m_hi = _measure(kind, probes[lo]), _measure(kind, probes[hi])
            if len(probes) >= budget or not m_hi > m_lo:
                nxt = (lo + hi) // 2
                secant_last = False
            elif secant_last:
                # an interpolated guess lands next to the boundary, usually on one side of
                # it: its neighbour towards the other end often closes the bracket
                nxt = i - 1 if i == hi else i + 1
                secant_last = False
            else:
                frac = (target - m_lo) / (m_hi - m_lo)
                nxt = lo + math.ceil(frac * (hi - lo) - 1e-9)
                secant_last = True
            nxt = min(max(nxt, lo + 1), hi - 1)
        else:  # one side known: step by the slope, a little past the estimated crossing
            have = sorted(probes)
            if len(have) >= 2:
                a, b = have[0], have[-1]
                est = (_measure(kind, probes[b]) - _measure(kind, probes[a])) / (b - a)
                if est > 0:
                    slope = est
            steps = (target - _measure(kind, p)) / slope
            if hi == n:  # everything probed misses (psnr) / fits (bpp): go up
                nxt = min(i + max(1, math.ceil(steps) + 1), n - 1)
            else:  # go down
                nxt = max(i - max(1, math.ceil(-steps) + 1), 0)
            if nxt == i:  # at an end of the range already
                break
            secant_last = False
        i = nxt
    reached = True
    if kind == "psnr":
        if hi == n:  # unreachable: the most bits there are
            kept, reached = probe(n - 1), False
        else:
            kept = probes[hi]
    else:
        if lo == -1:  # nothing fits: the fewest bits there are
            kept, reached = probe(0), False
        else:
            kept = probes[lo]
    _remember(model_key, kept.index if reached else None, probes, kind, anchor)
    return Outcome(kept, sorted(probes.values(), key=lambda q: q.index), reached)


def _psnr_at(probes, bound: int, goal: float) -> float | None:
    """PSNR at ``bound`` bytes on the line through the closest bracket of it: the probe
    with the most bytes below ``bound`` missing ``goal`` and the one with the fewest bytes
    above it reaching ``goal`` (None without such a pair)."""
    below = [p for p in probes if p.bytes < bound and p.psnr < goal]
    above = [p for p in probes if p.bytes > bound and p.psnr >= goal]
    if not below or not above:
        return None
    a, b = max(below, key=lambda p: p.bytes), min(above, key=lambda p: p.bytes)
    la, lb = math.log(max(1, a.bytes)), math.log(b.bytes)
    if lb <= la or not math.isfinite(b.psnr):
        return None
    return a.psnr + (b.psnr - a.psnr) * (math.log(bound) - la) / (lb - la)


def _remember(model_key: tuple, end: int | None, probes: dict[int, Probe], kind: str,
              anchor: tuple[tuple, int] | None = None) -> None:
    """Add this search to the model: where it ended and the slope its probes showed."""
    idx = sorted(probes)
    slope = None
    if len(idx) >= 2:
        a, b = idx[0], idx[-1]
        d = (_measure(kind, probes[b]) - _measure(kind, probes[a])) / (b - a)
        slope = d if d > 0 else None
    with _lock:
        hist = _model.setdefault(model_key, _History())
        if end is not None:
            hist.ends = (hist.ends + [end])[-HISTORY:]
            if anchor is not None and anchor[0] != model_key:
                hist.offsets[anchor[0]] = (hist.offsets.get(anchor[0], []) + [end - anchor[1]])[-HISTORY:]
        if slope is not None:
            hist.slopes = (hist.slopes + [slope])[-HISTORY:]


def forget() -> None:
    """Drop the model (tests)."""
    with _lock:
        _model.clear()
