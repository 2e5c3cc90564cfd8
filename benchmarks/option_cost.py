"""What a setting of `simbench find` costs a whole run: find with and without it, interleaved, on one collection.

    python benchmarks/option_cost.py blobs.extractor.max_size=192 [calibration=FILE ...] [--images N] [--rounds 3]
    python benchmarks/option_cost.py --off blobs.method.proposals=0     # what a default setting costs

On bench_find.py throughput's collection (SyntheticDataset(n_references=150, n_distractors=50, seed=0), 2,000
JPEGs; the folder the time bar of results/find.md is measured on), or its first --images images: `find` (the
default method, every output written) with the default settings
and --off's ("off") and with the overrides given ("on"), each from an empty index (every feature extracted, as a
first run pays), interleaved (off, on, off, on, ...) --rounds times, after one warm-up run of each on 32 images; then
the median of each round's on / off ratio (the machine is shared: a ratio of adjacent runs holds, single timings do
not). Runs (55) to (60) of results/find.md judged the blobs stage's cost by this ratio (before it was the default:
on = blobs.method.proposals=5, off = none).

The collection lists each reference with its copies first and the pictures without a copy last, so its first images
are not a sample of it: until run (99) the default was --images 500 (the first 39 references and their copies, no
picture without a copy), where a setting that works on pictures with no copy (align's looks) costs or saves less than
on the whole folder (run (98) of results/find.md). The default is now the whole folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (available_cores, cpu_model, interleaved_ratio, load_average, ratio_text,  # noqa: E402
                               timed)


def timed_find(paths: list[Path], overrides: list[str]) -> float:
    """Seconds of one find run over `paths` from an empty index, its outputs in a folder removed afterwards."""
    from simbench.find import cascade
    from simbench.find.pipeline import find

    cfg = cascade.make_config(None, overrides)
    tmp = Path(tempfile.mkdtemp(prefix="option-cost-"))
    try:
        return timed(find, paths, tmp / "out", cfg, tmp / "index", False)[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value settings of the 'on' runs")
    parser.add_argument("--off", nargs="*", default=[], help="key=value settings of the 'off' runs (default none)")
    parser.add_argument("--images", type=int, default=None,
                        help="the collection's first N images per find run (default: all 2,000; see above)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved off / on rounds")
    args = parser.parse_args(argv)
    from simbench.data.synthetic import SyntheticDataset

    if not args.overrides and not args.off:
        parser.error("give the 'on' runs' settings, or --off's")
    print(f"# {cpu_model()}, {available_cores()} CPUs usable, load {load_average():.1f}; "
          f"on: {' '.join(args.overrides)}; off: {' '.join(args.off)}")
    ds = SyntheticDataset(n_references=150, n_distractors=50, seed=0).load(progress=False)
    paths = [Path(p) for p in ds.paths][: args.images]
    runs = {"off": list(args.off), "on": list(args.overrides)}
    for overrides in runs.values():
        timed_find(paths[:32], overrides)  # warm-up: models built, the runtime's kernels chosen
    measured = interleaved_ratio(lambda: timed_find(paths, runs["off"]), lambda: timed_find(paths, runs["on"]),
                                 args.rounds)
    print(f"find on {len(paths)} images, {args.rounds} interleaved rounds: {ratio_text(measured)}")


if __name__ == "__main__":
    main()
