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


def _region_views(seed: int, v: np.ndarray, r: int = 3) -> np.ndarray:
    """R windows per image, random but for images 50-79, whose middle window holds images 200-229 (pasted)."""
    rng = np.random.default_rng(seed)
    windows = _embeddings(seed, n=len(v) * r, dim=v.shape[1]).reshape(len(v), r, -1)
    windows[50:80, 1] = v[200:230] + 0.1 * rng.standard_normal((30, v.shape[1])).astype(np.float32)
    return windows / np.linalg.norm(windows, axis=2, keepdims=True)


@pytest.mark.parametrize("normalise_k, centre, augment_k, whitened", [(3, False, 0, False), (10, True, 5, True),
                                                                      (0, True, 0, False)])
def test_region_views_on_the_workers_equal_one_process(client, monkeypatch, normalise_k, centre, augment_k,
                                                       whitened):
    """Region views as tasks (small tiles, chunks whose edges fall inside blocks; with a copy whitening and
    background pictures): the method's pairs and scores, region scores among them, the fusion's scores of
    any pairs and the windows' evidence equal one process's."""
    from simbench.methods.cnn import fit_copy_whitening

    _small_tiles(monkeypatch)
    v = _embeddings(4, n=400)
    embeddings = Embeddings(v, _region_views(5, v))
    method = CnnMethod(_Extractor(), ExactCosineMatcher(query_block=64, database_block=128), min_similarity=None,
                       neighbours=5, normalise_k=normalise_k, centre=centre, augment_k=augment_k)
    if whitened:
        pairs = np.stack([np.arange(30, 60), np.arange(300, 330)], axis=1)
        method.copy_whitening = fit_copy_whitening([(v, pairs)], rank=4, mean=v.mean(axis=0), fitted_for={},
                                                   background=_embeddings(6, n=400)[:50])
    ref = method.score_pairs(embeddings)
    chunks = dc.scatter_embeddings(client, embeddings, chunk_rows=90)
    assert chunks.n_windows == 3 and len(chunks.windows) == len(chunks.futures) == 5
    got = dc.score_embeddings(client, method, chunks)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b) and got.extra.keys() == ref.extra.keys()
    np.testing.assert_allclose(got.score, ref.score, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.extra["region"], ref.extra["region"], rtol=0, atol=1e-6)
    # The pasted pictures pair by their windows: pairs that the whole views alone do not find.
    pasted = {(x, x + 150) for x in range(50, 80)}
    plain = method.score_pairs(Embeddings(v))
    assert len(pasted & set(zip(got.a.tolist(), got.b.tolist()))) >= 20
    assert len(pasted & set(zip(plain.a.tolist(), plain.b.tolist()))) <= 3

    rng = np.random.default_rng(7)
    a, b = rng.integers(0, len(v), 300), rng.integers(0, len(v), 300)
    np.testing.assert_allclose(method.score_given(chunks, a, b), method.score_given(embeddings, a, b),
                               rtol=0, atol=1e-6)
    assert evidence.window_records(chunks, a[:30], b[:30]) == evidence.window_records(embeddings, a[:30], b[:30])


def test_region_views_with_other_matchers_are_gathered(client, caplog):
    """A matcher with no task form gathers the embeddings and their region views: the same pairs."""
    from simbench.match.cosine import HyperplaneLshMatcher

    v = _embeddings(3, n=400)
    embeddings = Embeddings(v, _region_views(8, v))
    method = CnnMethod(_Extractor(), HyperplaneLshMatcher(), min_similarity=None, neighbours=3, normalise_k=3)
    got = dc.score_embeddings(client, method, dc.scatter_embeddings(client, embeddings, chunk_rows=70))
    ref = method.score_pairs(embeddings)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.score, ref.score) and "region" in got.extra
    assert "all embeddings are gathered in this process" in caplog.text


def _matrices(value, dim: int, found: list) -> None:
    """Every float array of rows of `dim` columns (2-D: vectors, 3-D: each row's windows) among what the client
    received: (rows, ndim)."""
    if isinstance(value, np.ndarray):
        if value.ndim in (2, 3) and value.shape[-1] == dim and value.dtype.kind == "f":
            found.append((len(value), value.ndim))
    elif isinstance(value, Embeddings):
        _matrices(value.vectors, dim, found)
        _matrices(value.regions, dim, found)
    elif isinstance(value, dict):
        for v in value.values():
            _matrices(v, dim, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _matrices(v, dim, found)


def assert_same_pairs(found: str, expected: str) -> None:
    """Two pairs.csv texts list the same pairs with the same columns, the scores equal to one in their sixth
    decimal: the cluster's CNN similarities may differ from one process's in their last float32 ulps (a few 1e-8;
    simbench.distributed.match says what was ruled out), and a calibrated score near a rounding step may print one
    apart."""
    import csv
    import io

    rows = [list(csv.DictReader(io.StringIO(text))) for text in (found, expected)]
    assert len(rows[0]) == len(rows[1])
    for got, want in zip(*rows):
        assert {k: v for k, v in got.items() if k != "score"} == {k: v for k, v in want.items() if k != "score"}
        assert abs(float(got["score"]) - float(want["score"])) <= 1.5e-6, (got, want)


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
    assert len(tables) == len(default) == 5 and len(fusions) == 1  # keypoints, cnn, blobs, align, blobs_wide; one fusion
    save_calibrations(tables, path, "shipped, re-keyed for cnn.extractor.regions=0", fusions)
    return path


@pytest.mark.parametrize("method, regions", [("cnn", True), ("cascade", True), ("cascade", False)])
def test_find_on_a_cluster_keeps_the_embeddings_on_the_workers(images, cluster, tmp_path, monkeypatch,  # noqa: F811
                                                               method, regions):
    """find with the CNN stage on the cluster, small tiles and chunks of a few images: the workers read the
    embeddings; the client never loads them, never gathers the chunks and receives no embedding but those
    of the images whose evidence it shows (their vectors, and their windows with region views); pairs.csv
    and the evidence equal the in-process run's (scores to float32 rounding: `assert_same_pairs`). With the default
    region views, and without them."""
    from simbench.find import pipeline
    from simbench.find.outputs import read_pair_evidence

    local, _ = cluster
    shown = 4  # evidence of the 4 best pairs: the client may receive the embeddings of 8 images
    monkeypatch.setattr(evidence, "MAX_EVIDENCE_PAIRS", shown)
    monkeypatch.setattr(evidence, "pair_evidence", functools.partial(evidence.pair_evidence, limit=shown))
    # Small blocks for both runs (their products must be the same), so the cluster's search has many tiles.
    monkeypatch.setattr(ExactCosineMatcher.__init__, "__defaults__", (8, 4))
    # Without region views: the shipped tables and fusion re-keyed for regions=0 (the same signals but for the
    # region score), so that the cascade's fusion runs and scores every pair by the CNN.
    settings = [] if regions else [f"calibration={_tables_without_regions(tmp_path / 'tables.json')}",
                                   "cnn.extractor.regions=0"]
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

    def spy_topk(chunks, k, matcher, others=False, stats=None, database=None):
        searches.append({"windows": database is not None})
        return sharded_topk(chunks, k, matcher, others, searches[-1], database)

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
    assert found.count("\n") > 10
    assert_same_pairs(found, expected)
    assert "embedding" not in loaded and len(chunks[0].futures) == 18 and len(chunks[0]) == 36
    assert chunks[0].n_windows == 3 * regions and len(chunks[0].windows or []) == 18 * regions
    # 36 rows: blocks of 8 x 4; the region search's database is the 108 windows
    vector_search = next(s for s in searches if not s["windows"])
    assert vector_search["tiles"] == 5 * 9 and vector_search["merges"] == 5 * (3 + 1)
    assert [(s["tiles"], s["merges"]) for s in searches if s["windows"]] == [(5 * 27, 5 * (7 + 2 + 1))] * regions
    assert method == "cnn" or given[0] > 36  # the cascade's fusion scores every pair by the CNN, on the workers
    matrices = []
    _matrices(received, chunks[0].dim, matrices)
    rows = {ndim: sum(n for n, d in matrices if d == ndim) for ndim in (2, 3)}
    # The shown images' vectors: for their neighbour ranks, and with region views again for their windows' cosines.
    assert chunks[0].dim > 100 and 0 < rows[2] <= 2 * shown * (1 + regions)
    assert rows[3] <= 2 * shown and (rows[3] > 0) == regions
    mine, theirs = (read_pair_evidence(tmp_path / name / "evidence.npz") for name in ("out", "alone"))
    assert len(mine) == shown and mine == theirs and all("cnn" in record for record in mine.values())


def test_framed_pictures_are_compared_by_their_windows_on_a_cluster(cluster, tmp_path, monkeypatch):  # noqa: F811
    """Five different photos in one screenshot template and one of them also on its own: on a cluster the
    framed pictures' embeddings and region views are replaced on the workers by their windows'
    (EmbeddingChunks.with_rows), and find gives the in-process pairs: the framed copy pairs with its original,
    the other framed photos with nothing."""
    import csv

    from test_frames import PICTURES, _photo, _template

    folder = tmp_path / "shots"
    folder.mkdir()
    for k, name in enumerate(PICTURES[:5]):
        _template(_photo(name, 400, 300)).save(folder / f"shot{k}.jpg", quality=90)
    _photo("chelsea", 640, 480).save(folder / "original.jpg", quality=90)
    expected = run_find(folder, tmp_path / "alone", "cascade")
    replaced, with_rows = [], dc.EmbeddingChunks.with_rows

    def spy_with_rows(self, rows, vectors, windows):
        replaced.append((len(rows), windows is not None and windows.shape[:2] == (len(rows), self.n_windows)))
        return with_rows(self, rows, vectors, windows)

    monkeypatch.setattr(dc.EmbeddingChunks, "with_rows", spy_with_rows)
    found = run_find(folder, tmp_path / "out", "cascade", "--scheduler", cluster[0].scheduler_address)
    assert found == expected and replaced == [(5, True)]
    pairs = [(r["a"].rsplit("/", 1)[1], r["b"].rsplit("/", 1)[1], float(r["score"]))
             for r in csv.DictReader(found.splitlines())]
    assert [(a, b) for a, b, s in pairs if s >= 0.5] == [("original.jpg", "shot0.jpg")]
