"""CPU versus GPU: exact Hamming range search, in comparisons per second, written to results/gpu.md.

    python benchmarks/bench_gpu.py            # 64/256/512-bit codes, N = 10k, 100k, 1M
    python benchmarks/bench_gpu.py --quick    # N = 10k, 100k and smaller query sets (about a minute on CPU)

Rows (each where it can run; the others are listed as skipped, with the reason):
  exact      simbench's CPU kernel (ExactMatcher, numba), all cores
  faiss      faiss IndexBinaryFlat range search on the CPU (the project's FaissMatcher when present)
  gpu        simbench's CuPy raw kernels (GpuMatcher, kernels/hamming.cu); also the kernel time alone
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
import sys
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

    props = cupy.cuda.runtime.getDeviceProperties(0)
    sms = int(props["multiProcessorCount"])
    try:
        khz = cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrClockRate, 0)
    except Exception:
        khz = props.get("clockRate", 0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"name": name, "sms": sms, "clock_hz": float(khz) * 1e3, "cc": f"{props['major']}.{props['minor']}"}


def ceiling(props, bits: int) -> float:
    """Popcount-bound comparisons/s: SMs x clock x 16 POPC per clock per SM / (2 POPC per 64-bit word)."""
    return props["sms"] * props["clock_hz"] * POPC_PER_CLOCK_PER_SM / (2 * (bits // 64))


# ------------------------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N up to 100k and smaller query sets")
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu.md"), help="Markdown table (and .json beside it)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bits", type=int, nargs="*", default=[64, 256, 512])
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)

    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    cpu_budget = 5e8 if args.quick else 2e9       # comparisons per CPU measurement
    naive_budget = 2e9 if args.quick else 2e10    # per naive-CuPy measurement
    has_gpu, gpu_why = cuda_device_status()
    props = gpu_properties() if has_gpu else None
    try:
        import faiss

        has_faiss_gpu = hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0
    except ImportError:
        has_faiss_gpu = False
    from simbench.match.exact import ExactMatcher

    exact = ExactMatcher()
    faiss_name, faiss_search = faiss_cpu_search()
    rows, skipped = [], []
    if not has_gpu:
        skipped.append(f"gpu, cupy-naive, faiss-gpu: no CUDA device ({gpu_why})")
    elif not has_faiss_gpu:
        skipped.append("faiss-gpu: this faiss has no GPU support (faiss-cpu)")

    def record(method, device, bits, n, q, seconds, pairs, kernel_s=None, note=""):
        row = {"method": method, "device": device, "bits": bits, "n": n, "queries": q, "seconds": seconds,
               "comparisons_per_s": q * n / seconds, "pairs": pairs, "note": note}
        if kernel_s is not None:
            row["kernel_comparisons_per_s"] = q * n / kernel_s
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
            if not has_gpu:
                continue
            matcher = GpuMatcher(strict_device=True)
            check = matcher.range_search(queries, db, radius)  # also compiles the kernels
            want = want.sorted()
            same = len(check) == len(want) and np.array_equal(check.a, want.a) and np.array_equal(check.b, want.b)
            q_gpu = n  # every row is a query: the full N x N range search
            gq = make_queries(db, q_gpu)
            t, found_g = timed(lambda: len(matcher.range_search(gq, db, radius)), repeats=args.repeats)
            record("gpu (CuPy raw kernel)", "cuda:0", bits, n, q_gpu, t, found_g, kernel_s=matcher.stats["kernel_s"],
                   note="" if same else "MISMATCH vs exact on the CPU query set")
            q_naive = int(min(n, max(64, naive_budget // n)))
            cupy_naive_search(gq[:64], db[:1000], radius)  # warm-up
            t, found_n = timed(lambda: cupy_naive_search(gq[:q_naive], db, radius), repeats=args.repeats)
            record("cupy.bitwise_count (naive)", "cuda:0", bits, n, q_naive, t, found_n)
            if has_faiss_gpu:
                t, _ = timed(lambda: faiss_gpu_knn(gq, db), repeats=args.repeats)
                record("faiss GPU (k-NN, k=1)", "cuda:0", bits, n, q_gpu, t, None, note="no range search on GPU")

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu": platform.processor() or cpu_model(),
        "cores": os.cpu_count(),
        "load_average": round(load_average(), 1),  # other work on a shared machine skews CPU figures
        "gpu": props,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "command": "python benchmarks/bench_gpu.py" + (" --quick" if args.quick else ""),
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
        "# CPU versus GPU: exact Hamming range search",
        "",
        "Written by `benchmarks/bench_gpu.py` (do not edit by hand; run it again). Comparisons per second = "
        "queries x N / seconds, best of the timed runs; radius 8 / 24 / 31 (inclusive) for 64 / 256 / 512 bits; "
        "random codes, half the queries planted near duplicates. \"kernel only\" is the GPU matcher's time "
        "inside its launches (the rest is copying codes and pairs, and sorting the pairs).",
        "",
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, load average {env['load_average']} at the end)"
        + (f" and {gpu['name']} ({gpu['sms']} SMs at {gpu['clock_hz'] / 1e9:.2f} GHz, compute capability "
           f"{gpu['cc']})" if gpu else ", no GPU")
        + f"; command `{env['command']}`.",
        "",
        header_line(),
        *[format_row(r) for r in rows],
        "",
    ]
    if skipped:
        lines += ["Not measured here: " + "; ".join(skipped) + ".", ""]
    lines += [
        "## The popcount ceiling",
        "",
        "A comparison of two W-word codes is W 64-bit XORs and W 64-bit popcounts. The GPU has no 64-bit popcount "
        "instruction: `__popcll` is two 32-bit `POPC`, so one comparison costs 2W `POPC`. An SM of compute "
        "capability 5.x to 9.0 retires 16 `POPC` per clock (CUDA C++ Programming Guide, throughput of native "
        "arithmetic instructions), a quarter of the rate of XOR and add, so `POPC` is the bound:",
        "",
        "    ceiling = SMs x clock x 16 / (2 W)   comparisons per second",
        "",
        "| GPU | SMs | boost clock | 64-bit | 256-bit | 512-bit |",
        "|---|---|---|---|---|---|",
        "| H100 SXM | 132 | 1.98 GHz | 2.09e12 | 5.23e11 | 2.61e11 |",
        "| H100 PCIe | 114 | 1.755 GHz | 1.60e12 | 4.00e11 | 2.00e11 |",
        "| A100 | 108 | 1.41 GHz | 1.22e12 | 3.05e11 | 1.52e11 |",
        "",
        "The script computes the ceiling from the device it runs on (SMs and clock from CUDA) and reports the "
        "kernel's share of it. Target on an H100: at least 50% of the ceiling for 512-bit range search "
        "(1.3e11 comparisons/s). In the kernel's inner loop (SASS for sm_90, 512-bit codes, two queries per "
        "thread) 32 of 109 instructions per iteration (no match) are `POPC`: a warp issues them in 109 cycles while the "
        "`POPC` unit needs 256, so the loop is `POPC`-bound with room to spare.",
        "",
        "## Running it on a GPU",
        "",
        "On a machine with an NVIDIA GPU, CUDA driver, and this repository installed with CuPy "
        "(`pip install cupy-cuda12x nvidia-cuda-nvrtc`; for the faiss GPU row a faiss GPU build, e.g. conda "
        "`faiss-gpu`):",
        "",
        "    python benchmarks/bench_gpu.py            # full table: N = 10k, 100k, 1M (a few minutes)",
        "    python benchmarks/bench_gpu.py --quick    # N = 10k, 100k",
        "    pytest -m gpu tests/test_gpu_kernels.py   # the real kernels against the oracle",
        "",
        "It rewrites this file and `results/gpu.json` (raw figures). The GPU rows search all N queries against "
        "N rows (up to 1e12 comparisons); the CPU rows use fewer queries, shown in the table. Before timing, "
        "the GPU result for the CPU's query set is checked against the exact CPU kernel (`MISMATCH` in the note "
        "column otherwise).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
