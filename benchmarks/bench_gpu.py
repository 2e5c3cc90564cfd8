"""CPU versus GPU: exact Hamming search, in comparisons per second, written to results/gpu.md.

    python benchmarks/bench_gpu.py --all      # pytest -m gpu (the GPU tests), then the full table
    python benchmarks/bench_gpu.py            # 64/256/512-bit codes, N = 10k, 100k, 1M
    python benchmarks/bench_gpu.py --quick    # N = 10k, 100k and smaller query sets

It needs a working CUDA device (the matcher's probe must pass): without one it says why and exits with
status 2, writing nothing, so results/gpu.md never holds figures that were not measured on a GPU.

Rows (each where it can run; the others are listed as skipped, with the reason):
  exact      simbench's CPU kernel (ExactMatcher, numba), all cores
  faiss      faiss IndexBinaryFlat range search on the CPU (the project's FaissMatcher when present)
  gpu        simbench's CuPy raw kernels (GpuMatcher, kernels/hamming.cu); also the kernel time alone;
             for the largest N also 16 queries (the small-batch kernel) and top-k (k = 10, N / 10 queries)
  cupy-naive cupy.bitwise_count(q[:, None] ^ db[None]).sum(-1) <= r, in blocks that fit in memory
  faiss-gpu  faiss GpuIndexBinaryFlat (k-NN, k = 1: it has no range search), with a faiss GPU build

Work: queries are the first Q database rows, half of them with a few bits flipped (planted near
duplicates); the database has N random codes; radius 8 / 24 / 31 for 64 / 256 / 512 bits. A "comparison"
is one (query, database row) distance: Q x N per search. Q is chosen per device so that a measurement takes
a second or more (it is in the table). Each figure is the best of --repeats timed runs after a warm-up.

GPU figures are also given as a fraction of the popcount ceiling:
  ceiling (comparisons/s) = SMs x clock (Hz) x 16 POPC/clock/SM / (2 W)
since a W-word code needs 2W 32-bit POPC instructions (a 64-bit __popcll is two) and an SM of compute
capability 5.x-9.0 retires 16 of them per clock (CUDA C++ Programming Guide, arithmetic instruction
throughput). H100 SXM: 132 x 1.98e9 x 16 / 16 = 2.6e11 for 512 bits.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, load_average, timed  # noqa: E402
from simbench.match.gpu import GpuMatcher, cuda_device_status  # noqa: E402

RADIUS = {64: 8, 256: 24, 512: 31}
POPC_PER_CLOCK_PER_SM = 16


# --------------------------------------------------------------------------------------------- data


def make_codes(n: int, bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(np.uint64).max, (n, bits // 64), dtype=np.uint64, endpoint=True)


def make_queries(db: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    """The first q rows; every other one with up to 4 random bits flipped: near duplicates within every radius."""
    rng = np.random.default_rng(seed)
    out = db[:q].copy()
    rows = np.arange(0, q, 2)
    for j in range(4):  # row i gets 1 + (i / 2) % 4 flips (fewer if two land on the same bit)
        sel = rows[(rows // 2) % 4 >= j]
        bit = rng.integers(0, 64 * db.shape[1], len(sel))
        out[sel, bit // 64] ^= np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    return out


# ---------------------------------------------------------------------------------------- methods


def faiss_cpu_search():
    """range_search(q, db, radius) -> number of pairs, by the project's FaissMatcher or faiss directly."""
    try:
        from simbench.match.faiss_peer import FaissMatcher

        matcher = FaissMatcher()
        return "FaissMatcher", lambda q, db, r: len(matcher.range_search(q, db, r))
    except ImportError:
        import faiss

        def search(q, db, r):
            index = faiss.IndexBinaryFlat(64 * db.shape[1])
            index.add(db.view(np.uint8))
            lims, _, _ = index.range_search(q.view(np.uint8), r + 1)  # faiss keeps distance < radius
            return int(lims[-1])

        return "faiss.IndexBinaryFlat", search


def cupy_naive_search(q, db, r, budget_bytes=1 << 28):
    """The obvious CuPy version: XOR the blocks, bitwise_count, sum, compare; blocks bound the memory."""
    import cupy

    d_q, d_db = cupy.asarray(q), cupy.asarray(db)
    width = q.shape[1]
    rows_q = max(1, min(len(q), 256))
    rows_db = max(1, budget_bytes // (8 * width * rows_q))
    found = 0
    for q0 in range(0, len(q), rows_q):
        for d0 in range(0, len(db), rows_db):
            x = d_q[q0:q0 + rows_q, None, :] ^ d_db[None, d0:d0 + rows_db, :]
            dist = cupy.bitwise_count(x).sum(axis=2, dtype=cupy.int32)
            found += int(cupy.count_nonzero(dist <= r))
    return found


def faiss_gpu_knn(q, db):
    import faiss

    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexBinaryFlat(res, 64 * db.shape[1])
    index.add(db.view(np.uint8))
    index.search(q.view(np.uint8), 1)
    return len(q)


def gpu_properties():
    import cupy

    device = cupy.cuda.Device().id  # the current device
    props = cupy.cuda.runtime.getDeviceProperties(device)
    sms = int(props["multiProcessorCount"])
    try:  # the highest SM clock (kHz) the device reports
        khz = cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrClockRate, device)
    except Exception:
        khz = props.get("clockRate", 0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"id": device, "name": name, "sms": sms, "clock_hz": float(khz) * 1e3,
            "cc": f"{props['major']}.{props['minor']}"}


def ceiling(props, bits: int) -> float:
    """Popcount-bound comparisons/s: SMs x clock x 16 POPC per clock per SM / (2 POPC per 64-bit word)."""
    return props["sms"] * props["clock_hz"] * POPC_PER_CLOCK_PER_SM / (2 * (bits // 64))


# ------------------------------------------------------------------------------------------- main


#: The GPU tests that --all runs first (the real kernels against the CPU; compute-sanitizer; self-join
#: query ranges and queries over 2^31 + 2^20 rows).
GPU_TESTS = ["tests/test_gpu_kernels.py", "tests/test_gpu_device.py"]


def run_gpu_tests(timeout_s: int = 420) -> dict:
    """pytest -m gpu on GPU_TESTS: its summary line, exit status and seconds (the benchmark runs after it
    whatever the outcome, and results/gpu.md says what it was)."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *GPU_TESTS]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        out, code = proc.stdout, proc.returncode
        print(out[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
    except subprocess.TimeoutExpired as exc:
        out, code = (exc.stdout or b"").decode(errors="replace") + f"\nTIMED OUT after {timeout_s} s", -1
        print(out[-3000:], flush=True)
    lines = [line for line in out.splitlines() if line.strip()]
    return {"command": "python -m pytest -m gpu -q -rs " + " ".join(GPU_TESTS), "returncode": code,
            "summary": lines[-1] if lines else "(no output)", "seconds": round(time.perf_counter() - start, 1),
            "skipped": [line for line in lines if line.startswith("SKIPPED")]}


def require_gpu() -> None:
    """Exit (status 2, nothing written) unless GpuMatcher finds a working device: driver, NVRTC, probe."""
    has_gpu, why = cuda_device_status()
    if has_gpu:
        matcher = GpuMatcher()
        if matcher.fallback:
            has_gpu, why = False, "; ".join(matcher.fallback_reasons)
    if not has_gpu:
        print(f"bench_gpu.py: no working CUDA device ({why}); nothing measured, nothing written "
              f"(results/gpu.md holds GPU figures only when they were measured)", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="run the GPU tests (pytest -m gpu) first, then the benchmark")
    ap.add_argument("--quick", action="store_true", help="N up to 100k and smaller query sets")
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu.md"), help="Markdown table (and .json beside it)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bits", type=int, nargs="*", default=[64, 256, 512])
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)
    require_gpu()
    tests = run_gpu_tests() if args.all else None

    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    cpu_budget = 5e8 if args.quick else 2e9       # comparisons per CPU measurement
    naive_budget = 2e9 if args.quick else 2e10    # per naive-CuPy measurement
    props = gpu_properties()  # require_gpu() made sure there is a device
    label = f"cuda:{props['id']}"
    try:
        import faiss

        has_faiss_gpu = hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0
    except ImportError:
        has_faiss_gpu = False
    from simbench.match.exact import ExactMatcher

    exact = ExactMatcher()
    faiss_name, faiss_search = faiss_cpu_search()
    rows, skipped = [], []
    if not has_faiss_gpu:
        skipped.append("faiss-gpu: this faiss has no GPU support (faiss-cpu)")

    def record(method, device, bits, n, q, seconds, pairs, kernel_s=None, note="", comparisons=None):
        comparisons = q * n if comparisons is None else comparisons
        row = {"method": method, "device": device, "bits": bits, "n": n, "queries": q, "seconds": seconds,
               "comparisons_per_s": comparisons / seconds, "pairs": pairs, "note": note}
        if kernel_s is not None:
            row["kernel_comparisons_per_s"] = comparisons / kernel_s
        if props is not None and device.startswith("cuda"):
            row["ceiling"] = ceiling(props, bits)
            row["fraction_of_ceiling"] = row.get("kernel_comparisons_per_s", row["comparisons_per_s"]) / row["ceiling"]
        rows.append(row)
        print(format_row(row), flush=True)

    print(header_line(), flush=True)
    for bits in args.bits:
        radius = RADIUS.get(bits, bits // 16)
        for n in sizes:
            db = make_codes(n, bits, seed=bits + n)
            q_cpu = int(min(n, max(64, cpu_budget // n)))
            queries = make_queries(db, q_cpu)
            exact.range_search(queries[:8], db[:1000], radius)  # compile (numba), warm caches
            t, want = timed(lambda: exact.range_search(queries, db, radius), repeats=args.repeats)
            found = len(want)
            record("exact", "cpu", bits, n, q_cpu, t, found)
            t, found_f = timed(lambda: faiss_search(queries, db, radius), repeats=args.repeats)
            record(f"faiss ({faiss_name})", "cpu", bits, n, q_cpu, t, found_f,
                   note="" if found_f == found else f"pairs differ from exact ({found})")
            matcher = GpuMatcher(strict_device=True)
            check = matcher.range_search(queries, db, radius)  # also compiles the kernels
            want = want.sorted()
            same = len(check) == len(want) and np.array_equal(check.a, want.a) and np.array_equal(check.b, want.b)
            q_gpu = n  # every row is a query: the full N x N range search
            gq = make_queries(db, q_gpu)
            t, found_g = timed(lambda: len(matcher.range_search(gq, db, radius)), repeats=args.repeats)
            record("gpu (CuPy raw kernel)", matcher.device, bits, n, q_gpu, t, found_g,
                   kernel_s=matcher.stats["kernel_s"], note="" if same else "MISMATCH vs exact on the CPU query set")
            if n == max(sizes):
                index = matcher.index(db)  # resident: the rows below time the search, not the upload
                small = gq[:16]
                t, found_s = timed(lambda: len(matcher.range_search(small, index, radius)), repeats=args.repeats)
                record("gpu, 16 queries (small-batch kernel)", matcher.device, bits, n, 16, t, found_s,
                       kernel_s=matcher.stats["kernel_s"])
                q_top = max(1, n // 10)
                t, _ = timed(lambda: matcher.topk(gq[:q_top], index, 10), repeats=args.repeats)
                want_top = exact.topk(gq[:64], db, 10)
                got_top = matcher.topk(gq[:64], index, 10)
                same_top = all(np.array_equal(g, w) for g, w in zip(got_top, want_top))
                # Two passes over the database (histogram, then range with each query's 10th distance).
                record("gpu top-k, k = 10 (histogram + range pass)", matcher.device, bits, n, q_top, t, None,
                       kernel_s=matcher.stats["kernel_s"], comparisons=2 * q_top * n,
                       note="2 passes counted" + ("" if same_top else "; MISMATCH vs exact on 64 queries"))
            q_naive = int(min(n, max(64, naive_budget // n)))
            cupy_naive_search(gq[:64], db[:1000], radius)  # warm-up
            t, found_n = timed(lambda: cupy_naive_search(gq[:q_naive], db, radius), repeats=args.repeats)
            record("cupy.bitwise_count (naive)", label, bits, n, q_naive, t, found_n)
            if has_faiss_gpu:
                t, _ = timed(lambda: faiss_gpu_knn(gq, db), repeats=args.repeats)
                record("faiss GPU (k-NN, k=1)", label, bits, n, q_gpu, t, None, note="no range search on GPU")

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu": platform.processor() or cpu_model(),
        "cores": os.cpu_count(),
        "load_average": round(load_average(), 1),  # other work on a shared machine skews CPU figures
        "gpu": props,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "command": "python benchmarks/bench_gpu.py" + (" --all" if args.all else "") + (" --quick" if args.quick else ""),
        "tests": tests,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows, "skipped": skipped}, indent=1))
    out.write_text(render(env, rows, skipped))
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


# ------------------------------------------------------------------------------------------- table

COLUMNS = "| method | device | bits | N | queries | comparisons/s | kernel only | % of popcount ceiling | pairs | note |"


def header_line() -> str:
    return COLUMNS + "\n" + "|---" * (COLUMNS.count("|") - 1) + "|"


def format_row(row) -> str:
    kernel = f"{row['kernel_comparisons_per_s']:.3g}" if "kernel_comparisons_per_s" in row else ""
    frac = f"{100 * row['fraction_of_ceiling']:.0f}% of {row['ceiling']:.3g}" if "fraction_of_ceiling" in row else ""
    pairs = "" if row["pairs"] is None else str(row["pairs"])
    return (f"| {row['method']} | {row['device']} | {row['bits']} | {row['n']:,} | {row['queries']:,} | "
            f"{row['comparisons_per_s']:.3g} | {kernel} | {frac} | {pairs} | {row['note']} |")


def render(env, rows, skipped) -> str:
    gpu = env["gpu"]
    lines = [
        "# CPU versus GPU: exact Hamming search",
        "",
        "Written by `benchmarks/bench_gpu.py` (do not edit by hand; run it again). Comparisons per second = "
        "queries x N / seconds, best of the timed runs; radius 8 / 24 / 31 (inclusive) for 64 / 256 / 512 bits; "
        "random codes, half the queries planted near duplicates. \"kernel only\" is the GPU matcher's time "
        "inside its launches (the rest is copying codes and pairs, and sorting the pairs). CPU and GPU rows come "
        "from this one run.",
        "",
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, load average {env['load_average']} at the end)"
        f" and {gpu['name']} ({gpu['sms']} SMs, highest clock {gpu['clock_hz'] / 1e9:.2f} GHz, compute capability "
        f"{gpu['cc']}); command `{env['command']}`.",
        "",
    ]
    tests = env.get("tests")
    if tests:
        lines += [f"GPU tests before the benchmark: `{tests['command']}` -> {tests['summary']} "
                  f"(exit status {tests['returncode']}, {tests['seconds']} s).", ""]
        if tests["skipped"]:
            lines += ["Skipped there: " + "; ".join(tests["skipped"]), ""]
    lines += [header_line(), *[format_row(r) for r in rows], ""]
    if skipped:
        lines += ["Not measured here: " + "; ".join(skipped) + ".", ""]
    lines += [
        "## The popcount ceiling and its assumptions",
        "",
        "A comparison of two W-word codes is W 64-bit XORs and W 64-bit popcounts. The GPU has no 64-bit popcount "
        "instruction: `__popcll` is two 32-bit `POPC`, so one comparison costs 2W `POPC`. Assumed: an SM of "
        "compute capability 5.x to 9.0 retires 16 `POPC` per clock (CUDA C++ Programming Guide, throughput of "
        "native arithmetic instructions), a quarter of the rate of XOR and add, so `POPC` is the bound; and the "
        "SMs run at the highest clock the device reports (`cudaDevAttrClockRate`) throughout. A GPU that clocks "
        "lower under load makes the percentage an underestimate of the kernel's efficiency.",
        "",
        "    ceiling = SMs x clock x 16 / (2 W)   comparisons per second",
        "",
        "The early exit (512-bit codes at radius 31 stop after 2 of 8 words for almost every pair) does fewer "
        "`POPC` than the ceiling counts, so that row can exceed 100%. The top-k row counts both of its passes "
        "over the database as comparisons.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
