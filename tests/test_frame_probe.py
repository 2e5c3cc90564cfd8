"""frame_probe's averaged vectors are the extractor's mean of views."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.frame_probe import averaged  # noqa: E402


def test_averaged_is_the_normalised_mean_of_unit_vectors():
    a = np.array([[3.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 5.0], [0.0, 1.0]])
    got = averaged(a, b)
    assert np.allclose(got, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]])
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0)
