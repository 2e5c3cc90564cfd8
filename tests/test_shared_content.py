"""Shared content is not duplication: burstiness weights, inlier coverage and the evidence of verified pairs.

Generated collections, one per overlay: eight different pictures (skimage photos, and disjoint windows of
the large ones) all carrying the same overlay (an emoji-like sticker, scikit-image's logo, a caption
bar, a screenshot frame), one true copy of an overlaid picture, and true copies of another photo Q:
a 30% crop, Q pasted at half size into a larger unrelated picture, Q turned a quarter and Q mirrored.
Keypoints as `simbench find` extracts them (BRISK, 500 per image, 640 px, threshold 8, mirror rows).
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import skimage.data as skdata

from simbench.features.keypoints import KeypointExtractor
from simbench.match.oracle import OracleMatcher
from simbench.methods.keypoints import (MAX_ANISOTROPY, MAX_SCALE_CHANGE, KeypointMethod, bag_score, between_images,
                                        burstiness_weights, count_inliers, covered_share, image_frequency,
                                        inlier_coverage, plausible, ransac_inliers, verify_pairs)
from simbench.types import bytes_to_words

#: As `simbench find` runs the keypoint stage (simbench/find/cascade.py) and conf/method/keypoints.yaml
#: scores it (score_threshold 0.02).
EXTRACTOR = dict(detector="brisk", max_features=500, max_size=640, threshold=8, mirror=True, workers=1)
METHOD = dict(distance_threshold=31, verify=True, min_inliers=5, score_threshold=0.02)
PLAIN = dict(burstiness=0.0, coverage=False)  # the verified method as it was before

# Different pictures: distinct photos, or disjoint windows of one large photo (name, crop box).
WINDOWS = [("coffee", (0, 0, 600, 400)), ("rocket", (0, 0, 640, 427)), ("chelsea", (0, 0, 451, 300)),
           ("hubble_deep_field", (0, 0, 500, 436)), ("immunohistochemistry", (0, 0, 512, 512)),
           ("camera", (0, 0, 512, 512)), ("coins", (0, 0, 384, 303)), ("clock", (0, 0, 400, 300))]
COPY_SOURCE = ("astronaut", (0, 0, 512, 512))
COLLAGE_BASE = ("hubble_deep_field", (500, 436, 1000, 872))
COPIES = ["Q_crop30", "Q_pasted", "Q_rot90", "Q_flip"]


# ---------------------------------------------------------------------------------------------------
# Generated pictures


def _picture(window, w: int = 480, h: int = 360) -> Image.Image:
    """A skimage photo window, resized to cover w x h and centre-cropped to it."""
    name, box = window
    return _cover(Image.fromarray(getattr(skdata, name)()).convert("RGB").crop(box), w, h)


def _cover(img: Image.Image, w: int, h: int) -> Image.Image:
    f = max(w / img.width, h / img.height)
    img = img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.LANCZOS)
    x, y = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((x, y, x + w, y + h))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _sticker(size: int = 80) -> Image.Image:
    """An emoji-like sticker: yellow disc, eyes, mouth, and a band of random cells (corners of its own)."""
    rng = np.random.default_rng(0)
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((1, 1, size - 2, size - 2), fill=(255, 204, 0, 255), outline=(60, 30, 0, 255), width=3)
    e = size // 8
    for cx in (0.28, 0.72):
        d.ellipse((size * cx - e, size * 0.32 - e, size * cx + e, size * 0.32 + e), fill=(40, 20, 0, 255))
    d.arc((size * 0.2, size * 0.35, size * 0.8, size * 0.8), 20, 160, fill=(120, 0, 0, 255), width=4)
    c = size // 12
    for i, j in zip(*np.nonzero(rng.random((3, 8)) > 0.5)):
        x0, y0 = size * 0.16 + j * c, size * 0.62 + i * c * 0.7
        d.rectangle((x0, y0, x0 + c - 1, y0 + c * 0.7), fill=(200, 60, 0, 255))
    return im


def _overlaid(kind: str, picture: Image.Image, k: int) -> Image.Image:
    """The k-th different picture with the shared overlay."""
    out = picture.copy()
    if kind == "sticker":  # the same emoji, somewhere else on every picture
        x, y = 30 + (97 * k) % 350, 30 + (61 * k) % 230
        out.paste(_sticker(), (x, y), _sticker())
    elif kind == "logo":  # a logo stamped in the same corner
        logo = Image.fromarray(skdata.logo()).resize((90, 90), Image.Resampling.LANCZOS)
        out.paste(logo, (out.width - 100, out.height - 100), logo)
    elif kind == "caption":  # the same caption bar along the bottom
        d = ImageDraw.Draw(out)
        d.rectangle((0, out.height - 44, out.width, out.height), fill=(0, 0, 0))
        d.text((14, out.height - 38), "Class of 2024 - Springfield High", fill=(255, 255, 255), font=_font(26))
    elif kind == "frame":  # a phone screenshot: title bar, the photo, a bar of buttons
        w, h, top, bottom = 420, 640, 40, 580
        out = Image.new("RGB", (w, h), (240, 240, 240))
        d = ImageDraw.Draw(out)
        d.text((12, 8), "picturegram", fill=(150, 150, 150), font=_font(20))
        out.paste(_cover(picture, w, bottom - top), (0, top))
        for x in range(30, w, 90):
            d.rectangle((x, h - 45, x + 26, h - 19), outline=(150, 150, 150), width=2)
        d.text((200, bottom + 4), "1,234 likes", fill=(160, 160, 160), font=_font(13))
    else:
        raise ValueError(kind)
    return out


def _collection(kind: str) -> tuple[list[str], list[Image.Image]]:
    names, images = [], []
    for k, window in enumerate(WINDOWS):
        names.append(f"{kind}{k}")
        images.append(_overlaid(kind, _picture(window), k))
    names.append("copy_of_0")  # a true copy of an overlaid picture: the overlay comes along
    images.append(images[0].resize((images[0].width * 3 // 4, images[0].height * 3 // 4),
                                   Image.Resampling.LANCZOS))
    q = _picture(COPY_SOURCE, 560, 420)
    w, h = q.size
    cw, ch = round(w * 0.55), round(h * 0.55)  # 30% of the area
    collage = _picture(COLLAGE_BASE, 640, 480)
    collage.paste(q.resize((w // 2, h // 2), Image.Resampling.LANCZOS), (300, 200))
    names += ["Q"] + COPIES
    images += [q, q.crop((60, 80, 60 + cw, 80 + ch)), collage,
               q.transpose(Image.Transpose.ROTATE_90).resize((h * 3 // 4, w * 3 // 4)),
               q.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return names, images


@pytest.fixture(scope="module")
def matcher():
    try:
        from simbench.match.exact import ExactMatcher
    except ImportError:  # numba missing: the NumPy brute force gives the same pairs
        return OracleMatcher()
    return ExactMatcher()


@pytest.fixture(scope="module")
def collections(tmp_path_factory, matcher):
    """kind -> (names, features, extractor), extracted once per kind."""
    cache = {}

    def get(kind):
        if kind not in cache:
            root = tmp_path_factory.mktemp(kind)
            names, images = _collection(kind)
            paths = [root / f"{n}.jpg" for n in names]
            for img, path in zip(images, paths):
                img.convert("RGB").save(path, quality=90)
            extractor = KeypointExtractor(**EXTRACTOR)
            extracted = extractor.extract(paths)
            assert not extracted.skipped
            cache[kind] = names, extracted.features, extractor
        return cache[kind]

    return get


def _by_name(scored, names) -> dict:
    """(name_a, name_b) -> index into scored, both orders."""
    out = {}
    for k, (a, b) in enumerate(zip(scored.a.tolist(), scored.b.tolist())):
        out[names[a], names[b]] = out[names[b], names[a]] = k
    return out


def _coverages(scored, names, first: str, second: str) -> tuple[int, float, float]:
    """The pair (first, second): its index in scored, and the coverage of first's and of second's picture."""
    k = _by_name(scored, names)[first, second]
    cov_a, cov_b = scored.extra["coverage_a"][k], scored.extra["coverage_b"][k]
    return (k, cov_a, cov_b) if names[scored.a[k]] == first else (k, cov_b, cov_a)


def _groups(names, kind):
    overlay = [(a, b) for i, a in enumerate(names[:8]) for b in names[i + 1:8]]
    copies = [("Q", c) for c in COPIES] + [(f"{kind}0", "copy_of_0")]
    return overlay, copies


# ---------------------------------------------------------------------------------------------------
# The cases


@pytest.mark.parametrize("kind", ["sticker", "logo", "caption"])
def test_a_shared_overlay_does_not_make_different_pictures_duplicates(collections, matcher, kind):
    names, features, extractor = collections(kind)
    method = KeypointMethod(extractor, matcher, **METHOD)
    scored = method.score_pairs(features)
    plain = KeypointMethod(extractor, matcher, **METHOD, **PLAIN).score_pairs(features)
    at, plain_at = _by_name(scored, names), _by_name(plain, names)
    overlay, copies = _groups(names, kind)
    # Without the shared-content steps the overlay alone verifies, and passes the threshold.
    plain_scores = [plain.score[plain_at[p]] for p in overlay if p in plain_at]
    assert plain_scores and max(plain_scores) >= method.threshold, plain_scores
    # With them: every true copy is found, above the threshold...
    assert all(p in at for p in copies), [p for p in copies if p not in at]
    evidence = scored.extra["evidence"]
    lowest_copy = min(evidence[at[p]] for p in copies)
    assert min(scored.score[at[p]] for p in copies) >= method.threshold
    # ...and no overlay pair comes near: far below the weakest copy, and below the threshold.
    shared = [at[p] for p in overlay if p in at]
    print(f"\n{kind}: {len(shared)} overlay pairs kept of {len(plain_scores)} verified; evidence max "
          f"{max(evidence[shared], default=0):.2f}, lowest copy {lowest_copy:.2f}")
    assert all(evidence[k] < lowest_copy / 3 for k in shared)
    assert all(scored.score[k] < method.threshold for k in shared)
    assert all(scored.extra["covered"][k] < 0.1 for k in shared)


def test_a_shared_screenshot_frame_falls_below_the_copies(collections, matcher):
    """A frame around different photos spans both pictures but leaves the photos' keypoints unreached
    (low fill), and its descriptors are in every framed picture (low weights). Not as far below the
    copies as a small overlay: only the weights and the fill tell it from a copy (its coverage is full)."""
    names, features, extractor = collections("frame")
    overlay, copies = _groups(names, "frame")
    result, distinctiveness = {}, {}
    for label, options in {"plain": PLAIN, "shared-content": {}}.items():
        scored = KeypointMethod(extractor, matcher, **METHOD, **options).score_pairs(features)
        at = _by_name(scored, names)
        x = scored.extra
        shared = [at[p] for p in overlay if p in at]
        assert len(shared) >= 20  # the frame verifies between nearly all pairs
        result[label] = (x["evidence"][shared], np.array([x["evidence"][at[p]] for p in copies]))
        distinctiveness[label] = (x["distinctiveness"][shared], np.array([x["distinctiveness"][at[p]] for p in copies]))
        if label == "shared-content":
            assert all(min(x["fill_a"][k], x["fill_b"][k]) < 0.5 for k in shared)
            assert all(min(x["fill_a"][at[p]], x["fill_b"][at[p]]) > 0.5 for p in copies)
    frames, copy_evidence = result["plain"]
    assert frames.max() > np.median(copy_evidence)  # by inliers, frames outrank most copies
    frames, copy_evidence = result["shared-content"]
    print(f"\nframe pairs: evidence max {frames.max():.1f}, median {np.median(frames):.1f}; "
          f"copies {np.sort(copy_evidence).round(1).tolist()}")
    assert frames.max() < np.median(copy_evidence) and np.median(frames) < copy_evidence.min() / 1.5
    # The frame's inliers are content every framed picture has: their mean weight is below every copy's.
    d = distinctiveness["shared-content"]
    assert d[0].max() < d[1].min() and 0 < d[0].min() and d[1].max() <= 1


def test_a_photo_pasted_into_another_picture_still_pairs_with_it(collections, matcher):
    names, features, extractor = collections("sticker")
    scored = KeypointMethod(extractor, matcher, **METHOD).score_pairs(features)
    k, q_side, collage_side = _coverages(scored, names, "Q", "Q_pasted")
    x = scored.extra
    # Q is covered (nearly) whole; of the collage only the pasted quarter.
    assert q_side > 0.5 and collage_side < 0.35, (q_side, collage_side)
    assert x["covered"][k] > 0.3 and x["evidence"][k] > 20
    assert scored.score[k] >= METHOD["score_threshold"]


def test_a_crop_still_pairs_with_its_original(collections, matcher):
    names, features, extractor = collections("sticker")
    scored = KeypointMethod(extractor, matcher, **METHOD).score_pairs(features)
    k, q_side, crop_side = _coverages(scored, names, "Q", "Q_crop30")
    x = scored.extra
    assert crop_side > 0.4 and q_side < 0.4, (crop_side, q_side)
    assert x["evidence"][k] > 20 and scored.score[k] >= METHOD["score_threshold"]


def test_mirrored_copy_is_verified_as_a_reflection(collections, matcher):
    names, features, extractor = collections("sticker")
    scored = KeypointMethod(extractor, matcher, **METHOD).score_pairs(features)
    at = _by_name(scored, names)
    assert scored.extra["flipped"][at["Q", "Q_flip"]] and not scored.extra["flipped"][at["Q", "Q_rot90"]]
    assert scored.extra["covered"][at["Q", "Q_flip"]] > 0.5


def test_without_the_new_options_scores_are_the_plain_inlier_scores(collections, matcher):
    names, features, extractor = collections("logo")
    plain = KeypointMethod(extractor, matcher, **METHOD, **PLAIN).score_pairs(features)
    x = plain.extra
    assert np.array_equal(x["evidence"], x["inliers"]) and np.array_equal(x["weighted_inliers"], x["inliers"])
    assert np.array_equal(plain.score, bag_score(x["inliers"], x["inliers"], x["n_a"], x["n_b"], "min"))
    assert np.allclose(plain.score, x["inliers"] / np.minimum(x["n_a"], x["n_b"]))
    # The defaults only remove pairs, and keep the rest's inlier counts.
    default = KeypointMethod(extractor, matcher, **METHOD).score_pairs(features)
    plain_inliers = dict(zip(zip(plain.a.tolist(), plain.b.tolist()), x["inliers"].tolist()))
    kept = list(zip(default.a.tolist(), default.b.tolist()))
    assert set(kept) < set(plain_inliers)
    assert [plain_inliers[p] for p in kept] == default.extra["inliers"].tolist()
    # Evidence is the product of its two factors, and orders pairs as neither factor alone does.
    d = default.extra
    assert np.allclose(d["evidence"], d["weighted_inliers"] * d["covered"])
    assert len(np.unique(d["evidence"])) == len(d["evidence"])


def test_params_and_validation():
    method = KeypointMethod(None, None, burstiness=1.0, coverage=False, min_coverage=0.1)
    assert {k: method.params()[k] for k in ("burstiness", "coverage", "min_coverage")} == {
        "burstiness": 1.0, "coverage": False, "min_coverage": 0.1}
    defaults = KeypointMethod(None, None).params()
    assert (defaults["burstiness"], defaults["coverage"], defaults["min_coverage"]) == (0.5, True, 0.02)
    with pytest.raises(ValueError):
        KeypointMethod(None, None, burstiness=-1)
    with pytest.raises(ValueError):
        KeypointMethod(None, None, min_coverage=1.5)


# ---------------------------------------------------------------------------------------------------
# Oracles: burstiness weights


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_image_frequency_against_a_loop(seed, random_keypoint_sets):
    """df of a row = distinct other images owning a row within the radius: every pair of rows, looped."""
    features = random_keypoint_sets(seed, n_images=9, logo_images=7)
    radius = 10
    pairs = OracleMatcher().self_join(bytes_to_words(features.descriptors), radius)
    matches = between_images(pairs, features.owners)
    got = image_frequency(matches, len(features.descriptors), len(features))
    owners = features.owners.tolist()
    ints = [int.from_bytes(bytes(row), "little") for row in features.descriptors]
    others = defaultdict(set)
    for i in range(len(ints)):
        for j in range(len(ints)):
            if owners[i] != owners[j] and bin(ints[i] ^ ints[j]).count("1") <= radius:
                others[i].add(owners[j])
    want = [len(others[i]) for i in range(len(ints))]
    assert got.tolist() == want
    assert max(want) >= 6  # the descriptor planted in seven images
    weights = burstiness_weights(got, 0.5)
    assert weights.tolist() == pytest.approx([1 / math.sqrt(max(d, 1)) for d in want])


def test_weighted_inliers_against_a_loop(collections, matcher):
    """The method's weighted_inliers: sum over each pair's inliers of sqrt(w_a w_b), w = df^-p, with the
    inliers from verify_pairs (checked too: one-to-one, the pair's own images, as many as `inliers`)."""
    names, features, extractor = collections("logo")
    power = 0.5
    method = KeypointMethod(extractor, matcher, **METHOD, burstiness=power)
    scored = method.score_pairs(features)
    pairs = matcher.self_join(bytes_to_words(features.descriptors), METHOD["distance_threshold"])
    matches = between_images(pairs, features.owners)
    ver = verify_pairs(features, matches, scored.a, scored.b, "similarity", method.ransac_threshold,
                       extractor.max_size)
    assert ver["inliers"].tolist() == scored.extra["inliers"].tolist()
    df = defaultdict(set)
    for ra, rb, ia, ib in zip(*(matches[k].tolist() for k in ("ra", "rb", "ia", "ib"))):
        df[ra].add(ib)
        df[rb].add(ia)
    owners = features.owners
    per_pair = defaultdict(list)
    for k, ra, rb in zip(ver["pair"].tolist(), ver["ra"].tolist(), ver["rb"].tolist()):
        assert owners[ra] == scored.a[k] and owners[rb] == scored.b[k]
        per_pair[k].append((ra, rb))
    for k in range(len(scored)):
        rows = per_pair[k]
        assert len(rows) == scored.extra["inliers"][k]
        assert len({ra for ra, _ in rows}) == len({rb for _, rb in rows}) == len(rows)  # one-to-one
        want = sum(math.sqrt(len(df[ra]) ** -power * len(df[rb]) ** -power) for ra, rb in rows)
        assert scored.extra["weighted_inliers"][k] == pytest.approx(want)
        assert scored.extra["distinctiveness"][k] == pytest.approx(want / len(rows))  # mean inlier weight
    # Flipped pairs keep the mirrored fit's inliers: exactly one row of each correspondence mirrored.
    mirrored = features.mirrored
    for k in np.flatnonzero(scored.extra["flipped"]).tolist():
        assert all(mirrored[ra] != mirrored[rb] for ra, rb in per_pair[k])


def test_ransac_inliers_mark_the_planted_correspondences():
    rng = np.random.default_rng(4)
    src = rng.random((80, 2)).astype(np.float32) * 400
    angle, scale, shift = 0.3, 0.7, np.array([50.0, -20.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = (src @ rot.T + shift).astype(np.float32)
    outliers = rng.random(80) < 0.3
    dst[outliers] = rng.random((int(outliers.sum()), 2)).astype(np.float32) * 400
    mask = ransac_inliers(src, dst, "similarity", 3.0)
    assert mask.dtype == bool and mask.shape == (80,)
    assert np.array_equal(mask, ~outliers)
    assert count_inliers(src, dst, "similarity", 3.0) == int(mask.sum())
    assert not ransac_inliers(src[:1], dst[:1], "similarity", 3.0).any()


def test_affine_model_keeps_a_squashed_copys_correspondences():
    # A copy squashed to 0.65 of its width (simbench.data.edits.aspect) and turned: no similarity maps it, so the
    # similarity fit keeps a band of it; the affine fit keeps every planted correspondence and no outlier.
    rng = np.random.default_rng(5)
    src = rng.random((120, 2)).astype(np.float32) * 500
    angle = 0.2
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = turn @ np.diag([0.65, 1.0])
    dst = (src @ linear.T + np.array([30.0, 10.0])).astype(np.float32)
    outliers = rng.random(120) < 0.25
    dst[outliers] = rng.random((int(outliers.sum()), 2)).astype(np.float32) * 500
    affine = ransac_inliers(src, dst, "affine", 3.0)
    assert np.array_equal(affine, ~outliers)
    assert ransac_inliers(src, dst, "similarity", 3.0).sum() < 0.6 * (~outliers).sum()
    assert not ransac_inliers(src[:2], dst[:2], "affine", 3.0).any()  # three points make an affine map


def test_plausible_maps_neither_collapse_nor_fold_the_picture():
    assert plausible(np.eye(2)) and plausible(np.diag([0.625, 1.0]))  # a 1.6x squash is a copy
    assert plausible(np.diag([-1.0, -1.0]))  # a half turn keeps the orientation
    assert not plausible(np.diag([1 / 20, 1 / 20])) and not plausible(np.diag([20.0, 20.0]))
    assert not plausible(np.diag([0.2, 1.0]))  # one axis 5x the other: chance matches folded onto a line
    assert not plausible(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    # Against the singular values themselves, on random maps of every shape.
    rng = np.random.default_rng(6)
    for linear in rng.normal(size=(2000, 2, 2)) * rng.uniform(0.1, 4, size=(2000, 1, 1)):
        big, small = np.linalg.svd(linear, compute_uv=False)
        det = np.linalg.det(linear)
        scale_ok = MAX_SCALE_CHANGE ** -2 <= det <= MAX_SCALE_CHANGE ** 2
        assert plausible(linear) == (scale_ok and big <= MAX_ANISOTROPY * small)


# ---------------------------------------------------------------------------------------------------
# Oracles: coverage


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull by Andrew's monotone chain, counter-clockwise."""
    pts = sorted(set(points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _shoelace(poly) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]))) / 2


def _fill_oracle(inliers: np.ndarray, keypoints: np.ndarray, steps: int = 150) -> float:
    """Fill by brute force: a fine grid over the inliers' hull, points inside it by cross products, and
    every distance to the inliers and to the keypoints computed."""
    hull = np.array(_hull([tuple(p) for p in inliers.tolist()]))
    r = math.sqrt(_shoelace(hull.tolist()) / len(np.unique(inliers, axis=0)))
    lo, hi = hull.min(axis=0), hull.max(axis=0)
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps))
    grid = np.c_[gx.ravel(), gy.ravel()]
    edges = np.roll(hull, -1, axis=0) - hull
    rel = grid[:, None, :] - hull[None]
    inside = np.all(edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0] >= -1e-9, axis=1)
    grid = grid[inside]

    def near(points):
        d = np.min(np.linalg.norm(grid[:, None, :] - points[None].astype(np.float64), axis=2), axis=1)
        return d <= r

    return near(inliers).sum() / near(keypoints).sum()


def _cases(rng):
    """(keypoints of an image, inlier rows): spread subsets, a frame-like ring, a small cluster."""
    kp = (rng.random((400, 2)) * [480, 360]).astype(np.float32)
    ring = np.flatnonzero((kp[:, 1] < 50) | (kp[:, 1] > 310))
    cluster = np.flatnonzero(np.hypot(kp[:, 0] - 300, kp[:, 1] - 150) < 60)
    return [(kp, rng.choice(400, 120, replace=False)), (kp, rng.choice(400, 12, replace=False)),
            (kp, ring), (kp, cluster)]


def test_coverage_and_fill_against_plain_formulas():
    rng = np.random.default_rng(7)
    cases = _cases(rng) + _cases(np.random.default_rng(8))
    points = np.concatenate([kp for kp, _ in cases])
    offsets = np.concatenate([[0], np.cumsum([len(kp) for kp, _ in cases])])
    rows = np.concatenate([offsets[i] + inl for i, (_, inl) in enumerate(cases)])
    pair = np.concatenate([np.full(len(inl), i) for i, (_, inl) in enumerate(cases)])
    coverage, fill = inlier_coverage(points, offsets, rows, pair, np.arange(len(cases)))
    for i, (kp, inl) in enumerate(cases):
        inlier_hull, keypoint_hull = _hull(list(map(tuple, kp[inl].tolist()))), _hull(list(map(tuple, kp.tolist())))
        assert coverage[i] == pytest.approx(_shoelace(inlier_hull) / _shoelace(keypoint_hull), rel=1e-4)
        assert fill[i] == pytest.approx(_fill_oracle(kp[inl], kp), abs=0.06), i
    spread, few, ring, cluster = fill[:4]
    assert spread > 0.8 and ring < 0.5 and cluster > 0.8
    assert coverage[3] < 0.1 < coverage[0]


def test_coverage_extent_against_the_pictures_area():
    """coverage_extent: coverage at most the inliers' hull over extent x the picture's area, by the
    shoelace formula in pixels; 0 leaves the keypoints' hull alone, to the bit."""
    rng = np.random.default_rng(9)
    cases = _cases(rng)
    # A flat picture: its keypoints all on a stamped logo in one corner (60 x 60 of 480 x 360), the
    # inliers on part of it (what a match of the logo alone gives).
    logo = (rng.random((200, 2)) * 60 + [400, 280]).astype(np.float32)
    cases.append((logo, np.flatnonzero((logo[:, 0] < 445) & (logo[:, 1] < 325))))
    points = np.concatenate([kp for kp, _ in cases])
    offsets = np.concatenate([[0], np.cumsum([len(kp) for kp, _ in cases])])
    rows = np.concatenate([offsets[i] + inl for i, (_, inl) in enumerate(cases)])
    pair = np.concatenate([np.full(len(inl), i) for i, (_, inl) in enumerate(cases)])
    images = np.arange(len(cases))
    width, height = 480.0, 360.0  # every case's picture
    relative = points.astype(np.float64) / [width, height]
    plain, plain_fill = inlier_coverage(points, offsets, rows, pair, images)
    same, same_fill = inlier_coverage(points, offsets, rows, pair, images, relative, 0.0)
    assert same.tolist() == plain.tolist() and same_fill.tolist() == plain_fill.tolist()
    for extent in (0.1, 0.25, 0.5):
        coverage, fill = inlier_coverage(points, offsets, rows, pair, images, relative, extent)
        assert fill.tolist() == plain_fill.tolist()
        for i, (kp, inl) in enumerate(cases):
            inliers = _shoelace(_hull(list(map(tuple, kp[inl].tolist()))))
            keypoints = _shoelace(_hull(list(map(tuple, kp.tolist()))))
            assert coverage[i] == pytest.approx(min(1.0, inliers / max(keypoints, extent * width * height)),
                                                rel=1e-4)
    logo_coverage = inlier_coverage(points, offsets, rows, pair, images, relative, 0.25)[0][-1]
    assert plain[-1] > 0.4 and logo_coverage < 0.05  # most of the logo, little of the picture
    with pytest.raises(ValueError, match="relative"):
        inlier_coverage(points, offsets, rows, pair, images, None, 0.25)


def test_coverage_extent_is_checked_and_keyed_only_when_on():
    extractor = KeypointExtractor("brisk")
    assert "coverage_extent" not in KeypointMethod(extractor, OracleMatcher(), verify=True).params()
    assert KeypointMethod(extractor, OracleMatcher(), verify=True, coverage_extent=0.25).params()[
        "coverage_extent"] == 0.25
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="coverage_extent"):
            KeypointMethod(extractor, OracleMatcher(), verify=True, coverage_extent=bad)


def test_coverage_of_degenerate_inliers_is_zero():
    kp = np.array([[0, 0], [10, 0], [20, 0], [0, 10], [5, 5]], np.float32)
    # Collinear inliers, and fewer than 3 distinct points (a row and its mirrored twin at one place).
    offsets = np.array([0, 5, 10])
    points = np.concatenate([kp, kp])
    rows = np.array([0, 1, 2, 5, 5, 6])
    pair = np.array([0, 0, 0, 1, 1, 1])
    coverage, fill = inlier_coverage(points, offsets, rows, pair, np.array([0, 1]))
    assert coverage.tolist() == [0.0, 0.0] and fill.tolist() == [0.0, 0.0]


def test_covered_share_is_a_strictly_increasing_soft_maximum():
    grid = np.linspace(0, 1, 41)
    a, b = np.meshgrid(grid, grid)
    c = covered_share(a, b)
    assert np.allclose(c, c.T)
    assert np.all(c <= np.maximum(a, b) + 1e-12) and np.all(c >= 2 ** -0.25 * np.maximum(a, b) - 1e-12)
    assert np.all(np.diff(c, axis=0) > 0) and np.all(np.diff(c, axis=1) > 0)
    # One well-covered side outweighs two partly covered ones: a crop over a frame-like ring.
    assert covered_share(0.6, 0.1) > covered_share(0.3, 0.3)
