"""The `simbench` command.

    simbench [run] [overrides]         the Hydra runner (python -m simbench)
    simbench find PATH... --out DIR    duplicate images in folders and PDFs (simbench.find)
    simbench report RUN_DIR... --out DIR   tables and plots from stored runs (simbench.report)
"""
from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "find":
        sys.exit(find_main(args[1:]))
    if args and args[0] == "report":
        from simbench.report import main as report_main

        sys.exit(report_main(args[1:]))
    if args and args[0] == "run":
        del sys.argv[1]
    sys.argv[1:] = implied_method(sys.argv[1:])
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


FIND_EPILOG = """\
outputs in DIR:
  pairs.csv     a,b,score (higher = more similar; score = estimated precision, 0..1), then for PDF images
                a_source,a_page,a_bbox,b_source,b_page,b_bbox (page 1-based, bbox "x0 y0 x1 y1" in PDF
                points as placed, origin top left), and method (identical, keypoints, cnn, hash, linked)
  groups.json   duplicate groups (union-find over pairs scoring >= threshold)
  skipped.csv   file,reason for everything that could not be compared
  report.html   self-contained page: groups side by side, threshold slider, method filter

methods:
  cascade (default)  identical image data, then BRISK keypoints (of the mirror image too) verified by
                     a RANSAC fit, then EfficientNet-Lite0 similarity for blur and thumbnails; each
                     score calibrated to an estimated precision, fused, and linked through groups
  keypoints          identical data + verified keypoints only (no CNN: faster)
  cnn                identical data + CNN embeddings only
  hash               identical data + perceptual hash (phash) only: fastest, misses crops

overrides (key=value, any setting of simbench.find.cascade.DEFAULTS), e.g.:
  threshold=0.9  min_score=0.2  link=false  pdf.min_side_px=64  pdf.min_side_pt=36
  keypoints.extractor.max_features=1000  cnn.extractor.device=cuda

examples:
  simbench find photos/ yearbook/*.pdf --out review/
  simbench find book1.pdf book2.pdf --out review/ --index ~/.cache/yearbook-index
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
                             "slider starts). Scores estimate precision: 0.95 (the default) keeps pairs that are "
                             "at least 95%% likely to be true duplicates")
    parser.add_argument("--index", metavar="DIR", default=None,
                        help="keep features here, keyed by file content, so that a later run extracts only "
                             "new or changed files")
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
    args = parser.parse_args(argv)
    inputs, overrides = split_overrides(args.paths)
    if not inputs:
        parser.error("give at least one folder, image or PDF")
    if args.threshold is not None:
        overrides.append(f"threshold={args.threshold}")
    import logging

    from simbench.find.cascade import make_config
    from simbench.find.pipeline import find

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        cfg = make_config(args.method, overrides)
    except Exception as exc:  # a bad override: say which, without a traceback
        parser.error(str(exc))
    result = find(inputs, args.out, cfg, index=args.index, progress=not args.quiet)
    print(result.summary(args.out, float(cfg.threshold)))
    return 0
