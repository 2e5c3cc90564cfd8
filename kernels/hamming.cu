// Batched XOR-popcount (Hamming distance) search on packed binary codes.
//
// Codes are rows of W uint64 words (bit k of a code is bit k % 64 of word k / 64), row-major, so a block
// of rows is one contiguous run of words. Two kernels, both templated on W:
//
//   hamming_range<W, QPT>  every (query, database) pair with distance <= radius (inclusive), written
//                          compactly through one atomic counter; slots past `capacity` are not written,
//                          the counter still counts them, and the host re-runs the launch with a buffer
//                          of that size (overflow retry), so the output is exact whatever the capacity.
//   hamming_topk<W, KMAX>  the k <= KMAX nearest rows of one database chunk per query, ties by lower row.
//
// What makes them fast (the popcount units are the bottleneck, see results/gpu.md):
//   - each thread keeps its query codes in registers (QPT queries per thread, fully unrolled over W);
//   - the block stages a tile of database rows in shared memory with coalesced loads (consecutive threads
//     read consecutive words), then every thread reads the same row at once: a shared-memory broadcast;
//   - one database word loaded from shared memory is used against QPT queries (register tiling);
//   - 64-bit __popcll on XORed words, an int accumulator, one compare per pair; no distance matrix ever
//     reaches global memory: only pairs within the radius (range) or k candidates per query (top-k);
//   - the database is cut into chunks along gridDim.y so that a few queries still fill the GPU.
//
// The same text is compiled by NVRTC (CuPy RawModule, name_expressions "hamming_range<8, 2>", ...) and by
// g++ with tests/cuda_emu/cuda_emu.h, which runs every block's threads with real barriers on the CPU; so
// this file includes nothing and uses only: blockIdx, threadIdx, blockDim, __shared__, __syncthreads,
// __popcll and atomicAdd. A block must reach every __syncthreads with all of its threads.

#define HAMMING_TILE 256       // database rows per shared-memory tile
#define HAMMING_THREADS 128    // threads per block (the host launches with exactly this many)
#define HAMMING_MIN_BLOCKS 4   // resident blocks per SM asked of the register allocator (<= 128 registers)
#define HAMMING_INT_MAX 2147483647

typedef unsigned long long u64;

// popcount(a ^ b) over W words; the query words `a` live in registers.
template <int W>
__device__ __forceinline__ int hamming_distance(const u64 (&a)[W], const u64 (&b)[W]) {
    int dist = 0;
#pragma unroll
    for (int w = 0; w < W; ++w) dist += __popcll(a[w] ^ b[w]);
    return dist;
}

// Stage rows [row0, row0 + rows) of `db` into shared memory; consecutive threads load consecutive words.
template <int W>
__device__ __forceinline__ void load_tile(u64* tile, const u64* __restrict__ db, long long row0, int rows) {
    const u64* src = db + row0 * W;
    for (int i = threadIdx.x; i < rows * W; i += blockDim.x) tile[i] = src[i];
}

// Range search. Grid: x over query groups of blockDim.x * QPT rows, y over database chunks of db_chunk rows.
// Thread t of block x owns queries x * blockDim.x * QPT + u * blockDim.x + t for u < QPT.
// A pair (q, d) is written when popcount(queries[q] ^ db[d]) <= radius and, if `upper` is set (self-join),
// d + diag > q, i.e. the global database row exceeds the global query row (diag = db offset - query offset).
// Output: out_q / out_d (row indices local to this launch) and out_dist, in slots counter[0]++ < capacity.
template <int W, int QPT>
__global__ void __launch_bounds__(HAMMING_THREADS, HAMMING_MIN_BLOCKS)
hamming_range(const u64* __restrict__ queries, int nq, const u64* __restrict__ db, int nd, int db_chunk,
              int radius, int upper, long long diag, u64* __restrict__ counter, u64 capacity,
              int* __restrict__ out_q, int* __restrict__ out_d, int* __restrict__ out_dist) {
    __shared__ __align__(16) u64 tile[HAMMING_TILE * W];

    // 1. This thread's queries into registers; a missing query (past nq) gets radius -1: it never matches.
    const int q_first = blockIdx.x * blockDim.x * QPT;
    u64 code[QPT][W];
    int qrad[QPT];
#pragma unroll
    for (int u = 0; u < QPT; ++u) {
        const int q = q_first + u * blockDim.x + threadIdx.x;
        const bool valid = q < nq;
        qrad[u] = valid ? radius : -1;
#pragma unroll
        for (int w = 0; w < W; ++w) code[u][w] = valid ? queries[(long long)q * W + w] : 0ULL;
    }

    // 2. This block's database rows. A self-join skips rows that no query of the block can pair with
    //    (d + diag <= q_first); the decision is the same for the whole block, so returning here is safe.
    long long d_begin = (long long)blockIdx.y * db_chunk;
    long long d_end = d_begin + db_chunk;
    if (d_end > nd) d_end = nd;
    if (upper && d_begin < (long long)q_first - diag + 1) d_begin = (long long)q_first - diag + 1;
    if (d_begin >= d_end) return;

    // 3. Tile by tile: stage, synchronise, compare every staged row with every query, synchronise.
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
                const int dist = hamming_distance<W>(code[u], row);
                const int q = q_first + u * blockDim.x + threadIdx.x;  // rare path: recompute, spare registers
                if (dist <= qrad[u] && (!upper || (long long)d + diag > (long long)q)) {
                    const u64 slot = atomicAdd(counter, 1ULL);
                    if (slot < capacity) {
                        out_q[slot] = q;
                        out_d[slot] = d;
                        out_dist[slot] = dist;
                    }
                }
            }
        }
        __syncthreads();  // the next tile overwrites shared memory
    }
}

// Top-k. Grid: x over query groups of blockDim.x rows (one query per thread), y over database chunks.
// Every thread keeps its k best (distance, row) pairs sorted in a local array; rows arrive in increasing
// order, so a row only enters when strictly closer than the current k-th (an equal distance with a higher
// row loses the tie). Output (gridDim.y, nq, k): chunk y's list per query, rows local to this launch,
// empty entries (-1, INT_MAX). The host merges the chunks' lists (by distance, then row).
template <int W, int KMAX>
__global__ void __launch_bounds__(HAMMING_THREADS, HAMMING_MIN_BLOCKS)
hamming_topk(const u64* __restrict__ queries, int nq, const u64* __restrict__ db, int nd, int db_chunk, int k,
             int* __restrict__ out_idx, int* __restrict__ out_dist) {
    __shared__ __align__(16) u64 tile[HAMMING_TILE * W];

    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    const bool valid = q < nq;
    u64 code[W];
#pragma unroll
    for (int w = 0; w < W; ++w) code[w] = valid ? queries[(long long)q * W + w] : 0ULL;

    int best_d[KMAX];
    int best_i[KMAX];
    for (int i = 0; i < k; ++i) {
        best_d[i] = HAMMING_INT_MAX;
        best_i[i] = -1;
    }
    int worst = valid ? HAMMING_INT_MAX : -1;  // a missing query never inserts

    long long d_begin = (long long)blockIdx.y * db_chunk;
    long long d_end = d_begin + db_chunk;
    if (d_end > nd) d_end = nd;

    for (long long base = d_begin; base < d_end; base += HAMMING_TILE) {
        const int rows = (d_end - base < HAMMING_TILE) ? (int)(d_end - base) : HAMMING_TILE;
        load_tile<W>(tile, db, base, rows);
        __syncthreads();
        for (int j = 0; j < rows; ++j) {
            u64 row[W];
#pragma unroll
            for (int w = 0; w < W; ++w) row[w] = tile[j * W + w];
            const int dist = hamming_distance<W>(code, row);
            if (dist < worst) {  // insertion sort step; stable: equal distances keep their order
                int pos = k - 1;
                while (pos > 0 && best_d[pos - 1] > dist) {
                    best_d[pos] = best_d[pos - 1];
                    best_i[pos] = best_i[pos - 1];
                    --pos;
                }
                best_d[pos] = dist;
                best_i[pos] = (int)base + j;
                worst = best_d[k - 1];
            }
        }
        __syncthreads();
    }

    if (valid) {
        const long long out = ((long long)blockIdx.y * nq + q) * k;
        for (int i = 0; i < k; ++i) {
            out_idx[out + i] = best_i[i];
            out_dist[out + i] = best_d[i];
        }
    }
}
