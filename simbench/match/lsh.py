"""Multi-index hashing: exact Hamming range search without comparing all pairs.

Follows Norouzi, Punjani, Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012,
which builds on the pigeonhole argument of Greene, Parnas, Yao, "Multi-index hashing for information
retrieval", FOCS 1994:

    cut every b-bit code into m disjoint pieces; if popcount(q ^ x) <= r, then at least one piece of q
    and x differs in at most floor(r / m) bits.

So with m = r + 1 pieces every pair within r shares at least one piece *exactly*: look each query piece
up in that piece's hash table, and verify the candidates with a full XOR-popcount. The output is exact
(identical to ``matcher=exact``), only the work changes.

Steps, one small function each:

1. ``layout``: choose m and the piece widths (b // m or b // m + 1 bits) from the radius;
2. ``permutation``: which original bit goes into which piece (identity, random, or *calibrated* on the data:
   BRISK bits are strongly correlated, so contiguous pieces have few distinct values and huge buckets);
3. ``piece keys`` of every row; ``tables``: per piece, rows sorted by key (counting sort) with bucket
   offsets, a dense 2**w offset array when w <= 16 bits, sorted unique keys + binary search otherwise;
4. ``search``: per query, gather the buckets of its m pieces (and of the keys within floor(r/m) bits, the
   multi-probe of Norouzi et al., when the caller fixed fewer than r + 1 pieces), verify each candidate
   with popcount64 over the full code, and keep a pair only in the *first* piece that finds it, so each
   pair is reported once without a hash set.

Pieces fixed below r + 1: we do not raise, we multi-probe every key within floor(r / m) bits of the query's
piece (Norouzi et al. 2012, section 3), which keeps the guarantee. In automatic mode (``pieces=0``), when
uniform random bits would already make every query look at more than a quarter of the database, the matcher
scans the database instead (one piece of zero bits, whose single bucket holds every row): same pairs.

Radius is inclusive (distance <= radius), like the rest of simbench. Memory: the index holds, per piece,
one row id (int32) and one key (uint16 for 16-bit pieces) per database row, plus a 64-byte aligned copy
of the codes when the caller's are not aligned (one cache miss per candidate instead of two); databases
above ``database_block`` rows are indexed block by block, and queries are searched ``query_block`` at a
time. ``topk`` is an exact brute force (no radius, so no pigeonhole to exploit).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from math import comb

import numba
import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from tqdm import tqdm

from simbench.match.base import BinaryMatcher, as_words, unfilled_topk, words_of
from simbench.match.popcount import popcount64
from simbench.types import Pairs

INT32_MAX = np.iinfo(np.int32).max
#: Pieces of at most this many bits get a dense offset table (2**16 + 1 int32 = 256 KiB per piece).
DENSE_BITS = 16
#: In automatic mode, scan instead when uniform bits would make a query visit this fraction of the rows.
SCAN_FRACTION = 0.25
#: Refuse layouts whose multi-probe enumerates more keys than this per piece (use more pieces instead).
MAX_PROBES = 1 << 16
#: Below these sizes a step runs on the calling thread alone: waking numba's pool for a parallel region
#: costs 10 us on an idle machine but milliseconds on a busy one, more than such a small step itself.
PARALLEL_ROWS = 32768
PARALLEL_QUERIES = 2048


@contextmanager
def _serial_below(size: int, threshold: int):
    """Run the enclosed numba calls on one thread when size < threshold."""
    if size >= threshold:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------
# 1. Layout: how many pieces, how wide, and how many bits a piece may differ by (multi-probe radius).
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """m pieces over `bits` bits; piece p holds permuted positions starts[p] : starts[p] + widths[p].

    sub_radius = floor(radius / m): a pair within `radius` differs in at most this many bits in some
    piece (Greene, Parnas, Yao 1994); 0 when m >= radius + 1. ``capacity`` is the largest radius the
    layout still answers exactly: m * (sub_radius + 1) - 1.
    """

    bits: int
    widths: np.ndarray
    sub_radius: int

    @property
    def pieces(self) -> int:
        return len(self.widths)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)

    @property
    def capacity(self) -> int:
        if self.scan:
            return INT32_MAX  # every row is a candidate: any radius is exact
        return self.pieces * (self.sub_radius + 1) - 1

    @property
    def joins_by_buckets(self) -> bool:
        """Every pair within the radius shares a piece exactly, and pieces are dense (<= 16 bits): what
        bucket_self_join needs."""
        return not self.scan and self.sub_radius == 0 and int(self.widths.max()) <= DENSE_BITS

    @property
    def scan(self) -> bool:
        """One piece of zero bits: its one bucket holds every row (brute force through the same loop)."""
        return self.pieces == 1 and int(self.widths[0]) == 0


def piece_widths(bits: int, pieces: int) -> np.ndarray:
    """Split `bits` into `pieces` widths of bits // m or bits // m + 1 (wider pieces first)."""
    base, extra = divmod(bits, pieces)
    return np.array([base + 1] * extra + [base] * (pieces - extra), dtype=np.int64)


def probes_per_piece(width: int, sub_radius: int) -> int:
    """Keys within sub_radius bits of a width-bit key: sum over i <= sub_radius of C(width, i)."""
    return sum(comb(width, i) for i in range(min(sub_radius, width) + 1))


def choose_layout(bits: int, radius: int, pieces: int) -> Layout:
    """Pieces for an exact search at `radius` (Norouzi et al. 2012, sections 3-4).

    pieces == 0: m = radius + 1 (at most `bits`, at least bits / 64 so that a key fits a uint64), so every
    pair within radius shares a piece exactly; if even uniform bits would make each query visit over
    SCAN_FRACTION of the rows, scan instead.
    pieces > 0: used as given, with multi-probe radius floor(radius / m) inside each piece.
    """
    if pieces < 0:
        raise ValueError(f"pieces must be >= 0 (0 = radius + 1), got {pieces}")
    if pieces == 0:
        m = max(1, min(radius + 1, bits), -(-bits // 64))
        layout = Layout(bits, piece_widths(bits, m), radius // m)
        probes = probes_per_piece(int(layout.widths.min()), layout.sub_radius)
        if m * probes / 2.0 ** int(layout.widths.min()) > SCAN_FRACTION:
            return Layout(bits, np.zeros(1, np.int64), 0)
        return layout
    if pieces > bits:
        raise ValueError(f"pieces={pieces} is more than the {bits} bits of the codes")
    widths = piece_widths(bits, pieces)
    if widths.max() > 64:
        raise ValueError(
            f"pieces={pieces} gives {int(widths.max())}-bit pieces; a piece key holds at most 64 bits, "
            f"use pieces >= {-(-bits // 64)}"
        )
    layout = Layout(bits, widths, radius // pieces)
    probes = probes_per_piece(int(widths.max()), layout.sub_radius)
    if probes > MAX_PROBES:
        raise ValueError(
            f"pieces={pieces} at radius {radius} needs {probes} probes per piece (keys within "
            f"{layout.sub_radius} bits of {int(widths.max())}); use pieces=0 (= radius + 1) or more pieces"
        )
    return layout


# ---------------------------------------------------------------------------------------------------------
# 2. Permutations: which original bit sits at each permuted position.
# ---------------------------------------------------------------------------------------------------------


def identity_permutation(bits: int) -> np.ndarray:
    """Native bit order: piece p is a contiguous run of the original bits (slow on correlated bits)."""
    return np.arange(bits, dtype=np.int64)


def random_permutation(bits: int, seed: int) -> np.ndarray:
    """A uniformly random bit order: breaks up runs of neighbouring, correlated bits."""
    return np.random.default_rng(seed).permutation(bits).astype(np.int64)


def calibrated_permutation(codes: np.ndarray, layout: Layout, sample: int = 4096, seed: int = 0) -> np.ndarray:
    """A bit order fitted to the data: pieces whose buckets are as small as possible.

    The expected number of candidates of a query drawn like the data is N * sum_p P_p, P_p being the
    probability that two random rows agree on all bits of piece p. We estimate log P_p to second order
    from bit statistics on a sample (per-bit agreement, plus a pairwise interaction term for every two
    bits in the piece), assign bits greedily to the piece where they lower sum_p P_p most (balanced,
    mutually uncorrelated bits spread over the pieces), then improve by swapping bits between pieces.
    """
    if layout.scan or layout.pieces == 1 or len(codes) == 0:
        return identity_permutation(layout.bits)
    columns, n = _calibration_sample(codes, layout.bits, sample, seed)
    with _serial_below(n, PARALLEL_ROWS):
        log_p, interaction = _bit_statistics(columns, n)
    members, log_pp = _greedy_assign(log_p, interaction, layout.widths)
    members, _ = _swap_refine(members, log_pp, log_p, interaction, layout.widths, 8)
    return np.concatenate([np.sort(members[p, : layout.widths[p]]) for p in range(layout.pieces)])


def _calibration_sample(codes: np.ndarray, bits: int, sample: int, seed: int) -> tuple[np.ndarray, int]:
    """Up to `sample` random rows, transposed into one bitset per code bit: (bits, ceil(n / 64)) uint64."""
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(codes), size=min(sample, len(codes)), replace=False))
    columns = np.zeros((bits, (len(take) + 63) // 64), dtype=np.uint64)
    _transpose_bits(codes, take, columns)
    return columns, len(take)


@njit(cache=True)
def _transpose_bits(codes, rows, columns):
    """columns[j] bit i = bit j of codes[rows[i]]: one bitset per code bit, for the co-occurrence counts."""
    one = np.uint64(1)
    for i in range(len(rows)):
        word, shift = i >> 6, np.uint64(i & 63)
        for j in range(columns.shape[0]):
            bit = (codes[rows[i], j >> 6] >> np.uint64(j & 63)) & one
            columns[j, word] |= bit << shift


@njit(parallel=True, cache=True)
def _cooccurrence(columns):
    """both[i, j] = rows where bits i and j are both set: popcount of the AND of their bitsets."""
    bits, n_words = columns.shape
    both = np.zeros((bits, bits), np.int64)
    for i in prange(bits):
        for j in range(i + 1):
            count = np.int64(0)
            for w in range(n_words):
                count += np.int64(popcount64(columns[i, w] & columns[j, w]))
            both[i, j] = count
            both[j, i] = count
    return both


def _bit_statistics(columns: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """log p_j and the pairwise interactions I_ij = log P_ij - log p_i - log p_j.

    p_j: probability that two random rows agree on bit j (m^2 + (1-m)^2, m the bit mean; 1/2 is best);
    P_ij: that they agree on bits i and j (sum of squared frequencies of the four patterns 00..11).
    I_ij > 0 for correlated bits: putting them in one piece makes its buckets larger.
    """
    f11 = _cooccurrence(columns) / max(n, 1)  # joint frequency of (1, 1); its diagonal is the bit mean
    mean = np.diag(f11).copy()
    f10 = mean[:, None] - f11
    f01 = mean[None, :] - f11
    f00 = 1.0 - mean[:, None] - mean[None, :] + f11
    p_pair = np.clip(f11**2 + f10**2 + f01**2 + f00**2, 1e-12, 1.0)
    p_bit = np.clip(mean**2 + (1.0 - mean) ** 2, 1e-12, 1.0)
    log_p = np.log(p_bit)
    interaction = np.log(p_pair) - log_p[:, None] - log_p[None, :]
    np.fill_diagonal(interaction, 0.0)
    return log_p, np.ascontiguousarray(interaction)


@njit(cache=True)
def _greedy_assign(log_p, interaction, widths):
    """Most informative bits first, each to the piece (with room) where it lowers sum_p exp(L_p) most.

    L_p = estimated log collision probability of piece p. Returns members (m, max width) and L.
    """
    m = len(widths)
    members = np.full((m, widths.max()), -1, np.int64)
    count = np.zeros(m, np.int64)
    log_pp = np.zeros(m)
    for j in np.argsort(log_p):  # ascending log p: balanced bits (p near 1/2) first
        best, best_gain, best_delta = -1, np.inf, 0.0
        for p in range(m):
            if count[p] >= widths[p]:
                continue
            delta = log_p[j]
            for k in range(count[p]):
                delta += interaction[j, members[p, k]]
            gain = np.exp(log_pp[p] + delta) - np.exp(log_pp[p])
            if gain < best_gain:
                best, best_gain, best_delta = p, gain, delta
        if best < 0:  # every gain NaN (degenerate statistics, e.g. 2 rows): the first piece with room
            best = np.argmax(count < widths)
            best_delta = log_p[j]
            for k in range(count[best]):
                best_delta += interaction[j, members[best, k]]
        members[best, count[best]] = j
        count[best] += 1
        log_pp[best] += best_delta
    return members, log_pp


@njit(cache=True)
def _swap_refine(members, log_pp, log_p, interaction, widths, rounds):
    """Local search: swap two bits of two pieces whenever that lowers sum_p exp(L_p); stop when stable.

    link[i, p] = sum of interactions of bit i with the bits of piece p, so a swap is priced in O(1).
    """
    m, bits = len(widths), len(log_p)
    link = np.zeros((bits, m))
    for p in range(m):
        for k in range(widths[p]):
            link[:, p] += interaction[:, members[p, k]]
    size = np.exp(log_pp)  # E_p: estimated collision probability of piece p
    for _ in range(rounds):
        swaps = 0
        for p in range(m):
            for q in range(p + 1, m):
                for a in range(widths[p]):
                    for b in range(widths[q]):
                        i, j = members[p, a], members[q, b]
                        # piece p loses i and gains j; q the reverse (interaction[i, i] = 0)
                        dp = log_p[j] - log_p[i] + link[j, p] - interaction[j, i] - link[i, p]
                        dq = log_p[i] - log_p[j] + link[i, q] - interaction[i, j] - link[j, q]
                        # sum_p exp(L_p) falls iff E_p (e^dp - 1) + E_q (e^dq - 1) < 0; as e^x - 1 >= x,
                        # E_p dp + E_q dq >= 0 already rules a swap out without calling exp
                        if size[p] * dp + size[q] * dq >= 0.0:
                            continue
                        gain = size[p] * np.expm1(dp) + size[q] * np.expm1(dq)
                        if gain < -1e-12 * (size[p] + size[q]):
                            members[p, a], members[q, b] = j, i
                            log_pp[p] += dp
                            log_pp[q] += dq
                            size[p], size[q] = np.exp(log_pp[p]), np.exp(log_pp[q])
                            link[:, p] += interaction[:, j] - interaction[:, i]
                            link[:, q] += interaction[:, i] - interaction[:, j]
                            swaps += 1
        if swaps == 0:
            break
    return members, log_pp


def make_permutation(kind: str, codes: np.ndarray, layout: Layout, seed: int) -> np.ndarray:
    """The permutation named by `kind` ("calibrated", "random" or "identity") for this layout."""
    if kind == "identity":
        return identity_permutation(layout.bits)
    if kind == "random":
        return random_permutation(layout.bits, seed)
    if kind == "calibrated":
        return calibrated_permutation(codes, layout, seed=seed)
    raise ValueError(f"permutation must be 'calibrated', 'random' or 'identity', got {kind!r}")


# ---------------------------------------------------------------------------------------------------------
# 3. Piece keys and per-piece tables.
# ---------------------------------------------------------------------------------------------------------


def key_dtype(layout: Layout):
    """uint16 for dense tables (the usual 16-bit pieces: small), uint64 otherwise (one compiled kernel)."""
    return np.uint16 if int(layout.widths.max()) <= DENSE_BITS else np.uint64


@njit(parallel=True, cache=True)
def _piece_keys(codes, perm, starts, widths, out):
    """out[p, i] = the bits perm[starts[p] : starts[p] + widths[p]] of codes[i], as an integer.

    Rows go 256 at a time, transposed to (W, 256) words, so the loop over rows has unit stride and
    vectorises: one shift-and-mask per bit for 8 rows at once.
    """
    n, n_words = codes.shape
    one = np.uint64(1)
    for block in prange((n + 255) // 256):
        i0 = block * 256
        count = min(n, i0 + 256) - i0
        columns = np.empty((n_words, 256), np.uint64)
        for i in range(count):
            for w in range(n_words):
                columns[w, i] = codes[i0 + i, w]
        key = np.empty(256, np.uint64)
        for p in range(len(widths)):
            key[:count] = 0
            for k in range(widths[p]):
                bit = perm[starts[p] + k]
                row, shift, to = columns[bit >> 6], np.uint64(bit & 63), np.uint64(k)
                for i in range(count):
                    key[i] |= ((row[i] >> shift) & one) << to
            for i in range(count):
                out[p, i0 + i] = key[i]


def piece_keys(codes: np.ndarray, perm: np.ndarray, layout: Layout) -> np.ndarray:
    """Piece keys of every row, (m, N) in key_dtype(layout): one contiguous row per piece."""
    out = np.empty((layout.pieces, len(codes)), dtype=key_dtype(layout))
    if len(codes):
        _piece_keys(codes, perm, layout.starts, layout.widths, out)
    return out


@njit(parallel=True, cache=True)
def _counting_sort(keys, widths, ids, offsets):
    """Per piece p: ids[p] = rows in ascending key order (stable), offsets[p, k] = first row of bucket k."""
    n = keys.shape[1]
    for p in prange(len(widths)):
        size = 1 << widths[p]
        for i in range(n):
            offsets[p, np.int64(keys[p, i]) + 1] += 1
        for k in range(size):
            offsets[p, k + 1] += offsets[p, k]
        for k in range(size + 1, offsets.shape[1]):
            offsets[p, k] = n  # unused tail of narrower pieces
        fill = offsets[p, :size].copy()
        for i in range(n):
            k = np.int64(keys[p, i])
            ids[p, fill[k]] = i
            fill[k] += 1


@dataclass
class Tables:
    """The hash tables of one database block.

    ids (m, N): row ids sorted by piece key; dense (m, 2**w + 1): bucket k of piece p is
    ids[p, dense[p, k] : dense[p, k + 1]] (when every piece has <= DENSE_BITS bits), else sorted unique
    keys ukeys[uptr[p] : uptr[p + 1]] with bucket bounds ubegin / uend (binary search).
    """

    codes: np.ndarray
    keys: np.ndarray
    ids: np.ndarray
    dense: np.ndarray
    ukeys: np.ndarray
    ubegin: np.ndarray
    uend: np.ndarray
    uptr: np.ndarray
    offset: int = 0
    copied_codes: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables, and by the aligned copy of the codes if one was made."""
        parts = (self.keys, self.ids, self.dense, self.ukeys, self.ubegin, self.uend, self.uptr)
        return int(sum(a.nbytes for a in parts)) + (self.codes.nbytes if self.copied_codes else 0)

    def bucket_sizes(self, p: int) -> np.ndarray:
        """Sizes of the non-empty buckets of piece p."""
        if self.dense.shape[1] > 1:
            sizes = np.diff(self.dense[p])
        else:
            sizes = (self.uend - self.ubegin)[self.uptr[p] : self.uptr[p + 1]]
        return sizes[sizes > 0]


def build_tables(codes: np.ndarray, perm: np.ndarray, layout: Layout, offset: int = 0) -> Tables:
    """Tables for one database block: keys, then a counting sort (dense) or argsort + unique (sparse)."""
    with _serial_below(len(codes), PARALLEL_ROWS):
        return _build_tables(codes, perm, layout, offset)


def aligned_rows(codes: np.ndarray) -> np.ndarray:
    """codes with a 64-byte aligned start (copied if need be), so no row of <= 64 bytes straddles two cache
    lines: every candidate then costs one cache miss, not two (measured: about 25% faster searches)."""
    if codes.ctypes.data % 64 == 0:
        return codes
    raw = np.empty(codes.nbytes + 64, dtype=np.uint8)
    skip = -raw.ctypes.data % 64
    out = raw[skip : skip + codes.nbytes].view(np.uint64).reshape(codes.shape)
    out[...] = codes
    return out


def _build_tables(codes, perm, layout, offset) -> Tables:
    aligned = aligned_rows(codes)
    tables = _tables_of(aligned, piece_keys(aligned, perm, layout), layout, offset)
    tables.copied_codes = aligned is not codes
    return tables


def _tables_of(codes, keys, layout, offset) -> Tables:
    """Counting sort into dense offset tables (pieces of <= DENSE_BITS bits), else sorted unique keys."""
    m, n = keys.shape
    if n > INT32_MAX:
        raise ValueError(f"a database block holds at most {INT32_MAX} rows (int32 ids), got {n}")
    ids = np.empty((m, n), dtype=np.int32)
    empty64 = np.zeros(1, np.int64)
    if int(layout.widths.max()) <= DENSE_BITS:
        dense = np.zeros((m, (1 << int(layout.widths.max())) + 1), dtype=np.int32)
        _counting_sort(keys, layout.widths, ids, dense)
        return Tables(codes, keys, ids, dense, np.zeros(1, keys.dtype), empty64, empty64, empty64, offset)
    return _sparse_tables(codes, keys, ids, offset)


def _sparse_tables(codes, keys, ids, offset) -> Tables:
    """Sorted unique keys per piece with [begin, end) bucket bounds: for pieces above DENSE_BITS bits."""
    ukeys, ubegin, uend, uptr = [], [], [], [0]
    for p in range(keys.shape[0]):
        order = np.argsort(keys[p], kind="stable")
        ids[p] = order
        values, begin, counts = np.unique(keys[p, order], return_index=True, return_counts=True)
        ukeys.append(values)
        ubegin.append(begin)
        uend.append(begin + counts)
        uptr.append(uptr[-1] + len(values))
    return Tables(
        codes, keys, ids, np.zeros((keys.shape[0], 1), np.int32),
        np.concatenate(ukeys).astype(keys.dtype), np.concatenate(ubegin).astype(np.int64),
        np.concatenate(uend).astype(np.int64), np.asarray(uptr, dtype=np.int64), offset,
    )


def probe_masks(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """XOR masks of every key within sub_radius bits, per piece: masks[mptr[p] : mptr[p + 1]]."""
    masks, mptr = [], [0]
    for w in layout.widths:
        piece = [0]
        for flips in range(1, min(layout.sub_radius, int(w)) + 1):
            piece += _masks_with_bits(int(w), flips)
        masks += piece
        mptr.append(len(masks))
    return np.asarray(masks, dtype=np.uint64), np.asarray(mptr, dtype=np.int64)


def _masks_with_bits(width: int, flips: int) -> list[int]:
    """All width-bit integers with exactly `flips` bits set."""
    return [sum(1 << b for b in chosen) for chosen in combinations(range(width), flips)]


# ---------------------------------------------------------------------------------------------------------
# 4. Search: gather buckets, verify with popcount, keep each pair in the first piece that finds it.
# ---------------------------------------------------------------------------------------------------------


#: The intrinsic's name carries its pointer type: "p0" with opaque pointers (LLVM >= 16, llvmlite >= 0.45),
#: "p0i8" with the typed i8* of older LLVM.
_PREFETCH_INTRINSIC = "llvm.prefetch.p0" if llvm_version_info[0] >= 16 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Ask the CPU to start loading arr[i, j] (llvm.prefetch: read, keep in all cache levels).

    The search is bound by cache misses on rows picked at random by the buckets; issuing the loads a few
    candidates ahead overlaps them, as faiss's and hnswlib's search loops do with _mm_prefetch.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 2):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, aryty, ary, index)
        byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_INTRINSIC)
        builder.call(fn, [builder.bitcast(pointer, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, i, j), codegen


#: Candidates gathered before they are verified; verification prefetches LOOKAHEAD rows ahead.
CANDIDATES = 2048
LOOKAHEAD = 16
#: Bucket ranges gathered (and their first ids prefetched) before their ids are copied.
RANGES = 256


@njit(inline="always")
def _bucket(p, key, dense, ukeys, ubegin, uend, uptr):
    """[lo, hi) positions in ids[p] of the rows whose piece p equals key."""
    if dense.shape[1] > 1:
        if key >= dense.shape[1] - 1:
            return 0, 0
        return np.int64(dense[p, key]), np.int64(dense[p, key + 1])
    lo, hi = uptr[p], uptr[p + 1]
    j = lo + np.searchsorted(ukeys[lo:hi], key)
    if j < hi and ukeys[j] == key:
        return ubegin[j], uend[j]
    return 0, 0


@njit(inline="always")
def _first_piece(qkeys, q, dbkeys, d, p, sub):
    """True when p is the first piece in which query q and row d differ by <= sub bits (report once)."""
    for e in range(p):
        if popcount64(np.uint64(qkeys[e, q]) ^ np.uint64(dbkeys[e, d])) <= sub:
            return False
    return True


@njit(nogil=True, cache=True)
def _verify(q, qcodes, qkeys, table, cand, piece, n, radius, sub, out_b, out_d, start, cap, found):
    """Full XOR-popcount of the n gathered candidates; keep those within radius, once each."""
    codes, dbkeys, dboffset = table[0], table[1], table[8]
    for t in range(n):
        if t + LOOKAHEAD < n:
            _prefetch(codes, cand[t + LOOKAHEAD], 0)
        d = cand[t]
        dist = np.int64(0)
        for w in range(qcodes.shape[1]):
            dist += np.int64(popcount64(qcodes[q, w] ^ codes[d, w]))
        if dist > radius or not _first_piece(qkeys, q, dbkeys, d, piece[t], sub):
            continue
        if found < cap:
            out_b[start + found] = d + dboffset
            out_d[start + found] = dist
        found += 1
    return found


@njit(nogil=True, cache=True)
def _drain(q, qrow, qcodes, qkeys, table, scratch, n_ranges, n, radius, sub, upper, out_b, out_d, start, cap,
           found):
    """Copy the ids of the gathered bucket ranges into the candidate buffer, verifying whenever it is full."""
    ids, dboffset = table[2], table[8]
    rlo, rhi, rpiece, cand, piece = scratch
    for r in range(n_ranges):
        p = rpiece[r]
        for s in range(rlo[r], rhi[r]):
            d = np.int64(ids[p, s])
            if upper and d + dboffset <= qrow:
                continue  # self-join: each unordered pair once, a < b
            cand[n] = d
            piece[n] = p
            n += 1
            if n == len(cand):
                found = _verify(q, qcodes, qkeys, table, cand, piece, n, radius, sub, out_b, out_d, start, cap,
                                found)
                n = 0
    return n, found


@njit(nogil=True, cache=True)
def _one_query(q, qrow, qcodes, qkeys, table, probes, scratch, radius, sub, upper, out_b, out_d, start, cap):
    """All rows within radius of query q; writes the first `cap` at out_*[start:], returns how many.

    Three stages, each issuing independent loads so that their cache misses overlap: bucket ranges of
    every piece (and probe), the ids in those buckets, then the codes of the candidates.
    """
    ids, dense, ukeys, ubegin, uend, uptr = table[2], table[3], table[4], table[5], table[6], table[7]
    masks, mptr = probes
    rlo, rhi, rpiece = scratch[0], scratch[1], scratch[2]
    found, n, n_ranges = 0, 0, 0
    for p in range(ids.shape[0]):
        base = np.uint64(qkeys[p, q])
        for t in range(mptr[p], mptr[p + 1]):
            lo, hi = _bucket(p, base ^ masks[t], dense, ukeys, ubegin, uend, uptr)
            if hi <= lo:
                continue
            _prefetch(ids, p, lo)
            rlo[n_ranges], rhi[n_ranges], rpiece[n_ranges] = lo, hi, p
            n_ranges += 1
            if n_ranges == len(rlo):
                n, found = _drain(q, qrow, qcodes, qkeys, table, scratch, n_ranges, n, radius, sub, upper,
                                  out_b, out_d, start, cap, found)
                n_ranges = 0
    n, found = _drain(q, qrow, qcodes, qkeys, table, scratch, n_ranges, n, radius, sub, upper, out_b, out_d,
                      start, cap, found)
    return _verify(q, qcodes, qkeys, table, scratch[3], scratch[4], n, radius, sub, out_b, out_d, start, cap,
                   found)


@njit(nogil=True, cache=True)
def _new_scratch():
    """Per-thread buffers: bucket ranges (lo, hi, piece) and candidates (row, piece)."""
    return (np.empty(RANGES, np.int64), np.empty(RANGES, np.int64), np.empty(RANGES, np.int64),
            np.empty(CANDIDATES, np.int64), np.empty(CANDIDATES, np.int64))


@njit(parallel=True, cache=True)
def _search(rows, starts, qcodes, qkeys, q0, table, probes, radius, sub, upper, out_b, out_d, counts):
    """Queries rows[t] write up to starts[t + 1] - starts[t] hits at out_*[starts[t]:]; counts[t] = all.

    Pass 1 gives every query a slot of equal size; pass 2 reruns the overflowing ones with exact room.
    Queries go in chunks of 64 per task: one set of scratch buffers per chunk, not per query; the
    dense-table entries of the next query are prefetched while this one runs.
    """
    n, dense = len(rows), table[3]
    for c in prange((n + 63) // 64):
        scratch = _new_scratch()
        for t in range(c * 64, min(n, c * 64 + 64)):
            if t + 1 < n and dense.shape[1] > 1:
                for p in range(qkeys.shape[0]):
                    _prefetch(dense, p, np.int64(qkeys[p, rows[t + 1]]))
            q = rows[t]
            counts[t] = _one_query(q, q0 + q, qcodes, qkeys, table, probes, scratch, radius, sub, upper,
                                   out_b, out_d, starts[t], starts[t + 1] - starts[t])


@njit(cache=True)
def _compact(counts, cap, slot_b, slot_d, big_start, big_b, big_d, q0, out_a, out_b, out_d):
    """Hits of each query, from its slot or the overflow buffer, sorted by row: canonical (a, b) order.

    Serial: linear in the hits, cheaper than waking the thread pool once more.
    """
    o = 0
    for q in range(len(counts)):
        n = counts[q]
        if n == 0:
            continue
        if n <= cap:
            b, d = slot_b[q * cap : q * cap + n], slot_d[q * cap : q * cap + n]
        else:
            b, d = big_b[big_start[q] : big_start[q] + n], big_d[big_start[q] : big_start[q] + n]
        order = np.argsort(b, kind="mergesort")  # rows are distinct; mergesort is compiled for topk anyway
        for t in range(n):
            out_a[o + t] = q0 + q
            out_b[o + t] = b[order[t]]
            out_d[o + t] = d[order[t]]
        o += n


@njit(parallel=True, cache=True)
def _count_candidates(qkeys, dense, ukeys, ubegin, uend, uptr, masks, mptr, out):
    """out[q] += sum over pieces and probes of the size of query q's bucket."""
    for q in prange(qkeys.shape[1]):
        for p in range(qkeys.shape[0]):
            for t in range(mptr[p], mptr[p + 1]):
                lo, hi = _bucket(p, np.uint64(qkeys[p, q]) ^ masks[t], dense, ukeys, ubegin, uend, uptr)
                out[q] += hi - lo


# ---------------------------------------------------------------------------------------------------------
# 5. Self-join by buckets: every pair inside every bucket, no query lookups.
# ---------------------------------------------------------------------------------------------------------
#
# A self-join asks for all pairs within r among N rows. Searching each row as a query (section 4) costs one
# cache miss per candidate: the candidates' rows lie anywhere in the database. But with m = r + 1 pieces
# every pair within r shares a bucket of some piece, and the candidates are exactly the pairs inside
# buckets, so the join can walk the buckets instead: copy a bucket's rows next to each other once (s
# misses), then compare all s (s - 1) / 2 pairs from cache. Same candidates, same verification, several
# times faster per candidate; the memory is one piece's keys and sort order per thread, not m tables.
# (The pigeonhole signatures of PartEnum, Arasu, Ganti, Kaushik, "Efficient exact set-similarity joins",
# VLDB 2006, joined bucket by bucket.)


@njit(nogil=True, cache=True)
def _key_column(codes, bits):
    """The piece key of every row: bit k of the key is code bit bits[k]. Row by row: each row is read
    once, from one cache line (bit by bit, a pass over all codes per bit would stream them `len(bits)` times)."""
    n = codes.shape[0]
    out = np.empty(n, np.int64)
    words, shifts = bits >> 6, (bits & 63).astype(np.uint64)
    one = np.uint64(1)
    for i in range(n):
        key = np.int64(0)
        for k in range(len(bits)):
            key |= np.int64((codes[i, words[k]] >> shifts[k]) & one) << k
        out[i] = key
    return out


@njit(nogil=True, cache=True)
def _join_piece(codes, bits, earlier, radius, n_keys):
    """Pairs (a < b) within radius that share this piece's key and no earlier piece's.

    bits: the code bits of this piece; earlier: (p, W) masks of the code bits of the pieces before it, so
    a pair found again here (it shares an earlier piece too) is dropped without a hash set. Returns
    a, b, dist (bucket order) and the number of pairs compared.
    """
    n, n_words = codes.shape
    keys = _key_column(codes, bits)
    offsets = np.zeros(n_keys + 1, np.int64)  # counting sort: rows of bucket k, in row order
    for i in range(n):
        offsets[keys[i] + 1] += 1
    largest = 0
    for k in range(n_keys):
        largest = max(largest, offsets[k + 1])
        offsets[k + 1] += offsets[k]
    fill = offsets[:n_keys].copy()
    rows = np.empty(n, np.int64)
    for i in range(n):
        rows[fill[keys[i]]] = i
        fill[keys[i]] += 1
    # The current bucket's codes, one row per word: distances from row i to all later rows of the bucket
    # are then unit-stride loops that the compiler vectorises (vpopcntq on AVX-512 machines), eight words
    # per pass.
    columns = np.empty((n_words, largest), np.uint64)
    dist = np.empty(largest, np.uint64)
    limit = np.uint64(radius)  # unsigned like the distances (a mixed comparison would go through float)
    cap = 1024
    out_a, out_b, out_d = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int32)
    found, compared = 0, 0
    for k in range(n_keys):
        lo, hi = offsets[k], offsets[k + 1]
        size = hi - lo
        if size < 2:
            continue
        compared += size * (size - 1) // 2
        for t in range(size):
            if lo + t + LOOKAHEAD < n:  # the rows lie anywhere in codes: overlap their cache misses
                _prefetch(codes, rows[lo + t + LOOKAHEAD], 0)
            for w in range(n_words):
                columns[w, t] = codes[rows[lo + t], w]
        for i in range(size - 1):
            later = dist[: size - i - 1]  # later[t]: distance from row i to row i + 1 + t
            later[:] = 0
            w = 0
            while w + 8 <= n_words:
                _add_popcounts8(columns, w, i, later)
                w += 8
            for w in range(w, n_words):
                _add_popcounts(columns[w, i], columns[w, i + 1 : size], later)
            if _count_within(later, limit) == 0:
                continue  # the usual case: no branch per pair below
            for t in range(len(later)):
                j = i + 1 + t
                if later[t] > limit or _shares_earlier(columns, i, j, earlier):
                    continue
                if found == cap:
                    cap *= 2
                    out_a, out_b, out_d = _grow(out_a, cap), _grow(out_b, cap), _grow(out_d, cap)
                out_a[found], out_b[found], out_d[found] = rows[lo + i], rows[lo + j], later[t]
                found += 1
    return out_a[:found], out_b[:found], out_d[:found], compared


@njit(inline="always")
def _add_popcounts(x, column, out):
    """out[j] += popcount(x ^ column[j]): a 0-based unit-stride loop, so that it vectorises."""
    for j in range(min(len(column), len(out))):
        out[j] += popcount64(x ^ column[j])


@njit(inline="always")
def _add_popcounts8(columns, w, i, out):
    """out[t] += distance over words w to w + 7 from row i to row i + 1 + t of the bucket's columns: the
    sum stays in registers (one pass for a 512-bit descriptor, not eight over `out`)."""
    c0, c1, c2, c3 = columns[w, i + 1 :], columns[w + 1, i + 1 :], columns[w + 2, i + 1 :], columns[w + 3, i + 1 :]
    c4, c5, c6, c7 = columns[w + 4, i + 1 :], columns[w + 5, i + 1 :], columns[w + 6, i + 1 :], columns[w + 7, i + 1 :]
    q0, q1, q2, q3 = columns[w, i], columns[w + 1, i], columns[w + 2, i], columns[w + 3, i]
    q4, q5, q6, q7 = columns[w + 4, i], columns[w + 5, i], columns[w + 6, i], columns[w + 7, i]
    for t in range(len(out)):
        out[t] += (popcount64(c0[t] ^ q0) + popcount64(c1[t] ^ q1) + popcount64(c2[t] ^ q2) + popcount64(c3[t] ^ q3)
                   + popcount64(c4[t] ^ q4) + popcount64(c5[t] ^ q5) + popcount64(c6[t] ^ q6)
                   + popcount64(c7[t] ^ q7))


@njit(inline="always")
def _count_within(values, limit):
    """How many values are <= limit (a branch-free loop)."""
    n = 0
    for t in range(len(values)):
        n += values[t] <= limit
    return n


@njit(inline="always")
def _shares_earlier(columns, i, j, earlier):
    """True when rows i and j (columns of the bucket) agree on every bit of one of the earlier pieces,
    so the pair was reported there already."""
    for e in range(earlier.shape[0]):
        same = True
        for w in range(columns.shape[0]):
            if (columns[w, i] ^ columns[w, j]) & earlier[e, w]:
                same = False
                break
        if same:
            return True
    return False


@njit(nogil=True, cache=True)
def _grow(a, cap):
    out = np.empty(cap, a.dtype)
    out[: len(a)] = a
    return out


def piece_masks(perm: np.ndarray, layout: Layout, n_words: int) -> np.ndarray:
    """(m, W) uint64: the code bits of each piece, as masks over the unpermuted code."""
    masks = np.zeros((layout.pieces, n_words), np.uint64)
    for p, (start, width) in enumerate(zip(layout.starts, layout.widths)):
        for bit in perm[start : start + width]:
            masks[p, bit >> 6] |= np.uint64(1) << np.uint64(bit & 63)
    return masks


def bucket_self_join(codes: np.ndarray, radius: int, layout: Layout, perm: np.ndarray, threads: int,
                     progress: bool = False) -> tuple[Pairs, int]:
    """All pairs a < b within radius, by joining each piece's buckets (needs sub_radius 0, <= 16-bit
    pieces). Pieces run on `threads` threads (the kernel releases the GIL). Returns the pairs in canonical
    order and the number of pairs compared."""
    if not layout.joins_by_buckets:
        raise ValueError("bucket_self_join needs radius + 1 pieces of at most 16 bits")
    masks = piece_masks(perm, layout, codes.shape[1])
    starts = layout.starts

    def piece(p):
        bits = perm[starts[p] : starts[p] + layout.widths[p]].astype(np.int64)
        return _join_piece(codes, bits, masks[:p], radius, 1 << int(layout.widths[p]))

    with ThreadPoolExecutor(max(1, threads)) as pool:
        futures = [pool.submit(piece, p) for p in range(layout.pieces)]
        for _ in tqdm(as_completed(futures), total=len(futures), desc="self-join by buckets", unit="piece",
                      disable=not progress, delay=5, leave=False):
            pass
        parts = [f.result() for f in futures]
    a = np.concatenate([x[0] for x in parts])
    b = np.concatenate([x[1] for x in parts])
    d = np.concatenate([x[2] for x in parts])
    order = np.argsort(a * np.int64(len(codes)) + b)  # canonical (a, b) order, as every matcher gives
    return Pairs(a[order], b[order], d[order]), int(sum(x[3] for x in parts))


# ---------------------------------------------------------------------------------------------------------
# Brute-force top-k (exact; ties by lower index), for BinaryMatcher.topk.
# ---------------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _topk_scan(queries, codes, k, max_dist, out_i, out_d):
    """Per query: all distances, a histogram to find the k-th distance, then rows in index order."""
    n = codes.shape[0]
    for q in prange(queries.shape[0]):
        dist = np.empty(n, np.int32)
        hist = np.zeros(max_dist + 2, np.int64)
        for j in range(n):
            x = np.int64(0)
            for w in range(codes.shape[1]):
                x += np.int64(popcount64(queries[q, w] ^ codes[j, w]))
            dist[j] = x
            hist[x] += 1
        limit, seen = 0, 0  # smallest distance with at least k rows at or below it
        while limit <= max_dist and seen + hist[limit] < k:
            seen += hist[limit]
            limit += 1
        pick = np.empty(min(k, n), np.int64)
        t = 0
        for j in range(n):  # index order, so ties keep the lower index after a stable sort
            if dist[j] < limit or (dist[j] == limit and t < k and seen < k):
                if dist[j] == limit:
                    seen += 1
                pick[t] = j
                t += 1
        order = np.argsort(dist[pick[:t]], kind="mergesort")
        for s in range(t):
            out_i[q, s] = pick[order[s]]
            out_d[q, s] = dist[pick[order[s]]]


# ---------------------------------------------------------------------------------------------------------
# The index and the matcher.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class MultiIndex:
    """A built multi-index over one block of database rows (global row ids start at tables.offset)."""

    layout: Layout
    perm: np.ndarray
    tables: Tables
    radius: int
    query_block: int = 32768
    slot: int = 32
    timings: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.tables.codes)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index: ids, keys, offsets, and the aligned copy of the codes if one was made."""
        return self.tables.nbytes

    def expected_candidates(self) -> float:
        """Mean candidates per query drawn from the database: sum_p sum_b size_b^2 / N (sub_radius 0).

        It counts a query against itself once per piece; uniform random codes with w-bit pieces give
        about m * (1 + N / 2**w).
        """
        if self.n_rows == 0:
            return 0.0
        total = sum(float((self.tables.bucket_sizes(p).astype(np.float64) ** 2).sum())
                    for p in range(self.layout.pieces))
        return total / self.n_rows

    def candidates(self, queries: np.ndarray) -> np.ndarray:
        """Rows each query verifies (bucket sizes summed over pieces and probes; before a < b or dedup)."""
        t = self.tables
        qkeys = piece_keys(as_words(queries), self.perm, self.layout)
        masks, mptr = probe_masks(self.layout)
        out = np.zeros(qkeys.shape[1], np.int64)
        _count_candidates(qkeys, t.dense, t.ukeys, t.ubegin, t.uend, t.uptr, masks, mptr, out)
        return out

    def range_search(self, queries: np.ndarray, radius: int | None = None, upper: bool = False) -> Pairs:
        """Pairs (query row, global database row) within radius, canonical order; upper keeps a < b.

        Queries go `query_block` at a time: the working memory is that many query keys and hit slots.
        """
        radius = self.radius if radius is None else int(radius)
        queries = as_words(queries)
        if queries.shape[1] * 64 != self.layout.bits:
            raise ValueError(f"queries have {queries.shape[1] * 64} bits, the index {self.layout.bits}")
        if radius > self.layout.capacity:
            raise ValueError(f"index built for radius <= {self.layout.capacity}, asked for {radius}")
        if radius < 0 or len(queries) == 0 or self.n_rows == 0:
            return Pairs.empty()
        if upper:  # queries at or after the last row have no partner b > a here
            queries = queries[: self.tables.offset + self.n_rows - 1]
        probes = probe_masks(self.layout)
        parts = []
        for q0 in range(0, len(queries), self.query_block):
            block = np.ascontiguousarray(queries[q0 : q0 + self.query_block])
            with _serial_below(len(block), PARALLEL_QUERIES):
                parts.append(self._search_queries(block, q0, probes, radius, upper))
        return Pairs.concat(parts)

    def _search_queries(self, block, q0, probes, radius, upper) -> Pairs:
        """One query block: slot pass, overflow pass for queries with more than `slot` hits, compaction."""
        t, nq, cap = self.tables, len(block), self.slot
        qkeys = piece_keys(block, self.perm, self.layout)
        slot_b = np.empty(nq * cap, np.int64)
        slot_d = np.empty(nq * cap, np.int32)
        counts = np.zeros(nq, np.int64)
        table = (t.codes, t.keys, t.ids, t.dense, t.ukeys, t.ubegin, t.uend, t.uptr, t.offset)
        args = (table, probes, radius, self.layout.sub_radius, upper)
        slots = np.arange(nq + 1, dtype=np.int64) * cap  # query q owns slot_*[q * cap : (q + 1) * cap]
        _search(np.arange(nq, dtype=np.int64), slots, block, qkeys, q0, *args, slot_b, slot_d, counts)
        big_start, big_b, big_d = _overflow(block, qkeys, q0, args, counts, cap)
        total = int(counts.sum())
        out = Pairs(np.empty(total, np.int64), np.empty(total, np.int64), np.empty(total, np.int32))
        _compact(counts, cap, slot_b, slot_d, big_start, big_b, big_d, q0, out.a, out.b, out.dist)
        return out


def _overflow(block, qkeys, q0, args, counts, cap):
    """Rerun the queries with more than `cap` hits, each with exactly the room it needs."""
    rows = np.flatnonzero(counts > cap)
    big_start = np.zeros(len(counts), np.int64)
    starts = np.concatenate([[0], np.cumsum(counts[rows])]).astype(np.int64)
    big_b = np.empty(int(starts[-1]), np.int64)
    big_d = np.empty(int(starts[-1]), np.int32)
    if len(rows):
        big_start[rows] = starts[:-1]
        _search(rows, starts, block, qkeys, q0, *args, big_b, big_d, np.zeros(len(rows), np.int64))
    return big_start, big_b, big_d


def _merge_blocks(found: list[Pairs]) -> Pairs:
    """Database blocks cover increasing row ranges: a stable sort by query keeps (a, b) order."""
    if len(found) == 1:
        return found[0]
    pairs = Pairs.concat(found)
    order = np.argsort(pairs.a, kind="stable")
    return Pairs(pairs.a[order], pairs.b[order], pairs.dist[order])


class MultiIndexHashMatcher(BinaryMatcher):
    """Exact Hamming range search by multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012).

    pieces: 0 = radius + 1 pieces (pigeonhole: every pair within radius shares a piece exactly); a fixed
        number below radius + 1 multi-probes every key within floor(radius / pieces) bits (still exact).
    permutation: "calibrated" (fitted to the database, see calibrated_permutation), "random" or "identity".
    seed: for the random permutation and the calibration sample.
    query_block: queries searched at a time (bounds the working memory).
    database_block: rows indexed at a time; range_search and self_join build, search and free one block
        after the other, so the index never holds more than this many rows (m * 6 bytes per row for
        16-bit pieces, 8 * W more if the codes need a 64-byte aligned copy, 256 KiB of offsets per piece).
    threads: numba threads for the call (0 = all cores).
    progress: a progress bar over the pieces of a self-join that takes more than a few seconds.
        (The runner and `simbench find` set it from their own progress option.)

    self_join walks the buckets of each piece (bucket_self_join) when radius + 1 pieces of <= 16 bits
    answer the radius; it then holds one piece's keys and order per thread (16 bytes per row), not the
    tables, so database_block does not apply.
    """

    name = "lsh"

    def __init__(self, pieces: int = 0, permutation: str = "calibrated", seed: int = 0,
                 query_block: int = 32768, database_block: int = 1 << 21, threads: int = 0,
                 progress: bool = False):
        if permutation not in ("calibrated", "random", "identity"):
            raise ValueError(f"permutation must be 'calibrated', 'random' or 'identity', got {permutation!r}")
        self.pieces = int(pieces)
        self.permutation = permutation
        self.seed = int(seed)
        self.query_block = max(1, int(query_block))
        self.database_block = min(max(1, int(database_block)), INT32_MAX)
        self.threads = int(threads)
        self.progress = bool(progress)
        self.last_compared = 0  # pairs verified by the last bucket self-join (for benchmarks)

    def _with_threads(self, fn, *args, **kwargs):
        """Run fn with the configured numba thread count, restoring the caller's afterwards."""
        before = numba.get_num_threads()
        want = self.threads if self.threads > 0 else numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(min(want, numba.config.NUMBA_NUM_THREADS))
        try:
            return fn(*args, **kwargs)
        finally:
            numba.set_num_threads(before)

    def warm_up(self, features) -> None:
        """Compile both paths for both key types before anything is timed: the bucket self-join and the
        per-query search (range_search, multi-probe and scan layouts), with 64-bit piece keys (radius 0)
        and dense 16-bit ones (radius = bits / 16 - 1)."""
        words = words_of(features)
        if words is None:
            return
        zeros = np.zeros((2, words.shape[1]), np.uint64)
        for radius in (0, words.shape[1] * 64 // DENSE_BITS - 1):
            self.self_join(zeros, radius)
            self._blocked(zeros, zeros, radius, upper=True)

    def plan(self, database, radius: int) -> tuple[Layout, np.ndarray]:
        """Layout and permutation for `radius`, the permutation fitted on (a sample of) `database`."""
        codes = as_words(database)
        layout = choose_layout(codes.shape[1] * 64, max(int(radius), 0), self.pieces)
        return layout, self._with_threads(make_permutation, self.permutation, codes, layout, self.seed)

    def index(self, database, radius: int, plan=None, offset: int = 0) -> MultiIndex:
        """The multi-index of all of `database` (one block) for searches up to `radius`, to reuse."""
        codes = as_words(database)
        started = time.perf_counter()
        layout, perm = self.plan(codes, radius) if plan is None else plan
        planned = time.perf_counter()
        tables = self._with_threads(build_tables, codes, perm, layout, offset)
        timings = {"permutation_s": planned - started, "tables_s": time.perf_counter() - planned}
        return MultiIndex(layout, perm, tables, int(radius), self.query_block, timings=timings)

    def range_search(self, queries, database, radius):
        return self._blocked(as_words(queries), as_words(database), int(radius), upper=False)

    def self_join(self, codes, radius):
        """All pairs a < b within radius: by buckets when every pair within radius shares a piece exactly
        (radius + 1 pieces of <= 16 bits, the usual case), else by searching every row (multi-probe)."""
        words, radius = as_words(codes), int(radius)
        if radius < 0 or len(words) < 2:
            return Pairs.empty()
        layout, perm = self.plan(words, radius)
        if not layout.joins_by_buckets:
            return self._blocked(words, words, radius, upper=True, plan=(layout, perm))
        threads = self.threads if self.threads > 0 else numba.config.NUMBA_NUM_THREADS
        pairs, self.last_compared = bucket_self_join(words, radius, layout, perm, threads, self.progress)
        return pairs

    def _blocked(self, queries, codes, radius, upper, plan=None) -> Pairs:
        """Index `database_block` rows at a time, search every query against it, free it, merge."""
        if queries.shape[1] != codes.shape[1]:
            raise ValueError(f"queries have {queries.shape[1]} words per code, the database {codes.shape[1]}")
        if radius < 0 or len(queries) == 0 or len(codes) == 0:
            return Pairs.empty()
        plan = self.plan(codes, radius) if plan is None else plan
        found = []
        for start in range(0, len(codes), self.database_block):
            index = self.index(codes[start : start + self.database_block], radius, plan, offset=start)
            found.append(self._with_threads(index.range_search, queries, radius, upper))
            del index  # the next block's tables replace this one's
        return _merge_blocks(found)

    def topk(self, queries, database, k):
        """Exact brute force (ties by lower index): k-NN needs no radius, so no pigeonhole to exploit."""
        q, db = as_words(queries), as_words(database)
        k = int(k)
        idx, dist = unfilled_topk(len(q), k)
        if k > 0 and len(q) and len(db):
            self._with_threads(_topk_scan, q, db, k, db.shape[1] * 64, idx, dist)
        return idx, dist
