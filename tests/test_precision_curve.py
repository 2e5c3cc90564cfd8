"""benchmarks/precision_curve.py: the best precision at each recall, against a count by hand."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.precision_curve import best_precision  # noqa: E402


def test_best_precision_at_each_recall():
    # Four images, true pairs (0, 1) and (2, 3). Ranked: true, false, true (and one more false).
    ds = SimpleNamespace(paths=[Path(f"/x/i{k}.jpg") for k in range(4)], truth=np.array([[0, 1], [2, 3]]),
                         n_true_pairs=2)
    found = [{"a": "/run/i0.jpg", "b": "/run/i1.jpg", "score": "0.9"},
             {"a": "/run/i0.jpg", "b": "/run/i2.jpg", "score": "0.8"},
             {"a": "/run/i3.jpg", "b": "/run/i2.jpg", "score": "0.7"},
             {"a": "/run/i1.jpg", "b": "/run/i3.jpg", "score": "0.6"}]
    got = dict(best_precision(found, ds, recalls=(0.5, 1.0)))
    assert got[0.5] == 1.0  # the first pair alone: recall 0.5 at precision 1
    assert got[1.0] == 2 / 3  # both true pairs only once the false one ranked between is counted
    assert np.isnan(dict(best_precision(found[:2], ds, recalls=(1.0,)))[1.0])  # recall 1 never reached
