"""benchmarks/score_bands.py: precision per band of scores, against counts by hand."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import interval_text  # noqa: E402
from benchmarks.score_bands import band_rows, table  # noqa: E402
from simbench.evaluate import wilson_interval  # noqa: E402


def test_bands_count_pairs_true_and_linked_by_hand():
    scores = np.array([0.3, 0.6, 0.7, 0.85, 0.93, 0.95, 0.98, 0.99, 1.0, 0.999])
    is_true = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 1], bool)
    linked = np.array([0, 1, 0, 0, 1, 0, 0, 1, 0, 0], bool)
    rows = band_rows(scores, is_true, linked)
    # [0.5, 0.8): 0.6 (true, linked), 0.7; [0.8, 0.9): 0.85; [0.9, 0.95): 0.93 (true, linked); [0.95, 0.99): 0.95 (true),
    # 0.98; [0.99, 1]: 0.99 (true, linked), 1.0 and 0.999 (true); 0.3 is below every band
    assert [(r["pairs"], r["true"], r["linked"], r["linked_true"]) for r in rows] == [
        (2, 1, 1, 1), (1, 0, 0, 0), (1, 1, 1, 1), (2, 1, 0, 0), (3, 3, 1, 1)]
    assert [r["band"] for r in rows] == [(0.5, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 0.99), (0.99, 1.0)]
    assert rows[3]["precision"] == 0.5 and rows[3]["interval"] == wilson_interval(1, 2)
    assert math.isclose(rows[4]["mean_score"], (0.99 + 1.0 + 0.999) / 3)
    empty = band_rows(np.array([0.1]), np.array([True]), np.array([False]))
    assert all(r["pairs"] == 0 and math.isnan(r["precision"]) for r in empty)
    lines = table("x", rows).splitlines()
    assert lines[2] == f"| [0.5, 0.8) | 2 | 1 | 0.500 ({interval_text(*wilson_interval(1, 2))}) | 0.650 | 1 (1) |"
    assert lines[-1].startswith("| [0.99, 1] | 3 | 3 | 1.000 (")
    assert table("x", empty).splitlines()[2] == "| [0.5, 0.8) | 0 | 0 | - | - | 0 (0) |"


def test_labels_of_a_half_read_by_file_name():
    from types import SimpleNamespace

    from benchmarks.bench_find import fold_rows
    from benchmarks.score_bands import dev_labels, tuning_half

    # two groups (0,1,2) and (3,4), and 5 alone: each half keeps whole groups
    ds = SimpleNamespace(paths=[Path(f"/x/images/{i}.jpg") for i in range(6)], truth=[[0, 1], [0, 2], [3, 4]])
    for h in (0, 1):
        half = tuning_half(ds, h)
        kept = fold_rows(6, np.asarray(ds.truth), h)
        assert [p.name for p in half.paths] == [f"{i}.jpg" for i in kept]
        names = [p.name for p in half.paths]
        found = [{"a": f"/run/{a}", "b": f"/run/{b}", "score": "0.9"} for a in names for b in names if a < b]
        truth = {tuple(sorted(p)) for p in np.asarray(ds.truth).tolist()}
        expected = [tuple(sorted((int(Path(r["a"]).stem), int(Path(r["b"]).stem)))) in truth for r in found]
        assert dev_labels(found, half).tolist() == expected
