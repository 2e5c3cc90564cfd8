"""Whole-image binary hashes compared by Hamming distance."""
from __future__ import annotations

import numpy as np

from simbench.features.base import Extractor
from simbench.match.base import BinaryMatcher
from simbench.methods.base import Method
from simbench.types import BinaryCodes, ScoredPairs


class HashMethod(Method):
    """All pairs within max_distance bits (a fraction of the code length); score = 1 - distance / bits."""

    def __init__(self, extractor: Extractor, matcher: BinaryMatcher, max_distance: float = 0.3,
                 threshold: float = 0.85):
        self.extractor = extractor
        self.matcher = matcher
        self.max_distance = max_distance
        self.threshold = threshold

    def score_pairs(self, features: BinaryCodes) -> ScoredPairs:
        radius = int(np.floor(self.max_distance * features.bits))
        pairs = self.matcher.self_join(features.words, radius)
        score = 1.0 - pairs.dist.astype(np.float64) / features.bits
        return ScoredPairs(pairs.a, pairs.b, score, extra={"comparisons": len(features) * (len(features) - 1) // 2})

    def params(self) -> dict:
        return {"max_distance": self.max_distance, "threshold": self.threshold}
