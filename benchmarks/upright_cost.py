"""What the CNN's upright look (cnn.extractor.upright: simbench.data.images.upright) costs `simbench find`.

    python benchmarks/upright_cost.py [--images 500] [--rounds 3]

On bench_find.py throughput's collection (SyntheticDataset(n_references=150, n_distractors=50, seed=0), 2,000
JPEGs): the look alone over every image, decoded as the CNN decodes them (how many it turns back, ms per image);
then find's CNN extraction (its extractor as conf/find.yaml composes it) of the first --images images with
upright off and on, interleaved (off, on, off, on, ...) --rounds times, and the median of each round's on / off
ratio (the machine is shared: a ratio of adjacent runs holds, single timings do not). Runs (53) and (54) of
results/find.md judged the option's cost by this ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (available_cores, cpu_model, interleaved_ratio, load_average, ratio_text,  # noqa: E402
                               timed)


def look_alone(paths: list[Path], short_side: int) -> str:
    from simbench.data.images import open_image, upright

    images = [open_image(p, draft=(short_side, short_side), mode="RGB") for p in paths]
    start = time.perf_counter()
    turned = sum(upright(im) is not im for im in images)
    seconds = time.perf_counter() - start
    return (f"upright look alone: {len(images)} images decoded at short side >= {short_side}, {turned} turned back, "
            f"{seconds:.2f} s ({1000 * seconds / len(images):.2f} ms per image)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="images the CNN extraction embeds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved off / on rounds")
    args = parser.parse_args(argv)
    from hydra.utils import instantiate

    from simbench.data.synthetic import SyntheticDataset
    from simbench.features.cnn import region_decode_side
    from simbench.find.cascade import make_config

    print(f"# {cpu_model()}, {available_cores()} CPUs usable, load {load_average():.1f}")
    ds = SyntheticDataset(n_references=150, n_distractors=50, seed=0).load(progress=False)
    paths = [Path(p) for p in ds.paths]
    extractors = {up: instantiate(make_config("cascade", [f"cnn.extractor.upright={up}"]).cnn.extractor)
                  for up in ("false", "true")}
    # the look runs on the decode the region views need, the larger one
    print(look_alone(paths, region_decode_side(extractors["true"].prep)), flush=True)
    subset = paths[: args.images]
    for extractor in extractors.values():
        extractor.extract(subset[:32])  # warm-up: the model built, the runtime's kernels chosen
    measured = interleaved_ratio(lambda: timed(extractors["false"].extract, subset)[0],
                                 lambda: timed(extractors["true"].extract, subset)[0], args.rounds,
                                 names=("upright=false", "upright=true"))
    print(f"CNN extraction of {len(subset)} images, {args.rounds} interleaved rounds: upright {ratio_text(measured)}")


if __name__ == "__main__":
    main()
