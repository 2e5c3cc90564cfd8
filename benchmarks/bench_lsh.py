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

Every contender builds its index and searches once per round, round-robin over `--repeat` rounds (so all
of them meet the same spells of load), and keeps its fastest round; all must return the same pairs
(asserted). Reported: build and search seconds, speed-up over Flat, candidates verified per query, pairs,
index memory and peak RSS growth (each contender alone in a fresh process); plus a blocked run (small
database and query blocks) showing that memory is bounded by the blocks and the pairs unchanged.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, load_average, timed  # noqa: E402
from simbench.match.lsh import MultiIndexHashMatcher, random_permutation  # noqa: E402
from simbench.types import Pairs, bytes_to_words  # noqa: E402

THREADS = 2
BLOCK_DB, BLOCK_Q = 32768, 8192  # the blocked run: database rows indexed at a time, queries at a time
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


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    return _status_kb("VmRSS") / 1024.0


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then covers the whole process


def peak_rss_mb() -> float:
    """Peak resident memory (VmHWM) since the last reset_peak_rss, in MB."""
    kb = _status_kb("VmHWM")
    return kb / 1024.0 if kb else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_kb(field: str) -> float:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def child_peak_rss(mode: str, args) -> float | None:
    """Peak RSS growth (MB) of one contender, run alone in a fresh process (`--child MODE`).

    A fresh process because the allocator keeps memory freed by earlier contenders, which would hide
    (or inflate) what this one needs. The growth is measured from after the data is loaded.
    """
    command = [sys.executable, __file__, "--child", mode, "--cap", str(args.cap), "--queries", str(args.queries)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  (memory of {mode} not measured: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return float(done.stdout.strip().splitlines()[-1])


def child_main(mode: str, args) -> None:
    """Body of `--child MODE`: load the data, run one contender once, print its peak RSS growth in MB."""
    desc, queries = load_data(args)
    db_words, q_words = bytes_to_words(desc), bytes_to_words(queries)
    if mode.startswith("lsh"):  # load the compiled kernels before measuring
        MultiIndexHashMatcher(threads=THREADS).range_search(q_words[:64], db_words[:4096], RADIUS)
    before = rss_mb()
    reset_peak_rss()
    if mode == "flat":
        run_faiss_flat(desc, queries)
    elif mode == "multihash-random":
        run_faiss_multihash(desc, queries, random_permutation(512, 0))
    elif mode == "lsh":
        MultiIndexHashMatcher(threads=THREADS).range_search(q_words, db_words, RADIUS)
    elif mode == "lsh-blocked":
        MultiIndexHashMatcher(threads=THREADS, database_block=BLOCK_DB, query_block=BLOCK_Q).range_search(
            q_words, db_words, RADIUS)
    print(f"{max(peak_rss_mb() - before, 0.0):.1f}")


def faiss_pairs(lims, dist, idx) -> Pairs:
    """faiss range_search output (lims, D, I) as canonical Pairs."""
    a = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64)))
    return Pairs(a, idx.astype(np.int64), dist.astype(np.int32)).sorted()


def permute_bytes(desc: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Bit k of the result = bit perm[k] of the input (LSB-first within bytes, as bytes_to_words)."""
    bits = np.unpackbits(desc, axis=1, bitorder="little")[:, perm]
    return np.packbits(bits, axis=1, bitorder="little")


def run_faiss_flat(db, queries):
    """Build + search once: faiss IndexBinaryFlat (brute force), the baseline."""
    import faiss

    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
    build, _ = timed(lambda: index.add(db))
    search, out = timed(lambda: index.range_search(queries, RADIUS + 1))
    return build, search, faiss_pairs(*out), float(len(db)), None


def run_faiss_multihash(db, queries, perm=None):
    """Build + search once: faiss IndexBinaryMultiHash(512, 32, 16), nflip 0, optionally on permuted bits."""
    import faiss

    if perm is not None:  # permuting the codes is free for Hamming distances: same pairs, other pieces
        db, queries = permute_bytes(db, perm), permute_bytes(queries, perm)
    index = faiss.IndexBinaryMultiHash(db.shape[1] * 8, 32, 16)
    index.nflip = 0  # 32 pieces of 16 bits, exact piece match: the pigeonhole guarantee for d < 32
    build, _ = timed(lambda: index.add(db))
    search, out = timed(lambda: index.range_search(queries, RADIUS + 1))
    return build, search, faiss_pairs(*out), None, None


def run_lsh(db_words, q_words, permutation):
    """Build (calibration included) + search once: simbench's MultiIndexHashMatcher."""
    matcher = MultiIndexHashMatcher(permutation=permutation, threads=THREADS)
    build, index = timed(lambda: matcher.index(db_words, RADIUS))
    search, pairs = timed(lambda: matcher._with_threads(index.range_search, q_words, RADIUS))
    return build, search, pairs, float(index.candidates(q_words).mean()), index.nbytes


def run_lsh_blocked(db_words, q_words, database_block, query_block):
    """matcher.range_search streaming over database blocks (build, search, free, next), all in "search"."""
    matcher = MultiIndexHashMatcher(threads=THREADS, database_block=database_block, query_block=query_block)
    total, pairs = timed(lambda: matcher.range_search(q_words, db_words, RADIUS))
    return 0.0, total, pairs, None, matcher.index(db_words[:database_block], RADIUS).nbytes


def interleaved(contenders, repeat):
    """Run every contender once per round, `repeat` rounds, round-robin, so that all of them see the same
    spells of load on a shared machine; keep each one's fastest round (build + search).

    contenders: (name, fn, rounds) with rounds = how many of the rounds it takes part in.
    """
    best = {}
    for round_ in range(max(repeat, 1)):
        for name, fn, rounds in contenders:
            if round_ >= rounds:
                continue
            result = fn()
            if name not in best or sum(result[:2]) < sum(best[name][:2]):
                best[name] = result
            print(f"  round {round_ + 1}  {name:60s} build {result[0]:7.3f} s  search {result[1]:7.3f} s  "
                  f"pairs {len(result[2]):,}", flush=True)
    return [(name, best[name]) for name, _, _ in contenders]


# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------


def bucket_statistics(db_words, q_words) -> str:
    """Per permutation: candidates per query (database-drawn and for the queries), biggest bucket, fit time."""
    lines = ["| permutation | candidates / query, E over the data (sum_b size^2 / N) | candidates / query, "
             "these queries | biggest bucket (rows) | permutation fit s |", "|---|---:|---:|---:|---:|"]
    for permutation in ("identity", "random", "calibrated"):
        matcher = MultiIndexHashMatcher(permutation=permutation, threads=THREADS)
        index = matcher.index(db_words, RADIUS)
        biggest = max(int(index.tables.bucket_sizes(p).max()) for p in range(index.layout.pieces))
        lines.append(f"| {permutation} | {index.expected_candidates():,.0f} | "
                     f"{index.candidates(q_words).mean():,.0f} | {biggest:,} | "
                     f"{index.timings['permutation_s']:.3f} |")
    return "\n".join(lines)


def table(rows, flat_total) -> str:
    head = ("| contender | build s | search s | total s | x Flat (total) | candidates / query | pairs "
            "| index MB | peak RSS growth MB (alone) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for name, (build, search, pairs, cand, nbytes, grown) in rows:
        total = build + search
        lines.append(
            f"| {name} | {build:.3f} | {search:.3f} | {total:.3f} | {flat_total / total:.1f} | "
            f"{'-' if cand is None else f'{cand:,.0f}'} | {len(pairs):,} | "
            f"{'-' if nbytes is None else f'{nbytes / 1e6:.1f}'} | {'-' if grown is None else f'{grown:.0f}'} |"
        )
    return "\n".join(lines)


def same_pairs(x: Pairs, y: Pairs) -> bool:
    return np.array_equal(x.a, y.a) and np.array_equal(x.b, y.b) and np.array_equal(x.dist, y.dist)


def load_data(args) -> tuple[np.ndarray, np.ndarray]:
    """The descriptors (cached) and `--queries` of them drawn at random (seed 0), as bytes."""
    desc = cached_descriptors(args.cap)
    rng = np.random.default_rng(0)
    qrows = np.sort(rng.choice(len(desc), size=min(args.queries, len(desc)), replace=False))
    return desc, np.ascontiguousarray(desc[qrows])


def set_threads() -> None:
    import faiss
    import numba

    faiss.omp_set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--cap", type=int, default=600, help="BRISK keypoints kept per image")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each contender's fastest is kept)")
    parser.add_argument("--skip-slow", action="store_true", help="skip the native-order runs (about a minute)")
    parser.add_argument("--out", default=str(ROOT / "results" / "lsh.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one contender's memory, alone
    args = parser.parse_args(argv)
    set_threads()
    if args.child:
        return child_main(args.child, args)

    desc, queries = load_data(args)
    db_words, q_words = bytes_to_words(desc), bytes_to_words(queries)
    perm = random_permutation(512, 0)  # MultiIndexHashMatcher(permutation="random", seed=0) uses the same
    print(f"{len(desc):,} BRISK descriptors, {len(queries):,} queries, radius <= {RADIUS}, {THREADS} threads")

    # Warm up numba (compile or load the cache) so that no contender pays for it.
    MultiIndexHashMatcher(threads=THREADS).range_search(q_words[:64], db_words[:4096], RADIUS)

    slow = 0 if args.skip_slow else 1  # the native-order runs take minutes: one round
    blocked = f"simbench lsh calibrated, blocks of {BLOCK_DB:,} rows x {BLOCK_Q:,} queries"
    contenders = [
        ("faiss IndexBinaryFlat", lambda: run_faiss_flat(desc, queries), args.repeat),
        ("faiss MultiHash(512,32,16) native order", lambda: run_faiss_multihash(desc, queries), slow),
        ("faiss MultiHash(512,32,16) random perm", lambda: run_faiss_multihash(desc, queries, perm), args.repeat),
        ("simbench lsh identity", lambda: run_lsh(db_words, q_words, "identity"), slow),
        ("simbench lsh random", lambda: run_lsh(db_words, q_words, "random"), args.repeat),
        ("simbench lsh calibrated", lambda: run_lsh(db_words, q_words, "calibrated"), args.repeat),
        (blocked, lambda: run_lsh_blocked(db_words, q_words, BLOCK_DB, BLOCK_Q), args.repeat),
    ]
    contenders = [c for c in contenders if c[2] > 0]
    memory_modes = {"faiss IndexBinaryFlat": "flat", "faiss MultiHash(512,32,16) random perm": "multihash-random",
                    "simbench lsh calibrated": "lsh", blocked: "lsh-blocked"}
    rows = [(name, (*result, child_peak_rss(memory_modes[name], args) if name in memory_modes else None))
            for name, result in interleaved(contenders, args.repeat)]

    reference = rows[0][1][2]
    for name, result in rows:
        assert same_pairs(result[2], reference), f"{name} returned other pairs than faiss IndexBinaryFlat"
    print("all contenders returned identical pairs")

    flat_total = rows[0][1][0] + rows[0][1][1]
    by_name = dict(rows)
    calibrated = by_name["simbench lsh calibrated"]
    mh_random = by_name["faiss MultiHash(512,32,16) random perm"]
    speedup_flat = flat_total / (calibrated[0] + calibrated[1])
    speedup_mh = (mh_random[0] + mh_random[1]) / (calibrated[0] + calibrated[1])
    markdown = table(rows, flat_total)
    buckets = bucket_statistics(db_words, q_words)
    print(markdown)
    print(buckets)
    print(f"lsh calibrated: {speedup_flat:.1f}x faiss Flat, {speedup_mh:.1f}x faiss MultiHash random "
          f"(build + search); load average {load_average():.1f}")
    if speedup_flat < 10 or speedup_mh < 1:
        print("TARGET MISSED: lsh calibrated should be >= 10x Flat and >= 1x MultiHash random")
    write_report(Path(args.out), args, len(desc), len(queries), markdown, buckets, speedup_flat, speedup_mh)


def write_report(path, args, n_db, n_q, markdown, buckets, speedup_flat, speedup_mh) -> None:
    import faiss
    import numba

    options = "".join(f" --{k.replace('_', '-')} {v}" for k, v in (("queries", args.queries), ("cap", args.cap),
                                                                    ("repeat", args.repeat))
                      if v != {"queries": 20000, "cap": 600, "repeat": 3}[k])
    text = f"""# `matcher=lsh`: multi-index hashing on real BRISK descriptors

Command: `python benchmarks/bench_lsh.py{options}{' --skip-slow' if args.skip_slow else ''}` (this file is written by it).

Every contender builds its index and searches once per round, round-robin over {args.repeat} rounds (the
native-order ones: one round, they take minutes), and keeps its fastest round.

Data: {n_db:,} BRISK descriptors (512 bits) of {len(PHOTOS)} scikit-image sample photos and 17 edited copies of
each (rotations, scales, crops, blur, contrast), at most {args.cap} keypoints per image; {n_q:,} queries drawn
from them. Radius: distance <= 31 (faiss: `range_search(x, 32)`, which keeps distance < 32).
All contenders on {THREADS} threads in one run. CPU: {cpu_model(details=True)}, {os.cpu_count()} cores seen,
load average at the end {load_average():.1f} (a shared machine: compare ratios, not seconds);
faiss {faiss.__version__}, numba {numba.__version__}, NumPy {np.__version__}, Python {platform.python_version()}.
Every contender returned the identical pair set (asserted by the script).

{markdown}

**lsh calibrated: {speedup_flat:.1f}x faiss IndexBinaryFlat and {speedup_mh:.1f}x faiss IndexBinaryMultiHash with a
random permutation**, build + search (targets: >= 10x and >= 1x), identical pairs.

## Why the permutation matters

32 pieces of 16 bits, the pigeonhole layout for radius 31. Candidates = rows sharing at least one piece with
the query, counted once per shared piece (each query counts itself 32 times):

{buckets}

BRISK compares pairs of smoothed intensities on concentric rings, so neighbouring bits are strongly
correlated: in native order a 16-bit piece takes few distinct values and a few buckets hold most rows. A
random order breaks the runs up. The calibrated order (`calibrated_permutation`) estimates, on a 4096-row
sample, each bit's agreement probability and every bit pair's interaction (how much more often two rows
agree on both bits than independence predicts), assigns balanced bits first, each to the piece where it
lowers the expected number of candidates most, then swaps bits between pieces while that still helps.

## Notes

- faiss `IndexBinaryMultiHash(512, 32, 16)` with `nflip = 0` splits the code into the same 32 consecutive
  16-bit pieces as simbench's identity order (and, with the codes' bits permuted before `add`, the same
  pieces as simbench's random order), and its `range_search` keeps distance < radius like Flat; exact for
  radius 31 by the pigeonhole argument, confirmed by the identical pair sets. It looks each piece up in a
  hash map and de-duplicates candidates in a set; simbench uses a dense 2^16-entry offset table per piece
  over a counting-sorted id array, prefetches candidate rows, and reports a pair only from the first piece
  the query and the row share (no set).
- Memory: the index holds one int32 id and one uint16 key per row and piece (6 x 32 = 192 bytes per
  512-bit row), a 64-byte-aligned copy of the codes when the caller's array is not aligned (64 bytes per
  row; it saves one cache miss per candidate) and a 256 KiB offset table per piece. `range_search` /
  `self_join` index `database_block` rows at a time (build, search, free) and search `query_block`
  queries at a time, so the index and the working memory are bounded by the block sizes, whatever the
  number of rows; the blocked row above ({BLOCK_DB:,}-row database blocks, {BLOCK_Q:,}-query blocks, its
  build time inside "search", "index MB" of one block) returns the same pairs. "peak RSS growth (alone)" is the rise of peak resident memory (Linux VmHWM) while the
  contender runs once in a fresh process, after the data is loaded; it includes the pairs returned and,
  for faiss, its index.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
