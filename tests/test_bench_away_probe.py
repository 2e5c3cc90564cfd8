"""benchmarks/away_probe.py: its counts by hand, and its pairs on crest_probe's stamped photos."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.away_probe import FLOORS, _row, keypoint_pairs  # noqa: E402
from benchmarks.crest_probe import COPY_PAIR, crest_images  # noqa: E402


def test_a_row_counts_true_and_false_pairs_below_each_floor_the_strong_ones_in_brackets():
    y = np.array([True, True, False, False, True])
    strong = np.array([True, False, True, False, True])
    away = np.array([0.9, 0.05, -0.2, 0.15, np.nan])
    cells = [c.strip() for c in _row("t", y, strong, away).split("|")[1:-1]]
    assert cells[0] == "t" and cells[1] == "3 / 2 (2 / 1)"
    want = {-0.1: "0 / 1 (0 / 1)", 0.0: "0 / 1 (0 / 1)", 0.1: "1 / 1 (0 / 1)", 0.2: "1 / 2 (0 / 1)",
            0.3: "1 / 2 (0 / 1)"}
    assert cells[2:-1] == [want[f] for f in FLOORS]
    assert cells[-1] == "1 / 0 (1 / 0)"  # NaN: cannot judge


def test_on_stamped_crests_the_copy_agrees_away_from_its_matches_and_crest_pairs_do_not(tmp_path):
    """With the overlap gate off, the keypoint stage verifies crest pairs of different flat photos; away from their
    matches only the copy agrees."""
    folder = crest_images(tmp_path / "crest", flat=True)
    items, found, away = keypoint_pairs([folder], None, tmp_path, ["keypoints.min_overlap_agreement=0"])
    names = [Path(item.display).stem for item in items]
    by_pair = {tuple(sorted((names[a], names[b]))): v for a, b, v in zip(found.a, found.b, away)}
    assert len(by_pair) > 1 and by_pair[COPY_PAIR] > 0.5
    assert all(v < 0.2 for pair, v in by_pair.items() if pair != COPY_PAIR)
