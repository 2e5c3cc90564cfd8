"""Keypoint extractor and the bag-of-descriptors method (issue 3): real photos, oracles, edge cases."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from simbench.features.keypoints import DESCRIPTOR_SHAPE, KeypointExtractor, reflect
from simbench.match.oracle import OracleMatcher
from simbench.methods.keypoints import SCORES, KeypointMethod, bag_score
from simbench.types import KeypointSets, Pairs

import skimage.data as skdata

DETECTORS = ["brisk", "orb", "akaze", "sift"]
SOURCES = ["astronaut", "camera", "coffee", "rocket"]  # skimage's chelsea and cat are one photo: not both
KINDS = ["crop60", "rot90", "rot10", "scale50", "croprot", "hflip"]
LONG_SIDE = 400
#: AKAZE's default threshold (0.001) finds 3 keypoints on a 200-px copy of the rocket photo: too few to
#: verify. Small test images need a more sensitive detector.
THRESHOLD = {"akaze": 1e-4}


class _ChunkedMatcher(OracleMatcher):
    """Brute force with np.bitwise_count over blocks of queries: the oracle's rule at the size of real
    photos (thousands of descriptors), for when ExactMatcher is not there. Remembers its last self-join,
    so that a test scoring the same features twice (bag, then verified) matches them once."""

    def __init__(self):
        self._last = None

    def range_search(self, queries, database, radius):
        parts = []
        for s in range(0, len(queries), 256):
            d = np.bitwise_count(queries[s:s + 256, None, :] ^ database[None]).sum(axis=2, dtype=np.int32)
            a, b = np.nonzero(d <= radius)
            parts.append(Pairs(a + s, b, d[a, b]))
        return Pairs.concat(parts)

    def self_join(self, codes, radius):
        key = (hash(codes.tobytes()), codes.shape, radius)
        if self._last is None or self._last[0] != key:
            parts = []
            for s in range(0, len(codes), 256):  # upper triangle only: rows b > a
                block = codes[s:s + 256]
                d = np.bitwise_count(block[:, None, :] ^ codes[None, s:]).sum(axis=2, dtype=np.int32)
                a, b = np.nonzero(d <= radius)
                keep = b > a
                parts.append(Pairs(a[keep] + s, b[keep] + s, d[a[keep], b[keep]]))
            self._last = (key, Pairs.concat(parts))
        return self._last[1]


# ---------------------------------------------------------------------------------------------------
# Test images: skimage photos and deterministic copies


def _photo(name: str) -> Image.Image:
    img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    f = LONG_SIDE / max(img.size)
    return img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.LANCZOS)


def _central(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * frac), round(h * frac)
    return img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def _rotate_small(img: Image.Image, angle: float) -> Image.Image:
    """Rotate without growing the canvas, then cut the central 80% so no fill corners remain.

    (Filled corners are shared content: the straight edges of two unrelated rotated copies match.)
    """
    return _central(img.rotate(angle, resample=Image.Resampling.BICUBIC), 0.8)


def _transform(img: Image.Image, kind: str) -> Image.Image:
    w, h = img.size
    if kind == "crop60":  # an off-centre window of 60% of each side
        x, y = round(0.1 * w), round(0.3 * h)
        return img.crop((x, y, x + round(0.6 * w), y + round(0.6 * h)))
    if kind == "rot90":
        return img.transpose(Image.Transpose.ROTATE_90)
    if kind == "rot10":
        return _rotate_small(img, 10)
    if kind == "scale50":
        return img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    if kind == "croprot":  # cropped, then turned a quarter and tilted: the yearbook case
        return _rotate_small(_transform(img, "crop60").transpose(Image.Transpose.ROTATE_270), -8)
    if kind == "hflip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """Each source photo and its six copies, as JPEG files; group = source index, kind = copy kind."""
    root = tmp_path_factory.mktemp("photos")
    paths, group, kind = [], [], []
    for g, name in enumerate(SOURCES):
        img = _photo(name)
        for k in ["orig"] + KINDS:
            path = root / f"{name}_{k}.jpg"
            (img if k == "orig" else _transform(img, k)).save(path, quality=92)
            paths.append(path)
            group.append(g)
            kind.append(k)
    return paths, np.array(group), kind


@pytest.fixture(scope="module")
def matcher():
    """simbench's exact CPU matcher; the brute-force stand-in only where match/exact.py is missing."""
    try:
        from simbench.match.exact import ExactMatcher
    except ImportError:
        return _ChunkedMatcher()
    return ExactMatcher()


def _separation(scored, group, kind) -> tuple[dict, float]:
    """Lowest score of each copy kind against its original, and the highest score of unrelated pairs."""
    n = len(group)
    s = np.zeros((n, n))
    s[scored.a, scored.b] = scored.score
    s = s + s.T
    true = defaultdict(lambda: 1.0)
    false = 0.0
    for i in range(n):
        for j in range(n):
            if group[i] != group[j]:
                false = max(false, s[i, j])
            elif kind[i] == "orig" and kind[j] != "orig":
                true[kind[j]] = min(true[kind[j]], s[i, j])
    return dict(true), false


@pytest.mark.parametrize("detector", DETECTORS)
def test_copies_score_clearly_higher_than_unrelated_photos(photo_set, matcher, detector):
    paths, group, kind = photo_set
    extractor = KeypointExtractor(detector, max_features=200, max_size=LONG_SIDE, mirror=True, workers=1,
                                  threshold=THRESHOLD.get(detector))
    extracted = extractor.extract(paths)
    assert not extracted.skipped and len(extracted.features) == len(paths)
    settings = {"bag": {}, "verified": {"verify": True, "burstiness": 0.0, "coverage": False},
                "shared-content": {"verify": True}}
    for label, options in settings.items():
        method = KeypointMethod(extractor, matcher, score="min", ratio=0.7, **options)
        scored = method.score_pairs(extracted.features)
        assert np.all(scored.a < scored.b) and np.all((scored.score >= 0) & (scored.score <= 1))
        true, false = _separation(scored, group, kind)
        print(f"\n{detector} {label}: max unrelated {false:.3f}, min copy "
              + " ".join(f"{k}={v:.3f}" for k, v in true.items()))
        # Every copy kind beats every unrelated pair, by a margin.
        assert min(true.values()) > 1.5 * false, (true, false)
        if label != "shared-content":
            # Burstiness and coverage scale verified scores down, here most: each photo has six copies, so
            # every descriptor of a copy matches up to six other images (tests/test_shared_content.py).
            assert min(true.values()) > 1.5 * false + 0.01, (true, false)
        if options.get("verify"):
            assert false == 0.0  # unrelated photos never survive RANSAC here


# ---------------------------------------------------------------------------------------------------
# Geometric verification


def _motif_panel(rng, motif: np.ndarray, arranged: bool) -> Image.Image:
    """A grey panel with 25 copies of one small black-and-white motif, each with its own pixel noise.

    arranged: on a regular grid, all upright; otherwise jittered and turned by random quarter turns.
    The noise makes every copy's descriptors slightly different, so best matches land on arbitrary
    copies, as with any repeated texture: many matches, no common geometry.
    """
    panel = np.full((220, 220), 128.0)
    for n in range(25):
        i, j = divmod(n, 5)
        x, y, turns = 8 + 42 * j, 8 + 42 * i, 0
        if not arranged:
            x, y, turns = x + int(rng.integers(-5, 6)), y + int(rng.integers(-5, 6)), int(rng.integers(4))
        copy = np.rot90(motif, turns) + rng.normal(0, 6, motif.shape)
        panel[y:y + 24, x:x + 24] = np.clip(copy, 0, 255)
    return Image.fromarray(panel.astype(np.uint8)).convert("RGB")


@pytest.fixture(scope="module")
def shared_texture_set(tmp_path_factory):
    """Two different photos sharing only a repeated-texture panel (a false pair), and true copies of one.

    0: astronaut + panel (grid); 1: coffee + panel (scattered, turned); 2: 0 rotated 90;
    3: a 70% crop of 0; 4: 0 mirrored.
    """
    root = tmp_path_factory.mktemp("texture")
    rng = np.random.default_rng(0)
    a = Image.fromarray(skdata.astronaut())
    b = Image.fromarray(skdata.coffee())
    motif = np.kron(rng.random((4, 4)) > 0.5, np.ones((6, 6))) * 255.0  # 24 px, 6-px black/white cells
    a.paste(_motif_panel(rng, motif, True), (270, 20))
    b.paste(_motif_panel(rng, motif, False), (20, 150))
    images = [a, b, a.transpose(Image.Transpose.ROTATE_90), a.crop((100, 0, 458, 358)),
              a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    paths = [root / f"{i}.png" for i in range(len(images))]
    for img, path in zip(images, paths):
        img.save(path)
    return paths


@pytest.mark.parametrize("detector", ["orb", "brisk"])
def test_verification_keeps_copies_and_removes_a_shared_texture_pair(shared_texture_set, matcher, detector):
    extractor = KeypointExtractor(detector, max_features=300, max_size=512, mirror=True, workers=1)
    features = extractor.extract(shared_texture_set).features
    bag = KeypointMethod(extractor, matcher).score_pairs(features)
    verified = KeypointMethod(extractor, matcher, verify=True).score_pairs(features)
    bag_of = dict(zip(zip(bag.a.tolist(), bag.b.tolist()), bag.score))
    ver_of = dict(zip(zip(verified.a.tolist(), verified.b.tolist()), verified.score))
    assert (0, 1) in bag_of  # the texture matches as a bag...
    if detector == "orb":
        assert bag_of[(0, 1)] > 0.1  # ...enough for a false positive at the default threshold 0.05
    assert (0, 1) not in ver_of  # ...but has no common geometry
    for pair in [(0, 2), (0, 3), (0, 4)]:
        assert ver_of.get(pair, 0) >= 0.05, (pair, ver_of)
    # The mirrored copy was verified through mirrored rows, as a reflection.
    flipped = dict(zip(zip(verified.a.tolist(), verified.b.tolist()), verified.extra["flipped"]))
    assert flipped[(0, 4)] and not flipped[(0, 2)]
    assert np.all(verified.extra["inliers"] >= 8)


@pytest.mark.parametrize("transform", ["affine", "homography"])
def test_other_transforms_keep_copies(shared_texture_set, matcher, transform):
    extractor = KeypointExtractor("orb", max_features=300, max_size=512, mirror=True, workers=1)
    features = extractor.extract(shared_texture_set).features
    verified = KeypointMethod(extractor, matcher, verify=True, transform=transform).score_pairs(features)
    pairs = set(zip(verified.a.tolist(), verified.b.tolist()))
    assert {(0, 2), (0, 3), (0, 4)} <= pairs and (0, 1) not in pairs


def test_max_pairs_verified_keeps_the_best_bag_scores(shared_texture_set, matcher):
    extractor = KeypointExtractor("orb", max_features=300, max_size=512, mirror=True, workers=1)
    features = extractor.extract(shared_texture_set).features
    bag = KeypointMethod(extractor, matcher).score_pairs(features)
    one = KeypointMethod(extractor, matcher, verify=True, max_pairs_verified=1).score_pairs(features)
    best = int(np.argmax(bag.score))
    assert len(one) == 1 and (one.a[0], one.b[0]) == (bag.a[best], bag.b[best])
    assert one.extra["verified"] == 1


# ---------------------------------------------------------------------------------------------------
# Aggregation against a plain-Python oracle


def _oracle_scores(features: KeypointSets, radius: int, score: str) -> dict:
    """Loop over every descriptor pair; collect the matched rows of each side per image pair."""
    owners = features.owners
    ints = [int.from_bytes(bytes(row), "little") for row in features.descriptors]
    rows_a, rows_b = defaultdict(set), defaultdict(set)
    for i in range(len(ints)):
        for j in range(i + 1, len(ints)):
            if owners[i] == owners[j] or bin(ints[i] ^ ints[j]).count("1") > radius:
                continue
            (oi, ri), (oj, rj) = sorted([(owners[i], i), (owners[j], j)])
            rows_a[(oi, oj)].add(ri)
            rows_b[(oi, oj)].add(rj)
    n = np.diff(features.offsets)
    out = {}
    for (a, b) in rows_a:
        ma, mb, na, nb = len(rows_a[(a, b)]), len(rows_b[(a, b)]), n[a], n[b]
        m = min(ma, mb)
        out[(a, b)] = {"min": m / min(na, nb), "max": m / max(na, nb), "mean": (ma + mb) / (na + nb),
                       "union": m / (na + nb - m), "query": max(ma / na, mb / nb)}[score]
    return out


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("seed,nbytes,radius", [(0, 8, 12), (1, 8, 12), (2, 61, 70)])
def test_bag_scores_match_a_python_oracle(score, seed, nbytes, radius, random_keypoint_sets):
    """8-byte codes (like the crop-resistant hash's segments) and 61-byte AKAZE-sized ones (padded)."""
    features = random_keypoint_sets(seed, nbytes=nbytes)
    scored = KeypointMethod(None, OracleMatcher(), distance_threshold=radius, score=score).score_pairs(features)
    expected = _oracle_scores(features, radius, score)
    got = {(int(a), int(b)): s for a, b, s in zip(scored.a, scored.b, scored.score)}
    assert got.keys() == expected.keys() and len(got) > 3
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_one_descriptor_matching_many_counts_once():
    # Image 0: one descriptor; image 1: the same descriptor five times (plus one unrelated row).
    d = np.zeros((7, 8), np.uint8)
    d[6] = 255
    f = KeypointSets(d, np.array([0, 1, 7]), np.zeros((7, 2), np.float32), *[np.zeros(7, np.float32)] * 3,
                     np.full((2, 2), 10), binary=True)
    scored = KeypointMethod(None, OracleMatcher(), distance_threshold=0, score="mean").score_pairs(f)
    assert list(scored.a) == [0] and list(scored.b) == [1]
    assert scored.extra["n_matches"][0] == 5  # descriptor pairs
    assert (scored.extra["matched_a"][0], scored.extra["matched_b"][0]) == (1, 5)
    assert scored.score[0] == pytest.approx((1 + 5) / (1 + 6))


def test_pairs_within_one_image_are_dropped():
    # Every descriptor of image 0 equals one of its own; image 1 shares nothing.
    d = np.zeros((6, 8), np.uint8)
    d[:4] = np.array([[1] * 8, [1] * 8, [2] * 8, [2] * 8], np.uint8)
    d[4:] = np.array([[0xF0] * 8, [0x0F] * 8], np.uint8)
    f = KeypointSets(d, np.array([0, 4, 6]), np.zeros((6, 2), np.float32), *[np.zeros(6, np.float32)] * 3,
                     np.full((2, 2), 10), binary=True)
    scored = KeypointMethod(None, OracleMatcher(), distance_threshold=0).score_pairs(f)
    assert len(scored) == 0 and scored.extra["descriptor_pairs"] == 0


def test_bag_score_variants_stay_in_unit_interval():
    rng = np.random.default_rng(0)
    na, nb = rng.integers(1, 50, 1000), rng.integers(1, 50, 1000)
    ma, mb = rng.integers(0, na + 1), rng.integers(0, nb + 1)
    for score in SCORES:
        s = bag_score(ma, mb, na, nb, score)
        assert np.all((s >= 0) & (s <= 1))
    assert bag_score([3], [3], [3], [3], "union")[0] == 1.0


def test_ratio_test_pairs_match_a_python_oracle():
    """SIFT path: Lowe's ratio test per image pair and direction, against explicit L2 distances."""
    rng = np.random.default_rng(3)
    counts = [5, 0, 6, 4]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    m = offsets[-1]
    desc = rng.random((m, 16)).astype(np.float32)
    desc[6] = desc[1] + 0.01  # planted matches across images
    desc[12] = desc[7] + 0.01
    z = np.zeros(m, np.float32)
    f = KeypointSets(desc, offsets, np.zeros((m, 2), np.float32), z, z, z, np.full((4, 2), 10), binary=False)
    ratio = 0.8
    expected = set()
    owners = f.owners
    for q in range(m):
        for other in range(4):
            if other == owners[q] or counts[other] < 2:
                continue
            rows = np.arange(offsets[other], offsets[other + 1])
            dist = np.linalg.norm(desc[rows] - desc[q], axis=1)
            first, second = np.argsort(dist)[:2]
            if dist[first] < ratio * dist[second]:
                expected.add(tuple(sorted((q, int(rows[first])))))
    pairs, _ = KeypointMethod(None, None, ratio=ratio).descriptor_pairs(f)
    assert set(zip(pairs.a.tolist(), pairs.b.tolist())) == expected
    assert {(1, 6), (7, 12)} <= expected
    # And what OpenCV's brute-force matcher says, image pair by image pair, both directions.
    assert _bf_matcher_pairs(f, ratio) == expected
    got = dict(zip(zip(pairs.a.tolist(), pairs.b.tolist()), pairs.dist))
    assert got[(1, 6)] == pytest.approx(np.linalg.norm(desc[1] - desc[6]), rel=1e-4)


def _bf_matcher_pairs(f: KeypointSets, ratio: float) -> set:
    """cv2.BFMatcher(NORM_L2).knnMatch(k=2) + ratio test, for every ordered pair of images."""
    import cv2

    bf = cv2.BFMatcher(cv2.NORM_L2)
    off = f.offsets
    out = set()
    for i in range(len(f)):
        for j in range(len(f)):
            di, dj = f.descriptors[off[i]:off[i + 1]], f.descriptors[off[j]:off[j + 1]]
            if i == j or len(di) == 0 or len(dj) < 2:
                continue
            for m, n in bf.knnMatch(di, dj, k=2):
                if m.distance < ratio * n.distance:
                    out.add(tuple(sorted((int(off[i] + m.queryIdx), int(off[j] + m.trainIdx)))))
    return out


def test_sift_ratio_path_agrees_with_bf_matcher_on_photos(photo_set):
    paths = photo_set[0][:7]  # one photo and its copies
    f = KeypointExtractor("sift", max_features=100, max_size=LONG_SIDE, workers=1).extract(paths).features
    pairs, _ = KeypointMethod(None, None, ratio=0.7).descriptor_pairs(f)
    assert set(zip(pairs.a.tolist(), pairs.b.tolist())) == _bf_matcher_pairs(f, 0.7)


def test_exact_matcher_gives_the_oracle_scores(random_keypoint_sets):
    """The method on simbench's own matcher: same pairs and scores as on the NumPy oracle."""
    import simbench.match.exact as exact
    features = random_keypoint_sets(5, n_images=9)
    for score in SCORES:
        want = KeypointMethod(None, OracleMatcher(), distance_threshold=12, score=score).score_pairs(features)
        got = KeypointMethod(None, exact.ExactMatcher(), distance_threshold=12, score=score).score_pairs(features)
        assert np.array_equal(got.a, want.a) and np.array_equal(got.b, want.b)
        assert np.allclose(got.score, want.score)


# ---------------------------------------------------------------------------------------------------
# Extractor


def test_zero_keypoint_image_is_kept_with_zero_rows(tmp_path, matcher):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (300, 200), (120, 120, 120)).save(flat)
    photo = tmp_path / "photo.png"
    _photo("camera").save(photo)
    copy = tmp_path / "copy.png"
    _photo("camera").transpose(Image.Transpose.ROTATE_90).save(copy)
    tiny = tmp_path / "tiny.png"  # too small for any descriptor (BRISK's pyramid would fail on it)
    Image.new("L", (5, 3), 0).save(tiny)
    sliver = tmp_path / "sliver.png"  # 2000 x 3: 640 x 1 at working scale
    Image.fromarray((np.random.default_rng(0).random((3, 2000)) * 255).astype(np.uint8)).save(sliver)
    for detector in DETECTORS:
        ex = KeypointExtractor(detector, max_features=100, mirror=True, workers=1).extract(
            [flat, photo, copy, tiny, sliver])
        f = ex.features
        assert list(ex.rows) == [0, 1, 2, 3, 4] and not ex.skipped
        assert f.offsets[1] == 0 and f.offsets[2] > 0 and f.offsets[3] == f.offsets[5]
        assert f.image_sizes[3:].tolist() == [[5, 3], [2000, 3]]
        assert f.descriptors.shape[1] == DESCRIPTOR_SHAPE[detector][0]
        assert list(f.image_sizes[0]) == [300, 200]
        scored = KeypointMethod(None, matcher, ratio=0.7).score_pairs(f)
        assert (1, 2) in set(zip(scored.a.tolist(), scored.b.tolist()))
        assert not {0, 3, 4} & set(scored.a.tolist() + scored.b.tolist())


def test_unreadable_files_are_skipped_with_a_reason(tmp_path):
    good = tmp_path / "good.png"
    _photo("camera").save(good)
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    ex = KeypointExtractor("orb", max_features=50, workers=1).extract([text, good, missing])
    assert list(ex.rows) == [1] and len(ex.features) == 1
    assert [s.path for s in ex.skipped] == [str(text), str(missing)]
    assert all(s.reason for s in ex.skipped)


@pytest.mark.parametrize("detector", ["brisk", "orb", "sift"])
def test_keypoints_are_in_original_image_pixels(tmp_path, detector):
    """A 4x upscaled JPEG (decoded at 1/4 scale, so the detector sees the same picture) gives the same
    points, times four, in its own pixels."""
    small = _photo("astronaut")
    big = small.resize((small.width * 4, small.height * 4), Image.Resampling.LANCZOS)
    small.save(tmp_path / "small.png")
    big.save(tmp_path / "big.jpg", quality=95)
    ex = KeypointExtractor(detector, max_features=200, max_size=LONG_SIDE, workers=1)
    f = ex.extract([tmp_path / "small.png", tmp_path / "big.jpg"]).features
    assert f.image_sizes.tolist() == [list(small.size), list(big.size)]
    p_small = f.points[f.offsets[0]:f.offsets[1]]
    p_big = f.points[f.offsets[1]:f.offsets[2]]
    assert np.all((p_big >= -0.5) & (p_big <= np.array(big.size) - 0.5))
    assert p_big.max() > 2 * LONG_SIDE  # really in the big image's pixels
    # Back to the small image (pixel centres at integers: x_small = (x_big + 0.5) / 4 - 0.5).
    quartered = (p_big + 0.5) / 4 - 0.5
    dist = np.linalg.norm(quartered[:, None] - p_small[None], axis=2)
    nearest = dist.min(axis=1)
    assert np.median(nearest) < 0.5
    assert np.mean(nearest < 1.5) > 0.8
    # Keypoint sizes scale too.
    same = nearest < 0.5
    ratio = f.sizes[f.offsets[1]:f.offsets[2]][same] / f.sizes[dist.argmin(axis=1)[same]]
    assert np.median(ratio) == pytest.approx(4, rel=0.05)


@pytest.mark.parametrize("detector", ["orb", "brisk"])
def test_mirror_rows_describe_the_reflected_keypoints(tmp_path, detector):
    """Mirror rows sit at the image's own keypoints (mapped back from the mirror image), and a flipped
    copy's plain rows find them within the matching radius: most of them, as its own detector finds
    nearly the same corners (BRISK's detection is not exactly mirror-symmetric, so not all)."""
    img = _photo("coffee")
    img.save(tmp_path / "a.png")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "flipped.png")
    ex = KeypointExtractor(detector, max_features=150, mirror=True, workers=1)
    f = ex.extract([tmp_path / "a.png", tmp_path / "flipped.png"]).features
    assert f.mirrored is not None and len(f.mirrored) == len(f.descriptors)
    rows_a = np.arange(f.offsets[0], f.offsets[1])
    rows_f = np.arange(f.offsets[1], f.offsets[2])
    plain_a, mirrored_a = rows_a[~f.mirrored[rows_a]], rows_a[f.mirrored[rows_a]]
    plain_f = rows_f[~f.mirrored[rows_f]]
    at = {tuple(p) for p in np.round(f.points[plain_a], 2).tolist()}
    mirror_at = {tuple(p) for p in np.round(f.points[mirrored_a], 2).tolist()}
    assert len(mirror_at) > 100 and len(mirror_at - at) <= 0.05 * len(mirror_at)  # same places
    d = np.bitwise_count(f.descriptors[plain_f][:, None, :] ^ f.descriptors[mirrored_a][None]).sum(axis=2)
    close = d.min(axis=1) <= round(31 / 512 * 8 * f.descriptors.shape[1])  # the runner's radius for BRISK
    assert close.mean() > 0.6
    # ...and they are not the plain rows again: a mirror-symmetric picture would be needed for that.
    assert not np.array_equal(f.descriptors[plain_a][:50], f.descriptors[mirrored_a][:50])


def test_reflect_maps_points_and_orientations():
    """A keypoint of the mirror image: x -> width - 1 - x, orientation a -> (180 - a) mod 360, "none" (-1) kept;
    the rest as it was."""
    import cv2

    angles = [-1.0, 0.0, 45.0, 90.0, 180.0, 270.0, 359.5]
    keypoints = [cv2.KeyPoint(10.5, 3.0, 7.0, a, 2.5, 1, -1) for a in angles]
    out = reflect(keypoints, 100)
    assert [k.pt for k in out] == [(100 - 1 - 10.5, 3.0)] * len(angles)
    assert [k.angle for k in out] == pytest.approx([-1.0, 180.0, 135.0, 90.0, 0.0, 270.0, 180.5])
    assert [(k.size, k.response, k.octave) for k in out] == [(7.0, 2.5, 1)] * len(angles)
    assert reflect([], 100) == []


def test_process_pool_gives_the_same_features(photo_set):
    paths = photo_set[0][:16]
    serial = KeypointExtractor("orb", max_features=100, workers=1).extract(paths)
    pooled = KeypointExtractor("orb", max_features=100, workers=2).extract(paths)
    assert np.array_equal(serial.rows, pooled.rows)
    for field in ("descriptors", "offsets", "points", "responses"):
        assert np.array_equal(getattr(serial.features, field), getattr(pooled.features, field)), field


def test_max_features_keeps_the_strongest(tmp_path):
    _photo("astronaut").save(tmp_path / "a.png")
    few = KeypointExtractor("brisk", max_features=20, workers=1).extract([tmp_path / "a.png"]).features
    many = KeypointExtractor("brisk", max_features=2000, workers=1).extract([tmp_path / "a.png"]).features
    assert len(few.descriptors) <= 20 < len(many.descriptors)
    # The kept responses are the top of the full list (compute may drop a few near the border).
    assert few.responses.min() >= np.sort(many.responses)[-40]


def test_params_and_validation():
    ex = KeypointExtractor("akaze", threshold=0.002)
    assert ex.kind == "keypoints" and ex.binary
    assert ex.params() == {"detector": "akaze", "max_features": 500, "max_size": 640, "threshold": 0.002,
                           "mirror": False, "adaptive": True, "version": 2}
    assert not KeypointExtractor("sift").binary
    with pytest.raises(ValueError):
        KeypointExtractor("surf")
    with pytest.raises(ValueError):
        KeypointMethod(ex, None, score="median")
    method = KeypointMethod(ex, None, score_threshold=0.2)
    assert method.threshold == 0.2 and method.params()["score"] == "min"


def test_threshold_ladder():
    from simbench.features.keypoints import _Config, threshold_ladder
    assert threshold_ladder(_Config("brisk", 500, 640, 8, False, True)) == [30, 15, 8]
    assert threshold_ladder(_Config("brisk", 500, 640, 8, False, False)) == [8]
    assert threshold_ladder(_Config("brisk", 500, 640, 40, False, True)) == [40]  # above the default: as is
    assert threshold_ladder(_Config("brisk", 500, 640, None, False, True)) == [None]


@pytest.mark.parametrize("spread", [None, "grid"])
def test_brisk_finder_gives_the_features_of_the_describing_detector(photo_set, monkeypatch, spread):
    """Oracle: BRISK's detection-only object (make_finder: no orientations, a sparser pattern) finds the
    corners the full BRISK object finds, so every feature is as when that object detected them too; down the
    whole ladder, with the coarse scale and the mirror rows, on the photos and their copies (crops, turns,
    scales: corners near the border)."""
    from simbench.features import keypoints as kp

    paths = photo_set[0]
    assert kp.make_finder("brisk", 500, 8) is not kp.make_detector("brisk", 500, 8)

    def features():
        ex = KeypointExtractor("brisk", max_features=400, max_size=LONG_SIDE, threshold=8, mirror=True,
                               spread=spread, coarse_share=0.5, workers=1)
        return ex.extract(paths).features

    fast = features()
    monkeypatch.setattr(kp, "make_finder", kp.make_detector)
    plain = features()
    assert len(fast.descriptors) > 400 * len(paths)  # more rows than one scale gives: both scales, mirror rows
    for field in ("descriptors", "offsets", "points", "sizes", "angles", "responses", "mirrored"):
        assert np.array_equal(getattr(fast, field), getattr(plain, field)), field


def test_adaptive_threshold_keeps_the_strongest_keypoints(photo_set, tmp_path):
    """A textured photo reaches max_features at BRISK's default threshold: the ladder stops there and
    keeps (nearly) the keypoints a single detection at the low threshold keeps; a low-contrast picture
    never reaches it, goes down the whole ladder and gets exactly the low threshold's keypoints."""
    paths, _, kinds = photo_set
    flat = tmp_path / "flat.png"  # a faint version of a photo: few corners at any threshold above 8
    np_img = np.asarray(_photo("coffee").convert("L"), np.float64)
    Image.fromarray((128 + (np_img - 128) * 0.08).astype(np.uint8)).save(flat)
    originals = [p for p, k in zip(paths, kinds) if k == "orig"] + [flat]

    def features(adaptive):
        ex = KeypointExtractor("brisk", max_features=300, max_size=LONG_SIDE, threshold=8, adaptive=adaptive,
                               workers=1)
        f = ex.extract(originals).features
        return [set(map(tuple, np.round(f.points[f.offsets[i]:f.offsets[i + 1]], 1).tolist()))
                for i in range(len(originals))]

    ladder, single = features(True), features(False)
    overlap = [len(a & b) / max(1, len(b)) for a, b in zip(ladder, single)]
    assert min(overlap[:-1]) > 0.85, overlap
    assert 0 < len(single[-1]) < 300 and ladder[-1] == single[-1]


def test_spread_keypoints_keep_copies_apart_from_unrelated_photos(photo_set, matcher):
    """BRISK with spread="grid" (tests/test_keypoint_spread.py): every copy kind still verifies against its
    original, and unrelated photos still never do. (Weaker corners come in, so scores are lower.)"""
    paths, group, kind = photo_set
    extractor = KeypointExtractor("brisk", max_features=200, max_size=LONG_SIDE, threshold=8, mirror=True,
                                  spread="grid", workers=1)
    extracted = extractor.extract(paths)
    assert not extracted.skipped and np.all(np.diff(extracted.features.offsets) <= 400)  # plain + mirror rows
    for label, options in {"verified": {"burstiness": 0.0, "coverage": False}, "shared-content": {}}.items():
        method = KeypointMethod(extractor, matcher, score="min", verify=True, **options)
        true, false = _separation(method.score_pairs(extracted.features), group, kind)
        print(f"\nbrisk spread {label}: max unrelated {false:.3f}, min copy "
              + " ".join(f"{k}={v:.3f}" for k, v in true.items()))
        assert false == 0.0 and min(true.values()) > (0.01 if label == "verified" else 0.0), true
