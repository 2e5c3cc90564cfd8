"""Measure `simbench find` methods; fit the score calibration; print the tables of results/find.md.

    python benchmarks/devset.py build                        the development set (real photographs, line art)
    python benchmarks/bench_find.py calibrate                fit simbench/find/calibration.json on its TUNING split
    python benchmarks/bench_find.py dev [METHOD...]          every method + plain baselines on the REPORT split
    python benchmarks/bench_find.py tune [METHOD...]         the same on the tuning split (for choosing settings)
    python benchmarks/bench_find.py yearbook [METHOD...]     precision / recall on yearbook PDFs with shared logos
    python benchmarks/bench_find.py yearbook-tune [METHOD...]    the same, built from the tuning split's photos
    python benchmarks/bench_find.py throughput [METHOD...]   images/s end to end, 2,000-image folder
    python benchmarks/bench_find.py synthetic [METHOD...]    micro-AP etc. on the synthetic set (seed 0)
    python benchmarks/bench_find.py collection [METHOD...]   the 10,000-image generated collection: time and accuracy

Options: --work DIR (indexes and outputs; default ~/.cache/simbench/bench_find), --quiet, --json FILE,
and key=value overrides passed to every method (as on the `simbench find` command line).
Features are kept in one --index per collection, so methods sharing a stage extract it once; timings of
`throughput` are taken with a fresh index (nothing cached). Every number is measured, none is edited.
Nothing is fitted or chosen on the report split: `calibrate` and `tune` read only the tuning split.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import available_cores, cpu_model, load_average, timed  # noqa: E402
from simbench.data.collection import CollectionDataset
from simbench.data.synthetic import SyntheticDataset, default_cache_dir
from simbench.evaluate import dedupe_pairs, evaluate, label_pairs, recall_at_precision
from simbench.find import cascade
from simbench.find.calibration import CALIBRATION_FILE, fit_calibration, fit_fusion, save_calibrations
from simbench.find.pipeline import collect, find, raw_evidence, stage_pairs
from simbench.find.yearbook import (SCHOOL_STYLE, build_yearbook, match_placement, reference_photos,
                                   score_found_pairs, true_pairs)
from simbench.types import ScoredPairs

METHODS = ("hash", "cnn", "keypoints", "cascade")
TUNE, REPORT = "tune", "report"
PARTS = ("photo", "lineart")
BASELINES = ("phash", "brisk-bags", "cnn-cosine")
EVALUATION_SEED = 0
TARGET_PRECISION = 0.95


# ---------------------------------------------------------------------------------------------------
# Calibration: on the tuning split of the development set only


def dev_set(split: str, part: str, progress: bool):
    from simbench.data.devset import DevSet

    return DevSet(split, part).load(progress=progress)


def calibrate(work: Path, overrides: list[str], progress: bool, out: Path = CALIBRATION_FILE) -> list:
    """Fit raw -> precision for every stage on the tuning collections only: the TUNING split of the
    development set (photographs and line art), yearbook PDFs with shared logos built from its photos,
    and plain yearbook PDFs of scikit-image photos (look-alike pictures: retina and sky quadrants).
    Write simbench/find/calibration.json (or `out`: a variant's tables, for `find calibration=FILE`).
    The report split is never read here."""
    collections = tuning_collections(work, progress)
    tables = []
    for name in ("keypoints", "cnn", "hash"):
        cfg = cascade.make_config(name, overrides)
        stage = cascade.build_stages(cfg, calibrations={}, quiet=True)[0]
        raw, is_true = [], []
        for tag, inputs, label, _ in collections:
            got = collect(inputs, [stage], cfg, work / f"index-calibrate-{tag}", work, progress)
            found = stage_pairs(stage, got.features[name], progress)
            raw.append(stage.raw_signal(found))
            is_true.append(label(got.items, found))
            print(f"  {name} on {tag}: {len(found)} pairs, {int(is_true[-1].sum())} true", flush=True)
        raw, is_true = np.concatenate(raw), np.concatenate(is_true)
        fit = fit_calibration(raw, is_true, stage.signal, stage.settings,
                              note=f"tuning collections: {', '.join(c.tag for c in collections)}")
        tables.append(fit)
        print(f"{name}: {len(raw)} pairs, {int(is_true.sum())} true; {stage.signal} "
              f"{fit.raw.min():.4g}..{fit.raw.max():.4g} -> precision {fit.precision.min():.3f}..{fit.precision.max():.3f}")
    fusion = fit_cascade_fusion(collections, tables, work, overrides, progress)
    save_calibrations(tables, out, "isotonic raw -> precision fits on the tuning collections (devset "
                      "tune split, yearbooks); made by `python benchmarks/bench_find.py calibrate`", [fusion])
    print(f"wrote {out}")
    return [t.to_json() for t in tables] + [fusion.to_json()]


def fit_cascade_fusion(collections, tables, work: Path, overrides: list[str], progress: bool):
    """The cascade's fusion model, fitted on every candidate pair of the tuning collections: each stage's
    raw signal and extra signals (the CNN's for every pair, found by either stage) and whether it found the
    pair."""
    cfg = cascade.make_config("cascade", overrides)
    stages = cascade.build_stages(cfg, calibrations={t.key: t for t in tables}, quiet=True)
    names = [s.name for s in stages]
    inputs = {name: transform for s in stages for name, transform in s.fusion_inputs.items()}
    values, found, is_true, weight = {k: [] for k in inputs}, {k: [] for k in names}, [], []
    for collection in collections:
        v, ok, y = fusion_signals(collection, stages, cfg, work, progress)
        for name in inputs:
            values[name].append(v[name])
        for name in names:
            found[name].append(ok[name])
        is_true.append(y)
        weight.append(np.full(len(y), 1.0 / max(len(y), 1)))  # every collection counts alike
    fusion = fit_fusion(names, [s.calibration.key for s in stages], inputs,
                        {k: np.concatenate(v) for k, v in values.items()},
                        {k: np.concatenate(v) for k, v in found.items()}, np.concatenate(is_true),
                        note=f"tuning collections, each weighted alike: {', '.join(c.tag for c in collections)}",
                        sample_weight=np.concatenate(weight))
    print(f"fusion of {names}: intercept {fusion.intercept:.3f}, found weights {fusion.found_weight}, "
          f"input weights {fusion.weight}")
    return fusion


class Collection(NamedTuple):
    """A tuning collection: its folder or PDFs, which found pairs are true, and how many true pairs it has."""

    tag: str
    inputs: list
    label: Callable  # (items, pairs) -> is_true per pair
    n_true: int


def fusion_signals(collection: Collection, stages, cfg, work: Path, progress: bool):
    """What the fusion is fitted on, for one collection: every pair found by either stage, with each stage's
    raw signal (the CNN's for every pair) and whether it found the pair ({stage: array} twice), and is_true."""
    got = collect(collection.inputs, stages, cfg, work / f"index-calibrate-{collection.tag}", work, progress)
    raw = raw_evidence(stages, got.features, progress)
    n = len(got.items)
    union = cascade.fuse(n, {s: ScoredPairs(r.a, r.b, np.ones(len(r.a))) for s, r in raw.items()}, "max")
    values, found = cascade.stage_signals(union.a, union.b, n, stages, raw, got.features)
    return values, found, collection.label(got.items, union.as_scored())


def tuning_collections(work: Path, progress: bool) -> list[Collection]:
    """Every collection calibration may look at."""
    out = []
    for part in PARTS:
        ds = dev_set(TUNE, part, progress)

        def label(items, pairs, ds=ds):
            a, b = _dataset_rows(items, ds, pairs)
            return label_pairs(ScoredPairs(a, b, pairs.score), ds.truth)

        out.append(Collection(f"devset-{TUNE}-{part}", [ds.root / "images"], label, ds.n_true_pairs))
    for tag, build in (("yearbook-school-tune", lambda d: build_tune_yearbook(d, progress)),
                       ("yearbook-plain-seed1", lambda d: build_yearbook(d, seed=1))):
        pdfs = work / tag
        shutil.rmtree(pdfs, ignore_errors=True)
        placements = build(pdfs)

        def label(items, pairs, placements=placements):
            where = [match_placement(placements, it.source, it.page, it.bbox) if it.page else None for it in items]
            truth = true_pairs(placements)
            return np.array([(min(where[a], where[b]), max(where[a], where[b])) in truth
                             if where[a] is not None and where[b] is not None else False
                             for a, b in zip(pairs.a, pairs.b)], bool)

        out.append(Collection(tag, [pdfs], label, len(true_pairs(placements))))
    return out


def build_tune_yearbook(pdfs: Path, progress: bool):
    photos = reference_photos(dev_set(TUNE, "photo", progress))
    return build_yearbook(pdfs, n_photos=len(photos) - 4, n_single=4, photos=photos, seed=1, **SCHOOL_STYLE)


# ---------------------------------------------------------------------------------------------------
# The development set: every find method and the plain baselines, one table per collection


def dev(methods, work: Path, overrides: list[str], progress: bool, split: str = "report",
        baselines: tuple = BASELINES) -> list[dict]:
    """Each find method and each plain baseline on the photo and line-art collections of `split`,
    scored the same way (simbench.evaluate over the dataset's truth and labels)."""
    rows = []
    for part in PARTS:
        ds = dev_set(split, part, progress)
        print(f"{split}/{part}: {len(ds)} images, {ds.n_true_pairs} true pairs", flush=True)
        for method in methods:
            cfg = cascade.make_config(method, overrides)
            seconds, result = timed(lambda: find([ds.root / "images"], work / f"out-dev-{split}-{part}-{method}",
                                                 cfg, index=work / f"index-dev-{split}-{ds.name}", progress=progress))
            a, b = _dataset_rows(result.items, ds, result.pairs)
            rows.append(_dev_row(f"find --method {method}", split, part, ds, ScoredPairs(a, b, result.pairs.score),
                                 float(cfg.threshold), seconds))
            print(_row_text(rows[-1]), flush=True)
        for name in baselines:
            seconds, pairs = timed(BASELINE_FUNCTIONS[name], ds, progress)
            rows.append(_dev_row(BASELINE_NAMES[name], split, part, ds, pairs, None, seconds))
            print(_row_text(rows[-1]), flush=True)
    print(dev_table(rows))
    return rows


def _dev_row(name: str, split: str, part: str, ds, pairs: ScoredPairs, threshold, seconds: float) -> dict:
    m = evaluate(pairs, ds.truth, ds.labels, threshold)
    unique = dedupe_pairs(pairs)
    r95, t95 = recall_at_precision(unique.score, label_pairs(unique, ds.truth), ds.n_true_pairs, TARGET_PRECISION)
    row = {"method": name, "split": split, "part": part, "images": len(ds), "true_pairs": ds.n_true_pairs,
           "uap": m["uap"], "recall_at_p90": m["recall_at_p90"], "threshold_at_p90": m["threshold_at_p90"],
           "recall_at_p95": r95, "threshold_at_p95": t95,
           "seconds": seconds, "per_transform_at_p90": m["per_transform_recall_at_p90"]}
    if threshold is not None:
        row.update(threshold=threshold, precision=m["precision"], recall=m["recall"],
                   per_transform=m["per_transform_recall"])
    return row


def dev_table(rows: list[dict]) -> str:
    """Markdown: one table of headline figures, then recall per edit at precision 0.9."""
    out = ["| collection | method | micro-AP | recall @ P0.9 | precision @ default | recall @ default "
           "| best recall @ P0.95 (threshold) | s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = f"{r['precision']:.3f}" if "precision" in r else "-"
        rc = f"{r['recall']:.3f}" if "recall" in r else "-"
        out.append(f"| {r['split']}/{r['part']} | {r['method']} | {r['uap']:.3f} | {r['recall_at_p90']:.3f} | {p} | "
                   f"{rc} | {r['recall_at_p95']:.3f} ({r['threshold_at_p95']:.3f}) | {r['seconds']:.0f} |")
    edits = sorted({e for r in rows for e in r["per_transform_at_p90"]})
    out += ["", "| collection | method | " + " | ".join(edits) + " |", "|---|---|" + "---|" * len(edits)]
    for r in rows:
        out.append(f"| {r['split']}/{r['part']} | {r['method']} | " + " | ".join(
            f"{r['per_transform_at_p90'].get(e, float('nan')):.2f}" for e in edits) + " |")
    return "\n".join(out)


# Plain baselines, computed outside `find` (no index, no calibration, no linking): all pairs ranked.


def phash_baseline(ds, progress: bool) -> ScoredPairs:
    """ImageHash phash (64 bits) of every image; every pair scored 1 - Hamming distance / 64."""
    import imagehash
    from PIL import Image

    bits = []
    for path in ds.paths:
        with Image.open(path) as im:
            bits.append(np.asarray(imagehash.phash(im).hash, bool).ravel())
    bits = np.array(bits, np.uint8)
    dist = bits.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * (bits.astype(np.int32) @ bits.T.astype(np.int32))
    return _all_pairs(1.0 - dist / 64.0)


def brisk_bags_baseline(ds, progress: bool) -> ScoredPairs:
    """BRISK (find's detector settings, no mirror) matched by brute force (exact Hamming <= 31, no LSH),
    scored as matched / min(n) (KeypointMethod score "min", no verification)."""
    from simbench.features.keypoints import KeypointExtractor
    from simbench.match.exact import ExactMatcher
    from simbench.methods.keypoints import KeypointMethod

    extractor = KeypointExtractor(detector="brisk", max_features=500, max_size=640, threshold=8, mirror=False)
    method = KeypointMethod(extractor, ExactMatcher(), distance_threshold=31, score="min", verify=False)
    extracted = extractor.extract(ds.paths, progress=progress)
    found = method.score_pairs(extracted.features)
    rows = np.asarray(extracted.rows)
    return ScoredPairs(rows[found.a], rows[found.b], found.score)


def cnn_cosine_baseline(ds, progress: bool) -> ScoredPairs:
    """EfficientNet-Lite0 ImageNet features, global average pooled, L2-normalised; every pair's cosine."""
    from simbench.features.cnn import CnnExtractor

    extracted = CnnExtractor(backbone="efficientnet_lite0", weights="imagenet", workers=1).extract(
        ds.paths, progress=progress)
    v = extracted.features.vectors
    rows = np.asarray(extracted.rows)
    sims = np.full((len(ds), len(ds)), -1.0)
    sims[np.ix_(rows, rows)] = v @ v.T
    return _all_pairs(sims)


def _all_pairs(similarity: np.ndarray) -> ScoredPairs:
    a, b = np.triu_indices(len(similarity), k=1)
    return ScoredPairs(a, b, similarity[a, b].astype(np.float64))


BASELINE_FUNCTIONS = {"phash": phash_baseline, "brisk-bags": brisk_bags_baseline, "cnn-cosine": cnn_cosine_baseline}
BASELINE_NAMES = {"phash": "ImageHash phash", "brisk-bags": "BRISK bags, brute force (matched / min n)",
                  "cnn-cosine": "EfficientNet-Lite0 pooled cosine"}


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


def yearbook(methods, work: Path, overrides: list[str], progress: bool, split: str = "report") -> list[dict]:
    """Yearbook PDFs whose every photo carries the same school logo and frame (SCHOOL_STYLE), some
    recoloured, some flat, built from the reference photographs of one split of the development set."""
    pdfs = work / f"yearbook-{split}"
    shutil.rmtree(pdfs, ignore_errors=True)
    photos = reference_photos(dev_set(split, "photo", progress))
    placements = build_yearbook(pdfs, n_photos=len(photos) - 4, n_single=4, photos=photos, **SCHOOL_STYLE)
    print(f"yearbook ({split} split photos, shared logo and frame): {len({p.pdf for p in placements})} PDFs, "
          f"{len(placements)} placements of {len({p.photo for p in placements})} photos, "
          f"{len(true_pairs(placements))} true pairs")
    rows = []
    for method in methods:
        cfg = cascade.make_config(method, overrides)
        out = work / f"out-yearbook-{split}-{method}"
        result = find([pdfs], out, cfg, index=work / f"index-yearbook-{split}", progress=progress)
        with open(out / "pairs.csv", newline="") as f:
            found = list(csv.DictReader(f))
        at = score_found_pairs(placements, found, float(cfg.threshold))
        best = best_recall(placements, found, TARGET_PRECISION)
        rows.append({"method": method, "split": split, "placements": len(placements), "true_pairs": at["true_pairs"],
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
        again, _ = timed(lambda: find([ds.root / "images"], work / f"out-throughput-{method}", cfg,
                                      index=work / f"index-throughput-{method}", progress=progress))
        rows.append({"method": method, "images": len(result.items), "seconds": seconds,
                     "images_per_s": len(result.items) / seconds, "rerun_seconds": again,
                     "cpus": available_cores(), "load": load_average(), "timing": result.timing})
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
    seconds, result = timed(lambda: find([ds.root / "images"], work / f"out-{name}-{method}", cfg, index=index,
                                         progress=progress))
    return cfg, result, seconds


def _row_text(row: dict) -> str:
    return "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                     if not isinstance(v, dict))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("calibrate", "dev", "tune", "yearbook", "yearbook-tune", "synthetic",
                                         "throughput", "collection"))
    parser.add_argument("args", nargs="*", help="methods (hash, cnn, keypoints, cascade) and key=value overrides")
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--out", default=str(CALIBRATION_FILE),
                        help="calibrate: the file to write (a variant's, to try with calibration=FILE)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="dev/tune: comma-separated plain baselines to run beside the methods ('' for none)")
    args = parser.parse_intermixed_args(argv)
    methods = [a for a in args.args if "=" not in a] or list(METHODS)
    methods = [] if methods == ["none"] else methods
    overrides = [a for a in args.args if "=" in a]
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    print(f"# {cpu_model()}, {available_cores()} CPUs usable, load {load_average():.1f}, "
          f"python {sys.version.split()[0]}; overrides {overrides}")
    out = {}
    if args.what == "calibrate":
        out["calibration"] = calibrate(work, overrides, progress, Path(args.out))
    elif args.what in ("dev", "tune"):
        out[args.what] = dev(methods, work, overrides, progress, split=REPORT if args.what == "dev" else TUNE,
                             baselines=tuple(b for b in args.baselines.split(",") if b))
    elif args.what.startswith("yearbook"):
        out[args.what] = yearbook(methods, work, overrides, progress, split=TUNE if args.what.endswith("tune") else REPORT)
    else:
        fn = {"synthetic": synthetic, "throughput": throughput, "collection": collection}
        out[args.what] = fn[args.what](methods, work, overrides, progress)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
