"""Transform matrices of the batched hashes (cached: built once per size), so that a DCT or a wavelet low
band over a stack of thumbnails is a matrix product."""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

LANCZOS = Image.Resampling.LANCZOS


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int, k: int) -> np.ndarray:
    """The first k rows of scipy's unnormalised type-II DCT matrix of size n: y = D @ x."""
    j = np.arange(n)
    d = 2.0 * np.cos(np.pi * np.arange(k)[:, None] * (2 * j[None, :] + 1) / (2 * n))
    d.setflags(write=False)
    return d


@functools.lru_cache(maxsize=None)
def wavelet_lowband_matrix(mode: str, scale: int, level: int, work: int) -> np.ndarray:
    """P (n_low, work): the low band of pywt.wavedec (default 'symmetric' extension) at `scale` after `level`
    levels, composed with the LANCZOS upsampling from `work` to `scale` samples."""
    import pywt

    # the low band operator A: column j is the low band of the unit vector e_j (the transform is linear)
    a = pywt.wavedec(np.eye(scale), mode, level=level, axis=0)[0] if level > 0 else np.eye(scale)
    if work != scale:
        # U (scale, work): PIL's LANCZOS resampling of each unit vector, as the thumbnails are resized
        eye = Image.fromarray(np.eye(work, dtype=np.float32), "F")
        u = np.asarray(eye.resize((work, scale), LANCZOS), dtype=np.float64)
        a = a @ u
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def whash_low_size(mode: str, scale: int, hash_size: int) -> int:
    """Side of the wavelet low band ImageHash.whash returns at image_scale `scale` (db4 pads: 512 -> 14)."""
    import pywt

    n = scale
    for _ in range(int(math.log2(scale)) - int(math.log2(hash_size))):
        n = pywt.dwt_coeff_len(n, pywt.Wavelet(mode).dec_len, "symmetric")
    return n


def natural_scale(min_side: int, hash_size: int) -> int:
    """ImageHash.whash's default image_scale: the largest power of two <= the image's short side."""
    return max(2 ** int(np.log2(min_side)), hash_size)
