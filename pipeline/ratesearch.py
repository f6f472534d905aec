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

Tiers (``target_psnr``): a codec may name cheaper measures whose PSNR runs parallel to its
own over the rate values (:meth:`pixarc.codec.Codec.rate_proxies`: AVIF at its fastest
speed, 10× cheaper and ≈ 0.3–1.5 dB lower by an offset that drifts by hundredths of a dB
from one quality to the next; the AVIF encode a post-filter sits on). The search then
locates the boundary with steps 1–3 on the cheapest tier shifted by the gap the codec
showed over it (its earlier images' median at first), probes the codec itself there,
re-measures the gap, and repeats until its own probe at ``b`` reaches the goal. A tier's
``estimate`` (this image's own gap, e.g. a post-filter's gain measured on a few blocks)
stands in for other images' gaps before the first own probe; the cheapest tier's moves
the search before any costlier tier is measured, so no costlier encode is spent where
other images' gaps would have put the first probe. Whether
``b − 1`` misses is judged on each tier in turn, cheapest first, with the gap measured at
``b``: decided when the estimate is clear of the goal by the tier's ``margin_db``, else by
one more probe of the codec itself. The result is the bisection's whenever the offsets
drift by less than the margins; the codec's own probes fall from ≈ 4 per image to ≈ 1–2.
With ``fast`` (a policy's ``rate_search = "fast"``), where the cheapest tier cannot decide,
``b`` is kept without the costlier tiers and the codec's own probe at ``b − 1``: the
bisection's result or one rate step above it (more bytes by one step's worth on those
images), for a speed-6 encode and a filter pass less.
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
MAX_ROUNDS = 6  # tiered search: rounds of locating on the cheapest tier before the codec's own probes alone


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
    proxy_probes: int = 0  # probes on cheaper tiers (``tiers``)
    settled: bool = False  # ``fast``: kept without knowing whether the value below reaches the goal

    @property
    def note(self) -> str:
        tiers = f" and {self.proxy_probes} cheaper ones" if self.proxy_probes else ""
        settled = "; the value below undecided on the cheapest tier, not probed (rate_search fast)" \
            if self.settled else ""
        return f"after {len(self.probes)} probes{tiers}{settled}"


@dataclass(frozen=True)
class Tier:
    """A cheaper measure of the same image over the same rate values whose PSNR runs
    parallel to the codec's own: the offset between the two drifts by less than
    ``margin_db`` from one rate value to the next (the same encoder at a faster setting;
    the base codec a post-filter improves). See "Tiers" above."""

    measure: Callable[[int], Probe]
    margin_db: float
    estimate: Callable[[int], float] | None = None  # this image's own estimate of the gap at an index (NaN: none)


@dataclass
class _History:
    ends: list[int] = field(default_factory=list)  # indices where searches ended
    slopes: list[float] = field(default_factory=list)  # measure per index step
    offsets: dict[tuple, list[int]] = field(default_factory=dict)  # anchor key -> end - anchor's end
    tier_gaps: dict[int, list[float]] = field(default_factory=dict)  # tier -> dB the codec ended above it
    estimate_errors: dict[int, list[float]] = field(default_factory=dict)  # tier -> that gap minus the tier's estimate


_model: dict[tuple, _History] = {}
_lock = threading.Lock()


def _measure(kind: str, p: Probe) -> float:
    # an exact reconstruction (infinite PSNR) counts as 100 dB: steps stay finite
    return min(p.psnr, 100.0) if kind == "psnr" else math.log(max(1, p.bytes))


def search(values: list[int], kind: str, goal: float, pixels: int, measure: Callable[[int], Probe],
           model_key: tuple, bound: int | None = None, anchor: tuple[tuple, int] | None = None,
           tiers: tuple[Tier, ...] = (), shared_key: tuple | None = None, fast: bool = False) -> Outcome:
    """Find the boundary described above. ``measure(index)`` probes ``values[index]``.

    ``kind``: ``psnr`` (keep the lowest value with PSNR >= goal) or ``bpp`` (keep the
    highest value with 8 * bytes / pixels <= goal). ``anchor``: (model key, index) where
    another codec's search on the same image ended; this codec then starts at that index
    plus the offset it showed against that codec before (images differ far more than
    codecs do: the offset is steadier than the index itself). ``tiers`` (``psnr`` only):
    cheaper measures running parallel to ``measure``, cheapest first (:func:`_tiered`).
    ``shared_key``: a wider model (the codec on every domain) whose history seeds this
    search while ``model_key``'s (the codec on this image's domain) has none; both learn
    from it. ``fast`` (tiered searches): where the cheapest tier cannot tell whether the
    value below the codec's first reaching probe misses, that probe is kept (module
    docstring, "Tiers")."""
    n = len(values)
    target = goal if kind == "psnr" else math.log(goal * max(1, pixels) / 8)

    def ok(p: Probe) -> bool:  # monotone in the index: False ... False True ... True
        return p.psnr >= goal if kind == "psnr" else 8 * p.bytes / max(1, pixels) > goal

    keys = (model_key,) if shared_key is None else (model_key, shared_key)
    with _lock:
        hist = next((h for k in keys if (h := _model.get(k)) is not None and h.ends), None) or _History()
        start = sorted(hist.ends)[len(hist.ends) // 2] if hist.ends else n // 2
        offsets = hist.offsets.get(anchor[0], []) if anchor else []
        if offsets:
            start = anchor[1] + sorted(offsets)[len(offsets) // 2]
        slope = sorted(hist.slopes)[len(hist.slopes) // 2] if hist.slopes else PRIOR_SPAN[kind] / max(1, n - 1)
        gaps = [_median(hist.tier_gaps.get(k, [0.0])) for k in range(len(tiers))]
        errors = [_median(hist.estimate_errors.get(k, [0.0])) for k in range(len(tiers))]
    start = min(max(start, 0), n - 1)
    if kind == "psnr" and tiers:
        return _tiered(values, goal, measure, keys, bound, anchor, tiers, start, slope, gaps, errors, fast)
    probes: dict[int, Probe] = {}

    def probe(i: int) -> Probe:
        if i not in probes:
            probes[i] = measure(i)
        return probes[i]

    def stop(p: Probe) -> Outcome | None:
        if kind != "psnr" or bound is None:
            return None
        return _pruned(probes, p, goal, bound)

    lo, hi, pruned = _locate(n, kind, target, ok, probe, start, slope, stop)
    if pruned is not None:
        _remember(keys, None, probes, kind, anchor)
        return pruned
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
    _remember(keys, kept.index if reached else None, probes, kind, anchor)
    return Outcome(kept, sorted(probes.values(), key=lambda q: q.index), reached=reached)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _gap(own: Probe, cheap: Probe) -> float:
    """dB the codec's own probe lies above a tier's at the same rate value (0 for exact ones)."""
    d = own.psnr - cheap.psnr
    return d if math.isfinite(d) else 0.0


def _pruned(probes: dict[int, Probe], p: Probe, goal: float, bound: int) -> Outcome | None:
    """The outcome of a search that stops at probe ``p`` because the codec cannot undercut
    ``bound`` bytes at PSNR ``goal`` (module docstring), or None to go on."""
    direct = p.psnr < goal and p.bytes >= bound  # this probe misses with bytes to spare
    at_bound = None if direct else _psnr_at(probes.values(), bound, goal)
    if direct or (at_bound is not None and at_bound <= goal - BOUND_MARGIN_DB):
        return Outcome(None, sorted(probes.values(), key=lambda q: q.index), pruned_by=p, interpolated=at_bound)
    return None


def _pruned_on_tier(full: dict[int, Probe], cheap: dict[int, Probe], gap: float, at: Probe, goal: float,
                    bound: int) -> Outcome | None:
    """:func:`_pruned` for a tiered search, whose own probes sit next to the boundary: the
    cheapest tier's probes stand in for the codec's, shifted by ``gap`` in PSNR and scaled
    to the codec's bytes at ``at``, with ``BOUND_MARGIN_DB`` for what the shift misses."""
    if at.index not in cheap or cheap[at.index].bytes <= 0:
        return None
    scale = at.bytes / cheap[at.index].bytes
    est = {i: Probe(i, c.value, c.psnr + gap, round(c.bytes * scale)) for i, c in cheap.items()}
    est.update(full)
    short = [q for q in est.values() if q.psnr < goal - BOUND_MARGIN_DB and q.bytes >= bound]
    at_bound = _psnr_at(est.values(), bound, goal)
    if short or (at_bound is not None and at_bound <= goal - BOUND_MARGIN_DB):
        return Outcome(None, pruned_by=at, interpolated=None if short else at_bound)
    return None


def _locate(n: int, kind: str, target: float, ok: Callable[[Probe], bool], probe: Callable[[int], Probe],
            start: int, slope: float, stop: Callable[[Probe], Outcome | None] | None = None,
            ) -> tuple[int, int, Outcome | None]:
    """Steps 1-3 of the module docstring from index ``start``: (lo, hi) with ``ok`` False
    at ``lo`` and True at ``hi`` = lo + 1 (-1 and n stand for the ends of the range), or a
    non-None third value when ``stop`` ended the search at a probe."""
    lo, hi = -1, n  # ok(lo) is False, ok(hi) is True (virtual ends)
    i = start
    seen: dict[int, Probe] = {}
    secant_last = False  # the previous probe was an interpolated guess
    budget = 2 * max(1, math.ceil(math.log2(n + 1))) + 2  # past it: plain bisection
    while True:
        p = seen[i] = probe(i)
        if ok(p):
            hi = i
        else:
            lo = i
        out = stop(p) if stop is not None else None
        if out is not None:
            return lo, hi, out
        if hi - lo <= 1:
            return lo, hi, None
        if lo >= 0 and hi < n:  # bracketed
            m_lo, m_hi = _measure(kind, seen[lo]), _measure(kind, seen[hi])  # both probed in this call
            if len(seen) >= budget or not m_hi > m_lo:
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
            have = sorted(seen)
            if len(have) >= 2:
                a, b = have[0], have[-1]
                est = (_measure(kind, seen[b]) - _measure(kind, seen[a])) / (b - a)
                if est > 0:
                    slope = est
            steps = (target - _measure(kind, p)) / slope
            if hi == n:  # everything probed misses (psnr) / fits (bpp): go up
                nxt = min(i + max(1, math.ceil(steps) + 1), n - 1)
            else:  # go down
                nxt = max(i - max(1, math.ceil(-steps) + 1), 0)
            if nxt == i:  # at an end of the range already
                return lo, hi, None
            secant_last = False
        i = nxt


def _tiered(values: list[int], goal: float, measure: Callable[[int], Probe], keys: tuple, bound: int | None,
            anchor: tuple[tuple, int] | None, tiers: tuple[Tier, ...], start: int, slope: float,
            gaps: list[float], errors: list[float], fast: bool = False) -> Outcome:
    """A ``psnr`` search that locates the boundary on the cheapest tier and spends the
    codec's own probes where it must (module docstring, "Tiers"). ``gaps``: dB the codec
    is expected above each tier (earlier images' medians), re-measured on every own probe;
    before the first, a tier with an ``estimate`` for this image gives its gap instead
    (plus ``errors``: how far earlier images' estimates ran from their measured gaps)."""
    n = len(values)
    full: dict[int, Probe] = {}
    cheap: list[dict[int, Probe]] = [{} for _ in tiers]
    estimated: dict[int, float] = {}  # tier -> its estimate for this image, taken before the first own probe

    def on_tier(k: int, i: int) -> Probe:
        if i not in cheap[k]:
            cheap[k][i] = tiers[k].measure(i)
        return cheap[k][i]

    def own(i: int) -> Probe:
        if i not in full:
            full[i] = measure(i)
        return full[i]

    def estimate(i: int) -> Probe:  # the codec's own where probed, else the cheapest tier + its gap
        if i in full:
            return full[i]
        c = on_tier(0, i)
        return Probe(i, c.value, c.psnr + gaps[0], c.bytes)

    def ok(p: Probe) -> bool:
        return p.psnr >= goal

    def locate(i: int) -> int:
        return min(_locate(n, "psnr", goal, ok, estimate, i, slope)[1], n - 1)

    def done(kept: Probe | None, reached: bool = True, pruned: Outcome | None = None,
             settled: bool = False) -> Outcome:
        _remember(keys, kept.index if kept is not None and reached else None, full, "psnr", anchor,
                  cheap, kept, estimated)
        out = pruned or Outcome(kept, reached=reached, settled=settled)
        out.probes = sorted(full.values(), key=lambda q: q.index)
        out.proxy_probes = sum(len(c) for c in cheap)
        return out

    for _ in range(MAX_ROUNDS):
        b = locate(start)
        if not full:  # no own probe yet: this image's estimates stand in for other images' gaps
            for k, tier in enumerate(tiers):
                if tier.estimate is not None and k not in estimated:
                    e = tier.estimate(b)
                    if math.isfinite(e):
                        estimated[k] = e
                        gaps[k] = e + errors[k]
                        if k == 0:  # this image's gap over the cheapest tier places the first own
                            b = locate(b)  # probe before a costlier tier is measured anywhere
        # before the codec's own probe, its place is checked on the costlier tiers (the
        # last is usually the encode that probe starts from: shared through the memo)
        for k in range(1, len(tiers)):
            for _ in range(3):
                if b in full:
                    break
                shifted = on_tier(k, b).psnr + gaps[k] - on_tier(0, b).psnr
                gaps[0] = shifted if math.isfinite(shifted) else gaps[0]
                moved = locate(b)
                if moved == b:
                    break
                b = moved
        f = own(b)
        gaps = [_gap(f, on_tier(k, b)) if k == 0 or b in cheap[k] else g for k, g in enumerate(gaps)]
        if bound is not None and (pruned := _pruned(full, f, goal, bound) or _pruned_on_tier(
                full, cheap[0], gaps[0], f, goal, bound)) is not None:
            return done(None, pruned=pruned)
        if not ok(f):
            if b == n - 1:  # unreachable: the most bits there are
                return done(f, reached=False)
            start = b + 1
            continue
        if b == 0:
            return done(f)
        below = full.get(b - 1)
        if below is None:
            # the neighbour below, judged by each tier in turn (the gap at b carried over)
            for k, tier in enumerate(tiers):
                e = on_tier(k, b - 1).psnr + _gap(f, on_tier(k, b))
                if e < goal - tier.margin_db:
                    return done(f)  # misses: b is the boundary
                if e >= goal + tier.margin_db:
                    break  # reaches: the boundary is lower
                if fast:
                    return done(f, settled=True)  # cannot tell on the cheapest tier: b is kept
            below = own(b - 1)
        if not ok(below):
            return done(f)
        gaps[0] = _gap(below, on_tier(0, b - 1))
        start = b - 1
    # the tiers kept disagreeing with the codec: finish on its own probes alone
    lo, hi, pruned = _locate(n, "psnr", goal, ok, own, start, slope,
                             (lambda p: _pruned(full, p, goal, bound)) if bound is not None else None)
    if pruned is not None:
        return done(None, pruned=pruned)
    return done(own(n - 1), reached=False) if hi == n else done(full[hi])


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


def _remember(keys: tuple, end: int | None, probes: dict[int, Probe], kind: str,
              anchor: tuple[tuple, int] | None = None, cheap: list[dict[int, Probe]] | None = None,
              kept: Probe | None = None, estimated: dict[int, float] | None = None) -> None:
    """Add this search to the models ``keys``: where it ended, the slope its probes showed
    (those on the cheapest tier where there are any: more of them, the same slope) and, for
    a tiered search, how far above each tier the codec ended (and how far that was from
    the tier's ``estimated`` gap for this image)."""
    seen = cheap[0] if cheap and cheap[0] else probes
    idx = sorted(seen)
    slope = None
    if len(idx) >= 2:
        a, b = idx[0], idx[-1]
        d = (_measure(kind, seen[b]) - _measure(kind, seen[a])) / (b - a)
        slope = d if d > 0 else None
    gaps = {k: _gap(kept, c[kept.index]) for k, c in enumerate(cheap or []) if kept is not None and kept.index in c}
    with _lock:
        for key in keys:
            hist = _model.setdefault(key, _History())
            if end is not None:
                hist.ends = (hist.ends + [end])[-HISTORY:]
                if anchor is not None and anchor[0] != key:
                    hist.offsets[anchor[0]] = (hist.offsets.get(anchor[0], []) + [end - anchor[1]])[-HISTORY:]
            if slope is not None:
                hist.slopes = (hist.slopes + [slope])[-HISTORY:]
            for k, gap in gaps.items():
                hist.tier_gaps[k] = (hist.tier_gaps.get(k, []) + [gap])[-HISTORY:]
                if estimated and k in estimated:
                    hist.estimate_errors[k] = (hist.estimate_errors.get(k, []) + [gap - estimated[k]])[-HISTORY:]


def forget() -> None:
    """Drop the model (tests)."""
    with _lock:
        _model.clear()
