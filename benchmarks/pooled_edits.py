"""Recall per edit at precision 0.9, pooled over collections: counts summed, with Wilson's 95% interval.

    python benchmarks/bench_find.py dev cascade --baselines "" --json dev.json
    python benchmarks/bench_find.py holdout cascade --baselines "" --json holdout.json
    python benchmarks/pooled_edits.py dev.json holdout.json

A collection holds few copies of each edit (seven on the report split, three to six on a held-out set), so one
copy moves its recall by 0.14 or more. Pooling the collections nothing was tuned on (the report split and both
held-out sets) counts more copies: per method and part (photo, line art; a tuning collection's halves and
rebuilds count under their part), each edit's true pairs found at their own collection's P0.9 operating point,
summed over the collections, out of all of them (bench_find's per_transform_found_at_p90 rows).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import PARTS, interval_text  # noqa: E402
from simbench.evaluate import wilson_interval  # noqa: E402


def pooled(rows: list[dict]) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    """{(method, part): {edit: (found, copies)}} summed over the rows' collections."""
    out: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        part = next(p for p in PARTS if r["part"].startswith(p))
        for edit, (found, n) in r["per_transform_found_at_p90"].items():
            out[r["method"], part][edit][0] += found
            out[r["method"], part][edit][1] += n
    return {key: {edit: tuple(c) for edit, c in sorted(edits.items())} for key, edits in out.items()}


def table(rows: list[dict]) -> str:
    counts = pooled(rows)
    collections = {}
    for r in rows:
        collections.setdefault(r["method"], set()).add(f"{r['split']}/{r['part']}")
    out = ["| method | part | edit | found / copies | recall (95% interval) |", "|---|---|---|---|---|"]
    for (method, part), edits in counts.items():
        for edit, (found, n) in edits.items():
            out.append(f"| {method} | {part} | {edit} | {found} / {n} | {found / n:.2f} "
                       f"({interval_text(*wilson_interval(found, n))}) |")
    names = "; ".join(f"{m}: {', '.join(sorted(c))}" for m, c in collections.items())
    return f"pooled over {names}\n\n" + "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="bench_find.py dev / tune / holdout --json files")
    args = parser.parse_args(argv)
    rows = [r for f in args.json for table_rows in json.loads(Path(f).read_text()).values() for r in table_rows]
    print(table([r for r in rows if "per_transform_found_at_p90" in r]))


if __name__ == "__main__":
    main()
