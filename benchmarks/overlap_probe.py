"""How well the pictures of the keypoint stage's pairs agree over their whole overlap: the probe that fixed
keypoints.min_overlap_agreement for run (33) of results/find.md. Tuning split only.

    python benchmarks/overlap_probe.py [--work DIR] [--yearbook-layouts 2,3,...] [key=value...]

On each collection `bench_find.py calibrate` fits on, without its rebuilds (the devset tuning halves and the two
tuning yearbooks), the pairs find's keypoint stage verifies on its own (no proposals, no calibration, before the
floor: the floor is set to 0 here), then how many of them, true / false, agree over their overlap less than each of
FLOORS (simbench.find.agreement.overlap_agreement: the two report thumbnails laid one over the other by the
inliers' map), i.e. what that floor would drop. Then crest_probe.py's small case: every pair the keypoint stage
verifies on the stamped photos, with its agreement in the inliers' box and over the whole overlap.
With --yearbook-layouts, the same for those tuning yearbooks (`bench_find.py yearbook-tune --layouts`), one row
each and a pooled row. `keypoints.overlap_border=B` leaves each picture's border band out of the overlap (run 37).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import (TUNE, placement_labels, school_yearbook, tuning_collections,  # noqa: E402
                                   yearbook_name)
from benchmarks.crest_probe import COPY_PAIR, crest_images  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.find import agreement, cascade  # noqa: E402
from simbench.find.pipeline import collect, stage_pairs  # noqa: E402
from simbench.find.yearbook import true_pairs  # noqa: E402

FLOORS = (0.1, 0.15, 0.2, 0.25, 0.3)


def keypoint_stage_pairs(inputs, index, work: Path, overrides=()) -> tuple:
    """(the run's items, find's keypoint stage, the pairs it verifies on its own in item indices, before its
    gates), with `overrides` (no calibration, no proposals of other stages)."""
    cfg = cascade.make_config("cascade", list(overrides))
    stages = cascade.build_stages(cfg, calibrations={}, quiet=True)
    got = collect(inputs, stages, cfg, index, work, False)
    stage = next(s for s in stages if s.name == "keypoints")
    return got.items, stage, stage_pairs(stage, got.features[stage.name])


def keypoint_pairs(inputs, index, work: Path, overrides=()) -> tuple:
    """(the run's items, find's keypoint-stage pairs in item indices, their overlap agreement)."""
    items, stage, found = keypoint_stage_pairs(inputs, index, work, [*overrides, "keypoints.min_overlap_agreement=0"])
    return items, found, agreement.overlap_agreement(found, items, stage.overlap_border)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    parser.add_argument("--yearbook-layouts", default="", help="comma-separated tuning yearbook layouts to add")
    parser.add_argument("overrides", nargs="*", help="key=value find settings for every collection")
    args = parser.parse_args(argv)
    work = Path(args.work).expanduser()
    print("the keypoint stage's own pairs, true / false, and those whose overlap agreement is below each floor")
    print("| collection | true pairs | verified | " + " | ".join(f"< {f}" for f in FLOORS) + " |")
    print("|---|---|---|" + "---|" * len(FLOORS))
    for collection in tuning_collections(work, False):
        items, found, overlap = keypoint_pairs(collection.inputs, collection.index, work,
                                               [*collection.overrides, *args.overrides])
        print(_row(collection.tag, collection.n_true, collection.label(items, found), overlap), flush=True)
    pooled = []
    for layout in [int(x) for x in args.yearbook_layouts.split(",") if x]:
        name = yearbook_name(TUNE, layout)
        placements = school_yearbook(work / name, TUNE, layout, False)  # as yearbook-tune builds it
        items, found, overlap = keypoint_pairs([work / name], work / f"index-{name}", work, args.overrides)
        y, n_true = placement_labels(placements, items, found), len(true_pairs(placements))
        pooled.append((n_true, y, overlap))
        print(_row(f"yearbook-tune layout {layout}", n_true, y, overlap), flush=True)
    if pooled:
        print(_row("yearbook-tune, pooled", sum(p[0] for p in pooled), np.concatenate([p[1] for p in pooled]),
                   np.concatenate([p[2] for p in pooled])))
    with tempfile.TemporaryDirectory() as tmp:
        for flat in (False, True):
            folder = crest_images(Path(tmp) / str(flat), flat)
            items, found, overlap = keypoint_pairs([folder], None, Path(tmp), args.overrides)
            boxed = agreement.pair_agreement(items, found.a, found.b, found.extra["alignment"],
                                             found.extra["inlier_box"])
            print(f"crest_probe.py, {'flat' if flat else 'textured'} photos: the keypoint stage's pairs")
            names = [Path(item.display).stem for item in items]
            for k in np.argsort(-np.asarray(found.extra["evidence"])):
                pair = tuple(sorted((names[found.a[k]], names[found.b[k]])))
                print(f"  {pair[0]} ~ {pair[1]}{' (true)' if pair == COPY_PAIR else ''}: "
                      f"{found.extra['inliers'][k]} inliers, covered {found.extra['covered'][k]:.3f}, agreement "
                      f"in the inliers' box {boxed[k]:.2f}, over the whole overlap {overlap[k]:.2f}")


def _row(tag: str, n_true: int, y: np.ndarray, overlap: np.ndarray) -> str:
    cells = [f"{int((y & (overlap < f)).sum())} / {int((~y & (overlap < f)).sum())}" for f in FLOORS]
    return f"| {tag} | {n_true} | {int(y.sum())} / {int((~y).sum())} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
