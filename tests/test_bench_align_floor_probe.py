"""benchmarks/align_floor_probe.py --yearbooks' counts: per floor, the proposals kept and the true pairs at find's
threshold that came from a proposal under it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.align_floor_probe import layout_list, yearbook_table  # noqa: E402


def test_layout_list_ranges_and_single_layouts():
    assert layout_list("3-5,9") == [3, 4, 5, 9]
    assert layout_list("1734") == [1734]


def test_yearbook_table_counts_what_each_floor_keeps_and_puts_at_risk(capsys):
    def row(cnn, true, verified=True, score=0.99, method="align"):
        return {"cnn": cnn, "true": true, "verified": verified, "score": score, "method": method}

    rows = [row(0.50, True), row(0.51, True, method="linked"), row(0.60, True),
            row(0.51, True, score=0.5),  # under the threshold: nothing to lose
            row(0.51, True, verified=False),  # align did not verify it
            row(0.40, False), row(None, False)]  # unranked (the keypoints' sake): never dropped
    yearbook_table(rows, 0.95, [0.505, 0.55])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("7 align proposals (5 true), 6 of them ranked by the CNN; 3 true pairs")
    assert lines[0].endswith("their lowest CNN scores: 0.500, 0.510, 0.600")
    # 0.505 keeps 0.51, 0.51, 0.51, 0.60 and the unranked one; loses 0.50 (align alone); 0.55 loses both 0.50 and 0.51.
    assert lines[3:] == ["| 0.505 | 71% | 80% | 1 (1) |", "| 0.55 | 29% | 20% | 2 (1) |"]
