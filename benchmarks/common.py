"""What every benchmark measures and prints the same way: wall time, the machine, and the load on it.

Scripts import it as `from benchmarks.common import ...` (each puts the repository root on sys.path).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

from simbench.features.fasthash import available_cores  # noqa: F401  (cores this process may use)


def timed(fn: Callable, *args, repeats: int = 1) -> tuple[float, Any]:
    """(seconds, result) of fn(*args): the fastest of `repeats` calls (the least disturbed by other work),
    and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def cpu_model(details: bool = False) -> str:
    """The CPU's model name; with details also its family and model numbers (VMs often hide the name) and
    LLVM's name for it with whether it has a vector popcount (AVX-512 VPOPCNTDQ: the Hamming kernels')."""
    from simbench.environment import cpu_model as name

    if not details:
        return name()
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    extra = [f"family {info.get('cpu family', '?')}, model {info.get('model', '?')}"]
    try:
        import llvmlite.binding as llvm

        vpopcnt = "+avx512vpopcntdq" in llvm.get_host_cpu_features().flatten()
        extra.append(f"LLVM: {llvm.get_host_cpu_name()}, AVX-512 VPOPCNTDQ: {'yes' if vpopcnt else 'no'}")
    except (ImportError, RuntimeError):
        pass
    return f"{name()} ({'; '.join(extra)})"


def load_average() -> float:
    """The 1-minute load average (nan where the system has none): other work skews every CPU figure."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> dict:
    """What a result file records about where it was measured."""
    from simbench import environment

    return {"cpu": cpu_model(), "cores": available_cores(), "python": platform.python_version(),
            "git": environment.git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def interleaved_ratio(off: Callable[[], float], on: Callable[[], float], rounds: int, names=("off", "on")) -> dict:
    """`off` and `on` (each returns the seconds of what it measures), called in turn (off, on, off, on, ...) `rounds`
    times, each call printed, and the rounds' on / off ratios: on a shared machine a ratio of adjacent runs holds,
    single timings do not. Returns {"off": [seconds...], "on": [...], "ratios": [...]}."""
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for key, name, fn in (("off", names[0], off), ("on", names[1], on)):
            seconds[key].append(float(fn()))
            print(f"  round {r + 1}: {name:<{max(map(len, names))}} {seconds[key][-1]:6.1f} s  "
                  f"(load {load_average():.1f})", flush=True)
    return {**seconds, "ratios": [b / a for a, b in zip(seconds["off"], seconds["on"])]}


def ratio_text(measured: dict) -> str:
    """`interleaved_ratio`'s medians and ratio, in words."""
    import statistics

    ratios = measured["ratios"]
    return (f"off {statistics.median(measured['off']):.1f} s, on {statistics.median(measured['on']):.1f} s (medians); "
            f"on / off {statistics.median(ratios):.3f} (median; range {min(ratios):.3f}-{max(ratios):.3f})")
