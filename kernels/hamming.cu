// Batched XOR-popcount (Hamming distance) search on packed binary codes.
//
// Codes are rows of W uint64 words (bit k of a code is bit k % 64 of word k / 64), row-major, so a block
// of rows is one contiguous run of words. Every kernel is templated on the width W (1..16, each compiled
// on first use) and on E, the words after which a partial distance already above the radius stops the
// comparison (0: never; the remaining words can only add to a distance).
//
//   hamming_range<W, QPT, E>   every (query, database) pair with distance <= radii[query] (inclusive), for
//                              many queries: each thread owns QPT queries in registers, the block stages
//                              tiles of database rows in shared memory (read by all threads at once: a
//                              broadcast), one staged word serves QPT queries (register tiling).
//   hamming_range_small<W, E>  the same output for a few queries: the block's queries sit in shared memory
//                              and each thread owns database rows, so 16 queries still use every thread.
//   hamming_histogram<W, QB>   per query, how many database rows lie at each distance 0..64W (added into
//                              `hist`); the host turns it into each query's k-th distance T, and a range
//                              pass with radii T gives the top-k (ties by row, chosen by the host).
//
// Range output is compact, through one atomic counter: slots past `capacity` are not written but still
// counted, and the host then splits the launch's query or database range and runs the parts (the output
// buffer never grows). Rows in the output are local to the launch (< 2^31); the host adds the offsets.
//
// The same text is compiled by NVRTC (CuPy RawModule, one name expression such as
// "hamming_range<8, 2, 2>" per module) and by g++ with tests/cuda_emu/cuda_emu.h, which runs every block's
// threads with real barriers on the CPU; so this file includes nothing and uses only: blockIdx, threadIdx,
// blockDim, __shared__, __syncthreads, __popcll and atomicAdd. A block must reach every __syncthreads with
// all of its threads.

#define HAMMING_TILE 256          // database rows per shared-memory tile (hamming_range)
#define HAMMING_THREADS 128       // threads per block (the host launches with exactly this many)
#define HAMMING_MIN_BLOCKS 4      // resident blocks per SM asked of the register allocator (<= 128 registers)
#define HAMMING_SMALL_QUERIES 32  // queries per block of hamming_range_small (shared memory)
#define HAMMING_HIST_COUNTS 8192  // shared-memory counters per block of hamming_histogram (QB * (64W + 1))

typedef unsigned long long u64;

// popcount(a ^ b) over W words. With E > 0 the first E words are checked against `limit` first: past it,
// the partial distance (> limit) is returned, which answers the caller's only question, "<= limit?".
template <int W, int E, typename A, typename B>
__device__ __forceinline__ int hamming_distance(const A& a, const B& b, int limit) {
    int dist = 0;
#pragma unroll
    for (int w = 0; w < E; ++w) dist += __popcll(a[w] ^ b[w]);
    if (E > 0 && dist > limit) return dist;
#pragma unroll
    for (int w = E; w < W; ++w) dist += __popcll(a[w] ^ b[w]);
    return dist;
}

// Stage rows [row0, row0 + rows) of `db` into shared memory; consecutive threads load consecutive words.
template <int W>
__device__ __forceinline__ void load_tile(u64* tile, const u64* __restrict__ db, long long row0, int rows) {
    const u64* src = db + row0 * W;
    for (int i = threadIdx.x; i < rows * W; i += blockDim.x) tile[i] = src[i];
}

// The database rows [d_begin, d_end) of block y of chunks of db_chunk rows. A self-join (upper) skips the
// rows that no query from q_first on can pair with (d + diag <= q_first): the same for the whole block.
__device__ __forceinline__ void chunk_rows(int nd, int db_chunk, int upper, long long diag, int q_first,
                                           long long& d_begin, long long& d_end) {
    d_begin = (long long)blockIdx.y * db_chunk;
    d_end = d_begin + db_chunk;
    if (d_end > nd) d_end = nd;
    if (upper && d_begin < (long long)q_first - diag + 1) d_begin = (long long)q_first - diag + 1;
}

// One pair into the compact output (slot taken from the counter; written only below capacity).
__device__ __forceinline__ void emit(u64* counter, u64 capacity, int* out_q, int* out_d, int* out_dist, int q,
                                     int d, int dist) {
    const u64 slot = atomicAdd(counter, 1ULL);
    if (slot < capacity) {
        out_q[slot] = q;
        out_d[slot] = d;
        out_dist[slot] = dist;
    }
}

// Range search for many queries. Grid: x over query groups of blockDim.x * QPT rows, y over database
// chunks of db_chunk rows. Thread t of block x owns queries x * blockDim.x * QPT + u * blockDim.x + t.
// A pair (q, d) is written when popcount(queries[q] ^ db[d]) <= radii[q] and, if `upper` is set
// (self-join), d + diag > q: the global database row exceeds the global query row (diag = db offset -
// query offset).
template <int W, int QPT, int E>
__global__ void __launch_bounds__(HAMMING_THREADS, HAMMING_MIN_BLOCKS)
hamming_range(const u64* __restrict__ queries, int nq, const u64* __restrict__ db, int nd, int db_chunk,
              const int* __restrict__ radii, int upper, long long diag, u64* __restrict__ counter,
              u64 capacity, int* __restrict__ out_q, int* __restrict__ out_d, int* __restrict__ out_dist) {
    __shared__ __align__(16) u64 tile[HAMMING_TILE * W];

    // 1. This thread's queries into registers; a missing query (past nq) gets radius -1: it never matches.
    const int q_first = blockIdx.x * blockDim.x * QPT;
    u64 code[QPT][W];
    int qrad[QPT];
#pragma unroll
    for (int u = 0; u < QPT; ++u) {
        const int q = q_first + u * blockDim.x + threadIdx.x;
        const bool valid = q < nq;
        qrad[u] = valid ? radii[q] : -1;
#pragma unroll
        for (int w = 0; w < W; ++w) code[u][w] = valid ? queries[(long long)q * W + w] : 0ULL;
    }

    long long d_begin, d_end;
    chunk_rows(nd, db_chunk, upper, diag, q_first, d_begin, d_end);
    if (d_begin >= d_end) return;  // the whole block returns: no __syncthreads is left waiting

    // 2. Tile by tile: stage, synchronise, compare every staged row with every query, synchronise.
    for (long long base = d_begin; base < d_end; base += HAMMING_TILE) {
        const int rows = (d_end - base < HAMMING_TILE) ? (int)(d_end - base) : HAMMING_TILE;
        load_tile<W>(tile, db, base, rows);
        __syncthreads();
        for (int j = 0; j < rows; ++j) {
            u64 row[W];
#pragma unroll
            for (int w = 0; w < W; ++w) row[w] = tile[j * W + w];  // same address in all threads: broadcast
            const int d = (int)base + j;
#pragma unroll
            for (int u = 0; u < QPT; ++u) {
                const int dist = hamming_distance<W, E>(code[u], row, qrad[u]);
                const int q = q_first + u * blockDim.x + threadIdx.x;  // rare path: recompute, spare registers
                if (dist <= qrad[u] && (!upper || (long long)d + diag > (long long)q))
                    emit(counter, capacity, out_q, out_d, out_dist, q, d, dist);
            }
        }
        __syncthreads();  // the next tile overwrites shared memory
    }
}

// Range search for a few queries: the same parameters and output as hamming_range. Grid: x over groups
// of HAMMING_SMALL_QUERIES queries (in shared memory), y over database chunks; thread t compares rows
// d_begin + t, d_begin + t + blockDim.x, ... (in registers) with every query of the group.
template <int W, int E>
__global__ void __launch_bounds__(HAMMING_THREADS, HAMMING_MIN_BLOCKS)
hamming_range_small(const u64* __restrict__ queries, int nq, const u64* __restrict__ db, int nd, int db_chunk,
                    const int* __restrict__ radii, int upper, long long diag, u64* __restrict__ counter,
                    u64 capacity, int* __restrict__ out_q, int* __restrict__ out_d, int* __restrict__ out_dist) {
    __shared__ __align__(16) u64 qtile[HAMMING_SMALL_QUERIES * W];
    __shared__ int qrad[HAMMING_SMALL_QUERIES];

    const int q_first = blockIdx.x * HAMMING_SMALL_QUERIES;
    const int nqb = (nq - q_first < HAMMING_SMALL_QUERIES) ? nq - q_first : HAMMING_SMALL_QUERIES;
    long long d_begin, d_end;
    chunk_rows(nd, db_chunk, upper, diag, q_first, d_begin, d_end);
    if (d_begin >= d_end) return;  // the whole block

    for (int i = threadIdx.x; i < nqb * W; i += blockDim.x) qtile[i] = queries[(long long)q_first * W + i];
    for (int i = threadIdx.x; i < nqb; i += blockDim.x) qrad[i] = radii[q_first + i];
    __syncthreads();  // the only barrier: afterwards threads only read shared memory

    for (long long d = d_begin + threadIdx.x; d < d_end; d += blockDim.x) {
        u64 row[W];
#pragma unroll
        for (int w = 0; w < W; ++w) row[w] = db[d * W + w];
        for (int i = 0; i < nqb; ++i) {
            const int dist = hamming_distance<W, E>(qtile + i * W, row, qrad[i]);  // qtile: broadcast reads
            if (dist <= qrad[i] && (!upper || d + diag > (long long)(q_first + i)))
                emit(counter, capacity, out_q, out_d, out_dist, q_first + i, (int)d, dist);
        }
    }
}

// Distance histogram for top-k. Grid: x over groups of QB queries, y over database chunks. hist is
// (nq, 64W + 1) counters in global memory, added to (the host zeroes it once and may run several
// database blocks into it). Counts go to shared memory first, one global atomic per non-zero bin.
template <int W, int QB>
__global__ void __launch_bounds__(HAMMING_THREADS, HAMMING_MIN_BLOCKS)
hamming_histogram(const u64* __restrict__ queries, int nq, const u64* __restrict__ db, int nd, int db_chunk,
                  u64* __restrict__ hist) {
    const int bins = 64 * W + 1;
    __shared__ __align__(16) u64 qtile[QB * W];
    __shared__ unsigned counts[QB * (64 * W + 1)];

    const int q_first = blockIdx.x * QB;
    const int nqb = (nq - q_first < QB) ? nq - q_first : QB;
    long long d_begin, d_end;
    chunk_rows(nd, db_chunk, 0, 0, q_first, d_begin, d_end);
    if (d_begin >= d_end) return;  // the whole block

    for (int i = threadIdx.x; i < nqb * bins; i += blockDim.x) counts[i] = 0u;
    for (int i = threadIdx.x; i < nqb * W; i += blockDim.x) qtile[i] = queries[(long long)q_first * W + i];
    __syncthreads();

    for (long long d = d_begin + threadIdx.x; d < d_end; d += blockDim.x) {
        u64 row[W];
#pragma unroll
        for (int w = 0; w < W; ++w) row[w] = db[d * W + w];
        for (int i = 0; i < nqb; ++i) atomicAdd(&counts[i * bins + hamming_distance<W, 0>(qtile + i * W, row, 0)], 1u);
    }
    __syncthreads();  // every count is in before the block publishes them

    for (int i = threadIdx.x; i < nqb * bins; i += blockDim.x)
        if (counts[i]) atomicAdd(&hist[(long long)q_first * bins + i], (u64)counts[i]);
}
