"""Plain NumPy reference implementations: obviously right, slow, used by tests as the oracle."""
from __future__ import annotations

import numpy as np

from simbench.match.base import BinaryMatcher, as_words, unfilled_topk
from simbench.types import Pairs


def hamming_matrix(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Full (Q, N) Hamming distance matrix by unpacking every bit. Only for small inputs."""
    q = np.unpackbits(as_words(queries).view(np.uint8), axis=1).astype(np.int32)
    d = np.unpackbits(as_words(database).view(np.uint8), axis=1).astype(np.int32)
    # |x - y| summed over bits is the Hamming distance of 0/1 vectors.
    return (q[:, None, :] != d[None, :, :]).sum(axis=2).astype(np.int32)


class OracleMatcher(BinaryMatcher):
    name = "oracle"

    def range_search(self, queries, database, radius):
        dist = hamming_matrix(queries, database)
        a, b = np.nonzero(dist <= radius)
        return Pairs(a.astype(np.int64), b.astype(np.int64), dist[a, b]).sorted()

    def topk(self, queries, database, k):
        dist = hamming_matrix(queries, database)
        q, n = dist.shape
        idx, out = unfilled_topk(q, k)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # stable: ties by lower index
        idx[:, : order.shape[1]] = order
        out[:, : order.shape[1]] = np.take_along_axis(dist, order, axis=1)
        return idx, out
