"""The `simbench` command.

    simbench [run] [overrides]         the Hydra runner (python -m simbench)
    simbench find PATH... --out DIR    duplicate images in folders and PDFs (simbench.find)
    simbench calibrate RUN_DIR truth.csv [--out FILE]   fit find's score tables on your own labelled run
    simbench report RUN_DIR... --out DIR   tables and plots from stored runs (simbench.report)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "find":
        sys.exit(find_main(args[1:]))
    if args and args[0] == "calibrate":
        sys.exit(calibrate_main(args[1:]))
    if args and args[0] == "report":
        from simbench.report import main as report_main

        sys.exit(report_main(args[1:]))
    if args and args[0] == "run":
        del sys.argv[1]
    sys.argv[1:] = single_run(implied_method(sys.argv[1:]))
    from simbench.run import main as run_main

    run_main()


#: Choosing a component of one method's group on the command line selects that method.
METHOD_OF_GROUP = {"backbone": "cnn", "detector": "keypoints"}


def implied_method(overrides: list[str]) -> list[str]:
    """`backbone=resnet50` alone means `method=cnn backbone=resnet50` (and detector=... keypoints),
    unless a method is named explicitly or two groups would imply different methods."""
    if any(o.split("=", 1)[0].lstrip("+~") == "method" for o in overrides):
        return overrides
    keys = [o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o]
    implied = {METHOD_OF_GROUP[k] for k in keys if k in METHOD_OF_GROUP}
    if len(implied) != 1:
        return overrides
    return [*overrides, f"method={implied.pop()}"]


def single_run(overrides: list[str]) -> list[str]:
    """`hash=phash` is one run, written to hydra.run.dir: method=hash (conf/method/hash.yaml) sweeps the hash
    families only when no hash is chosen (the main job), with -m, or within an experiment preset."""
    if any(o in ("-m", "--multirun") or o.startswith(("hydra.mode=", "+experiment")) for o in overrides):
        return overrides
    at = [k for k, o in enumerate(overrides) if "=" in o and o.split("=", 1)[0].lstrip("+") == "hash"]
    if at and not any(c in overrides[at[-1]].split("=", 1)[1] for c in ",()"):  # not a sweep (a,b, range(..))
        return [*overrides[:at[-1] + 1], "hydra.mode=RUN", *overrides[at[-1] + 1:]]  # next to it: argparse
    return overrides


FIND_EPILOG = """\
outputs in DIR:
  pairs.csv     a,b,score (higher = more similar; score = estimated precision, 0..1), then for PDF images
                a_source,a_page,a_bbox,b_source,b_page,b_bbox (page 1-based, bbox "x0 y0 x1 y1" in PDF
                points as placed, origin top left), method (identical, keypoints, cnn, hash, linked, or
                decision: confirmed by a reviewer with --decisions, score 1) and
                calibrated ("no" when no calibration table covers the settings used: ranked, not a precision)
  groups.json   duplicate groups (union-find over pairs scoring >= threshold)
  skipped.csv   file,reason for everything that could not be compared
  report.html   self-contained review page: groups, threshold slider, method filter; a pair opened shows why
                it was found (matches, matched regions, CNN ranks, linked chain, PDF page); decisions marked
                with the keyboard download as decisions.csv (for --decisions)
  evidence.npz  every stage's pairs with their raw signals (for `simbench calibrate`), and the best pairs'
                evidence (simbench.find.evidence)
  metrics.json  with --truth: micro-AP, recall at precision 0.9, recall per label, each with its 95% interval
  decisions.json  with --decisions: how many were applied, pairs hidden, stale rows, skipped rows

methods:
  cascade (default)  identical image data, then BRISK keypoints spread over the picture (and of its mirror
                     image; half of them on the picture smoothed) verified by a RANSAC fit, with content
                     shared by many pictures discounted, then EfficientNet-Lite0 GeM features (of the
                     picture and of it blurred, cut from inside its border), centred, whitened against
                     what edits change (learned on our tuning set) and pulled toward their nearest
                     neighbours, scored against each image's 10th neighbour, also through three windows
                     of each picture; pairs of different pictures inside one frame that three or more
                     share (a screenshot template) dropped, each such picture embedded by its window;
                     every pair scored by both, fused by a logistic model fitted on our tuning set;
                     each image's best CNN pairs checked on SIFT blobs (blobs) and, where no keypoints
                     verified them, by laying the two thumbnails over each other (align); linked
                     (without PyTorch, the cnn extra: keypoints is the default, and find says so)
  keypoints          identical data + verified keypoints only (no CNN, no PyTorch)
  cnn                identical data + CNN embeddings only
  hash               identical data + perceptual hash (phash) only: fastest, misses crops

settings (key=value; every one is in conf/find.yaml, composed by Hydra as the runner's config is), e.g.:
  threshold=0.9  min_score=0.2  link=false  fusion=noisy_or  pdf.min_side_px=64  pdf.min_side_pt=36
  keypoints.extractor.max_features=1000  cnn.extractor.device=cuda
  detector=orb  backbone=resnet50  hash=dhash   the runner's groups: the keypoints, cnn, hash stage's extractor
  matcher=exact                                 every stage's matcher (one stage's: matcher@cnn.matcher=lsh)
  (a setting that changes a stage's raw signal leaves that stage uncalibrated: calibrated=no)

examples:
  simbench find photos/ yearbook/*.pdf --out review/
  simbench find book1.pdf book2.pdf --out review/ --index ~/.cache/yearbook-index
  simbench find photos/ --out review/ --truth photos/truth.csv      # how good is it on my collection?
  simbench calibrate review/ photos/truth.csv --out mine.json       # fit the score tables on it
  simbench find more/ --out review2/ --calibration mine.json
  simbench find photos/ --out review/ --decisions decisions.csv     # re-run with a reviewer's decisions
  simbench calibrate review/ decisions.csv --out mine.json          # the decisions as truth
"""


def find_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="simbench find", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FIND_EPILOG,
        description="Find duplicate and near-duplicate images in folders (recursively), image files and PDF "
                    "files (every image placed on a page, with its page and rectangle), and write the pairs, "
                    "the duplicate groups, the skipped inputs and an HTML report to review them.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="folders, image files or PDF files; key=value arguments are setting overrides")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the outputs (created)")
    parser.add_argument("--method", "-m", default=None, choices=("cascade", "keypoints", "cnn", "hash"),
                        help="what compares the images (default: cascade)")
    parser.add_argument("--threshold", "-t", type=float, default=None,
                        help="score at and above which a pair is a duplicate (groups.json; where the report's "
                             "slider starts); default 0.93. Scores are calibrated to estimate precision on our "
                             "tuning collections; on collections never tuned on, at 0.93 the default measured "
                             "precision 0.99 on real photographs and 0.98 on line art, at recall 0.961 and 0.881, "
                             "and 1.00 on yearbook PDFs with a shared logo, at recall 0.970 (0.94 and 0.86 on "
                             "yearbooks of other pictures; results/find.md); "
                             "from 0.99 up 99.8%% of pairs were true there, below it the estimate is rough (pairs "
                             "scoring 0.95-0.99: 85-100%% true, 0.9-0.95: 33-81%%). Fit "
                             "your own with `simbench calibrate`")
    parser.add_argument("--index", metavar="DIR", default=None,
                        help="keep features here, keyed by file content, so that a later run extracts only "
                             "new or changed files")
    parser.add_argument("--truth", metavar="CSV", default=None,
                        help="score the run against known duplicate pairs (columns a,b[,label]): micro-AP, "
                             "recall at precision 0.9, recall per label; written to DIR/metrics.json). A "
                             "decisions.csv works too: only the pairs it lists are labelled")
    parser.add_argument("--decisions", metavar="CSV", default=None,
                        help="a reviewer's decisions (columns a,b,decision; decision duplicate or not_duplicate; "
                             "the review page downloads it) applied to this run: a pair confirmed not a "
                             "duplicate is hidden and links nothing, one confirmed a duplicate is kept at score 1 "
                             "with method \"decision\"; rows naming no image of this run are listed as stale "
                             "(DIR/decisions.json). Also usable as --truth")
    parser.add_argument("--calibration", metavar="FILE", default=None,
                        help="score tables fitted by `simbench calibrate`, used before the shipped ones")
    parser.add_argument("--cluster", default=None, choices=("none", "local", "slurm", "gpu"),
                        help="run extraction and matching on Dask (the same as cluster=...; its settings are "
                             "cluster.KEY=VALUE, see conf/cluster/): local = worker processes on this machine "
                             "(chosen by itself above 20,000 files), slurm = jobs of dask-jobqueue, gpu = dask-cuda")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="use the running Dask scheduler at ADDRESS (tcp://host:8786); its workers must see "
                             "the input files and the --index / --out folders")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def split_overrides(paths: list[str]) -> tuple[list[str], list[str]]:
    """key=value arguments (that are not existing files) are overrides; the rest are inputs."""
    import os

    inputs, overrides = [], []
    for p in paths:
        if "=" in p and not os.path.exists(p) and not p.startswith(("/", ".")):
            overrides.append(p)
        else:
            inputs.append(p)
    return inputs, overrides


def find_main(argv: list[str]) -> int:
    parser = find_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    inputs, overrides = split_overrides(args.paths)
    overrides += [f"cluster={args.cluster}"] * bool(args.cluster)  # after the others: the flag wins
    overrides += [f"cluster.scheduler={args.scheduler}"] * bool(args.scheduler)
    if not inputs:
        parser.error("give at least one folder, image or PDF")
    for option in ("calibration", "truth", "decisions"):
        given = getattr(args, option)
        if given is not None and not os.path.isfile(given):
            parser.error(f"--{option}: no such file: {given}")
    import logging

    from simbench import api
    from simbench.distributed.cluster import ClusterError
    from simbench.find.decisions import DecisionsError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        found = api.find(inputs, args.method, args.threshold, out=args.out, index=args.index,
                         decisions=args.decisions, calibration=args.calibration, settings=overrides,
                         progress=not args.quiet)
    except api.SettingsError as exc:  # a bad override (found before the run starts): which, no traceback
        parser.error(str(exc))
    except (ClusterError, DecisionsError) as exc:  # a cluster that cannot start, an unusable decisions file
        print(f"simbench find: {exc}", file=sys.stderr)
        return 2
    print(found.result.summary(args.out, found.threshold))
    if found.decisions is not None:
        print(found.decisions.summary())
    if args.truth:
        from simbench.find.pipeline import score_against

        metrics = score_against(found.result, args.truth, Path(args.out), found.threshold)
        print(metrics_text(metrics))
    return 0


def metrics_text(m: dict) -> str:
    """What `find --truth` prints: the metrics, each with its 95% interval (metrics.json's `intervals`)."""
    from simbench.evaluate import wilson_interval

    def sure(key: str, of: str = "") -> str:
        lo, hi = m["intervals"][key]
        return f"{m[key]:.3f} ({lo:.3f}-{hi:.3f}{of})"

    found, called, true = (m["counts"][k] for k in ("true_called", "called", "true_pairs"))
    lines = [f"truth: {m['true_pairs']} true pairs ({m['unmatched_truth_rows']} rows naming unseen images); "
             f"micro-AP {sure('uap')}, recall at precision 0.9 {sure('recall_at_p90')} at threshold "
             f"{m['threshold_at_p90']:.4f}; at threshold {m['threshold']:g}: precision "
             f"{sure('precision', f'; {found} of {called} pairs')}, recall {sure('recall', f'; {found} of {true}')}; "
             "in brackets: 95% intervals"]
    if m["per_label_found_at_p90"]:
        lines.append("recall at precision 0.9 by label: " + ", ".join(
            f"{k} {found}/{n} ({lo:.2f}-{hi:.2f})" for k, (found, n) in m["per_label_found_at_p90"].items()
            for lo, hi in [wilson_interval(found, n)]))
    return "\n".join(lines)


def calibrate_main(argv: list[str]) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(
        prog="simbench calibrate",
        description="Fit the score tables of `simbench find` on your own labelled collection: run `simbench "
                    "find` on it (with the settings you will use), then give its output folder (or pairs.csv) "
                    "and a truth.csv of the duplicate pairs (a,b; every pair not listed counts as not a "
                    "duplicate), or a reviewer's decisions.csv (a,b,decision: duplicate rows are true pairs, "
                    "not_duplicate rows false ones, and only the pairs it lists are labelled). Use the tables "
                    "with `simbench find ... --calibration FILE`.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR TRUTH_CSV",
                        help="one or more pairs: a find output folder (or its pairs.csv) and its truth.csv")
    parser.add_argument("--out", "-o", default=None, metavar="FILE",
                        help="where to write the tables (default: FIRST_RUN_DIR/calibration.json)")
    args = parser.parse_args(argv)
    if len(args.runs) % 2:
        parser.error("give RUN_DIR TRUTH_CSV pairs")
    runs = list(zip(args.runs[::2], args.runs[1::2]))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from simbench.find.calibration import fit_from_runs, save_calibrations

    try:
        tables = fit_from_runs(runs)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    if not tables:
        print("no stage had enough labelled pairs to fit a table", file=sys.stderr)
        return 1
    first = Path(runs[0][0])
    out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "calibration.json"
    save_calibrations(tables, out, f"fitted by simbench calibrate on {', '.join(r for r, _ in runs)}")
    for t in tables:
        print(f"{t.settings['stage']}: {t.pairs} pairs ({t.true} true), {len(t.raw)} knots, "
              f"{t.signal} {t.raw[0]:.4g}..{t.raw[-1]:.4g} -> precision {t.precision[0]:.3f}..{t.precision[-1]:.3f}")
    print(f"wrote {out}; use it with: simbench find ... --calibration {out}")
    if len(tables) > 1:
        print("note: the cascade's fusion model is fitted only by benchmarks/bench_find.py calibrate; with these "
              "tables the cascade combines its stages by noisy-OR (fusion=noisy_or)")
    return 0
