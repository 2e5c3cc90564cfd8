"""benchmarks/scale_probe.py: its matching against a plain loop, and its count of verified reference-copy pairs on
a small generated collection."""
import numpy as np
import pytest
from PIL import Image

from benchmarks.scale_probe import matches, probe
from simbench.data.dataset import Dataset


def test_binary_matches_are_each_rows_nearest_within_the_distance():
    rng = np.random.default_rng(0)
    da = rng.integers(0, 256, (40, 64), dtype=np.uint8)
    db = rng.integers(0, 256, (50, 64), dtype=np.uint8)
    db[:20] = da[:20] ^ (rng.random((20, 64)) < 0.03).astype(np.uint8)  # near copies of the first 20 rows
    bits = np.unpackbits(da[:, None, :] ^ db[None, :, :], axis=2).sum(axis=2)
    expected = {(i, int(bits[i].argmin())) for i in range(len(da)) if bits[i].min() <= 31}
    assert set(matches(da, db, True, 31)) == expected
    assert len(expected) >= 20


def test_float_matches_pass_lowes_ratio():
    rng = np.random.default_rng(1)
    da = rng.random((30, 128), dtype=np.float32)
    db = np.vstack([da[:10] + 0.001, rng.random((30, 128), dtype=np.float32)])
    found = set(matches(da, db, False, 0))
    assert {(i, i) for i in range(10)} <= found
    for i, j in found:
        d = np.linalg.norm(db - da[i], axis=1)
        first, second = np.sort(d)[:2]
        assert j == d.argmin() and first < 0.85 * second


@pytest.fixture
def collection(tmp_path):
    from skimage import data

    reference = Image.fromarray(data.astronaut())
    copy = reference.resize((400, 400), Image.Resampling.LANCZOS)  # the same picture, smaller
    other = Image.fromarray(data.coffee())  # labelled a copy, but another picture: nothing may verify it
    paths = []
    for name, im in (("r000_reference", reference), ("r000_0_downscale", copy), ("r000_1_paste", other)):
        paths.append(tmp_path / f"{name}.jpg")
        im.save(paths[-1], quality=90)
    return Dataset("probe", tmp_path, paths, np.array([[0, 1], [0, 2]]), ["reference", "downscale", "paste"])


def test_probe_counts_the_reference_copy_pairs_each_detector_verifies(collection):
    from hydra.utils import instantiate

    from simbench.find import cascade

    cfg = cascade.make_config()
    detectors = {"brisk": (instantiate(cfg.keypoints.extractor), True),
                 "sift": (instantiate(cfg.blobs.extractor), False)}
    got = probe(collection, detectors, int(cfg.keypoints.method.distance_threshold))
    assert got["pairs"] == {"downscale": 1, "paste": 1}
    for name in detectors:  # a photograph at 0.8 of its size is verified, a different picture is not
        assert got[name]["downscale"] == 1 and got[name]["paste"] == 0, name
