"""Measure `simbench find` methods; fit the score calibration; print the tables of results/find.md.

    python benchmarks/bench_find.py calibrate              fit simbench/find/calibration.json (synthetic, seed 1)
    python benchmarks/bench_find.py synthetic [METHOD...]  micro-AP etc. on the synthetic set (seed 0)
    python benchmarks/bench_find.py yearbook [METHOD...]   recall / precision on the yearbook PDFs
    python benchmarks/bench_find.py throughput [METHOD...] images/s end to end, 2,000-image folder
    python benchmarks/bench_find.py all                    all of the above, in that order
    python benchmarks/bench_find.py collection [METHOD...] the 10,000-image generated collection: time and accuracy

Options: --work DIR (datasets, indexes and outputs; default ~/.cache/simbench/bench_find), --quiet,
and key=value overrides passed to every method (as on the `simbench find` command line).
Features are kept in one --index per dataset, so methods sharing a stage extract it once; timings of
`throughput` are taken with a fresh index (nothing cached). Every number is measured, none is edited.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from simbench.data.collection import CollectionDataset
from simbench.data.synthetic import SyntheticDataset, default_cache_dir
from simbench.evaluate import evaluate, label_pairs
from simbench.find import cascade
from simbench.find.pipeline import collect, find, stage_pairs
from simbench.find.yearbook import build_yearbook, score_found_pairs, true_pairs
from simbench.types import ScoredPairs

METHODS = ("hash", "cnn", "keypoints", "cascade")
CALIBRATION_SEED = 1
EVALUATION_SEED = 0
TARGET_PRECISION = 0.95


# ---------------------------------------------------------------------------------------------------
# Calibration


def calibrate(work: Path, overrides: list[str], progress: bool) -> dict:
    """Fit raw -> precision for every stage on the synthetic set of seed 1; write calibration.json."""
    ds = SyntheticDataset(seed=CALIBRATION_SEED).load(progress=progress)
    table = {"_about": f"isotonic raw -> precision fits on SyntheticDataset(seed={CALIBRATION_SEED}) "
                       f"({len(ds)} images, {ds.n_true_pairs} true pairs); made by benchmarks/bench_find.py calibrate"}
    for name in ("keypoints", "cnn", "hash"):
        cfg = cascade.make_config(name, overrides)
        stage = cascade.build_stages(cfg, calibrations={})[0]
        got = collect([ds.root / "images"], [stage], cfg, work / f"index-synthetic-{CALIBRATION_SEED}", work, progress)
        raw_pairs = stage_pairs(stage, got.features[name], progress)
        a, b = _dataset_rows(got.items, ds, raw_pairs)
        raw = stage.raw_signal(raw_pairs)
        is_true = label_pairs(ScoredPairs(a, b, raw), ds.truth)
        fit = cascade.fit_calibration(raw, is_true, signal=stage.signal)
        table[cascade.calibration_key(stage.extractor)] = {"signal": stage.signal, "raw": [round(float(v), 6) for v in fit.raw],
                                       "precision": [round(float(v), 5) for v in fit.precision],
                                       "pairs": int(len(raw)), "true": int(is_true.sum())}
        print(f"{cascade.calibration_key(stage.extractor)}: {len(raw)} pairs, {int(is_true.sum())} true; "
              f"{stage.signal} {fit.raw.min():.3g}..{fit.raw.max():.3g} -> precision "
              f"{fit.precision.min():.3f}..{fit.precision.max():.3f}")
    cascade.CALIBRATION_FILE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {cascade.CALIBRATION_FILE}")
    return table


def _dataset_rows(items, ds, pairs):
    """Item indices -> dataset image indices (items are the dataset's files, found by path)."""
    index = {str(p): i for i, p in enumerate(ds.paths)}
    rows = np.array([index[item.display] for item in items], dtype=np.int64)
    return rows[pairs.a], rows[pairs.b]


# ---------------------------------------------------------------------------------------------------
# Synthetic set: micro-AP of each find method


def synthetic(methods, work: Path, overrides: list[str], progress: bool) -> list[dict]:
    ds = SyntheticDataset(seed=EVALUATION_SEED).load(progress=progress)
    rows = []
    for method in methods:
        cfg = cascade.make_config(method, overrides)
        out = work / f"out-synthetic-{method}"
        result = find([ds.root / "images"], out, cfg, index=work / f"index-synthetic-{EVALUATION_SEED}",
                      progress=progress)
        a, b = _dataset_rows(result.items, ds, result.pairs)
        m = evaluate(ScoredPairs(a, b, result.pairs.score), ds.truth, ds.labels, float(cfg.threshold))
        rows.append({"method": method, "images": len(ds), "true_pairs": ds.n_true_pairs, "uap": m["uap"],
                     "recall_at_p90": m["recall_at_p90"], "precision": m["precision"], "recall": m["recall"],
                     "threshold": float(cfg.threshold), "per_transform": m["per_transform_recall"]})
        print(_row_text(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------
# Yearbook PDFs: recall at precision >= 0.95


def yearbook(methods, work: Path, overrides: list[str], progress: bool) -> list[dict]:
    pdfs = work / "yearbook"
    shutil.rmtree(pdfs, ignore_errors=True)
    placements = build_yearbook(pdfs)
    print(f"yearbook: {len({p.pdf for p in placements})} PDFs, {len(placements)} placements of "
          f"{len({p.photo for p in placements})} photos, {len(true_pairs(placements))} true pairs")
    rows = []
    for method in methods:
        cfg = cascade.make_config(method, overrides)
        out = work / f"out-yearbook-{method}"
        result = find([pdfs], out, cfg, index=work / "index-yearbook", progress=progress)
        with open(out / "pairs.csv", newline="") as f:
            found = list(csv.DictReader(f))
        at = score_found_pairs(placements, found, float(cfg.threshold))
        best = best_recall(placements, found, TARGET_PRECISION)
        rows.append({"method": method, "placements": len(placements), "true_pairs": at["true_pairs"],
                     "threshold": float(cfg.threshold), "precision": at["precision"], "recall": at["recall"],
                     "false": at["false"], "recall_at_p95": best["recall"], "threshold_at_p95": best["threshold"],
                     "skipped": len(result.skipped)})
        print(_row_text(rows[-1]), flush=True)
    return rows


def best_recall(placements, found: list[dict], precision: float) -> dict:
    """The highest recall over thresholds (the found scores) at which precision >= `precision`."""
    best = {"recall": 0.0, "threshold": float("nan")}
    for t in sorted({float(r["score"]) for r in found}, reverse=True):
        at = score_found_pairs(placements, found, t)
        if at["precision"] >= precision and at["recall"] > best["recall"]:
            best = {"recall": at["recall"], "threshold": t}
    return best


# ---------------------------------------------------------------------------------------------------
# Throughput: a 2,000-image folder end to end


def throughput(methods, work: Path, overrides: list[str], progress: bool) -> list[dict]:
    ds = SyntheticDataset(n_references=150, n_distractors=50, seed=EVALUATION_SEED).load(progress=progress)
    rows = []
    for method in methods:
        cfg, result, seconds = fresh_find(method, ds, work, "throughput", overrides, progress)
        start = time.perf_counter()
        find([ds.root / "images"], work / f"out-throughput-{method}", cfg, index=work / f"index-throughput-{method}",
             progress=progress)
        again = time.perf_counter() - start
        rows.append({"method": method, "images": len(result.items), "seconds": seconds,
                     "images_per_s": len(result.items) / seconds, "rerun_seconds": again,
                     "cpus": len(os.sched_getaffinity(0)), "timing": result.timing})
        print(_row_text(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------
# A 10,000-image collection end to end (simbench.data.collection: distinct pictures, 10% copies)


def collection(methods, work: Path, overrides: list[str], progress: bool, n_images: int = 10_000) -> list[dict]:
    ds = CollectionDataset(n_images=n_images).load(progress=progress)
    rows = []
    for method in methods:
        cfg, result, seconds = fresh_find(method, ds, work, "collection", overrides, progress)
        a, b = _dataset_rows(result.items, ds, result.pairs)
        m = evaluate(ScoredPairs(a, b, result.pairs.score), ds.truth, ds.labels, float(cfg.threshold))
        rows.append({"method": method, "images": len(result.items), "true_pairs": ds.n_true_pairs,
                     "seconds": seconds, "images_per_s": len(result.items) / seconds, "uap": m["uap"],
                     "recall_at_p90": m["recall_at_p90"], "precision": m["precision"], "recall": m["recall"],
                     "threshold": float(cfg.threshold), "timing": result.timing,
                     "per_transform": m["per_transform_recall"]})
        print(_row_text(rows[-1]), flush=True)
    return rows


def fresh_find(method: str, ds, work: Path, name: str, overrides: list[str], progress: bool):
    """`find` over the dataset's images with an emptied index (the first run over a collection): the
    config, the result and the seconds it took. Index and outputs: work/index-<name>-<method>, out-..."""
    cfg = cascade.make_config(method, overrides)
    index = work / f"index-{name}-{method}"
    shutil.rmtree(index, ignore_errors=True)
    start = time.perf_counter()
    result = find([ds.root / "images"], work / f"out-{name}-{method}", cfg, index=index, progress=progress)
    return cfg, result, time.perf_counter() - start


def _row_text(row: dict) -> str:
    return "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                     if not isinstance(v, dict))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("calibrate", "synthetic", "yearbook", "throughput", "all", "collection"))
    parser.add_argument("args", nargs="*", help="methods (hash, cnn, keypoints, cascade) and key=value overrides")
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    methods = [a for a in args.args if "=" not in a] or list(METHODS)
    overrides = [a for a in args.args if "=" in a]
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    print(f"# {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs usable, "
          f"python {sys.version.split()[0]}; overrides {overrides}")
    out = {}
    if args.what in ("calibrate", "all"):
        out["calibration"] = calibrate(work, overrides, progress)
    for name, fn in (("synthetic", synthetic), ("yearbook", yearbook), ("throughput", throughput)):
        if args.what in (name, "all"):
            out[name] = fn(methods, work, overrides, progress)
    if args.what == "collection":
        out["collection"] = collection(methods, work, overrides, progress)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
