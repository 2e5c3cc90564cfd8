"""Exact Hamming search on uint64 codes: blocked XOR-popcount on the CPU (numba).

simbench's own CPU kernel, the reference the GPU kernel is measured against. It follows the brute-force
design of faiss's IndexBinaryFlat (``faiss/utils/hamming.cpp``: one distance routine per code size,
HammingComputer8/16/32/64), but

- the database is stored transposed, (W, N), so the distance loop runs over database rows with unit
  stride and LLVM vectorises it (VPOPCNTQ where the CPU has it, otherwise a shuffle-based popcount);
- queries x database are tiled so a database tile stays in L1/L2 while a block of queries passes over it;
- a self-join visits only the upper triangle (j > i): half the work of a full range search;
- every query block writes into its own output buffer (count-and-fill, re-run on overflow), so memory is
  proportional to the output, never to N x N.

Radius is inclusive (distance <= radius), like the rest of simbench.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from simbench.match.base import BinaryMatcher, as_words
from simbench.match.popcount import popcount64
from simbench.types import Pairs

INT32_MAX = np.iinfo(np.int32).max


# ---------------------------------------------------------------------------------------------------------
# Distance tiles: buf[j - j0] = popcount(q[i] ^ db[j]) for j in [j0, j1); returns the smallest of them.
# One routine per code size, like faiss's HammingComputer8/16/32/64: the query words are loaded once into
# scalars (registers), the loop over j has unit stride in every word row of dbT, and LLVM vectorises it.
# Distances stay 64-bit and the tile reports its minimum rather than a count: a narrowing store and a
# compare would compete with VPOPCNTQ for the same execution port (port 5 on Intel).
# ---------------------------------------------------------------------------------------------------------

_NO_DIST = np.uint64(1 << 62)  # larger than any distance


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


@njit(nogil=True, cache=True)
def _tile(q, i, dbT, j0, j1, buf):
    """Pick the routine for this code size (one branch per tile of thousands of comparisons)."""
    width = dbT.shape[0]
    if width == 1:
        return _tile_w1(q, i, dbT, j0, j1, buf)
    if width == 2:
        return _tile_w2(q, i, dbT, j0, j1, buf)
    if width == 4:
        return _tile_w4(q, i, dbT, j0, j1, buf)
    if width == 8:
        return _tile_w8(q, i, dbT, j0, j1, buf)
    return _tile_any(q, i, dbT, j0, j1, buf)


# ---------------------------------------------------------------------------------------------------------
# Drivers: parallel over query blocks.
# ---------------------------------------------------------------------------------------------------------


@njit(parallel=True, nogil=True, cache=True)
def _radius_blocks(q, dbT, r, blocks, qb, tj, upper, cap, out_a, out_b, out_d, counts):
    """Range search for the query blocks `blocks` (block p = rows [blocks[p]*qb, +qb)) against all of dbT.

    Loop order: database tile outside, queries inside, so a tile (tj rows) is read from cache by every
    query of the block. Writes up to cap pairs per block into row p of out_*, in (a, b) order; counts[p]
    is the number found (> cap: the block overflowed and must be re-run with a larger cap).
    upper: self-join, keep j > i only, starting the tiles at the block's diagonal.
    """
    nq = q.shape[0]
    n = dbT.shape[1]
    for p in prange(blocks.shape[0]):
        i0 = blocks[p] * qb
        i1 = min(i0 + qb, nq)
        buf = np.empty(tj, np.uint64)
        c = 0
        jstart = i0 + 1 if upper else 0
        for jt0 in range(jstart, n, tj):
            jt1 = min(jt0 + tj, n)
            for i in range(i0, i1):
                js = max(jt0, i + 1) if upper else jt0
                if js >= jt1:
                    continue
                if np.int64(_tile(q, i, dbT, js, jt1, buf)) > r:
                    continue  # the usual case: nothing within the radius in this tile
                for j in range(js, jt1):
                    d = np.int64(buf[j - js])
                    if d <= r:
                        if c < cap:
                            out_a[p, c] = i
                            out_b[p, c] = j
                            out_d[p, c] = d
                        c += 1
        counts[p] = c
        if c > cap or c == 0:
            continue
        # Pairs came out tile by tile; a stable counting sort on a gives (a, b) order (b ascends within
        # each a because the tiles, and j within a tile, ascend).
        start = np.zeros(i1 - i0 + 1, np.int64)
        for t in range(c):
            start[out_a[p, t] - i0 + 1] += 1
        for t in range(i1 - i0):
            start[t + 1] += start[t]
        ta = out_a[p, :c].copy()
        tb = out_b[p, :c].copy()
        td = out_d[p, :c].copy()
        for t in range(c):
            s = start[ta[t] - i0]
            start[ta[t] - i0] = s + 1
            out_a[p, s] = ta[t]
            out_b[p, s] = tb[t]
            out_d[p, s] = td[t]


@njit(parallel=True, nogil=True, cache=True)
def _topk_blocks(q, dbT, k, qb, tj, cap, max_dist, out_i, out_d):
    """k nearest rows of dbT for every query, ties by lower index; out_* (Q, >=k) pre-filled with -1/max.

    Per query, a candidate buffer of cap > k entries and a limit: once k candidates are known only
    strictly closer rows may enter (a later row at an equal distance has a higher index and loses the
    tie), so most tiles are skipped on their minimum alone. A full buffer is compacted to its best k by a
    counting sort on distance (distances are small integers 0..64W).
    """
    nq = q.shape[0]
    n = dbT.shape[1]
    nblocks = (nq + qb - 1) // qb
    for blk in prange(nblocks):
        i0 = blk * qb
        i1 = min(i0 + qb, nq)
        m = i1 - i0
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
                lim = limit[t]
                if np.int64(_tile(q, i0 + t, dbT, jt0, jt1, buf)) >= lim:
                    continue
                for j in range(jt0, jt1):
                    d = np.int64(buf[j - jt0])
                    if d < lim:
                        if ncand[t] == cap:
                            lim = _compact(cand_i[t], cand_d[t], cap, k, hist, tmp_i, tmp_d)
                            ncand[t] = k
                            limit[t] = lim
                            if d >= lim:
                                continue
                        cand_i[t, ncand[t]] = j
                        cand_d[t, ncand[t]] = d
                        ncand[t] += 1
        for t in range(m):
            c = ncand[t]
            _compact(cand_i[t], cand_d[t], c, k, hist, tmp_i, tmp_d)
            for s in range(min(c, k)):
                out_i[i0 + t, s] = cand_i[t, s]
                out_d[i0 + t, s] = cand_d[t, s]


@njit(nogil=True, cache=True)
def _compact(ci, cd, c, k, hist, tmp_i, tmp_d):
    """Keep the best min(c, k) of c candidates, sorted by (distance, index); return the k-th distance.

    A stable counting sort on distance: within one distance the buffer is already in index order (kept
    entries precede later, higher-indexed arrivals), so stability gives ties by lower index.
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


class ExactMatcher(BinaryMatcher):
    """Exact range search and top-k by blocked XOR-popcount over uint64 codes of any width (numba, CPU).

    block_size: queries per block (the unit of parallel work and of output buffering);
    threads: numba threads for the call (0 = all cores).
    """

    name = "exact"

    def __init__(self, block_size: int = 256, threads: int = 0, tile_bytes: int = 16384):
        self.block_size = int(block_size)
        self.threads = int(threads)
        self.tile_bytes = int(tile_bytes)

    # -- helpers ---------------------------------------------------------------------------------------

    def _tile_rows(self, width: int) -> int:
        # Database rows per tile: the tile (8W bytes a row) plus the int32 distance buffer fit in L1/L2.
        return max(64, (self.tile_bytes // (8 * width)) // 64 * 64)

    def _with_threads(self, fn, *args):
        before = numba.get_num_threads()
        want = self.threads if self.threads > 0 else numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(min(want, numba.config.NUMBA_NUM_THREADS))
        try:
            return fn(*args)
        finally:
            numba.set_num_threads(before)

    # -- range search ------------------------------------------------------------------------------------

    def range_search(self, queries, database, radius):
        q = as_words(queries)
        db = as_words(database)
        if q.shape[1] != db.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} words, database {db.shape[1]}")
        return self._with_threads(self._radius, q, db, int(radius), False)

    def self_join(self, codes, radius):
        words = as_words(codes)
        return self._with_threads(self._radius, words, words, int(radius), True)

    def _radius(self, q, db, radius, upper):
        if radius < 0 or len(q) == 0 or len(db) == 0 or q.shape[1] == 0:
            return Pairs.empty()
        width = q.shape[1]
        kernel = _radius_blocks
        dbT = np.ascontiguousarray(db.T)
        qb = self.block_size
        tj = self._tile_rows(width)
        nblocks = (len(q) + qb - 1) // qb
        # Self-join rows near the top have the most work: visit blocks as (0, last, 1, last-1, ...) so each
        # thread's share of a wave costs the same.
        order = np.empty(nblocks, np.int64)
        order[0::2] = np.arange((nblocks + 1) // 2)
        order[1::2] = np.arange(nblocks - 1, (nblocks + 1) // 2 - 1, -1)
        threads = numba.get_num_threads()
        wave = max(8 * threads, 1)
        cap = 1024
        pieces: list[Pairs | None] = [None] * nblocks
        for w0 in range(0, nblocks, wave):
            blocks = order[w0:w0 + wave]
            found = self._run_radius(kernel, q, dbT, radius, blocks, qb, tj, upper, cap, pieces)
            # Size the next wave's buffers from what this one found (memory follows the output).
            cap = max(cap, int(found.max() * 1.25) + 16)
        return Pairs.concat([p for p in pieces if p is not None and len(p)])

    @staticmethod
    def _run_radius(kernel, q, dbT, radius, blocks, qb, tj, upper, cap, pieces):
        nb = len(blocks)
        out_a = np.empty((nb, cap), np.int64)
        out_b = np.empty((nb, cap), np.int64)
        out_d = np.empty((nb, cap), np.int32)
        counts = np.zeros(nb, np.int64)
        kernel(q, dbT, radius, blocks, qb, tj, upper, cap, out_a, out_b, out_d, counts)
        for p in range(nb):
            c = counts[p]
            if c <= cap:
                pieces[blocks[p]] = Pairs(out_a[p, :c].copy(), out_b[p, :c].copy(), out_d[p, :c].copy())
        over = counts > cap
        if over.any():
            # Re-run only the blocks that overflowed, with room for exactly what they found.
            redo = np.ascontiguousarray(blocks[over])
            ExactMatcher._run_radius(kernel, q, dbT, radius, redo, qb, tj, upper, int(counts.max()), pieces)
        return counts

    # -- top-k -------------------------------------------------------------------------------------------

    def topk(self, queries, database, k):
        q = as_words(queries)
        db = as_words(database)
        if q.shape[1] != db.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} words, database {db.shape[1]}")
        k = int(k)
        idx = np.full((len(q), max(k, 0)), -1, np.int64)
        dist = np.full((len(q), max(k, 0)), INT32_MAX, np.int32)
        if k <= 0 or len(q) == 0 or len(db) == 0:
            return idx, dist
        width = q.shape[1]
        kernel = _topk_blocks
        dbT = np.ascontiguousarray(db.T)
        kk = min(k, len(db))
        cap = kk + max(kk, 64)  # room for k kept + as many new before a compaction
        # Per-block candidate buffers: cap * 12 bytes per query; keep a block's under ~8 MB.
        qb = int(max(1, min(self.block_size, (8 << 20) // (12 * cap))))
        self._with_threads(kernel, q, dbT, kk, qb, self._tile_rows(width), cap, 64 * width, idx, dist)
        return idx, dist
