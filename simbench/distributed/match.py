"""Matching as Dask tasks, with exactly the results of the single-process run (issue 13, items 3 and 4).

Every step reuses the in-process functions on slices of the data; only the splitting is new.

- ``self_join``: the multi-index bucket self-join (simbench.match.lsh). With m = radius + 1 pieces every
  pair within the radius has equal keys in some piece, so the m pieces join independently. Inside a piece,
  rows are shuffled by a hash of their key into P partitions: rows with equal keys meet in one partition,
  so each partition is a bucket join of its own (lsh._join_piece, unchanged). A pair is reported only by
  the FIRST piece in which its keys are equal: the join checks the earlier pieces' bits of both rows, whose
  full codes travel with their ids, so no task talks to another. Distances are full XOR-popcounts.
- the keypoint stage as a whole (descriptors read by the workers, descriptor pairs reduced per image pair
  where they were found, RANSAC in batches): simbench.distributed.keypoints, built on ``self_join``'s
  pieces and partitions. Each pair's fit depends on its own correspondences only (OpenCV's RANSAC seeds
  its own generator per call), so batching changes nothing.
- the CNN stage (embeddings read by the workers, exact top-k in tiles merged in a tree of tasks, range
  search in tiles): simbench.distributed.cnn; ``cnn_neighbours`` / ``cosine_self_join`` run its searches
  on embeddings in memory.
- ``score_keypoints`` / ``score_cnn``: the methods' results with the steps above as tasks.

Bounded memory: the data is scattered once, in row chunks spread over the workers (not broadcast), or
read by the workers themselves (keypoints and embeddings in find), and a task receives only its chunk,
its partition or its blocks. Sizes are chosen here, not by the user, from the smallest worker memory
limit: a task may use TASK_SHARE of it divided by the worker's threads (dask starts spilling at 60% of the
limit, and every thread may run a task at once); see ``task_budget``.

Float equality: keypoint results (integer distances, RANSAC on the same float32 points) are equal bit
for bit. Cosine similarities come from the same block products as in one process, but OpenBLAS sums a
product differently with 1 thread, 2-3 threads and 4 or more (measured), and dask starts workers with
OPENBLAS_NUM_THREADS=1; tasks therefore run their products with the caller's BLAS thread count
(threadpoolctl, when installed). Pairs, neighbours and their order were equal in every test run; a few
similarities in 10^4 still differed by 1-2 float32 ulps in some runs (cause not found: not alignment,
not the thread switch itself in isolation), so the tests compare those to 1e-6.
"""
from __future__ import annotations

import math
import operator
import uuid
from contextlib import nullcontext

import numpy as np

from simbench.match.base import as_words
from simbench.match.cosine import ExactCosineMatcher
from simbench.match.lsh import MultiIndexHashMatcher, _join_piece, _key_column, piece_masks
from simbench.types import Pairs

#: Share of the smallest worker's memory limit that one worker's running tasks may use together.
TASK_SHARE = 0.25
#: Share of the cluster's memory the shuffled rows of the pieces in flight may take (the rest: spilling room).
SHUFFLE_SHARE = 0.25
#: Fewer candidate pairs' descriptor pairs than this make a verification batch not worth a task.
MIN_BATCH_MATCHES = 4096


# ---------------------------------------------------------------------------------------------------------
# Sizes from the cluster
# ---------------------------------------------------------------------------------------------------------


def _workers(client) -> list[dict]:
    # From the scheduler itself: Client.scheduler_info returns the client's cached identity, which its
    # periodic refresh (without the workers) may overwrite between the fetch and the return.
    return list(client.sync(client.scheduler.identity, n_workers=-1)["workers"].values())


def task_budget(client) -> int:
    """Bytes one task may use: TASK_SHARE of the smallest worker memory limit over its threads (a worker
    without a limit counts as this machine's memory)."""
    import psutil

    workers = _workers(client)
    limit = min((w.get("memory_limit") or psutil.virtual_memory().total) for w in workers)
    threads = max(w.get("nthreads", 1) for w in workers)
    return max(1 << 20, int(limit * TASK_SHARE / threads))


def _threads(client) -> int:
    return max(1, sum(w.get("nthreads", 1) for w in _workers(client)))


def _cluster_memory(client) -> int:
    import psutil

    return sum((w.get("memory_limit") or psutil.virtual_memory().total) for w in _workers(client))


def _token() -> str:
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------------------------------------------------
# 1. Multi-index self-join: pieces x key-hash partitions
# ---------------------------------------------------------------------------------------------------------


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each piece key: Fibonacci hashing (keys < 2**16, so the product fits int64). Equal
    keys get equal partitions; skewed (calibrated) keys still spread."""
    return ((keys.astype(np.int64) * np.int64(2654435761)) >> np.int64(16)) % np.int64(partitions)


def _split(chunk: np.ndarray, first: int, bits: np.ndarray, partitions: int) -> list:
    """One row chunk's (ids, codes) per partition of one piece, ids ascending within each."""
    part = partition_of(_key_column(chunk, bits), partitions)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    return [(first + order[lo:hi], chunk[order[lo:hi]]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _join(bits: np.ndarray, earlier: np.ndarray, radius: int, n_keys: int, *parts) -> tuple[Pairs, int]:
    """The bucket join of one partition of one piece (its rows from every chunk, in chunk order, so ids
    ascend and the local a < b stays a < b). Returns global pairs and pairs compared."""
    ids = np.concatenate([p[0] for p in parts])
    codes = np.ascontiguousarray(np.concatenate([p[1] for p in parts]))
    a, b, d, compared = _join_piece(codes, bits, earlier, radius, n_keys)
    return Pairs(ids[a], ids[b], d), int(compared)


def join_sizes(client, n_rows: int, n_words: int) -> tuple[int, int, int]:
    """(chunk rows, partitions per piece, pieces in flight) for a self-join of n_rows codes.

    A split task holds its chunk twice (in and out, 8 W + 8 bytes a row with the id): chunk rows =
    budget / (2 (8 W + 8)). A join task holds its partition's rows twice and _join_piece's keys and order
    (16 bytes a row): partitions = rows * (2 (8 W + 8) + 16) / budget, at least 2. The shuffled rows of a
    piece (n (8 W + 8) bytes) stay in the cluster until its joins end: as many pieces run at once as fit
    SHUFFLE_SHARE of the cluster's memory, at most two per worker thread, at least one.
    """
    budget = task_budget(client)
    row = 8 * n_words + 8
    chunk_rows = int(min(max(n_rows, 1), max(1024, budget // (2 * row))))
    partitions = max(2, math.ceil(n_rows * (2 * row + 16) / budget))
    window = int(min(2 * _threads(client), max(1, _cluster_memory(client) * SHUFFLE_SHARE // max(1, n_rows * row))))
    return chunk_rows, partitions, max(1, window)


def self_join(client, words, radius: int, matcher: MultiIndexHashMatcher, partitions: int | None = None,
              chunk_rows: int | None = None, stats: dict | None = None) -> Pairs:
    """All pairs a < b within `radius` (inclusive), as MultiIndexHashMatcher.self_join gives them (same
    pairs, distances and canonical order), by tasks: per piece, a split of every row chunk by key hash,
    then one bucket join per partition. partitions / chunk_rows: None = from the data size and worker
    memory (join_sizes). Layouts the bucket join does not take (multi-probe, scan) run in this process.
    stats, when given, is filled with the sizes used and the pairs compared."""
    words, radius = as_words(words), int(radius)
    if radius < 0 or len(words) < 2:
        return Pairs.empty()
    layout, perm = matcher.plan(words, radius)  # the permutation is fitted on a sample, here
    if not layout.joins_by_buckets:
        return matcher.self_join(words, radius)
    n, n_words = words.shape
    auto_chunk, auto_parts, window = join_sizes(client, n, n_words)
    chunk_rows, partitions = int(chunk_rows or auto_chunk), int(partitions or auto_parts)
    starts = list(range(0, n, chunk_rows))
    chunks = client.scatter([words[s : s + chunk_rows] for s in starts], broadcast=False, hash=False)
    masks = piece_masks(perm, layout, n_words)
    tok = _token()

    def submit_piece(p):
        bits = perm[layout.starts[p] : layout.starts[p] + layout.widths[p]].astype(np.int64)
        splits = [client.submit(_split, chunk, s, bits, partitions, key=f"mih-split-{p}-{c}-{tok}")
                  for c, (chunk, s) in enumerate(zip(chunks, starts))]
        joins = []
        for q in range(partitions):
            parts = [client.submit(operator.getitem, sp, q, key=f"mih-part-{p}-{c}-{q}-{tok}")
                     for c, sp in enumerate(splits)]
            joins.append(client.submit(_join, bits, masks[:p], radius, 1 << int(layout.widths[p]), *parts,
                                       key=f"mih-join-{p}-{q}-{tok}"))
        return joins

    found, compared = [], 0
    for first in range(0, layout.pieces, window):  # a window of pieces at a time bounds the shuffle
        futures = [f for p in range(first, min(first + window, layout.pieces)) for f in submit_piece(p)]
        for pairs, count in client.gather(futures):
            found.append(pairs)
            compared += count
        del futures
    if stats is not None:
        stats.update(pieces=layout.pieces, partitions=partitions, chunk_rows=chunk_rows, chunks=len(starts),
                     window=window, compared=compared)
    return Pairs.concat(found).sorted()


# ---------------------------------------------------------------------------------------------------------
# 2. Batches of candidate pairs for RANSAC verification (simbench.distributed.keypoints)
# ---------------------------------------------------------------------------------------------------------


def _batches(sizes: np.ndarray, per_batch: int) -> list[tuple[int, int]]:
    """Consecutive ranges of pairs, a new one where a pair's first match passes a multiple of per_batch
    (a pair is never split)."""
    group = (np.cumsum(sizes) - sizes) // per_batch
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], len(sizes)].tolist()))


# ---------------------------------------------------------------------------------------------------------
# 3. Exact cosine search on row blocks
# ---------------------------------------------------------------------------------------------------------


def blas_threads() -> int | None:
    """This process's BLAS thread count (None without threadpoolctl): tasks use it for equal floats."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return counts[0] if counts else None


def _blas_limit(threads):
    """The caller's BLAS thread count for the duration of a task (workers start with one)."""
    if threads is None:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads, user_api="blas")


def _concat(blocks: list) -> np.ndarray:
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def cnn_neighbours(client, embeddings, k: int, matcher: ExactCosineMatcher | None = None,
                   chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ExactCosineMatcher.topk(embeddings, embeddings, k) by the tiles and tree merge of
    simbench.distributed.cnn (equal to it: indices and similarities, ties to the lower index), the
    embeddings sent to the workers in chunks of chunk_rows rows."""
    from simbench.distributed.cnn import scatter_embeddings, sharded_topk

    matcher = matcher or ExactCosineMatcher()
    return sharded_topk(scatter_embeddings(client, embeddings, chunk_rows), int(k), matcher)


def cosine_self_join(client, embeddings, min_similarity: float, matcher: ExactCosineMatcher | None = None,
                     chunk_rows: int | None = None) -> Pairs:
    """ExactCosineMatcher.self_join as the tiles of simbench.distributed.cnn, equal to it (same pairs,
    float32 similarities and order)."""
    from simbench.distributed.cnn import scatter_embeddings, sharded_self_join

    matcher = matcher or ExactCosineMatcher()
    return sharded_self_join(scatter_embeddings(client, embeddings, chunk_rows), float(min_similarity), matcher)


# ---------------------------------------------------------------------------------------------------------
# 4. Whole methods (what the dispatch hook calls)
# ---------------------------------------------------------------------------------------------------------


def score_keypoints(client, method, features):
    """method.score_pairs(features) with every step as tasks (simbench.distributed.keypoints): the same
    ScoredPairs (only the *_s timings differ). features: a KeypointSets (sent to the workers in chunks) or
    the KeypointChunks the workers already hold (find and the runner on a cluster)."""
    from simbench.distributed.keypoints import KeypointChunks, scatter_keypoints, score_chunks

    chunks = features if isinstance(features, KeypointChunks) else scatter_keypoints(client, features)
    return score_chunks(client, method, chunks)


def score_cnn(client, method, features):
    """method.score_pairs(features) with the exact cosine self-join and k-NN as tasks
    (simbench.distributed.cnn): the same ScoredPairs. features: Embeddings or the EmbeddingChunks the
    workers hold. Other cosine matchers (lsh: approximate; gpu; faiss) run in this process."""
    from simbench.distributed.cnn import score_embeddings

    return score_embeddings(client, method, features)


def score_pairs(client, method, features, progress: bool = False):
    """The entry simbench.distributed.match_stage calls: method.score_pairs(features) with its matching as
    tasks where this module has them (keypoints, CNN), else in this process (hashes: one self-join of
    small codes). progress: dask's own progress bar is the cluster module's; unused here."""
    from simbench.methods.cnn import CnnMethod
    from simbench.methods.keypoints import KeypointMethod

    if isinstance(method, KeypointMethod) and method.own_pairs:  # without: its pairs are all proposed ones
        return score_keypoints(client, method, features)
    if isinstance(method, CnnMethod):
        return score_cnn(client, method, features)
    return method.score_pairs(features)
