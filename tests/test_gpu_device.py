"""On a real CUDA device only (`pytest -m gpu`; skipped, with the reason, elsewhere): GpuMatcher's kernel
variants, bounded output, device index and labels against the CPU reference, rows past 2^31, the GPU
cosine top-k, and compute-sanitizer memcheck / racecheck runs over a small workload of every kernel kind.
`python benchmarks/bench_gpu.py --all` runs these, then the benchmark."""
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

from test_gpu_kernels import assert_pairs_equal, assert_topk_equal, budget, planted, random_codes

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


def test_search_past_2_31_rows():
    """Queries against 2^31 + 2^20 one-word rows (16 GiB): planted copies past row 2^31 come back with
    their 64-bit row numbers, by range search and top-k. (A self-join of that many rows is N^2 / 2 =
    2.3e18 comparisons, weeks at the popcount ceiling: the offsets it uses are these same ones.)"""
    import cupy

    n = 2**31 + 2**20
    if cupy.cuda.runtime.memGetInfo()[0] < 24 * 2**30:
        pytest.skip("needs 24 GiB of free device memory")
    codes = np.arange(n, dtype=np.uint64)
    codes *= np.uint64(0x9E3779B97F4A7C15)  # a bijection of the row number: distinct, spread codes
    codes ^= codes >> np.uint64(31)
    rows = np.array([5, 2**31 - 1, 2**31, 2**31 + 12345, n - 1], np.int64)
    queries = codes[rows].copy()
    queries[1] ^= np.uint64(0b101)  # distance 2 from its row
    matcher = GpuMatcher(strict_device=True)
    index = matcher.index(codes)
    pairs = matcher.range_search(queries, index, 2)
    assert {(int(a), int(b)) for a, b in zip(pairs.a, pairs.b)} >= {(i, int(r)) for i, r in enumerate(rows)}
    assert (pairs.b[pairs.a == 4] == n - 1).any() and pairs.b.dtype == np.int64
    idx, dist = matcher.topk(queries, index, 2)
    assert idx[:, 0].tolist() == rows.tolist() and dist[:, 0].tolist() == [0, 2, 0, 0, 0]


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
