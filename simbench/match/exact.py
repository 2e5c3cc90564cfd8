"""Exact Hamming search on uint64 codes: blocked XOR-popcount on the CPU (numba).

simbench's own CPU kernel, the reference the GPU kernel is measured against. It follows the brute-force
design of faiss's IndexBinaryFlat (faiss/utils/hamming.cpp: one distance routine per code size,
HammingComputer8/16/32/64; query blocks spread over threads), and adds:

- the database is stored transposed, (W, N), so the distance loop runs over database rows with unit
  stride and LLVM vectorises it (VPOPCNTQ where the CPU has AVX-512 VPOPCNTDQ, else a shuffle popcount);
- queries x database are tiled: a database tile stays in cache while a block of queries passes over it;
- a self-join visits only the upper triangle (j > i): half the work of a full range search;
- every query block grows its own output buffer, so memory follows the output, never N x N.

Threads: query blocks are handed to `threads` Python threads, each running a compiled, GIL-free
(nogil) block routine; blocks go out largest first and are taken as threads come free, which keeps both
cores busy on the uneven blocks of a triangle and on a machine shared with other work. (numba's
parallel=True splits a loop statically, and compiled about 5 s slower per kernel and code size here.)

Radius is inclusive (distance <= radius), like the rest of simbench.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, types
from numba.extending import overload

from simbench.match.base import BinaryMatcher, as_words, unfilled_topk
from simbench.match.popcount import popcount64
from simbench.types import Pairs


# ---------------------------------------------------------------------------------------------------------
# Distance tiles: buf[j - j0] = popcount(q[i] ^ db[j]) for j in [j0, j1); returns the smallest of them.
# One routine per code size, like faiss's HammingComputer8/16/32/64: the query words are loaded once into
# scalars (registers), the loop over j has unit stride in every word row of dbT, and LLVM vectorises it.
# Distances stay 64-bit and the tile reports its minimum rather than a count: a narrowing store and a
# compare would compete with VPOPCNTQ for the same execution port (port 5 on Intel). The loops count from
# 0 over slices that start at j0: with an index numba cannot prove non-negative it adds a negative-index
# fix-up, and LLVM then loads through gathers, several times slower.
# ---------------------------------------------------------------------------------------------------------

_NO_DIST = np.uint64(1 << 62)  # larger than any distance
_CHUNK = 64  # a tile with a hit is scanned in chunks of 64 distances, skipping those without one


@njit(nogil=True, cache=True)
def _tile_w1(q, i, dbT, j0, j1, buf):
    q0 = q[i, 0]
    x0 = dbT[0, j0:j1]
    low = _NO_DIST
    for t in range(j1 - j0):
        d = popcount64(q0 ^ x0[t])
        buf[t] = d
        low = min(low, d)
    return low


@njit(nogil=True, cache=True)
def _tile_w2(q, i, dbT, j0, j1, buf):
    q0, q1 = q[i, 0], q[i, 1]
    x0, x1 = dbT[0, j0:j1], dbT[1, j0:j1]
    low = _NO_DIST
    for t in range(j1 - j0):
        d = popcount64(q0 ^ x0[t]) + popcount64(q1 ^ x1[t])
        buf[t] = d
        low = min(low, d)
    return low


@njit(nogil=True, cache=True)
def _tile_w4(q, i, dbT, j0, j1, buf):
    q0, q1, q2, q3 = q[i, 0], q[i, 1], q[i, 2], q[i, 3]
    x0, x1, x2, x3 = dbT[0, j0:j1], dbT[1, j0:j1], dbT[2, j0:j1], dbT[3, j0:j1]
    low = _NO_DIST
    for t in range(j1 - j0):
        d = (popcount64(q0 ^ x0[t]) + popcount64(q1 ^ x1[t])) + (popcount64(q2 ^ x2[t]) + popcount64(q3 ^ x3[t]))
        buf[t] = d
        low = min(low, d)
    return low


@njit(nogil=True, cache=True)
def _tile_w8(q, i, dbT, j0, j1, buf):
    q0, q1, q2, q3 = q[i, 0], q[i, 1], q[i, 2], q[i, 3]
    q4, q5, q6, q7 = q[i, 4], q[i, 5], q[i, 6], q[i, 7]
    x0, x1, x2, x3 = dbT[0, j0:j1], dbT[1, j0:j1], dbT[2, j0:j1], dbT[3, j0:j1]
    x4, x5, x6, x7 = dbT[4, j0:j1], dbT[5, j0:j1], dbT[6, j0:j1], dbT[7, j0:j1]
    low = _NO_DIST
    for t in range(j1 - j0):
        d = ((popcount64(q0 ^ x0[t]) + popcount64(q1 ^ x1[t])) + (popcount64(q2 ^ x2[t]) + popcount64(q3 ^ x3[t]))) + (
            (popcount64(q4 ^ x4[t]) + popcount64(q5 ^ x5[t])) + (popcount64(q6 ^ x6[t]) + popcount64(q7 ^ x7[t]))
        )
        buf[t] = d
        low = min(low, d)
    return low


@njit(nogil=True, cache=True)
def _tile_any(q, i, dbT, j0, j1, buf):
    # Any width: one word row at a time, accumulated in buf (each pass is a unit-stride vector loop).
    n = j1 - j0
    qw = q[i, 0]
    x = dbT[0, j0:j1]
    for t in range(n):
        buf[t] = popcount64(qw ^ x[t])
    for w in range(1, dbT.shape[0]):
        qw = q[i, w]
        x = dbT[w, j0:j1]
        for t in range(n):
            buf[t] += popcount64(qw ^ x[t])
    low = _NO_DIST
    for t in range(n):
        low = min(low, buf[t])
    return low


def _tile(spec, q, i, dbT, j0, j1, buf):
    """The distance tile for this code size; `spec` is a tuple of W zeros for W = 1, 2, 4, 8, else ()."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(_tile, jit_options={"nogil": True})
def _tile_for_width(spec, q, i, dbT, j0, j1, buf):
    # Chosen when the caller is compiled: the tuple's length is part of its numba type, so every code
    # size gets its own copy of the block routine with its tile inlined (no branch in the hot loop).
    width = len(spec) if isinstance(spec, types.BaseTuple) else 0
    routine = {1: _tile_w1, 2: _tile_w2, 4: _tile_w4, 8: _tile_w8}.get(width, _tile_any)

    def impl(spec, q, i, dbT, j0, j1, buf):
        return routine(q, i, dbT, j0, j1, buf)

    return impl


def _width_spec(width: int) -> tuple:
    return (0,) * width if width in (1, 2, 4, 8) else ()


# ---------------------------------------------------------------------------------------------------------
# Block routines: one block of queries against the whole database (or the part right of the diagonal).
# ---------------------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _radius_block(spec, q, dbT, r, i0, i1, tj, upper):
    """Pairs (a, b, dist) with a in [i0, i1), dist <= r, in (a, b) order; upper: keep b > a only.

    Loop order: database tile outside, queries inside, so each tile (tj rows) is read from cache by every
    query of the block. Output buffers start small and double when full.
    """
    n = dbT.shape[1]
    buf = np.empty(tj, np.uint64)
    cap = 256
    out_a = np.empty(cap, np.int64)
    out_b = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.int32)
    c = 0
    for jt0 in range(i0 + 1 if upper else 0, n, tj):
        jt1 = min(jt0 + tj, n)
        for i in range(i0, i1):
            js = max(jt0, i + 1) if upper else jt0
            if js >= jt1:
                continue
            if np.int64(_tile(spec, q, i, dbT, js, jt1, buf)) > r:
                continue  # the usual case: nothing within the radius in this tile
            if c + (jt1 - js) > cap:
                # Grow here, before the scan: growing inside the scan loop made each scanned entry about
                # 50x slower (numba then handles the arrays' reference counts in the loop).
                cap = max(2 * cap, c + (jt1 - js))
                out_a, out_b, out_d = _grow(out_a, cap), _grow(out_b, cap), _grow(out_d, cap)
            c = _collect(buf, jt1 - js, r, i, js, out_a, out_b, out_d, c)
    # Pairs came out tile by tile; a stable counting sort on a gives (a, b) order (b ascends within each
    # a because the tiles, and j within a tile, ascend).
    start = np.zeros(i1 - i0 + 1, np.int64)
    for t in range(c):
        start[out_a[t] - i0 + 1] += 1
    for t in range(i1 - i0):
        start[t + 1] += start[t]
    a = np.empty(c, np.int64)
    b = np.empty(c, np.int64)
    dist = np.empty(c, np.int32)
    for t in range(c):
        s = start[out_a[t] - i0]
        start[out_a[t] - i0] = s + 1
        a[s] = out_a[t]
        b[s] = out_b[t]
        dist[s] = out_d[t]
    return a, b, dist


@njit(nogil=True, cache=True)
def _collect(buf, n, r, i, j0, out_a, out_b, out_d, c):
    """Append (i, j0 + t, buf[t]) for every buf[t] <= r, t < n, at out_*[c:]; return the new count.

    On clustered codes most tiles hold a match or two, and a branch per distance cost several times the
    distances themselves: a vector pass finds the chunks that hold one, and only those are scanned.
    """
    for chunk in range((n + _CHUNK - 1) // _CHUNK):
        if _chunk_min(buf, chunk, n) > r:
            continue
        for t in range(chunk * _CHUNK, min(chunk * _CHUNK + _CHUNK, n)):
            d = np.int64(buf[t])
            if d <= r:
                out_a[c] = i
                out_b[c] = j0 + t
                out_d[c] = d
                c += 1
    return c


@njit(nogil=True, cache=True)
def _chunk_min(buf, chunk, n):
    """min(buf[chunk * _CHUNK : (chunk + 1) * _CHUNK]) as int64, the slice clipped to n."""
    low = _NO_DIST
    # Unsigned indices: numba then adds no negative-index fix-up, and LLVM vectorises the loop.
    for t in range(chunk * _CHUNK, min(chunk * _CHUNK + _CHUNK, n)):
        low = min(low, buf[numba.uint64(t)])
    return np.int64(low)


@njit(nogil=True, cache=True)
def _grow(x, cap):
    y = np.empty(cap, x.dtype)
    y[: x.shape[0]] = x
    return y


@njit(nogil=True, cache=True)
def _topk_block(spec, q, dbT, k, i0, i1, tj, cap, out_i, out_d):
    """Rows [i0, i1) of out_i / out_d (pre-filled with -1 / max): the k nearest rows of dbT, ties by index.

    Per query, a candidate buffer of cap > k slots and a limit: once k candidates are known only strictly
    closer rows may enter (a later row at an equal distance has a higher index and loses the tie), so
    most tiles are skipped on their minimum alone. A full buffer is compacted to its best k by a counting
    sort on distance (distances are small integers, 0..64W).
    """
    n = dbT.shape[1]
    m = i1 - i0
    max_dist = 64 * dbT.shape[0]
    buf = np.empty(tj, np.uint64)
    cand_i = np.empty((m, cap), np.int64)
    cand_d = np.empty((m, cap), np.int32)
    ncand = np.zeros(m, np.int64)
    limit = np.full(m, max_dist + 1, np.int64)  # accept d < limit
    hist = np.empty(max_dist + 2, np.int64)
    tmp_i = np.empty(cap, np.int64)
    tmp_d = np.empty(cap, np.int32)
    for jt0 in range(0, n, tj):
        jt1 = min(jt0 + tj, n)
        for t in range(m):
            if np.int64(_tile(spec, q, i0 + t, dbT, jt0, jt1, buf)) >= limit[t]:
                continue
            ncand[t] = _offer(buf, jt1 - jt0, jt0, cand_i[t], cand_d[t], ncand[t], limit[t:t + 1], k,
                              hist, tmp_i, tmp_d)
    for t in range(m):
        c = ncand[t]
        _compact(cand_i[t], cand_d[t], c, k, hist, tmp_i, tmp_d)
        for s in range(min(c, k)):
            out_i[i0 + t, s] = cand_i[t, s]
            out_d[i0 + t, s] = cand_d[t, s]


@njit(nogil=True, cache=True)
def _offer(buf, n, j0, ci, cd, c, limit, k, hist, tmp_i, tmp_d):
    """Add rows j0 + t with buf[t] < limit[0] to one query's candidates (ci, cd, c of them); return c.

    A full buffer is compacted to its best k, and the limit drops to the k-th distance.
    """
    lim = np.int64(limit[0])
    cap = ci.shape[0]
    for chunk in range((n + _CHUNK - 1) // _CHUNK):
        if _chunk_min(buf, chunk, n) >= lim:
            continue
        for t in range(chunk * _CHUNK, min(chunk * _CHUNK + _CHUNK, n)):
            d = np.int64(buf[t])
            if d < lim:
                if c == cap:
                    lim = _compact(ci, cd, cap, k, hist, tmp_i, tmp_d)
                    c = k
                    if d >= lim:
                        continue
                ci[c] = j0 + t
                cd[c] = d
                c += 1
    limit[0] = lim
    return c


@njit(nogil=True, cache=True)
def _compact(ci, cd, c, k, hist, tmp_i, tmp_d):
    """Keep the best min(c, k) of c candidates, sorted by (distance, index); return the k-th distance.

    A stable counting sort on distance: within one distance the buffer is already in index order (kept
    entries precede later, higher-indexed arrivals), so stability breaks ties by the lower index.
    """
    hist[:] = 0
    for t in range(c):
        hist[cd[t] + 1] += 1
    for v in range(1, hist.shape[0]):
        hist[v] += hist[v - 1]
    for t in range(c):
        s = hist[cd[t]]
        hist[cd[t]] = s + 1
        tmp_i[s] = ci[t]
        tmp_d[s] = cd[t]
    keep = min(c, k)
    for s in range(keep):
        ci[s] = tmp_i[s]
        cd[s] = tmp_d[s]
    return np.int64(cd[keep - 1]) if keep > 0 else np.int64(0)


# ---------------------------------------------------------------------------------------------------------
# The matcher: Python glue that cuts the work into blocks and hands them to threads.
# ---------------------------------------------------------------------------------------------------------


class ExactMatcher(BinaryMatcher):
    """Exact range search and top-k by blocked XOR-popcount over uint64 codes of any width (numba, CPU).

    block_size: queries per block, the unit of work a thread takes;
    threads: threads per call (0 = numba.get_num_threads(), so numba.set_num_threads applies);
    tile_bytes: bytes of database rows and their distances per tile; 32 KB stays in a 48 KB L1 data cache
    while a block of queries passes over it (2048 rows of 64-bit codes, 448 of 512-bit).
    """

    name = "exact"

    def __init__(self, block_size: int = 256, threads: int = 0, tile_bytes: int = 32768):
        if block_size < 1 or tile_bytes < 1:
            raise ValueError("block_size and tile_bytes must be positive")
        self.block_size = int(block_size)
        self.threads = int(threads)
        self.tile_bytes = int(tile_bytes)

    def range_search(self, queries, database, radius):
        q, db = _same_width(queries, database)
        return self._radius(q, db, int(radius), upper=False)

    def self_join(self, codes, radius):
        """All pairs a < b within `codes` at distance <= radius; only the upper triangle is computed."""
        words = _nonzero_width(as_words(codes))
        return self._radius(words, words, int(radius), upper=True)

    def topk(self, queries, database, k):
        q, db = _same_width(queries, database)
        k = int(k)
        idx, dist = unfilled_topk(len(q), k)
        if k <= 0 or len(q) == 0 or len(db) == 0:
            return idx, dist
        kk = min(k, len(db))
        cap = kk + max(kk, 64)  # the k kept plus room for as many arrivals before a compaction
        # Candidate buffers take 12 bytes a slot: keep one block's under about 8 MB.
        qb = int(max(1, min(self.block_size, (8 << 20) // (12 * cap))))
        spec, dbT, tj = _width_spec(q.shape[1]), np.ascontiguousarray(db.T), self._tile_rows(q.shape[1])

        def block(i0):
            _topk_block(spec, q, dbT, kk, i0, min(i0 + qb, len(q)), tj, cap, idx, dist)

        self._map(block, range(0, len(q), qb))
        return idx, dist

    # -- glue ------------------------------------------------------------------------------------------

    def _radius(self, q, db, radius, upper):
        if radius < 0 or len(q) == 0 or len(db) == 0:
            return Pairs.empty()
        radius = min(radius, 64 * q.shape[1])  # any larger radius means the same and might overflow int64
        spec, dbT, tj = _width_spec(q.shape[1]), np.ascontiguousarray(db.T), self._tile_rows(q.shape[1])
        qb = self.block_size

        def block(i0):
            a, b, d = _radius_block(spec, q, dbT, radius, i0, min(i0 + qb, len(q)), tj, upper)
            return Pairs(a, b, d)

        # Blocks in row order, so their outputs concatenate in (a, b) order; for a self-join that is also
        # largest first, the order that balances threads best.
        return Pairs.concat([p for p in self._map(block, range(0, len(q), qb)) if len(p)])

    def _tile_rows(self, width: int) -> int:
        # A tile row costs 8W bytes of codes plus 8 of distance buffer; whole multiples of 64 rows.
        return max(64, self.tile_bytes // (8 * width + 8) // 64 * 64)

    def _map(self, fn, items):
        items = list(items)
        threads = self.threads if self.threads > 0 else numba.get_num_threads()
        threads = max(1, min(threads, len(items)))
        if threads == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fn, items))


def _same_width(queries, database):
    q, db = _nonzero_width(as_words(queries)), _nonzero_width(as_words(database))
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} words a code, the database {db.shape[1]}")
    return q, db


def _nonzero_width(words):
    # Zero-bit codes are all at distance 0; one zero word each says the same to the kernels.
    return words if words.shape[1] else np.zeros((len(words), 1), np.uint64)
