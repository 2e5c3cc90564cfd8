"""How precision runs along recall in one `bench_find.py dev` run: the best precision at recall >= r.

    python benchmarks/precision_curve.py report lineart [--method cascade] [--work DIR]

Reads the pairs.csv that `bench_find.py dev` left in --work (out-dev-SPLIT-PART-METHOD) and scores it against
the devset collection's truth, as `dev` does (simbench.evaluate). Recall at precision 0.9 is one point of
this curve: where the curve runs close to 0.9 over a range of recall, a small change in precision moves that
point a long way, and this shows whether it does. Nothing is run or fitted.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import PARTS, dev_set  # noqa: E402
from benchmarks.score_bands import dev_labels  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.evaluate import precision_recall_curve  # noqa: E402

RECALLS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)


def best_precision(found: list[dict], ds, recalls=RECALLS) -> list[tuple[float, float]]:
    """[(r, the best precision at recall >= r, nan when never reached)] of found pairs (pairs.csv rows)."""
    score = np.array([float(r["score"]) for r in found])
    precision, recall = precision_recall_curve(score, dev_labels(found, ds), ds.n_true_pairs)[:2]
    return [(r, float(precision[recall >= r].max()) if np.any(recall >= r) else float("nan")) for r in recalls]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", choices=("tune", "report"))
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--method", default="cascade")
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))  # bench_find.py's
    args = parser.parse_args(argv)
    out = Path(args.work).expanduser() / f"out-dev-{args.split}-{args.part}-{args.method}" / "pairs.csv"
    if not out.is_file():
        raise SystemExit(f"{out} not found: run `python benchmarks/bench_find.py --work {args.work} dev` first")
    with open(out, newline="") as f:
        found = list(csv.DictReader(f))
    print(f"{args.split}/{args.part}, find --method {args.method} ({out}):")
    for r, p in best_precision(found, dev_set(args.split, args.part, False)):
        print(f"  recall >= {r:.2f}: best precision {p:.3f}")


if __name__ == "__main__":
    main()
