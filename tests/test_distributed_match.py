"""Matching as Dask tasks (issue 13, items 3-4): the same results as the single-process run, on a
LocalCluster of 2 worker processes, for random codes (with an oracle) and real BRISK descriptors."""
from __future__ import annotations

import distributed
import numpy as np
import pytest
from PIL import Image

from simbench.distributed import keypoints as dk
from simbench.distributed import match as dm
from simbench.features.keypoints import KeypointExtractor
from simbench.match.cosine import ExactCosineMatcher
from simbench.match.lsh import MultiIndexHashMatcher
from simbench.match.oracle import OracleMatcher
from simbench.methods.cnn import CnnMethod
from simbench.methods.keypoints import KeypointMethod
from simbench.types import Embeddings, bytes_to_words


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _same_pairs(x, y):
    assert np.array_equal(x.a, y.a) and np.array_equal(x.b, y.b) and np.array_equal(x.dist, y.dist)


def _planted_words(seed: int, n: int, words: int = 8, near: int = 400) -> np.ndarray:
    """Random codes, `near` of them near copies of others (each bit flipped with probability 3%)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 2**63, (n, words), dtype=np.uint64)
    for _ in range(near):
        i, j = rng.integers(0, n, 2)
        flips = np.packbits(rng.random(64 * words) < 0.03, bitorder="little").view(np.uint64)
        w[j] = w[i] ^ flips
    w[5] = w[7]  # distance 0
    return w


@pytest.mark.parametrize("seed", [0, 1])
def test_self_join_equals_the_matcher_and_the_oracle_on_random_codes(client, seed):
    words = _planted_words(seed, 1200)
    matcher = MultiIndexHashMatcher(permutation="calibrated" if seed == 0 else "random", seed=seed)
    stats = {}
    got = dm.self_join(client, words, 31, matcher, partitions=3, chunk_rows=500, stats=stats)
    ref = matcher.self_join(words, 31)
    _same_pairs(got, ref)
    _same_pairs(got, OracleMatcher().self_join(words, 31).sorted())
    assert len(got) > 300 and stats["chunks"] == 3 and stats["compared"] == matcher.last_compared


def test_every_piece_is_split_into_key_partitions_run_as_tasks(client):
    words = _planted_words(2, 800, words=4, near=200)
    matcher = MultiIndexHashMatcher()
    with distributed.get_task_stream(client) as ts:
        got = dm.self_join(client, words, 15, matcher)  # automatic sizes: at least 2 partitions
    _same_pairs(got, matcher.self_join(words, 15))
    joins = {}
    for t in ts.data:
        name = str(t["key"])
        if name.startswith("mih-join-"):
            piece = int(name.split("-")[2])
            joins[piece] = joins.get(piece, 0) + 1
    assert sorted(joins) == list(range(16)) and min(joins.values()) >= 2


def test_no_pairs_and_tiny_inputs(client):
    matcher = MultiIndexHashMatcher()
    assert len(dm.self_join(client, np.zeros((1, 8), np.uint64), 31, matcher)) == 0
    far = np.array([[0] * 8, [2**64 - 1] * 8], np.uint64)
    assert len(dm.self_join(client, far, 31, matcher)) == 0
    _same_pairs(dm.self_join(client, far, 0, matcher), matcher.self_join(far, 0))  # 1 piece of 512 bits


# ---------------------------------------------------------------------------------------------------
# Real photographs: BRISK descriptors of skimage photos and transformed copies


def _copies(tmp_path, photos) -> list:
    paths = []
    for name in ["astronaut", "camera", "coffee", "rocket"]:
        img = Image.fromarray(photos[name])
        img = img.resize((400, round(400 * img.height / img.width)))
        w, h = img.size
        for kind, copy in [("orig", img), ("crop", img.crop((w // 6, h // 6, w - w // 8, h - h // 7))),
                           ("rot", img.rotate(8, resample=Image.Resampling.BICUBIC)),
                           ("flip", img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]:
            path = tmp_path / f"{name}_{kind}.png"
            copy.save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def brisk(tmp_path_factory, photos):
    extractor = KeypointExtractor("brisk", max_features=300, max_size=400, mirror=True, workers=1)
    return extractor, extractor.extract(_copies(tmp_path_factory.mktemp("photos"), photos)).features


def test_self_join_equals_the_matcher_and_the_oracle_on_brisk(client, brisk):
    words = bytes_to_words(brisk[1].descriptors)
    matcher = MultiIndexHashMatcher()
    got = dm.self_join(client, words, 31, matcher, partitions=2)
    _same_pairs(got, matcher.self_join(words, 31))
    sample = words[:1500]  # the oracle is quadratic in memory
    _same_pairs(dm.self_join(client, sample, 31, matcher), OracleMatcher().self_join(sample, 31).sorted())


def _same_scores(got, ref):
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b) and np.array_equal(got.score, ref.score)
    # The cluster's verification keeps no correspondences: its shown pairs' evidence is verified again.
    assert got.extra.keys() == ref.extra.keys() - {"correspondences"}
    for k, v in got.extra.items():
        if not k.endswith("_s"):  # timings
            mine, theirs = np.asarray(v), np.asarray(ref.extra[k])
            assert np.array_equal(mine, theirs, equal_nan=mine.dtype.kind == "f"), k  # NaN: no map, padding


@pytest.mark.parametrize("verify", [False, True])
def test_score_keypoints_equals_score_pairs(client, brisk, verify):
    extractor, features = brisk
    method = KeypointMethod(extractor, MultiIndexHashMatcher(), verify=verify)
    ref = method.score_pairs(features)
    got = dm.score_keypoints(client, method, features) if verify else dm.score_pairs(client, method, features)
    _same_scores(got, ref)
    assert len(ref) > 10 and (not verify or ref.extra["verified"] > 10)


@pytest.mark.parametrize("verify, cap", [(False, 100_000), (True, 100_000), (True, 5)])
def test_keypoints_in_many_chunks_equal_score_pairs(client, brisk, verify, cap):
    """Chunks of a few images, descriptor pairs in image-pair partitions, df summed over them, RANSAC
    in batches, and (cap) the global cut of the best candidates: the in-process ScoredPairs exactly."""
    extractor, features = brisk
    method = KeypointMethod(extractor, MultiIndexHashMatcher(), verify=verify, max_pairs_verified=cap)
    ref = method.score_pairs(features)
    stats = {}
    got = dk.score_chunks(client, method, dk.scatter_keypoints(client, features, chunk_rows=700), stats)
    _same_scores(got, ref)
    assert list(got.extra) == [k for k in ref.extra if k != "correspondences"]  # same fields, same order
    assert stats["chunks"] >= 8 and stats["pair_partitions"] >= 2 and len(ref) >= 5
    if verify:
        assert stats["batches"] >= 2 and (ref.extra["verified"] == 5 if cap == 5 else ref.extra["verified"] > 5)


@pytest.mark.parametrize("verify", [False, True])
def test_keypoints_with_fewer_than_two_descriptors_or_no_candidate(client, brisk, verify):
    extractor, features = brisk
    method = KeypointMethod(extractor, MultiIndexHashMatcher(), verify=verify)
    one = dk._with_rows(features, np.array([0]), np.array([0, 1, 1]), features.image_sizes[:2])  # 1 row, 2 images
    two = dk.take_images(features, np.array([0, 5]))  # unrelated photos: no pair passes verification
    for few in (one, two):
        ref = method.score_pairs(few)
        _same_scores(dk.score_chunks(client, method, dk.scatter_keypoints(client, few)), ref)
    assert not verify or len(method.score_pairs(two)) == 0


@pytest.mark.parametrize("permutation, seed", [("calibrated", 0), ("calibrated", 3), ("random", 1)])
def test_the_plan_from_the_sampled_rows_is_the_plan_of_all_rows(client, permutation, seed):
    words = _planted_words(seed, 9000, words=4, near=100)
    matcher = MultiIndexHashMatcher(permutation=permutation, seed=seed)
    bounds = np.array([0, 2500, 6000, 9000])
    chunks = client.scatter([words[s:e] for s, e in zip(bounds[:-1], bounds[1:])], hash=False)
    layout, perm = dk.plan_from_sample(client, matcher, chunks, bounds, 15)
    ref_layout, ref_perm = matcher.plan(words, 15)
    assert np.array_equal(perm, ref_perm) and np.array_equal(layout.widths, ref_layout.widths)
    assert permutation != "calibrated" or not np.array_equal(perm, np.arange(len(perm)))  # fitted, not trivial


def test_chunks_hand_back_the_images_asked_for(client, brisk):
    _, features = brisk
    chunks = dk.scatter_keypoints(client, features, chunk_rows=1000)
    images = np.array([0, 3, 4, 11, 15])
    got, ref = chunks.take(images), dk.take_images(features, images)
    assert len(chunks.futures) > 3 and len(got) == 5
    for name in ("descriptors", "points", "mirrored", "offsets", "image_sizes"):
        assert np.array_equal(getattr(got, name), getattr(ref, name)), name
    r = features.offsets
    assert np.array_equal(got.descriptors[: r[1] - r[0]], features.descriptors[r[0] : r[1]])


# ---------------------------------------------------------------------------------------------------
# CNN embeddings: sharded exact search


def _embeddings(seed: int, n: int = 1500, dim: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v[10] = v[20]  # an exact duplicate: ties go to the lower index
    v[30:40] = v[300:310] + 0.1 * rng.standard_normal((10, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_sharded_topk_and_range_equal_the_exact_matcher(client):
    v = _embeddings(0)
    matcher = ExactCosineMatcher(query_block=256, database_block=512)  # several tiles and tasks
    idx, sim = matcher.topk(v, v, 7)
    got_idx, got_sim = dm.cnn_neighbours(client, v, 7, matcher)
    assert np.array_equal(idx, got_idx)
    # Same block products as in one process; OpenBLAS's bits depend on its thread count, which the
    # tasks take from the caller (see the module docstring), so equal up to a few ulps (measured: none or 1-2 of 10,500).
    np.testing.assert_allclose(got_sim, sim, rtol=0, atol=1e-6)
    ref = matcher.self_join(v, 0.3)
    got = dm.cosine_self_join(client, v, 0.3, matcher)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b)
    np.testing.assert_allclose(got.dist, ref.dist, rtol=0, atol=1e-6)


def test_score_cnn_equals_score_pairs(client):
    class _Extractor:
        device, fallback = "cpu", False

    v = Embeddings(_embeddings(1, n=900))
    matcher = ExactCosineMatcher(query_block=256, database_block=256)
    method = CnnMethod(_Extractor(), matcher, min_similarity=0.4, neighbours=3, normalise_k=5)
    ref = method.score_pairs(v)
    got = dm.score_cnn(client, method, v)
    assert np.array_equal(got.a, ref.a) and np.array_equal(got.b, ref.b)
    np.testing.assert_allclose(got.score, ref.score, rtol=0, atol=1e-6)
