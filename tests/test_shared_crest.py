"""Different photos that share only a crest stamped into their corner (the school yearbook's logo), through the whole
`simbench find` with its defaults: scikit-image photos, and the same photos made flat as the yearbook makes a
quarter of its photos (blurred, lower contrast: few keypoints of their own). results/find.md, runs (29) and after:
on the tuning yearbooks most keypoints of a flat photo lie on the crest, and pairs of different flat photos are
verified by it; this is where the default loses yearbook precision.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

import skimage.data as skdata

from simbench.find import cascade
from simbench.find.pipeline import find
from simbench.find.yearbook import LOGO_WIDTH, _flatten, school_logo

PHOTOS = [("coffee", 600), ("chelsea", 520), ("rocket", 560), ("astronaut", 500), ("camera", 600), ("coins", 560)]
COPY = ("coffee", 560, (60, 40, 560, 380))  # a crop of the first photo, at another scale


def _stamped(name: str, width: int, flat: bool, crop: tuple | None = None) -> Image.Image:
    """The photo at `width` px (cropped first), flattened or not, the crest stamped into its bottom right corner
    at LOGO_WIDTH of its width, as the yearbook stamps it."""
    photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    photo = photo.crop(crop) if crop else photo
    photo = photo.resize((width, round(width * photo.height / photo.width)))
    photo = _flatten(photo) if flat else photo
    side = round(LOGO_WIDTH * photo.width)
    crest = school_logo().resize((side, side))
    photo.paste(crest, (photo.width - side - 10, photo.height - side - 10), crest)
    return photo


def _images(root: Path, flat: bool) -> Path:
    """The stamped photos and the copy, as root/in/<k>-<name>.png and root/in/copy-<name>.png."""
    (root / "in").mkdir()
    for k, (name, width) in enumerate(PHOTOS):
        _stamped(name, width, flat).save(root / "in" / f"{k}-{name}.png")
    name, width, crop = COPY
    _stamped(name, width, flat, crop).save(root / "in" / f"copy-{name}.png")
    return root / "in"


def _found(folder: Path) -> tuple[dict, float]:
    """{(stem, stem): score} of every pair `find` writes over the folder, and the threshold."""
    cfg = cascade.make_config("cascade")
    find([folder], folder.parent / "out", cfg, progress=False)
    with open(folder.parent / "out" / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {tuple(sorted((Path(r["a"]).stem, Path(r["b"]).stem))): float(r["score"]) for r in rows}, float(cfg.threshold)


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    return _found(_images(tmp_path_factory.mktemp("textured"), flat=False))


@pytest.fixture(scope="module")
def flat_images(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("flat"), flat=True)


@pytest.fixture(scope="module")
def flat(flat_images):
    return _found(flat_images)


def _copy_pair(pairs: dict) -> float:
    return pairs.get(tuple(sorted(("0-coffee", "copy-coffee"))), 0.0)


def _other_pairs_above(pairs: dict, threshold: float) -> dict:
    return {p: s for p, s in pairs.items() if s >= threshold and p != tuple(sorted(("0-coffee", "copy-coffee")))}


def test_the_crest_does_not_pair_different_textured_photos_and_the_copy_pairs(textured):
    pairs, threshold = textured
    assert _copy_pair(pairs) >= threshold
    assert _other_pairs_above(pairs, 0.5) == {}


def test_the_copy_of_a_flat_photo_still_pairs(flat):
    pairs, threshold = flat
    assert _copy_pair(pairs) >= threshold


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="known failure: the keypoints verify different flat photos by the crest they share, and "
                          "linking joins them (results/find.md, after run 29)")
def test_the_crest_does_not_pair_different_flat_photos(flat):
    pairs, threshold = flat
    assert _other_pairs_above(pairs, threshold) == {}


def test_a_coverage_against_the_pictures_area_drops_the_crest_pairs_at_the_keypoint_stage(flat_images):
    """keypoints.method.coverage_extent=1 (a match covers at most its share of the picture) with a floor of 0.015:
    find's keypoint stage (no calibration) keeps the crop and none of the pairs of different flat photos that it
    verifies by default. The values show what the option does on this case; they were not chosen on the tuning
    split, and the option is off (results/find.md, after run 29)."""
    paths = sorted(flat_images.iterdir())
    names = [p.stem for p in paths]

    def kept(overrides):
        stage = cascade.build_stages(cascade.make_config("keypoints", overrides), calibrations={}, quiet=True)[0]
        pairs = stage.method.score_pairs(stage.extractor.extract(paths).features)
        return {tuple(sorted((names[a], names[b]))) for a, b in zip(pairs.a.tolist(), pairs.b.tolist())}

    copy = tuple(sorted(("0-coffee", "copy-coffee")))
    default = kept([])
    assert copy in default and default - {copy}  # the default verifies different photos too
    assert kept(["keypoints.method.coverage_extent=1.0", "keypoints.method.min_coverage=0.015"]) == {copy}
