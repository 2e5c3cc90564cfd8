"""Worker processes for decoding, feature extraction and alignment, started once and kept while this process lives.

Starting a worker means a new interpreter that imports simbench and its libraries (and, spawned, runs the main
script's imports again). `simbench find` extracts a collection in batches (index_batch), each batch through
every stage, so a pool per batch and stage would pay that start-up a dozen times in a run, with the cores idle
while it lasts. One kept pool per worker count pays it once (benchmarks/bench_find.py throughput); idle, its
processes hold little more than their imports, and `shutdown_pools` stops them.

Spawn, not fork: a forked child can inherit OpenCV's or ONNX Runtime's thread pool with a lock held by one of
their threads, and hang (seen: `simbench find` run twice in one process). A worker that dies takes its pool
with it: the pool is dropped, the error raised, and the next call starts a new one.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing import get_context

_pools: dict[int, ProcessPoolExecutor] = {}
_lock = threading.Lock()


def _init_worker() -> None:
    """One OpenCV thread per worker process: the processes already use every core."""
    import cv2

    cv2.setNumThreads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """The kept pool of `workers` spawn-started processes (started on first use)."""
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                                         initializer=_init_worker)
        return pool


def _drop(workers: int, pool: ProcessPoolExecutor) -> None:
    with _lock:
        if _pools.get(workers) is pool:
            del _pools[workers]
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown_pools() -> None:
    """Stop every kept pool's processes (a later call starts new ones)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def process_map(fn: Callable, items: Iterable, workers: int, window: int | None = None,
                chunksize: int = 1) -> Iterator:
    """fn(x) for x in items, in order, over the kept pool of `workers` processes. window: at most this many
    items in flight (decoded images wait in memory only a few batches ahead of their consumer); None: all
    submitted at once, `chunksize` to a task. fn must be picklable: a module-level function."""
    pool = process_pool(workers)
    try:
        if window is None:
            yield from pool.map(fn, items, chunksize=chunksize)
            return
        items = iter(items)
        pending = deque(pool.submit(fn, x) for x in islice(items, max(1, window)))
        try:
            while pending:
                done = pending.popleft().result()
                pending.extend(pool.submit(fn, x) for x in islice(items, 1))
                yield done
        finally:
            for future in pending:  # the consumer stopped early, or a task failed
                future.cancel()
    except BrokenProcessPool:
        _drop(workers, pool)
        raise
