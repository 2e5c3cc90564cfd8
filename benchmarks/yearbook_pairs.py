"""One tuning yearbook's pairs as a run scored them: every true pair and the best-scoring false ones, with the
placements each pair joins. Tuning split only: the per-pair view behind runs (28) and (29) of results/find.md.

    python benchmarks/bench_find.py yearbook-tune cascade --layouts 5      # the run to look at
    python benchmarks/yearbook_pairs.py --layout 5 [--method cascade] [--false 12] [--work DIR]

Reads the pairs.csv that `yearbook-tune` wrote for that layout and method (under --work, bench_find.py's default),
and builds the layout's placements again (build_yearbook is deterministic) to say which photo each image is,
how it was placed (crop, rotate90, rotate_small; +clip: cut by a clipping path), recoloured or not, and whether the
photo is a flat one. "how" is pairs.csv's method: the stage that scored the pair, or linked. From the run's
evidence.npz, for the pair itself ("-": none): "keypoints", the verified fit's inliers (rows: a point whose plain
and mirrored descriptors both fit counts twice) and whether it is mirrored; "own CNN", the CNN stage's calibrated
score and the cosine (for a linked pair, what the CNN says of the two pictures beside what the chain says). Under
the table: how many pairs only the CNN scored have an own CNN score of 0.8 or more, true and false; then the false
pairs scoring 0.95 or more, by "how", each with the raw signal of every stage that found it itself (runs 55 to 58).
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, labelled_pairs, school_yearbook, yearbook_name  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.find.outputs import read_evidence, read_pair_evidence  # noqa: E402
from simbench.find.yearbook import content_free, placement_pairs, true_pairs  # noqa: E402


def pair_table(placements, found: list[dict], n_false: int, evidence: list | None = None) -> str:
    """Markdown: every true pair (best first; "-" where the run wrote none), then the n_false best false pairs.
    evidence: per row of `found`, the pair's evidence (`pair_evidence`; {}: none)."""
    truth = true_pairs(placements)
    best: dict[tuple[int, int], tuple[float, str, dict]] = {}
    false = []
    evidence = evidence or [{}] * len(found)
    for row, (i, j), e in zip(found, placement_pairs(placements, found), evidence):
        score = float(row["score"])
        pair = (min(i, j), max(i, j)) if i is not None and j is not None else None
        if pair not in truth:
            false.append((score, (i, j), row["method"], e))
        elif score > best.get(pair, (-1.0, "", {}))[0]:
            best[pair] = (score, row["method"], e)

    def side(k):
        if k is None:
            return "(no placement)"
        p = placements[k]
        return (f"{k}: photo {p.photo}, {p.how}, {p.colour}{', flat' if p.flat else ''}"
                f"{', content-free' if content_free(p) else ''}")

    def keypoints(e):
        k = e.get("keypoints")
        return f"{k['inliers']} inliers{', mirrored' if k.get('flipped') else ''}" if k else "-"

    def cnn(e):
        c = e.get("cnn")
        return f"{c['score']:.3f}, cosine {c['cosine']:.2f}" if c else "-"

    lines = ["| pair | score | how | one | other | keypoints | own CNN |", "|---|---|---|---|---|---|---|"]
    for pair in sorted(truth, key=lambda q: -best.get(q, (-1.0,))[0]):
        score, how, e = best.get(pair, (None, "-", {}))
        lines.append(f"| true {pair} | {'-' if score is None else f'{score:.3f}'} | {how} | {side(pair[0])} | "
                     f"{side(pair[1])} | {keypoints(e)} | {cnn(e)} |")
    for score, (i, j), how, e in sorted(false, key=lambda f: -f[0])[:n_false]:
        lines.append(f"| false ({i}, {j}) | {score:.3f} | {how} | {side(i)} | {side(j)} | {keypoints(e)} | "
                     f"{cnn(e)} |")
    return "\n".join(lines)


def cnn_only_counts(placements, found: list[dict], evidence: list[dict], at: float = 0.8) -> tuple[int, int]:
    """How many rows that only the CNN scored (pairs.csv method "cnn") have an own CNN score >= at: (true, false).
    What promoting such pairs would gain and cost (results/find.md, after run 41)."""
    book = labelled_pairs(placements, found)  # content-free placements' pairs left out, as bench_find's
    counted = [pair is not None for (row, e), (_, pair) in zip(book.scored_rows(list(zip(found, evidence))), book.rows)
               if row["method"] == "cnn" and e.get("cnn", {}).get("score", -1.0) >= at]
    return sum(counted), len(counted) - sum(counted)


def false_pairs_by_stage(placements, found: list[dict], out: Path, at: float = 0.95) -> str:
    """The false pairs scoring >= at: how many, by pairs.csv's method, and each with the raw signal of every stage
    that found the pair itself (the run's evidence.npz)."""
    truth = true_pairs(placements)
    items, raw, _ = read_evidence(out / "evidence.npz")
    index = {item: k for k, item in enumerate(items)}
    own = {name: {(int(a), int(b)): float(v) for a, b, v in zip(r.a, r.b, r.score)} for name, r in raw.items()}
    by_how: dict[str, int] = {}
    lines = []
    for row, (i, j) in zip(found, placement_pairs(placements, found)):
        if float(row["score"]) < at or (i is not None and j is not None and (min(i, j), max(i, j)) in truth):
            continue
        by_how[row["method"]] = by_how.get(row["method"], 0) + 1
        a, b = sorted((index[row["a"]], index[row["b"]]))
        signals = {name: round(v[(a, b)], 3) for name, v in own.items() if (a, b) in v}
        lines.append(f"  {float(row['score']):.4f} {row['method']}: {signals or 'no stage found it itself'}")
    counts = ", ".join(f"{how} {n}" for how, n in sorted(by_how.items()))
    return "\n".join([f"false pairs scoring >= {at}: {sum(by_how.values())} ({counts or 'none'})", *lines])


def pair_evidence(out: Path, found: list[dict]) -> list[dict]:
    """Per pairs.csv row, that pair's record in the run's evidence.npz (simbench.find.evidence: "keypoints",
    "cnn", ...; {}: none, or no evidence.npz)."""
    path = out / "evidence.npz"
    if not path.exists():
        return [{}] * len(found)
    index = {item: k for k, item in enumerate(read_evidence(path)[0])}
    per_pair = read_pair_evidence(path)
    rows = []
    for row in found:
        a, b = index.get(row["a"]), index.get(row["b"])
        rows.append(per_pair.get((min(a, b), max(a, b)), {}) if a is not None and b is not None else {})
    return rows


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
    evidence = pair_evidence(pairs_csv.parent, found)
    print(pair_table(placements, found, args.false, evidence))
    n_true, n_false = cnn_only_counts(placements, found, evidence)
    print(f"\npairs only the CNN scored whose own CNN score is >= 0.8: {n_true} true, {n_false} false")
    print(false_pairs_by_stage(placements, found, pairs_csv.parent))


if __name__ == "__main__":
    main()
