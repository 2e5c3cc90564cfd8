"""Build kernels/*.cu with g++ and cuda_emu.h, and launch them from Python like CuPy RawModule functions.

EmulatedDevice has the interface of simbench.match.gpu.CupyDevice (label, xp, kernel(name)(grid, block,
args), to_device, to_host, free_bytes, synchronize, target_blocks), with NumPy arrays in place of CuPy ones,
so GpuMatcher(device=EmulatedDevice()) runs its real host code (probe, device index, blocking, chunking,
splitting on overflow, top-k selection) over the real kernel source. Launch arguments are checked as a GPU would need them: NumPy scalars of
the kernel parameter's exact size, C-contiguous arrays of the parameter's element type.

The shared library is cached by the hash of everything that goes into it (sources, flags, compiler), in
$SIMBENCH_EMU_CACHE, else $XDG_CACHE_HOME/simbench/cuda_emu, else ~/.cache/simbench/cuda_emu.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_emu.h")
FLAGS = ("-O2", "-std=c++20", "-shared", "-fPIC", "-mpopcnt", "-Wall", "-Wno-unknown-pragmas")

# C parameter type -> (ctypes type, NumPy dtype of the scalar or of the pointed-to elements, is pointer)
_TYPES = {
    "int": (ctypes.c_int, np.int32, False),
    "long long": (ctypes.c_longlong, np.int64, False),
    "u64": (ctypes.c_ulonglong, np.uint64, False),
    "int*": (ctypes.c_void_p, np.int32, True),
    "u64*": (ctypes.c_void_p, np.uint64, True),
    "const u64*": (ctypes.c_void_p, np.uint64, True),
    "const int*": (ctypes.c_void_p, np.int32, True),
}


def cache_dir() -> Path:
    if os.environ.get("SIMBENCH_EMU_CACHE"):
        return Path(os.environ["SIMBENCH_EMU_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "simbench" / "cuda_emu"


def wrapper_source(cu_name: str, kernels: list[tuple[str, tuple[str, ...]]]) -> str:
    """C++ that includes the header and the .cu, and exports emu_launch_<i>(grid, block, args...)."""
    lines = ['#include "cuda_emu.h"', f'#include "{cu_name}"', "",
             'extern "C" const char* emu_last_error() { return emu::last_error_text().c_str(); }',
             'extern "C" void emu_set_schedule(int mode, unsigned long long seed) {',
             '    emu::schedule_mode = mode;',
             '    emu::schedule_seed = seed;',
             '}', ""]
    for i, (expr, params) in enumerate(kernels):
        decl = ", ".join(f"{t} a{j}" for j, t in enumerate(params))
        call = ", ".join(f"a{j}" for j in range(len(params)))
        lines.append(f"// {expr}")
        lines.append(f'extern "C" int emu_launch_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
                     f"unsigned bz, {decl}) {{")
        lines.append(f"    return emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), &{expr}, {call});")
        lines.append("}")
    return "\n".join(lines) + "\n"


def build(cu_file: Path, kernels: list[tuple[str, tuple[str, ...]]]) -> Path:
    """Compile (or find in the cache) the shared library running `kernels` of `cu_file` on the CPU."""
    cu_file = Path(cu_file)
    wrapper = wrapper_source(cu_file.name, kernels)
    compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256()
    for part in (HEADER.read_text(), cu_file.read_text(), wrapper, " ".join(FLAGS), compiler):
        digest.update(part.encode() + b"\0")
    target = cache_dir() / f"{cu_file.stem}-{digest.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cuda_emu_") as tmp:
        tmp = Path(tmp)
        (tmp / "cuda_emu.h").write_text(HEADER.read_text())
        (tmp / cu_file.name).write_text(cu_file.read_text())
        (tmp / "wrapper.cpp").write_text(wrapper)
        out = tmp / "emu.so"
        proc = subprocess.run(["g++", *FLAGS, "-o", str(out), str(tmp / "wrapper.cpp")], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ could not build the emulation of {cu_file}:\n{proc.stderr}")
        staged = target.with_suffix(f".{os.getpid()}.tmp")
        staged.write_bytes(out.read_bytes())
        os.replace(staged, target)  # atomic: a concurrent build of the same key is harmless
    return target


class EmulatedKernel:
    """One kernel instantiation; call it as CuPy's: kernel(grid, block, args)."""

    def __init__(self, name: str, function, params: tuple[str, ...], lib):
        self.name, self.params, self._lib = name, params, lib
        self._fn = function
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_uint] * 6 + [_TYPES[p][0] for p in params]

    def __call__(self, grid, block, args):
        grid = tuple(grid) + (1,) * (3 - len(tuple(grid)))
        block = tuple(block) + (1,) * (3 - len(tuple(block)))
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        values = []
        for j, (param, arg) in enumerate(zip(self.params, args)):
            _, dtype, pointer = _TYPES[param]
            if pointer:
                if not isinstance(arg, np.ndarray) or arg.dtype != dtype or not arg.flags.c_contiguous:
                    raise TypeError(f"{self.name} argument {j} ({param}) needs a C-contiguous {np.dtype(dtype)} "
                                    f"array, got {type(arg).__name__} {getattr(arg, 'dtype', '')}")
                if not param.startswith("const") and not arg.flags.writeable:
                    raise TypeError(f"{self.name} argument {j} ({param}) is written but the array is read-only")
                values.append(arg.ctypes.data if arg.size else None)
            else:
                if not isinstance(arg, np.generic) or arg.dtype != dtype:
                    raise TypeError(f"{self.name} argument {j} ({param}) needs a NumPy {np.dtype(dtype)} scalar "
                                    f"(a GPU reads exactly that many bytes), got {type(arg).__name__}")
                values.append(arg.item())
        if any(int(v) < 0 for v in grid + block):
            raise ValueError(f"negative launch dimensions {grid} {block}")
        if self._fn(*[int(v) for v in grid + block], *values) != 0:
            raise RuntimeError(f"{self.name}: {self._lib.emu_last_error().decode()}")


class EmulatedDevice:
    """The CPU stand-in for simbench.match.gpu.CupyDevice: same kernels, same host code, NumPy arrays.

    Like CupyDevice it compiles each kernel instantiation on first use (`compiled` lists them); it counts
    what crosses the "bus" (`uploads`, `uploaded_bytes`) and has `memory_bytes` of device memory, so tests
    can see a self-join upload once and a database larger than the memory streamed in blocks.
    """

    label = "emulated"
    xp = np

    def __init__(self, target_blocks: int = 4, source: Path | None = None, names=(), schedule: int = 0,
                 seed: int = 0, memory_bytes: int = 1 << 40):
        """target_blocks: blocks a launch should have (CupyDevice: 8 per multiprocessor); small numbers
        give few database chunks per launch and many tiles per chunk, large ones the reverse.
        source: another .cu (default: simbench's kernels); names: instantiations to build at once, in one
        library (the others are built one by one when first used).
        schedule: 0 alternate thread order per phase, 1 forward, 2 shuffled with `seed` (see cuda_emu.h)."""
        from simbench.match import gpu

        self.target_blocks = int(target_blocks)
        self.memory_bytes = int(memory_bytes)
        self.source = Path(source or gpu.KERNEL_FILE)
        self.schedule = (int(schedule), int(seed))
        self.compiled: list[str] = []
        self.uploads = 0
        self.uploaded_bytes = 0
        self._kernels: dict[str, EmulatedKernel] = {}
        self._libs = []
        if names:
            self.preload(names)

    def preload(self, names):
        """Build the instantiations `names` not built yet, in one shared library (one g++ run)."""
        from simbench.match import gpu

        names = [n for n in dict.fromkeys(names) if n not in self._kernels]
        if not names:
            return
        kernels = [(expr, gpu.KERNEL_PARAMS[expr.split("<")[0]]) for expr in names]
        lib = ctypes.CDLL(str(build(self.source, kernels)))
        lib.emu_last_error.restype = ctypes.c_char_p
        lib.emu_set_schedule.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
        lib.emu_set_schedule(*self.schedule)
        self._libs.append(lib)
        for i, (expr, params) in enumerate(kernels):
            self._kernels[expr] = EmulatedKernel(expr, getattr(lib, f"emu_launch_{i}"), params, lib)
        self.compiled += names

    def set_schedule(self, mode: int, seed: int = 0):
        self.schedule = (int(mode), int(seed))
        for lib in self._libs:
            lib.emu_set_schedule(*self.schedule)

    def kernel(self, name: str) -> EmulatedKernel:
        if name not in self._kernels:
            self.preload([name])
        return self._kernels[name]

    def free_bytes(self) -> int:
        return self.memory_bytes

    def to_device(self, array: np.ndarray) -> np.ndarray:
        self.uploads += 1
        self.uploaded_bytes += array.nbytes
        return np.array(array, copy=True, order="C")

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def synchronize(self):
        pass
