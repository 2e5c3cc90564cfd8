"""How many pairs the verifying stages look at, and align's seconds, with and without align's CNN floor: the
count behind runs (98) and (99) of results/find.md (`align.method.proposal_min_score`).

    python benchmarks/align_floor_probe.py [--images N] [--index DIR] [--floors null,0.52] [KEY=VALUE ...]
    python benchmarks/align_floor_probe.py --yearbooks 1734-1797 --work DIR [--floors 0.50,0.52] [KEY=VALUE ...]

On bench_find.py throughput's collection (SyntheticDataset(n_references=150, n_distractors=50, seed=0), 2,000 JPEGs)
or its first N images (`option_cost.py --images N`'s: the first references and their copies): find's stages
(calibrated, as find runs them) and raw evidence once per floor, the features from --index (extracted there on first
use), then per verifying stage the pairs proposed to it and the seconds it took to verify them.

KEY=VALUE settings apply to every find run (e.g. align.method.proposals=3: what a third look costs under the floor).

With --yearbooks (tuning layouts only: how the floor was chosen): the default find with the floor off over those
tuning yearbooks (bench_find.py yearbook-tune's PDFs and index names in --work, so its indexes are reused), each of
align's proposals labelled by the placements (true: two placements of one photo) with the CNN's raw score that ranked
it; then per floor the share of proposals it keeps, and the true pairs at find's threshold that align verified from a
proposal under it (what the floor can lose; "align alone": those whose fused score is align's).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, item_placements, school_yearbook, yearbook_name  # noqa: E402
from benchmarks.common import cpu_model, load_average  # noqa: E402
from simbench.data.synthetic import SyntheticDataset, default_cache_dir  # noqa: E402
from simbench.find import cascade, pipeline  # noqa: E402


def proposed_counts(paths: list[Path], index: Path, floor: str, overrides: tuple[str, ...] = ()
                    ) -> dict[str, tuple[int, float]]:
    """{verifying stage: (pairs proposed to it, seconds verifying them)} of one find over `paths`: read off each
    `verify_proposed` call's run-wide extras (the raw evidence keeps per-pair fields only)."""
    cfg = cascade.make_config("cascade", [*overrides, f"align.method.proposal_min_score={floor}"])
    stages = cascade.build_stages(cfg, quiet=True)  # calibrated: align skips what the stages before it hold at 0.95
    seen, verify = {}, pipeline.verify_proposed

    def counted(stage, *args, **kwargs):
        pairs = verify(stage, *args, **kwargs)
        seen[stage.name] = (int(pairs.extra["proposed_pairs"]), float(pairs.extra["proposed_s"]))
        return pairs

    pipeline.verify_proposed = counted
    try:
        with tempfile.TemporaryDirectory() as work:
            got = pipeline.collect(paths, stages, cfg, index, Path(work), False)
            pipeline.raw_evidence(stages, got.features, False, None, got.items, cfg.drop_shared_frames, cfg)
    finally:
        pipeline.verify_proposed = verify
    return seen


def yearbook_proposals(layouts: list[int], work: Path, overrides: tuple[str, ...] = ()) -> tuple[list[dict], float]:
    """Per align proposal of the default find with the floor off, over tuning yearbooks: layout, the CNN's raw
    score (None: proposed for the keypoints' sake, which the floor never drops), whether it is a true pair,
    whether align verified it, the pair's fused score and method; and find's threshold."""
    cfg = cascade.make_config("cascade", [*overrides, "align.method.proposal_min_score=null"])
    proposed, propose = [], pipeline.proposed_pairs

    def recorded(stage, found, others, *args, **kwargs):
        a, b = propose(stage, found, others, *args, **kwargs)
        if stage.name == "align":
            n = 1 + max([int(b.max(initial=0)), *(int(max(p.a.max(initial=0), p.b.max(initial=0))) for p in others)])
            best = {}  # pair key -> the best score the ranking stages gave it
            for p in others:
                for key, s in zip(pipeline.pair_keys(p.a, p.b, n).tolist(), p.score):
                    best[key] = max(best.get(key, -np.inf), float(s))
            keys = pipeline.pair_keys(a, b, n).tolist()
            proposed.append([(int(x), int(y), best.get(key)) for x, y, key in zip(a, b, keys)])
        return a, b

    rows = []
    pipeline.proposed_pairs = recorded
    try:
        for layout in layouts:
            name = yearbook_name(TUNE, layout)
            shutil.rmtree(work / name, ignore_errors=True)
            placements = school_yearbook(work / name, TUNE, layout, False)
            proposed.clear()
            result = pipeline.find([work / name], work / f"out-{name}-floor-probe", cfg, index=work / f"index-{name}",
                                   progress=False, write=False)
            where = item_placements(placements, result.items)
            fused = {(int(a), int(b)): (float(s), str(m))
                     for a, b, s, m in zip(result.pairs.a, result.pairs.b, result.pairs.score, result.pairs.method)}
            verified = set(zip(result.raw["align"].a.tolist(), result.raw["align"].b.tolist()))
            for pairs in proposed:
                for x, y, cnn in pairs:
                    i, j = where[x], where[y]
                    score, method = fused.get((x, y), (0.0, "-"))
                    rows.append({"layout": layout, "cnn": cnn, "verified": (x, y) in verified, "score": score,
                                 "method": method, "true": i is not None and j is not None and
                                 placements[i].photo == placements[j].photo})
            print(f"# layout {layout}: {sum(map(len, proposed))} align proposals", flush=True)
    finally:
        pipeline.proposed_pairs = propose
    return rows, float(cfg.threshold)


def yearbook_table(rows: list[dict], threshold: float, floors: list[float]) -> None:
    held = [r for r in rows if r["true"] and r["verified"] and r["score"] >= threshold and r["cnn"] is not None]
    ranked = [r for r in rows if r["cnn"] is not None]
    print(f"{len(rows)} align proposals ({sum(r['true'] for r in rows)} true), {len(ranked)} of them ranked by the "
          f"CNN; {len(held)} true pairs align verified ended at >= {threshold:g}; their lowest CNN scores: "
          + ", ".join(f"{r['cnn']:.3f}" for r in sorted(held, key=lambda r: r["cnn"])[:6]))
    print("| floor | proposals kept | true proposals kept | true pairs at the threshold from under it "
          "(align alone) |")
    print("|---:|---:|---:|---:|")
    for floor in floors:
        kept = [r["cnn"] is None or r["cnn"] >= floor for r in rows]
        true_kept = [k for k, r in zip(kept, rows) if r["true"]]
        lost = [r for r in held if r["cnn"] < floor]
        print(f"| {floor:g} | {np.mean(kept):.0%} | {np.mean(true_kept):.0%} | {len(lost)} "
              f"({sum(r['method'] == 'align' for r in lost)}) |")


def layout_list(text: str) -> list[int]:
    """'1734-1797' or '1,5,9' (or a mix) -> the layouts."""
    out = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="the collection's first N images (default: all)")
    parser.add_argument("--index", default=str(default_cache_dir() / "align_floor_probe" / "index"))
    parser.add_argument("--floors", default="null,0.52", help="comma-separated align.method.proposal_min_score values")
    parser.add_argument("overrides", nargs="*",
                        help="key=value settings of every find run (default: find's own), e.g. "
                        "align.method.proposals=3")
    parser.add_argument("--yearbooks", type=layout_list, default=None,
                        help="tuning yearbook layouts ('1734-1797'): align's proposals there labelled (see above)")
    parser.add_argument("--work", default=None, help="with --yearbooks: the PDFs, their indexes and outputs")
    args = parser.parse_args(argv)
    if args.yearbooks:
        if not args.work:
            parser.error("--yearbooks needs --work")
        print(f"# {cpu_model()}, load {load_average():.1f}; tuning yearbook layouts {args.yearbooks[0]}-"
              f"{args.yearbooks[-1]} ({len(args.yearbooks)}); {' '.join(args.overrides) or 'default settings'}")
        rows, threshold = yearbook_proposals(args.yearbooks, Path(args.work).expanduser(), args.overrides)
        yearbook_table(rows, threshold, [float(f) for f in args.floors.split(",") if f != "null"])
        return
    ds = SyntheticDataset(n_references=150, n_distractors=50, seed=0).load(progress=False)
    paths = [Path(p) for p in ds.paths][: args.images]
    settings = " ".join(args.overrides) or "default settings"
    print(f"# {cpu_model()}, load {load_average():.1f}; {len(paths)} images; {settings}")
    print("| align.method.proposal_min_score | stage | pairs proposed | seconds verifying |")
    print("|---|---|---:|---:|")
    for floor in args.floors.split(","):
        for name, (n, seconds) in proposed_counts(paths, Path(args.index).expanduser(), floor, args.overrides).items():
            print(f"| {floor} | {name} | {n} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
