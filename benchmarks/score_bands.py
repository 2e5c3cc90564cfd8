"""Do find's scores keep what they promise? Precision per band of scores, in the pairs a bench_find run left.

    python benchmarks/score_bands.py dev report [--method cascade] [--work DIR]         # after `bench_find.py dev`
    python benchmarks/score_bands.py yearbook report --layouts 0,2,3,4,5 [--work DIR]  # after `bench_find.py yearbook`
    python benchmarks/score_bands.py dev holdout2 [--work DIR]  # after `bench_find.py holdout` (yearbook holdout2:
                                                                # after `yearbook --splits ...,holdout2`)

(`dev tune` reads a `tune` run's halves, not its rebuilds; `yearbook tune --layouts ...` a `yearbook-tune` run.)
A calibrated score estimates the precision of the pairs scoring about as much on the tuning collections
(simbench.find.calibration): so, per band of scores, the pairs the run wrote there, how many are true, their
precision with Wilson's 95% interval, and the band's mean score. Where precision falls well below the mean score,
the scores promise more than they keep on that collection. Linked pairs (scored along a chain, not by their own
evidence) are also counted apart. Nothing is run or fitted: it reads pairs.csv (bench_find.py's --work, its default
unless given).
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import (HOLDOUT_SPLITS, PARTS, REPORT, TUNE, dev_set, fold_rows, holdout_set,  # noqa: E402
                                   interval_text, labelled_pairs, renumbered, school_yearbook, yearbook_name)
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.evaluate import label_pairs, wilson_interval  # noqa: E402
from simbench.find.cascade import LINKED  # noqa: E402
from simbench.types import ScoredPairs  # noqa: E402

#: Band edges: [0.5, 0.8), [0.8, 0.9), [0.9, 0.95), [0.95, 0.99), [0.99, 1].
BANDS = (0.5, 0.8, 0.9, 0.95, 0.99)


def band_rows(scores: np.ndarray, is_true: np.ndarray, linked: np.ndarray, bands=BANDS) -> list[dict]:
    """Per band [lo, hi) (the last one up to 1 inclusive): pairs, true, precision (nan: none), its Wilson 95%
    interval, mean score, and the linked pairs and how many of them are true."""
    out = []
    for lo, hi in zip(bands, (*bands[1:], np.inf)):
        sel = (scores >= lo) & (scores < hi)
        n, t = int(sel.sum()), int(is_true[sel].sum())
        out.append({"band": (lo, min(hi, 1.0)), "pairs": n, "true": t, "precision": t / n if n else float("nan"),
                    "interval": wilson_interval(t, n), "mean_score": float(scores[sel].mean()) if n else float("nan"),
                    "linked": int((sel & linked).sum()), "linked_true": int((sel & linked & is_true).sum())})
    return out


def table(name: str, rows: list[dict]) -> str:
    out = [f"| {name}: score band | pairs | true | precision (95% interval) | mean score | linked (true) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["band"]
        shut = "]" if hi == 1.0 else ")"
        precision = "-" if not r["pairs"] else f"{r['precision']:.3f} ({interval_text(*r['interval'])})"
        mean = "-" if not r["pairs"] else f"{r['mean_score']:.3f}"
        out.append(f"| [{lo:g}, {hi:g}{shut} | {r['pairs']} | {r['true']} | {precision} | {mean} | "
                   f"{r['linked']} ({r['linked_true']}) |")
    return "\n".join(out)


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path} not found: run bench_find.py with this --work first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dev_labels(found: list[dict], ds) -> np.ndarray:
    """Whether each pairs.csv row of a devset collection's run is a true pair (its images by file name)."""
    row = {Path(p).name: i for i, p in enumerate(ds.paths)}
    a = np.array([row[Path(r["a"]).name] for r in found], np.int64)
    b = np.array([row[Path(r["b"]).name] for r in found], np.int64)
    return label_pairs(ScoredPairs(a, b, np.array([float(r["score"]) for r in found])), ds.truth)


def tuning_half(ds, h: int) -> SimpleNamespace:
    """Half h of a tuning collection as `tune` runs it (bench_find.tuning_halves), its image paths and truth only."""
    keep = fold_rows(len(ds.paths), np.asarray(ds.truth), h)
    return SimpleNamespace(paths=[ds.paths[i] for i in keep], truth=renumbered(np.asarray(ds.truth), keep))


def _arrays(found: list[dict], is_true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([float(r["score"]) for r in found]), np.asarray(is_true, bool),
            np.array([r["method"] == LINKED for r in found], bool))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("dev", "yearbook"))
    parser.add_argument("split", choices=(TUNE, REPORT, *HOLDOUT_SPLITS))
    parser.add_argument("--method", default="cascade")
    parser.add_argument("--layouts", default="0", help="yearbook: the layouts of the run, pooled")
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))  # bench_find.py's
    args = parser.parse_args(argv)
    work = Path(args.work).expanduser()
    if args.what == "dev":
        if args.split == REPORT:
            collections = [(part, dev_set(REPORT, part, False)) for part in PARTS]
        elif args.split in HOLDOUT_SPLITS:
            collections = [(part, holdout_set(args.split, part, False)) for part in PARTS]
        else:
            collections = [(f"{part}-half{h}", tuning_half(dev_set(TUNE, part, False), h)) for part in PARTS
                           for h in (0, 1)]
        for part, ds in collections:
            found = _read(work / f"out-dev-{args.split}-{part}-{args.method}" / "pairs.csv")
            print(table(f"{args.split}/{part}", band_rows(*_arrays(found, dev_labels(found, ds)))) + "\n")
        return
    scores, labels, linked = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in [int(x) for x in args.layouts.split(",")]:
            name = yearbook_name(args.split, layout)
            found = _read(work / f"out-{name}-{args.method}" / "pairs.csv")
            placements = school_yearbook(Path(tmp) / name, args.split, layout, False)  # deterministic: the run's
            book = labelled_pairs(placements, found)  # content-free placements' pairs left out, as bench_find's
            for out, values in zip((scores, labels, linked),
                                   _arrays(book.scored_rows(found), [pair is not None for _, pair in book.rows])):
                out.append(values)
    layouts = args.layouts.split(",")
    named = ",".join(layouts) if len(layouts) <= 6 else f"{layouts[0]}...{layouts[-1]} ({len(layouts)})"
    print(table(f"yearbook {args.split}, layouts {named}",
                band_rows(*(np.concatenate(x) for x in (scores, labels, linked)))))


if __name__ == "__main__":
    main()
