"""Loops spread over threads: their steps are OpenCV, Pillow or NumPy calls, which release the GIL, so
threads use the cores without starting interpreters (or copying the collection's features to them)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

#: Chunks per thread: the steps of one loop differ in cost (pairs of larger overlaps, more matches), and
#: small chunks keep every thread busy to the end.
CHUNKS_PER_THREAD = 8


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_map(fn: Callable, items: Iterable, threads: int | None = None) -> list:
    """[fn(x) for x in items], in order, over `threads` threads (None: one per core). For steps that
    depend on their own item alone: the result is then the same as the plain loop's."""
    items = list(items)
    threads = available_cores() if threads is None else max(1, int(threads))
    if threads == 1 or len(items) < 2:
        return [fn(x) for x in items]
    step = -(-len(items) // (CHUNKS_PER_THREAD * threads))
    chunks = [items[s:s + step] for s in range(0, len(items), step)]
    with ThreadPoolExecutor(min(threads, len(chunks)), thread_name_prefix="simbench") as pool:
        return [y for part in pool.map(lambda chunk: [fn(x) for x in chunk], chunks) for y in part]
