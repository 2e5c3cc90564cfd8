"""GpuMatcher's host side without a GPU: honest labels, argument checks, the bounded output (split on
overflow), the device index (uploads counted by the emulated device, streaming when the database does not
fit) and the toolkit pins of the `gpu` extra. The kernels run under the CPU emulation (tests/cuda_emu);
results are checked against the NumPy oracle."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simbench.match import gpu
from simbench.match.gpu import GpuMatcher
from simbench.match.oracle import OracleMatcher
from simbench.types import Pairs

from cuda_emu.emulator import EmulatedDevice
from test_gpu_kernels import assert_pairs_equal, assert_topk_equal, budget, planted, random_codes

ORACLE = OracleMatcher()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emu():
    return EmulatedDevice(target_blocks=4, names=gpu.all_name_expressions())  # the library test_gpu_kernels built


# ----------------------------------------------------------------------------------------------- labels


class NoCompiler(EmulatedDevice):
    """An emulated device whose NVRTC fails for one width (as a missing or broken libnvrtc would)."""

    def __init__(self, broken_width: int, **kw):
        self.broken = f"<{broken_width},"
        super().__init__(**kw)

    def kernel(self, name):
        if self.broken in name:
            raise RuntimeError("NVRTC_ERROR_COMPILATION (emulated)")
        return super().kernel(name)


def test_a_call_the_kernels_cannot_compile_runs_on_the_cpu_and_is_labelled(caplog):
    dev = NoCompiler(7, names=gpu.all_name_expressions())
    matcher = GpuMatcher(device=dev)
    rng = np.random.default_rng(1)
    q, db = planted(rng, 20, 60, 1, 5)
    assert_pairs_equal(matcher.range_search(q, db, 5), ORACLE.range_search(q, db, 5))
    assert matcher.device == "emulated" and matcher.fallback is False and matcher.fallback_reasons == []
    q7, db7 = random_codes(rng, 20, 7), random_codes(rng, 50, 7)
    with caplog.at_level(logging.WARNING, logger="simbench.match.gpu"):
        got = matcher.range_search(q7, db7, 200)
    assert_pairs_equal(got, ORACLE.range_search(q7, db7, 200))
    assert_topk_equal(matcher.topk(q7, db7, 4), ORACLE.topk(q7, db7, 4))
    assert matcher.fallback is True and matcher.device == "emulated+cpu"
    assert len(matcher.fallback_reasons) == 2  # one reason per kernel that failed, each logged once
    assert "hamming_range_small<7, 0>" in matcher.fallback_reasons[0]
    assert "hamming_histogram<7, " in matcher.fallback_reasons[1]
    assert "NVRTC_ERROR_COMPILATION" in caplog.text and "env.fallback = true" in caplog.text
    with pytest.raises(RuntimeError, match=r"strict_device=True\) cannot run this call on the GPU.*<7,"):
        GpuMatcher(device=dev, strict_device=True).topk(q7, db7, 4)


def test_only_cpu_calls_read_cpu():
    """With no usable device at all, every call is a CPU call: device "cpu", fallback True."""
    broken = NoCompiler(1)  # the probe itself needs the one-word kernel
    matcher = GpuMatcher(device=broken)
    assert matcher.device == "cpu" and matcher.fallback is True
    assert "the device probe failed" in matcher.fallback_reasons[0]
    rng = np.random.default_rng(2)
    q, db = planted(rng, 30, 80, 2, 6)
    assert_pairs_equal(matcher.range_search(q, db, 6), ORACLE.range_search(q, db, 6))
    assert matcher.device == "cpu" and matcher.fallback is True


def test_a_probe_with_a_wrong_answer_means_no_device(tmp_path):
    """The device check launches the probe and checks its pairs: a kernel that drops the pairs at the
    radius (< for <=) fails it, and the matcher runs on the CPU, saying why."""
    source = gpu.kernel_source()
    old = "            if (dist <= qrad[i] && (!upper || d + diag > (long long)(q_first + i)))"
    assert old in source
    (tmp_path / "hamming.cu").write_text(source.replace(old, old.replace("<=", "<")))
    dev = EmulatedDevice(source=tmp_path / "hamming.cu")
    matcher = GpuMatcher(device=dev)
    assert matcher.device == "cpu" and matcher.fallback is True
    assert "probe kernel returned 1 pairs" in matcher.fallback_reasons[0]
    with pytest.raises(RuntimeError, match="needs a working CUDA GPU: the device probe failed"):
        GpuMatcher(device=dev, strict_device=True)


def test_the_run_records_where_the_matcher_ran():
    """Method.device / fallback (what run.py writes to env.device / env.fallback) follow the matcher's calls."""
    from simbench.methods.base import Method

    class Probe(Method):
        extractor = None
        threshold = 0.5

        def score_pairs(self, features):
            raise NotImplementedError

    method = Probe()
    method.matcher = GpuMatcher(device=NoCompiler(17, names=gpu.all_name_expressions()))
    rng = np.random.default_rng(3)
    method.matcher.self_join(random_codes(rng, 30, 3), 60)
    assert (method.device, method.fallback) == ("emulated", False)
    method.matcher.self_join(random_codes(rng, 30, 17), 500)  # wider than the widest kernel
    assert (method.device, method.fallback) == ("emulated+cpu", True)
    assert "1088-bit codes exceed the widest kernel" in method.matcher.fallback_reasons[0]


# --------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("kwargs,match", [
    ({"query_block": 0}, r"query_block must be an integer in \[1, 2147483647\]"),
    ({"query_block": 2**31}, "query_block"),
    ({"db_block": -5}, "db_block"),
    ({"db_block": 2.5}, "db_block"),
    ({"output_bytes": gpu.BYTES_PER_PAIR - 1}, "output_bytes"),
])
def test_sizes_out_of_range_are_clear_errors(emu, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GpuMatcher(device=emu, **kwargs)


def test_k_and_radius_are_checked_or_normalised(emu):
    rng = np.random.default_rng(4)
    q, db = random_codes(rng, 10, 2), random_codes(rng, 40, 2)
    matcher = GpuMatcher(device=emu)
    for k in (-1, 2**31, 1.5, "3"):
        with pytest.raises(ValueError, match="k must be an integer"):
            matcher.topk(q, db, k)
    # A radius past every possible distance (and past int32) is every pair; below zero, none.
    assert_pairs_equal(matcher.range_search(q, db, 2**40), ORACLE.range_search(q, db, 128))
    assert len(matcher.range_search(q, db, 400)) == 400
    assert len(matcher.range_search(q, db, -3)) == 0
    assert gpu.checked_int("x", np.int64(5), 0) == 5


def test_row_indices_above_32_bits_survive_the_top_k_selection():
    """The top-k keys are 64-bit: a global row offset past 2^32 comes back whole (checked on the host code
    that turns launch-local rows into global ones, with a database block given at that offset)."""
    from types import SimpleNamespace

    matcher = GpuMatcher.__new__(GpuMatcher)
    matcher._dev = SimpleNamespace(xp=np, synchronize=lambda: None, target_blocks=1,
                                   to_host=lambda a: np.array(a, copy=True))
    matcher.stats = {"launches": 0, "splits": 0, "kernel_s": 0.0}

    def fake_kernel(grid, block, args):  # two pairs, rows 1 and 0 of the launch
        counter, out = args[8], args[10:]
        counter[0] = 2
        out[0][:2], out[1][:2], out[2][:2] = [0, 0], [1, 0], [3, 3]

    output = (np.zeros(1, np.uint64), [np.empty(8, np.int32) for _ in range(3)])
    offset = 5 * 2**32 + 7
    parts = matcher._range_launch(fake_kernel, False, np.zeros((1, 1), np.uint64), 2**33,
                                  np.zeros((2, 1), np.uint64), offset, np.zeros(1, np.int32), False, output, keep=1)
    assert parts[0].a.tolist() == [2**33] and parts[0].b.tolist() == [offset]  # the tie went to the lower row


# ------------------------------------------------------------------------------ bounded output (splits)


def test_a_tiny_output_budget_splits_launches_and_equals_the_oracle(emu):
    """Every launch of this search finds far more pairs than 50: it is split (queries first, then one
    query's database range), never grown, and the pairs still come out exact and in (a, b) order."""
    rng = np.random.default_rng(5)
    pool = random_codes(rng, 4, 1)  # 4 distinct codes: a query matches ~a quarter of the rows
    q, db = pool[rng.integers(0, 4, 40)], pool[rng.integers(0, 4, 400)]
    emu.target_blocks = 3
    matcher = GpuMatcher(device=emu, output_bytes=budget(50))
    got = matcher.range_search(q, db, 0)
    want = ORACLE.range_search(q, db, 0)
    assert len(want) > 20 * 50
    assert_pairs_equal(got, want)
    assert matcher.stats["splits"] > len(want) // 50 // 2
    # One query with more matches than the budget: its database range is split.
    one = GpuMatcher(device=emu, output_bytes=budget(7))
    assert_pairs_equal(one.range_search(q[:1], db, 0), ORACLE.range_search(q[:1], db, 0))
    assert one.stats["splits"] >= 1
    assert_pairs_equal(one.self_join(db[:120], 0), ORACLE.self_join(db[:120], 0))


# ------------------------------------------------------------------------------------ the device index


def uploads(dev, call):
    before = dev.uploads
    result = call()
    return result, dev.uploads - before


def test_a_self_join_uploads_its_codes_once(emu):
    rng = np.random.default_rng(6)
    codes = random_codes(rng, 700, 2, alphabet=300)
    matcher = GpuMatcher(device=emu, query_block=150, db_block=200)  # many launch blocks, one copy
    got, n = uploads(emu, lambda: matcher.self_join(codes, 3))
    assert n == 1
    assert_pairs_equal(got, ORACLE.self_join(codes, 3))


def test_an_index_stays_on_the_device_across_calls(emu):
    rng = np.random.default_rng(7)
    q, db = planted(rng, 60, 500, 4, 30)
    matcher = GpuMatcher(device=emu)
    index, n = uploads(emu, lambda: matcher.index(db))
    assert n == 1 and index.resident is not None and matcher.index(index) is index
    for _ in range(2):
        got, n = uploads(emu, lambda: matcher.range_search(q, index, 30))
        assert n == 1  # the queries only
        assert_pairs_equal(got, ORACLE.range_search(q, db, 30))
    top, n = uploads(emu, lambda: matcher.topk(q, index, 6))
    assert n == 1
    assert_topk_equal(top, ORACLE.topk(q, db, 6))
    _, n = uploads(emu, lambda: matcher.self_join(index, 5))
    assert n == 0
    with pytest.raises(ValueError, match="queries have 2 words, database 4"):
        matcher.range_search(q[:, :2], index, 3)


def test_a_database_larger_than_device_memory_is_streamed_in_blocks():
    """With 20 kB of device memory and 12.8 kB for output, blocks of 200 one-word rows stream through;
    each search visits every block (histogram and range pass for top-k), results equal the oracle."""
    dev = EmulatedDevice(target_blocks=3, names=gpu.all_name_expressions(), memory_bytes=20_000)
    matcher = GpuMatcher(device=dev, output_bytes=budget(200))
    rng = np.random.default_rng(8)
    q, db = planted(rng, 50, 1000, 1, 6)
    index = matcher.index(db)
    assert index.resident is None and index.block_rows == 200
    got, n = uploads(dev, lambda: matcher.range_search(q, index, 6))
    assert n == 1 + 5  # the queries, then five database blocks
    assert_pairs_equal(got, ORACLE.range_search(q, db, 6))
    top, n = uploads(dev, lambda: matcher.topk(q, index, 9))
    # The histograms (65 bins of 8 bytes a query) fit the 12.8 kB budget 24 queries at a time: three query
    # blocks, each visiting the five database blocks twice.
    assert n == 1 + 3 * 2 * 5
    assert_topk_equal(top, ORACLE.topk(q, db, 9))
    codes = db[:700]
    assert_pairs_equal(matcher.self_join(codes, 12), ORACLE.self_join(codes, 12))


# ---------------------------------------------------------------------- a self-join cut by query rows


def pairs_where(pairs, keep, shift: int = 0):
    """The pairs where `keep` holds, their rows shifted by `shift`."""
    return Pairs(pairs.a[keep] + shift, pairs.b[keep] + shift, pairs.dist[keep])


def test_a_self_join_cut_into_query_ranges_is_the_full_one_range_by_range(emu):
    """GpuMatcher._range with query_rows (start, stop), the loop the full self-join runs over all rows:
    each range gives exactly the oracle's pairs whose a lies in it (b anywhere above a), across launch
    blocks and split launches; the ranges together are the full self-join."""
    rng = np.random.default_rng(9)
    codes = random_codes(rng, 700, 2, alphabet=150)  # ~5 copies of each code, near and far apart
    emu.target_blocks = 3
    matcher = GpuMatcher(device=emu, query_block=90, db_block=130, output_bytes=budget(40))
    index = matcher.index(codes)
    want = ORACLE.self_join(codes, 3)
    cuts = [0, 1, 89, 90, 91, 300, 555, 699, 700]  # launch-block edges, one-row ranges, the last row
    parts = []
    for start, stop in zip(cuts, cuts[1:]):
        got = matcher._range(index, index, 3, upper=True, query_rows=(start, stop))
        assert_pairs_equal(got, pairs_where(want, (want.a >= start) & (want.a < stop)))
        parts.append(got)
    assert_pairs_equal(Pairs.concat(parts), want)
    assert matcher.stats["splits"] > 0  # 40 pairs a launch: some launches were split
    assert len(matcher._range(index, index, 3, upper=True, query_rows=(300, 300))) == 0
    assert_pairs_equal(matcher.self_join(index, 3), want)


class RowWindow:
    """Stands in for an (n, W) code array of which only the last len(codes) rows exist (reading any other
    row raises): a code set past 2^31 rows in a few kB."""

    def __init__(self, codes: np.ndarray, n: int):
        self.codes, self.first = codes, n - len(codes)
        self.shape = (n, codes.shape[1])

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1 or start < self.first:
            raise IndexError(f"rows {start}..{stop - 1} read, but only rows from {self.first} exist")
        return self.codes[start - self.first : stop - self.first]


def test_a_self_join_of_query_rows_past_2_31_comes_back_with_their_64_bit_rows(emu):
    """The query rows 2^31 - 300 .. 2^31 + 299 of a self-join over 2^31 + 500 rows, in launch blocks that
    straddle 2^31 (a streamed index of which only the rows from 2^31 - 300 exist: a self-join reads no row
    below its first query row): the oracle's pairs of those rows, at their global row numbers."""
    n, first, stop = 2**31 + 500, 2**31 - 300, 2**31 + 300
    rng = np.random.default_rng(10)
    codes = random_codes(rng, n - first, 1, alphabet=200)
    emu.target_blocks = 3
    matcher = GpuMatcher(device=emu, query_block=128, db_block=200, output_bytes=budget(60))
    window = gpu.DeviceIndex(emu, RowWindow(codes, n), resident=False, block_rows=200)
    got = matcher._range(window, window, 0, upper=True, query_rows=(first, stop))
    want = ORACLE.self_join(codes, 0)
    assert_pairs_equal(got, pairs_where(want, want.a < stop - first, shift=first))
    assert got.a.min() < 2**31 <= got.a.max() and got.b.max() >= stop  # pairs on both sides, and past the range
    with pytest.raises(IndexError, match="only rows from"):
        matcher._range(window, window, 0, upper=True, query_rows=(first - 1, stop))


@pytest.mark.parametrize("nq", [40, 600])  # the small-batch and the many-query kernel
def test_the_kernel_orders_a_self_join_by_64_bit_rows(emu, nq):
    """A self-join launch keeps (q, d) when d + diag > q, diag = database offset - query offset as a 64-bit
    argument: queries at row 5 against rows from 2^31 + 5 or 2^32 + 5 (diag -2^31 and 0 as int32s) keep
    every pair; queries 2^31 rows above the database, none."""
    rng = np.random.default_rng(nq)
    q, db = planted(rng, nq, 700, 1, 6)
    emu.target_blocks = 4
    matcher = GpuMatcher(device=emu, output_bytes=budget(10_000))
    kernel, small = matcher._range_kernel(1, nq, 6)
    assert small == (nq < 256)
    every = ORACLE.range_search(q, db, 6)
    assert len(every) >= nq // 3
    radii = np.full(nq, 6, np.int32)
    for q0, d0, keep in [(5, 2**31 + 5, True), (5, 2**32 + 5, True), (2**31 + 5, 5, False)]:
        parts = matcher._range_launch(kernel, small, q, q0, db, d0, radii, True, matcher._output())
        got = Pairs.concat(parts)
        want = Pairs(every.a + q0, every.b + d0, every.dist) if keep else Pairs.empty()
        assert_pairs_equal(got, want)


# --------------------------------------------------------------------------------------- toolkit pins


def extra(name: str) -> list[str]:
    """The requirements of one extra of pyproject.toml, with its `simbench[...]` references expanded."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    out = []
    for req in extras[name]:
        if m := re.fullmatch(r"simbench\[([\w,\-]+)\]", req.replace(" ", "")):
            out += [r for part in m[1].split(",") for r in extra(part)]
        else:
            out.append(req)
    return out


def cuda_lines(requirements: list[str]) -> dict[str, str]:
    """The CUDA major version each CUDA package of a requirement list is built for, by its name."""
    lines = {}
    for req in requirements:
        name = re.match(r"[A-Za-z0-9_.\-]+", req)[0].lower()
        if m := re.fullmatch(r"cupy-cuda(\d+)x", name):
            lines[name] = m[1]
        elif name.startswith("nvidia-"):
            m = re.search(r"-cu(\d+)$", name)
            # An unsuffixed nvidia-* package follows the newest CUDA line (13 today), whatever cupy needs.
            lines[name] = m[1] if m else "unsuffixed (newest CUDA line)"
    return lines


def test_the_gpu_extra_pins_one_cuda_line():
    lines = cuda_lines(extra("gpu"))
    assert "cupy-cuda12x" in lines and any(name.startswith("nvidia-cuda-nvrtc") for name in lines), lines
    assert set(lines.values()) == {"12"}, f"the gpu extra mixes CUDA lines: {lines}"
    assert cuda_lines(["cupy-cuda12x>=13", "nvidia-cuda-nvrtc"]) == {
        "cupy-cuda12x": "12", "nvidia-cuda-nvrtc": "unsuffixed (newest CUDA line)"}  # the old, mixed pin


def test_ci_installs_the_cuda_pins_of_the_gpu_extra():
    def cuda_pins(requirements):
        return sorted(r.replace(" ", "") for r in requirements if re.match(r"(cupy-cuda|nvidia-)", r))

    assert cuda_pins(extra("test")) == cuda_pins(extra("gpu")) != []


def test_cupy_compiles_the_kernels_with_the_gpu_extras_nvrtc():
    """In this process (pytest has imported torch, and with it a CUDA 13 NVRTC, by now when the whole suite
    runs) CuPy uses the CUDA 12 NVRTC that the gpu extra installs, and it compiles the kernels of 512-bit
    codes (test_gpu_kernels compiles every width with the same, process-wide NVRTC)."""
    from cupy_backends.cuda.libs import nvrtc

    from simbench import cuda_toolkit, environment
    from test_gpu_kernels import nvrtc_compile

    wheel = cuda_toolkit.extra_nvrtc_path()
    assert wheel, f"{cuda_toolkit.NVRTC_PACKAGE} is not installed: pip install -e '.[test]'"
    bound = cuda_toolkit.pin_nvrtc()
    assert bound and Path(bound).resolve() == Path(wheel).resolve(), f"CuPy binds {bound}, not {wheel}"
    assert nvrtc.getVersion()[0] == 12, f"CuPy loaded NVRTC {nvrtc.getVersion()}, not the gpu extra's CUDA 12"
    names = gpu.width_name_expressions(8)
    text, lowered, log = nvrtc_compile(gpu.kernel_source(), names, "compute_90")
    assert "warning" not in log.lower() and "popc.b64" in text
    assert all(f".entry {lowered[name]}(" in text for name in names)
    assert environment.versions()["nvrtc"] == "{}.{}".format(*nvrtc.getVersion())  # result.json env names it


def test_the_pin_holds_when_torch_loads_a_cuda_13_nvrtc_later():
    """A fresh process in the order of a CNN run: simbench, then torch (whose CUDA 13 wheels load
    libnvrtc.so.13, which cuda.pathfinder would pick first), then CuPy's first use of NVRTC."""
    script = ("import simbench, torch; from cupy_backends.cuda.libs import nvrtc; "
              "maps = open('/proc/self/maps').read(); "
              "print(nvrtc.getVersion()[0], 'libnvrtc.so.13' in maps)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    major, cuda13_loaded = done.stdout.split()
    assert major == "12", f"CuPy used NVRTC {major} (a CUDA 13 NVRTC loaded: {cuda13_loaded})"
