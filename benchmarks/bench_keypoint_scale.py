"""Keypoints at scale: N images x up to 1,000 BRISK descriptors, extraction + matching + scoring, end to end.

    python benchmarks/bench_keypoint_scale.py                 # 10,000 images (issue #3's scale figure)
    python benchmarks/bench_keypoint_scale.py --n 2000 --join-check 2000

1. Builds simbench.data.collection.CollectionDataset(n_images=N) once (not timed: making test data is not
   the method's work; it is cached for later runs).
2. Runs the runner as a user would, in a fresh process, with the feature cache off so that extraction
   is measured:  python -m simbench method=keypoints dataset=collection dataset.n_images=N matcher=lsh ...
   and reads its result.json: seconds per stage, descriptors, descriptor pairs, pairs verified, peak
   memory (main process and the extraction workers), accuracy on the collection's copies.
3. --join-check M: on the descriptors of the first M images, times matcher=lsh's self-join by buckets
   against the same matcher searching every descriptor as a query (the pre-bucket path), same run, and
   checks that both give the same pairs.

Prints Markdown tables (results/keypoint_scale.md holds a run). Extra key=value arguments go to the runner.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model  # noqa: E402
from simbench.data.collection import CollectionDataset  # noqa: E402


def run_runner(n: int, out: Path, overrides: list[str]) -> tuple[dict, float]:
    """`python -m simbench ...` in a fresh process; its result.json and the wall seconds of the process."""
    cmd = [sys.executable, "-m", "simbench", "method=keypoints", "detector=brisk", "matcher=lsh",
           "dataset=collection", f"dataset.n_images={n}", "cache_features=false", "save_pairs=false",
           f"hydra.run.dir={out}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - started
    return json.loads((out / "result.json").read_text()), wall


def join_check(n_images: int, ds, config: dict) -> dict:
    """Bucket self-join vs per-query search on the first n_images' descriptors (the run's settings)."""
    from hydra.utils import instantiate

    from simbench.match.lsh import MultiIndexHashMatcher
    from simbench.types import bytes_to_words

    extractor = instantiate(config["method"]["extractor"])
    features = extractor.extract(ds.paths[:n_images], progress=True).features
    words = bytes_to_words(features.descriptors)
    radius = int(config["method"]["distance_threshold"])
    matcher = MultiIndexHashMatcher(progress=False)
    matcher.self_join(words[:1000], radius)  # compile
    t0 = time.perf_counter()
    buckets = matcher.self_join(words, radius)
    t1 = time.perf_counter()
    queries = matcher._blocked(words, words, radius, upper=True)
    t2 = time.perf_counter()
    same = (np.array_equal(buckets.a, queries.a) and np.array_equal(buckets.b, queries.b)
            and np.array_equal(buckets.dist, queries.dist))
    return {"images": n_images, "descriptors": len(words), "pairs": len(buckets), "identical": same,
            "buckets_s": t1 - t0, "queries_s": t2 - t1, "compared": matcher.last_compared}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="images in the collection")
    parser.add_argument("--join-check", type=int, default=0, metavar="M",
                        help="also time bucket join vs per-query search on the first M images")
    parser.add_argument("--work", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the runner")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    ds = CollectionDataset(n_images=args.n).load(progress=True)
    print(f"collection: {len(ds)} images, {ds.n_true_pairs} true pairs, at {ds.root} "
          f"({time.perf_counter() - started:.0f} s to build or find; not part of the figure)")
    work = args.work or Path(tempfile.mkdtemp(prefix="simbench-scale-"))
    result, wall = run_runner(args.n, work / "run", args.overrides)

    t, s, m, mem = result["timing"], result["method_stats"], result["metrics"], result["memory"]
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average before/after: see `uptime`\n")
    print("| images | descriptors | extract (s) | descriptor pairs (s) | bags (s) | verify (s) | "
          "runner total (s) | process wall (s) | peak RSS main / workers (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['dataset']['n_images']:,} | {int(s['descriptors']):,} | {t['extract_s']:.0f} | "
          f"{s['descriptor_pairs_s']:.0f} | {s['bags_s']:.1f} | {s.get('verify_s', 0.0):.0f} | "
          f"{t['total_s']:.0f} | {wall:.0f} | {mem['peak_rss_mb']:.0f} / {mem['peak_rss_workers_mb']:.0f} |")
    print(f"\ndescriptor pairs within radius between images: {int(s['descriptor_pairs']):,}; image pairs "
          f"verified: {int(s.get('verified', 0)):,}; micro-AP on the copies {m['uap']:.3f}, recall at "
          f"precision 0.9 {m['recall_at_p90']:.3f}, precision / recall at the threshold "
          f"{m['precision']:.3f} / {m['recall']:.3f}")
    if args.join_check:
        c = join_check(args.join_check, ds, result["config"])
        print("\n| images | descriptors | pairs | bucket self-join (s) | per-query search (s) | ratio | identical |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {c['images']:,} | {c['descriptors']:,} | {c['pairs']:,} | {c['buckets_s']:.1f} | "
              f"{c['queries_s']:.1f} | {c['queries_s'] / c['buckets_s']:.1f}x | {c['identical']} |")


if __name__ == "__main__":
    main()
