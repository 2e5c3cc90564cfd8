"""frame_probe's views: the grey, equalised one undoes a monotone recolouring; vectors average as the extractor's."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.frame_probe import averaged, grey_equalised  # noqa: E402


def test_grey_equalised_undoes_a_monotone_recolouring():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 100, size=(40, 60)).astype(np.uint8)
    picture = Image.fromarray(np.stack([grey] * 3, axis=-1))
    # A toned, brighter copy: each channel a strictly increasing map of the grey level, so grey stays monotone.
    toned = Image.fromarray(np.stack([2 * grey + 40, 2 * grey + 20, grey + 10], axis=-1).astype(np.uint8))
    a, b = np.asarray(grey_equalised(picture)), np.asarray(grey_equalised(toned))
    assert a.shape == (40, 60, 3) and (a[..., 0] == a[..., 2]).all()
    assert np.array_equal(a, b)
    assert a.max() > 200 and a.min() < 10  # stretched over the whole range
    inverted = Image.fromarray(np.stack([255 - grey] * 3, axis=-1))  # not monotone increasing: not undone
    assert not np.array_equal(np.asarray(grey_equalised(inverted)), a)


def test_averaged_is_the_normalised_mean_of_unit_vectors():
    a = np.array([[3.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 5.0], [0.0, 1.0]])
    got = averaged(a, b)
    assert np.allclose(got, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]])
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0)
