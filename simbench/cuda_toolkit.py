"""The NVRTC that CuPy compiles the kernels with: the CUDA 12 one of the `gpu` extra, on every machine.

cupy-cuda12x 14 asks cuda.pathfinder for NVRTC when it first compiles, and pathfinder takes a libnvrtc.so.13
before a libnvrtc.so.12 whenever both are installed or loaded. PyTorch's CUDA 13 wheels install one and
load it on import, so which NVRTC compiled the kernels would depend on the import order and on what else is
installed. pin_nvrtc() loads the extra's libnvrtc.so.12 (package nvidia-cuda-nvrtc-cu12) and asks
pathfinder for NVRTC at once; pathfinder keeps that answer for the life of the process, and CuPy binds it,
whatever loads later. (CuPy 13 opens libnvrtc.so.12 by name, which finds no wheel's library unless it is
loaded already.) `import simbench` calls it, before any simbench module can import torch.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import sys
from importlib import metadata

log = logging.getLogger(__name__)

#: The packages of the `gpu` extra: CuPy, and the one that ships NVRTC with its library.
CUPY_PACKAGE = "cupy-cuda12x"
NVRTC_PACKAGE = "nvidia-cuda-nvrtc-cu12"
NVRTC_LIBRARY = "libnvrtc.so.12"


def extra_nvrtc_path() -> str | None:
    """The libnvrtc.so.12 of the installed nvidia-cuda-nvrtc-cu12 package, or None when it is not installed."""
    try:
        files = metadata.distribution(NVRTC_PACKAGE).files or ()
    except metadata.PackageNotFoundError:
        return None
    return next((str(f.locate()) for f in files if f.name == NVRTC_LIBRARY), None)


def _cupy_uses_pathfinder() -> bool:
    """Whether the installed CuPy binds NVRTC through cuda.pathfinder (CuPy 14 on; it depends on it)."""
    try:
        return any(re.match(r"cuda-pathfinder\b", req) for req in metadata.requires(CUPY_PACKAGE) or ())
    except metadata.PackageNotFoundError:
        return False


@functools.cache
def pin_nvrtc() -> str | None:
    """Make the extra's CUDA 12 NVRTC the one CuPy uses in this process. Returns the path of the NVRTC CuPy
    will use, or None when the extra's package is not installed (CuPy then finds one by itself). Never
    raises: a library that cannot be loaded is logged and left to CuPy's own search."""
    wheel = extra_nvrtc_path()
    if wheel is None:
        return None
    try:
        ctypes.CDLL(wheel)  # RTLD_LOCAL: a CUDA 13 NVRTC that torch loads later keeps its own symbols
    except OSError as exc:
        log.warning("%s cannot be loaded (%s); CuPy will search for NVRTC itself", wheel, exc)
        return None
    if not _cupy_uses_pathfinder():  # CuPy 13 opens libnvrtc.so.12 by name: it gets the one loaded here
        return wheel
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        bound = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception as exc:  # pathfinder missing or failing: CuPy would meet the same on first compile
        log.warning("cuda.pathfinder cannot load NVRTC (%s: %s)", exc.__class__.__name__, exc)
        return None
    if os.path.realpath(bound) != os.path.realpath(wheel):
        log.warning("CuPy will compile with %s, not the gpu extra's %s: it was loaded before simbench "
                    "(import simbench before torch)", bound, wheel)
    return bound


def nvrtc_version() -> str | None:
    """The version of the NVRTC CuPy compiles with ("12.9"), once CuPy is imported; None before (importing
    CuPy just to ask would slow every CPU run) or when no NVRTC can be loaded."""
    if "cupy" not in sys.modules:
        return None
    try:
        from cupy_backends.cuda.libs import nvrtc

        return "{}.{}".format(*nvrtc.getVersion())
    except Exception:  # no libnvrtc: the GPU path ran on the CPU and says so in its own labels
        return None
