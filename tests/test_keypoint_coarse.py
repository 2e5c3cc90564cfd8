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
