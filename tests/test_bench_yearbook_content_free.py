"""benchmarks/yearbook_content_free.py: its counts against hand-built placements, its layout lists."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.yearbook_content_free import counts, layouts_of  # noqa: E402
from simbench.find.yearbook import Placement  # noqa: E402


def test_counts_sum_the_content_free_placements_and_the_true_pairs_they_touch():
    def book(details_by_photo):
        return [Placement("y.pdf", page, (0, 0, 1, 1), photo, "crop", detail=d)
                for page, (photo, d) in enumerate(details_by_photo, 1)]

    a = book([(0, 9.0), (0, 1.0), (0, 9.0), (1, 0.0)])  # 3 true pairs, two of them with placement 2; 2 content-free
    b = book([(0, 9.0), (0, 9.0)])                      # 1 true pair, none left out
    assert counts([a, b]) == {"placements": 6, "content_free": 2, "true_pairs": 4, "left_out": 2}
    assert counts([]) == {"placements": 0, "content_free": 0, "true_pairs": 0, "left_out": 0}


def test_layouts_as_a_range_or_a_list():
    assert layouts_of("1926-1929") == [1926, 1927, 1928, 1929]
    assert layouts_of("0,2,3") == [0, 2, 3]
