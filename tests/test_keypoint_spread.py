"""KeypointExtractor(spread="grid"): max_features keypoints spread over the picture, so that a high-contrast
overlay (a screenshot frame's text, a caption) does not take the whole budget."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import skimage.data as skdata

from simbench.features import keypoints as kp
from simbench.features.keypoints import (KeypointExtractor, even_fill, find_keypoints, grid_cells,
                                         spread_over_grid)

W, H = 640, 480
#: The text overlay's box (x0, y0, x1, y1): the top-left corner of the picture.
BOX = (0, 0, 260, 200)
#: As `simbench find` extracts BRISK (simbench/find/cascade.py), at a 640 px working scale.
BRISK = dict(detector="brisk", max_features=500, max_size=640, threshold=8, workers=1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _overlaid_photo() -> Image.Image:
    """A low-contrast photo (skimage's astronaut at 35% contrast) with a white box of black text in its
    top-left corner: the text's corners are far stronger than any of the photo's."""
    grey = np.asarray(Image.fromarray(skdata.astronaut()).convert("L").resize((W, H), Image.Resampling.LANCZOS),
                      np.float64)
    img = Image.fromarray((128 + (grey - 128) * 0.35).astype(np.uint8)).convert("RGB")
    text = Image.new("RGB", (BOX[2] - BOX[0], BOX[3] - BOX[1]), (255, 255, 255))
    d = ImageDraw.Draw(text)
    rng = np.random.default_rng(0)
    words = ["likes", "share", "Class", "of", "2024", "follow", "comment", "#photo", "reply", "view"]
    for y in range(4, text.height - 12, 16):
        d.text((6, y), " ".join(rng.choice(words, 6)), fill=(0, 0, 0), font=_font(13))
    img.paste(text, BOX[:2])
    return img


@pytest.fixture(scope="module")
def overlaid(tmp_path_factory):
    path = tmp_path_factory.mktemp("spread") / "overlaid.png"
    _overlaid_photo().save(path)
    return path


def _in_box(points: np.ndarray, margin: float = 2.0) -> np.ndarray:
    return (points[:, 0] <= BOX[2] + margin) & (points[:, 1] <= BOX[3] + margin)


def _outside_cells() -> np.ndarray:
    """Grid cells (at the 640 px working scale) that the text box does not touch."""
    ys, xs = np.mgrid[0:H, 0:W]
    pixels = np.c_[xs.ravel(), ys.ravel()].astype(np.float64)
    cells = grid_cells(pixels, (H, W))
    touched = np.unique(cells[_in_box(pixels, margin=0)])
    return np.setdiff1d(np.unique(cells), touched)


# ---------------------------------------------------------------------------------------------------
# The case


def test_a_text_overlay_no_longer_takes_the_keypoint_budget(overlaid):
    outside = _outside_cells()
    found = {}
    for spread in (None, "grid"):
        f = KeypointExtractor(**BRISK, spread=spread).extract([overlaid]).features
        inside = _in_box(f.points)
        occupied = np.intersect1d(np.unique(grid_cells(f.points[~inside], (H, W))), outside)
        found[spread] = (len(f.points), int((~inside).sum()), len(occupied), f)
        print(f"\nspread={spread}: {len(f.points)} keypoints, {(~inside).sum()} outside the text, "
              f"{len(occupied)} of {len(outside)} cells outside it occupied")
    n, out, cells, _ = found[None]
    assert n == 500 and out <= 0.05 * n and cells <= 0.2 * len(outside)  # the text takes (nearly) all
    n, out, cells, f = found["grid"]
    assert 400 <= n <= 500
    assert out >= 0.5 * n  # most of the budget goes to the photo, around the text
    assert cells >= 0.7 * len(outside)
    # The photo's corners are weak: the ladder went below BRISK's default threshold (30) to find them,
    # where without spreading it stopped at 30 (500 corners of text were found there).
    inside = _in_box(f.points)
    assert (f.responses[~inside] < 25).any() and found[None][3].responses.min() > 30


@pytest.mark.parametrize("detector", ["brisk", "orb"])
@pytest.mark.parametrize("max_features", [10, 64, 137])
def test_never_more_than_max_features(overlaid, detector, max_features):
    """ORB caps its own detection (nfeatures): with spreading it detects more for the grid to choose from."""
    counts, in_text = {}, {}
    for spread in (None, "grid"):
        f = KeypointExtractor(detector, max_features=max_features, threshold=8, mirror=True, spread=spread,
                              workers=1).extract([overlaid]).features
        counts[spread] = (~f.mirrored).sum(), f.mirrored.sum()
        in_text[spread] = _in_box(f.points[~f.mirrored]).mean()
    plain, mirrored = counts["grid"]
    assert 0.9 * max_features <= plain <= max_features and 0.9 * max_features <= mirrored <= max_features
    assert in_text[None] > 0.95
    if max_features >= 64:  # at least one per cell (8 x 6): the text's quarter of the cells gets its share
        assert in_text["grid"] < 0.65, in_text
    else:  # fewer than the cells: one round, by response, and the text's corners are the strongest
        assert in_text["grid"] > 0.95


def test_a_picture_with_few_corners_keeps_them_all(tmp_path):
    """Fewer corners than max_features: spreading has nothing to choose, and changes nothing."""
    img = Image.new("RGB", (W, H), (128, 128, 128))
    d = ImageDraw.Draw(img)
    for i in range(6):
        x, y = 40 + 95 * i, 60 + 50 * (i % 3)
        d.rectangle((x, y, x + 50, y + 30), fill=(250, 250, 250) if i % 2 else (10, 10, 10))
    path = tmp_path / "few.png"
    img.save(path)
    plain = KeypointExtractor(**BRISK).extract([path]).features
    spread = KeypointExtractor(**BRISK, spread="grid").extract([path]).features
    assert 0 < len(plain.points) < 500
    for field in ("descriptors", "points", "sizes", "angles", "responses"):
        assert np.array_equal(getattr(plain, field), getattr(spread, field)), field


def test_deterministic(overlaid):
    one = KeypointExtractor(**BRISK, mirror=True, spread="grid").extract([overlaid, overlaid]).features
    two = KeypointExtractor(**BRISK, mirror=True, spread="grid").extract([overlaid]).features
    n = one.offsets[1]
    assert np.array_equal(one.offsets, [0, n, 2 * n])
    for field in ("descriptors", "points", "responses", "mirrored"):
        a = getattr(one, field)
        assert np.array_equal(a[:n], a[n:]) and np.array_equal(a[:n], getattr(two, field)), field


def test_mirror_rows_describe_the_reflected_spread_keypoints(overlaid):
    """Mirror rows sit at the same spread keypoints (mapped back to the unmirrored picture), described in
    the mirror image: so they reach into the photo as the plain rows do, and are not the plain rows again."""
    f = KeypointExtractor(**BRISK, mirror=True, spread="grid").extract([overlaid]).features
    plain, mirrored = ~f.mirrored, f.mirrored
    assert mirrored.sum() >= 0.95 * plain.sum()
    at = {tuple(p) for p in np.round(f.points[plain], 2).tolist()}
    mirror_at = {tuple(p) for p in np.round(f.points[mirrored], 2).tolist()}
    assert len(mirror_at - at) <= 0.05 * len(mirror_at)  # the same places
    assert (~_in_box(f.points[mirrored])).mean() >= 0.5  # spread, as the plain rows
    assert not np.array_equal(f.descriptors[plain][:50], f.descriptors[mirrored][:50])


def test_params_and_validation():
    plain, spread = KeypointExtractor("brisk"), KeypointExtractor("brisk", spread="grid")
    assert "spread" not in plain.params()  # unchanged features keep their caches and calibration tables
    assert spread.params() == {**plain.params(), "spread": "grid"}
    with pytest.raises(ValueError):
        KeypointExtractor("brisk", spread="anms")


# ---------------------------------------------------------------------------------------------------
# The selection and the ladder, against plain loops and stand-in detectors


def _round_robin_oracle(points: np.ndarray, responses: np.ndarray, shape, cells_along_long_side: int,
                        max_features: int) -> list[int]:
    """Indices kept: cells of side long/cells; per cell a queue, strongest first (ties: lower index);
    round after round, the head of every non-empty queue, strongest first, until max_features."""
    h, w = shape
    size = max(h, w) / cells_along_long_side
    queues = {}
    for i, (x, y) in enumerate(points.tolist()):
        key = (min(int(y // size), int(np.ceil(h / size)) - 1), min(int(x // size), int(np.ceil(w / size)) - 1))
        queues.setdefault(key, []).append(i)
    for q in queues.values():
        q.sort(key=lambda i: (-responses[i], i))
    kept = []
    while len(kept) < max_features and any(queues.values()):
        heads = sorted((q.pop(0) for q in queues.values() if q), key=lambda i: (-responses[i], i))
        kept += heads[:max_features - len(kept)]
    return sorted(kept, key=lambda i: (-responses[i], i))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spread_over_grid_against_a_round_robin_loop(seed):
    rng = np.random.default_rng(seed)
    shape = (300, 500)
    n = 900
    # Clustered points (a crowded corner) plus a sparse rest; integer responses, so with ties.
    crowd = rng.random((n // 2, 2)) * [120, 80]
    rest = rng.random((n - n // 2, 2)) * [499.9, 299.9]
    points = np.vstack([crowd, rest]).astype(np.float32)
    responses = rng.integers(8, 60, n).astype(np.float32)
    keypoints = [cv2.KeyPoint(float(x), float(y), 7.0, -1, float(r)) for (x, y), r in zip(points, responses)]
    for max_features in (1, 37, 200, 899):
        got = spread_over_grid(keypoints, shape, max_features)
        want = _round_robin_oracle(points, responses, shape, kp.SPREAD_CELLS, max_features)
        assert [keypoints.index(k) for k in got] == want


def test_even_fill():
    shape = (480, 640)  # 8 x 6 cells of 80 px: a share of ceil(500 / 48) = 11 per cell
    one_cell = np.full((600, 2), 10.0)
    assert even_fill(one_cell, shape, 500) == pytest.approx(11 / 500)
    ys, xs = np.mgrid[0:480:8, 0:640:8]  # 60 x 80 points: 100 per cell
    assert even_fill(np.c_[xs.ravel(), ys.ravel()].astype(np.float64), shape, 500) == 1.0
    assert even_fill(np.empty((0, 2)), shape, 500) == 0.0


class _Detector:
    """Stands in for an OpenCV detector: returns fixed keypoints and counts its calls."""

    def __init__(self, points):
        self.keypoints = [cv2.KeyPoint(float(x), float(y), 7.0, -1, float(100 - i % 50))
                          for i, (x, y) in enumerate(points)]
        self.calls = 0

    def detect(self, gray, mask):
        self.calls += 1
        return list(self.keypoints)


def _crowded(n, rng):  # in one corner cell
    return rng.random((n, 2)) * 70


def _spread(n, rng):  # all over the picture
    return rng.random((n, 2)) * [639, 479]


def test_the_ladder_goes_lower_while_keypoints_crowd_and_that_helps():
    rng = np.random.default_rng(0)
    gray = np.zeros((480, 640), np.uint8)
    # 600 keypoints at the first threshold, all in one corner; spread ones at the second.
    ladder = [_Detector(_crowded(600, rng)), _Detector(np.vstack([_crowded(600, rng), _spread(900, rng)])),
              _Detector(_spread(3000, rng))]
    plain = find_keypoints(ladder, gray, 500)
    assert [d.calls for d in ladder] == [1, 0, 0] and len(plain) == 500  # enough found: as before
    spread = find_keypoints(ladder, gray, 500, "grid")
    assert [d.calls for d in ladder] == [2, 1, 0]  # filled evenly at the second: stops there
    assert len(spread) == 500 and sum(k.pt[0] > 80 or k.pt[1] > 80 for k in spread) > 400


def test_the_ladder_stops_when_going_lower_fills_nothing():
    """What stays empty is flat (a white page, sky): a lower threshold only adds to the crowded part."""
    rng = np.random.default_rng(1)
    gray = np.zeros((480, 640), np.uint8)
    ladder = [_Detector(_crowded(600, rng)), _Detector(_crowded(2000, rng)), _Detector(_spread(3000, rng))]
    find_keypoints(ladder, gray, 500, "grid")
    assert [d.calls for d in ladder] == [1, 1, 0]
    # Too few keypoints at a step: on down, as without spreading; the last step's are kept, all of them.
    ladder = [_Detector(_spread(100, rng)), _Detector(_spread(300, rng))]
    assert len(find_keypoints(ladder, gray, 500, "grid")) == 300 and [d.calls for d in ladder] == [1, 1]


def test_trim_frame_detects_inside_a_burned_in_frame_only(tmp_path):
    """Oracle: with trim_frame, the keypoints of a framed picture are those of framed_box's cut-out of it
    (extracted without trim_frame), shifted by the cut; without it some lie on the frame's corners; a picture
    without a frame keeps its keypoints; the key says so."""
    from conftest import framed_picture

    from simbench.data.images import framed_box

    picture = Image.fromarray(skdata.coffee()).resize((400, 300))  # under max_size: no resampling
    framed = framed_picture(picture, 2.0)
    left, top, right, bottom = framed_box(np.asarray(framed.convert("L")))
    assert left > 0
    paths = {}
    for name, image in (("framed", framed), ("cut", framed.crop((left, top, right, bottom))), ("plain", picture)):
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name])
    settings = {"max_features": 300, "threshold": 8, "spread": "grid", "coarse_share": 0.5, "mirror": True,
                "workers": 1}
    trimmed, plain = KeypointExtractor(trim_frame=True, **settings), KeypointExtractor(**settings)
    got = trimmed.extract([paths["framed"], paths["plain"]]).features
    cut, whole = plain.extract([paths["cut"], paths["plain"]]).features, plain.extract([paths["framed"]]).features
    rows = slice(got.offsets[0], got.offsets[1])
    np.testing.assert_array_equal(got.descriptors[rows], cut.descriptors[cut.offsets[0]:cut.offsets[1]])
    np.testing.assert_allclose(got.points[rows], cut.points[cut.offsets[0]:cut.offsets[1]] + [left, top], atol=1e-3)
    np.testing.assert_array_equal(got.descriptors[got.offsets[1]:], cut.descriptors[cut.offsets[1]:])  # no frame

    def near_frame(points):  # on the frame or within 15 px inside it
        x, y = points[:, 0], points[:, 1]
        return np.minimum.reduce([x - left, y - top, right - 1 - x, bottom - 1 - y]) < 15

    assert near_frame(whole.points).sum() >= 5 and not near_frame(got.points[rows]).any()
    assert trimmed.params()["trim_frame"] is True and "trim_frame" not in plain.params()  # old keys kept


def _recoloured(picture: Image.Image) -> Image.Image:
    """A yearbook's sepia placement of a picture at 45% contrast: its grey levels keep their order but squeeze
    into a narrow band."""
    grey = np.asarray(picture.convert("L"), np.float64)
    low = 150 + (grey - 128) * 0.45
    return Image.fromarray(np.dstack([low, low * 0.85, low * 0.6]).clip(0, 255).astype(np.uint8))


def test_equalise_describes_the_equalised_picture_and_brings_a_recoloured_copy_back(tmp_path):
    """Oracle: with equalise="all", the features of a picture are those of cv2.equalizeHist of its grey levels
    (extracted without equalise); a sepia, low-contrast copy then shares far more descriptors with its original
    (within find's 31 bits) than without; the key says so."""
    picture = Image.fromarray(skdata.coffee()).resize((400, 300))  # under max_size: no resampling
    paths = {"picture": tmp_path / "picture.png", "copy": tmp_path / "copy.png", "equalised": tmp_path / "eq.png"}
    picture.save(paths["picture"])
    _recoloured(picture).save(paths["copy"])
    Image.fromarray(cv2.equalizeHist(np.asarray(picture.convert("L")))).save(paths["equalised"])
    settings = {**BRISK, "spread": "grid", "coarse_share": 0.5, "mirror": True}
    equalising, plain = KeypointExtractor(equalise="all", **settings), KeypointExtractor(**settings)
    got = equalising.extract([paths["picture"], paths["copy"]]).features
    oracle = plain.extract([paths["equalised"]]).features
    rows = slice(got.offsets[0], got.offsets[1])
    np.testing.assert_array_equal(got.descriptors[rows], oracle.descriptors)
    np.testing.assert_allclose(got.points[rows], oracle.points, atol=1e-3)

    def shared(features) -> int:  # the copy's descriptors with one of the original's within 31 bits
        original = features.descriptors[features.offsets[0]:features.offsets[1]]
        copy = features.descriptors[features.offsets[1]:features.offsets[2]]
        bits = np.bitwise_count(copy[:, None, :] ^ original[None]).sum(axis=2)
        return int((bits.min(axis=1) <= 31).sum())

    without = shared(plain.extract([paths["picture"], paths["copy"]]).features)
    assert shared(got) > 1.3 * without
    assert equalising.params()["equalise"] == "all" and "equalise" not in plain.params()  # old keys kept
    with pytest.raises(ValueError, match="equalise"):
        KeypointExtractor(equalise=True)


def _clip_equalised(gray: np.ndarray, clip: float) -> np.ndarray:
    """Contrast-limited histogram equalisation over the whole picture, written out (Zuiderveld 1994, as OpenCV
    counts it): each grey level's count cut at clip x the mean count (at least 1), the excess dealt out evenly,
    what does not divide spread one level at a time from 0; the cumulative counts scaled to 0..255."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.int64)
    limit = max(int(clip * gray.size / 256), 1)
    excess = int(np.maximum(hist - limit, 0).sum())
    hist = np.minimum(hist, limit) + excess // 256
    residual = excess % 256
    if residual:
        step = max(256 // residual, 1)
        for level in range(0, 256, step)[:residual]:
            hist[level] += 1
    lut = np.rint(np.cumsum(hist).astype(np.float32) * np.float32(255 / gray.size))
    return lut.clip(0, 255).astype(np.uint8)[gray]


@pytest.mark.parametrize("clip", [1.0, 1.5, 3.0, 40.0])
def test_clip_limited_equalisation_against_a_plain_oracle(clip):
    rng = np.random.default_rng(int(clip * 10))
    pictures = [np.asarray(Image.fromarray(skdata.camera()).resize((333, 250))),
                rng.integers(0, 256, (97, 131), dtype=np.uint8),
                np.where(rng.random((120, 160)) < 0.9, 250, rng.integers(0, 60, (120, 160))).astype(np.uint8),
                (128 + 20 * rng.standard_normal((64, 64))).clip(0, 255).astype(np.uint8)]
    for gray in pictures:
        np.testing.assert_array_equal(kp.equalised(gray, clip), _clip_equalised(gray, clip))
    np.testing.assert_array_equal(kp.equalised(pictures[0]), cv2.equalizeHist(pictures[0]))


@pytest.mark.parametrize("clip", [None, 1.5])
def test_equalise_coarse_equalises_only_the_smoothed_picture(tmp_path, clip):
    """Oracle: with equalise="coarse", the picture's own rows are those without equalise, and the coarse rows
    are the features (at the coarse budget, no smoothing) of the grey picture smoothed at coarse_sigma and
    then equalised (with the clip limit); the key says so."""
    picture = Image.fromarray(skdata.astronaut()).resize((400, 400))  # under max_size: no resampling
    grey = np.asarray(picture.convert("L"))
    picture.save(tmp_path / "picture.png")
    smoothed = cv2.GaussianBlur(grey, (0, 0), 2.0)
    equalised = cv2.equalizeHist(smoothed) if clip is None else _clip_equalised(smoothed, clip)
    Image.fromarray(equalised).save(tmp_path / "coarse.png")
    settings = {**BRISK, "max_features": 300, "spread": "grid", "mirror": True}
    coarse = KeypointExtractor(equalise="coarse", equalise_clip=clip, coarse_share=0.5, coarse_sigma=2.0, **settings)
    got = coarse.extract([tmp_path / "picture.png"]).features
    plain = KeypointExtractor(coarse_share=0.5, coarse_sigma=2.0, **settings).extract([tmp_path / "picture.png"])
    fine = KeypointExtractor(**{**settings, "max_features": 150}).extract([tmp_path / "picture.png"]).features
    oracle = KeypointExtractor(**{**settings, "max_features": 150}).extract([tmp_path / "coarse.png"]).features
    n_fine = len(fine.descriptors)
    np.testing.assert_array_equal(got.descriptors[:n_fine], fine.descriptors)
    np.testing.assert_array_equal(plain.features.descriptors[:n_fine], fine.descriptors)
    np.testing.assert_array_equal(got.descriptors[n_fine:], oracle.descriptors)
    np.testing.assert_allclose(got.points[n_fine:], oracle.points, atol=1e-3)
    assert not np.array_equal(plain.features.descriptors[n_fine:], oracle.descriptors)
    assert coarse.params()["equalise"] == "coarse" and coarse.params().get("equalise_clip") == clip
    with pytest.raises(ValueError, match="equalise_clip"):
        KeypointExtractor(equalise="coarse", equalise_clip=0.5)
    assert KeypointExtractor(equalise_clip=3.0).params() == KeypointExtractor().params()  # unused without equalise
