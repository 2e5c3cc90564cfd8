"""Exact Hamming search on the GPU: CuPy raw kernels (kernels/hamming.cu), with a CPU fallback.

The kernels follow the brute-force design of faiss's GPU binary flat index (one specialised distance
loop per code size, database tiles in shared memory, query codes in registers) with 64-bit __popcll and a
compact output: only pairs within the radius leave the GPU, written through one atomic counter.

The host side (this file) is glue:

1. pad the codes to a compiled width W in (1, 2, 4, 8, 16) words (zero words change no distance);
2. copy queries and database to the GPU once, then launch per (query block, database block), so that the
   output buffer, not N x N, bounds memory; each launch splits its database block into chunks along
   gridDim.y, so a few queries still keep every multiprocessor busy;
3. range search: read the counter; if it exceeds the buffer's capacity, grow the buffer to the count and
   run the same launch again (overflow retry): the pairs are exact whatever `capacity` was;
4. top-k: each chunk returns its k best per query; chunks and database blocks are merged by (distance,
   row), so ties go to the lower row, as everywhere in simbench.

With no usable GPU, GpuMatcher runs the exact CPU kernel (ExactMatcher), logs a warning and sets
``device = "cpu"``, ``fallback = True`` (recorded as env.device / env.fallback); ``strict_device=True``
makes that a RuntimeError instead. Radius is inclusive (distance <= radius).
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from simbench.match.base import BinaryMatcher, as_words, unfilled_topk
from simbench.types import Pairs

log = logging.getLogger(__name__)

#: The CUDA source: kernels/ of the checkout, installed as the package simbench.kernels (SIMBENCH_KERNELS
#: overrides the folder).
KERNEL_DIR = Path(os.environ.get("SIMBENCH_KERNELS") or resources.files("simbench.kernels"))
KERNEL_FILE = KERNEL_DIR / "hamming.cu"

#: Code widths (uint64 words) with a compiled kernel; others are zero-padded up to the next one.
WORDS = (1, 2, 4, 8, 16)
#: Queries per thread of the range kernel, per width: register tiling (one shared-memory word, QPT uses).
RANGE_QPT = {1: 4, 2: 4, 4: 2, 8: 2, 16: 1}
#: Capacities of the top-k kernel's per-thread candidate list; k above the largest runs on the CPU.
TOPK_KMAX = (16, 64, 256)

#: Kernel parameter lists as C types, in order. The CPU emulation (tests/cuda_emu) wraps every
#: instantiation with these; the launches below pass NumPy scalars of the same sizes.
KERNEL_PARAMS = {
    "hamming_range": ("const u64*", "int", "const u64*", "int", "int", "int", "int", "long long", "u64*", "u64",
                      "int*", "int*", "int*"),
    "hamming_topk": ("const u64*", "int", "const u64*", "int", "int", "int", "int*", "int*"),
}


def range_kernel(width: int) -> str:
    return f"hamming_range<{width}, {RANGE_QPT[width]}>"


def topk_kernel(width: int, kmax: int) -> str:
    return f"hamming_topk<{width}, {kmax}>"


#: Every template instantiation, as CuPy's RawModule(name_expressions=...) and NVRTC take them.
NAME_EXPRESSIONS = tuple([range_kernel(w) for w in WORDS] + [topk_kernel(w, k) for w in WORDS for k in TOPK_KMAX])


def kernel_source() -> str:
    return KERNEL_FILE.read_text()


@lru_cache(maxsize=None)
def kernel_constants() -> dict[str, int]:
    """The #define HAMMING_* numbers of the kernel source (tile rows, threads per block), read from it."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define HAMMING_(\w+)\s+(\d+)", kernel_source(), re.M)}


def cuda_device_status() -> tuple[bool, str]:
    """(True, GPU name) when CuPy sees a CUDA device, else (False, why not)."""
    try:
        import cupy
    except Exception as exc:  # not installed, or broken
        return False, f"cupy is not importable ({exc.__class__.__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, insufficient driver, ...
        return False, f"cupy.cuda.runtime.getDeviceCount() failed: {exc}"
    if count == 0:
        return False, "cupy.cuda.runtime.getDeviceCount() == 0"
    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "CUDA device 0"
    return True, name


class CupyDevice:
    """The real GPU: kernels compiled by NVRTC through cupy.RawModule, arrays in CuPy."""

    label = "cuda:0"

    def __init__(self):
        import cupy

        self.xp = cupy
        self.module = cupy.RawModule(code=kernel_source(), options=("-std=c++17",),
                                     name_expressions=NAME_EXPRESSIONS)
        sms = cupy.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"]
        # Enough blocks for several waves on every multiprocessor.
        self.target_blocks = 8 * int(sms)
        self._functions = {}

    def kernel(self, name: str):
        """A callable (grid, block, args) running the instantiation `name`."""
        if name not in self._functions:
            self._functions[name] = self.module.get_function(name)
        return self._functions[name]

    def to_device(self, array: np.ndarray):
        return self.xp.asarray(array)

    def to_host(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def synchronize(self):
        self.xp.cuda.Device().synchronize()


class GpuMatcher(BinaryMatcher):
    """Exact range search and top-k by XOR-popcount on a CUDA GPU (CuPy raw kernels), or the CPU fallback.

    strict_device: with no usable GPU, raise RuntimeError instead of running ExactMatcher on the CPU;
    query_block, db_block: rows of queries and of the database per kernel launch;
    capacity: pairs the output buffer holds at first (it grows on overflow, and the launch re-runs);
    device: for tests, an object with CupyDevice's interface (the CPU emulation in tests/cuda_emu).
    """

    name = "gpu"

    def __init__(self, strict_device: bool = False, query_block: int = 1 << 18, db_block: int = 1 << 22,
                 capacity: int = 1 << 22, *, device=None):
        self.strict_device = bool(strict_device)
        self.query_block = int(query_block)
        self.db_block = int(db_block)
        self.capacity = int(capacity)
        if min(self.query_block, self.db_block, self.capacity) < 1:
            raise ValueError("query_block, db_block and capacity must be positive")
        #: Counters of the last call: launches, overflow retries, seconds spent in launches (incl. sync).
        self.stats = {"launches": 0, "retries": 0, "kernel_s": 0.0}
        self._dev = device
        self._cpu = None
        if device is not None:
            self.device, self.fallback, self.gpu_name = getattr(device, "label", "cpu"), False, None
            return
        ok, why = cuda_device_status()
        if ok:
            self.device, self.fallback, self.gpu_name = "cuda:0", False, why
        elif self.strict_device:
            raise RuntimeError(f"GpuMatcher(strict_device=True) needs a CUDA GPU, but there is none: {why}")
        else:
            from simbench.match.exact import ExactMatcher

            log.warning("GpuMatcher: no CUDA device (%s); running the exact CPU kernel (ExactMatcher) instead, "
                        "recorded as env.device=cpu, env.fallback=true", why)
            self.device, self.fallback, self.gpu_name = "cpu", True, None
            self._cpu = ExactMatcher()

    # -- plumbing ----------------------------------------------------------------------------------------

    @property
    def dev(self):
        if self._dev is None:
            self._dev = CupyDevice()
        return self._dev

    def _cpu_matcher(self, why: str):
        from simbench.match.exact import ExactMatcher

        log.warning("GpuMatcher: %s; running this call on the CPU (ExactMatcher)", why)
        return self._cpu or ExactMatcher()

    @staticmethod
    def _inputs(queries, database):
        q, db = as_words(queries), as_words(database)
        if q.shape[1] != db.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} words, database {db.shape[1]}")
        return q, db

    @staticmethod
    def _padded(words: np.ndarray, width: int) -> np.ndarray:
        """Zero words appended up to `width`: XOR of zeros adds nothing to any distance."""
        if words.shape[1] == width:
            return words
        out = np.zeros((len(words), width), np.uint64)
        out[:, : words.shape[1]] = words
        return out

    def _chunks(self, rows: int, blocks_x: int, cap_y: int = 65535) -> tuple[int, int]:
        """(chunk rows, chunks) splitting `rows` database rows along gridDim.y to fill the GPU."""
        tile = kernel_constants()["TILE"]
        want = max(1, min(cap_y, math.ceil(self.dev.target_blocks / blocks_x), math.ceil(rows / tile)))
        chunk = math.ceil(math.ceil(rows / want) / tile) * tile
        return chunk, math.ceil(rows / chunk)

    def _timed_launch(self, name, grid, args):
        threads = kernel_constants()["THREADS"]
        start = time.perf_counter()
        self.dev.kernel(name)(grid, (threads,), args)
        self.stats["launches"] += 1
        return start

    # -- range search ------------------------------------------------------------------------------------

    def range_search(self, queries, database, radius):
        q, db = self._inputs(queries, database)
        return self._range(q, db, int(radius), upper=False)

    def self_join(self, codes, radius):
        words = as_words(codes)
        return self._range(words, words, int(radius), upper=True)

    def _range(self, q, db, radius, upper):
        self.stats = {"launches": 0, "retries": 0, "kernel_s": 0.0}
        if self._cpu is not None:
            return self._cpu.self_join(q, radius) if upper else self._cpu.range_search(q, db, radius)
        if radius < 0 or len(q) == 0 or len(db) == 0:
            return Pairs.empty()
        if q.shape[1] > WORDS[-1]:
            cpu = self._cpu_matcher(f"{64 * q.shape[1]}-bit codes exceed the widest kernel ({64 * WORDS[-1]} bits)")
            return cpu.self_join(q, radius) if upper else cpu.range_search(q, db, radius)
        width = next(w for w in WORDS if w >= q.shape[1])
        dev, xp = self.dev, self.dev.xp
        kernel = range_kernel(width)
        rows_per_block_x = kernel_constants()["THREADS"] * RANGE_QPT[width]

        d_q = dev.to_device(self._padded(q, width))
        d_db = d_q if upper else dev.to_device(self._padded(db, width))
        counter = xp.zeros(1, np.uint64)
        capacity = self.capacity
        out = [xp.empty(capacity, np.int32) for _ in range(3)]
        parts = []
        for d0 in range(0, len(db), self.db_block):
            d1 = min(d0 + self.db_block, len(db))
            for q0 in range(0, len(q), self.query_block):
                q1 = min(q0 + self.query_block, len(q))
                if upper and d1 - 1 <= q0:  # no database row above any query row of this block
                    continue
                blocks_x = math.ceil((q1 - q0) / rows_per_block_x)
                chunk, blocks_y = self._chunks(d1 - d0, blocks_x)
                while True:
                    counter.fill(0)
                    args = (d_q[q0:q1], np.int32(q1 - q0), d_db[d0:d1], np.int32(d1 - d0), np.int32(chunk),
                            np.int32(radius), np.int32(upper), np.int64(d0 - q0), counter, np.uint64(capacity),
                            out[0], out[1], out[2])
                    start = self._timed_launch(kernel, (blocks_x, blocks_y), args)
                    found = int(counter[0])  # waits for the kernel
                    self.stats["kernel_s"] += time.perf_counter() - start
                    if found <= capacity:
                        break
                    # Overflow: the slots past capacity were counted, not written. Grow, then run again.
                    self.stats["retries"] += 1
                    capacity = found
                    out = [xp.empty(capacity, np.int32) for _ in range(3)]
                if found:
                    a = dev.to_host(out[0][:found]).astype(np.int64) + q0
                    b = dev.to_host(out[1][:found]).astype(np.int64) + d0
                    parts.append(Pairs(a, b, dev.to_host(out[2][:found])))
        return Pairs.concat(parts).sorted()

    # -- top-k -------------------------------------------------------------------------------------------

    def topk(self, queries, database, k):
        self.stats = {"launches": 0, "retries": 0, "kernel_s": 0.0}
        q, db = self._inputs(queries, database)
        k = int(k)
        if self._cpu is not None:
            return self._cpu.topk(q, db, k)
        if k > TOPK_KMAX[-1] or q.shape[1] > WORDS[-1]:
            return self._cpu_matcher(f"top-k with k={k} or {q.shape[1]} words is beyond the GPU kernels "
                                     f"(k <= {TOPK_KMAX[-1]}, W <= {WORDS[-1]})").topk(q, db, k)
        idx, dist = unfilled_topk(len(q), k)
        if k <= 0 or len(q) == 0 or len(db) == 0:
            return idx, dist
        width = next(w for w in WORDS if w >= q.shape[1])
        kernel = topk_kernel(width, next(m for m in TOPK_KMAX if m >= k))
        dev, xp = self.dev, self.dev.xp
        threads = kernel_constants()["THREADS"]
        d_q = dev.to_device(self._padded(q, width))
        d_db = dev.to_device(self._padded(db, width))
        for q0 in range(0, len(q), self.query_block):
            q1 = min(q0 + self.query_block, len(q))
            nq = q1 - q0
            blocks_x = math.ceil(nq / threads)
            best_i = best_d = None
            for d0 in range(0, len(db), self.db_block):
                d1 = min(d0 + self.db_block, len(db))
                # Each chunk returns nq x k candidates: keep that under ~256 MB.
                cap_y = max(1, min(65535, (256 << 20) // (8 * nq * k)))
                chunk, blocks_y = self._chunks(d1 - d0, blocks_x, cap_y)
                out_i = xp.empty((blocks_y, nq, k), np.int32)
                out_d = xp.empty((blocks_y, nq, k), np.int32)
                args = (d_q[q0:q1], np.int32(nq), d_db[d0:d1], np.int32(d1 - d0), np.int32(chunk), np.int32(k),
                        out_i, out_d)
                start = self._timed_launch(kernel, (blocks_x, blocks_y), args)
                dev.synchronize()
                self.stats["kernel_s"] += time.perf_counter() - start
                # Merge: chunk lists (and the running best) by (distance, global row); empty slots sort last.
                cand_i = out_i.transpose(1, 0, 2).reshape(nq, blocks_y * k).astype(np.int64)
                cand_i = xp.where(cand_i >= 0, cand_i + d0, -1)
                cand_d = out_d.transpose(1, 0, 2).reshape(nq, blocks_y * k)
                if best_i is not None:
                    cand_i = xp.concatenate([best_i, cand_i], axis=1)
                    cand_d = xp.concatenate([best_d, cand_d], axis=1)
                key = (cand_d.astype(np.int64) << 32) | (cand_i & 0xFFFFFFFF)
                order = xp.argsort(key, axis=1)[:, :k]
                best_i = xp.take_along_axis(cand_i, order, axis=1)
                best_d = xp.take_along_axis(cand_d, order, axis=1)
            idx[q0:q1] = dev.to_host(best_i)
            dist[q0:q1] = dev.to_host(best_d)
        return idx, dist
