"""The rate search's cheap tiers (:mod:`pixarc.ratesearch`, "Tiers"): the boundary a
bisection over the codec's own probes finds, in far fewer of them."""

from __future__ import annotations

import pytest

from pixarc import ratesearch

VALUES = list(range(101))


def own_psnr(i: int) -> float:
    """A codec's PSNR over its quality: concave, with the plateaus AVIF's quality scale has
    (two qualities mapping to one quantiser)."""
    j = i - (i % 7 == 3)  # every seventh quality repeats the one below
    return 24.0 + 0.3 * j - 0.0012 * j * j


def probe(fn, counter: list | None = None):
    def measure(i: int) -> ratesearch.Probe:
        if counter is not None:
            counter.append(i)
        p = fn(i)
        return ratesearch.Probe(i, VALUES[i], p, int(1000 * 1.04**i))
    return measure


def tiers(drift0: float = 0.004, drift1: float = 0.001, base_asked: list | None = None) -> tuple[ratesearch.Tier, ...]:
    """A fast tier 1.2 dB below the codec, its gap drifting by ``drift0`` per quality step,
    then an exact base 0.4 dB below, drifting by ``drift1`` (its probes appended to ``base_asked``)."""
    fast = probe(lambda i: own_psnr(i) - 1.2 - drift0 * i)
    base = probe(lambda i: own_psnr(i) - 0.4 - drift1 * i, base_asked)
    return ratesearch.Tier(fast, 0.1), ratesearch.Tier(base, 0.03)


def boundary(goal: float) -> int:
    return next(i for i in VALUES if own_psnr(i) >= goal)


GOALS = (30.05, 33.3, 36.0, 38.71, 41.2, 36.4, 35.1, 39.9)


def test_tiers_find_the_bisections_boundary_with_under_half_its_own_probes():
    ratesearch.forget()
    direct_probes, tiered_probes = [], []
    for n, goal in enumerate(GOALS):
        direct = ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr, direct_probes), ("direct",))
        tiered = ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr, tiered_probes), ("tiered",),
                                   tiers=tiers())
        assert direct.kept.index == tiered.kept.index == boundary(goal), goal
        assert tiered.reached and tiered.proxy_probes > 0 and "cheaper ones" in tiered.note
        assert len(tiered.probes) == len(set(tiered_probes[-len(tiered.probes):]))  # no own probe twice
    assert len(tiered_probes) * 2 <= len(direct_probes), (len(tiered_probes), len(direct_probes))


def test_a_tier_drifting_past_its_margin_costs_own_probes_never_the_target():
    """Gaps that drift by far more than the tiers admit: every kept probe still reaches the
    goal and lies at most a step above the boundary."""
    ratesearch.forget()
    for goal in GOALS:
        out = ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr), ("drifting",),
                                tiers=tiers(drift0=0.08, drift1=0.05))
        assert out.kept.psnr >= goal and out.kept.index - boundary(goal) in (0, 1), goal


def test_an_unreachable_goal_keeps_the_top_and_a_bound_prunes():
    ratesearch.forget()
    top = ratesearch.search(VALUES, "psnr", 60.0, 10_000, probe(own_psnr), ("top",), tiers=tiers())
    assert not top.reached and top.kept.index == VALUES[-1]
    ratesearch.forget()
    i = boundary(38.0)
    pruned = ratesearch.search(VALUES, "psnr", 38.0, 10_000, probe(own_psnr), ("bound",),
                               bound=int(1000 * 1.04 ** (i - 20)), tiers=tiers())
    assert pruned.kept is None and pruned.pruned_by is not None


@pytest.mark.parametrize("kind", ["bpp"])
def test_tiers_are_for_psnr_targets_only(kind):
    """A bytes budget is judged by the codec's own bytes: no tier is asked."""
    asked = []
    fast = ratesearch.Tier(probe(lambda i: (asked.append(i), own_psnr(i))[1]), 0.1)
    ratesearch.forget()
    out = ratesearch.search(VALUES, kind, 1.0, 10_000, probe(own_psnr), ("bpp",), tiers=(fast,))
    assert out.kept is not None and not asked


def test_a_domain_without_history_starts_where_the_codecs_other_domains_ended():
    """The model is kept per (codec, settings, target, domain); a domain the codec has not
    searched yet starts from the codec's searches on every domain (``shared_key``)."""
    ratesearch.forget()
    goal = 36.0
    ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr), ("c", "natural"), shared_key=("c",))
    first: list[int] = []
    ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr, first), ("c", "comic"), shared_key=("c",))
    assert first[0] == boundary(goal)  # the other domain's end: found at the first probe's neighbour
    alone: list[int] = []
    ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr, alone), ("c", "line"))
    assert alone[0] == len(VALUES) // 2  # no shared model: the middle of the range


def test_an_images_own_gap_estimate_places_the_codecs_first_probe():
    """Images on which the codec lies a different distance above its base tier (a post-filter
    gaining 0.2 dB on one, 0.9 dB on the next): other images' gaps misplace the first own
    probe, the tier's estimate for the image itself places it (running a steady 0.1 dB short
    of the gap, which the search learns). The boundary is the same either way."""
    gains = (0.2, 0.9, 0.5, 0.3, 0.8, 0.25, 0.7, 0.4)

    def run(with_estimate: bool) -> tuple[int, list[int]]:
        ratesearch.forget()
        own, asked = [], []
        for goal, g in zip(GOALS, gains):
            fast = ratesearch.Tier(probe(lambda i, g=g: own_psnr(i) - g - 1.0 - 0.004 * i), 0.1)
            estimate = (lambda i, g=g: (asked.append(i), g - 0.1)[1]) if with_estimate else None
            base = ratesearch.Tier(probe(lambda i, g=g: own_psnr(i) - g), 0.03, estimate)
            out = ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr, own), ("gains", with_estimate),
                                    tiers=(fast, base))
            assert out.kept.index == boundary(goal), (goal, g, with_estimate)
        return len(own), asked

    without, none_asked = run(False)
    with_estimate, asked = run(True)
    assert not none_asked and len(asked) == len(GOALS)  # one estimate per search, before its first own probe
    assert with_estimate < without, (with_estimate, without)


def test_an_estimate_over_the_cheapest_tier_spends_no_costlier_encode_where_it_will_not_probe():
    """Where the cheapest tier has this image's own estimate of the codec's gap over it (a
    post-filter's gain over a fast encode, measured on a mosaic of a few blocks), the
    search moves there before the costlier tier (the slow encode under the filter) is
    measured anywhere: fewer slow encodes than with only that tier's estimate, which needs a
    slow encode where other images' gaps put the first probe. The boundary is the same."""
    gains = (0.2, 0.9, 0.5, 0.3, 0.8, 0.25, 0.7, 0.4)

    def run(over_fast: bool) -> tuple[int, int]:
        ratesearch.forget()
        own, slow = [], []
        for goal, g in zip(GOALS, gains):
            fast_gap = (lambda i, g=g: g + 1.0 + 0.004 * i - 0.05) if over_fast else None  # a steady 0.05 dB short
            fast = ratesearch.Tier(probe(lambda i, g=g: own_psnr(i) - g - 1.0 - 0.004 * i), 0.1, fast_gap)
            base = ratesearch.Tier(probe(lambda i, g=g: own_psnr(i) - g, slow), 0.03, lambda i, g=g: g - 0.1)
            out = ratesearch.search(VALUES, "psnr", goal, 10_000, probe(own_psnr, own), ("over fast", over_fast),
                                    tiers=(fast, base))
            assert out.kept.index == boundary(goal), (goal, g, over_fast)
        return len(slow), len(own)

    slow_without, own_without = run(False)
    slow_with, own_with = run(True)
    assert slow_with < slow_without and own_with <= own_without, (slow_with, slow_without, own_with, own_without)


def test_fast_settles_the_last_step_on_the_cheapest_tier():
    """``fast``: where the cheapest tier cannot tell whether one step below the codec's
    reaching probe still reaches the goal, that probe is kept unprobed below: never under
    the goal, at most one step above the boundary, fewer probes of the codec and of its
    costlier tier (AVIF at speed 6, under the filter) than the exact search, and the outcome
    says it settled."""
    # b − 1 within the cheapest tier's margin of the goal (k away from the plateaus, where
    # "one step" would be two qualities)
    goals = [own_psnr(k) + d for k in (33, 40, 47, 54, 61, 68) for d in (0.04, -0.04)]
    counts = {}
    for fast in (False, True):
        ratesearch.forget()
        asked: list[int] = []  # the codec's own probes and its costlier tier's
        outs = [ratesearch.search(VALUES, "psnr", g, 10_000, probe(own_psnr, asked), ("fast", fast),
                                  tiers=tiers(base_asked=asked), fast=fast) for g in goals]
        for g, out in zip(goals, outs):
            assert out.kept.psnr >= g and out.kept.index - boundary(g) in ((0, 1) if fast else (0,)), (fast, g)
        counts[fast] = len(asked)
        settled = [o for o in outs if o.settled]
        if fast:
            assert settled and all("rate_search fast" in o.note for o in settled)
            assert all(o.kept.index - 1 not in {p.index for p in o.probes} for o in settled)
        else:
            assert not settled
    assert counts[True] < counts[False], counts


def test_a_policy_names_its_rate_search(tmp_path):
    from pixarc.errors import PolicyError
    from pixarc.policy import load_policy

    assert load_policy("lossy").rate_search == "fast" and load_policy("default").rate_search == "exact"
    bad = tmp_path / "bad.toml"
    bad.write_text('rate_search = "sloppy"\n[routes.unknown]\ncodecs = ["png"]\n')
    with pytest.raises(PolicyError, match="rate_search"):
        load_policy(str(bad))
