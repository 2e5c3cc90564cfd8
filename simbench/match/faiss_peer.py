"""faiss IndexBinaryFlat as the peer baseline: brute-force Hamming search as the field uses it.

Follows faiss's own usage (wiki "Binary indexes"): codes are bytes (d = bits), IndexBinaryFlat.add, then
range_search / search. Two conventions differ from simbench's and are translated here:
- faiss's binary range_search keeps distance < radius; simbench's radius is inclusive, so radius + 1 is
  passed;
- faiss has no self-join: it searches every code against all of them (N x N) and the pairs a < b are kept.
Our uint64 words are viewed as their 8 little-endian bytes; Hamming distance does not depend on the order
of bits as long as queries and database share it.
"""
from __future__ import annotations

import numpy as np

from simbench.match.base import NO_DISTANCE, BinaryMatcher, as_words, unfilled_topk
from simbench.types import Pairs


def _faiss():
    import faiss  # imported on first use: the package is optional for the rest of simbench

    return faiss


class FaissMatcher(BinaryMatcher):
    """faiss.IndexBinaryFlat range search and k-NN; threads: OpenMP threads for a call (0 = faiss's default)."""

    name = "faiss"

    def __init__(self, threads: int = 0):
        self.threads = int(threads)

    def range_search(self, queries, database, radius):
        q, db = _as_bytes(queries, database)
        radius = int(radius)
        if radius < 0 or len(q) == 0 or len(db) == 0:
            return Pairs.empty()
        radius = min(radius, 8 * q.shape[1])  # larger means the same; faiss takes a C int
        lims, dist, labels = self._call(lambda index: index.range_search(q, radius + 1), db)
        a = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(lims).astype(np.int64))  # lims is uint64
        pairs = Pairs(a, labels.astype(np.int64), dist.astype(np.int32))
        # faiss promises no order within a query's hits (a flat scan gives them in b order): check in one
        # pass, and sort to simbench's canonical (a, b) only when needed.
        in_order = (np.diff(pairs.a) > 0) | (np.diff(pairs.b) > 0)
        return pairs if in_order.all() else pairs.sorted()

    def topk(self, queries, database, k):
        q, db = _as_bytes(queries, database)
        k = int(k)
        idx, dist = unfilled_topk(len(q), k)
        if k <= 0 or len(q) == 0 or len(db) == 0:
            return idx, dist
        # faiss's heap breaks ties by the lower id, like the oracle; rows beyond the database are -1.
        found_d, found_i = self._call(lambda index: index.search(q, min(k, len(db))), db)
        idx[:, : found_i.shape[1]] = found_i
        dist[:, : found_d.shape[1]] = found_d
        dist[idx < 0] = NO_DISTANCE
        return idx, dist

    def _call(self, fn, db):
        faiss = _faiss()
        index = faiss.IndexBinaryFlat(8 * db.shape[1])
        index.add(db)
        before = faiss.omp_get_max_threads()
        if self.threads > 0:
            faiss.omp_set_num_threads(self.threads)
        try:
            return fn(index)
        finally:
            faiss.omp_set_num_threads(before)


def _as_bytes(queries, database):
    """uint64 words (N, W) -> uint8 (N, 8W), the layout faiss's binary indexes take (d = 64W bits)."""
    q, db = as_words(queries), as_words(database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} words a code, the database {db.shape[1]}")
    if q.shape[1] == 0:  # faiss needs d > 0; one zero word per code keeps every distance at 0
        q, db = np.zeros((len(q), 1), np.uint64), np.zeros((len(db), 1), np.uint64)
    return _bytes(q), _bytes(db)


def _bytes(words):
    return np.ascontiguousarray(words, dtype="<u8").view(np.uint8).reshape(len(words), 8 * words.shape[1])
