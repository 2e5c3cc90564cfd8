"""Exact Hamming search on the GPU: CuPy raw kernels (kernels/hamming.cu), with an honest CPU fallback.

The kernels follow the brute-force design of faiss's GPU binary flat index (one specialised distance
loop per code width, database tiles in shared memory, query codes in registers) with 64-bit __popcll and a
compact output: only pairs within the radius leave the GPU, written through one atomic counter.

The host side (this file):

1. a DeviceIndex holds a set of codes for the device: resident in device memory when it fits (uploaded
   once, reused by every call given the index; a self-join uploads its codes once), else kept on the host
   and streamed in blocks through pinned buffers;
2. each width W of 1..16 words has its own kernels, compiled on first use (no padding);
3. range search launches per (query block, database block); the database block is cut into chunks
   along gridDim.y so that a few queries still fill the GPU, and a few queries (< half the threads of the
   many-query kernel) use the small-batch kernel, whose threads own database rows; at small radii the
   kernels stop a comparison after its first words (early exit);
4. the output of a launch is bounded by `output_bytes`: when more pairs match than fit, the launch's
   query range (or, for one query, its database range) is split and the parts run one after another;
   each launch's pairs are sorted on the device by a 64-bit key (query << 32 | row) and copied back
   through pinned buffers, so the pairs arrive in (a, b) order;
5. top-k: a distance histogram per query gives its k-th distance T; a range pass with radii T returns
   every row at distance <= T, sorted on the device by (query, distance, row) and cut to k per query:
   ties go to the lower row, as everywhere in simbench.

Labels: `device` and `fallback` say where the calls ran (result.json env.device / env.fallback). The
device check compiles and launches a one-block probe on the current CUDA device; without a usable device
every call runs the exact CPU kernel (ExactMatcher). A call the kernels cannot serve (codes wider than 16
words, a kernel NVRTC cannot compile) also runs on the CPU: `fallback` becomes True, the reason is logged
and kept in `fallback_reasons`, and `device` reads "cpu", or "cuda:N+cpu" once calls ran on both.
strict_device=True makes any of these a RuntimeError instead. Radius is inclusive (distance <= radius).
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import re
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from simbench.match.base import BinaryMatcher, as_words, unfilled_topk, words_of
from simbench.types import Pairs

log = logging.getLogger(__name__)

#: The CUDA source: kernels/ of the checkout, installed as the package simbench.kernels (SIMBENCH_KERNELS
#: overrides the folder).
KERNEL_DIR = Path(os.environ.get("SIMBENCH_KERNELS") or resources.files("simbench.kernels"))
KERNEL_FILE = KERNEL_DIR / "hamming.cu"

#: Code widths (uint64 words) with kernels, each instantiated when first used; wider codes run on the CPU.
WIDTHS = tuple(range(1, 17))
#: Words after which a comparison may stop early (the E template argument; 0 = never).
EARLY_WORDS = (1, 2, 4)
#: Device bytes per output slot of a range launch: three int32 outputs, the int64 sort key, the int64
#: order from argsort and the sort's scratch, the gathered copies (a bound, not an exact count).
BYTES_PER_PAIR = 64
INT32_MAX = 2**31 - 1

#: Kernel parameter lists as C types, in order. The CPU emulation (tests/cuda_emu) wraps every
#: instantiation with these; the launches below pass NumPy scalars of the same sizes.
_RANGE_PARAMS = ("const u64*", "int", "const u64*", "int", "int", "const int*", "int", "long long", "u64*", "u64",
                 "int*", "int*", "int*")
KERNEL_PARAMS = {
    "hamming_range": _RANGE_PARAMS,
    "hamming_range_small": _RANGE_PARAMS,
    "hamming_histogram": ("const u64*", "int", "const u64*", "int", "int", "u64*"),
}


def kernel_source() -> str:
    return KERNEL_FILE.read_text()


@lru_cache(maxsize=None)
def kernel_constants() -> dict[str, int]:
    """The #define HAMMING_* numbers of the kernel source (tile rows, threads per block), read from it."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define HAMMING_(\w+)\s+(\d+)", kernel_source(), re.M)}


def range_qpt(width: int) -> int:
    """Queries per thread of the many-query range kernel: register tiling while registers last."""
    return 4 if width <= 2 else 2 if width <= 8 else 1


def histogram_queries(width: int) -> int:
    """Queries per block of the histogram kernel: as many (up to 32) as the shared counters allow."""
    return max(1, min(32, kernel_constants()["HIST_COUNTS"] // (64 * width + 1)))


def range_kernel(width: int, early: int = 0, small: bool = False) -> str:
    if small:
        return f"hamming_range_small<{width}, {early}>"
    return f"hamming_range<{width}, {range_qpt(width)}, {early}>"


def histogram_kernel(width: int) -> str:
    return f"hamming_histogram<{width}, {histogram_queries(width)}>"


def early_words(width: int, radius: int) -> int:
    """The E for a radius: the fewest words (of 1, 2, 4; fewer than W) whose partial distance between
    unrelated codes (Binomial(64E, 1/2): mean 32E, standard deviation 4 sqrt(E)) lies 4 standard
    deviations above the radius, so that almost every comparison stops there; 0 when none does."""
    for e in EARLY_WORDS:
        if e < width and 32 * e - 16 * math.sqrt(e) > radius:
            return e
    return 0


def width_name_expressions(width: int) -> tuple[str, ...]:
    """Every instantiation a call on codes of `width` words may ask for."""
    names = []
    for e in (0, *[e for e in EARLY_WORDS if e < width]):
        names += [range_kernel(width, e), range_kernel(width, e, small=True)]
    return (*names, histogram_kernel(width))


def all_name_expressions() -> tuple[str, ...]:
    """Every instantiation the host may ask for (NVRTC compiles them all in the tests)."""
    return tuple(name for w in WIDTHS for name in width_name_expressions(w))


def checked_int(name: str, value, low: int, high: int = INT32_MAX) -> int:
    """int(value) when low <= value <= high, else a ValueError naming the argument (a value passed to a
    kernel as a 32-bit int must not wrap)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number != value or not low <= number <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return number


def cuda_device_status() -> tuple[bool, str]:
    """(True, GPU name) when CuPy sees a CUDA device, else (False, why not). Only the driver is asked:
    GpuMatcher also compiles and launches a probe before it trusts the device."""
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
        current = cupy.cuda.Device().id
        name = cupy.cuda.runtime.getDeviceProperties(current)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "CUDA device"
    return True, name


class KernelUnavailable(RuntimeError):
    """A kernel could not be compiled or loaded (the call then runs on the CPU, labelled as such)."""


class CupyDevice:
    """The current CUDA device: kernels compiled by NVRTC through cupy.RawModule, one instantiation per
    module on first use; transfers through pinned staging buffers."""

    #: Bytes per pinned staging buffer (one for each direction).
    STAGING_BYTES = 64 << 20

    def __init__(self):
        import cupy

        self.xp = cupy
        self.id = cupy.cuda.Device().id  # the current device, not device 0
        self.label = f"cuda:{self.id}"
        props = cupy.cuda.runtime.getDeviceProperties(self.id)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        # Enough blocks for several waves on every multiprocessor.
        self.target_blocks = 8 * int(props["multiProcessorCount"])
        self._functions = {}
        self._staging = {}

    def kernel(self, name: str):
        """A callable (grid, block, args) running the instantiation `name` (compiled on first use)."""
        if name not in self._functions:
            module = self.xp.RawModule(code=kernel_source(), options=("-std=c++17",), name_expressions=[name])
            self._functions[name] = module.get_function(name)
        return self._functions[name]

    def free_bytes(self) -> int:
        """Device memory free now, counting what CuPy's pool holds but does not use."""
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def _pinned(self, direction: str) -> np.ndarray:
        if direction not in self._staging:
            import cupyx

            self._staging[direction] = cupyx.empty_pinned((self.STAGING_BYTES,), np.uint8)
        return self._staging[direction]

    def to_device(self, array: np.ndarray):
        """A device copy of a host array, through the pinned staging buffer (page-locked: DMA at full speed)."""
        host = np.ascontiguousarray(array)
        out = self.xp.empty(host.shape, host.dtype)
        src = host.reshape(-1).view(np.uint8)
        stage = self._pinned("up")
        for s in range(0, src.nbytes, self.STAGING_BYTES):
            n = min(self.STAGING_BYTES, src.nbytes - s)
            stage[:n] = src[s : s + n]
            (out.data + s).copy_from_host(ctypes.c_void_p(stage.ctypes.data), n)
        return out

    def to_host(self, array) -> np.ndarray:
        """A host copy of a device array, through the pinned staging buffer."""
        array = self.xp.ascontiguousarray(array)
        out = np.empty(array.shape, array.dtype)
        dst = out.reshape(-1).view(np.uint8)
        stage = self._pinned("down")
        for s in range(0, dst.nbytes, self.STAGING_BYTES):
            n = min(self.STAGING_BYTES, dst.nbytes - s)
            (array.data + s).copy_to_host(ctypes.c_void_p(stage.ctypes.data), n)
            dst[s : s + n] = stage[:n]
        return out

    def synchronize(self):
        self.xp.cuda.Device(self.id).synchronize()


def probe(dev) -> None:
    """Compile the one-word small-batch range kernel and launch one block on one query against three rows
    at distances 3, 2 and 62 with radius 3; raise unless exactly the first two come back."""
    xp = dev.xp
    query = np.array([[0b1011]], np.uint64)
    rows = np.array([[0], [0b1], [0xFFFFFFFFFFFFFFF8]], np.uint64)
    counter = xp.zeros(1, np.uint64)
    out = [xp.full(4, -1, np.int32) for _ in range(3)]
    args = (dev.to_device(query), np.int32(1), dev.to_device(rows), np.int32(3), np.int32(3),
            dev.to_device(np.array([3], np.int32)), np.int32(0), np.int64(0), counter, np.uint64(4), *out)
    dev.kernel(range_kernel(1, 0, small=True))((1, 1), (kernel_constants()["THREADS"],), args)
    dev.synchronize()
    found = int(dev.to_host(counter)[0])
    got = sorted(zip(*(dev.to_host(o)[:min(found, 4)].tolist() for o in out)))
    if found != 2 or got != [(0, 0, 3), (0, 1, 2)]:
        raise RuntimeError(f"the probe kernel returned {found} pairs {got}, expected [(0, 0, 3), (0, 1, 2)]")


class DeviceIndex:
    """A set of codes held for GpuMatcher: `words` (host, (N, W) uint64) and, when they fit in device memory,
    one resident device copy; otherwise blocks of `block_rows` are uploaded when used (streamed)."""

    def __init__(self, dev, words: np.ndarray, resident: bool, block_rows: int):
        self.dev = dev
        self.words = words
        self.rows, self.width = words.shape
        self.block_rows = int(block_rows)
        self.resident = dev.to_device(words) if resident and dev is not None and len(words) else None

    def blocks(self, rows: int, start: int = 0, end: int | None = None):
        """(first, stop, device rows) covering rows start..end (default N) in launch blocks of at most `rows`
        rows."""
        end = self.rows if end is None else min(end, self.rows)
        step = rows if self.resident is not None else min(rows, self.block_rows)
        for first in range(start, end, step):
            stop = min(first + step, end)
            if self.resident is not None:
                yield first, stop, self.resident[first:stop]
            else:
                yield first, stop, self.dev.to_device(self.words[first:stop])


class GpuMatcher(BinaryMatcher):
    """Exact range search and top-k by XOR-popcount on a CUDA GPU (CuPy raw kernels), or the CPU fallback.

    strict_device: raise RuntimeError instead of running any call on the CPU;
    query_block, db_block: most rows of queries and of the database per kernel launch (< 2^31);
    output_bytes: device memory for one launch's output (pairs, sort keys); a launch finding more pairs is
        split into parts, never grown;
    device: for tests, an object with CupyDevice's interface (the CPU emulation in tests/cuda_emu).

    `index(codes)` returns a DeviceIndex that every call accepts in place of a database, keeping it on the
    device across calls.
    """

    name = "gpu"

    def __init__(self, strict_device: bool = False, query_block: int = 1 << 20, db_block: int = 1 << 30,
                 output_bytes: int = 1 << 30, *, device=None):
        self.strict_device = bool(strict_device)
        self.query_block = checked_int("query_block", query_block, 1)
        self.db_block = checked_int("db_block", db_block, 1)
        self.output_bytes = checked_int("output_bytes", output_bytes, BYTES_PER_PAIR, 2**62)
        #: Counters of the last call: launches, splits of overflowing launches, seconds in launches.
        self.stats = {"launches": 0, "splits": 0, "kernel_s": 0.0}
        #: Why calls ran on the CPU (empty: none did).
        self.fallback_reasons: list[str] = []
        self._ran: set[str] = set()
        self._cpu = None
        self.gpu_name = None
        try:
            if device is None:
                ok, why = cuda_device_status()
                if not ok:
                    raise RuntimeError(f"no CUDA device ({why})")
                device = CupyDevice()
                self.gpu_name = device.name
            probe(device)
            self._dev = device
        except Exception as exc:  # no CuPy, no driver, NVRTC missing, the probe failed
            why = str(exc) if str(exc).startswith("no CUDA device") else f"the device probe failed: {exc}"
            if self.strict_device:
                raise RuntimeError(f"GpuMatcher(strict_device=True) needs a working CUDA GPU: {why}") from exc
            self._dev = None
            self._on_cpu(why)

    # -- labels --------------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the calls ran: the device's label, "cpu", or both ("cuda:0+cpu"); before any call, where
        they will run."""
        gpu = {self._dev.label} if self._dev is not None else set()
        ran = self._ran or (gpu or {"cpu"})
        return "+".join(sorted(ran - {"cpu"}) + (["cpu"] if "cpu" in ran else []))

    @property
    def fallback(self) -> bool:
        return bool(self.fallback_reasons)

    def _on_cpu(self, why: str):
        """Note (once per reason) and return the CPU matcher that runs a call the GPU cannot."""
        from simbench.match.exact import ExactMatcher

        if why not in self.fallback_reasons:
            log.warning("GpuMatcher: %s; running on the CPU (ExactMatcher), recorded as env.fallback = true", why)
            self.fallback_reasons.append(why)
        self._cpu = self._cpu or ExactMatcher()
        return self._cpu

    def _run(self, width: int, on_gpu, on_cpu):
        """on_gpu() on the device, or on_cpu(ExactMatcher) when the device cannot serve this call."""
        self.stats = {"launches": 0, "splits": 0, "kernel_s": 0.0}
        why = self.fallback_reasons[0] if self._dev is None else None
        if why is None and width > WIDTHS[-1]:
            why = f"{64 * width}-bit codes exceed the widest kernel ({64 * WIDTHS[-1]} bits)"
        if why is None:
            try:
                result = on_gpu()
                self._ran.add(self._dev.label)
                return result
            except KernelUnavailable as exc:
                why = str(exc)
        if self.strict_device:
            raise RuntimeError(f"GpuMatcher(strict_device=True) cannot run this call on the GPU: {why}")
        cpu = self._on_cpu(why)
        self._ran.add("cpu")
        return on_cpu(cpu)

    def warm_up(self, features) -> None:
        """Compile every kernel for the features' width now (NVRTC, once per process), so that match time
        is search time. A kernel that fails to compile is left to the call that needs it (which then runs
        on the CPU and says so)."""
        words = words_of(features)
        if words is None or self._dev is None or words.shape[1] > WIDTHS[-1]:
            return
        for name in width_name_expressions(words.shape[1]):
            try:
                self._kernel(name)
            except KernelUnavailable:
                pass

    # -- plumbing ----------------------------------------------------------------------------------------

    def index(self, codes) -> DeviceIndex:
        """The codes held for the device: resident when they fit beside the output buffers, else streamed
        in blocks (two in flight: queries and database). A DeviceIndex is returned as is."""
        if isinstance(codes, DeviceIndex):
            return codes
        words = as_words(codes)
        if self._dev is None or words.shape[1] > WIDTHS[-1]:
            return DeviceIndex(None, words, False, max(1, len(words)))
        room = max(0, int(0.8 * self._dev.free_bytes()) - self.output_bytes)
        block_rows = max(1, min(self.db_block, room // 2 // (8 * words.shape[1])))
        return DeviceIndex(self._dev, words, words.nbytes <= room, block_rows)

    def _kernel(self, name: str):
        try:
            return self._dev.kernel(name)
        except Exception as exc:  # NVRTC or module load error for this instantiation
            raise KernelUnavailable(f"kernel {name} is unavailable ({exc.__class__.__name__}: {exc})") from exc

    def _pair(self, queries, database):
        q, db = self.index(queries), self.index(database)
        if q.width != db.width:
            raise ValueError(f"queries have {q.width} words, database {db.width}")
        return q, db

    def _chunks(self, rows: int, blocks_x: int) -> tuple[int, int]:
        """(chunk rows, chunks) splitting `rows` database rows along gridDim.y to fill the GPU."""
        tile = kernel_constants()["TILE"]
        want = max(1, min(65535, math.ceil(self._dev.target_blocks / blocks_x), math.ceil(rows / tile)))
        chunk = math.ceil(math.ceil(rows / want) / tile) * tile
        return chunk, math.ceil(rows / chunk)

    def _launch(self, kernel, grid, args):
        threads = kernel_constants()["THREADS"]
        start = time.perf_counter()
        kernel(grid, (threads,), args)
        self._dev.synchronize()
        self.stats["launches"] += 1
        self.stats["kernel_s"] += time.perf_counter() - start

    @staticmethod
    def _is_small(width: int, nq: int) -> bool:
        """The small-batch kernel when the many-query kernel would leave more than half its threads idle."""
        per_block = kernel_constants()["THREADS"] * range_qpt(width)
        return nq < per_block / 2

    def _range_kernel(self, width: int, nq: int, radius: int):
        small = self._is_small(width, nq)
        return self._kernel(range_kernel(width, early_words(width, radius), small)), small

    # -- range search ------------------------------------------------------------------------------------

    def range_search(self, queries, database, radius):
        q, db = self._pair(queries, database)
        radius = int(radius)
        return self._run(q.width, lambda: self._range(q, db, radius, upper=False),
                         lambda cpu: cpu.range_search(q.words, db.words, radius).sorted())

    def self_join(self, codes, radius):
        index = self.index(codes)
        radius = int(radius)
        return self._run(index.width, lambda: self._range(index, index, radius, upper=True),
                         lambda cpu: cpu.self_join(index.words, radius).sorted())

    def _output(self):
        """The launch's output: counter and three int32 arrays of capacity slots (from output_bytes)."""
        xp = self._dev.xp
        capacity = self.output_bytes // BYTES_PER_PAIR
        return xp.zeros(1, np.uint64), [xp.empty(capacity, np.int32) for _ in range(3)]

    def _range(self, q: DeviceIndex, db: DeviceIndex, radius: int, upper: bool,
               query_rows: tuple[int, int] | None = None) -> Pairs:
        """Pairs (a, b) within radius of query rows a and database rows b, in (a, b) order; upper (a
        self-join, q is db): only b > a. query_rows (start, stop): only the query rows start..stop-1 (default
        all), with their pairs against the whole database: a self-join cut into query ranges is the full one,
        range by range, and the tests reach rows past 2^31 that way without the full N^2 / 2 comparisons."""
        start, stop = query_rows or (0, q.rows)
        stop = min(stop, q.rows)
        if radius < 0 or start >= stop or db.rows == 0:
            return Pairs.empty()
        radius = min(radius, 64 * q.width)  # every distance is <= 64 W: a larger radius changes nothing
        xp = self._dev.xp
        kernel, small = self._range_kernel(q.width, min(stop - start, self.query_block), radius)
        output = self._output()
        parts, db_blocks = [], 0
        # A self-join pairs a only with rows b > a: no database row below the first query row is read.
        for d0, d1, dv in db.blocks(self.db_block, start if upper else 0):
            db_blocks += 1
            for q0, q1, qv in q.blocks(self.query_block, start, stop):
                if upper and d1 - 1 <= q0:  # no database row above any query row of this block
                    break
                radii = xp.full(q1 - q0, radius, np.int32)
                parts += self._range_launch(kernel, small, qv, q0, dv, d0, radii, upper, output)
        pairs = Pairs.concat(parts)
        if db_blocks > 1:
            # Each database block's pairs are in (a, b) order and the blocks come in row order, so a stable
            # sort by a alone leaves equal a's in increasing b.
            order = np.argsort(pairs.a, kind="stable")
            pairs = Pairs(pairs.a[order], pairs.b[order], pairs.dist[order])
        return pairs

    def _range_launch(self, kernel, small, qv, q0, dv, d0, radii, upper, output, keep: int = 0) -> list[Pairs]:
        """Pairs of queries qv (global rows from q0) and database rows dv (from d0) within radii, sorted on
        the device. Over the output capacity, the query range (or, for one query, the database range) is
        split into as many parts as the count asks for, each run the same way. keep > 0 (top-k): the pairs
        are sorted by (query, distance, row) and only the first `keep` of each query come back."""
        dev, xp = self._dev, self._dev.xp
        counter, out = output
        capacity = len(out[0])
        nq, nd = len(qv), len(dv)
        per_block = kernel_constants()["SMALL_QUERIES" if small else "THREADS"] * (1 if small else range_qpt(qv.shape[1]))
        blocks_x = math.ceil(nq / per_block)
        chunk, blocks_y = self._chunks(nd, blocks_x)
        counter.fill(0)
        args = (qv, np.int32(nq), dv, np.int32(nd), np.int32(chunk), radii, np.int32(upper), np.int64(d0 - q0),
                counter, np.uint64(capacity), *out)
        self._launch(kernel, (blocks_x, blocks_y), args)
        found = int(dev.to_host(counter)[0])
        if found > capacity:
            self.stats["splits"] += 1
            parts = []
            if nq > 1:
                for s, e in _split(nq, math.ceil(found / capacity)):
                    parts += self._range_launch(kernel, small, qv[s:e], q0 + s, dv, d0, radii[s:e], upper, output,
                                                keep)
            else:
                for s, e in _split(nd, math.ceil(found / capacity)):
                    parts += self._range_launch(kernel, small, qv, q0, dv[s:e], d0 + s, radii, upper, output, keep)
            return parts
        if found == 0:
            return []
        qs, ds, dist = (o[:found] for o in out)
        if keep:  # query < 2^21, distance <= 1024 < 2^11, row < 2^31: 63 bits
            key = (qs.astype(np.int64) << 42) | (dist.astype(np.int64) << 31) | ds.astype(np.int64)
        else:  # query and row < 2^31
            key = (qs.astype(np.int64) << 32) | ds.astype(np.int64)
        order = xp.argsort(key)
        qs, ds, dist = qs[order], ds[order], dist[order]
        if keep:
            rank = xp.arange(found) - xp.searchsorted(qs, qs, side="left")
            qs, ds, dist = qs[rank < keep], ds[rank < keep], dist[rank < keep]
        return [Pairs(dev.to_host(qs).astype(np.int64) + q0, dev.to_host(ds).astype(np.int64) + d0,
                      dev.to_host(dist))]

    # -- top-k -------------------------------------------------------------------------------------------

    def topk(self, queries, database, k):
        q, db = self._pair(queries, database)
        k = checked_int("k", k, 0)
        return self._run(q.width, lambda: self._topk(q, db, k), lambda cpu: cpu.topk(q.words, db.words, k))

    def _topk(self, q: DeviceIndex, db: DeviceIndex, k: int):
        idx, dist = unfilled_topk(q.rows, k)
        kk = min(k, db.rows)
        if kk == 0 or q.rows == 0:
            return idx, dist
        xp, width = self._dev.xp, q.width
        bins = 64 * width + 1
        hist_kernel = self._kernel(histogram_kernel(width))
        qb = histogram_queries(width)
        # The histogram (8 bytes a bin) fits the output budget; the range pass's key holds the query in 21 bits.
        rows = max(1, min(self.query_block, 1 << 21, self.output_bytes // (8 * bins)))
        output = self._output()
        for q0, q1, qv in q.blocks(rows):
            nq = q1 - q0
            hist = xp.zeros((nq, bins), np.uint64)
            for _, _, dv in db.blocks(self.db_block):
                chunk, blocks_y = self._chunks(len(dv), math.ceil(nq / qb))
                self._launch(hist_kernel, (math.ceil(nq / qb), blocks_y),
                             (qv, np.int32(nq), dv, np.int32(len(dv)), np.int32(chunk), hist))
            # T = each query's k-th smallest distance; its rows at distance <= T include the top k.
            radii = xp.argmax(xp.cumsum(hist, axis=1) >= kk, axis=1).astype(np.int32)
            kernel, small = self._range_kernel(width, nq, int(radii.max()))
            parts = []
            for d0, _, dv in db.blocks(self.db_block):
                parts += self._range_launch(kernel, small, qv, q0, dv, d0, radii, False, output, keep=kk)
            found = Pairs.concat(parts)
            # Parts are in (query, distance, row) order per database block, blocks in row order: a stable
            # sort by (query, distance) orders rows within ties.
            order = np.argsort((found.a << 11) | found.dist, kind="stable")
            a, b, d = found.a[order], found.b[order], found.dist[order]
            rank = np.arange(len(a)) - np.searchsorted(a, a, side="left")
            keep = rank < kk
            idx[a[keep], rank[keep]] = b[keep]
            dist[a[keep], rank[keep]] = d[keep]
        return idx, dist


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges cutting 0..n into min(parts, n) nearly equal pieces, in order."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]
