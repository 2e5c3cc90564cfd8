"""The GPU cosine matcher's top-k (TorchCudaCosineMatcher, torch code run on the CPU here): blocked over
the database with torch.topk and merged, against the full-sort oracle, with ties."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simbench.match.cosine import ExactCosineMatcher, TorchCudaCosineMatcher, top_columns  # noqa: E402


def oracle_topk(q: np.ndarray, db: np.ndarray, k: int):
    """Full sort of every similarity: descending, ties to the lower index (stable sort of -sim)."""
    sims = q @ db.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    idx = np.full((len(q), k), -1, np.int64)
    sim = np.full((len(q), k), -np.inf, np.float32)
    idx[:, : order.shape[1]] = order
    sim[:, : order.shape[1]] = np.take_along_axis(sims, order, axis=1)
    return idx, sim


def vectors_with_ties(n: int, dim: int, distinct: int, seed: int) -> np.ndarray:
    """Vectors drawn from `distinct` ones with entries in {-3/8, ..., 3/8}: every inner product is exact in
    float32 whatever the order of summation (block shapes change it), so equal similarities are equal."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(-3, 4, (distinct, dim)).astype(np.float32) / 8
    return pool[rng.integers(0, distinct, n)]


@pytest.mark.parametrize("query_block,database_block", [(7, 5), (64, 13), (1000, 1000)])
@pytest.mark.parametrize("k", [1, 4, 20, 150])
def test_blocked_topk_equals_the_full_sort_with_ties(query_block, database_block, k):
    x = vectors_with_ties(120, 16, 9, seed=k)
    q = vectors_with_ties(30, 16, 9, seed=k + 1)
    matcher = TorchCudaCosineMatcher(device="cpu", query_block=query_block, database_block=database_block)
    idx, sim = matcher.topk(q, x, k)
    want_idx, want_sim = oracle_topk(q, x, k)
    assert np.array_equal(sim, want_sim) and np.array_equal(idx, want_idx)
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    if k > len(x):
        assert (idx[:, len(x):] == -1).all() and np.isneginf(sim[:, len(x):]).all()


def test_topk_of_a_set_against_itself_and_the_exact_matcher_agree():
    x = vectors_with_ties(200, 8, 25, seed=3)
    torch_idx, torch_sim = TorchCudaCosineMatcher(device="cpu", query_block=33, database_block=17).topk(x, x, 6)
    exact_idx, exact_sim = ExactCosineMatcher(query_block=33, database_block=17).topk(x, x, 6)
    assert np.array_equal(torch_idx, exact_idx) and np.array_equal(torch_sim, exact_sim)


def test_top_columns_keeps_rows_above_32_bits_and_breaks_ties_by_position():
    sims = torch.tensor([[0.5, 0.9, 0.5, 0.9, -1.0]])
    rows = torch.tensor([[3, 2**40 + 1, 2**40 + 2, 2**40 + 3, 7]])
    s, r = top_columns(sims, rows, 3)
    assert r.tolist() == [[2**40 + 1, 2**40 + 3, 3]] and s.tolist() == [[0.8999999761581421, 0.8999999761581421, 0.5]]
    s, r = top_columns(sims, rows, 9)  # k past the columns: all of them, in order
    assert r.tolist()[0][-1] == 7 and len(r[0]) == 5


def test_database_block_bounds_the_similarity_block(monkeypatch):
    """No product larger than query_block x database_block is formed (the issue: query_block x N)."""
    x = vectors_with_ties(90, 8, 30, seed=5)
    shapes = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    TorchCudaCosineMatcher(device="cpu", query_block=16, database_block=10).topk(x, x, 5)
    assert shapes and max(r for r, _ in shapes) <= 16 and max(c for _, c in shapes) <= 10
