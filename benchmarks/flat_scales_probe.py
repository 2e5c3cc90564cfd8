"""Would the align stage find more flat yearbook copies if it refined every scale of its search? Tuning split only.

    python benchmarks/flat_scales_probe.py --layouts 1414,1415,... [--index-root DIR]

For each tuning school yearbook (build_yearbook seeds --layouts), the default `simbench find` (with --index-root,
the indexes a `bench_find.py yearbook-tune --work DIR` run left there, DIR/index-yearbook-tune-layoutN, are reused);
then every pair among each picture's `proposals` best CNN partners (what align is proposed) that has a flat placement
(simbench.find.yearbook's low-texture photos) is aligned twice: by `align_pair` as the stage runs it, and by
refining every (way round, quarter turn, scale) of the search's grid at that scale's best shift, not only each
turn's peaks over scale. A smooth picture correlates well with a zoomed-in smooth part of itself, so the coarse
search's peaks can sit at the ends of the scale range, far from the true scale, and no peak refines.

Printed, pooled over the layouts: the pairs by truth (T: two placements of one photo; F: of different photos), by the
stage's correlation band and by the best correlation with every scale refined ("none": nothing refines).
A probe (the lead after run (92)), not a setting of find; its refinement costs up to 72 ECC runs per pair.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_find as bf  # noqa: E402
from simbench.find import cascade  # noqa: E402
from simbench.find.items import grey_thumbnail  # noqa: E402
from simbench.find.pipeline import best_pairs_per_item, find  # noqa: E402
from simbench.find.yearbook import match_placement, true_pairs  # noqa: E402
from simbench.methods import align  # noqa: E402


def every_scale(a: np.ndarray, b: np.ndarray) -> float | None:
    """The best correlation of `align.refine` over every (way round, turn, scale) of the search grid
    (`align.scale_hypotheses`: each at its best shift); None: nothing refines."""
    a, b = align.at_refine_side(a), align.at_refine_side(b)
    refined = [align.refine(x, y, hypothesis, overlap_template=True, trim=True)
               for x, y in ((a, b), (b, a)) for per_turn in align.scale_hypotheses(x, y) for hypothesis in per_turn]
    return max((float(r.correlation) for r in refined if r is not None), default=None)


def band(correlation: float | None) -> str:
    if correlation is None:
        return "none"
    return "<0.97" if correlation < 0.97 else "0.97-0.99" if correlation < 0.99 else ">=0.99"


def layout_counts(layout: int, index_root: Path | None) -> collections.Counter:
    counts = collections.Counter()
    cfg = cascade.make_config(None, [])
    options = next(s for s in cascade.build_stages(cfg, calibrations={}, quiet=True)
                   if s.name == "align").method.options  # align_pair's options as the stage runs it
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        placements = bf.school_yearbook(tmp / "pdfs", bf.TUNE, layout, False)
        truth = true_pairs(placements)
        index = (index_root / f"index-{bf.yearbook_name(bf.TUNE, layout)}") if index_root else tmp / "index"
        result = find([tmp / "pdfs"], tmp / "out", cfg, index=index, progress=False)
        place = [match_placement(placements, it.source, it.page, it.bbox) if it.page else None for it in result.items]
        for a, b in zip(*(x.tolist() for x in best_pairs_per_item([result.raw["cnn"]], cfg.align.method.proposals))):
            pa, pb = place[a], place[b]
            if pa is None or pb is None or not (placements[pa].flat or placements[pb].flat):
                continue
            ga, gb = grey_thumbnail(result.items[a].thumb), grey_thumbnail(result.items[b].thumb)
            if ga is None or gb is None:
                continue
            stage = align.align_pair(ga, gb, **options)
            stage = None if stage is None else float(stage.correlation)
            more = every_scale(ga, gb) if stage is None or stage < 0.99 else stage
            best = max((v for v in (stage, more) if v is not None), default=None)
            counts[("T" if (min(pa, pb), max(pa, pb)) in truth else "F", band(stage), band(best))] += 1
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", required=True, help="tuning yearbook layouts, e.g. 1414,1415")
    parser.add_argument("--index-root", type=Path, default=None,
                        help="a yearbook-tune --work folder whose indexes to reuse (else each layout is indexed anew)")
    args = parser.parse_args(argv)
    total = collections.Counter()
    for layout in (int(x) for x in args.layouts.split(",")):
        total += layout_counts(layout, args.index_root)
        print(f"layout {layout} done", flush=True)
    print("| truth | the stage's correlation | every scale refined | pairs |\n|---|---|---|---|")
    for (truth, stage, best), n in sorted(total.items()):
        print(f"| {truth} | {stage} | {best} | {n} |")


if __name__ == "__main__":
    main()
