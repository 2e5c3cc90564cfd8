"""bench_find.means_table: the tuning runs' means per method and part, against a sum by hand."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import means_table  # noqa: E402


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
