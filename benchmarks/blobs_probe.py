"""What the blobs stage verifies on tuning yearbooks, before calibration: its own pairs by kind. Tuning split only.

    python benchmarks/blobs_probe.py --layouts 258,259,... [key=value ...]   # e.g. blobs.min_overlap_agreement=0.2

For each tuning school yearbook (build_yearbook seeds --layouts), find's CNN and blobs stages as `simbench find`
composes them with the overrides given (the CNN proposing each image's blobs.method.proposals best pairs, the blobs
stage verifying them: conf/find.yaml, `blobs`), run as `calibrate` runs them for the blobs table
(bench_find.fitted_stages). Printed, pooled over the layouts: the true pairs by kind (simbench.find.yearbook.pair_kind),
those the CNN proposed (among the pairs it returns, after the shared-frame rule: what the stage was given, but for
pairs of pictures in a shared frame), and at floors of the stage's raw evidence the pairs of placements of one photo
kept by kind and the pairs of different photos kept. Runs (57) and (58) of results/find.md, and after run (60).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, fitted_stages, item_placements, school_yearbook  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402

FLOORS = (0.0, 1.0, 2.0, 4.0, 8.0)


def layout_pairs(layout: int, overrides: list[str], work: Path) -> tuple[list[tuple[str, float]], list[str], list[str]]:
    """(kind or "different photos", raw evidence) of the blobs stage's pairs in one tuning yearbook, the kind of each
    of its true pairs, and the kind of each true pair the CNN proposed."""
    from simbench.find.pipeline import best_pairs_per_item, collect, raw_evidence
    from simbench.find.yearbook import pair_kind, true_pairs

    pdfs = work / f"layout{layout}"
    shutil.rmtree(pdfs, ignore_errors=True)
    placements = school_yearbook(pdfs, TUNE, layout, False)
    cfg, stages = fitted_stages("blobs", overrides)
    got = collect([pdfs], stages, cfg, work / f"index-{layout}", work, False)
    raw = raw_evidence(stages, got.features, False, None, got.items, bool(cfg.drop_shared_frames), cfg)
    where = item_placements(placements, got.items)
    blobs = raw["blobs"]
    rows = [(kind_of(placements, where[a], where[b]), float(evidence))
            for a, b, evidence in zip(blobs.a.tolist(), blobs.b.tolist(), blobs.score.tolist())]
    proposed = zip(*best_pairs_per_item([raw["cnn"]], int(cfg.blobs.method.proposals)))
    return (rows, [pair_kind(placements[i], placements[j]) for i, j in true_pairs(placements)],
            [k for k in (kind_of(placements, where[a], where[b]) for a, b in proposed) if k != "different photos"])


def kind_of(placements: list, i: int | None, j: int | None) -> str:
    """pair_kind of placements i and j when they show one photo, else "different photos" (None: no placement)."""
    from simbench.find.yearbook import pair_kind

    same = i is not None and j is not None and placements[i].photo == placements[j].photo
    return pair_kind(placements[i], placements[j]) if same else "different photos"


def main(argv=None) -> None:
    from simbench.find.yearbook import PAIR_KINDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value find settings (e.g. blobs.method.proposals=10)")
    parser.add_argument("--layouts", required=True, help="tuning yearbooks: comma-separated build_yearbook seeds")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "blobs_probe")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    rows, truth, proposed = [], [], []
    for layout in args.layouts.split(","):
        found, kinds_of_true, kinds_proposed = layout_pairs(int(layout), overrides, args.work)
        rows += found
        truth += kinds_of_true
        proposed += kinds_proposed
    kind = np.array([r[0] for r in rows], dtype=object)
    evidence = np.array([r[1] for r in rows])
    kinds = (*PAIR_KINDS, "different photos")
    print(f"blobs stage's pairs, tuning yearbooks {args.layouts} pooled; settings {' '.join(overrides) or 'default'}")
    print("| evidence >= | " + " | ".join(kinds) + " |")
    print("|---" * (1 + len(kinds)) + "|")
    print("| (true pairs) | " + " | ".join(str(truth.count(k)) for k in PAIR_KINDS) + " | - |")
    print("| (proposed) | " + " | ".join(str(proposed.count(k)) for k in PAIR_KINDS) + " | - |")
    for floor in FLOORS:
        kept = evidence >= floor
        print(f"| {floor:g} | " + " | ".join(str(int((kept & (kind == k)).sum())) for k in kinds) + " |")
    false = np.sort(evidence[kind == "different photos"])[::-1]
    print(f"pairs of different photos, highest evidence: {', '.join(f'{x:.2f}' for x in false[:5]) or 'none'}")


if __name__ == "__main__":
    main()
