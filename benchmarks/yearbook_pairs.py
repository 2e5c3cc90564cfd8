"""One tuning yearbook's pairs as a run scored them: every true pair and the best-scoring false ones, with the
placements each pair joins. Tuning split only: the per-pair view behind runs (28) and (29) of results/find.md.

    python benchmarks/bench_find.py yearbook-tune cascade --layouts 5      # the run to look at
    python benchmarks/yearbook_pairs.py --layout 5 [--method cascade] [--false 12] [--work DIR]

Reads the pairs.csv that `yearbook-tune` wrote for that layout and method (under --work, bench_find.py's default),
and builds the layout's placements again (build_yearbook is deterministic) to say which photo each image is,
how it was placed (crop, rotate90, rotate_small; +clip: cut by a clipping path), recoloured or not, and whether the
photo is a flat one. "how" is pairs.csv's method: the stage that scored the pair, or linked. "own CNN": the
CNN stage's calibrated score for the pair itself, from the run's evidence.npz ("-": not among the CNN's pairs);
for a linked pair, what the CNN says of the two pictures beside what the chain says.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, school_yearbook, yearbook_name  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.find.yearbook import placement_pairs, true_pairs  # noqa: E402


def pair_table(placements, found: list[dict], n_false: int, own_cnn: list | None = None) -> str:
    """Markdown: every true pair (best first; "-" where the run wrote none), then the n_false best false pairs.
    own_cnn: per row of `found`, the CNN's own score for the pair (None: none)."""
    truth = true_pairs(placements)
    best: dict[tuple[int, int], tuple[float, str, float | None]] = {}
    false = []
    own_cnn = own_cnn or [None] * len(found)
    for row, (i, j), cnn in zip(found, placement_pairs(placements, found), own_cnn):
        score = float(row["score"])
        pair = (min(i, j), max(i, j)) if i is not None and j is not None else None
        if pair not in truth:
            false.append((score, (i, j), row["method"], cnn))
        elif score > best.get(pair, (-1.0, "", None))[0]:
            best[pair] = (score, row["method"], cnn)

    def side(k):
        if k is None:
            return "(no placement)"
        p = placements[k]
        return f"{k}: photo {p.photo}, {p.how}, {p.colour}{', flat' if p.flat else ''}"

    def value(x):
        return "-" if x is None else f"{x:.3f}"

    lines = ["| pair | score | how | one | other | own CNN |", "|---|---|---|---|---|---|"]
    for pair in sorted(truth, key=lambda q: -best.get(q, (-1.0,))[0]):
        score, how, cnn = best.get(pair, (None, "-", None))
        lines.append(f"| true {pair} | {value(score)} | {how} | {side(pair[0])} | {side(pair[1])} | {value(cnn)} |")
    for score, (i, j), how, cnn in sorted(false, key=lambda f: -f[0])[:n_false]:
        lines.append(f"| false ({i}, {j}) | {score:.3f} | {how} | {side(i)} | {side(j)} | {value(cnn)} |")
    return "\n".join(lines)


def own_cnn_scores(out: Path, found: list[dict]) -> list:
    """Per pairs.csv row, the CNN's calibrated score for that pair from the run's evidence.npz (None: not one of
    the CNN's pairs, or no evidence.npz)."""
    if not (out / "evidence.npz").exists():
        return [None] * len(found)
    with np.load(out / "evidence.npz", allow_pickle=True) as evidence:
        index = {str(item): k for k, item in enumerate(evidence["items"])}
        per_pair = {(a, b): e for a, b, e in json.loads(str(evidence["pair_evidence"]))}
    out_scores = []
    for row in found:
        a, b = index.get(row["a"]), index.get(row["b"])
        e = per_pair.get((min(a, b), max(a, b)), {}) if a is not None and b is not None else {}
        out_scores.append(e.get("cnn", {}).get("score"))
    return out_scores


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
    print(pair_table(placements, found, args.false, own_cnn_scores(pairs_csv.parent, found)))


if __name__ == "__main__":
    main()
