"""The CNN stage on a cluster with no process holding all embeddings (issue 13, items 3 and 4), equal to
CnnMethod.score_pairs / score_given and to the evidence of one process.

The client keeps per-image tables only; the embeddings stay on the workers from start to end:

1. ``load_embeddings``: tasks read runs of items from the --index shards, each only its items' shards
   (keypoints.read_chunks: the records pipeline.load_features reads); the client gathers one small
   summary per item (why it is left out, or its record's signature) and the rows stay on the workers, in
   chunks of consecutive rows (``EmbeddingChunks``). ``read_embeddings`` does the same for the runner,
   whose extraction tasks write a store of their own (simbench.run.features_on_workers).
   ``scatter_embeddings`` makes the same chunks from embeddings in memory (tests).
   With CnnMethod.centre, ``centred_chunks`` gives the searches centred chunks: each chunk's exact sum
   (methods.cnn.embedding_sum) added on the client, then each chunk centred (and, with copy_whitening,
   whitened) by a task; with augment_k, the whitened chunks' nearest others are searched as in step 2 and
   each chunk augmented by a task given only its rows' neighbours (methods.cnn.augmented).
2. Exact top-k (``sharded_topk``): a tile is one query block against a run of database blocks,
   the blocks of ExactCosineMatcher.topk in one process, so a tile's products (match.cosine.topk_blocks)
   are the very matrices of the in-process loop. Each tile gives the k best (similarity, row) keys of its
   query rows (sort_keys: similarity down, ties to the lower row); a query block's tiles are merged in a
   tree of tasks (merge_topk; the keys of a row are distinct, so any merge order keeps the same k), the
   merged keys sorted and the row itself dropped (methods.cnn.without_self) on the workers. The client
   gathers only these (rows, k) neighbour indices and similarities.
3. Range search (``sharded_self_join``): the tiles on and right of the diagonal, as ExactCosineMatcher's
   self-join walks them (match.cosine.range_blocks); the pairs found come back.
4. CnnMethod.scored turns both into pairs and scores: the code of one process.
5. ``score_given_on_chunks`` (the cascade's fusion scores every fused pair by the CNN): the pairs' cosines
   (methods.cnn.pair_cosines) in batches of pairs, each batch's task given only its rows' vectors, taken
   from the chunks holding them; the k-th neighbour background from step 2 (kept on the chunks; the first
   normalise_k of search_k neighbours are the normalise_k nearest).
6. ``neighbour_ranks`` (evidence of the pairs shown): the shown rows' vectors are fetched and every chunk
   counts, per shown pair, the images more similar to one side than its partner is.
7. Region views (the extractor's ``regions``, methods.cnn "Region views"): each chunk's windows are read,
   centred and whitened beside its vectors (``EmbeddingChunks.windows``); each image's best region partners
   are the exact top-k of its vector against all windows (``sharded_topk`` with the windows as the
   database), the region cosines of pairs and the background pictures' best window cosines are tasks given
   only their rows (``ChunkRegionViews``), and methods.cnn.RegionViews.searched and .scores do the rest as in
   one process.
8. Pictures in a shared frame (find.pipeline.window_views): their windows are embedded in the client and
   replace those rows on the workers (``EmbeddingChunks.with_rows``).

Other cosine matchers (lsh: approximate; gpu; faiss) have no task form: their embeddings are gathered in
the client, and a warning says so. Float equality: see simbench.distributed.match (BLAS threads).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from simbench.distributed.keypoints import read_chunks
from simbench.distributed.match import _blas_limit, _concat, _token, blas_threads, task_budget
from simbench.find.index import FeatureStore, _signature, join_features
from simbench.match.cosine import (ExactCosineMatcher, as_vectors, finish_topk, merge_topk, range_blocks,
                                   topk_blocks)
from simbench.methods.cnn import (RegionViews, augmented, background_topk, centred, embedding_sum, kth_similarity,
                                  pair_cosines, projected, region_background_topk, region_cosines, without_self)
from simbench.types import Embeddings, Pairs, ScoredPairs

log = logging.getLogger("simbench")

#: Bytes a loading task holds per item (a record of up to 4,096 float32 dimensions, a few times over).
LOAD_ITEM_BYTES = 1 << 16
#: Partial top-k lists one merge task takes.
MERGE_FAN_IN = 4
#: Fewest pairs whose cosines one task computes (the fusion's scores of any pair).
MIN_BATCH_PAIRS = 256
#: Shown pairs' sides counted at once against a chunk (evidence ranks).
RANK_ENTRIES = 256


# ---------------------------------------------------------------------------------------------------------
# Embeddings held by the workers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EmbeddingChunks:
    """The L2-normalised embeddings of N images held by the workers, in chunks of consecutive rows:
    futures[c] holds rows bounds[c]..bounds[c + 1] - 1 as float32 (rows, dim). What the CNN stage's
    features are in `find` on a cluster. windows: futures of the same rows' n_windows region views each
    (rows, n_windows, dim) (Embeddings.regions), or None. backgrounds: k -> each row's k-th neighbour similarity, kept by
    the stage's search for score_given. background: a prepared view's background pictures
    (CnnMethod.background_vectors), or None. region_views: a prepared view's ChunkRegionViews, or None."""

    client: object
    futures: list
    bounds: np.ndarray
    dim: int
    windows: list | None = None
    n_windows: int = 0
    backgrounds: dict = field(default_factory=dict)
    centred_views: dict = field(default_factory=dict)  # (centre, whitening, augment) -> prepared chunks (centred_chunks)
    background: np.ndarray | None = None
    region_views: "ChunkRegionViews | None" = None

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def chunk_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, rows, "right") - 1

    def covering(self, begin: int, end: int) -> tuple[list, int]:
        """The chunks holding rows begin..end - 1, and the first row of the first of them."""
        lo, hi = int(self.chunk_of(np.array([begin]))[0]), int(self.chunk_of(np.array([end - 1]))[0])
        return self.futures[lo : hi + 1], int(self.bounds[lo])

    def parts_of(self, rows: np.ndarray, windows: bool = False) -> list:
        """Futures of the vectors (or the windows) of these rows (ascending, distinct), one per chunk holding
        some, in order."""
        chunk = self.chunk_of(rows)
        held = self.windows if windows else self.futures
        return [self.client.submit(_take_rows, held[c], rows[chunk == c] - self.bounds[c])
                for c in np.unique(chunk).tolist()]

    def take(self, rows, windows: bool = False) -> np.ndarray:
        """The vectors (or the windows) of these rows (any order, repeats allowed), fetched from the workers
        holding them."""
        rows = np.asarray(rows, np.int64)
        wanted = np.unique(rows)
        parts = self.client.gather(self.parts_of(wanted, windows))
        got = np.concatenate(parts) if parts else np.empty((0, *((self.n_windows,) if windows else ()), self.dim),
                                                            np.float32)
        return got[np.searchsorted(wanted, rows)]

    def gather(self) -> Embeddings:
        """All the embeddings (and region views) in this process (for what has no task form)."""
        parts = self.client.gather(self.futures)
        vectors = np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)
        return Embeddings(vectors, None if self.windows is None else np.concatenate(self.client.gather(self.windows)))

    def with_rows(self, rows, vectors: np.ndarray, windows: np.ndarray | None) -> "EmbeddingChunks":
        """New chunks: these rows' embeddings (and region views) replaced by the given ones, a task per chunk
        touched (the others shared); nothing prepared from the old ones is kept."""
        rows = np.asarray(rows, np.int64)
        chunk, tok = self.chunk_of(rows), _token()
        futures, held = list(self.futures), None if self.windows is None else list(self.windows)
        for c in np.unique(chunk).tolist():
            at = chunk == c
            local = rows[at] - self.bounds[c]
            futures[c] = self.client.submit(_replace_rows, futures[c], local, vectors[at], key=f"cnn-set-{c}-{tok}")
            if held is not None:
                held[c] = self.client.submit(_replace_rows, held[c], local, windows[at], key=f"cnn-setw-{c}-{tok}")
        return EmbeddingChunks(self.client, futures, self.bounds, self.dim, held, self.n_windows)


def _replace_rows(values: np.ndarray, rows: np.ndarray, new: np.ndarray) -> np.ndarray:
    out = np.array(values, copy=True)
    out[rows] = new
    return out


def _take_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return vectors[rows]


def scatter_embeddings(client, embeddings, chunk_rows: int | None = None) -> EmbeddingChunks:
    """Embeddings in this process sent to the workers in chunks of chunk_rows rows (None: as many as a
    quarter of the task budget holds)."""
    v = as_vectors(embeddings)
    regions = getattr(embeddings, "regions", None)
    per_row = 4 * 4 * max(1, v.shape[1]) * (1 + (0 if regions is None else regions.shape[1]))
    size = int(chunk_rows or max(1, task_budget(client) // per_row))
    starts = list(range(0, len(v), size))
    futures = client.scatter([v[s : s + size] for s in starts], broadcast=False, hash=False) if starts else []
    windows = None
    if regions is not None:
        windows = client.scatter([np.ascontiguousarray(regions[s : s + size], np.float32) for s in starts],
                                 broadcast=False, hash=False) if starts else []
    return EmbeddingChunks(client, futures, np.array(starts + [len(v)], np.int64), int(v.shape[1]), windows,
                           0 if regions is None else int(regions.shape[1]))


def _embedding_summaries(records: list) -> list:
    """Per record: its reason (a string), or (its signature,): shapes and types, consistent_signatures."""
    return [r if isinstance(r, str) else (_signature(r),) for r in records]


def _join_embeddings(records: list, keep: list[int]) -> Embeddings:
    return join_features([records[k] for k in keep], "embedding")[0]


def _vectors_of(embeddings: Embeddings) -> np.ndarray:
    return embeddings.vectors


def _windows_of(embeddings: Embeddings) -> np.ndarray:
    return embeddings.regions


def read_embeddings(client, store: FeatureStore, section: str, pkey: str, digests, local: list[int],
                    exclude: dict[int, str] | None):
    """(EmbeddingChunks, rows, reasons) of items whose embeddings the store holds, read by the workers
    (keypoints.read_chunks, as read_keypoints): item k is entry local[k] of the record of digests[k];
    rows: the items with an embedding; reasons: why the others have none (exclude: {item: reason})."""
    per_task = max(1, task_budget(client) // LOAD_ITEM_BYTES)
    joined, bounds, kept, reasons, summaries = read_chunks(client, store, section, pkey, "embedding", digests,
                                                           local, exclude, per_task, _embedding_summaries,
                                                           _join_embeddings, "cnn")
    signature = dict((e[0], e[2]) for e in summaries[kept[0]][0]) if len(kept) else {}
    tok = _token()
    futures = [client.submit(_vectors_of, f, key=f"cnn-vectors-{i}-{tok}") for i, f in enumerate(joined)]
    windows = ([client.submit(_windows_of, f, key=f"cnn-windows-{i}-{tok}") for i, f in enumerate(joined)]
               if "regions" in signature else None)
    dim, n_windows = int(signature.get("vector", (1,))[0]), int(signature.get("regions", (0,))[0])
    return EmbeddingChunks(client, futures, bounds, dim, windows, n_windows), kept, reasons


def load_embeddings(client, stage, items, source_digests, store: FeatureStore, exclude: dict[int, str] | None,
                    feature_key: str):
    """pipeline.load_features for a CNN stage on a cluster: (EmbeddingChunks, rows, reasons), the same
    rows and reasons, the vectors read by the workers from the store (a folder they all see)."""
    from simbench.find.pipeline import local_positions  # (pipeline imports this module)

    return read_embeddings(client, store, stage.section, feature_key, source_digests, local_positions(items), exclude)


def centred_chunks(chunks: EmbeddingChunks, method) -> EmbeddingChunks:
    """The chunks as method.vectors gives them: centred on the collection's mean when method.centre (the
    chunks' exact fixed-point sums added on the client, then each chunk centred by a task), copy-whitened
    when method.copy_whitening (a task per chunk), then augmented when method.augment_k (`augmented_chunks`);
    with region views, their windows prepared alike (not augmented) and searched (`chunk_region_views`,
    the result's `region_views`); kept, so that the search and the fusion's scores share them. Else the chunks
    themselves."""
    whitening = method.copy_whitening
    if not method.centre and whitening is None and not method.augment_k and chunks.windows is None:
        return chunks
    view = (method.centre_prior if method.centre else None, whitening.digest if whitening is not None else None,
            (method.augment_k, method.augment_alpha) if method.augment_k else None,
            (method.search_k, method.normalise_k) if chunks.windows is not None else None)
    if view not in chunks.centred_views:
        client, tok = chunks.client, _token()
        futures, windows = chunks.futures, chunks.windows
        sums = client.gather([client.submit(embedding_sum, f, key=f"cnn-sum-{i}-{tok}")
                              for i, f in enumerate(futures)])
        total = np.sum(sums, axis=0, dtype=np.int64) if sums else np.zeros(chunks.dim, np.int64)
        if method.centre:
            futures = [client.submit(centred, f, total, len(chunks), method.centre_prior, method.prior_mean,
                                     key=f"cnn-centre-{i}-{tok}") for i, f in enumerate(futures)]
        if whitening is not None:
            futures = [client.submit(whitening.apply, f, key=f"cnn-whiten-{i}-{tok}") for i, f in enumerate(futures)]
        if windows is not None:
            windows = [client.submit(_projected_windows, w, total, len(chunks), method.centring, whitening,
                                     key=f"cnn-prepare-windows-{i}-{tok}") for i, w in enumerate(windows)]
        prepared = EmbeddingChunks(client, futures, chunks.bounds, chunks.dim, windows, chunks.n_windows,
                                   background=method.background_vectors(total, len(chunks)))
        regions = chunk_region_views(prepared, method) if windows is not None else None
        if method.augment_k and len(chunks) > 1:
            prepared = augmented_chunks(prepared, method)
        prepared.region_views = regions
        chunks.centred_views[view] = prepared
    return chunks.centred_views[view]


def _projected_windows(windows: np.ndarray, total: np.ndarray, n_rows: int, centring: tuple | None,
                       whitening) -> np.ndarray:
    """CnnMethod.projected of a chunk's windows (rows, R, dim)."""
    return projected(windows.reshape(-1, windows.shape[-1]), total, n_rows, centring, whitening).reshape(windows.shape)


def augmented_chunks(chunks: EmbeddingChunks, method) -> EmbeddingChunks:
    """methods.cnn.augmented of every row with tasks: the nearest others by `sharded_topk`, then a task per
    chunk given its rows' neighbour lists and only the vectors of those neighbours."""
    idx, sim = sharded_topk(chunks, method.augment_k, method.matcher, others=True)
    client, tok = chunks.client, _token()
    futures = []
    for i, f in enumerate(chunks.futures):
        lo, hi = int(chunks.bounds[i]), int(chunks.bounds[i + 1])
        wanted = np.unique(np.maximum(idx[lo:hi], 0))
        futures.append(client.submit(_augment_chunk, f, idx[lo:hi], sim[lo:hi], method.augment_alpha, wanted,
                                     *chunks.parts_of(wanted), key=f"cnn-augment-{i}-{tok}"))
    return EmbeddingChunks(client, futures, chunks.bounds, chunks.dim, chunks.windows, chunks.n_windows,
                           background=chunks.background)


def _augment_chunk(vectors, idx, sim, alpha, wanted, *parts) -> np.ndarray:
    got = _concat(list(parts))
    return augmented(vectors, idx, sim, alpha, lambda rows: got[np.searchsorted(wanted, rows)])


# ---------------------------------------------------------------------------------------------------------
# Exact search in tiles
# ---------------------------------------------------------------------------------------------------------


def _rows(parts: list, first: int, begin: int, end: int) -> np.ndarray:
    return _concat(parts)[begin - first : end - first]


def _topk_tile(qparts, qfirst, q0, q1, dparts, dfirst, d_begin, d_end, block, k, threads) -> np.ndarray:
    """The k best keys per query row q0..q1 - 1 among database rows d_begin..d_end - 1."""
    with _blas_limit(threads):
        return topk_blocks(_rows(qparts, qfirst, q0, q1), _concat(dparts), dfirst, d_begin, d_end, block, k)


def _merge_keys(k: int, *parts) -> np.ndarray:
    best = parts[0]
    for keys in parts[1:]:
        best = merge_topk(best, keys, k)
    return best


def _finish(keys: np.ndarray, width: int, first: int, others: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted top `width` of rows first, ... (keys from the whole database); others: the row itself dropped."""
    idx, sim = finish_topk(keys, width)
    return without_self(idx, sim, first) if others else (idx, sim)


def _runs(chunks: EmbeddingChunks, matcher: ExactCosineMatcher) -> int:
    """Database rows per tile: whole database blocks, as many as the task budget holds next to the
    query block (float32), a product and its int64 keys (~32 bytes an entry) and the database rows twice
    (their chunks and the concatenation); at least one block, whatever the budget: equal floats need the
    products of one process, so a worker must hold one query block x database block product (the
    matcher's query_block and database_block set it)."""
    qb, block, dim = matcher.query_block, matcher.database_block, max(1, chunks.dim)
    fixed = 8 * qb * dim + 32 * qb * block
    return block * max(1, (task_budget(chunks.client) - fixed) // (8 * block * dim))


def sharded_topk(chunks: EmbeddingChunks, k: int, matcher: ExactCosineMatcher, others: bool = False,
                 stats: dict | None = None, database: EmbeddingChunks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ExactCosineMatcher.topk(all embeddings, all embeddings, k) with every step on the workers (module
    docstring, step 2): the same (N, k) indices and similarities. others: each row's k nearest other rows
    instead (methods.cnn.nearest_others: k + 1 searched, the row itself dropped). database: other chunks
    to search (topk(all embeddings, all of database's, k)), not with others."""
    db = chunks if database is None else database
    client, n, k = chunks.client, len(chunks), int(k)
    width = k + 1 if others else k
    if k <= 0 or not n:
        return np.full((n, max(k, 0)), -1, np.int64), np.full((n, max(k, 0)), -np.inf, np.float32)
    qb, block, run = matcher.query_block, matcher.database_block, _runs(db, matcher)
    threads, tok = blas_threads(), _token()
    finished, tiles, merges = [], 0, 0
    for q0 in range(0, n, qb):
        q1 = min(q0 + qb, n)
        qparts, qfirst = chunks.covering(q0, q1)
        level = []
        for d0 in range(0, len(db), run):
            d1 = min(d0 + run, len(db))
            dparts, dfirst = db.covering(d0, d1)
            level.append(client.submit(_topk_tile, qparts, qfirst, q0, q1, dparts, dfirst, d0, d1, block, width,
                                       threads, key=f"cnn-topk-{q0}-{d0}-{tok}"))
        tiles += len(level)
        depth = 0
        while len(level) > 1:  # a tree of merges on the workers
            level = [client.submit(_merge_keys, width, *level[i : i + MERGE_FAN_IN],
                                   key=f"cnn-merge-{q0}-{depth}-{i}-{tok}")
                     for i in range(0, len(level), MERGE_FAN_IN)]
            merges += len(level)
            depth += 1
        finished.append(client.submit(_finish, level[0], width, q0, others, key=f"cnn-top-{q0}-{tok}"))
    if stats is not None:
        stats.update(chunks=len(chunks.futures), tiles=tiles, merges=merges, tile_rows=run)
    found = client.gather(finished)
    return np.concatenate([i for i, _ in found]), np.concatenate([s for _, s in found])


def _range_tile(qparts, qfirst, q0, q1, dparts, dfirst, d_begin, d_end, block, t, threads) -> Pairs:
    with _blas_limit(threads):
        parts = range_blocks(_rows(qparts, qfirst, q0, q1), q0, _concat(dparts), dfirst, d_begin, d_end, block,
                             t, True)
    return Pairs.concat(parts, np.float32)


def sharded_self_join(chunks: EmbeddingChunks, min_similarity: float, matcher: ExactCosineMatcher) -> Pairs:
    """ExactCosineMatcher.self_join(all embeddings, min_similarity) as tiles on and right of the diagonal
    (database blocks start at each query block, as in one process): the same pairs in the same order."""
    client, n = chunks.client, len(chunks)
    qb, block, run = matcher.query_block, matcher.database_block, _runs(chunks, matcher)
    threads, tok = blas_threads(), _token()
    futures = []
    for q0 in range(0, n, qb):
        q1 = min(q0 + qb, n)
        qparts, qfirst = chunks.covering(q0, q1)
        for d0 in range(q0, n, run):
            dparts, dfirst = chunks.covering(d0, min(d0 + run, n))
            futures.append(client.submit(_range_tile, qparts, qfirst, q0, q1, dparts, dfirst, d0, min(d0 + run, n),
                                         block, float(min_similarity), threads, key=f"cnn-range-{q0}-{d0}-{tok}"))
    return Pairs.concat(client.gather(futures), np.float32)


# ---------------------------------------------------------------------------------------------------------
# The method's results
# ---------------------------------------------------------------------------------------------------------


def _gathered(chunks: EmbeddingChunks, method) -> Embeddings:
    """All the embeddings in this process, for a matcher without a task form; the log says so."""
    log.warning("cnn: the %s matcher has no task form: all embeddings are gathered in this process",
                method.matcher.name)
    return chunks.gather()


def score_embeddings(client, method, features, stats: dict | None = None) -> ScoredPairs:
    """method.score_pairs(features) with its searches as tasks (module docstring): the same ScoredPairs.
    features: Embeddings (sent to the workers in chunks) or the EmbeddingChunks the workers already hold
    (find on a cluster)."""
    if type(method.matcher) is not ExactCosineMatcher:
        return method.score_pairs(_gathered(features, method) if isinstance(features, EmbeddingChunks) else features)
    held = features if isinstance(features, EmbeddingChunks) else scatter_embeddings(client, features)
    chunks = centred_chunks(held, method)
    n = len(chunks)
    found = (sharded_self_join(chunks, method.min_similarity, method.matcher)
             if method.min_similarity is not None else None)
    others = sharded_topk(chunks, method.search_k, method.matcher, True, stats) if method.search_k and n > 1 else None
    background_sims = chunk_background_sims(chunks, method)
    if method.normalise_k and others is not None:
        chunks.backgrounds[method.normalise_k] = kth_similarity(*others, method.normalise_k, background_sims)
    region_pairs = method.region_pairs(chunks.region_views, lambda a, b: chunk_pair_cosines(chunks, a, b))
    return method.scored(n, found, others, background_sims, chunks.region_views, region_pairs)


def chunk_background_sims(chunks: EmbeddingChunks, method) -> np.ndarray | None:
    """The background cosines of CnnMethod.prepared for every row, a task per chunk (rows in order), or None."""
    if chunks.background is None or not method.normalise_k:
        return None
    client, tok = chunks.client, _token()
    futures = [client.submit(background_topk, f, chunks.background, method.normalise_k, key=f"cnn-bgk-{i}-{tok}")
               for i, f in enumerate(chunks.futures)]
    return np.concatenate(client.gather(futures))


def _batch_cosines(a: np.ndarray, b: np.ndarray, n_vector_parts: int, *parts) -> np.ndarray:
    """methods.cnn.pair_cosines of a batch's pairs, a and b indexing the rows its parts hold; with window
    parts after the n_vector_parts vector parts, methods.cnn.region_cosines instead."""
    vectors = _concat(list(parts[:n_vector_parts]))
    if len(parts) == n_vector_parts:
        return pair_cosines(vectors, a, b)
    return region_cosines(vectors, _concat(list(parts[n_vector_parts:])), a, b)


def chunk_pair_cosines(chunks: EmbeddingChunks, a: np.ndarray, b: np.ndarray, windows: bool = False) -> np.ndarray:
    """pair_cosines(all embeddings, a, b) (windows: region_cosines(all embeddings, all windows, a, b)) in
    batches of pairs (by a): a batch's task gets only its rows' vectors (and windows), taken from the chunks
    holding them, so what moves is linear in the pairs."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    client, tok = chunks.client, _token()
    # A batch holds at most 2 rows a pair, twice (its parts and their concatenation).
    size = max(MIN_BATCH_PAIRS, task_budget(client) // (16 * max(1, chunks.dim) * (1 + windows * chunks.n_windows)))
    order = np.argsort(a, kind="stable")
    futures = []
    for s in range(0, len(a), size):
        sel = order[s : s + size]
        rows = np.unique(np.concatenate([a[sel], b[sel]]))
        parts = chunks.parts_of(rows)
        extra = chunks.parts_of(rows, windows=True) if windows else []
        futures.append(client.submit(_batch_cosines, np.searchsorted(rows, a[sel]), np.searchsorted(rows, b[sel]),
                                     len(parts), *parts, *extra, key=f"cnn-pairs-{s}-{tok}"))
    out = np.empty(len(a), np.float64)
    for s, cos in zip(range(0, len(a), size), client.gather(futures)):
        out[order[s : s + size]] = cos
    return out


class ChunkRegionViews(RegionViews):
    """methods.cnn.RegionViews whose vectors and windows the workers hold: `vectors` is the prepared (not
    augmented) EmbeddingChunks with its windows; each pair's region cosine is a task's (chunk_pair_cosines)."""

    def cosines(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return chunk_pair_cosines(self.vectors, a, b, windows=True)


def chunk_region_views(chunks: EmbeddingChunks, method) -> ChunkRegionViews:
    """CnnMethod.region_views of prepared chunks with windows: each vector's best windows by `sharded_topk`
    against the windows (rows of image w // R), the background pictures' best window cosines by a task per
    chunk, then RegionViews.searched as in one process."""
    n, r = len(chunks), chunks.n_windows
    views = ChunkRegionViews(chunks, chunks.windows, np.zeros(n), np.full((n, 0), -1), np.zeros((n, 0), np.float32))
    if n < 2:
        return views
    client, tok = chunks.client, _token()
    flat = EmbeddingChunks(client, [client.submit(_flat, w, key=f"cnn-flat-windows-{i}-{tok}")
                                    for i, w in enumerate(chunks.windows)], chunks.bounds * r, chunks.dim)
    idx, _ = sharded_topk(chunks, method.region_search_k(n, r), method.matcher, database=flat)
    views.searched(idx, r, method, lambda: chunk_region_background(chunks, method.normalise_k))
    return views


def _flat(windows: np.ndarray) -> np.ndarray:
    return windows.reshape(-1, windows.shape[-1])


def chunk_region_background(chunks: EmbeddingChunks, k: int) -> np.ndarray | None:
    """methods.cnn.region_background_topk of all windows against chunks.background, a task per chunk."""
    if chunks.background is None:
        return None
    client, tok = chunks.client, _token()
    return np.concatenate(client.gather([
        client.submit(region_background_topk, w, chunks.background, k, key=f"cnn-region-bg-{i}-{tok}")
        for i, w in enumerate(chunks.windows)]))


def score_given_on_chunks(method, chunks: EmbeddingChunks, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """method.score_given(all embeddings, a, b): the cosines by tasks, the background kept by the stage's
    search (or searched now). Other matchers than the exact one: in this process, as score_embeddings."""
    if type(method.matcher) is not ExactCosineMatcher:
        return method.score_given(_gathered(chunks, method), a, b)
    chunks = centred_chunks(chunks, method)
    background = None
    if method.normalise_k and len(chunks) >= 2:
        if method.normalise_k not in chunks.backgrounds:
            others = sharded_topk(chunks, method.normalise_k, method.matcher, others=True)
            chunks.backgrounds[method.normalise_k] = kth_similarity(*others, method.normalise_k,
                                                                    chunk_background_sims(chunks, method))
        background = chunks.backgrounds[method.normalise_k]
    score = method.given_scores(chunk_pair_cosines(chunks, a, b), a, b, background)
    regions = chunks.region_views
    return score if regions is None else np.maximum(score, regions.scores(a, b, method))


# ---------------------------------------------------------------------------------------------------------
# Evidence of the pairs shown
# ---------------------------------------------------------------------------------------------------------


def _same(x):
    return x


def _shown_sims(queries: np.ndarray, rows: np.ndarray, first: int, chunk: np.ndarray) -> np.ndarray:
    """Similarities of the query vectors (global rows `rows`) to a chunk's rows, each to itself -inf."""
    sims = queries @ chunk.T
    mine = (rows >= first) & (rows < first + len(chunk))
    sims[np.flatnonzero(mine), rows[mine] - first] = -np.inf  # an image is not its own neighbour
    return sims


def _partner_sims(queries, rows, which, partners, first, chunk) -> np.ndarray:
    """Per (query which[e], partner partners[e]): their similarity when the partner is in this chunk, else nan."""
    sims = _shown_sims(queries, rows, first, chunk)
    inside = (partners >= first) & (partners < first + len(chunk))
    out = np.full(len(partners), np.nan, np.float32)
    out[inside] = sims[which[inside], partners[inside] - first]
    return out


def _count_above(queries, rows, which, level, first, chunk) -> np.ndarray:
    """Per entry e: this chunk's images more similar to query which[e] than level[e]."""
    sims = _shown_sims(queries, rows, first, chunk)
    counts = np.empty(len(which), np.int64)
    for s in range(0, len(which), RANK_ENTRIES):  # bounded: entries x chunk rows at a time
        counts[s : s + RANK_ENTRIES] = np.count_nonzero(sims[which[s : s + RANK_ENTRIES]] >
                                                        level[s : s + RANK_ENTRIES, None], axis=1)
    return counts


def neighbour_ranks(chunks: EmbeddingChunks, rows: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """Per (rows[e], partners[e]): 1 + the number of other images more similar to rows[e] than its partner
    (evidence.cnn_evidence's ranks), with only the shown rows' vectors in this process."""
    rows, partners = np.asarray(rows, np.int64), np.asarray(partners, np.int64)
    if not len(rows):
        return np.zeros(0, np.int64)
    client, tok = chunks.client, _token()
    unique = np.unique(rows)
    which = np.searchsorted(unique, rows)
    # A task, not scattered data: the scheduler keeps its spec, so a worker lost here is recomputed.
    queries = client.submit(_same, chunks.take(unique), key=f"cnn-shown-{tok}")
    firsts = chunks.bounds[:-1].tolist()
    level = np.nanmax(np.stack(client.gather([
        client.submit(_partner_sims, queries, unique, which, partners, f, c, key=f"cnn-partner-{i}-{tok}")
        for i, (f, c) in enumerate(zip(firsts, chunks.futures))])), axis=0)
    counts = client.gather([client.submit(_count_above, queries, unique, which, level, f, c,
                                          key=f"cnn-rank-{i}-{tok}")
                            for i, (f, c) in enumerate(zip(firsts, chunks.futures))])
    return 1 + np.sum(counts, axis=0)

