"""The kept worker processes (simbench.processes): results in input order with or without a window, one pool
per worker count reused across calls, and a pool whose worker dies replaced by the next call."""
from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from simbench import processes
from simbench.processes import process_map, process_pool


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def exit_on(x: int) -> int:
    if x == 3:
        os._exit(1)  # the worker dies without a word, as one that crashes in a C library does
    return x


@pytest.mark.parametrize("window, chunksize", [(None, 1), (None, 4), (1, 1), (3, 1)])
def test_results_come_in_input_order(window, chunksize):
    got = list(process_map(square_and_pid, range(40), 2, window=window, chunksize=chunksize))
    assert [v for v, _ in got] == [x * x for x in range(40)]
    assert os.getpid() not in {pid for _, pid in got}  # run in the workers, not here


def test_the_pool_is_kept_across_calls():
    first = {pid for _, pid in process_map(square_and_pid, range(20), 2)}
    second = {pid for _, pid in process_map(square_and_pid, range(20), 2, window=2)}
    assert process_pool(2) is process_pool(2) and first | second <= set(process_pool(2)._processes)


def test_a_dead_worker_breaks_only_its_own_call():
    with pytest.raises(BrokenProcessPool):
        list(process_map(exit_on, range(8), 2, window=2))
    assert list(process_map(exit_on, [0, 1, 2], 2)) == [0, 1, 2]  # a new pool
    processes.shutdown_pools()
    assert not processes._pools
