"""benchmarks.common's interleaved timing: the calls' order and the ratios, against counts by hand."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import interleaved_ratio, ratio_text  # noqa: E402


def test_interleaved_ratio_takes_turns_and_divides_adjacent_runs(capsys):
    calls = []
    off_seconds, on_seconds = iter([10.0, 20.0, 10.0]), iter([11.0, 30.0, 12.0])

    def off():
        calls.append("off")
        return next(off_seconds)

    def on():
        calls.append("on")
        return next(on_seconds)

    got = interleaved_ratio(off, on, 3, names=("plain", "with it"))
    assert calls == ["off", "on"] * 3
    assert got["off"] == [10.0, 20.0, 10.0] and got["on"] == [11.0, 30.0, 12.0]
    assert got["ratios"] == [1.1, 1.5, 1.2]
    assert "round 2: with it" in capsys.readouterr().out
    assert ratio_text(got) == "off 10.0 s, on 12.0 s (medians); on / off 1.200 (median; range 1.100-1.500)"
