"""Whole-image binary hashes compared by Hamming distance."""
from __future__ import annotations

import numpy as np

from simbench.features.base import Extractor
from simbench.match.base import BinaryMatcher
from simbench.methods.base import Method
from simbench.types import BinaryCodes, KeypointSets, ScoredPairs


class HashMethod(Method):
    """All pairs within max_distance bits (a fraction of the code length); score = 1 - distance / bits.

    A crop-resistant hash is a set of segment codes per image (KeypointSets): those are matched as bags,
    segments matching within `segment_error_rate` of their bits as ImageHash's ImageMultiHash.matches does
    (bit_error_rate 0.25), scored as matched segments / segments of the smaller set.
    """

    def __init__(self, extractor: Extractor, matcher: BinaryMatcher, max_distance: float = 0.3,
                 threshold: float = 0.85, segment_error_rate: float = 0.25):
        self.extractor = extractor
        self.matcher = matcher
        self.max_distance = max_distance
        self.threshold = threshold
        self.segment_error_rate = segment_error_rate

    def score_pairs(self, features: BinaryCodes | KeypointSets) -> ScoredPairs:
        if isinstance(features, KeypointSets):
            return self._bags(features)
        radius = int(np.floor(self.max_distance * features.bits))
        pairs = self.matcher.self_join(features.words, radius)
        score = 1.0 - pairs.dist.astype(np.float64) / features.bits
        return ScoredPairs(pairs.a, pairs.b, score, extra={"comparisons": len(features) * (len(features) - 1) // 2})

    def _bags(self, features: KeypointSets) -> ScoredPairs:
        from simbench.methods.keypoints import KeypointMethod

        bits = features.descriptors.shape[1] * 8
        bags = KeypointMethod(self.extractor, self.matcher, distance_threshold=int(self.segment_error_rate * bits),
                              score_threshold=self.threshold, score="min")
        return bags.score_pairs(features)

    def params(self) -> dict:
        return {"max_distance": self.max_distance, "threshold": self.threshold,
                "segment_error_rate": self.segment_error_rate}
