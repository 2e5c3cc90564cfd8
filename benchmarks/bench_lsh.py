"""Multi-index hashing (`matcher=lsh`) against faiss on real BRISK descriptors, radius 31 (faiss: < 32).

    python benchmarks/bench_lsh.py [--queries 20000] [--cap 600] [--repeat 3] [--out results/lsh.md]

Data: BRISK descriptors (512 bits) of the scikit-image sample photographs and transformed copies of each
(rotations, scales, crops, blur, contrast), at most `--cap` strongest keypoints per image: about 110k rows,
and real matches between the copies. Queries: `--queries` random rows of that set.

Contenders, all on 2 threads in this one run (the machines are shared: compare ratios, not seconds):
- faiss IndexBinaryFlat range_search (brute force), the baseline of the ratios;
- faiss IndexBinaryMultiHash(512, 32, 16), nflip=0, codes in native bit order and with their bits randomly
  permuted (the same permutation simbench's "random" uses, so the pieces are the same);
- simbench lsh (MultiIndexHashMatcher) with identity, random and calibrated permutations.

Every contender must return the same pairs (asserted). Reported: build and search seconds (best of
`--repeat`), speed-up over Flat, candidates verified per query, pairs, index memory and peak RSS; plus a
blocked run (small database and query blocks) showing that memory is bounded and the pairs unchanged.
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simbench.match.lsh import MultiIndexHashMatcher, random_permutation  # noqa: E402
from simbench.types import Pairs, bytes_to_words  # noqa: E402

THREADS = 2
RADIUS = 31  # inclusive; faiss keeps distance < radius, so it is given 32
PHOTOS = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "cell", "page", "text"]


# ---------------------------------------------------------------------------------------------------------
# Data: BRISK descriptors of real photos and transformed copies.
# ---------------------------------------------------------------------------------------------------------


def grey_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 greyscale."""
    import cv2
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img, dtype=np.uint8)


def transformed_copies(img: np.ndarray):
    """The photo and 17 edited copies: what a reused illustration goes through (rotate, scale, crop...)."""
    import cv2

    h, w = img.shape
    yield img
    for angle in (7, -15, 30, 90, 180):
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        yield cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    for scale in (0.6, 0.8, 1.25, 1.6):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        yield cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
    for y0, x0, y1, x1 in ((0, 0, 0.75, 0.75), (0.25, 0.25, 1, 1), (0.1, 0.2, 0.9, 0.8)):
        yield img[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)]
    both = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 0.9)
    yield cv2.warpAffine(img, both, (w, h), borderMode=cv2.BORDER_REFLECT)
    yield cv2.GaussianBlur(img, (5, 5), 1.2)
    yield np.clip(img.astype(np.float32) * 1.2 + 10, 0, 255).astype(np.uint8)


def brisk_descriptors(cap: int, photos=PHOTOS) -> np.ndarray:
    """BRISK descriptors (M, 64) uint8 of every photo and copy, the `cap` strongest keypoints of each."""
    import cv2

    brisk = cv2.xfeatures2d.BRISK_create()
    parts = []
    for name in photos:
        for img in transformed_copies(grey_photo(name)):
            keypoints, desc = brisk.detectAndCompute(img, None)
            if desc is None:
                continue
            strongest = np.argsort([-k.response for k in keypoints], kind="stable")[:cap]
            parts.append(desc[strongest])
    return np.concatenate(parts)


def cached_descriptors(cap: int) -> np.ndarray:
    """brisk_descriptors, cached under .cache/ (extraction takes ~15 s)."""
    path = ROOT / ".cache" / f"bench_lsh_brisk_cap{cap}.npy"
    if path.exists():
        return np.load(path)
    desc = brisk_descriptors(cap)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, desc)
    return desc


# ---------------------------------------------------------------------------------------------------------
# Contenders: each returns (build_s, search_s, pairs, candidates per query or None, index bytes or None).
# ---------------------------------------------------------------------------------------------------------


def best_of(repeat: int, fn):
    """Run fn() `repeat` times; return the fastest wall time and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def faiss_pairs(lims, dist, idx) -> Pairs:
    """faiss range_search output (lims, D, I) as canonical Pairs."""
    a = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims))
    return Pairs(a, idx.astype(np.int64), dist.astype(np.int32)).sorted()


def permute_bytes(desc: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Bit k of the result = bit perm[k] of the input (LSB-first within bytes, as bytes_to_words)."""
    bits = np.unpackbits(desc, axis=1, bitorder="little")[:, perm]
    return np.packbits(bits, axis=1, bitorder="little")


def run_faiss_flat(db, queries, repeat):
    import faiss

    start = time.perf_counter()
    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
    index.add(db)
    build = time.perf_counter() - start
    search, out = best_of(repeat, lambda: index.range_search(queries, RADIUS + 1))
    return build, search, faiss_pairs(*out), float(len(db)), None


def run_faiss_multihash(db, queries, repeat, perm=None):
    import faiss

    if perm is not None:  # permuting the codes is free for Hamming distances: same pairs, other pieces
        db, queries = permute_bytes(db, perm), permute_bytes(queries, perm)
    start = time.perf_counter()
    index = faiss.IndexBinaryMultiHash(db.shape[1] * 8, 32, 16)
    index.nflip = 0  # 32 pieces of 16 bits, exact piece match: the pigeonhole guarantee for d < 32
    index.add(db)
    build = time.perf_counter() - start
    search, out = best_of(repeat, lambda: index.range_search(queries, RADIUS + 1))
    return build, search, faiss_pairs(*out), None, None


def run_lsh(db_words, q_words, repeat, permutation, **options):
    matcher = MultiIndexHashMatcher(permutation=permutation, threads=THREADS, **options)
    build, index = best_of(1, lambda: matcher.index(db_words, RADIUS))
    search, pairs = best_of(repeat, lambda: matcher._with_threads(index.range_search, q_words, RADIUS))
    candidates = float(index.candidates(q_words).mean())
    return build, search, pairs, candidates, index.nbytes


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def table(rows, flat_total) -> str:
    head = ("| contender | build s | search s | total s | x Flat (total) | candidates / query | pairs | index MB |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for name, (build, search, pairs, cand, nbytes) in rows:
        total = build + search
        lines.append(
            f"| {name} | {build:.3f} | {search:.3f} | {total:.3f} | {flat_total / total:.1f} | "
            f"{'-' if cand is None else f'{cand:,.0f}'} | {len(pairs):,} | "
            f"{'-' if nbytes is None else f'{nbytes / 1e6:.1f}'} |"
        )
    return "\n".join(lines)


def same_pairs(x: Pairs, y: Pairs) -> bool:
    return np.array_equal(x.a, y.a) and np.array_equal(x.b, y.b) and np.array_equal(x.dist, y.dist)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--cap", type=int, default=600, help="BRISK keypoints kept per image")
    parser.add_argument("--repeat", type=int, default=3, help="search repetitions (best kept)")
    parser.add_argument("--skip-slow", action="store_true", help="skip the native-order MultiHash runs")
    parser.add_argument("--out", default=str(ROOT / "results" / "lsh.md"))
    args = parser.parse_args(argv)

    import faiss
    import numba

    faiss.omp_set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))

    desc = cached_descriptors(args.cap)
    rng = np.random.default_rng(0)
    qrows = np.sort(rng.choice(len(desc), size=min(args.queries, len(desc)), replace=False))
    queries = np.ascontiguousarray(desc[qrows])
    db_words, q_words = bytes_to_words(desc), bytes_to_words(queries)
    perm = random_permutation(512, 0)  # MultiIndexHashMatcher(permutation="random", seed=0) uses the same
    print(f"{len(desc):,} BRISK descriptors, {len(queries):,} queries, radius <= {RADIUS}, {THREADS} threads")

    # Warm up numba (compile or load the cache) so that no contender pays for it.
    MultiIndexHashMatcher(threads=THREADS).range_search(q_words[:64], db_words[:4096], RADIUS)

    rows = []
    slow = 1 if args.repeat else 0

    def record(name, result):
        rows.append((name, result))
        build, search, pairs, cand, _ = result
        print(f"  {name:40s} build {build:7.3f} s  search {search:7.3f} s  pairs {len(pairs):,}", flush=True)

    record("faiss IndexBinaryFlat", run_faiss_flat(desc, queries, args.repeat))
    if not args.skip_slow:
        record("faiss MultiHash(512,32,16) native order", run_faiss_multihash(desc, queries, slow))
    record("faiss MultiHash(512,32,16) random perm", run_faiss_multihash(desc, queries, args.repeat, perm))
    if not args.skip_slow:
        record("simbench lsh identity", run_lsh(db_words, q_words, slow, "identity"))
    record("simbench lsh random", run_lsh(db_words, q_words, args.repeat, "random"))
    record("simbench lsh calibrated", run_lsh(db_words, q_words, args.repeat, "calibrated"))
    record("simbench lsh calibrated, blocks 16k db x 2k q",
           run_lsh(db_words, q_words, args.repeat, "calibrated", database_block=16384, query_block=2048))

    reference = rows[0][1][2]
    for name, result in rows:
        assert same_pairs(result[2], reference), f"{name} returned other pairs than faiss IndexBinaryFlat"
    print("all contenders returned identical pairs")

    flat_total = rows[0][1][0] + rows[0][1][1]
    by_name = {name: r for name, r in rows}
    calibrated = by_name["simbench lsh calibrated"]
    mh_random = by_name["faiss MultiHash(512,32,16) random perm"]
    speedup_flat = flat_total / (calibrated[0] + calibrated[1])
    speedup_mh = (mh_random[0] + mh_random[1]) / (calibrated[0] + calibrated[1])
    markdown = table(rows, flat_total)
    print(markdown)
    print(f"lsh calibrated: {speedup_flat:.1f}x faiss Flat, {speedup_mh:.1f}x faiss MultiHash random "
          f"(build + search); peak RSS {peak_rss_mb():.0f} MB")
    write_report(Path(args.out), args, len(desc), len(queries), markdown, speedup_flat, speedup_mh, rows)


def write_report(path, args, n_db, n_q, markdown, speedup_flat, speedup_mh, rows) -> None:
    import faiss
    import numba

    by_name = {name: r for name, r in rows}
    cand = {k: by_name[f"simbench lsh {k}"][3] for k in ("identity", "random", "calibrated") if
            f"simbench lsh {k}" in by_name}
    cand_line = ", ".join(f"{k} {v:,.0f}" for k, v in cand.items())
    text = f"""# `matcher=lsh`: multi-index hashing on real BRISK descriptors

Command: `python benchmarks/bench_lsh.py{' --skip-slow' if args.skip_slow else ''}` \
(queries {args.queries}, cap {args.cap}, best of {args.repeat} searches)

Data: {n_db:,} BRISK descriptors (512 bits) from {len(PHOTOS)} scikit-image sample photos and 17 edited
copies of each (rotations, scales, crops, blur, contrast), at most {args.cap} keypoints per image;
{n_q:,} queries drawn from them. Radius: distance <= 31 (faiss: `range_search(x, 32)`, i.e. < 32).
All contenders on {THREADS} threads in one run; CPU: {cpu_model()}; faiss {faiss.__version__},
numba {numba.__version__}, Python {platform.python_version()}.
Every contender returned the identical pair set (asserted by the script).

{markdown}

- **lsh calibrated: {speedup_flat:.1f}x faiss IndexBinaryFlat and {speedup_mh:.1f}x faiss
  IndexBinaryMultiHash with a random permutation** (build + search; targets: >= 10x and >= 1x).
- Candidates verified per query (bucket sizes summed over the 32 pieces): {cand_line}. Native bit
  order puts neighbouring, strongly correlated BRISK bits in the same piece, so few piece values carry
  most rows; a random order breaks that up; the calibrated order (bit statistics on a 4096-row sample:
  balanced bits first, each to the piece where its pairwise interactions with the piece's bits raise the
  collision probability least, then swaps) roughly halves the candidates of a random order.
- faiss MultiHash verifies the same buckets (its pieces are our identity / random pieces), but goes through
  a hash map and a set per query; simbench uses a dense 2^16 offset table per piece, a counting-sorted id
  array, prefetched candidate rows and a first-shared-piece rule instead of a set.
- Memory: the index holds, per database row, one int32 id and one uint16 key per piece (6 x 32 = 192
  bytes/row) plus a 512 KiB offset table per piece; the blocked row (database blocks of 16,384 rows,
  query blocks of 2,048) bounds it by the block size and returns the same pairs. Peak RSS of the whole
  benchmark process: {peak_rss_mb():.0f} MB.
- Machines are shared: compare the ratios, which were measured side by side in one run.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
