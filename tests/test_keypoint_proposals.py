"""Pairs another stage proposes, verified by the keypoints on brute-force ratio matches (keypoints.method.proposals):
the matches against a plain oracle, the proposals per item against a loop, real copies that the multi-index
radius misses verified, unrelated photos not, and find's stage output with them."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image, ImageFilter

from simbench.features.keypoints import KeypointExtractor
from simbench.find.cascade import Stage
from simbench.find.pipeline import best_pairs_per_item, with_proposed
from simbench.match.exact import ExactMatcher
from simbench.methods.keypoints import KeypointMethod, ratio_matches
from simbench.types import KeypointSets, ScoredPairs

NBYTES = 64  # BRISK's 512 bits


def _random_sets(seed: int, counts=(40, 0, 35, 50, 1, 30)) -> KeypointSets:
    """Random descriptors, half of each image's rows mirrored, and near copies (2, 10 or 20% of the bits
    flipped) of random rows planted over random rows, in other images and in the same one: matches the
    ratio test keeps, and rows with two near twins in the other image, which it must reject."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    desc = rng.integers(0, 256, (m, NBYTES), dtype=np.uint8)
    for _ in range(3 * m):
        i, j = rng.integers(0, m, 2)
        flips = np.packbits(rng.random(NBYTES * 8) < rng.choice([0.02, 0.1, 0.2]), bitorder="little")
        desc[j] = desc[i] ^ flips
    mirrored = rng.random(m) < 0.5
    points = rng.uniform(0, 300, (m, 2)).astype(np.float32)
    zeros = np.zeros(m, np.float32)
    return KeypointSets(desc, offsets, points, zeros, zeros, zeros, np.full((len(counts), 2), 300), True, mirrored)


def _oracle_matches(f: KeypointSets, a, b, ratio: float, max_distance: float) -> set:
    """(q, t, distance, i, j): each plain row q of a with its nearest row t of b's plain rows, and apart with its
    nearest of b's mirrored rows (with mirror rows), kept when within max_distance and nearer than ratio x the second
    nearest. Python loops: Hamming bit by bit for binary rows, L2 in float64 for float rows."""
    bits = np.unpackbits(f.descriptors, axis=1) if f.binary else None

    def distance(q: int, t: int):
        if f.binary:
            return int((bits[q] != bits[t]).sum())
        return float(np.linalg.norm(f.descriptors[q].astype(np.float64) - f.descriptors[t]))

    mirrored = f.mirrored if f.mirrored is not None else np.zeros(len(f.descriptors), bool)
    out = set()
    for i, j in zip(a, b):
        for flip in (False, True) if f.mirrored is not None else (False,):
            targets = [r for r in range(f.offsets[j], f.offsets[j + 1]) if mirrored[r] == flip]
            if len(targets) < 2:
                continue
            for q in range(f.offsets[i], f.offsets[i + 1]):
                if mirrored[q]:
                    continue
                d = sorted((distance(q, t), t) for t in targets)
                if d[0][0] <= max_distance and d[0][0] < ratio * d[1][0]:
                    out.add((q, d[0][1], d[0][0], i, j))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio,max_distance", [(0.8, 90), (0.9, 200), (0.6, 40)])
def test_ratio_matches_equal_a_python_oracle(seed, ratio, max_distance):
    f = _random_sets(seed)
    a, b = np.array([0, 0, 1, 2, 2, 3, 0]), np.array([2, 3, 2, 3, 5, 4, 5])
    got = ratio_matches(f, a, b, ratio, max_distance)
    assert all(len(v) == len(got["ra"]) for v in got.values())
    found = set(zip(*(got[k].tolist() for k in ("ra", "rb", "dist", "ia", "ib"))))
    want = _oracle_matches(f, a, b, ratio, max_distance)
    assert found == want and len(want) >= 5


def test_ratio_matches_without_mirror_rows_and_with_none_to_make():
    f = _random_sets(3)
    plain = KeypointSets(f.descriptors, f.offsets, f.points, f.sizes, f.angles, f.responses, f.image_sizes, True, None)
    got = ratio_matches(plain, np.array([0]), np.array([3]), 0.8, 90)
    everything = KeypointSets(f.descriptors, f.offsets, f.points, f.sizes, f.angles, f.responses, f.image_sizes,
                              True, np.zeros(len(f.descriptors), bool))
    assert set(zip(got["ra"].tolist(), got["rb"].tolist())) == {
        (q, t) for q, t, *_ in _oracle_matches(everything, [0], [3], 0.8, 90)}
    empty = ratio_matches(f, np.array([1, 0]), np.array([2, 4]), 0.8, 90)  # no rows; one row: no second nearest
    assert all(len(v) == 0 for v in empty.values())
    method = KeypointMethod(KeypointExtractor("brisk"), ExactMatcher(), verify=True, proposals=3)
    none = np.empty(0, np.int64)
    for a, b in ((none, none), (np.array([1, 0]), np.array([2, 4]))):
        got = method.score_proposed(f, a, b)
        assert len(got) == 0 and all(len(v) == 0 for v in got.extra.values() if np.ndim(v))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_best_pairs_per_item_equal_a_loop(seed, k):
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(2):
        a = rng.integers(0, 12, 40)
        b = rng.integers(0, 12, 40)
        keep = a < b
        score = rng.choice([0.1, 0.5, 0.9, rng.random()], keep.sum())  # ties too
        found.append(ScoredPairs(a[keep], b[keep], score))
    got = set(zip(*(x.tolist() for x in best_pairs_per_item(found, k))))
    want = set()
    for item in range(12):
        mine = [(-s, (y if x == item else x), (min(x, y), max(x, y))) for p in found
                for x, y, s in zip(p.a.tolist(), p.b.tolist(), p.score.tolist()) if item in (x, y)]
        want |= {pair for _, _, pair in sorted(mine)[:k]}
    assert got == want


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k, depth", [(1, 0), (2, 0), (2, 2), (1, 3), (2, 4), (2, 50)])
@pytest.mark.parametrize("unheld", [0, 1, 2])
@pytest.mark.parametrize("floor", [None, 0.5])
def test_proposed_pairs_equal_a_loop(seed, k, depth, unheld, floor):
    """Each item's k best pairs (by the other stages) not already found or verified, among its `depth` best (depth 0
    or k: its k best, less those found or verified), against a plain loop; ties, found and verified pairs included.
    unheld: an item in no found or verified pair gets that many more of both. floor (proposal_min_score): pairs the
    other stages score below it are not proposed."""
    from types import SimpleNamespace

    from simbench.find.pipeline import proposed_pairs

    rng = np.random.default_rng(seed)

    def pairs(m):
        a, b = rng.integers(0, 12, m), rng.integers(0, 12, m)
        keep = a < b
        return ScoredPairs(a[keep], b[keep], rng.choice([0.1, 0.5, 0.9, rng.random()], keep.sum()))

    others, found, verified = [pairs(40), pairs(40)], pairs(8), pairs(8)
    stage = SimpleNamespace(method=SimpleNamespace(proposals=k, proposal_depth=depth, unheld_proposals=unheld,
                                                   proposal_min_score=floor))
    got = set(zip(*(x.tolist() for x in proposed_pairs(stage, found, others, [verified]))))
    done = {(min(x, y), max(x, y)) for p in (found, verified) for x, y in zip(p.a.tolist(), p.b.tolist())}
    held = {item for pair in done for item in pair}
    want = set()
    for item in range(12):
        more = 0 if item in held else unheld
        mine = sorted((-s, (y if x == item else x), (min(x, y), max(x, y))) for p in others
                      for x, y, s in zip(p.a.tolist(), p.b.tolist(), p.score.tolist())
                      if item in (x, y) and (floor is None or s >= floor))
        ranked = [pair for _, _, pair in mine][:max(k, depth) + more]
        want |= set([pair for pair in ranked if pair not in done][:k + more] if depth > k else ranked[:k + more])
    assert got == want - done
    assert len(held) < 12  # some items are unheld: their extra looks are tested
    if floor is not None:  # what falls below it ranks after what does not: the proposals without it, less some
        unfloored = SimpleNamespace(method=SimpleNamespace(**{**vars(stage.method), "proposal_min_score": None}))
        assert got <= set(zip(*(x.tolist() for x in proposed_pairs(unfloored, found, others, [verified]))))
        return
    if depth <= k and not unheld:  # the rule before proposal_depth: the k best, less those found or verified
        assert got == {pr for pr in zip(*(x.tolist() for x in best_pairs_per_item(others, k)))} - done


def _plain_rank(others, x, y):
    """y's rank among x's partners by the other stages (ties to the lower partner), by a plain sort; a pair two lists
    score takes its better place; past all of them when x does not score y."""
    mine = sorted((-s, (v if u == x else u)) for p in others
                  for u, v, s in zip(p.a.tolist(), p.b.tolist(), p.score.tolist()) if x in (u, v))
    places = [k for k, (_, partner) in enumerate(mine) if partner == y]
    return places[0] if places else None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutual_ranks_equal_a_loop(seed):
    from simbench.find.pipeline import mutual_ranks

    rng = np.random.default_rng(seed)

    def pairs(m):
        a, b = rng.integers(0, 12, m), rng.integers(0, 12, m)
        keep = a < b
        return ScoredPairs(a[keep], b[keep], rng.choice([0.1, 0.5, 0.9, rng.random()], keep.sum()))

    others, asked = [pairs(30), pairs(30)], pairs(40)  # some pairs asked about are scored by neither list
    got = mutual_ranks(asked.a, asked.b, others)
    unscored = 0
    for x, y, r in zip(asked.a.tolist(), asked.b.tolist(), got.tolist()):
        ranks = [_plain_rank(others, x, y), _plain_rank(others, y, x)]
        if None in ranks:
            unscored += 1
            assert r > max([k for k in ranks if k is not None], default=-1)
            assert r >= max(len(p.a) for p in others)  # past every partner an item can have
        else:
            assert r == max(ranks)
    assert 0 < unscored < len(asked.a)
    assert len(mutual_ranks(asked.a, asked.b, [ScoredPairs(np.empty(0, int), np.empty(0, int), np.empty(0))])) == len(asked.a)


@pytest.mark.parametrize("floor", [None, 0.5, 0.99])
def test_one_sided_pairs_need_the_floor(floor):
    """A verified pair whose items do not both rank each other among their `proposals` best is kept only at the
    method's one_sided_min_correlation or more; the others, and every pair with the floor off, are kept."""
    from types import SimpleNamespace

    from simbench.find.pipeline import one_sided_dropped

    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 10, 60), rng.integers(0, 10, 60)
    keep = a < b
    others = [ScoredPairs(a[keep], b[keep], rng.random(keep.sum()))]
    a, b = rng.integers(0, 10, 30), rng.integers(0, 10, 30)
    keep = a < b
    verified = ScoredPairs(a[keep], b[keep], rng.random(keep.sum()), {"overlap": rng.random(keep.sum()), "proposed_pairs": 9})
    stage = SimpleNamespace(method=SimpleNamespace(proposals=2, one_sided_min_correlation=floor))
    got = one_sided_dropped(stage, verified, others)
    want = [k for k, (x, y, s) in enumerate(zip(verified.a.tolist(), verified.b.tolist(), verified.score.tolist()))
            if floor is None or s >= floor
            or all(r is not None and r < 2 for r in (_plain_rank(others, x, y), _plain_rank(others, y, x)))]
    assert got.a.tolist() == verified.a[want].tolist() and got.b.tolist() == verified.b[want].tolist()
    assert got.extra["overlap"].tolist() == verified.extra["overlap"][want].tolist()
    assert got.extra["proposed_pairs"] == 9
    if floor == 0.5:  # the case exercises both kinds of pair: some dropped, some one-sided kept by their score
        assert 0 < len(got) < len(verified)


def _photo(name: str, side: int = 480) -> Image.Image:
    img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    f = side / max(img.size)
    return img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def hard_copies(tmp_path_factory):
    """Two photos, each with a copy blurred, halved and turned by 20 degrees (few of its descriptors stay
    within the multi-index radius of the original's), and an unrelated photo; BRISK as find extracts it."""
    root = tmp_path_factory.mktemp("proposals")
    paths = []
    for name in ("astronaut", "coffee", "camera"):
        img = _photo(name)
        img.save(root / f"{name}.png")
        paths.append(root / f"{name}.png")
        if name != "camera":
            copy = img.filter(ImageFilter.GaussianBlur(2.5)).resize((img.width // 2, img.height // 2))
            copy = copy.rotate(20, resample=Image.Resampling.BICUBIC, expand=False)
            copy.save(root / f"{name}_copy.jpg", quality=60)
            paths.append(root / f"{name}_copy.jpg")
    extractor = KeypointExtractor("brisk", max_features=500, max_size=640, mirror=True, workers=1)
    method = KeypointMethod(extractor, ExactMatcher(), verify=True, min_inliers=5, min_coverage=0.01,
                            proposals=3)
    return paths, extractor.extract(paths).features, method  # astronaut 0, its copy 1, coffee 2, copy 3, camera 4


def test_proposed_copies_verify_and_unrelated_photos_do_not(hard_copies):
    _, features, method = hard_copies
    own = method.score_pairs(features)
    radius = set(zip(own.a.tolist(), own.b.tolist()))
    a, b = np.array([0, 2, 0, 1, 3, 0]), np.array([1, 3, 4, 2, 4, 2])
    got = method.score_proposed(features, a, b)
    pairs = set(zip(got.a.tolist(), got.b.tolist()))
    assert pairs == {(0, 1), (2, 3)}, pairs
    assert radius < {(0, 1), (2, 3)}  # the multi-index radius verifies one copy at most
    assert np.all(got.extra["inliers"] >= method.min_inliers) and np.all(got.score > 0)
    assert np.all(got.extra["covered"] >= method.min_coverage)
    assert got.extra["proposed_pairs"] == len(a)
    for field in ("evidence", "distinctiveness", "alignment", "inlier_box", "n_a", "n_b"):
        assert len(got.extra[field]) == len(got)


def test_find_stage_adds_the_proposed_pairs_it_did_not_find(hard_copies):
    """with_proposed: the stage's own pairs first, unchanged; then each item's best proposals that verify,
    marked proposed, in item indices (the features' rows are items 10, 11, ...); pairs the stage found
    are not proposed again."""
    _, features, method = hard_copies
    rows = np.arange(10, 10 + len(features))
    stage = Stage("keypoints", method.extractor, method, signal="evidence", extra_signals=("distinctiveness",))
    own = method.score_pairs(features)
    found = ScoredPairs(rows[own.a], rows[own.b], own.score, own.extra)
    cnn = ScoredPairs(np.array([10, 12, 10, 11, 10]), np.array([11, 13, 14, 12, 12]),
                      np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
    got = with_proposed(stage, (features, rows, {}), found, [cnn])
    n = len(found)
    assert np.array_equal(got.a[:n], found.a) and np.array_equal(got.score[:n], found.score)
    assert not got.extra["proposed"][:n].any() and got.extra["proposed"][n:].all()
    keys = set(zip(got.a.tolist(), got.b.tolist()))
    assert len(keys) == len(got) and {(10, 11), (12, 13)} <= keys and (10, 14) not in keys
    assert got.extra["proposed_pairs"] == len({(10, 11), (12, 13), (10, 14), (11, 12), (10, 12)} - set(
        zip(found.a.tolist(), found.b.tolist())))
    raw = stage.raw_pairs(got)
    assert len(raw) == len(got) and np.all(raw.score > 0) and len(raw.extra["distinctiveness"]) == len(got)


def test_proposal_settings_are_checked_and_keyed_only_when_on():
    extractor = KeypointExtractor("brisk")
    off = KeypointMethod(extractor, ExactMatcher(), verify=True)
    on = KeypointMethod(extractor, ExactMatcher(), verify=True, proposals=10)
    assert "proposals" not in off.params()  # the calibration keys of runs without proposals stay as they were
    assert on.params()["proposals"] == 10 and on.params()["proposal_max_distance"] == 90
    assert on.params()["proposal_min_coverage"] == on.min_coverage  # None: the pairs' own floor
    with pytest.raises(ValueError, match="verify"):
        KeypointMethod(extractor, ExactMatcher(), proposals=10)
    for bad in ({"proposals": -1}, {"proposal_ratio": 0}, {"proposal_ratio": 1.2}, {"proposal_max_distance": -1},
                {"proposal_min_coverage": 1.5}):
        with pytest.raises(ValueError, match="proposal"):
            KeypointMethod(extractor, ExactMatcher(), verify=True, **bad)


def test_the_report_shows_the_matches_a_proposed_pair_verified_on(hard_copies):
    """keypoint_evidence of a copy only the proposals verify: its ratio-test inliers (as score_proposed
    counted them), where the radius alone shows fewer than min_inliers."""
    from simbench.find.evidence import keypoint_evidence

    _, features, method = hard_copies
    own = method.score_pairs(features)
    proposed = method.score_proposed(features, np.array([0, 2]), np.array([1, 3]))
    only = [(a, b, n) for a, b, n in zip(proposed.a.tolist(), proposed.b.tolist(), proposed.extra["inliers"].tolist())
            if (a, b) not in set(zip(own.a.tolist(), own.b.tolist()))]
    assert only
    radius_only = copy.copy(method)
    radius_only.proposals = 0
    for a, b, inliers in only:
        shown = keypoint_evidence(features, a, b, method)
        assert shown["inliers"] == inliers >= method.min_inliers
        plain = keypoint_evidence(features, a, b, radius_only)
        assert plain is None or plain["inliers"] < method.min_inliers


def test_a_proposed_pair_must_cover_its_own_floor(hard_copies):
    """proposal_min_coverage drops the proposed pairs covering less (only those), whatever min_coverage is."""
    _, features, method = hard_copies
    a, b = np.array([0, 2, 0]), np.array([1, 3, 4])
    kept = method.score_proposed(features, a, b)
    assert len(kept) == 2
    covered = np.sort(kept.extra["covered"])
    stricter = copy.copy(method)
    stricter.proposal_min_coverage = float(covered[0] + covered[1]) / 2  # between the two copies' shares
    got = stricter.score_proposed(features, a, b)
    assert len(got) == 1 and got.extra["covered"][0] == covered[1]
    assert stricter.min_coverage == method.min_coverage and len(stricter.score_pairs(features)) == len(
        method.score_pairs(features))


def test_a_proposed_pair_must_have_its_own_inlier_floor(hard_copies):
    """proposal_min_inliers drops the proposed pairs with fewer inliers (only those), whatever min_inliers is;
    it is in the settings keys only when it differs from min_inliers."""
    _, features, method = hard_copies
    a, b = np.array([0, 2, 0]), np.array([1, 3, 4])
    kept = method.score_proposed(features, a, b)
    inliers = np.sort(kept.extra["inliers"])
    assert len(kept) == 2 and inliers[0] < inliers[1] and method.proposal_min_inliers == method.min_inliers
    stricter = copy.copy(method)
    stricter.proposal_min_inliers = int(inliers[1])  # the copy with more inliers only
    got = stricter.score_proposed(features, a, b)
    assert got.extra["inliers"].tolist() == [inliers[1]]
    assert len(stricter.score_pairs(features)) == len(method.score_pairs(features))
    assert "proposal_min_inliers" not in method.params() and stricter.params()["proposal_min_inliers"] == inliers[1]
    with pytest.raises(ValueError, match="proposal_min_inliers"):
        KeypointMethod(method.extractor, method.matcher, verify=True, proposals=10, proposal_min_inliers=-1)


def test_a_proposal_is_dropped_only_when_the_stage_found_that_very_pair():
    """Pairs are told apart by both items: (0, 5) is proposed although the stage found (1, 2), whose key would
    be the same if keys were counted by the proposals' first items alone."""
    f = _random_sets(0)
    method = KeypointMethod(KeypointExtractor("brisk"), ExactMatcher(), verify=True, proposals=1)
    stage = Stage("keypoints", method.extractor, method, signal="evidence")
    found = ScoredPairs(np.array([1]), np.array([2]), np.array([0.5]), {"evidence": np.array([0.5])})
    for others, considered in (([ScoredPairs(np.array([0]), np.array([5]), np.array([0.9]))], 1),
                               ([ScoredPairs(np.array([1, 0]), np.array([2, 3]), np.array([0.9, 0.8]))], 1)):
        got = with_proposed(stage, (f, np.arange(len(f)), {}), found, others)
        assert got.extra["proposed_pairs"] == considered
