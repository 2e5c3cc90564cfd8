"""On a real CUDA device only (`pytest -m gpu`; skipped, with the reason, elsewhere): GpuMatcher's kernel
variants, bounded output, device index and labels against the CPU reference, a self-join (by ranges of
query rows) and queries over 2^31 + 2^20 rows, the GPU cosine top-k, and compute-sanitizer memcheck /
racecheck runs over a small workload of every kernel kind. `python benchmarks/bench_gpu.py --all` runs
these, then the benchmark."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simbench.match import gpu
from simbench.match.exact import ExactMatcher
from simbench.match.gpu import GpuMatcher
from simbench.match.oracle import OracleMatcher
from simbench.types import Pairs

from test_gpu_kernels import assert_pairs_equal, assert_topk_equal, budget, planted, random_codes, reed_muller_codes

HAS_GPU, GPU_WHY = gpu.cuda_device_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason=f"no CUDA device ({GPU_WHY})")]
TESTS = Path(__file__).resolve().parent


def exact():
    return ExactMatcher()


def test_labels_name_the_current_device():
    import cupy

    matcher = GpuMatcher(strict_device=True)
    assert matcher.device == f"cuda:{cupy.cuda.Device().id}" and matcher.fallback is False
    rng = np.random.default_rng(0)
    codes = random_codes(rng, 500, 4)
    matcher.self_join(codes, 40)
    assert matcher.device == f"cuda:{cupy.cuda.Device().id}" and matcher.fallback is False
    wide = GpuMatcher()
    wide.self_join(random_codes(rng, 50, 17), 500)
    assert wide.device == "cpu" and wide.fallback is True  # only a CPU call ran


@pytest.mark.parametrize("width", gpu.WIDTHS)
def test_every_width_and_variant_equals_the_cpu(width):
    rng = np.random.default_rng(width)
    matcher = GpuMatcher(strict_device=True, output_bytes=budget(5000))
    for nq, radius in ((20, 2 * width), (3000, 2 * width), (3000, 20 * width)):  # small batch, early exit
        q, db = planted(rng, nq, 20_000, width, radius)
        assert_pairs_equal(matcher.range_search(q, db, radius), exact().range_search(q, db, radius).sorted())
    q = random_codes(rng, 700, width, alphabet=100)
    db = random_codes(rng, 9000, width, alphabet=300)
    for k in (1, 17, 300):
        assert_topk_equal(matcher.topk(q, db, k), exact().topk(q, db, k))
    small_q, small_db = q[:40], db[:500]
    assert_topk_equal(matcher.topk(small_q, small_db, 33), OracleMatcher().topk(small_q, small_db, 33))


def test_split_on_overflow_and_a_streamed_index_equal_the_cpu(monkeypatch):
    rng = np.random.default_rng(1)
    q, db = planted(rng, 2000, 50_000, 2, 48)  # ~0.2% of 1e8 pairs within 48 of 128 bits
    want = exact().range_search(q, db, 48).sorted()
    matcher = GpuMatcher(strict_device=True, output_bytes=budget(1000))
    got = matcher.range_search(q, db, 48)
    assert_pairs_equal(got, want)
    assert len(want) > 20 * 1000 and matcher.stats["splits"] > 0
    # A device with "2 MiB free": 1.28 MB go to the output, the 800 kB database streams in blocks.
    matcher = GpuMatcher(strict_device=True, output_bytes=budget(20_000))
    monkeypatch.setattr(matcher._dev, "free_bytes", lambda: 2 << 20)
    index = matcher.index(db)
    assert index.resident is None and index.block_rows < len(db)
    assert_pairs_equal(matcher.range_search(q, index, 48), want)
    assert_topk_equal(matcher.topk(q[:300], index, 25), exact().topk(q[:300], db, 25))


# ---------------------------------------------------------------------------------------- past 2^31 rows

N_PAST = 2**31 + 2**20
RADIUS = 2
#: Query rows of the self-join that straddle row 2^31 (each against every row above it: 2^13 x 2^20 pairs).
STRADDLE = (2**31 - 2**12, 2**31 + 2**12)
#: Query rows from 0, each against every row above it up to N_PAST (2^10 x 2^31 pairs).
FIRST = (0, 2**10)
#: (row, the row it copies, bits flipped): the near copies planted in the Reed-Muller codes.
PLANTED = [
    (2**31 + 5, 7, (0,)),                  # 2^31 rows apart: row 7's pair (FIRST)
    (2**31 - 50, 3, ()),                   # a straddling row copies row 3: row 3's pair (FIRST), not STRADDLE's
    (2**31 + 100, 2**30, (4,)),            # row 2^30's pair: in neither range, never reported
    (2**31 - 1, 2**31 - 3, (1, 2)),        # below 2^31, at the radius
    (2**31 + 3, 2**31 - 2, ()),            # across 2^31
    (2**31 + 9, 2**31 + 8, (0,)),          # three near copies: 8-9 at 1, 8-10 at 2, 9-10 at 3 (past the radius)
    (2**31 + 10, 2**31 + 8, (1, 2)),
    (N_PAST - 1, 2**31 - 7, (5,)),         # a straddling row and the last row
    (STRADDLE[1], STRADDLE[1] - 1, ()),    # the range's last query row and the row after the range: reported
    (STRADDLE[0], STRADDLE[0] - 1, (3,)),  # the row before the range and the range's first row: not reported
]
#: Every pair within RADIUS, by construction: the unplanted rows are distinct RM(3, 6) codewords (>= 8 bits
#: apart) and each copy is <= 2 bits from the row it copies, so rows of two codewords are >= 8 - 2 - 2 >
#: RADIUS apart; two copies of one row differ by their flipped bits (2^31 + 9 and 2^31 + 10: 3).
PAIRS = {(source, row, len(bits)) for row, source, bits in PLANTED}


def at_rows(pairs, rows, a_rows):
    """Pairs of codes[rows] at their row numbers, those with a in a_rows (start, stop)."""
    a, b = rows[pairs.a], rows[pairs.b]
    keep = (a >= a_rows[0]) & (a < a_rows[1])
    return Pairs(a[keep], b[keep], pairs.dist[keep])


def triples(pairs) -> set:
    return set(zip(pairs.a.tolist(), pairs.b.tolist(), pairs.dist.tolist()))


class TestPast2To31Rows:
    """2^31 + 2^20 one-word rows (16 GiB, resident on the device), row i the RM(3, 6) codeword of i, with
    the near copies of PLANTED: every pair within RADIUS is known, so the searches below are checked
    exactly (a CPU oracle on the rows they touch), not just for the planted rows coming back."""

    @pytest.fixture(scope="class")
    def past_2_31(self):
        import cupy

        if cupy.cuda.runtime.memGetInfo()[0] < 24 * 2**30:
            pytest.skip("needs 24 GiB of free device memory")
        codes = reed_muller_codes(N_PAST)
        for row, source, bits in PLANTED:
            codes[row, 0] = codes[source, 0] ^ np.uint64(sum(1 << b for b in bits))
        matcher = GpuMatcher(strict_device=True)
        index = matcher.index(codes)
        assert index.resident is not None
        yield codes, matcher, index
        index.resident = None  # the 16 GiB go back before the next tests
        cupy.get_default_memory_pool().free_all_blocks()

    def test_a_self_join_of_query_rows_past_2_31(self, past_2_31):
        """The self-join's own loop (GpuMatcher._range with upper=True, which self_join runs over all rows)
        for two ranges of query rows, each against every row above it: STRADDLE, in query blocks of 3000 and
        database blocks of 5120 rows that straddle 2^31, and FIRST, against the default 2^30-row database
        blocks (offsets 0, 2^30 and 2^31 from the queries: the kernel's 64-bit diag). Each equals the exact
        CPU self-join of its query rows plus every planted row and source (no other row is within RADIUS of
        anything), kept where a is a query row: a < b, distances, no pair twice, none missed; and those are
        the planted pairs of the range. The whole self-join, N^2 / 2 = 2.3e18 comparisons, would take about
        13 days at an H200's popcount ceiling (132 SMs x 1.98 GHz x 8 one-word comparisons a clock)."""
        codes, matcher, index = past_2_31
        planted_rows = [r for row, source, _ in PLANTED for r in (row, source)]
        blocked = GpuMatcher(strict_device=True, query_block=3000, db_block=5120)
        for runner, (start, stop), planted_pairs in ((blocked, STRADDLE, 6), (matcher, FIRST, 2)):
            got = runner._range(index, index, RADIUS, upper=True, query_rows=(start, stop))
            rows = np.unique(np.concatenate([np.arange(start, stop), planted_rows]))
            want = at_rows(exact().self_join(codes[rows], RADIUS).sorted(), rows, (start, stop))
            assert_pairs_equal(got, want)
            assert triples(want) == {p for p in PAIRS if start <= p[0] < stop} and len(want) == planted_pairs

    def test_search_past_2_31_rows(self, past_2_31):
        """Queries against the same rows: range search and top-k return rows past 2^31 with their 64-bit row
        numbers, ties to the lower row, exactly as the CPU on the rows within reach."""
        codes, matcher, index = past_2_31
        rows = np.array([5, 2**31 - 1, 2**31, 2**31 + 12345, N_PAST - 1], np.int64)
        queries = codes[rows].copy()
        queries[1] ^= np.uint64(0b101)  # 2 bits from row 2^31 - 1, and from row 2^31 - 3 (a planted pair)
        pairs = matcher.range_search(queries, index, RADIUS)
        near = np.unique(np.concatenate([rows, [r for row, source, _ in PLANTED for r in (row, source)]]))
        found = exact().range_search(queries, codes[near], RADIUS).sorted()
        assert_pairs_equal(pairs, Pairs(found.a, near[found.b], found.dist))
        assert triples(pairs) == {(0, 5, 0), (1, 2**31 - 3, 2), (1, 2**31 - 1, 2), (2, 2**31, 0),
                                  (3, 2**31 + 12345, 0), (4, 2**31 - 7, 1), (4, N_PAST - 1, 0)}
        idx, dist = matcher.topk(queries, index, 2)
        assert idx[:, 0].tolist() == [5, 2**31 - 3, 2**31, 2**31 + 12345, N_PAST - 1]
        assert dist[:, 0].tolist() == [0, 2, 0, 0, 0]
        assert idx[1].tolist() == [2**31 - 3, 2**31 - 1] and idx[4].tolist() == [N_PAST - 1, 2**31 - 7]
        assert dist[1].tolist() == [2, 2] and dist[4].tolist() == [0, 1]


def test_gpu_cosine_topk_equals_the_cpu_torch_code():
    import torch

    from simbench.match.cosine import TorchCudaCosineMatcher

    rng = np.random.default_rng(2)
    pool = rng.integers(-3, 4, (50, 64)).astype(np.float32) / 8  # exact products: ties stay ties
    x = pool[rng.integers(0, 50, 20_000)]
    on_gpu = TorchCudaCosineMatcher(strict_device=True, query_block=1000, database_block=3000)
    assert on_gpu.device == f"cuda:{torch.cuda.current_device()}"
    on_cpu = TorchCudaCosineMatcher(device="cpu", query_block=1000, database_block=3000)
    for k in (1, 10, 100):
        got, want = on_gpu.topk(x[:2000], x, k), on_cpu.topk(x[:2000], x, k)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


# ------------------------------------------------------------------------------------- compute-sanitizer


def sanitizer_workload(widths=(1, 3, 8, 16)):
    """Every kernel kind once, small: range (many-query, small-batch, early exit), a split launch,
    self-join, histogram top-k; exits non-zero on a wrong result."""
    rng = np.random.default_rng(3)
    matcher = GpuMatcher(strict_device=True, output_bytes=budget(300))
    for width in widths:
        q, db = planted(rng, 300, 1500, width, 4 * width)
        assert_pairs_equal(matcher.range_search(q, db, 4 * width), exact().range_search(q, db, 4 * width).sorted())
        assert_pairs_equal(matcher.range_search(q[:9], db, 30 * width),
                           exact().range_search(q[:9], db, 30 * width).sorted())
        assert_pairs_equal(matcher.self_join(db, 26 * width), exact().self_join(db, 26 * width).sorted())
        assert_topk_equal(matcher.topk(q, db, 12), exact().topk(q, db, 12))


def sanitizer() -> str:
    found = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not Path(found).exists():
        pytest.skip("compute-sanitizer (CUDA toolkit) is not installed on this machine")
    return found


@pytest.mark.parametrize("tool,widths", [("memcheck", (1, 3, 8, 16)), ("racecheck", (1, 8))])
def test_compute_sanitizer_finds_nothing(tool, widths):
    """memcheck: out-of-bounds and misaligned accesses; racecheck (slower: fewer widths): shared-memory
    hazards, i.e. a missing __syncthreads."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_gpu_device; "
            f"test_gpu_device.sanitizer_workload({widths!r})")
    proc = subprocess.run([sanitizer(), "--tool", tool, "--error-exitcode", "99", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=200, env={**os.environ, "CUPY_CACHE_IN_MEMORY": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "ERROR SUMMARY: 0 errors" in out or "RACECHECK SUMMARY: 0 hazards" in out, out[-2000:]
