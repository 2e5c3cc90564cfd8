"""The keypoint stage alone with its pictures' grey histograms equalised or not (keypoints.extractor.equalise and
equalise_clip): the probes behind runs (43) to (45) and (51) of results/find.md. Tuning split only.

    python benchmarks/equalise_probe.py [--layouts 18,19,20,21] [--seeds 0] [--work DIR]

For each variant (find's keypoint stage as the default sets it, but for the equalise settings; or the threshold
ladder off), the keypoint stage's raw pairs (before find's frame and overlap gates, the calibration and the
fusion), ranked by their raw evidence: on the tuning yearbooks of those build_yearbook seeds (pooled), the true and
false pairs it finds, micro-AP and the best recall with precision >= 0.95, and per kind of true pair (of a flat
photo; recoloured in one placement and not the other; neither) how many it finds; on the tuning devset's line art
and photographs (build seeds --seeds), micro-AP and recall at precision 0.9. Pairs it does not find count as
missed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, dev_set, school_yearbook, yearbook_name  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402

#: name -> overrides of find's config (keypoints.extractor.*)
VARIANTS = {
    "as decoded": ["equalise=null", "equalise_clip=null"],
    "threshold ladder off": ["equalise=null", "equalise_clip=null", "adaptive=false"],
    "all equalised": ["equalise=all", "equalise_clip=null"],
    "coarse equalised": ["equalise=coarse", "equalise_clip=null"],
    "coarse equalised (clip 3)": ["equalise=coarse", "equalise_clip=3.0"],
    "coarse equalised (clip 1.5)": ["equalise=coarse", "equalise_clip=1.5"],
    "coarse equalised (clip 6)": ["equalise=coarse", "equalise_clip=6.0"],
}


def keypoint_stage(overrides: list[str]):
    from simbench.find.cascade import build_stages, make_config

    cfg = make_config("keypoints", [f"keypoints.extractor.{o}" for o in overrides])
    stage, = (s for s in build_stages(cfg, calibrations={}, quiet=True) if s.name == "keypoints")
    return cfg, stage


def raw_pairs(folder: Path, cfg, stage, index: Path, work: Path):
    """(items, the stage's raw pairs in item indices) of the images under `folder`."""
    from simbench.find.pipeline import collect, stage_pairs

    got = collect([folder], [stage], cfg, index, work, False)
    return got.items, stage_pairs(stage, got.features["keypoints"])


def ranked(evidence: np.ndarray, is_true: np.ndarray, n_true: int, precision: float) -> tuple[float, float]:
    """micro-AP and the best recall with precision >= `precision` of pairs ranked by evidence (n_true: all
    true pairs, found or not)."""
    from simbench.evaluate import micro_ap, recall_at_precision

    return micro_ap(evidence, is_true, n_true), recall_at_precision(evidence, is_true, n_true, precision)[0]


def yearbooks(layouts: list[int], overrides: list[str], work: Path) -> str:
    from simbench.find.yearbook import match_placement, true_pairs

    cfg, stage = keypoint_stage(overrides)
    evidence, is_true, n_true = [], [], 0
    kinds = {"flat": [0, 0], "recoloured": [0, 0], "neither": [0, 0]}
    for layout in layouts:
        name = yearbook_name(TUNE, layout)
        placements = school_yearbook(work / name, TUNE, layout, False)
        items, found = raw_pairs(work / name, cfg, stage, work / f"index-{name}", work)
        place = [match_placement(placements, it.source, it.page, it.bbox) if it.bbox else None for it in items]
        truth = {tuple(sorted(p)) for p in true_pairs(placements)}
        best: dict[tuple[int, int], float] = {}
        for a, b, e in zip(found.a, found.b, np.asarray(found.extra["evidence"], float)):
            i, j = place[a], place[b]
            if i is not None and j is not None:
                best[(min(i, j), max(i, j))] = max(best.get((min(i, j), max(i, j)), 0.0), e)
        evidence += list(best.values())
        is_true += [p in truth for p in best]
        n_true += len(truth)
        for i, j in truth:
            kind = ("flat" if placements[i].flat else
                    "recoloured" if placements[i].colour != placements[j].colour else "neither")
            kinds[kind][0] += 1
            kinds[kind][1] += (i, j) in best
    is_true = np.array(is_true, bool)
    ap, r95 = ranked(np.array(evidence), is_true, n_true, 0.95)
    kind_text = ", ".join(f"{k} {found}/{n}" for k, (n, found) in kinds.items())
    return f"{is_true.sum()}/{n_true} | {(~is_true).sum()} | {ap:.3f} | {r95:.3f} | {kind_text}"


def devset(part: str, seed: int, overrides: list[str], work: Path) -> str:
    cfg, stage = keypoint_stage(overrides)
    ds = dev_set(TUNE, part, False, seed)
    items, found = raw_pairs(ds.root / "images", cfg, stage, work / f"index-{part}-{seed}", work)
    where = {str(Path(p).resolve()): k for k, p in enumerate(ds.paths)}
    index = np.array([where[str(Path(it.source).resolve())] for it in items])
    truth = {(int(a), int(b)) for a, b in ds.truth}
    a, b = index[found.a], index[found.b]
    is_true = np.array([(min(x, y), max(x, y)) in truth for x, y in zip(a, b)], bool)
    ap, r90 = ranked(np.asarray(found.extra["evidence"], float), is_true, ds.n_true_pairs, 0.9)
    return f"{ap:.3f} / {r90:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="18,19,20,21", help="tuning yearbooks: build_yearbook seeds")
    parser.add_argument("--seeds", default="0", help="tuning devset build seeds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "bench_find",
                        help="bench_find.py's work folder: the yearbooks' PDFs and indexes")
    args = parser.parse_args(argv)
    layouts = [int(x) for x in args.layouts.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    probe = default_cache_dir() / "equalise_probe"
    parts = [f"{part} {seed}" for part in ("lineart", "photo") for seed in seeds]
    print(f"keypoint stage alone, raw evidence ranking; tuning yearbooks {args.layouts} pooled, tuning devset")
    print("| variant | yearbooks: true found | false found | micro-AP | best recall @ P0.95 | true found by kind | "
          + " | ".join(f"{p}: micro-AP / recall @ P0.9" for p in parts) + " |")
    print("|---" * (6 + len(parts)) + "|")
    for name in args.variants.split(","):
        overrides = VARIANTS[name]
        cells = [yearbooks(layouts, overrides, args.work)]
        cells += [devset(part, seed, overrides, probe) for part in ("lineart", "photo") for seed in seeds]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
