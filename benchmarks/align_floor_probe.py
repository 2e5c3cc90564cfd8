"""How many pairs the verifying stages look at, and align's seconds, with and without align's CNN floor: the
count behind runs (98) and (99) of results/find.md (`align.method.proposal_min_score`).

    python benchmarks/align_floor_probe.py [--images N] [--index DIR] [--floors null,0.52]

On bench_find.py throughput's collection (SyntheticDataset(n_references=150, n_distractors=50, seed=0), 2,000 JPEGs)
or its first N images (option_cost.py's: the first references and their copies): find's stages (calibrated, as
find runs them) and raw evidence once per floor, the features from --index (extracted there on first use), then per
verifying stage the pairs proposed to it and the seconds it took to verify them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cpu_model, load_average  # noqa: E402
from simbench.data.synthetic import SyntheticDataset, default_cache_dir  # noqa: E402
from simbench.find import cascade, pipeline  # noqa: E402


def proposed_counts(paths: list[Path], index: Path, floor: str) -> dict[str, tuple[int, float]]:
    """{verifying stage: (pairs proposed to it, seconds verifying them)} of one find over `paths`: read off each
    `verify_proposed` call's run-wide extras (the raw evidence keeps per-pair fields only)."""
    cfg = cascade.make_config("cascade", [f"align.method.proposal_min_score={floor}"])
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="the collection's first N images (default: all)")
    parser.add_argument("--index", default=str(default_cache_dir() / "align_floor_probe" / "index"))
    parser.add_argument("--floors", default="null,0.52", help="comma-separated align.method.proposal_min_score values")
    args = parser.parse_args(argv)
    ds = SyntheticDataset(n_references=150, n_distractors=50, seed=0).load(progress=False)
    paths = [Path(p) for p in ds.paths][: args.images]
    print(f"# {cpu_model()}, load {load_average():.1f}; {len(paths)} images")
    print("| align.method.proposal_min_score | stage | pairs proposed | seconds verifying |")
    print("|---|---|---:|---:|")
    for floor in args.floors.split(","):
        for name, (n, seconds) in proposed_counts(paths, Path(args.index).expanduser(), floor).items():
            print(f"| {floor} | {name} | {n} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
