"""The routing contract: policies (TOML) and the routes they produce.

A policy maps each domain to ordered codec candidates with parameters; see
``pixarc/policies/default.toml`` for the annotated default. A :class:`Route` is what a
``route`` hook answers for one image (:mod:`pixarc.hookspecs`); the built-in router
(:mod:`pixarc.routing`) is one plugin answering it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


from .classify import DOMAINS, UNKNOWN
from .errors import PolicyError
from .images import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS

STORE = "store"
SELECTIONS = ("first", "smallest", "rd")  # rd: see selection.rd_key
# How a target search settles the last rate step (pixarc.ratesearch, "Tiers"): "exact" probes
# the codec itself where its cheaper tiers cannot tell whether one step lower still reaches
# the target; "fast" keeps the step that reached it there (at most one rate step more bytes
# on those images, one full encode fewer).
RATE_SEARCHES = ("exact", "fast")


@dataclass(frozen=True)
class Candidate:
    codec_id: str
    params: dict[str, Any] = field(default_factory=dict)
    target: tuple[str, float] | None = None  # ("psnr", dB) or ("bpp", bits per pixel)
    fallback: bool = False  # tried only where no earlier candidate met the route's target


@dataclass(frozen=True)
class Route:
    domain: str
    lossless: bool
    candidates: tuple[Candidate, ...]
    selection: str = "first"
    reason: str = ""
    rate_search: str = "exact"  # RATE_SEARCHES


@dataclass(frozen=True)
class DomainRoute:
    lossless: bool
    codecs: tuple[str, ...]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: tuple[str, float] | None = None
    fallbacks: tuple[str, ...] = ()  # tried after ``codecs`` only where none of them met the target


@dataclass(frozen=True)
class Policy:
    name: str
    classifier: str
    fallback_classifier: str
    min_confidence: float
    selection: str
    max_pixels: int
    formats: frozenset[str]
    params: dict[str, dict[str, Any]]
    routes: dict[str, DomainRoute]
    source_text: str = ""
    rate_search: str = "exact"  # RATE_SEARCHES

    def params_for(self, codec_id: str, route: DomainRoute) -> dict[str, Any]:
        return {**self.params.get(codec_id, {}), **route.params.get(codec_id, {})}


def _parse(doc: dict[str, Any], name: str, text: str) -> Policy:
    if doc.get("version", 1) != 1:
        raise PolicyError(f"{name}: unsupported policy version {doc.get('version')}")
    selection = doc.get("selection", "first")
    if selection not in SELECTIONS:
        raise PolicyError(f"{name}: selection must be one of {SELECTIONS}, got {selection!r}")
    rate_search = doc.get("rate_search", "exact")
    if rate_search not in RATE_SEARCHES:
        raise PolicyError(f"{name}: rate_search must be one of {RATE_SEARCHES}, got {rate_search!r}")
    routes: dict[str, DomainRoute] = {}
    for domain, spec in (doc.get("routes") or {}).items():
        if domain not in DOMAINS and domain != UNKNOWN:
            raise PolicyError(f"{name}: unknown domain {domain!r} (domains: {DOMAINS + (UNKNOWN,)})")
        codecs = spec.get("codecs")
        if not codecs or not all(isinstance(c, str) for c in codecs):
            raise PolicyError(f"{name}: routes.{domain}.codecs must be a non-empty list of codec ids")
        targets = [(k, float(spec[f"target_{k}"])) for k in ("psnr", "bpp") if f"target_{k}" in spec]
        if len(targets) > 1:
            raise PolicyError(f"{name}: routes.{domain} sets both target_psnr and target_bpp")
        fallbacks = spec.get("fallbacks", [])
        if not isinstance(fallbacks, list) or not all(isinstance(c, str) for c in fallbacks):
            raise PolicyError(f"{name}: routes.{domain}.fallbacks must be a list of codec ids")
        routes[domain] = DomainRoute(bool(spec.get("lossless", True)), tuple(codecs), dict(spec.get("params", {})),
                                     targets[0] if targets else None, tuple(fallbacks))
    if UNKNOWN not in routes:
        raise PolicyError(f"{name}: a routes.{UNKNOWN} entry is required (used for low confidence)")
    limits = doc.get("limits", {})
    try:
        min_conf = float(doc.get("min_confidence", 0.0))
        max_pixels = int(limits.get("max_pixels", DEFAULT_MAX_PIXELS))
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{name}: {exc}") from None
    return Policy(
        name=name,
        classifier=str(doc.get("classifier", "stats")),
        fallback_classifier=str(doc.get("fallback_classifier", "stats")),
        min_confidence=min_conf,
        selection=selection,
        max_pixels=max_pixels,
        formats=frozenset(f.upper() for f in limits.get("formats", DEFAULT_FORMATS)),
        params={k: dict(v) for k, v in (doc.get("params") or {}).items()},
        routes=routes,
        source_text=text,
        rate_search=rate_search,
    )


def load_policy(path: str | None = None) -> Policy:
    """Load a policy from a path/URL, a built-in name (:func:`builtin_policies`), or the default."""
    from .policies import builtin_policies

    builtins = builtin_policies()
    if path is None or path in builtins:
        name = path or "default"
        text = resources.files("pixarc.policies").joinpath(f"{name}.toml").read_text()
    else:
        import fsspec  # here: the router plugin imports this module for `pixarc --help`

        name = path
        try:
            with fsspec.open(path, "r") as f:
                text = f.read()
        except FileNotFoundError:
            raise PolicyError(f"policy {path!r} not found: it is neither a built-in policy "
                              f"({', '.join(builtins)}) nor an existing policy file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{name}: invalid TOML: {exc}") from None
    return _parse(doc, name, text)
