"""The built-in router: registered as the ``default_router`` plugin, it answers the
``route`` hook last (``trylast``), so a plugin can override routing for some images and
return ``None`` for the rest. The contract (policies, routes) is :mod:`pixarc.policy`.
"""

from __future__ import annotations

from .classify import UNKNOWN, Classification
from .hookspecs import hookimpl
from .images import ImageInfo
from .policy import STORE, Candidate, Policy, Route


@hookimpl(trylast=True)
def route(info: ImageInfo, classification: Classification, policy: Policy) -> Route:
    """The built-in router: the policy's route for the domain, ``store`` as the last resort."""
    if not info.pixel_faithful:
        return Route(classification.domain, True, (Candidate(STORE),), "first", "; ".join(info.notes))
    domain = classification.domain
    reason = ""
    if classification.confidence < policy.min_confidence or domain not in policy.routes:
        reason = (
            f"confidence {classification.confidence:.2f} < {policy.min_confidence}"
            if domain in policy.routes
            else f"no route for {domain}"
        )
        domain = UNKNOWN
    spec = policy.routes[domain]
    candidates = [Candidate(c, policy.params_for(c, spec), spec.target) for c in spec.codecs]
    candidates += [Candidate(c, policy.params_for(c, spec), spec.target, fallback=True) for c in spec.fallbacks]
    if STORE not in spec.codecs + spec.fallbacks:  # last resort for every route: keep the original bytes
        candidates.append(Candidate(STORE))
    return Route(domain, spec.lossless, tuple(candidates), policy.selection, reason, policy.rate_search)
