"""matcher=lsh (multi-index hashing, Norouzi et al. 2012) returns exactly the oracle's pairs.

Random codes with neighbours planted at the radius boundary, 64-bit hashes with 4 pieces, multi-probe
layouts, real BRISK descriptors of photos and their edited copies, every permutation, blocks, empty inputs.
"""
from __future__ import annotations

import numpy as np
import pytest

from simbench.match.lsh import MultiIndexHashMatcher, choose_layout
from simbench.match.oracle import OracleMatcher
from simbench.types import Pairs, bytes_to_words, pack_bits, unpack_bits

PERMUTATIONS = ["identity", "random", "calibrated"]


def oracle_range(queries, database, radius, chunk=128) -> Pairs:
    """OracleMatcher.range_search, a chunk of queries at a time (its distance matrix is Q x N x bits)."""
    parts = []
    for q0 in range(0, len(queries), chunk):
        p = OracleMatcher().range_search(queries[q0 : q0 + chunk], database, radius)
        parts.append(Pairs(p.a + q0, p.b, p.dist))
    return Pairs.concat(parts)


def oracle_self_join(codes, radius) -> Pairs:
    p = oracle_range(codes, codes, radius)
    keep = p.a < p.b
    return Pairs(p.a[keep], p.b[keep], p.dist[keep])


def assert_same(got: Pairs, want: Pairs):
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.a, want.a)
    np.testing.assert_array_equal(got.b, want.b)
    np.testing.assert_array_equal(got.dist, want.dist)
    assert got.a.dtype == np.int64 and got.b.dtype == np.int64 and got.dist.dtype == np.int32


def flip(codes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """A copy of one code (W,) with the given bit positions flipped."""
    out = codes.copy()
    for b in bits:
        out[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    return out


def planted(rng, n: int, words: int, radius: int, per_code: int = 3):
    """n random codes plus, for a third of them, copies at distance radius - 1, radius, radius + 1."""
    base = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    extra = []
    for i in range(0, n, 3):
        for d in (radius - 1, radius, radius + 1)[:per_code]:
            if 0 <= d <= 64 * words:
                extra.append(flip(base[i], rng.choice(64 * words, size=d, replace=False)))
    codes = np.concatenate([base, np.array(extra, dtype=np.uint64).reshape(-1, words)])
    return codes[rng.permutation(len(codes))]


# ---------------------------------------------------------------------------------------------------------
# Random codes: every width, every permutation, range search and self-join.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("words,radius", [(1, 3), (2, 10), (4, 20), (8, 31)])
def test_random_codes_match_oracle(words, radius, permutation):
    rng = np.random.default_rng(words * 100 + radius)
    db = planted(rng, 240, words, radius)
    queries = np.concatenate([db[:60], planted(rng, 60, words, radius)])
    matcher = MultiIndexHashMatcher(permutation=permutation)
    assert_same(matcher.range_search(queries, db, radius), oracle_range(queries, db, radius))
    want = oracle_self_join(db, radius)
    assert len(want) > 50  # the planted neighbours are there
    assert_same(matcher.self_join(db, radius), want)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_radius_boundary_worst_case(permutation):
    """Distance exactly r with one differing bit in each of r pieces (only one piece shared): found;
    r + 1 (every piece differs, no candidate at all): not found. The pigeonhole limit, both sides."""
    rng = np.random.default_rng(7)
    radius, words = 31, 8
    matcher = MultiIndexHashMatcher(permutation=permutation)
    base = rng.integers(0, 2**64, size=(200, words), dtype=np.uint64)
    layout, perm = matcher.plan(base, radius)
    assert layout.pieces == radius + 1 and layout.sub_radius == 0
    starts = layout.starts
    queries, at_r, beyond = [], [], []
    for i in range(40):
        pieces = rng.permutation(layout.pieces)
        one_bit_in = [perm[starts[p] + rng.integers(layout.widths[p])] for p in pieces]
        at_r.append(flip(base[i], np.array(one_bit_in[:radius])))  # shares exactly one piece
        beyond.append(flip(base[i], np.array(one_bit_in[: radius + 1])))  # shares none
        queries.append(base[i])
    db = np.concatenate([base, np.array(at_r), np.array(beyond)])
    queries = np.array(queries)
    index = matcher.index(db, radius, plan=(layout, perm))  # the pieces the flips were placed in
    got = index.range_search(queries, radius)
    assert_same(got, oracle_range(queries, db, radius))
    found = set(zip(got.a.tolist(), got.b.tolist()))
    for i in range(40):
        assert (i, 200 + i) in found  # distance exactly r
        assert (i, 240 + i) not in found  # distance r + 1
    assert_same(matcher.range_search(queries, db, radius + 1), oracle_range(queries, db, radius + 1))


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_64_bit_hashes_four_pieces(radius):
    """64-bit perceptual hashes: 4 pieces of 16 bits answer r <= 3 by exact piece matches."""
    rng = np.random.default_rng(radius)
    db = planted(rng, 300, 1, radius)
    queries = planted(rng, 90, 1, radius)
    matcher = MultiIndexHashMatcher(pieces=4, permutation="random")
    assert choose_layout(64, radius, 4).sub_radius == 0
    assert_same(matcher.range_search(queries, db, radius), oracle_range(queries, db, radius))
    assert_same(matcher.self_join(db, radius), oracle_self_join(db, radius))


@pytest.mark.parametrize("words,pieces,radius", [(1, 4, 7), (2, 4, 9), (4, 8, 15)])
def test_fewer_pieces_than_radius_multiprobes(words, pieces, radius):
    """pieces < radius + 1: keys within floor(r / m) bits are probed too (16- and 32-bit pieces)."""
    rng = np.random.default_rng(words + radius)
    db = planted(rng, 200, words, radius)
    queries = planted(rng, 60, words, radius)
    layout = choose_layout(64 * words, radius, pieces)
    assert layout.pieces == pieces and layout.sub_radius == radius // pieces >= 1
    for permutation in PERMUTATIONS:
        matcher = MultiIndexHashMatcher(pieces=pieces, permutation=permutation)
        assert_same(matcher.range_search(queries, db, radius), oracle_range(queries, db, radius))
        assert_same(matcher.self_join(db, radius), oracle_self_join(db, radius))


def test_uneven_pieces_and_scan_fallback():
    """pieces of bits // m and bits // m + 1 bits (128 / 11), and radii where scanning is cheaper."""
    rng = np.random.default_rng(3)
    layout = choose_layout(128, 10, 0)
    assert layout.pieces == 11 and set(layout.widths.tolist()) == {11, 12} and layout.widths.sum() == 128
    db = planted(rng, 150, 2, 10)
    assert_same(MultiIndexHashMatcher().self_join(db, 10), oracle_self_join(db, 10))
    assert choose_layout(64, 20, 0).scan  # 21 pieces of 3 bits: every bucket holds 1/8 of the rows
    for radius in (20, 64, 70):
        assert_same(MultiIndexHashMatcher().self_join(db[:, :1], radius), oracle_self_join(db[:, :1], radius))


# ---------------------------------------------------------------------------------------------------------
# Real BRISK descriptors of photos and edited copies (so that real matches exist), radius 31.
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brisk_words():
    """512-bit BRISK descriptors of 3 photos and 4 edited copies each, 80 keypoints per image."""
    import cv2
    import skimage.data

    brisk = cv2.xfeatures2d.BRISK_create()
    parts = []
    for name in ("camera", "astronaut", "coins"):
        img = getattr(skimage.data, name)()
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        h, w = img.shape
        copies = [img, cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), img[h // 8 :, w // 8 :],
                  cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA),
                  cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.0), (w, h))]
        for copy in copies:
            keypoints, desc = brisk.detectAndCompute(np.ascontiguousarray(copy), None)
            strongest = np.argsort([-k.response for k in keypoints], kind="stable")[:80]
            parts.append(desc[strongest])
    return bytes_to_words(np.concatenate(parts))


@pytest.fixture(scope="module")
def brisk_truth(brisk_words):
    return oracle_self_join(brisk_words, 31)


def test_real_brisk_self_join(brisk_words, brisk_truth):
    assert brisk_words.shape[1] == 8 and len(brisk_words) == 1200
    assert len(brisk_truth) > 100  # descriptors of the edited copies match the originals
    for permutation in PERMUTATIONS:
        assert_same(MultiIndexHashMatcher(permutation=permutation).self_join(brisk_words, 31), brisk_truth)


def test_real_brisk_queries_differ_from_database(brisk_words):
    queries, db = brisk_words[::3], brisk_words[1::3]  # disjoint halves: matches are across copies
    want = oracle_range(queries, db, 31)
    assert len(want) > 20
    for permutation in PERMUTATIONS:
        assert_same(MultiIndexHashMatcher(permutation=permutation).range_search(queries, db, 31), want)


def test_real_brisk_blocks_change_nothing(brisk_words, brisk_truth):
    """Database and query blocks (odd sizes, so blocks split matches) return the same pairs."""
    matcher = MultiIndexHashMatcher(database_block=337, query_block=101)
    assert_same(matcher._blocked(brisk_words, brisk_words, 31, upper=True), brisk_truth)
    queries = brisk_words[::5]
    whole = MultiIndexHashMatcher().range_search(queries, brisk_words, 31)  # = oracle, tested above
    assert_same(matcher.range_search(queries, brisk_words, 31), whole)


def test_self_join_by_buckets_equals_search_by_queries(brisk_words, brisk_truth):
    """self_join walks buckets (radius + 1 pieces of 16 bits); searching every row as a query (the
    path range_search takes, and self_join with multi-probe layouts) finds the same pairs."""
    matcher = MultiIndexHashMatcher(threads=2)
    got = matcher.self_join(brisk_words, 31)
    assert matcher.last_compared > len(got)  # the bucket path ran, and verified more than it kept
    assert_same(got, brisk_truth)
    assert_same(matcher._blocked(brisk_words, brisk_words, 31, upper=True), brisk_truth)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_self_join_by_buckets_with_one_huge_bucket(permutation):
    """Hundreds of near-copies of one code share most pieces: each pair must come out once, with every
    pair inside and at the radius boundary, as the oracle says."""
    rng = np.random.default_rng(11)
    base = rng.integers(0, 2**64, size=(300, 8), dtype=np.uint64)
    crowd = [flip(base[0], rng.choice(512, size=int(rng.integers(0, 20)), replace=False)) for _ in range(250)]
    crowd += [flip(base[1], rng.choice(512, size=d, replace=False)) for d in (30, 31, 32, 33)]
    db = np.concatenate([base, np.array(crowd)])[rng.permutation(554)]
    matcher = MultiIndexHashMatcher(permutation=permutation, threads=1)
    want = oracle_self_join(db, 31)
    assert len(want) > 250 * 249 // 2 * 0.9
    assert_same(matcher.self_join(db, 31), want)
    assert matcher.last_compared > 0


@pytest.mark.parametrize("words", [4, 12, 17])
def test_self_join_by_buckets_word_counts(words):
    """The join's distances take eight words per pass and the rest one by one: fewer than eight words
    (ORB), eight and four, two passes of eight and one, all as the oracle says."""
    rng = np.random.default_rng(words)
    radius = 4 * words - 1  # 4 w pieces of 16 bits: the join by buckets
    assert choose_layout(64 * words, radius, 0).joins_by_buckets
    db = planted(rng, 200, words, radius)
    want = oracle_self_join(db, radius)
    assert len(want) > 50
    assert_same(MultiIndexHashMatcher(threads=1).self_join(db, radius), want)


def test_tiny_hit_slots_overflow_path(brisk_words, brisk_truth):
    """Queries with more hits than their slot are rerun with exact room: force it with slot = 1."""
    matcher = MultiIndexHashMatcher()
    index = matcher.index(brisk_words, 31)
    index.slot = 1
    got = matcher._with_threads(index.range_search, brisk_words, 31, True)
    assert_same(got, brisk_truth)


def test_calibration_shrinks_buckets(brisk_words):
    """Correlated BRISK bits: native order gives the biggest buckets, calibrated the smallest."""
    excess = {}
    for permutation in PERMUTATIONS:
        index = MultiIndexHashMatcher(permutation=permutation).index(brisk_words, 31)
        # candidates per query beyond the query itself (one per piece)
        excess[permutation] = index.expected_candidates() - index.layout.pieces
        assert index.candidates(brisk_words).mean() == pytest.approx(index.expected_candidates())
    assert excess["calibrated"] < 0.8 * excess["random"] < 0.8 * excess["identity"]


def test_matches_exact_matcher(brisk_words):
    import simbench.match.exact as exact
    queries = brisk_words[::4]
    want = exact.ExactMatcher().range_search(queries, brisk_words, 31).sorted()
    assert_same(MultiIndexHashMatcher().range_search(queries, brisk_words, 31), want)


# ---------------------------------------------------------------------------------------------------------
# Edges: empty inputs, bad parameters, top-k.
# ---------------------------------------------------------------------------------------------------------


def test_empty_inputs():
    matcher = MultiIndexHashMatcher()
    codes = np.random.default_rng(0).integers(0, 2**64, size=(10, 8), dtype=np.uint64)
    none = np.empty((0, 8), np.uint64)
    for got in (matcher.range_search(none, codes, 31), matcher.range_search(codes, none, 31),
                matcher.self_join(none, 31), matcher.self_join(codes[:1], 31),
                matcher.range_search(codes, codes, -1)):
        assert len(got) == 0 and got.a.dtype == np.int64 and got.dist.dtype == np.int32
    identical = np.repeat(codes[:1], 3, axis=0)
    assert_same(matcher.self_join(identical, 0), Pairs(np.array([0, 0, 1]), np.array([1, 2, 2]),
                                                       np.zeros(3, np.int32)))


def test_bad_parameters_are_refused():
    codes = np.zeros((4, 8), np.uint64)
    with pytest.raises(ValueError, match="permutation"):
        MultiIndexHashMatcher(permutation="sorted")
    with pytest.raises(ValueError, match="more than"):
        MultiIndexHashMatcher(pieces=513).range_search(codes, codes, 3)
    with pytest.raises(ValueError, match="at most 64 bits"):
        MultiIndexHashMatcher(pieces=4).range_search(codes, codes, 3)  # 128-bit pieces
    with pytest.raises(ValueError, match="probes"):
        MultiIndexHashMatcher(pieces=8).range_search(codes, codes, 40)  # 5 flips of 64 bits
    with pytest.raises(ValueError, match="words"):
        MultiIndexHashMatcher().range_search(codes[:, :4], codes, 3)
    index = MultiIndexHashMatcher().index(codes, 31)
    with pytest.raises(ValueError, match="radius"):
        index.range_search(codes, 32)  # 32 pieces cannot guarantee radius 32


def test_topk_matches_oracle():
    rng = np.random.default_rng(5)
    db = planted(rng, 120, 2, 6)
    db[7] = db[3]  # ties: the lower index first
    queries = db[:30] ^ np.uint64(1)
    matcher = MultiIndexHashMatcher()
    for k in (1, 5, 200):
        got, want = matcher.topk(queries, db, k), OracleMatcher().topk(queries, db, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_pack_roundtrip_of_planted_distances():
    """The helper really plants the distances it claims (guards the boundary tests themselves)."""
    rng = np.random.default_rng(0)
    code = rng.integers(0, 2**64, size=4, dtype=np.uint64)
    near = flip(code, np.array([0, 63, 64, 255]))
    bits = unpack_bits(np.stack([code, near]), 256)
    assert (bits[0] != bits[1]).sum() == 4
    assert np.array_equal(pack_bits(bits), np.stack([code, near]))
