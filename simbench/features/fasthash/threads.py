"""Spreading batches over threads."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

from simbench.features.fasthash.batch import HashSpec
from simbench.features.fasthash.transforms import dct_matrix
from simbench.threads import available_cores  # noqa: F401  (re-exported by simbench.features.fasthash)


def prepare(spec) -> None:
    """Import what the kernels of spec need and build their fixed matrices once, before the threads start
    (rather than in every thread at once)."""
    if isinstance(spec, HashSpec):
        if spec.algorithm.startswith("whash"):
            import pywt  # noqa: F401
        if spec.compat and spec.algorithm.startswith("phash"):
            import scipy.fftpack  # noqa: F401
        if spec.algorithm == "phash" and not spec.compat:
            dct_matrix(spec.thumb_size()[0], spec.hash_size)
        if spec.algorithm == "phash_simple" and not spec.compat:
            dct_matrix(spec.thumb_size()[0], spec.hash_size + 1)
    else:
        from scipy import ndimage  # noqa: F401


def _call(job):
    fn, spec, items = job
    return fn(spec, items)


def map_batches(fn: Callable, spec, batches: Sequence[Sequence[tuple[int, str]]], workers: int
                ) -> Iterator:
    """Yield fn(spec, batch) for every batch, in order; over `workers` threads when workers > 1.

    Threads, not processes: JPEG decoding and resizing in Pillow, and NumPy's array work, release the GIL,
    so threads use the cores without starting interpreters; and unlike forked processes they cannot
    inherit a lock held by another thread (numba, OpenMP, OpenCV), nor hang inside job runners (joblib,
    submitit) that handle signals or processes their own way.
    """
    jobs = [(fn, spec, list(batch)) for batch in batches]
    prepare(spec)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _call(job)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="simbench-hash") as pool:
        futures = [pool.submit(_call, job) for job in jobs]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:  # the caller stopped early or failed: drop what has not started
                future.cancel()


def split_batches(n: int, batch_size: int, workers: int) -> list[range]:
    """Index ranges of at most batch_size images, small enough to keep every worker busy (>= 4 per worker)."""
    if n == 0:
        return []
    per = max(1, min(batch_size, math.ceil(n / (max(1, workers) * 4))))
    return [range(i, min(i + per, n)) for i in range(0, n, per)]


def iter_batches(fn: Callable, spec, paths: Sequence, batch_size: int, workers: int) -> Iterable:
    """(batch range, fn result) over paths split into batches."""
    batches = split_batches(len(paths), batch_size, workers)
    items = [[(i, str(paths[i])) for i in b] for b in batches]
    yield from zip(batches, map_batches(fn, spec, items, workers))
