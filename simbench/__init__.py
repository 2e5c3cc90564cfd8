"""simbench: benchmark and use methods for finding similar and duplicate images.

The Python API (simbench.api), imported on first use so that `import simbench` stays fast:
hash(image_or_path, "phash"), find(paths, method=..., threshold=...), compare(a, b).
"""
from simbench.cuda_toolkit import pin_nvrtc

__version__ = "0.1.0"
#: The Hydra configs: conf/ of the checkout, installed as this package (setup.py).
CONFIG_MODULE = "simbench.conf"

__all__ = ["hash", "find", "compare", "Hash", "Found", "Pair", "Group", "Comparison"]

# Before anything can import torch, which loads a CUDA 13 NVRTC that CuPy would otherwise prefer.
pin_nvrtc()


def __getattr__(name: str):
    if name in __all__:
        from simbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'simbench' has no attribute {name!r}")
