"""The generated scale collection (simbench.data.collection): distinct pictures, copies with truth, cached."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from simbench.data.collection import CollectionDataset, scene
from simbench.data.transforms import TRANSFORMS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return CollectionDataset(n_images=40, copy_fraction=0.25, seed=3, workers=2, cache_dir=str(cache)), cache


def test_images_labels_and_truth(built):
    dataset_spec, _ = built
    ds = dataset_spec.load(progress=False)
    assert len(ds) == 40 and ds.name == "collection"
    copies = [i for i, label in enumerate(ds.labels) if label in TRANSFORMS]
    assert len(copies) == 10
    assert set(ds.labels) - set(TRANSFORMS) <= {"reference", "distractor"}
    truth = {tuple(t) for t in ds.truth.tolist()}
    for i in copies:  # every copy is paired with its source original, which is labelled reference
        partners = [a if b == i else b for a, b in truth if i in (a, b)]
        assert any(ds.labels[j] == "reference" for j in partners)
    for i, label in enumerate(ds.labels):
        if label == "distractor":
            assert all(i not in pair for pair in truth)
        with Image.open(ds.paths[i]) as img:
            assert img.mode == "RGB" and max(img.size) <= 768 and min(img.size) >= 16  # rotations grow the canvas


def test_originals_are_different_pictures(built):
    """No two originals are alike: their 16x16 grey thumbnails correlate weakly."""
    ds = built[0].load(progress=False)
    originals = [p for p, label in zip(ds.paths, ds.labels) if label in ("reference", "distractor")]
    thumbs = []
    for p in originals:
        v = np.asarray(Image.open(p).convert("L").resize((16, 16)), np.float64).ravel()
        v -= v.mean()
        thumbs.append(v / np.linalg.norm(v))
    corr = np.array(thumbs) @ np.array(thumbs).T
    np.fill_diagonal(corr, 0)
    assert corr.max() < 0.8


def test_built_once_and_keyed_by_params(built):
    spec, cache = built
    first = spec.load(progress=False)
    stamp = first.paths[0].stat().st_mtime_ns
    again = CollectionDataset(n_images=40, copy_fraction=0.25, seed=3, workers=1, cache_dir=str(cache))
    assert again.root == spec.root  # workers do not change the pictures
    assert again.load(progress=False).paths[0].stat().st_mtime_ns == stamp
    assert CollectionDataset(n_images=40, seed=4, cache_dir=str(cache)).root != spec.root
    assert not list(cache.glob(".collection-*.tmp-*"))  # no half-built folder left behind


def test_scene_is_deterministic_and_sized():
    a = scene(np.random.default_rng([0, 1, 5]), 300)
    b = scene(np.random.default_rng([0, 1, 5]), 300)
    assert a.dtype == np.uint8 and a.shape[2] == 3 and max(a.shape[:2]) == 300
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, scene(np.random.default_rng([0, 1, 6]), 300)[: a.shape[0], : a.shape[1]])


def test_bad_parameters():
    for kwargs in ({"n_images": 0}, {"copy_fraction": 1.0}, {"long_side": 10}, {"transforms": ["melt"]}):
        with pytest.raises(ValueError):
            CollectionDataset(**kwargs)
