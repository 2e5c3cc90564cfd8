"""KeypointExtractor(coarse_share=...): part of the keypoint budget found on the picture smoothed, so that
line-art copies that change its scale still verify."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

import skimage.data as skdata

from simbench.features.keypoints import KeypointExtractor, decode_gray
from simbench.methods.keypoints import KeypointMethod

#: As `simbench find` extracts BRISK (conf/find.yaml), at a smaller working scale.
BRISK = dict(detector="brisk", max_features=300, max_size=512, threshold=8, mirror=True, spread="grid", workers=1)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _line_art(name: str, width: int = 800) -> np.ndarray:
    """A skimage photo drawn as black strokes on white (thresholded difference of Gaussians)."""
    rgb = getattr(skdata, name)()
    grey = Image.fromarray(rgb).convert("L")
    grey = np.asarray(grey.resize((width, round(width * grey.height / grey.width)), Image.Resampling.LANCZOS),
                      np.float64)
    strokes = cv2.GaussianBlur(grey, (0, 0), 1.0) - 0.98 * cv2.GaussianBlur(grey, (0, 0), 1.6)
    return np.where(strokes < -1.0, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def line_art_copies(tmp_path_factory):
    """Each drawing (PNG) and a copy of it cropped and scaled to 0.6 (JPEG): paths, group per path."""
    root = tmp_path_factory.mktemp("line_art")
    paths = []
    for name in PHOTOS:
        drawing = _line_art(name)
        Image.fromarray(drawing).save(root / f"{name}.png")
        h, w = drawing.shape
        crop = Image.fromarray(drawing[int(h * .1):int(h * .85), int(w * .15):int(w * .9)])
        crop.resize((round(crop.width * .6), round(crop.height * .6)), Image.Resampling.LANCZOS).save(
            root / f"{name}_copy.jpg", quality=80)
        paths += [root / f"{name}.png", root / f"{name}_copy.jpg"]
    return paths, np.repeat(np.arange(len(PHOTOS)), 2)


@pytest.mark.parametrize("coarse_sigma, budgets", [
    (2.0, [(0, 180), (2.0, 120)]),
    ([2.0, 4.0], [(0, 180), (2.0, 60), (4.0, 60)]),  # the coarse share split evenly among the sigmas
])
def test_coarse_rows_are_the_smoothed_pictures_own_keypoints(line_art_copies, tmp_path, coarse_sigma, budgets):
    """Oracle: the rows of each scale equal what the extractor without a coarse share gives, with that
    scale's budget, on the picture as it is and on the picture smoothed beforehand (saved losslessly)."""
    path = line_art_copies[0][1]  # a copy smaller than the working scale: decoded at its own size
    got = KeypointExtractor(**BRISK, coarse_share=0.4, coarse_sigma=coarse_sigma).extract([path]).features
    gray, _ = decode_gray(path, BRISK["max_size"])
    scales = []
    for sigma, budget in budgets:
        picture = path
        if sigma:
            picture = tmp_path / f"smoothed-{sigma}.png"
            Image.fromarray(cv2.GaussianBlur(gray, (0, 0), sigma)).save(picture)
        scales.append(KeypointExtractor(**{**BRISK, "max_features": budget}).extract([picture]).features)
    assert all(len(scale.descriptors) for scale in scales)
    for field in ("descriptors", "points", "angles", "responses", "mirrored"):
        want = np.concatenate([getattr(scale, field) for scale in scales])
        np.testing.assert_array_equal(getattr(got, field), want, err_msg=field)


def test_line_art_copies_at_another_scale_verify_with_the_coarse_share(line_art_copies):
    """Strokes a few pixels wide: a copy cropped and scaled to 0.6 verifies against its drawing when half
    the budget is found on the smoothed pictures, and no two different drawings do. Without it, fewer
    copies verify (the reason for find's default, results/find.md)."""
    paths, group = line_art_copies
    from simbench.match.exact import ExactMatcher

    verified = {}
    for share in (0.0, 0.5):
        extractor = KeypointExtractor(**BRISK, coarse_share=share)
        found = KeypointMethod(extractor, ExactMatcher(), score="min", verify=True).score_pairs(
            extractor.extract(paths).features)
        same = group[found.a] == group[found.b]
        assert same.all(), f"coarse_share={share}: different drawings verified"
        verified[share] = len(found)
    assert verified[0.5] == len(PHOTOS) > verified[0.0], verified


def test_params_and_validation():
    plain, coarse = KeypointExtractor("brisk"), KeypointExtractor("brisk", coarse_share=0.5)
    assert "coarse_share" not in plain.params()  # unchanged features keep their caches and calibration tables
    assert coarse.params() == {**plain.params(), "coarse_share": 0.5, "coarse_sigma": 2.0}
    two = KeypointExtractor("brisk", coarse_share=0.5, coarse_sigma=[2, 4])
    assert two.params() == {**plain.params(), "coarse_share": 0.5, "coarse_sigma": [2.0, 4.0]}
    for bad in ({"coarse_share": 1.5}, {"coarse_share": -0.1}, {"coarse_sigma": 0.0}, {"coarse_sigma": []},
                {"coarse_sigma": [2.0, -1.0]}):
        with pytest.raises(ValueError):
            KeypointExtractor("brisk", **bad)


def test_the_coarse_half_at_half_size_is_the_shrunk_smoothed_pictures_keypoints_mapped_back(line_art_copies, tmp_path):
    """Oracle (coarse_scale 0.5): the coarse rows are what the extractor without a coarse share finds on the smoothed
    picture shrunk to half (area averaging, saved losslessly), their points and sizes mapped back to the working
    scale; the fine rows are those of coarse_scale 1."""
    path = line_art_copies[0][0]
    got = KeypointExtractor(**BRISK, coarse_share=0.4, coarse_scale=0.5).extract([path]).features
    full = KeypointExtractor(**BRISK, coarse_share=0.4).extract([path]).features
    gray, original = decode_gray(path, BRISK["max_size"])
    smoothed = cv2.GaussianBlur(gray, (0, 0), 2.0)
    size = (round(smoothed.shape[1] * 0.5), round(smoothed.shape[0] * 0.5))
    Image.fromarray(cv2.resize(smoothed, size, interpolation=cv2.INTER_AREA)).save(tmp_path / "half.png")
    coarse = KeypointExtractor(**{**BRISK, "max_features": 120}).extract([tmp_path / "half.png"]).features
    n_fine = len(got.descriptors) - len(coarse.descriptors)
    assert n_fine > 0 and len(coarse.descriptors) > 0
    np.testing.assert_array_equal(got.descriptors[:n_fine], full.descriptors[:n_fine])
    np.testing.assert_array_equal(got.descriptors[n_fine:], coarse.descriptors)
    factor = np.float32([smoothed.shape[1] / size[0], smoothed.shape[0] / size[1]])
    working = (coarse.points + 0.5) * factor - 0.5
    to_original = np.array([original[0] / gray.shape[1], original[1] / gray.shape[0]])
    np.testing.assert_allclose(got.points[n_fine:], (working + 0.5) * to_original - 0.5, atol=1e-3)
    np.testing.assert_allclose(got.sizes[n_fine:], coarse.sizes * factor.mean() * to_original.mean(), rtol=1e-5)
    assert KeypointExtractor("brisk", coarse_share=0.5, coarse_scale=0.5).params()["coarse_scale"] == 0.5
    assert "coarse_scale" not in KeypointExtractor("brisk", coarse_share=0.5).params()
    with pytest.raises(ValueError):
        KeypointExtractor("brisk", coarse_scale=0.0)
