"""The one interface every binary-code matcher implements.

Radius convention (simbench-wide): a pair matches when its Hamming distance is <= radius (inclusive,
like OpenCV's radiusMatch). faiss keeps distance < radius; its wrapper passes radius + 1.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from simbench.types import Pairs


class BinaryMatcher(ABC):
    """Search uint64 codes (N, W) by Hamming distance."""

    name: str = "binary"
    #: Where the work ran ("cpu" or "cuda:0") and whether it fell back from what was asked for.
    device: str = "cpu"
    fallback: bool = False
    #: Show a progress bar on long calls (the runner and `simbench find` set it from their progress option).
    progress: bool = False

    @abstractmethod
    def range_search(self, queries: np.ndarray, database: np.ndarray, radius: int) -> Pairs:
        """All (q, d) with popcount(queries[q] ^ database[d]) <= radius; a = query row, b = database row."""

    def self_join(self, codes: np.ndarray, radius: int) -> Pairs:
        """All pairs a < b within one set of codes with distance <= radius."""
        pairs = self.range_search(codes, codes, radius)
        keep = pairs.a < pairs.b
        return Pairs(pairs.a[keep], pairs.b[keep], pairs.dist[keep])

    def warm_up(self, features) -> None:
        """Run once on two codes of the features' width, so one-off compilation is not timed."""
        words = words_of(features)
        if words is not None:
            self.self_join(np.zeros((2, words.shape[1]), np.uint64), 0)

    @abstractmethod
    def topk(self, queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest database rows per query: (indices (Q, k) int64, distances (Q, k) int32).

        Ties are broken by the lower database index; with fewer than k rows, the rest is -1 / max int.
        """


def words_of(features) -> np.ndarray | None:
    """The uint64 codes a binary matcher will search for these features (hash codes or descriptors, or
    the codes themselves)."""
    from simbench.types import bytes_to_words

    if isinstance(features, np.ndarray) and features.dtype == np.uint64:
        return features
    if hasattr(features, "words"):
        return features.words
    if getattr(features, "binary", False) and len(getattr(features, "descriptors", ())):
        return bytes_to_words(features.descriptors[:2])
    return None


#: Top-k distance of a slot with no database row (fewer than k rows).
NO_DISTANCE = np.iinfo(np.int32).max


def unfilled_topk(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k output before the search: every slot empty (index -1, distance NO_DISTANCE)."""
    k = max(int(k), 0)
    return np.full((n_queries, k), -1, np.int64), np.full((n_queries, k), NO_DISTANCE, np.int32)


def as_words(codes) -> np.ndarray:
    """Accept BinaryCodes or a uint64 array; return a C-contiguous uint64 (N, W) array."""
    words = getattr(codes, "words", codes)
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if words.ndim != 2:
        raise ValueError(f"codes must be (N, W) uint64 words, got shape {words.shape}")
    return words


class EmbeddingMatcher(ABC):
    """Search L2-normalised float32 vectors (N, D) by cosine similarity (= inner product).

    Pairs.dist holds the similarity (float32; higher = more similar). The counterpart of each binary
    matcher shares its config name (exact, lsh, gpu, faiss): see simbench.match.cosine.
    """

    name: str = "embedding"
    device: str = "cpu"
    fallback: bool = False

    @abstractmethod
    def range_search(self, queries: np.ndarray, database: np.ndarray, min_similarity: float) -> Pairs:
        """All (q, d) with <queries[q], database[d]> >= min_similarity."""

    def self_join(self, vectors: np.ndarray, min_similarity: float) -> Pairs:
        pairs = self.range_search(vectors, vectors, min_similarity)
        keep = pairs.a < pairs.b
        return Pairs(pairs.a[keep], pairs.b[keep], pairs.dist[keep])

    @abstractmethod
    def topk(self, queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar database rows per query: (indices (Q, k) int64, similarities (Q, k) float32)."""
