"""The CNN stage on a Dask LocalCluster of 2 worker processes (simbench.distributed.cnn): the sharded top-k
and its tree merge against a full-matrix sort, the method's pairs and scores, the fusion's scores and the
evidence equal to one process, and `find` (cascade and cnn) equal to the in-process run with the client
never holding the embeddings."""
from __future__ import annotations

import functools

import distributed
import numpy as np
import pytest

from simbench.distributed import cnn as dc
from simbench.find import evidence
from simbench.match.cosine import ExactCosineMatcher
from simbench.methods.cnn import CnnMethod, pair_cosines
from simbench.types import Embeddings
from test_distributed import FILES_PER_TASK, cluster, images, run_find  # noqa: F401 (module fixtures)


@pytest.fixture(scope="module")
def client(cluster):  # noqa: F811
    return cluster[1]


class _Extractor:
    device, fallback = "cpu", False


def _small_tiles(monkeypatch):
    """A task budget too small for more than one database block per tile: many tiles, a merge tree."""
    monkeypatch.setattr(dc, "task_budget", lambda client: 0)


def _integer_vectors(seed: int, n: int, dim: int = 6) -> np.ndarray:
    """Small integers: every dot product is exact in float32 whatever the summation order, and many tie."""
    rng = np.random.default_rng(seed)
    v = rng.integers(-2, 3, (n, dim)).astype(np.float32)
    v[7] = v[3]  # an exact duplicate
    return v


def _full_sort(v: np.ndarray, k: int, others: bool) -> tuple[np.ndarray, np.ndarray]:
    """The plain answer: all similarities, each row sorted by (similarity down, index up)."""
    sims = v.astype(np.float64) @ v.astype(np.float64).T
    n = len(v)
    idx, sim = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    for i in range(n):
        cols = np.array([j for j in range(n) if not (others and j == i)], np.int64)
        order = cols[np.lexsort((cols, -sims[i, cols]))][:k]
        idx[i, : len(order)], sim[i, : len(order)] = order, sims[i, order]
    return idx, sim


@pytest.mark.parametrize("k", [1, 9, 70])  # 9 > a database block (4 rows); 70 > the 61 rows
@pytest.mark.parametrize("others", [False, True])
def test_sharded_topk_equals_a_full_sort(client, monkeypatch, k, others):
    _small_tiles(monkeypatch)
    v = _integer_vectors(k, 61)
    chunks = dc.scatter_embeddings(client, v, chunk_rows=7)  # chunk edges fall inside blocks
    stats = {}
    idx, sim = dc.sharded_topk(chunks, k, ExactCosineMatcher(query_block=8, database_block=4), others, stats)
    ref_idx, ref_sim = _full_sort(v, k, others)
    assert np.array_equal(idx, ref_idx) and np.array_equal(sim, ref_sim)
    assert stats["chunks"] == 9 and stats["tiles"] == 8 * 16 and stats["merges"] == 8 * (4 + 1)
    tied = np.diff(ref_sim[:, : min(k, 60)], axis=1) == 0
    assert k == 1 or tied.sum() > 20  # the ties that the lower index must win


def test_sharded_self_join_equals_the_matcher_and_a_full_scan(client, monkeypatch):
    _small_tiles(monkeypatch)
    v = _integer_vectors(5, 50)
    matcher = ExactCosineMatcher(query_block=8, database_block=4)
    got = dc.sharded_self_join(dc.scatter_embeddings(client, v, chunk_rows=6), 3.0, matcher)
    ref = matcher.self_join(v, 3.0)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b) and np.array_equal(got.dist, ref.dist)
    sims = v.astype(np.float64) @ v.astype(np.float64).T
    a, b = np.nonzero(np.triu(sims >= 3.0, 1))
    assert sorted(zip(got.a.tolist(), got.b.tolist())) == sorted(zip(a.tolist(), b.tolist())) and len(a) > 50


def _embeddings(seed: int, n: int = 700, dim: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v[10] = v[20]
    v[30:60] = v[300:330] + 0.15 * rng.standard_normal((30, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("min_similarity, neighbours, normalise_k, centre, augment_k",
                         [(None, 20, 10, False, 0), (0.5, 3, 0, False, 0), (0.4, 0, 5, False, 0),
                          (None, 20, 10, True, 0), (None, 20, 10, True, 5)])
def test_method_scores_fusion_scores_and_evidence_equal_one_process(client, monkeypatch, min_similarity,
                                                                    neighbours, normalise_k, centre, augment_k):
    _small_tiles(monkeypatch)
    v = _embeddings(1)
    method = CnnMethod(_Extractor(), ExactCosineMatcher(query_block=64, database_block=128),
                       min_similarity=min_similarity, neighbours=neighbours, normalise_k=normalise_k,
                       centre=centre, augment_k=augment_k)
    ref = method.score_pairs(Embeddings(v))
    chunks = dc.scatter_embeddings(client, v, chunk_rows=90)
    got = dc.score_embeddings(client, method, chunks)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b) and len(ref) > 100
    assert got.extra.keys() == ref.extra.keys()
    # The same block products as in one process; see simbench.distributed.match on the last float32 ulps.
    np.testing.assert_allclose(got.score, ref.score, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.extra["cosine"], ref.extra["cosine"], rtol=0, atol=1e-6)

    rng = np.random.default_rng(2)
    a, b = rng.integers(0, len(v), 500), rng.integers(0, len(v), 500)
    # In batches of 256 pairs, each from the rows of several chunks: the einsum of one process, exactly.
    assert np.array_equal(dc.chunk_pair_cosines(chunks, a, b), pair_cosines(v, a, b))
    np.testing.assert_allclose(method.score_given(chunks, a, b), method.score_given(Embeddings(v), a, b),
                               rtol=0, atol=1e-6)
    assert evidence.cnn_evidence(chunks, a[:40], b[:40]) == evidence.cnn_evidence(v, a[:40], b[:40])


def test_other_matchers_gather_the_embeddings_and_say_so(client, caplog):
    from simbench.match.cosine import HyperplaneLshMatcher

    v = _embeddings(3, n=400)
    method = CnnMethod(_Extractor(), HyperplaneLshMatcher(), min_similarity=0.5, neighbours=2, normalise_k=3)
    chunks = dc.scatter_embeddings(client, v, chunk_rows=50)
    got = dc.score_embeddings(client, method, chunks)
    ref = method.score_pairs(Embeddings(v))
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b) and np.array_equal(got.score, ref.score)
    assert "all embeddings are gathered in this process" in caplog.text
    a, b = np.arange(0, 100), np.arange(100, 200)
    assert np.array_equal(method.score_given(chunks, a, b), method.score_given(Embeddings(v), a, b))


def test_region_views_are_matched_in_one_process_and_say_so(client, caplog):
    """Region views have no task form: score_embeddings runs the method here (logged), never the tasks
    without the regions, and workers refuse to read records that carry them."""
    v = _embeddings(4, n=400)
    regions = _embeddings(5, n=1200).reshape(400, 3, -1)
    method = CnnMethod(_Extractor(), ExactCosineMatcher(), min_similarity=None, neighbours=5, normalise_k=3)
    got = dc.score_embeddings(client, method, Embeddings(v, regions))
    ref = method.score_pairs(Embeddings(v, regions))
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.score, ref.score) and "region" in got.extra
    assert "region views have no task form" in caplog.text
    with pytest.raises(ValueError, match="region views"):
        dc._join_vectors([{"vector": v[0], "regions": regions[0]}], [0])


def _matrices(value, dim: int, found: list) -> None:
    """Every 2-D float array with `dim` columns among what the client received: (rows,)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 2 and value.shape[1] == dim and value.dtype.kind == "f":
            found.append(len(value))
    elif isinstance(value, Embeddings):
        _matrices(value.vectors, dim, found)
    elif isinstance(value, dict):
        for v in value.values():
            _matrices(v, dim, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _matrices(v, dim, found)


def _tables_without_regions(path):
    """A calibration file: the shipped tables and fusions, keyed by the stages' settings with
    cnn.extractor.regions=0."""
    from simbench.find import cascade
    from simbench.find.calibration import load_calibrations, load_fusions, rekeyed, save_calibrations, settings_key

    default = cascade.build_stages(cascade.make_config("cascade"), calibrations={}, quiet=True)
    plain = cascade.build_stages(cascade.make_config("cascade", ["cnn.extractor.regions=0"]), calibrations={},
                                 quiet=True)
    rekey = {settings_key(a.settings): b.settings for a, b in zip(default, plain)}
    tables, fusions = rekeyed(load_calibrations(), load_fusions(), rekey)
    assert len(tables) == 2 and len(fusions) == 1
    save_calibrations(tables, path, "shipped, re-keyed for cnn.extractor.regions=0", fusions)
    return path


@pytest.mark.parametrize("method", ["cnn", "cascade"])
def test_find_on_a_cluster_keeps_the_embeddings_on_the_workers(images, cluster, tmp_path, monkeypatch,  # noqa: F811
                                                               method):
    """find with the CNN stage on the cluster, small tiles and chunks of a few images: the workers read the
    embeddings; the client never loads them, never gathers the chunks and receives no embedding but those
    of the images whose evidence it shows; pairs.csv and the evidence equal the in-process run's. Without
    region views, which have no task form (the default's are matched in the client: test_distributed's
    test_find_on_a_cluster_gives_the_in_process_pairs)."""
    from simbench.find import pipeline
    from simbench.find.outputs import read_pair_evidence

    local, _ = cluster
    shown = 4  # evidence of the 4 best pairs: the client may receive the embeddings of 8 images
    monkeypatch.setattr(evidence, "MAX_EVIDENCE_PAIRS", shown)
    monkeypatch.setattr(evidence, "pair_evidence", functools.partial(evidence.pair_evidence, limit=shown))
    # Small blocks for both runs (their products must be the same), so the cluster's search has many tiles.
    monkeypatch.setattr(ExactCosineMatcher.__init__, "__defaults__", (8, 4))
    # The shipped tables and fusion re-keyed for regions=0 (the same signals but for the region score), so
    # that the cascade's fusion runs and scores every pair by the CNN.
    settings = [f"calibration={_tables_without_regions(tmp_path / 'tables.json')}", "cnn.extractor.regions=0"]
    expected = run_find(images, tmp_path / "alone", method, *settings)

    loaded, chunks, received, searches, given = [], [], [], [], []
    load_features, load_embeddings, gather = pipeline.load_features, dc.load_embeddings, distributed.Client.gather
    sharded_topk, score_given = dc.sharded_topk, dc.score_given_on_chunks

    def spy_load_features(stage, *args, **kwargs):
        loaded.append(stage.extractor.kind)
        return load_features(stage, *args, **kwargs)

    def spy_load_embeddings(*args, **kwargs):
        loaded_here = load_embeddings(*args, **kwargs)
        chunks.append(loaded_here[0])
        return loaded_here

    def spy_gather(self, futures, *args, **kwargs):
        result = gather(self, futures, *args, **kwargs)
        received.append(result)
        return result

    def spy_topk(chunks, k, matcher, others=False, stats=None):
        searches.append({})
        return sharded_topk(chunks, k, matcher, others, searches[-1])

    def spy_score_given(method, chunks, a, b):
        given.append(len(a))
        return score_given(method, chunks, a, b)

    def no_gather(self):
        raise AssertionError("the embeddings were gathered in the client")

    monkeypatch.setattr(pipeline, "load_features", spy_load_features)
    monkeypatch.setattr(dc, "load_embeddings", spy_load_embeddings)
    monkeypatch.setattr(dc.EmbeddingChunks, "gather", no_gather)
    monkeypatch.setattr(distributed.Client, "gather", spy_gather)
    monkeypatch.setattr(dc, "sharded_topk", spy_topk)
    monkeypatch.setattr(dc, "score_given_on_chunks", spy_score_given)
    # 2 items a reading task, and room for one database block a tile
    monkeypatch.setattr(dc, "task_budget", lambda client: 2 * dc.LOAD_ITEM_BYTES)
    found = run_find(images, tmp_path / "out", method, "--scheduler", local.scheduler_address,
                     f"cluster.files_per_task={FILES_PER_TASK}", *settings)
    assert found.count("\n") > 10 and found == expected
    assert "embedding" not in loaded and len(chunks[0].futures) == 18 and len(chunks[0]) == 36
    assert searches[0]["tiles"] == 5 * 9 and searches[0]["merges"] == 5 * (3 + 1)  # 36 rows: blocks of 8 x 4
    assert method == "cnn" or given[0] > 36  # the cascade's fusion scores every pair by the CNN, on the workers
    matrices = []
    _matrices(received, chunks[0].dim, matrices)
    assert chunks[0].dim > 100 and 0 < sum(matrices) <= 2 * shown
    mine, theirs = (read_pair_evidence(tmp_path / name / "evidence.npz") for name in ("out", "alone"))
    assert len(mine) == shown and mine == theirs and all("cnn" in record for record in mine.values())
