"""How well the pictures of the keypoint stage's pairs agree AWAY from their matches: the probe behind
keypoints.min_away_agreement (run (105) of results/find.md). Tuning data only.

    python benchmarks/away_probe.py [--work DIR] [--seeds 1,2] [--yearbook-layouts 1990,...,2053
                                    --yearbook-work DIR] [key=value...]

On each collection `bench_find.py calibrate` fits on (with --seeds, its rebuilds too; --collections none: none) and,
with --yearbook-layouts, on those tuning yearbooks (`bench_find.py yearbook-tune --layouts`, in its --work:
--yearbook-work), the pairs find's keypoint stage verifies on its own and keeps past its overlap gate (the shipped
min_overlap_agreement), then how many of them, true / false, agree away from their matches less than each of FLOORS
(simbench.find.agreement.away_agreement: the two report thumbnails laid over each other by the inliers' map, a disc
around each match and a band along the edges left out), i.e. what that floor would drop; "n/a": pairs it cannot judge
(kept). Pairs with a content-free yearbook placement are left out, as the yearbook scoring leaves them out. In
brackets the strong pairs (evidence at least STRONG), by which a false pair gets called.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import (TUNE, placement_labels, placement_scored, school_yearbook,  # noqa: E402
                                   tuning_collections, yearbook_name)
from benchmarks.overlap_probe import keypoint_stage_pairs  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.find import agreement  # noqa: E402
from simbench.find.pipeline import agreed_over_overlap  # noqa: E402

FLOORS = (-0.1, 0.0, 0.1, 0.2, 0.3)
STRONG = 1.0


def keypoint_pairs(inputs, index, work: Path, overrides=()) -> tuple:
    """(the run's items, find's keypoint-stage pairs in item indices past its overlap gate, their away agreement)."""
    items, stage, found = keypoint_stage_pairs(inputs, index, work, [*overrides, "keypoints.min_away_agreement=0"])
    found = agreed_over_overlap(stage, found, items)  # the shipped overlap gate (the away gate is off here)
    return items, found, agreement.away_agreement(found, items)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    parser.add_argument("--yearbook-layouts", default="", help="comma-separated tuning yearbook layouts")
    parser.add_argument("--yearbook-work", default=None, help="their yearbook-tune --work (default: --work)")
    parser.add_argument("--collections", choices=("calibrate", "none"), default="calibrate",
                        help="none: the yearbooks only")
    parser.add_argument("--seeds", default="", help="comma-separated devset rebuilds whose tuning split to add")
    parser.add_argument("overrides", nargs="*", help="key=value find settings for every collection")
    args = parser.parse_args(argv)
    work = Path(args.work).expanduser()
    print("the keypoint stage's pairs past its overlap gate, true / false, and those whose away agreement is below "
          "each floor (all pairs; in brackets, those with evidence >= %g)" % STRONG)
    print("| collection | verified | " + " | ".join(f"< {f}" for f in FLOORS) + " | n/a |")
    print("|---|---|" + "---|" * (len(FLOORS) + 1))
    pooled = {}
    seeds = tuple(int(x) for x in args.seeds.split(",") if x)
    for collection in tuning_collections(work, False, [], seeds) if args.collections == "calibrate" else []:
        items, found, away = keypoint_pairs(collection.inputs, collection.index, work,
                                            [*collection.overrides, *args.overrides])
        scored, y = collection.labelled(items, found)
        strong = (np.asarray(found.extra["evidence"]) >= STRONG)[scored]
        pooled.setdefault("calibrate's collections, pooled", []).append((y, strong, away[scored]))
        print(_row(collection.tag, y, strong, away[scored]), flush=True)
    books = Path(args.yearbook_work).expanduser() if args.yearbook_work else work
    for layout in [int(x) for x in args.yearbook_layouts.split(",") if x]:
        name = yearbook_name(TUNE, layout)
        placements = school_yearbook(books / name, TUNE, layout, False)  # as yearbook-tune builds it
        items, found, away = keypoint_pairs([books / name], books / f"index-{name}", books, args.overrides)
        scored = placement_scored(placements, items, found)
        y = placement_labels(placements, items, found)[scored]
        strong = (np.asarray(found.extra["evidence"]) >= STRONG)[scored]
        pooled.setdefault("yearbook-tune, pooled", []).append((y, strong, away[scored]))
        print(_row(f"yearbook-tune layout {layout}", y, strong, away[scored]), flush=True)
    for tag, parts in pooled.items():
        print(_row(tag, *(np.concatenate([p[k] for p in parts]) for k in range(3))))


def _row(tag: str, y: np.ndarray, strong: np.ndarray, away: np.ndarray) -> str:
    def cell(sel: np.ndarray) -> str:
        return f"{int((y & sel).sum())} / {int((~y & sel).sum())} ({int((y & sel & strong).sum())} / " \
               f"{int((~y & sel & strong).sum())})"
    return (f"| {tag} | {cell(np.ones(len(y), bool))} | " + " | ".join(cell(away < f) for f in FLOORS)
            + f" | {cell(np.isnan(away))} |")


if __name__ == "__main__":
    main()
