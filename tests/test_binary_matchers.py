"""The exact (numba) and faiss matchers against the plain NumPy oracle, on random and on real codes.

Every answer must equal the oracle's exactly: the same pairs, in canonical (a, b) order, with the same
int64 indices and int32 distances; top-k with ties broken by the lower index and -1 / int32 max padding.
Radius is inclusive: a pair at exactly the radius is in, one bit more is out.
"""
from __future__ import annotations

import cv2
import imagehash
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from simbench.match.exact import ExactMatcher
from simbench.match.faiss_peer import FaissMatcher
from simbench.match.oracle import OracleMatcher
from simbench.types import BinaryCodes, Pairs, bytes_to_words, pack_bits

ORACLE = OracleMatcher()
INT32_MAX = np.iinfo(np.int32).max

MATCHERS = {
    "exact": ExactMatcher(),
    # Tiny blocks and tiles put many block and tile edges (and the self-join diagonal) inside small inputs.
    "exact-small-tiles": ExactMatcher(block_size=7, tile_bytes=512, threads=2),
    "exact-1-thread": ExactMatcher(block_size=33, threads=1),
    "faiss": FaissMatcher(threads=2),
}


@pytest.fixture(params=list(MATCHERS))
def matcher(request):
    return MATCHERS[request.param]


def assert_same_pairs(got: Pairs, want: Pairs):
    assert got.a.dtype == np.int64 and got.b.dtype == np.int64 and got.dist.dtype == np.int32
    np.testing.assert_array_equal(got.a, want.a)
    np.testing.assert_array_equal(got.b, want.b)
    np.testing.assert_array_equal(got.dist, want.dist)


def assert_same_topk(got, want):
    assert got[0].dtype == np.int64 and got[1].dtype == np.int32
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def clustered_codes(rng, n: int, width: int, centres: int, flip: float) -> np.ndarray:
    """n codes of 64*width bits: random centres with each bit flipped with probability flip (near pairs)."""
    c = rng.integers(0, 2**64, size=(centres, width), dtype=np.uint64)
    return c[rng.integers(0, centres, n)] ^ pack_bits(rng.random((n, 64 * width)) < flip)


# -- random codes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 4, 8])
def test_random_codes_equal_oracle(matcher, width):
    rng = np.random.default_rng(width)
    codes = clustered_codes(rng, 260, width, centres=25, flip=0.08)
    radius = int(0.22 * 64 * width)
    queries = codes[rng.permutation(len(codes))[:90]]

    want = ORACLE.range_search(queries, codes, radius)
    assert len(want) > 100  # the clustered codes do have pairs within the radius
    assert_same_pairs(matcher.range_search(queries, codes, radius), want)
    assert_same_pairs(matcher.self_join(codes, radius), ORACLE.self_join(codes, radius))
    assert_same_topk(matcher.topk(queries, codes, 9), ORACLE.topk(queries, codes, 9))


@pytest.mark.parametrize("width", [1, 8])
def test_uniform_random_codes_equal_oracle(matcher, width):
    # Independent uniform codes: distances near 32*width, few pairs at a loose radius, none at a tight one.
    rng = np.random.default_rng(10 + width)
    codes = rng.integers(0, 2**64, size=(300, width), dtype=np.uint64)
    for radius in (3, 26 * width):
        assert_same_pairs(matcher.self_join(codes, radius), ORACLE.self_join(codes, radius))
    assert_same_topk(matcher.topk(codes[:40], codes, 5), ORACLE.topk(codes[:40], codes, 5))


@pytest.mark.parametrize("width, radius", [(1, 0), (1, 5), (1, 64), (2, 70), (4, 17), (8, 31), (3, 100)])
def test_radius_is_inclusive(matcher, width, radius):
    # Codes at exactly 0, 1, 2, ... bits from a base code (flipped bits spread over all words).
    rng = np.random.default_rng(radius)
    bits = 64 * width
    base = rng.integers(0, 2**64, size=(1, width), dtype=np.uint64)
    distances = np.arange(min(radius + 4, bits + 1))
    flips = np.zeros((len(distances), bits), bool)
    for row, d in enumerate(distances):
        flips[row, rng.permutation(bits)[:d]] = True
    codes = base ^ pack_bits(flips)

    pairs = matcher.range_search(base, codes, radius)
    np.testing.assert_array_equal(pairs.b, np.flatnonzero(distances <= radius))
    np.testing.assert_array_equal(pairs.dist, distances[distances <= radius])
    assert_same_pairs(pairs, ORACLE.range_search(base, codes, radius))
    assert_same_pairs(matcher.self_join(codes, radius), ORACLE.self_join(codes, radius))


def test_radius_zero_finds_exact_duplicates(matcher):
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 2**64, size=(40, 2), dtype=np.uint64)
    which = rng.integers(0, 40, 150)
    codes = distinct[which]
    pairs = matcher.self_join(codes, 0)
    a, b = np.triu_indices(len(codes), k=1)
    same = which[a] == which[b]
    np.testing.assert_array_equal(pairs.a, a[same])
    np.testing.assert_array_equal(pairs.b, b[same])
    assert not pairs.dist.any()
    assert_same_pairs(pairs, ORACLE.self_join(codes, 0))


def test_many_pairs_grow_the_output(matcher):
    # Every pair matches: 1.1 million pairs, far past any first buffer size.
    codes = np.zeros((1500, 1), np.uint64)
    codes[::3, 0] = 1
    pairs = matcher.self_join(codes, 1)
    a, b = np.triu_indices(len(codes), k=1)
    np.testing.assert_array_equal(pairs.a, a)
    np.testing.assert_array_equal(pairs.b, b)
    np.testing.assert_array_equal(pairs.dist, (codes[a, 0] != codes[b, 0]).astype(np.int32))


def test_empty_and_single_inputs(matcher):
    none = np.zeros((0, 2), np.uint64)
    some = np.arange(10, dtype=np.uint64).reshape(5, 2)
    for q, db in [(none, some), (some, none), (none, none)]:
        assert len(matcher.range_search(q, db, 5)) == 0
        idx, dist = matcher.topk(q, db, 3)
        assert idx.shape == dist.shape == (len(q), 3)
        assert (idx == -1).all() and (dist == INT32_MAX).all()
    assert len(matcher.self_join(none, 5)) == 0
    assert len(matcher.self_join(some[:1], 128)) == 0  # one code has no pair
    assert len(matcher.range_search(some, some, -1)) == 0  # negative radius: nothing
    assert len(matcher.range_search(some, some, 10**30)) == 25  # past any distance: everything
    assert_same_pairs(matcher.range_search(some[:1], some[:1], 0), Pairs(np.array([0]), np.array([0]),
                                                                         np.array([0], np.int32)))
    idx, dist = matcher.topk(some, some, 0)
    assert idx.shape == dist.shape == (5, 0)


def test_queries_differ_from_database(matcher):
    rng = np.random.default_rng(3)
    database = clustered_codes(rng, 211, 4, centres=12, flip=0.1)
    queries = clustered_codes(np.random.default_rng(3), 37, 4, centres=12, flip=0.12)  # same centres
    assert_same_pairs(matcher.range_search(queries, database, 70), ORACLE.range_search(queries, database, 70))
    assert_same_topk(matcher.topk(queries, database, 4), ORACLE.topk(queries, database, 4))
    # BinaryCodes and strided views are accepted like plain arrays.
    assert_same_pairs(matcher.range_search(BinaryCodes(queries, 256), database[::2], 70),
                      ORACLE.range_search(queries, database[::2], 70))


def test_width_mismatch_is_an_error(matcher):
    with pytest.raises(ValueError):
        matcher.range_search(np.zeros((2, 1), np.uint64), np.zeros((2, 2), np.uint64), 3)


@pytest.mark.parametrize("k", [1, 5, 64, 199, 200, 207])
def test_topk_ties_and_k_beyond_n(matcher, k):
    # Few distinct codes: long runs of equal distances, so ties decide most of the ranking.
    rng = np.random.default_rng(k)
    codes = rng.integers(0, 16, size=(200, 1)).astype(np.uint64)
    assert_same_topk(matcher.topk(codes[:30], codes, k), ORACLE.topk(codes[:30], codes, k))


def test_topk_when_every_row_is_closer_than_the_last(matcher):
    # Distance to the query falls (with ties) as the index grows: the worst order for a bounded candidate
    # list, which must keep replacing what it holds.
    n = 3000
    ones = 63 - (np.arange(n) * 64 // n)
    codes = pack_bits(np.arange(64)[None, :] < ones[:, None])
    query = np.zeros((2, 1), np.uint64)
    query[1, 0] = np.uint64(1) << np.uint64(63)
    for k in (1, 3, 70, 500):
        assert_same_topk(matcher.topk(query, codes, k), ORACLE.topk(query, codes, k))


# -- real codes ---------------------------------------------------------------------------------------


def _variants(img: Image.Image) -> list[Image.Image]:
    """The photo and the edits the duplicate finder must see through."""
    w, h = img.size
    return [
        img,
        img.resize((w // 2, h // 2)),
        img.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
        img.rotate(5, expand=False),
        ImageEnhance.Brightness(img).enhance(1.3),
        ImageOps.mirror(img),
    ]


@pytest.fixture(scope="module")
def image_hashes(photos):
    """phash and dhash (64 bits each) of real photos and edited copies: (N, 1) and (N, 2) words."""
    names = ["astronaut", "camera", "coffee", "rocket", "coins", "brick", "moon", "immunohistochemistry"]
    rows, owners = [], []
    for k, name in enumerate(names):
        for v in _variants(Image.fromarray(photos[name])):
            rows.append(np.concatenate([imagehash.phash(v).hash.ravel(), imagehash.dhash(v).hash.ravel()]))
            owners.append(k)
    bits = pack_bits(np.array(rows))
    return bits[:, :1].copy(), bits, np.array(owners)


def test_real_image_hashes_equal_oracle(matcher, image_hashes):
    phash, both, owners = image_hashes
    for codes, radius in [(phash, 12), (both, 26)]:
        pairs = matcher.self_join(codes, radius)
        assert_same_pairs(pairs, ORACLE.self_join(codes, radius))
        # Real behaviour, not only agreement: most pairs found are copies of the same photo.
        assert len(pairs) >= 10 and (owners[pairs.a] == owners[pairs.b]).mean() > 0.8
        assert_same_topk(matcher.topk(codes, codes, 6), ORACLE.topk(codes, codes, 6))


@pytest.fixture(scope="module")
def brisk_codes(photos):
    """Real BRISK descriptors (512 bits) of two photos and a rotated, scaled copy of each, as uint64 words."""
    brisk = cv2.xfeatures2d.BRISK_create()
    originals, copies = [], []
    for name in ["astronaut", "coins"]:
        gray = cv2.cvtColor(photos[name], cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        warp = cv2.getRotationMatrix2D((w / 2, h / 2), 12, 0.85)
        edited = cv2.warpAffine(gray, warp, (w, h))
        # The strongest keypoints, a few per photo: the oracle holds a (Q, N, 512) array.
        for img, out in [(gray, originals), (edited, copies)]:
            keypoints, descriptors = brisk.detectAndCompute(img, None)
            best = np.argsort([-kp.response for kp in keypoints], kind="stable")[:120]
            out.append(descriptors[best])
    return np.concatenate(originals), np.concatenate(copies)


def test_bytes_to_words_distance_is_cv2_hamming(brisk_codes):
    raw_a, raw_b = brisk_codes
    a, b = bytes_to_words(raw_a), bytes_to_words(raw_b)
    assert a.shape == (len(raw_a), 8) and a.dtype == np.uint64
    dist = ORACLE.range_search(a[:20], b[:20], 512)
    for i, j, d in zip(dist.a, dist.b, dist.dist):
        assert d == cv2.norm(raw_a[i], raw_b[j], cv2.NORM_HAMMING)


def test_real_brisk_descriptors_equal_oracle(matcher, brisk_codes):
    raw_a, raw_b = brisk_codes
    a, b = bytes_to_words(raw_a), bytes_to_words(raw_b)
    for radius in (31, 80):
        want = ORACLE.range_search(a, b, radius)
        assert len(want) > 0
        assert_same_pairs(matcher.range_search(a, b, radius), want)
    both = np.concatenate([a, b])
    assert_same_pairs(matcher.self_join(both, 60), ORACLE.self_join(both, 60))
    got = matcher.topk(a, b, 2)
    assert_same_topk(got, ORACLE.topk(a, b, 2))
    # The nearest-neighbour distances are the ones OpenCV's brute-force matcher reports.
    cv_matches = cv2.BFMatcher(cv2.NORM_HAMMING).match(raw_a, raw_b)
    np.testing.assert_array_equal(got[1][:, 0], [m.distance for m in cv_matches])
