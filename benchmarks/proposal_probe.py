"""What the keypoint stage's proposals verify on the tuning split: the diagnosis behind runs (27) and (28) of
results/find.md. Tuning split only.

    python benchmarks/proposal_probe.py [--work DIR] [--proposals K] [--min-inliers N] [key=value...]

On each collection `bench_find.py calibrate` fits on, without its rebuilds (the devset tuning halves, each with
the copy whitening fitted on the other halves, and the two tuning yearbooks): the cascade's raw evidence (find's
stages, no calibration), with keypoints.method.proposals=K (10: run 27) and no coverage floor for proposed
pairs, then how many proposed pairs verify, true and false, and how many of them cover at least each of
FLOORS of their pictures (keypoints.method.proposal_min_coverage; run 27 ran with the floor of the stage's own
pairs, min_coverage 0.01). Also how many true and false pairs the keypoint stage verifies without proposals.
--min-inliers N: count only the proposed pairs with at least N RANSAC inliers (default: the stage's min_inliers).
key=value: find settings for every collection, e.g. keypoints.method.min_coverage=0.02 (the stage's own floor) or
keypoints.method.coverage_extent=1.0 (the coverage rule's least extent of a picture's keypoints, a share of its
area), for the stage's own pairs and the proposed ones alike.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import tuning_collections  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.find import cascade  # noqa: E402
from simbench.find.pipeline import collect, raw_evidence  # noqa: E402

FLOORS = (0.01, 0.02, 0.05, 0.1)


def proposed_figures(collection, proposals: int, work: Path, overrides=()) -> dict:
    """On one tuning collection: true pairs, the true and false ones the keypoints verify on their own, and
    the proposed pairs that verify (is_true and covered share of each)."""
    cfg = cascade.make_config("cascade", [*collection.overrides, f"keypoints.method.proposals={proposals}",
                                          "keypoints.method.proposal_min_coverage=0",
                                          "keypoints.extra_signals=[covered,proposed,inliers]", *overrides])
    stages = cascade.build_stages(cfg, calibrations={}, quiet=True)
    got = collect(collection.inputs, stages, cfg, collection.index, work, False)
    keypoints = raw_evidence(stages, got.features, False, None, got.items, cfg.drop_shared_frames, cfg)["keypoints"]
    is_true = collection.label(got.items, keypoints)
    proposed = keypoints.extra["proposed"] > 0
    return {"true_pairs": collection.n_true, "own_true": int((is_true & ~proposed).sum()),
            "own_false": int((~is_true & ~proposed).sum()),
            "is_true": is_true[proposed], "covered": keypoints.extra["covered"][proposed],
            "inliers": keypoints.extra["inliers"][proposed]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    parser.add_argument("--proposals", type=int, default=10)
    parser.add_argument("--min-inliers", type=int, default=None,
                        help="count only proposed pairs with this many inliers (default: the stage's min_inliers)")
    parser.add_argument("overrides", nargs="*", help="key=value find settings for every collection")
    args = parser.parse_args(argv)
    work = Path(args.work).expanduser()
    method = cascade.make_config("cascade", args.overrides).keypoints.method
    min_inliers = method.min_inliers if args.min_inliers is None else args.min_inliers
    print(f"keypoints.method.proposals={args.proposals}, coverage_extent={method.coverage_extent}: proposed pairs "
          f"that verify with >= {min_inliers} inliers, true / false, by the share of their pictures they cover (the "
          f"stage's own floor is {method.min_coverage})")
    print("| collection | true pairs | verified without proposals, true / false | proposed, verified | "
          + " | ".join(f"covering >= {f}" for f in FLOORS) + " |")
    print("|---|---|---|---|" + "---|" * len(FLOORS))
    for collection in tuning_collections(work, False):
        got = proposed_figures(collection, args.proposals, work, args.overrides)
        counted = got["inliers"] >= min_inliers
        y, covered = got["is_true"][counted], got["covered"][counted]
        cells = [f"{int((y & (covered >= f)).sum())} / {int((~y & (covered >= f)).sum())}" for f in FLOORS]
        print(f"| {collection.tag} | {got['true_pairs']} | {got['own_true']} / {got['own_false']} | "
              f"{int(y.sum())} / {int((~y).sum())} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
