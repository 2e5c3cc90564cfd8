"""Cosine-similarity search on L2-normalised embeddings, behind the binary matchers' names.

For unit vectors cosine similarity is the inner product, so every matcher here computes dot products;
they differ in how many they compute and where:

- ``exact``  ExactCosineMatcher: blocked matrix products on the CPU (BLAS), range and top-k, memory bounded by
  the block sizes (never N x N);
- ``lsh``    HyperplaneLshMatcher: random-hyperplane signatures (Charikar, "Similarity estimation techniques
  from rounding algorithms", STOC 2002) searched by the multi-index hash matcher at a Hamming radius derived
  from the similarity threshold and a target recall, then every candidate re-checked by its exact cosine.
  **Approximate**: a pair above the threshold is missed when its signatures differ in more bits than the
  radius (probability <= 1 - target_recall per pair); no false positive survives the re-check;
- ``gpu``    TorchCudaCosineMatcher: the blocked products in torch on CUDA; without a GPU it runs the exact CPU
  matcher and says so (fallback = True), or raises when strict_device;
- ``faiss``  FaissCosineMatcher: faiss IndexFlatIP, the peer baseline.

Pairs.dist holds the similarity as float32 (higher = more similar); range searches keep sim >= threshold
(inclusive, like the Hamming matchers' distance <= radius). ``cosine_matcher_for`` maps a binary matcher
that Hydra built from the ``matcher`` group to its counterpart here.
"""
from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np

from simbench.match.base import BinaryMatcher, EmbeddingMatcher
from simbench.types import Pairs, pack_bits

log = logging.getLogger("simbench")


def as_vectors(vectors) -> np.ndarray:
    """Accept Embeddings or an array; return C-contiguous float32 (N, D)."""
    v = np.ascontiguousarray(getattr(vectors, "vectors", vectors), dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"embeddings must be (N, D) float32, got shape {v.shape}")
    return v


def _empty() -> Pairs:
    return Pairs.empty(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Top-k bookkeeping shared by the CPU matchers: similarity and index in one sortable int64 key.
# ---------------------------------------------------------------------------------------------------------


def sort_keys(sim: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """int64 keys ordered by (similarity descending, index ascending): ties go to the lower index.

    float32 bits are made order-preserving as int32 (negative floats: flip the magnitude bits), shifted
    into the high half; the low half holds 2**32 - 1 - index.
    """
    bits = np.ascontiguousarray(sim, dtype=np.float32).view(np.int32)
    ordered = np.where(bits >= 0, bits, bits ^ np.int32(0x7FFFFFFF)).astype(np.int64)
    return (ordered << 32) + (np.int64(0xFFFFFFFF) - idx.astype(np.int64))


def keys_to_sim_idx(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of sort_keys."""
    idx = np.int64(0xFFFFFFFF) - (keys & np.int64(0xFFFFFFFF))
    ordered = (keys >> 32).astype(np.int32)
    bits = np.where(ordered >= 0, ordered, ordered ^ np.int32(0x7FFFFFFF)).astype(np.int32)
    return bits.view(np.float32), idx


def merge_topk(best: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """The k largest keys per row of two (Q, *) key arrays, unsorted."""
    both = np.concatenate([best, new], axis=1)
    if both.shape[1] <= k:
        return both
    return np.take_along_axis(both, np.argpartition(both, -k, axis=1)[:, -k:], axis=1)


def finish_topk(best: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (indices (Q, k) int64, similarities (Q, k) float32), padded with -1 / -inf."""
    q = len(best)
    idx = np.full((q, k), -1, np.int64)
    sim = np.full((q, k), -np.inf, np.float32)
    if best.shape[1]:
        order = np.argsort(-best, axis=1)  # keys are unique per row: a total order
        best = np.take_along_axis(best, order, axis=1)[:, :k]
        s, i = keys_to_sim_idx(best)
        idx[:, : best.shape[1]], sim[:, : best.shape[1]] = i, s
    return idx, sim


# ---------------------------------------------------------------------------------------------------------
# exact: blocked matrix products.
# ---------------------------------------------------------------------------------------------------------


class ExactCosineMatcher(EmbeddingMatcher):
    """All inner products, block by block (BLAS sgemm), keeping the pairs at or above the threshold.

    query_block x database_block similarities (float32) are alive at a time, so memory is bounded by the
    blocks plus the output; a self-join computes only the blocks on and above the diagonal.
    """

    name = "exact"

    def __init__(self, query_block: int = 2048, database_block: int = 8192):
        self.query_block = max(1, int(query_block))
        self.database_block = max(1, int(database_block))

    def range_search(self, queries, database, min_similarity: float) -> Pairs:
        return self._range(as_vectors(queries), as_vectors(database), float(min_similarity), upper=False)

    def self_join(self, vectors, min_similarity: float) -> Pairs:
        v = as_vectors(vectors)
        return self._range(v, v, float(min_similarity), upper=True)

    def _range(self, q: np.ndarray, db: np.ndarray, t: float, upper: bool) -> Pairs:
        """Pairs (a, b) with q[a] . db[b] >= t; upper keeps only b > a (q and db are the same set)."""
        _check_dims(q, db)
        parts = []
        for q0 in range(0, len(q), self.query_block):
            d_start = q0 if upper else 0  # blocks left of the diagonal hold only b < a
            parts += range_blocks(q[q0 : q0 + self.query_block], q0, db, 0, d_start, len(db),
                                  self.database_block, t, upper)
        return Pairs.concat(parts, np.float32)

    def topk(self, queries, database, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar database rows per query, ties to the lower index."""
        q, db = as_vectors(queries), as_vectors(database)
        _check_dims(q, db)
        k = int(k)
        idx = np.full((len(q), k), -1, np.int64)
        sim = np.full((len(q), k), -np.inf, np.float32)
        for q0 in range(0, len(q), self.query_block):
            qb = q[q0 : q0 + self.query_block]
            best = topk_blocks(qb, db, 0, 0, len(db), self.database_block, k)
            idx[q0 : q0 + len(qb)], sim[q0 : q0 + len(qb)] = finish_topk(best, k)
        return idx, sim


# The two loops below are the whole of the exact matcher's arithmetic. simbench.distributed.match runs
# them on slices of the database as tasks: `db` then holds only the global rows first, first + 1, ...
# (the blocks' products are the same matrices as in one process, so the same floats).


def range_blocks(qb: np.ndarray, q0: int, db: np.ndarray, first: int, d_begin: int, d_end: int, block: int,
                 t: float, upper: bool) -> list[Pairs]:
    """Pairs >= t of the query block qb (global rows from q0) with database rows d_begin..d_end (global),
    `block` rows per product; db[i] is global row first + i."""
    parts = []
    for d0 in range(d_begin, d_end, block):
        sims = qb @ db[d0 - first : min(d0 + block, d_end) - first].T
        parts.append(_pairs_in_block(sims, q0, d0, t, upper))
    return parts


def topk_blocks(qb: np.ndarray, db: np.ndarray, first: int, d_begin: int, d_end: int, block: int,
                k: int) -> np.ndarray:
    """sort_keys of the k best database rows d_begin..d_end (global) per query of qb, unsorted (merge
    with merge_topk, finish with finish_topk); `block` rows per product; db[i] is global row first + i."""
    best = np.empty((len(qb), 0), np.int64)
    for d0 in range(d_begin, d_end, block):
        sims = qb @ db[d0 - first : min(d0 + block, d_end) - first].T
        cols = np.arange(d0, d0 + sims.shape[1], dtype=np.int64)
        best = merge_topk(best, sort_keys(sims, np.broadcast_to(cols, sims.shape)), k)
    return best


def _check_dims(q: np.ndarray, db: np.ndarray) -> None:
    if len(q) and len(db) and q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the database {db.shape[1]}")


def _pairs_in_block(sims: np.ndarray, q0: int, d0: int, t: float, upper: bool) -> Pairs:
    """The entries >= t of one similarity block, as global (a, b, sim)."""
    hit = sims >= t
    if upper and d0 < q0 + sims.shape[0]:
        # On the diagonal: keep b > a only (global column > global row).
        rows = np.arange(q0, q0 + sims.shape[0])[:, None]
        cols = np.arange(d0, d0 + sims.shape[1])[None, :]
        hit &= cols > rows
    a, b = np.nonzero(hit)
    return Pairs(a + q0, b + d0, sims[a, b].astype(np.float32))


# ---------------------------------------------------------------------------------------------------------
# lsh: random hyperplanes -> multi-index Hamming search -> exact re-check.
# ---------------------------------------------------------------------------------------------------------


def hamming_radius(min_similarity: float, bits: int, target_recall: float) -> int:
    """The smallest radius r such that a pair of cosine >= min_similarity has signatures within r bits
    with probability >= target_recall.

    Charikar 2002: one random hyperplane separates two vectors at angle theta with probability
    p = theta / pi, so the Hamming distance of `bits`-bit signatures is Binomial(bits, p); pairs more
    similar than the threshold have a smaller p, so their recall is at least target_recall too.
    """
    from scipy.stats import binom

    theta = math.acos(min(1.0, max(-1.0, float(min_similarity))))
    p = theta / math.pi
    return int(min(bits, binom.ppf(float(target_recall), bits, p)))


def probes(width: int, sub_radius: int) -> int:
    """Keys within sub_radius bits of a width-bit key: sum over i <= sub_radius of C(width, i)."""
    return sum(math.comb(width, i) for i in range(min(sub_radius, width) + 1))


def choose_pieces(bits: int, radius: int, n_rows: int, max_probes: int = 1 << 16) -> tuple[int, float]:
    """Pieces m for a multi-index search of n_rows codes at `radius`, and the fraction of the database a
    query visits when bits are uniform (Norouzi et al. 2012, section 4: cost ~ m * probes * (1 + N / 2**w)).

    Pigeonhole pieces (m = radius + 1, exact keys) are too narrow at the radii cosine thresholds need
    (radius 34 of 256 bits for cosine 0.95: 7-bit pieces, a quarter of the database per query); fewer,
    wider pieces multi-probed at radius floor(radius / m) cost far less once N is large.
    """
    best = None
    for m in range(-(-bits // 64), min(radius + 1, bits) + 1):  # a piece key holds at most 64 bits
        width, sub = bits // m, radius // m
        n_probes = probes(width, sub)
        if n_probes > max_probes:
            continue
        cost = m * n_probes * (1.0 + n_rows / 2.0**width)
        if best is None or cost < best[0]:
            best = (cost, m, min(1.0, m * n_probes / 2.0**width))
    if best is None:
        return 0, 1.0
    return best[1], best[2]


class HyperplaneLshMatcher(EmbeddingMatcher):
    """Approximate cosine range search: random-hyperplane signatures (Charikar 2002) indexed by
    multi-index hashing, candidates re-checked by their exact cosine.

    index: the BinaryMatcher that searches the signatures (MultiIndexHashMatcher from matcher=lsh).
    bits: signature length, a multiple of 64; target_recall: the per-pair probability that a pair at the
        threshold is found (sets the Hamming radius, see hamming_radius); seed: the hyperplanes.
    max_visit: when uniform signatures would make each query visit more than this fraction of the database
        (low thresholds: radius 97 of 256 bits at cosine 0.5), hashing buys nothing over one matrix product
        and the exact blocked search runs instead.
    An index with pieces=0 (automatic) is given the piece count that choose_pieces finds cheapest for the
    database size; an explicit pieces > 0 is kept. last_stats says what ran ("mode": "lsh" or
    "exhaustive"), with the radius, the pieces and the number of candidates.
    Recall against the exact matcher is measured in benchmarks/bench_cnn.py and results/cnn.md.
    """

    name = "lsh"

    def __init__(self, index: BinaryMatcher | None = None, bits: int = 256, target_recall: float = 0.95,
                 seed: int = 0, max_visit: float = 0.05, exact: ExactCosineMatcher | None = None):
        if index is None:
            from simbench.match.lsh import MultiIndexHashMatcher

            index = MultiIndexHashMatcher()
        if not 0.0 < float(target_recall) < 1.0:
            raise ValueError(f"target_recall must be in (0, 1), got {target_recall}")
        if int(bits) <= 0 or int(bits) % 64:
            raise ValueError(f"bits must be a positive multiple of 64 (whole uint64 words), got {bits}")
        self.index = index
        self.bits = int(bits)
        self.target_recall = float(target_recall)
        self.seed = int(seed)
        self.max_visit = float(max_visit)
        self.exact = exact or ExactCosineMatcher()
        self.last_stats: dict = {}
        self._planes: np.ndarray | None = None

    def warm_up(self, features) -> None:
        """Compile the signature index's kernels on two signatures and import scipy.stats (for the radius,
        most of a second), so that match time is search time."""
        self.radius(0.9)
        warm = getattr(self.index, "warm_up", None)
        if warm is not None:
            warm(np.zeros((2, self.bits // 64), np.uint64))  # two signatures

    def planes(self, dim: int) -> np.ndarray:
        """(dim, bits) Gaussian hyperplane normals, fixed by the seed: the same for queries and database."""
        if self._planes is None or self._planes.shape[0] != dim:
            rng = np.random.default_rng(self.seed)
            self._planes = rng.standard_normal((dim, self.bits)).astype(np.float32)
        return self._planes

    def signatures(self, vectors) -> np.ndarray:
        """Bit k = which side of hyperplane k the vector lies on, packed to uint64 (N, ceil(bits / 64))."""
        v = as_vectors(vectors)
        return pack_bits(v @ self.planes(v.shape[1]) > 0)

    def radius(self, min_similarity: float) -> int:
        return hamming_radius(min_similarity, self.bits, self.target_recall)

    def plan(self, min_similarity: float, n_rows: int) -> tuple[int, int, float]:
        """(Hamming radius, pieces, fraction of the database a query visits) for this threshold and size."""
        r = self.radius(min_similarity)
        pieces, visit = choose_pieces(self.bits, r, n_rows)
        return r, pieces, visit

    def _index_for(self, pieces: int) -> BinaryMatcher:
        """The configured index, with the chosen piece count when it was left automatic (pieces=0)."""
        if getattr(self.index, "pieces", None) != 0:
            return self.index
        index = copy.copy(self.index)
        index.pieces = pieces
        return index

    def range_search(self, queries, database, min_similarity: float) -> Pairs:
        q, db = as_vectors(queries), as_vectors(database)
        _check_dims(q, db)
        r, pieces, visit = self.plan(min_similarity, len(db))
        if visit > self.max_visit:
            return self._exhaustive(self.exact.range_search(q, db, min_similarity), r, visit)
        started = time.perf_counter()
        sq, sdb = self.signatures(q), self.signatures(db)
        hashed = time.perf_counter()
        candidates = self._index_for(pieces).range_search(sq, sdb, r)
        searched = time.perf_counter()
        pairs = self._recheck(q, db, candidates, float(min_similarity), r, pieces, visit)
        self._timings(started, hashed, searched)
        return pairs

    def self_join(self, vectors, min_similarity: float) -> Pairs:
        v = as_vectors(vectors)
        r, pieces, visit = self.plan(min_similarity, len(v))
        if visit > self.max_visit:
            return self._exhaustive(self.exact.self_join(v, min_similarity), r, visit)
        started = time.perf_counter()
        sv = self.signatures(v)
        hashed = time.perf_counter()
        candidates = self._index_for(pieces).self_join(sv, r)
        searched = time.perf_counter()
        pairs = self._recheck(v, v, candidates, float(min_similarity), r, pieces, visit)
        self._timings(started, hashed, searched)
        return pairs

    def _timings(self, started: float, hashed: float, searched: float) -> None:
        """Seconds spent hashing, searching the index and re-checking, into last_stats."""
        self.last_stats.update(hash_s=hashed - started, search_s=searched - hashed,
                               recheck_s=time.perf_counter() - searched)

    def _exhaustive(self, pairs: Pairs, r: int, visit: float) -> Pairs:
        self.last_stats = {"mode": "exhaustive", "radius": r, "bits": self.bits, "visit": visit,
                           "candidates": None}
        return pairs

    def _recheck(self, q: np.ndarray, db: np.ndarray, candidates: Pairs, t: float, r: int, pieces: int,
                 visit: float) -> Pairs:
        """Exact cosine of every candidate pair; keep those >= t (no false positives leave here)."""
        self.last_stats = {"mode": "lsh", "radius": r, "bits": self.bits, "pieces": pieces, "visit": visit,
                           "candidates": len(candidates)}
        sims = pair_similarities(q, db, candidates.a, candidates.b)
        keep = sims >= t
        return Pairs(candidates.a[keep], candidates.b[keep], sims[keep])

    def topk(self, queries, database, k: int, rerank: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: the rerank * k nearest signatures (Hamming), re-ranked by exact cosine."""
        q, db = as_vectors(queries), as_vectors(database)
        k = int(k)
        cand, _ = self.index.topk(self.signatures(q), self.signatures(db), max(k, rerank * k))
        valid = cand >= 0
        sims = np.full(cand.shape, -np.inf, np.float32)
        sims[valid] = pair_similarities(q, db, np.nonzero(valid)[0], cand[valid])
        # Stable sort by similarity keeps the Hamming order (lower index first) among equals.
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        idx = np.full((len(q), k), -1, np.int64)
        sim = np.full((len(q), k), -np.inf, np.float32)
        idx[:, : order.shape[1]] = np.take_along_axis(np.where(valid, cand, -1), order, axis=1)
        sim[:, : order.shape[1]] = np.take_along_axis(sims, order, axis=1)
        return idx, sim


def pair_similarities(q: np.ndarray, db: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 16):
    """q[a[k]] . db[b[k]] for every k, in chunks (bounded memory), float32."""
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), chunk):
        aa, bb = a[s : s + chunk], b[s : s + chunk]
        out[s : s + chunk] = np.einsum("ij,ij->i", q[aa], db[bb])
    return out


# ---------------------------------------------------------------------------------------------------------
# gpu: torch on CUDA.
# ---------------------------------------------------------------------------------------------------------


class TorchCudaCosineMatcher(EmbeddingMatcher):
    """The blocked products of ExactCosineMatcher in torch on a CUDA device ("cuda": the current one).

    query_block x database_block similarities are alive at a time, for range search and top-k alike (top-k
    keeps each query's k best with torch.topk, block by block); a self-join, or a top-k of a set against
    itself, uploads the vectors once. Without a GPU: strict_device=True raises; otherwise the exact CPU
    matcher runs and self.fallback is True (result.json: env.fallback = true). device="cpu" runs the same
    torch code on the CPU (tests).
    """

    name = "gpu"

    def __init__(self, strict_device: bool = False, device: str = "cuda", query_block: int = 8192,
                 database_block: int = 65536):
        self.query_block = max(1, int(query_block))
        self.database_block = max(1, int(database_block))
        self.cpu = ExactCosineMatcher()
        self.device, self.fallback = self._resolve(str(device), bool(strict_device))

    @staticmethod
    def _resolve(device: str, strict: bool) -> tuple[str, bool]:
        try:
            import torch

            available = torch.cuda.is_available()
        except ImportError:
            available = False
        if device == "cpu" or (device.startswith("cuda") and available):
            return (device if device == "cpu" or ":" in device else f"cuda:{torch.cuda.current_device()}"), False
        why = f"matcher=gpu needs a CUDA device and torch sees none (device={device})"
        if strict:
            raise RuntimeError(f"{why}; use another matcher or strict_device=false to fall back to the CPU")
        log.warning("%s: using the exact CPU matcher (env.fallback = true)", why)
        return "cpu", True

    def range_search(self, queries, database, min_similarity: float) -> Pairs:
        if self.fallback:
            return self.cpu.range_search(queries, database, min_similarity)
        return self._range(as_vectors(queries), as_vectors(database), float(min_similarity), upper=False)

    def self_join(self, vectors, min_similarity: float) -> Pairs:
        if self.fallback:
            return self.cpu.self_join(vectors, min_similarity)
        v = as_vectors(vectors)
        return self._range(v, v, float(min_similarity), upper=True)

    def _range(self, q: np.ndarray, db: np.ndarray, t: float, upper: bool) -> Pairs:
        import torch

        _check_dims(q, db)
        dq = torch.from_numpy(q).to(self.device)
        ddb = dq if upper else torch.from_numpy(db).to(self.device)
        parts = []
        for q0 in range(0, len(q), self.query_block):
            qb = dq[q0 : q0 + self.query_block]
            for d0 in range(q0 if upper else 0, len(db), self.database_block):
                sims = qb @ ddb[d0 : d0 + self.database_block].T
                hit = sims >= t
                if upper and d0 < q0 + len(qb):
                    rows = torch.arange(q0, q0 + len(qb), device=self.device)[:, None]
                    cols = torch.arange(d0, d0 + sims.shape[1], device=self.device)[None, :]
                    hit &= cols > rows
                a, b = torch.nonzero(hit, as_tuple=True)
                s = sims[a, b]
                parts.append(Pairs((a + q0).cpu().numpy(), (b + d0).cpu().numpy(), s.cpu().numpy()))
        return Pairs.concat(parts, np.float32)

    def topk(self, queries, database, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar database rows per query, ties to the lower index: per query block, the running
        k best are merged with each database block's similarities by torch.topk (never a full sort, never
        query_block x N at once)."""
        if self.fallback:
            return self.cpu.topk(queries, database, k)
        import torch

        q, db = as_vectors(queries), as_vectors(database)
        _check_dims(q, db)
        k = int(k)
        idx = np.full((len(q), max(k, 0)), -1, np.int64)
        sim = np.full((len(q), max(k, 0)), -np.inf, np.float32)
        kk = min(k, len(db))
        if kk <= 0:
            return idx, sim
        same = queries is database or q is db
        dq = torch.from_numpy(q).to(self.device)
        ddb = dq if same else torch.from_numpy(db).to(self.device)
        for q0 in range(0, len(q), self.query_block):
            qb = dq[q0 : q0 + self.query_block]
            best_s = torch.empty((len(qb), 0), dtype=torch.float32, device=self.device)
            best_i = torch.empty((len(qb), 0), dtype=torch.int64, device=self.device)
            for d0 in range(0, len(db), self.database_block):
                sims = qb @ ddb[d0 : d0 + self.database_block].T
                cols = torch.arange(d0, d0 + sims.shape[1], device=self.device).expand(len(qb), -1)
                best_s, best_i = top_columns(torch.cat([best_s, sims], 1), torch.cat([best_i, cols], 1), kk)
            idx[q0 : q0 + len(qb), :kk] = best_i.cpu().numpy()
            sim[q0 : q0 + len(qb), :kk] = best_s.cpu().numpy()
        return idx, sim


def top_columns(sims, rows, k: int):
    """The k largest similarities per row of a torch (Q, C) block with their row indices, by torch.topk on
    an int64 key: the similarity's order-preserving bits above, the column's position (reversed) below.
    Columns are in increasing row order (the running best first: earlier blocks), so equal similarities
    keep the lower row; the key holds positions (< 2^32), not rows, so no row bit is lost."""
    import torch

    k = min(k, sims.shape[1])  # the first blocks may hold fewer columns than k
    bits = sims.contiguous().view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    position = torch.arange(sims.shape[1], device=sims.device, dtype=torch.int64)
    keys = (ordered << 32) | (0xFFFFFFFF - position)
    chosen = torch.topk(keys, k, dim=1, sorted=True).indices
    return torch.gather(sims, 1, chosen), torch.gather(rows, 1, chosen)


# ---------------------------------------------------------------------------------------------------------
# faiss: IndexFlatIP, the peer.
# ---------------------------------------------------------------------------------------------------------


class FaissCosineMatcher(EmbeddingMatcher):
    """faiss IndexFlatIP (brute-force inner product). faiss keeps sim > radius in a range search; we pass
    the next float below the threshold and keep sim >= threshold, the simbench convention."""

    name = "faiss"

    def __init__(self, threads: int = 0):
        self.threads = int(threads)

    def _index(self, database: np.ndarray):
        import faiss

        if self.threads > 0:
            faiss.omp_set_num_threads(self.threads)
        index = faiss.IndexFlatIP(database.shape[1])
        index.add(database)
        return index

    def range_search(self, queries, database, min_similarity: float) -> Pairs:
        q, db = as_vectors(queries), as_vectors(database)
        _check_dims(q, db)
        if not len(q) or not len(db):
            return _empty()
        t = np.float32(min_similarity)
        lims, sims, ids = self._index(db).range_search(q, float(np.nextafter(t, np.float32(-np.inf))))
        a = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(lims.astype(np.int64)))
        keep = sims >= t
        pairs = Pairs(a[keep], ids[keep].astype(np.int64), sims[keep].astype(np.float32))
        return pairs.sorted()

    def topk(self, queries, database, k: int) -> tuple[np.ndarray, np.ndarray]:
        q, db = as_vectors(queries), as_vectors(database)
        _check_dims(q, db)
        k = int(k)
        if not len(q) or not len(db) or k == 0:
            return np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32)
        sims, ids = self._index(db).search(q, k)
        ids = ids.astype(np.int64)
        sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
        return ids, sims


# ---------------------------------------------------------------------------------------------------------
# The bridge from the `matcher` config group.
# ---------------------------------------------------------------------------------------------------------


def cosine_matcher_for(binary_matcher, lsh_bits: int = 256, lsh_recall: float = 0.95,
                       lsh_seed: int = 0) -> EmbeddingMatcher:
    """The embedding counterpart of a binary matcher, by its name (exact, lsh, gpu, faiss).

    exact -> ExactCosineMatcher; lsh -> HyperplaneLshMatcher searching its signatures with that very
    matcher; gpu -> TorchCudaCosineMatcher with its strict_device; faiss -> FaissCosineMatcher with its
    threads. An EmbeddingMatcher is returned as is.
    """
    if isinstance(binary_matcher, EmbeddingMatcher):
        return binary_matcher
    name = getattr(binary_matcher, "name", None)
    if name == "exact":
        return ExactCosineMatcher()
    if name == "lsh":
        return HyperplaneLshMatcher(binary_matcher, bits=lsh_bits, target_recall=lsh_recall, seed=lsh_seed)
    if name == "gpu":
        return TorchCudaCosineMatcher(strict_device=bool(getattr(binary_matcher, "strict_device", False)))
    if name == "faiss":
        return FaissCosineMatcher(threads=int(getattr(binary_matcher, "threads", 0)))
    raise ValueError(f"no cosine counterpart for matcher {name!r} ({type(binary_matcher).__name__}); "
                     f"use exact, lsh, gpu or faiss")
