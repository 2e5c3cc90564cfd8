"""Exact binary matcher (simbench's numba kernel) against faiss IndexBinaryFlat, same run, same threads.

    python benchmarks/bench_binary_match.py [--n 100000] [--n512 50000] [--threads 2] [--repeats 3]

Cases:
  (a) self-join, radius 8, N random 64-bit codes (almost no pairs: the cost is the distances);
  (a') the same over N clustered 64-bit codes (N/100 centres, each bit flipped with p = 0.05): millions
       of pairs, so the cost of collecting the output shows;
  (b) self-join, radius 31, N512 real 512-bit BRISK descriptors (scikit-image photos and edited copies);
  (c) top-k (k = 10), Q query codes against the N codes of (a), and against the N512 descriptors of (b).

How work is counted: as the pairs of codes the answer depends on, the same number for both matchers.
A self-join's answer depends on N(N-1)/2 pairs; faiss has no self-join and computes all N^2 distances
(then the pairs a < b are kept), so its time is divided by the same N(N-1)/2, and its raw rate (N^2 per
second) is shown beside it. Top-k: Q*N pairs for both. Time is the median of --repeats runs; the two
matchers alternate, so a busy neighbour slows both. Each answer is checked equal to the other matcher's.
Prints a table and writes it, with the CPU, versions and command, to results/binary_match.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numba  # noqa: E402

from benchmarks.common import cpu_model, load_average  # noqa: E402
from simbench.match.exact import ExactMatcher  # noqa: E402
from simbench.match.faiss_peer import FaissMatcher  # noqa: E402
from simbench.types import bytes_to_words, pack_bits  # noqa: E402

# Images that ship inside scikit-image (no download); binary_blobs is left out, as it is random on each call.
PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
          "hubble_deep_field", "immunohistochemistry", "grass", "gravel", "brick", "logo", "horse", "checkerboard"]


def brisk_descriptors(n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """n real BRISK descriptors as (n, 8) uint64 words, drawn at random from the photos and edited copies."""
    import cv2
    import skimage.data

    brisk = cv2.xfeatures2d.BRISK_create()
    edits = {
        "original": lambda g: g,
        "rotated 10 deg, scaled 0.9": lambda g: cv2.warpAffine(
            g, cv2.getRotationMatrix2D((g.shape[1] / 2, g.shape[0] / 2), 10, 0.9), (g.shape[1], g.shape[0])),
        "resized to 0.7, brighter": lambda g: cv2.convertScaleAbs(
            cv2.resize(g, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA), alpha=1.15, beta=10),
        "cropped 80%, blurred": lambda g: cv2.GaussianBlur(
            g[g.shape[0] // 10: -g.shape[0] // 10, g.shape[1] // 10: -g.shape[1] // 10], (3, 3), 0),
    }
    found = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        gray = img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
        for edit in edits.values():
            _, descriptors = brisk.detectAndCompute(np.ascontiguousarray(edit(gray)), None)
            if descriptors is not None:
                found.append(descriptors)
    found = np.concatenate(found)
    if len(found) < n:
        raise SystemExit(f"only {len(found)} BRISK descriptors available; ask for --n512 {len(found)} or fewer")
    pick = np.sort(np.random.default_rng(seed).choice(len(found), n, replace=False))
    what = (f"{n} of {len(found)} BRISK descriptors (64 bytes) of {len(PHOTOS)} scikit-image photos, each "
            f"also {', '.join(list(edits)[1:])}; drawn at random (seed {seed})")
    return bytes_to_words(found[pick]), what


def run_case(label, exact_fn, faiss_fn, work, raw_work, found_of, repeats):
    """Alternate the two matchers `repeats` times (median time each); return one table row."""
    times = {"exact": [], "faiss": []}
    answers = {}
    for _ in range(repeats):
        for name, fn in (("exact", exact_fn), ("faiss", faiss_fn)):
            t0 = time.perf_counter()
            answers[name] = fn()
            times[name].append(time.perf_counter() - t0)
    te, tf = float(np.median(times["exact"])), float(np.median(times["faiss"]))
    return {"case": label, "work": work, "exact_s": te, "faiss_s": tf, "exact_rate": work / te / 1e9,
            "faiss_rate": work / tf / 1e9, "faiss_raw": raw_work / tf / 1e9, "ratio": tf / te,
            "found": found_of(answers["exact"]), "same": _same(answers["exact"], answers["faiss"])}


def _same(x, y) -> bool:
    if isinstance(x, tuple):
        return all(np.array_equal(u, v) for u, v in zip(x, y))
    return all(np.array_equal(getattr(x, f), getattr(y, f)) for f in ("a", "b", "dist"))


def _entries(topk) -> int:
    return int((topk[0] >= 0).sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="random 64-bit codes for (a) and (c)")
    p.add_argument("--n512", type=int, default=50_000, help="BRISK descriptors for (b) and (c)")
    p.add_argument("--queries", type=int, default=2_000, help="top-k queries for (c)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "binary_match.md"))
    args = p.parse_args(argv)

    numba.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    exact, peer = ExactMatcher(threads=args.threads), FaissMatcher(threads=args.threads)
    # faiss's k-NN synchronises its OpenMP threads per small batch of queries, which a busy machine
    # punishes; its top-k is also timed on one thread, and both are shown.
    peer1 = FaissMatcher(threads=1)
    load_before = load_average()

    rng = np.random.default_rng(0)
    codes64 = rng.integers(0, 2**64, size=(args.n, 1), dtype=np.uint64)
    centres = rng.integers(0, 2**64, size=(max(1, args.n // 100), 1), dtype=np.uint64)
    clustered64 = centres[rng.integers(0, len(centres), args.n)] ^ pack_bits(rng.random((args.n, 64)) < 0.05)
    t0 = time.perf_counter()
    codes512, what512 = brisk_descriptors(args.n512)
    print(f"BRISK descriptors: {time.perf_counter() - t0:.1f} s; {what512}", flush=True)
    queries64 = codes64[rng.choice(args.n, min(args.queries, args.n), replace=False)]
    queries512 = codes512[rng.choice(args.n512, min(args.queries, args.n512), replace=False)]
    for codes in (codes64[:500], codes512[:500]):  # compile (or load from numba's cache) before timing
        exact.self_join(codes, 8)
        exact.topk(codes[:10], codes, args.k)

    n, m, q, k = args.n, args.n512, len(queries64), args.k
    rows = []
    cases = [
        (f"(a) self-join r=8, {n:,} random 64-bit", lambda: exact.self_join(codes64, 8),
         lambda: peer.self_join(codes64, 8), n * (n - 1) // 2, n * n, len),
        (f"(a') self-join r=8, {n:,} clustered 64-bit", lambda: exact.self_join(clustered64, 8),
         lambda: peer.self_join(clustered64, 8), n * (n - 1) // 2, n * n, len),
        (f"(b) self-join r=31, {m:,} BRISK 512-bit", lambda: exact.self_join(codes512, 31),
         lambda: peer.self_join(codes512, 31), m * (m - 1) // 2, m * m, len),
        (f"(c) top-{k}, {q:,} x {n:,} random 64-bit", lambda: exact.topk(queries64, codes64, k),
         lambda: peer.topk(queries64, codes64, k), q * n, q * n, _entries),
        (f"(c) top-{k}, {len(queries512):,} x {m:,} BRISK 512-bit",
         lambda: exact.topk(queries512, codes512, k), lambda: peer.topk(queries512, codes512, k),
         len(queries512) * m, len(queries512) * m, _entries),
        (f"(c) top-{k}, {q:,} x {n:,} random 64-bit, faiss on 1 thread", lambda: exact.topk(queries64, codes64, k),
         lambda: peer1.topk(queries64, codes64, k), q * n, q * n, _entries),
        (f"(c) top-{k}, {len(queries512):,} x {m:,} BRISK 512-bit, faiss on 1 thread",
         lambda: exact.topk(queries512, codes512, k), lambda: peer1.topk(queries512, codes512, k),
         len(queries512) * m, len(queries512) * m, _entries),
    ]
    for label, fe, ff, work, raw, found in cases:
        rows.append(run_case(label, fe, ff, work, raw, found, args.repeats))
        r = rows[-1]
        print(f"{label}: exact {r['exact_s']:.3f} s, faiss {r['faiss_s']:.3f} s, {r['ratio']:.2f}x, "
              f"same answer: {r['same']}", flush=True)

    table = [
        "| case | pairs in the answer's domain | exact s | faiss s | exact G pairs/s | faiss G pairs/s "
        "| faiss raw G dist/s | exact / faiss | found | same answer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        table.append(f"| {r['case']} | {r['work']:.3e} | {r['exact_s']:.3f} | {r['faiss_s']:.3f} | "
                     f"{r['exact_rate']:.2f} | {r['faiss_rate']:.2f} | {r['faiss_raw']:.2f} | "
                     f"**{r['ratio']:.2f}x** | {r['found']:,} | {'yes' if r['same'] else 'NO'} |")
    command = "python benchmarks/bench_binary_match.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_after = load_average()
    report = "\n".join([
        "# Exact binary matching: simbench `exact` (numba) vs faiss IndexBinaryFlat",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"CPU: {cpu_model(details=True)}, {os.cpu_count()} logical CPUs; {args.threads} threads each "
        f"(numba.set_num_threads, faiss.omp_set_num_threads). Median of {args.repeats} runs, the two "
        "matchers alternating in one process. Load average before / after: "
        f"{load_before:.1f} / {load_after:.1f} (a shared machine: compare the ratios, not the rates).",
        f"Versions: Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"faiss {faiss.__version__}.",
        "",
        *table,
        "",
        "How the work is counted: the pairs the answer depends on, the same for both matchers. Self-join: "
        "N(N-1)/2 pairs; `exact` computes exactly these (upper triangle), faiss computes all N^2 distances "
        "(range_search of the codes against themselves, radius + 1 since it keeps d < radius) and the "
        "pairs a < b are kept; its raw rate, N^2 distances per second, is the 'faiss raw' column. Top-k: "
        "Q x N for both. `found` is the number of pairs (self-join) or of top-k entries returned. "
        "faiss's k-NN (IndexBinaryFlat.search) synchronises its OpenMP threads for every small batch of "
        "queries, which a busy machine punishes, so it is also shown on one thread (exact stays on "
        f"{args.threads}); take the better of the two faiss rows as the peer's top-k figure.",
        "",
        f"Data: (a) uniform random 64-bit codes (seed 0); (a') {args.n // 100} random centres, each code a "
        f"centre with every bit flipped with probability 0.05; (b) {what512}; (c) queries drawn at random "
        "from the sets of (a) and (b).",
        "",
    ])
    print()
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"\nwrote {out}")
    if not all(r["same"] for r in rows):
        raise SystemExit("the two matchers gave different answers")


if __name__ == "__main__":
    main()
