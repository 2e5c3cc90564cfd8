"""One tuning yearbook's pairs as a run scored them: every true pair and the best-scoring false ones, with the
placements each pair joins. Tuning split only: the per-pair view behind runs (28) and (29) of results/find.md.

    python benchmarks/bench_find.py yearbook-tune cascade --layouts 5      # the run to look at
    python benchmarks/yearbook_pairs.py --layout 5 [--method cascade] [--false 12] [--work DIR]

Reads the pairs.csv that `yearbook-tune` wrote for that layout and method (under --work, bench_find.py's default),
and builds the layout's placements again (build_yearbook is deterministic) to say which photo each image is,
how it was placed (crop, rotate90, rotate_small; +clip: cut by a clipping path), recoloured or not, and whether the
photo is a flat one. "how" is pairs.csv's method: the stage that scored the pair, or linked.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, school_yearbook, yearbook_name  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.find.yearbook import placement_pairs, true_pairs  # noqa: E402


def pair_table(placements, found: list[dict], n_false: int) -> str:
    """Markdown: every true pair (best first; "-" where the run wrote none), then the n_false best false pairs."""
    truth = true_pairs(placements)
    best: dict[tuple[int, int], tuple[float, str]] = {}
    false = []
    for row, (i, j) in zip(found, placement_pairs(placements, found)):
        score = float(row["score"])
        pair = (min(i, j), max(i, j)) if i is not None and j is not None else None
        if pair not in truth:
            false.append((score, (i, j), row["method"]))
        elif score > best.get(pair, (-1.0, ""))[0]:
            best[pair] = (score, row["method"])

    def side(k):
        if k is None:
            return "(no placement)"
        p = placements[k]
        return f"{k}: photo {p.photo}, {p.how}, {p.colour}{', flat' if p.flat else ''}"

    lines = ["| pair | score | how | one | other |", "|---|---|---|---|---|"]
    for pair in sorted(truth, key=lambda q: -best.get(q, (-1.0,))[0]):
        score, how = best.get(pair, (None, "-"))
        lines.append(f"| true {pair} | {'-' if score is None else f'{score:.3f}'} | {how} | {side(pair[0])} | "
                     f"{side(pair[1])} |")
    for score, (i, j), how in sorted(false, key=lambda f: -f[0])[:n_false]:
        lines.append(f"| false ({i}, {j}) | {score:.3f} | {how} | {side(i)} | {side(j)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", type=int, default=0, help="the build_yearbook seed (bench_find.py --layouts)")
    parser.add_argument("--method", default="cascade")
    parser.add_argument("--false", type=int, default=12, help="how many of the best false pairs to list")
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    args = parser.parse_args(argv)
    name = yearbook_name(TUNE, args.layout)
    pairs_csv = Path(args.work).expanduser() / f"out-{name}-{args.method}" / "pairs.csv"
    if not pairs_csv.exists():
        raise SystemExit(f"{pairs_csv} not found: run `python benchmarks/bench_find.py yearbook-tune {args.method} "
                         f"--layouts {args.layout}` first")
    with open(pairs_csv, newline="") as f:
        found = list(csv.DictReader(f))
    with tempfile.TemporaryDirectory() as pdfs:
        placements = school_yearbook(Path(pdfs), TUNE, args.layout, progress=False)
    print(f"# {pairs_csv}: {len(found)} pairs, {len(placements)} placements, {len(true_pairs(placements))} true pairs")
    print(pair_table(placements, found, args.false))


if __name__ == "__main__":
    main()
