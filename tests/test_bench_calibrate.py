"""bench_find.copied_about: a calibration file fitted with --stages names the commands that made what it copied,
each once, without quoting the previous file's whole "about" (which nested one level deeper with every such run)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import copied_about  # noqa: E402


def test_copied_about_names_each_earlier_command_once_and_does_not_nest():
    first = "fits; made by `calibrate --seeds 1,2`"
    second = "fits; made by `calibrate --stages align`" + copied_about("its other tables", first)
    third = "fits; made by `calibrate --stages align`" + copied_about("its other tables", second)
    assert second == ("fits; made by `calibrate --stages align`; its other tables copied from the shipped file, itself "
                      "made by: `calibrate --seeds 1,2`")
    said = copied_about("its other tables and the fusion", third)
    assert said == ("; its other tables and the fusion copied from the shipped file, itself made by: "
                    "`calibrate --stages align`; `calibrate --seeds 1,2`")
    assert copied_about("its other tables", "no commands here").endswith("made by: (not said)")
