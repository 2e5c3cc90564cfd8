"""CNN embeddings compared by cosine similarity (the digital-humanities team's ResNet features, generalised).

Score = the cosine similarity clipped to [0, 1]: for L2-normalised pooled CNN features (post-ReLU, so
almost never negative) the cosine itself is the natural, interpretable score, and `threshold` reads as a
cosine (0.9 = "cosine >= 0.9"). Pairs below min_similarity are not returned (score 0 for the metrics);
they rank last for micro-AP anyway. (cos + 1) / 2 was not chosen: it would squeeze all real scores
into [0.5, 1] and make every threshold mean something else than the cosine users know.
"""
from __future__ import annotations

import numpy as np

from simbench.features.base import Extractor
from simbench.match.cosine import cosine_matcher_for
from simbench.methods.base import Method
from simbench.types import Embeddings, ScoredPairs


class CnnMethod(Method):
    """All pairs with cosine >= min_similarity (candidates, ranked for micro-AP); duplicate at >= threshold.

    matcher: the binary matcher Hydra built from the `matcher` group (exact, lsh, gpu, faiss); its cosine
        counterpart does the search (simbench.match.cosine.cosine_matcher_for). lsh_bits, lsh_recall: the
        random-hyperplane signature length and per-pair target recall used when matcher=lsh.
    """

    def __init__(self, extractor: Extractor, matcher, min_similarity: float = 0.5, threshold: float = 0.9,
                 lsh_bits: int = 256, lsh_recall: float = 0.95):
        self.extractor = extractor
        self.binary_matcher = matcher
        self.matcher = cosine_matcher_for(matcher, lsh_bits=lsh_bits, lsh_recall=lsh_recall)
        self.min_similarity = float(min_similarity)
        self.threshold = float(threshold)
        self.lsh_bits = int(lsh_bits)
        self.lsh_recall = float(lsh_recall)

    def score_pairs(self, features: Embeddings) -> ScoredPairs:
        pairs = self.matcher.self_join(features.vectors, self.min_similarity)
        score = np.clip(pairs.dist.astype(np.float64), 0.0, 1.0)
        n = len(features)
        extra = {"comparisons": n * (n - 1) // 2}
        stats = getattr(self.matcher, "last_stats", None)
        if stats:
            extra["lsh"] = dict(stats)
        return ScoredPairs(pairs.a, pairs.b, score, extra=extra)

    def params(self) -> dict:
        return {"min_similarity": self.min_similarity, "threshold": self.threshold,
                "matcher": self.matcher.name, "lsh_bits": self.lsh_bits, "lsh_recall": self.lsh_recall,
                "extract_device": self.extractor.device, "extract_fallback": self.extractor.fallback,
                "match_device": self.matcher.device, "match_fallback": self.matcher.fallback}

    @property
    def device(self) -> str:
        """The accelerator when either step ran on one, else "cpu" (params() has each step's device)."""
        for dev in (self.extractor.device, self.matcher.device):
            if str(dev).startswith("cuda"):
                return str(dev)
        return "cpu"

    @property
    def fallback(self) -> bool:
        """True when the extractor or the matcher was asked for a device it did not get."""
        return bool(getattr(self.extractor, "fallback", False) or getattr(self.matcher, "fallback", False))
