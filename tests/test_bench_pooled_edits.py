"""benchmarks/pooled_edits.py: per-edit counts summed over collections, against sums by hand."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import interval_text  # noqa: E402
from benchmarks.pooled_edits import main, pooled  # noqa: E402
from simbench.evaluate import wilson_interval  # noqa: E402


def _row(split, part, found, method="find --method cascade"):
    return {"method": method, "split": split, "part": part, "per_transform_found_at_p90": found}


def test_counts_summed_per_method_and_part(tmp_path, capsys):
    dev = [_row("report", "photo", {"chain3": [5, 7], "crop": [7, 7]}),
           _row("report", "lineart", {"chain3": [6, 7]}),
           _row("report", "photo", {"chain3": [1, 7]}, method="ImageHash phash")]
    holdout = [_row("holdout1", "photo", {"chain3": [3, 3], "crop": [2, 3]}),
               _row("tune", "photo-seed1-w0", {"chain3": [4, 5]})]  # a tuning rebuild counts under its part
    assert pooled(dev + holdout) == {("find --method cascade", "photo"): {"chain3": (12, 15), "crop": (9, 10)},
                                     ("find --method cascade", "lineart"): {"chain3": (6, 7)},
                                     ("ImageHash phash", "photo"): {"chain3": (1, 7)}}
    files = []
    for name, rows in (("dev", dev), ("holdout", holdout)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({name: rows}))
    main([str(f) for f in files])
    printed = capsys.readouterr().out
    assert f"| find --method cascade | photo | chain3 | 12 / 15 | 0.80 ({interval_text(*wilson_interval(12, 15))}) |" in printed
    assert "| ImageHash phash | photo | chain3 | 1 / 7 | 0.14 (" in printed
