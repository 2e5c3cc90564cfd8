"""The CUDA kernels of kernels/hamming.cu and GpuMatcher, checked against the NumPy oracle.

Without a GPU (development machines, CI) three things still prove the kernels:
1. NVRTC (through CuPy's own bindings, no driver needed) compiles every instantiation for compute_90 (the
   common ones for compute_80 too), and ptxas (when present) finds no register spills in any kernel;
2. the same .cu, compiled by g++ with tests/cuda_emu/cuda_emu.h, runs on the CPU under the most
   adversarial legal thread schedule, driven by GpuMatcher's real host code, and must equal the oracle:
   tails, database chunks, launch blocks, radius boundaries, split launches, top-k ties, every width 1..16,
   the small-batch and early-exit variants;
3. the harness itself catches a missing __syncthreads and a divergent one (mutated copies of the kernel).
Tests marked `gpu` run the real kernels when a CUDA device exists and are skipped otherwise.
"""
from __future__ import annotations

import itertools
import logging
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from simbench.match import gpu
from simbench.match.gpu import GpuMatcher
from simbench.match.oracle import OracleMatcher
from simbench.types import Pairs

from cuda_emu.emulator import EmulatedDevice

HAS_GPU, GPU_WHY = gpu.cuda_device_status()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no CUDA device ({GPU_WHY})")
ORACLE = OracleMatcher()


# --------------------------------------------------------------------------------------------- helpers


def random_codes(rng, n, width, alphabet=None):
    """n random codes of `width` words; with `alphabet`, drawn from that many distinct codes (many ties)."""
    if alphabet is None:
        return rng.integers(0, np.iinfo(np.uint64).max, (n, width), dtype=np.uint64, endpoint=True)
    pool = rng.integers(0, np.iinfo(np.uint64).max, (alphabet, width), dtype=np.uint64, endpoint=True)
    return pool[rng.integers(0, alphabet, n)]


def flip_bits(rng, code, count):
    """A copy of one code with exactly `count` distinct bits flipped (Hamming distance `count`)."""
    out = code.copy()
    for bit in rng.choice(64 * len(code), size=count, replace=False):
        out[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return out


def planted(rng, nq, nd, width, radius):
    """Queries and database where many pairs sit exactly at radius - 1, radius and radius + 1."""
    db = random_codes(rng, nd, width)
    q = random_codes(rng, nq, width)
    targets = rng.choice(nd, size=nq, replace=False) if nq <= nd else rng.integers(0, nd, nq)
    for i in range(0, nq, 2):  # every other query is a near copy of some database row
        q[i] = flip_bits(rng, db[targets[i]], max(0, radius + (i // 2) % 3 - 1))
    return q, db


def reed_muller_generator() -> np.ndarray:
    """32 generator rows of the Reed-Muller code RM(3, 6), one uint64 each: bit p of a row is a monomial of
    degree <= 3 in the 6 bits of p (degrees 0, 1, 2 and the first 10 of degree 3 of the 42 monomials).
    They are independent, and any two distinct codewords differ in at least 2^(6 - 3) = 8 bits."""
    monomials = [m for degree in range(4) for m in itertools.combinations(range(6), degree)][:32]
    return np.array([sum(1 << p for p in range(64) if all(p >> v & 1 for v in m)) for m in monomials], np.uint64)


@lru_cache(maxsize=None)
def reed_muller_tables() -> tuple[np.ndarray, np.ndarray]:
    """The codewords of the messages 0..2^16 - 1 (low) and of h * 2^16 for h = 0..2^16 - 1 (high)."""
    tables = []
    for rows in np.split(reed_muller_generator(), 2):
        table = np.zeros(1, np.uint64)
        for row in rows:  # messages 0..2^k - 1 of these rows: the table so far, then it ^ the next row
            table = np.concatenate([table, table ^ row])
        tables.append(table)
    return tables[0], tables[1]


def reed_muller_codewords(messages: np.ndarray) -> np.ndarray:
    """(len, 1): the RM(3, 6) codeword of each message < 2^32 (the code is linear: the low and high 16 bits'
    codewords XORed)."""
    low, high = reed_muller_tables()
    messages = np.asarray(messages, np.int64)
    return (low[messages & 0xFFFF] ^ high[messages >> 16]).reshape(-1, 1)


def reed_muller_codes(n: int) -> np.ndarray:
    """(n, 1) one-word codes, row i the codeword of message i (n <= 2^32): any two rows are at distance >= 8,
    so a near copy planted at distance e of a row is the only row within 7 - e of it. Built as one broadcast
    XOR of the two tables (2^31 rows in seconds, 8 bytes a row)."""
    low, high = reed_muller_tables()
    blocks = -(-n // 2**16)
    codes = np.empty((blocks, 2**16), np.uint64)
    np.bitwise_xor(high[:blocks, None], low[None, :], out=codes)
    return codes.reshape(-1, 1)[:n]


def budget(pairs: int) -> int:
    """output_bytes of a GpuMatcher whose launches hold `pairs` pairs."""
    return pairs * gpu.BYTES_PER_PAIR


def assert_pairs_equal(got: Pairs, want: Pairs):
    assert len(got) == len(want), f"{len(got)} pairs, oracle {len(want)}"
    assert np.array_equal(got.a, want.a) and np.array_equal(got.b, want.b)
    assert np.array_equal(got.dist, want.dist)
    assert got.a.dtype == np.int64 and got.b.dtype == np.int64 and got.dist.dtype == np.int32


def assert_topk_equal(got, want):
    assert np.array_equal(got[0], want[0]), "top-k rows differ from the oracle"
    assert np.array_equal(got[1], want[1]), "top-k distances differ from the oracle"
    assert got[0].dtype == np.int64 and got[1].dtype == np.int32


def test_reed_muller_codes_are_8_bits_apart():
    """The codes of the test past 2^31 rows (tests/test_gpu_device.py): the tables equal the definition
    (the XOR of the generator rows of the message's bits), and sampled rows near 0, 2^31 and 2^32 are all
    at distance >= 8 (RM(3, 6)'s minimum distance, which the test's exact expectations rest on)."""
    rng = np.random.default_rng(0)
    gen = reed_muller_generator()
    messages = np.concatenate([rng.integers(0, 2**32, 2000), np.arange(2**31 - 1000, 2**31 + 1000),
                               np.arange(2000), np.arange(2**32 - 1000, 2**32)])
    defined = [np.bitwise_xor.reduce(gen[[b for b in range(32) if m >> b & 1]], initial=np.uint64(0))
               for m in messages[:3000]]
    codes = reed_muller_codewords(messages)
    assert codes[:3000, 0].tolist() == [int(c) for c in defined]
    assert np.array_equal(reed_muller_codes(3 * 2**16 + 5), reed_muller_codewords(np.arange(3 * 2**16 + 5)))
    assert len(reference().self_join(codes, 7)) == 0  # the exact CPU kernel: 7000^2 pairs are many for the oracle
    assert len(reference().self_join(codes, 8)) > 0  # the bound is reached: 8 is the distance, not a margin


# --------------------------------------------------------------------------------------- 1. NVRTC


def nvrtc_compile(source: str, names, arch: str):
    from cupy_backends.cuda.libs import nvrtc

    try:
        nvrtc.getVersion()
    except Exception as exc:  # the library, not the kernel, is missing: say how to get it
        pytest.fail(f"libnvrtc cannot be loaded ({exc}); install it with `pip install -e .[test]`")
    prog = nvrtc.createProgram(source, "hamming.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "-std=c++17"])
        except nvrtc.NVRTCError as exc:
            pytest.fail(f"NVRTC failed for {arch}: {exc}\n{nvrtc.getProgramLog(prog)}")
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        return ptx, lowered, nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


#: The instantiations of the common widths (64 to 1024 bits), compiled for compute_80 as well.
COMMON = tuple(n for n in gpu.all_name_expressions() if re.search(r"<(1|2|4|8|16)[,>]", n))


@pytest.fixture(scope="module", params=[("compute_80", COMMON), ("compute_90", gpu.all_name_expressions())],
                ids=["compute_80", "compute_90"])
def ptx(request):
    arch, names = request.param
    text, lowered, log = nvrtc_compile(gpu.kernel_source(), names, arch)
    return arch, names, text, lowered, log


def test_nvrtc_compiles_every_instantiation(ptx):
    arch, names, text, lowered, log = ptx
    assert f".target sm_{arch.split('_')[1]}" in text
    assert "warning" not in log.lower(), log
    assert len(names) >= 16 * 3 if arch == "compute_90" else len(names) >= 5 * 3
    for name in names:
        assert re.search(rf"\.entry {re.escape(lowered[name])}\s*\(", text), f"{name} missing from the {arch} PTX"
    # The hot loop uses the 64-bit popcount and shared-memory tiles, and no distance matrix is stored.
    assert "popc.b64" in text and ".shared" in text


def test_ptxas_finds_no_register_spills(ptx, tmp_path):
    arch, names, text, lowered, _ = ptx
    if arch != "compute_90":
        pytest.skip("checked for sm_90 (the H100/H200 target)")
    ptxas = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
    if not Path(ptxas).exists():
        pytest.skip("ptxas (CUDA toolkit) is not installed on this machine")
    (tmp_path / "k.ptx").write_text(text)
    out = subprocess.run([ptxas, "-arch=sm_90", "-v", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True, check=True).stderr
    # ptxas -v prints, per entry: "Compiling entry function 'NAME'", then "... N bytes spill stores ...".
    info = dict(re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?bytes spill loads)", out, re.S))
    for name in names:
        line = info[lowered[name]]
        assert "0 bytes spill stores, 0 bytes spill loads" in line, f"{name}: {line}"


# ------------------------------------------------------------------------------- 2. CPU emulation


@pytest.fixture(scope="module")
def emu():
    return EmulatedDevice(target_blocks=4, names=gpu.all_name_expressions())  # one g++ run, cached


# Sizes chosen to leave tails everywhere: 256-row tiles, 128 threads x QPT queries per block, launch blocks.
CASES = [  # (width, queries, database rows)
    (1, 600, 1300),
    (2, 400, 900),
    (3, 300, 700),   # an odd width: its own kernel, no padding
    (4, 300, 700),
    (8, 300, 650),
    (16, 130, 550),
]


@pytest.mark.parametrize("width,nq,nd", CASES)
@pytest.mark.parametrize("target_blocks", [1, 9])  # one chunk of many tiles, or many one-tile chunks
def test_emulated_range_search_equals_oracle(emu, width, nq, nd, target_blocks):
    rng = np.random.default_rng(width * 100 + target_blocks)
    radius = 7 * width
    q, db = planted(rng, nq, nd, width, radius)
    emu.target_blocks = target_blocks
    matcher = GpuMatcher(device=emu, query_block=257, db_block=450, output_bytes=budget(64))
    want = ORACLE.range_search(q, db, radius)
    assert len(want) >= nq // 3  # the planted pairs are there
    assert_pairs_equal(matcher.range_search(q, db, radius), want)
    assert matcher.device == "emulated" and matcher.fallback is False


@pytest.mark.parametrize("width", [1, 4, 8])
def test_emulated_radius_boundaries_are_inclusive(emu, width):
    """Database rows at every distance 0..64W from the query: radius r keeps exactly distances <= r."""
    rng = np.random.default_rng(width)
    bits = 64 * width
    query = random_codes(rng, 1, width)
    db = np.stack([flip_bits(rng, query[0], d) for d in range(bits + 1)])
    db = db[rng.permutation(len(db))]
    dist = ORACLE.range_search(query, db, bits).dist
    matcher = GpuMatcher(device=emu, output_bytes=budget(8))
    for radius in [-1, 0, 1, bits // 2, bits - 1, bits]:
        got = matcher.range_search(query, db, radius)
        assert len(got) == radius + 1 if radius >= 0 else len(got) == 0
        assert_pairs_equal(got, ORACLE.range_search(query, db, radius))
        assert set(got.dist.tolist()) == set(range(radius + 1))
    assert sorted(dist.tolist()) == list(range(bits + 1))


@pytest.mark.parametrize("capacity,nq,nd", [(3, 30, 70), (100, 300, 800), (1 << 16, 300, 800)])
def test_emulated_overflow_splits_and_stays_exact(emu, capacity, nq, nd):
    """A radius near the mean distance gives thousands of pairs: a small buffer must overflow, and the
    launch is split (never grown) until every part fits."""
    rng = np.random.default_rng(capacity)
    q, db = random_codes(rng, nq, 1), random_codes(rng, nd, 1)
    radius = 28
    emu.target_blocks = 4
    want = ORACLE.range_search(q, db, radius)
    matcher = GpuMatcher(device=emu, output_bytes=budget(capacity), db_block=nd // 2 + 1)
    assert_pairs_equal(matcher.range_search(q, db, radius), want)
    launches, splits = matcher.stats["launches"], matcher.stats["splits"]
    if capacity < len(want) // 2:  # each of the 2 launches overflows at first
        assert splits >= 2 and launches > 2 + splits
    else:
        assert splits == 0 and launches == 2


def test_emulated_kernel_counts_past_capacity_and_writes_nothing_there(emu):
    """The kernel's own contract: counter = all matches; slots >= capacity untouched; the rest exact."""
    rng = np.random.default_rng(5)
    width = 4
    q, db = random_codes(rng, 200, width), random_codes(rng, 300, width)
    radius = 120
    want = ORACLE.range_search(q, db, radius)
    capacity = len(want) // 3
    counter = np.zeros(1, np.uint64)
    out = [np.full(len(want) + 50, -7, np.int32) for _ in range(3)]
    radii = np.full(len(q), radius, np.int32)
    args = (q, np.int32(len(q)), db, np.int32(len(db)), np.int32(256), radii, np.int32(0), np.int64(0),
            counter, np.uint64(capacity), *out)
    emu.kernel(gpu.range_kernel(width))((1, 2), (128,), args)
    assert int(counter[0]) == len(want)
    assert all((o[capacity:] == -7).all() for o in out)
    got = {(a, b, d) for a, b, d in zip(*(o[:capacity] for o in out))}
    assert len(got) == capacity and got <= set(zip(want.a.tolist(), want.b.tolist(), want.dist.tolist()))


@pytest.mark.parametrize("width,n", [(1, 900), (4, 520), (8, 400)])
def test_emulated_self_join_equals_oracle(emu, width, n):
    rng = np.random.default_rng(width + 7)
    codes = random_codes(rng, n, width, alphabet=n // 3)  # many exact duplicates: distance-0 pairs
    codes[::5] = codes[::5] ^ np.uint64(3)
    # A random walk in the first half: row i + 1 is row i with one bit flipped, so the pairs crowd the
    # diagonal, where the self-join's triangle (d > q) and its skipped rows must be exact.
    for i in range(1, n // 2):
        codes[i] = flip_bits(rng, codes[i - 1], 1)
    radius = 2
    emu.target_blocks = 6
    matcher = GpuMatcher(device=emu, query_block=201, db_block=330, output_bytes=budget(50))
    want = ORACLE.self_join(codes, radius)
    got = matcher.self_join(codes, radius)
    assert_pairs_equal(got, want)
    assert (got.a < got.b).all()


@pytest.mark.parametrize("width,nq,nd", [(1, 300, 700), (2, 150, 600), (4, 200, 530), (8, 140, 450)])
@pytest.mark.parametrize("k", [1, 5, 17, 100, 300])  # k > 256 ran on the CPU before the histogram top-k
def test_emulated_topk_equals_oracle_with_ties(emu, width, nq, nd, k):
    rng = np.random.default_rng(width * 1000 + k)
    db = random_codes(rng, nd, width, alphabet=40)  # 40 distinct codes: ties at every distance
    q = random_codes(rng, nq, width, alphabet=60)
    emu.target_blocks = 5
    matcher = GpuMatcher(device=emu, query_block=129, db_block=260)
    assert_topk_equal(matcher.topk(q, db, k), ORACLE.topk(q, db, k))


def test_emulated_topk_with_fewer_rows_than_k(emu):
    rng = np.random.default_rng(3)
    q, db = random_codes(rng, 20, 2), random_codes(rng, 7, 2)
    got = GpuMatcher(device=emu).topk(q, db, 12)
    assert_topk_equal(got, ORACLE.topk(q, db, 12))
    assert (got[0][:, 7:] == -1).all() and (got[1][:, 7:] == np.iinfo(np.int32).max).all()


def test_emulated_empty_inputs_and_wide_codes(emu, caplog):
    rng = np.random.default_rng(4)
    matcher = GpuMatcher(device=emu)
    none = np.zeros((0, 4), np.uint64)
    assert len(matcher.range_search(none, random_codes(rng, 5, 4), 10)) == 0
    idx, dist = matcher.topk(random_codes(rng, 3, 4), none, 2)
    assert (idx == -1).all() and idx.shape == (3, 2)
    with pytest.raises(ValueError):
        matcher.range_search(random_codes(rng, 3, 2), random_codes(rng, 3, 4), 1)
    # Codes wider than the widest kernel (17 words) run on the CPU, and say so.
    wide_q, wide_db = random_codes(rng, 20, 17), random_codes(rng, 30, 17)
    with caplog.at_level(logging.WARNING, logger="simbench.match.gpu"):
        got = matcher.range_search(wide_q, wide_db, 540)
    assert_pairs_equal(got, ORACLE.range_search(wide_q, wide_db, 540))
    assert "widest kernel" in caplog.text
    assert matcher.fallback is True and matcher.device == "emulated+cpu"  # both kinds of call ran


@pytest.mark.parametrize("mode,seed", [(1, 0), (2, 11)])
def test_emulated_results_do_not_depend_on_the_thread_schedule(emu, mode, seed):
    rng = np.random.default_rng(9)
    q, db = planted(rng, 300, 600, 2, 9)
    emu.target_blocks = 3
    try:
        emu.set_schedule(mode, seed)
        got = GpuMatcher(device=emu, output_bytes=budget(10)).range_search(q, db, 9)
        top = GpuMatcher(device=emu).topk(q, db, 7)
    finally:
        emu.set_schedule(0)
    assert_pairs_equal(got, ORACLE.range_search(q, db, 9))
    assert_topk_equal(top, ORACLE.topk(q, db, 7))


def test_emulated_launch_checks_argument_types(emu):
    q = np.zeros((4, 1), np.uint64)
    counter = np.zeros(1, np.uint64)
    out = np.zeros(4, np.int32)
    good = [q, np.int32(4), q, np.int32(4), np.int32(256), np.zeros(4, np.int32), np.int32(0), np.int64(0),
            counter, np.uint64(4), out, out, out]
    emu.kernel(gpu.range_kernel(1))((1, 1), (128,), good)
    assert int(counter[0]) == 16  # 4 x 4 zero codes, all at distance 0; 4 of them written
    bad = list(good)
    bad[4] = 256  # a Python int: its size on the GPU would be a guess
    with pytest.raises(TypeError, match="NumPy int32 scalar"):
        emu.kernel(gpu.range_kernel(1))((1, 1), (128,), bad)
    bad = list(good)
    bad[10] = out.astype(np.int64)
    with pytest.raises(TypeError, match="int32 array"):
        emu.kernel(gpu.range_kernel(1))((1, 1), (128,), bad)
    with pytest.raises(RuntimeError, match="invalid launch configuration"):
        emu.kernel(gpu.range_kernel(1))((1, 70000), (128,), good)


# ------------------------------------------------------------ kernel variants: widths, small batch, early exit


@pytest.mark.parametrize("width", gpu.WIDTHS)
def test_emulated_every_width_equals_oracle(emu, width):
    """Each width 1..16 has its own kernels (no padding): range, self-join and top-k against the oracle."""
    rng = np.random.default_rng(width + 50)
    radius = 20 * width
    q, db = planted(rng, 70, 300, width, radius)
    db[7] = db[3]  # a tie for top-k
    matcher = GpuMatcher(device=emu, output_bytes=budget(500))
    assert_pairs_equal(matcher.range_search(q, db, radius), ORACLE.range_search(q, db, radius))
    assert_pairs_equal(matcher.self_join(db, 26 * width), ORACLE.self_join(db, 26 * width))
    assert_topk_equal(matcher.topk(q, db, 9), ORACLE.topk(q, db, 9))
    assert matcher.device == "emulated" and matcher.fallback is False


def test_widths_compile_on_first_use_only(tmp_path):
    """A fresh device compiles nothing but the probe until a call needs a width; then only that width's
    kernels for the variant the call uses."""
    dev = EmulatedDevice(target_blocks=2)
    matcher = GpuMatcher(device=dev)
    assert dev.compiled == [gpu.range_kernel(1, 0, small=True)]  # the probe
    rng = np.random.default_rng(0)
    q, db = random_codes(rng, 10, 5), random_codes(rng, 40, 5)
    matcher.range_search(q, db, 200)
    assert dev.compiled[1:] == [gpu.range_kernel(5, 0, small=True)]
    assert all("<5," in name for name in dev.compiled[1:])


def test_warm_up_compiles_the_kernels_of_the_width_in_use():
    dev = EmulatedDevice(target_blocks=2)
    GpuMatcher(device=dev).warm_up(np.zeros((5, 2), np.uint64))
    assert set(dev.compiled[1:]) == set(gpu.width_name_expressions(2))  # after the probe


@pytest.mark.parametrize("width,nq", [(1, 1), (1, 40), (2, 255), (8, 3), (8, 127), (16, 63)])
def test_emulated_small_batch_kernel_equals_oracle(emu, width, nq):
    """Fewer queries than half the many-query kernel's slots: the small-batch kernel (threads own database
    rows, queries in shared memory), with groups of 32 queries and database chunks."""
    assert GpuMatcher._is_small(width, nq)
    rng = np.random.default_rng(nq + width)
    radius = 8 * width
    q, db = planted(rng, nq, 700, width, radius)
    emu.target_blocks = 7
    matcher = GpuMatcher(device=emu, db_block=333, output_bytes=budget(40))
    assert_pairs_equal(matcher.range_search(q, db, radius), ORACLE.range_search(q, db, radius))
    assert_pairs_equal(matcher.self_join(q, 30 * width), ORACLE.self_join(q, 30 * width))
    assert_topk_equal(matcher.topk(q, db, 5), ORACLE.topk(q, db, 5))


def test_kernel_choice_follows_the_query_count():
    """The many-query kernel from half its slots on (128 threads x QPT queries per block)."""
    assert GpuMatcher._is_small(1, 255) and not GpuMatcher._is_small(1, 256)
    assert GpuMatcher._is_small(8, 127) and not GpuMatcher._is_small(8, 128)
    assert GpuMatcher._is_small(16, 63) and not GpuMatcher._is_small(16, 64)


def test_early_exit_words_follow_the_radius():
    assert gpu.early_words(8, 31) == 2  # 512 bits at radius 31: stop after 2 of 8 words
    assert gpu.early_words(8, 15) == 1 and gpu.early_words(8, 16) == 2
    assert gpu.early_words(8, 41) == 2 and gpu.early_words(8, 42) == 4
    assert gpu.early_words(8, 95) == 4 and gpu.early_words(8, 96) == 0
    assert gpu.early_words(1, 0) == 0 and gpu.early_words(2, 3) == 1 and gpu.early_words(4, 40) == 2


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("width,early", [(2, 1), (8, 1), (8, 2), (8, 4), (16, 4)])
def test_emulated_early_exit_kernels_equal_the_full_comparison(emu, width, early, small):
    """Rows at distance radius and radius + 1 with their differing bits in the first words, the last words,
    or spread: the early-exit kernel finds exactly the oracle's pairs, as the E = 0 kernel does."""
    rng = np.random.default_rng(width * 10 + early)
    radius = 5 * early
    nq = 20 if small else 300
    q = random_codes(rng, nq, width)
    rows = []
    for i in range(nq):
        for dist in (radius - 1, radius, radius + 1):
            row = q[i].copy()
            words = [0] if i % 3 == 0 else [width - 1] if i % 3 == 1 else range(width)  # where the bits differ
            bits = rng.choice([64 * w + b for w in words for b in range(64)], size=dist, replace=False)
            for bit in bits:
                row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
            rows.append(row)
    db = np.concatenate([np.array(rows), random_codes(rng, 200, width)])
    want = ORACLE.range_search(q, db, radius)
    assert len(want) >= 2 * nq
    for e in (0, early):
        counter = np.zeros(1, np.uint64)
        out = [np.zeros(len(want) + 10, np.int32) for _ in range(3)]
        args = (q, np.int32(nq), db, np.int32(len(db)), np.int32(256), np.full(nq, radius, np.int32), np.int32(0),
                np.int64(0), counter, np.uint64(len(want) + 10), *out)
        per_block = 32 if small else 128 * gpu.range_qpt(width)
        emu.kernel(gpu.range_kernel(width, e, small))((-(-nq // per_block), -(-len(db) // 256)), (128,), args)
        got = Pairs(*(o[: int(counter[0])].astype(np.int64) for o in out[:2]), out[2][: int(counter[0])]).sorted()
        assert_pairs_equal(got, want)


@pytest.mark.parametrize("width", [1, 3, 8, 16])
def test_emulated_histogram_kernel_counts_every_distance(emu, width):
    """hamming_histogram adds, per query, the number of rows at each distance 0..64W (into what is there)."""
    rng = np.random.default_rng(width)
    q = random_codes(rng, 45, width)
    db = np.concatenate([random_codes(rng, 500, width, alphabet=30), q[:5]])
    bins = 64 * width + 1
    hist = np.full((len(q), bins), 2, np.uint64)  # the kernel adds to what is there
    qb = gpu.histogram_queries(width)
    emu.kernel(gpu.histogram_kernel(width))((-(-len(q) // qb), 3), (128,),
                                             (q, np.int32(len(q)), db, np.int32(len(db)), np.int32(200), hist))
    dist = ORACLE.range_search(q, db, 64 * width)
    want = np.full((len(q), bins), 2, np.uint64)
    np.add.at(want, (dist.a, dist.dist), 1)
    assert np.array_equal(hist, want)


def test_emulated_topk_ties_go_to_the_lower_row_across_blocks_and_splits(emu):
    """Many rows at the k-th distance, spread over database blocks and launches split by a small budget:
    the lowest rows win, as in the oracle; k above the rows gives -1 / max int."""
    rng = np.random.default_rng(12)
    base = random_codes(rng, 6, 2)
    db = base[rng.integers(0, 6, 600)]
    q = base[rng.integers(0, 6, 100)]
    matcher = GpuMatcher(device=emu, query_block=70, db_block=257, output_bytes=budget(1000))
    for k in (1, 7, 150, 601):
        assert_topk_equal(matcher.topk(q, db, k), ORACLE.topk(q, db, k))
    assert matcher.stats["splits"] >= 1


# ----------------------------------------------------- 3. the harness catches barrier bugs (mutants)


def mutant(tmp_path, old, new):
    source = gpu.kernel_source()
    assert old in source
    path = tmp_path / "hamming.cu"
    path.write_text(source.replace(old, new, 1))
    return EmulatedDevice(target_blocks=1, source=path, names=[gpu.range_kernel(1), gpu.range_kernel(1, 0, True)])


def test_harness_catches_a_missing_syncthreads(tmp_path):
    """Without the barrier after the compare loop, a thread reloads the tile while others still read it."""
    old = "        __syncthreads();  // the next tile overwrites shared memory"
    dev = mutant(tmp_path, old, "")
    rng = np.random.default_rng(1)
    q, db = planted(rng, 600, 1000, 1, 5)  # enough queries for the many-query kernel
    got = GpuMatcher(device=dev).range_search(q, db, 5)
    want = ORACLE.range_search(q, db, 5)
    assert len(got) != len(want) or not np.array_equal(got.b, want.b)


def test_harness_catches_a_divergent_syncthreads(tmp_path):
    """A thread that returns while the others wait at __syncthreads is an error, not a hang."""
    old = "    if (d_begin >= d_end) return;"
    dev = mutant(tmp_path, old, "    if (d_begin >= d_end || threadIdx.x == 5) return;")
    rng = np.random.default_rng(2)
    with pytest.raises(RuntimeError, match="__syncthreads reached by only 127 of 128 threads"):
        GpuMatcher(device=dev).range_search(random_codes(rng, 300, 1), random_codes(rng, 10, 1), 3)


# ------------------------------------------------------------------ matcher: fallback and strictness


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu, "cuda_device_status", lambda: (False, "cupy.cuda.runtime.getDeviceCount() == 0"))


def test_fallback_runs_the_cpu_kernel_and_says_so(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="simbench.match.gpu"):
        matcher = GpuMatcher()
    assert matcher.device == "cpu" and matcher.fallback is True and matcher.name == "gpu"
    assert "no CUDA device" in caplog.text and "ExactMatcher" in caplog.text
    rng = np.random.default_rng(0)
    q, db = planted(rng, 60, 200, 4, 20)
    assert_pairs_equal(matcher.range_search(q, db, 20).sorted(), ORACLE.range_search(q, db, 20))
    assert_pairs_equal(matcher.self_join(db, 100).sorted(), ORACLE.self_join(db, 100))
    assert_topk_equal(matcher.topk(q, db, 5), ORACLE.topk(q, db, 5))


def test_strict_device_without_gpu_is_a_clear_error(no_gpu):
    with pytest.raises(RuntimeError, match=r"strict_device=True.*no.*getDeviceCount\(\) == 0"):
        GpuMatcher(strict_device=True)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a CUDA device")
def test_this_machine_reports_no_device():
    ok, why = gpu.cuda_device_status()
    assert not ok and why
    assert GpuMatcher().fallback is True


# ------------------------------------------------------------------------------ on a real GPU only


def reference():
    """The oracle for small inputs (it holds Q x N x bits bytes); the exact CPU kernel, tested against the
    oracle in its own tests, for larger ones."""
    from simbench.match.exact import ExactMatcher

    return ExactMatcher()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("width,nq,nd", [(1, 3000, 70001), (4, 1500, 30001), (8, 1200, 20011), (3, 300, 3000)])
def test_gpu_range_search_equals_reference(width, nq, nd):
    rng = np.random.default_rng(width)
    radius = 6 * width
    q, db = planted(rng, nq, nd, width, radius)
    matcher = GpuMatcher(strict_device=True, query_block=1000, db_block=25000, output_bytes=budget(16))
    assert matcher.device.startswith("cuda:") and matcher.fallback is False
    small = nq * nd * 64 * width <= 2e8
    want = ORACLE.range_search(q, db, radius) if small else reference().range_search(q, db, radius).sorted()
    assert_pairs_equal(matcher.range_search(q, db, radius), want)
    assert matcher.stats["splits"] >= 1  # 16 pairs a launch always overflow here


@pytest.mark.gpu
@needs_gpu
def test_gpu_self_join_and_topk_equal_reference():
    rng = np.random.default_rng(1)
    codes = random_codes(rng, 5000, 8, alphabet=1500)
    codes[:2000] = np.cumsum(rng.integers(0, 2, (2000, 8), dtype=np.uint64), axis=0)  # near rows, near indices
    matcher = GpuMatcher(strict_device=True, query_block=1100, db_block=1700, output_bytes=budget(100))
    assert_pairs_equal(matcher.self_join(codes, 3), reference().self_join(codes, 3).sorted())
    q = random_codes(rng, 700, 8, alphabet=50)
    for k in (1, 10, 64, 200, 1000):
        assert_topk_equal(matcher.topk(q, codes, k), reference().topk(q, codes, k))
    small_q, small_db = q[:100], codes[:400]
    assert_topk_equal(matcher.topk(small_q, small_db, 17), ORACLE.topk(small_q, small_db, 17))
    assert_pairs_equal(matcher.self_join(codes[:600], 40), ORACLE.self_join(codes[:600], 40))
