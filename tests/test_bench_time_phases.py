"""benchmarks/time_phases.py's table: one row per step, the older code's missing steps shown as such."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.time_phases import table  # noqa: E402


def test_table_rows_columns_and_the_rest_of_the_run():
    before = {"total": 100.0, "extract_into_store (keypoints)": 30.0, "extract_into_store (cnn)": 60.0}
    now = {"total": 150.0, "extract_into_store (keypoints)": 70.0, "extract_into_store (cnn)": 40.0,
           "verify_proposed (align)": 25.0, "stage_pairs (align)": 0.0}
    lines = table({"64ceccb": before, "this checkout": now}).splitlines()
    assert lines[0] == "| step | 64ceccb (s) | this checkout (s) |"
    assert lines[2] == "| whole run | 100.0 | 150.0 |"
    # Largest first (by either column); a step the older code lacks shows "-"; an empty one is left out.
    assert lines[3:6] == ["| extract_into_store (keypoints) | 30.0 | 70.0 |", "| extract_into_store (cnn) | 60.0 | 40.0 |",
                          "| verify_proposed (align) | - | 25.0 |"]
    assert len(lines) == 7 and lines[6].endswith("| 10.0 | 15.0 |")  # what no step holds: 100 - 90, 150 - 135
