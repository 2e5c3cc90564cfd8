// cuda_emu.h: run CUDA kernels written for NVRTC on the CPU, unchanged, to test them without a GPU.
//
// Include this header, then the .cu file, in one C++20 translation unit (g++ -std=c++20). It maps:
//   __global__, __device__, __host__, __forceinline__, __launch_bounds__, __align__   plain C++
//   threadIdx, blockIdx, blockDim, gridDim    globals, set by the scheduler for the thread it runs
//   __shared__                                `static`: one copy per kernel instantiation, used by one block
//                                             at a time (blocks run one after another)
//   __syncthreads()                           the end of a phase (below)
//   __popc, __popcll                          __builtin_popcount, __builtin_popcountll
//   atomicAdd                                 a plain read-add-write (one OS thread runs everything)
//
// How a launch runs: the blocks of the grid run one after another. The threads of a block are fibers
// (ucontext, each with its own stack and a guard page), run one at a time in phases: every thread runs
// until its next __syncthreads (or its end), then the next thread; once all of them wait, the next phase
// starts. The order alternates, thread 0 first in even phases and last in odd ones (or a seeded shuffle,
// see emu_set_schedule). That is the most adversarial legal schedule: a thread runs as far ahead of the
// others as CUDA allows, so a missing __syncthreads, a tile read past what was loaded, or a race on shared
// memory gives wrong results every time instead of once in a while. A __syncthreads that some thread of
// the block never reaches (it returned) is reported as an error instead of hanging; so are grid and block
// sizes past CUDA's limits. Results are deterministic for a given schedule.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

// Every thread of a block runs to its next barrier before the next one starts, on one OS thread:
// a read-add-write is atomic here.
template <typename T>
inline T emu_atomic_add(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return emu_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return emu_atomic_add(p, v); }
inline int atomicAdd(int* p, int v) { return emu_atomic_add(p, v); }

namespace emu {

inline std::string& last_error_text() {
    static std::string text;
    return text;
}

// Schedule of the threads within a phase: 0 alternate (forward, reverse, ...), 1 forward, 2 seeded shuffle.
inline int schedule_mode = 0;
inline unsigned long long schedule_seed = 0;

enum State { RUNNABLE, AT_BARRIER, DONE };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    State state;
};

struct Scheduler {
    ucontext_t main;
    Fiber* current = nullptr;
    std::function<void()> body;  // the kernel call with its arguments
};

inline Scheduler* scheduler = nullptr;

inline void fiber_entry() {
    scheduler->body();
    scheduler->current->state = DONE;
    swapcontext(&scheduler->current->ctx, &scheduler->main);
}

inline void syncthreads() {
    Fiber* self = scheduler->current;
    self->state = AT_BARRIER;
    swapcontext(&self->ctx, &scheduler->main);  // back to the scheduler; resumed in the next phase
}

inline std::string dims(const char* what, dim3 d) {
    return std::string(what) + " (" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// Run kernel<<<grid, block>>>(args...) to completion. Returns 0, or 1 with last_error_text() set.
template <typename... Params, typename... Args>
int launch(dim3 grid, dim3 block, void (*kernel)(Params...), Args... args) {
    static std::mutex one_launch_at_a_time;  // __shared__ statics and the globals above are not re-entrant
    std::lock_guard<std::mutex> guard(one_launch_at_a_time);
    last_error_text().clear();
    const unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        last_error_text() = "invalid launch configuration: " + dims("grid", grid) + " " + dims("block", block);
        return 1;
    }
    // One stack per thread, each above a PROT_NONE guard page (a stack overflow faults, not corrupts).
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t stack = 256 * 1024, slot = stack + page;
    char* memory = (char*)mmap(nullptr, slot * nthreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        last_error_text() = "mmap of the fiber stacks failed";
        return 1;
    }
    for (unsigned long long t = 0; t < nthreads; ++t) mprotect(memory + t * slot, page, PROT_NONE);

    Scheduler sched;
    sched.body = [&] { kernel(args...); };
    scheduler = &sched;
    std::vector<Fiber> fibers(nthreads);
    std::vector<unsigned> order(nthreads);
    std::mt19937_64 rng(schedule_seed);
    blockDim = block;
    gridDim = grid;
    int status = 0;
    for (unsigned z = 0; z < grid.z && !status; ++z)
        for (unsigned y = 0; y < grid.y && !status; ++y)
            for (unsigned x = 0; x < grid.x && !status; ++x) {
                blockIdx = {x, y, z};
                for (unsigned t = 0; t < nthreads; ++t) {
                    Fiber& f = fibers[t];
                    f.tid = {t % block.x, (unsigned)((t / block.x) % block.y), (unsigned)(t / (block.x * block.y))};
                    f.state = RUNNABLE;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = memory + t * slot + page;
                    f.ctx.uc_stack.ss_size = stack;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_entry, 0);
                }
                for (int phase = 0;; ++phase) {
                    for (unsigned t = 0; t < nthreads; ++t) order[t] = t;
                    if (schedule_mode == 2)
                        std::shuffle(order.begin(), order.end(), rng);
                    else if (schedule_mode == 0 && phase % 2 == 1)
                        std::reverse(order.begin(), order.end());
                    for (unsigned t : order) {
                        Fiber& f = fibers[t];
                        if (f.state != RUNNABLE) continue;
                        sched.current = &f;
                        threadIdx = f.tid;
                        swapcontext(&sched.main, &f.ctx);
                    }
                    unsigned long long waiting = 0, done = 0;
                    for (Fiber& f : fibers) (f.state == AT_BARRIER ? waiting : done)++;
                    if (done == nthreads) break;  // the block has finished
                    if (done) {                   // some returned while others wait at __syncthreads
                        last_error_text() = "__syncthreads reached by only " + std::to_string(waiting) + " of " +
                                            std::to_string(nthreads) + " threads (the others returned) in " +
                                            dims("block", dim3(x, y, z)) + ", phase " + std::to_string(phase);
                        status = 1;
                        break;
                    }
                    for (Fiber& f : fibers) f.state = RUNNABLE;
                }
            }
    scheduler = nullptr;
    munmap(memory, slot * nthreads);
    return status;
}

}  // namespace emu

#define __syncthreads() ::emu::syncthreads()

// The wrapper translation unit exports emu_last_error() and emu_set_schedule(mode, seed).
