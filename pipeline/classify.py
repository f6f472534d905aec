"""Domain classification: the contract classifier plugins implement."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from PIL import Image

DOMAINS = ("natural", "comic", "line", "vector", "screenshot")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Classification:
    domain: str
    confidence: float
    classifier_id: str
    scores: dict[str, float] = field(default_factory=dict)


class Classifier(ABC):
    """Base class of classifier plugins: canonical pixels in, domain + confidence out.

    ``classify`` receives the canonical image (any of ``images.CANONICAL_MODES``) and must
    be cheap relative to encoding; downscale first if the method allows it.
    """

    classifier_id: ClassVar[str]
    description: ClassVar[str] = ""

    def version(self) -> str:
        return "1"

    def unavailable_reason(self) -> str | None:
        """Why this classifier cannot run here (e.g. no weights installed), or None."""
        return None

    @abstractmethod
    def classify(self, image: Image.Image) -> Classification: ...


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any canonical image, alpha composited on white."""
    if image.mode == "I;16":
        image = image.convert("I").point(lambda v: v / 257).convert("L")
    if image.mode in ("LA", "RGBA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def pick_classifier(registry, policy) -> tuple[Classifier, str]:
    """The policy's classifier, or its fallback when that one is missing or cannot run.

    Returns the classifier and a note ('' when the first choice is used)."""
    from .errors import PluginError

    try:
        first = registry.classifier(policy.classifier)
        why = first.unavailable_reason()
    except PluginError as exc:
        first, why = None, str(exc)
    if first is not None and why is None:
        return first, ""
    return registry.classifier(policy.fallback_classifier), f"classifier {policy.classifier} unavailable ({why}); used {policy.fallback_classifier}"
