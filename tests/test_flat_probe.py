"""flat_probe's pieces: what many pictures share is dropped before the fit, and a crop of a photo matches it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.flat_probe import coarse_features, pair_match, without_shared  # noqa: E402


def test_a_descriptor_in_many_pictures_is_dropped_and_one_in_two_is_kept():
    """Oracle: built descriptors. Row 0 of every picture is one shared vector (a crest on six pictures); row 1 of
    pictures 0 and 1 is another (a photo placed twice); the rest are far apart."""
    rng = np.random.default_rng(0)
    crest, photo = rng.normal(0, 100, 128).astype(np.float32), rng.normal(0, 100, 128).astype(np.float32)
    features = []
    for k in range(6):
        own = rng.normal(0, 100, (3, 128)).astype(np.float32) + 1000 * (k + 1)
        rows = np.vstack([crest, photo if k < 2 else own[0], own[1:]])
        features.append((np.arange(8, dtype=np.float32).reshape(4, 2), rows, (64, 64)))
    kept = without_shared(features, max_distance=1.0, max_df=4)
    for k, (points, rows, _) in enumerate(kept):
        assert not any(np.array_equal(r, crest) for r in rows), k  # shared by five others: dropped
        assert len(rows) == 3 and len(points) == 3
    assert any(np.array_equal(r, photo) for r in kept[0][1]) and any(np.array_equal(r, photo) for r in kept[1][1])


def test_a_crop_matches_its_photo_and_an_unrelated_photo_does_not(photos, tmp_path):
    whole = Image.fromarray(photos["astronaut"])
    paths = {}
    for name, image in (("whole", whole), ("crop", whole.crop((60, 40, 420, 400)).resize((300, 300))),
                        ("other", Image.fromarray(photos["coffee"]))):
        paths[name] = str(tmp_path / f"{name}.png")
        image.save(paths[name])
    features = {name: coarse_features(path, 256) for name, path in paths.items()}
    inliers, coverage = pair_match(features["whole"], features["crop"], 256)
    assert inliers >= 20 and coverage >= 0.1
    assert pair_match(features["whole"], features["other"], 256)[0] < 8
