"""bench_find's tables: the tuning runs' means per method and part (against a sum by hand), the dev rows' intervals."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import _dev_row, dev_table, interval_text, means_table  # noqa: E402
from simbench.evaluate import wilson_interval  # noqa: E402
from simbench.types import ScoredPairs  # noqa: E402


def test_means_per_method_and_part():
    def row(method, part, uap, p90, **at):
        return {"method": method, "part": part, "uap": uap, "recall_at_p90": p90, **at}

    rows = [row("cascade", "photo-half0", 0.9, 0.8, precision=1.0, recall=0.5),
            row("cascade", "photo-seed1-w0", 0.7, 0.6, precision=0.8, recall=0.3),
            row("cascade", "lineart-half0", 0.5, 0.4, precision=0.9, recall=0.2),
            row("phash", "photo-half0", 0.3, 0.2)]
    lines = means_table(rows).splitlines()[2:]
    assert lines == ["| cascade | photo | 2 | 0.800 | 0.700 | 0.900 | 0.400 |",
                     "| cascade | lineart | 1 | 0.500 | 0.400 | 0.900 | 0.200 |",
                     "| phash | photo | 1 | 0.300 | 0.200 | - | - |"]


def test_dev_rows_intervals_and_the_edits_short_at_p90():
    class Tiny(list):  # a dataset as _dev_row reads it: its images' labels, truth and true pairs
        truth = np.array([[0, 1], [0, 2], [3, 4], [3, 5]])
        n_true_pairs = 4

    ds = Tiny(["reference", "crop", "rotate", "reference", "crop", "rotate", "distractor"])
    ds.labels = list(ds)
    pairs = ScoredPairs(np.array([0, 0, 3, 3, 1]), np.array([1, 2, 4, 6, 6]), np.array([0.9, 0.8, 0.7, 0.6, 0.2]))
    row = _dev_row("m", "report", "photo", ds, pairs, 0.75, 1.0)
    # precision stays >= 0.9 down to 0.7 (three true, none false): every edit's pair but rotate's (3, 5), never predicted
    assert row["per_transform_found_at_p90"] == {"crop": (2, 2), "rotate": (1, 2)}
    for key in ("uap", "recall_at_p90"):
        lo, hi = row[f"{key}_interval"]
        assert 0 <= lo <= row[key] <= hi <= 1
    last = dev_table([row]).splitlines()[-1]
    assert last.startswith(f"| report/photo | m | {row['uap']:.3f} ({interval_text(*row['uap_interval'])}) | ")
    assert last.endswith(f"| rotate 1/2 ({interval_text(*wilson_interval(1, 2))}) |")


def test_rows_at_other_thresholds_and_their_means():
    class Tiny(list):
        truth = np.array([[0, 1], [0, 2], [3, 4], [3, 5]])
        n_true_pairs = 4

    ds = Tiny(["reference", "crop", "rotate", "reference", "crop", "rotate", "distractor"])
    ds.labels = list(ds)
    pairs = ScoredPairs(np.array([0, 0, 3, 3, 1]), np.array([1, 2, 4, 6, 6]), np.array([0.9, 0.8, 0.7, 0.6, 0.2]))
    row = _dev_row("m", "tune", "photo-half0", ds, pairs, 0.75, 1.0, also_at=(0.65, 0.5))
    # by hand: at 0.65 three true of three called (recall 3/4); at 0.5 also (3, 6), false: 3 of 4 called
    assert row["precision_at"] == {0.65: 1.0, 0.5: 0.75} and row["recall_at"] == {0.65: 0.75, 0.5: 0.75}
    assert row["at"] == "0.65: 1.000 / 0.750, 0.5: 0.750 / 0.750"
    assert "precision_at" not in _dev_row("m", "tune", "photo-half0", ds, pairs, 0.75, 1.0)
    other = {**row, "part": "photo-half1", "precision_at": {0.65: 0.5, 0.5: 0.25}, "recall_at": {0.65: 0.25, 0.5: 1.0}}
    header, _, line = means_table([row, other]).splitlines()
    assert header.endswith("| precision @ 0.65 | recall @ 0.65 | precision @ 0.5 | recall @ 0.5 |")
    assert line.endswith("| 0.750 | 0.500 | 0.500 | 0.875 |")
