"""The one interface every method implements: extract features once, then score image pairs."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from simbench.features.base import Extractor
from simbench.types import ScoredPairs


class Method(ABC):
    """extractor: images -> features (cached by the runner); score_pairs: features -> scored row pairs.

    threshold: the score at and above which a pair is called a duplicate (scores in [0, 1]).
    """

    extractor: Extractor
    threshold: float
    matcher: Any = None

    @abstractmethod
    def score_pairs(self, features) -> ScoredPairs:
        """Candidate pairs of feature rows (a < b) with scores; pairs not returned score 0."""

    def params(self) -> dict:
        """Query-time parameters, for result.json."""
        return {}

    @property
    def device(self) -> str:
        return getattr(self.matcher, "device", "cpu")

    @property
    def fallback(self) -> bool:
        return bool(getattr(self.matcher, "fallback", False))
