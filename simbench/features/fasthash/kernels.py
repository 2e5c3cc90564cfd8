"""The hash kernels: one small function per algorithm, on stacks of thumbnails (B, h, w).

Each returns bits as bool (B, nbits) in ImageHash's `hash.flatten()` order.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from simbench.features.fasthash.transforms import dct_matrix, wavelet_lowband_matrix

def average_hash_bits(pixels: np.ndarray) -> np.ndarray:
    """Average hash (aHash), after Neal Krawetz, "Looks Like It" (hackerfactor.com, 2011).

    pixels: (B, h, w) greyscale thumbnails (h = w = hash_size).
    """
    b = len(pixels)
    # the mean brightness of each thumbnail (integer sums are exact in float64, so this equals numpy.mean)
    avg = pixels.mean(axis=(1, 2), dtype=np.float64)
    # one bit per pixel: brighter than its thumbnail's mean
    return (pixels > avg[:, None, None]).reshape(b, -1)


def phash_bits(pixels: np.ndarray, hash_size: int, exact: bool = False) -> np.ndarray:
    """Perceptual hash (pHash), after Christoph Zauner, "Implementation and Benchmarking of Perceptual Image
    Hash Functions" (2010), as described in Krawetz's "Looks Like It" and implemented by ImageHash.phash.

    pixels: (B, N, N) thumbnails, N = hash_size * highfreq_factor. exact: scipy.fftpack's DCT as ImageHash
    (bit-identical codes); otherwise only the hash_size x hash_size low-frequency block is computed, as
    D @ X @ D.T with D the first hash_size rows of the (unnormalised, scipy type II) DCT matrix.
    """
    b = len(pixels)
    if exact:
        # the full 2-D DCT of every thumbnail, as ImageHash (over the batch axis: the same values)
        import scipy.fftpack

        low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)[:, :hash_size, :hash_size]
    else:
        # only the low frequencies: D (k, N) applied to the columns, then to the rows
        d = dct_matrix(pixels.shape[1], hash_size)
        low = np.einsum("kn,bnm->bkm", d, pixels.astype(np.float64))
        low = np.einsum("bkm,lm->bkl", low, d)
    # one bit per coefficient: above its thumbnail's median coefficient
    med = np.median(low.reshape(b, -1), axis=1)
    return (low > med[:, None, None]).reshape(b, -1)


def phash_simple_bits(pixels: np.ndarray, hash_size: int, exact: bool = False) -> np.ndarray:
    """Simple perceptual hash, after Krawetz's "Looks Like It" as ImageHash.phash_simple implements it.

    A 1-D DCT of each row only; the hash_size first rows, coefficients 1..hash_size (the DC term is
    skipped), thresholded at their mean.
    """
    b = len(pixels)
    if exact:
        import scipy.fftpack

        low = scipy.fftpack.dct(pixels)[:, :hash_size, 1:hash_size + 1]
        # the mean of each block exactly as ImageHash computes it (same view layout, same reduction)
        avg = np.array([block.mean() for block in low])
    else:
        # DCT coefficients 1..hash_size of the first hash_size rows: rows @ D[1:].T
        d = dct_matrix(pixels.shape[2], hash_size + 1)[1:]
        low = np.einsum("bkn,ln->bkl", pixels[:, :hash_size, :].astype(np.float64), d)
        avg = low.mean(axis=(1, 2))
    return (low > avg[:, None, None]).reshape(b, -1)


def dhash_bits(pixels: np.ndarray) -> np.ndarray:
    """Difference hash (dHash), horizontal, after Neal Krawetz, "Kind of Like That" (hackerfactor.com, 2013).

    pixels: (B, hash_size, hash_size + 1); one bit per pair of neighbours in a row: right brighter than left.
    """
    return (pixels[:, :, 1:] > pixels[:, :, :-1]).reshape(len(pixels), -1)


def dhash_vertical_bits(pixels: np.ndarray) -> np.ndarray:
    """Difference hash, vertical, after Krawetz's "Kind of Like That" (as ImageHash.dhash_vertical).

    pixels: (B, hash_size + 1, hash_size); one bit per pair of neighbours in a column: lower brighter.
    """
    return (pixels[:, 1:, :] > pixels[:, :-1, :]).reshape(len(pixels), -1)


def whash_bits(pixels: np.ndarray, hash_size: int, image_scale: int, mode: str = "haar",
               remove_max_haar_ll: bool = True, exact: bool = False) -> np.ndarray:
    """Wavelet hash (wHash), as ImageHash.whash: based on the Avito duplicate-ads Kaggle solution
    (https://www.kaggle.com/c/avito-duplicate-ads-detection/), wavelets by PyWavelets.

    pixels: (B, M, M) thumbnails of one image_scale S (exact: M = S, ImageHash's LANCZOS resize to S).
    The low band LL after log2(S / hash_size) levels is thresholded at its median.

    exact: pywt over the batch axes, step by step as ImageHash. Otherwise the low band is one linear map:
    LL = P @ X @ P.T with P = A_S @ U, A_S the wavelet's low band operator at scale S (pywt applied to the
    identity) and U the LANCZOS upsampling from the working size M to S (identity when M = S).
    """
    import pywt

    b = len(pixels)
    max_level = int(math.log2(image_scale))
    level = max_level - int(math.log2(hash_size))
    x = pixels / 255.0
    if exact:
        if remove_max_haar_ll:
            # remove the lowest frequency (the Haar LL at the top level) and transform back
            coeffs = list(pywt.wavedec2(x, "haar", level=max_level, axes=(1, 2)))
            coeffs[0] *= 0
            x = pywt.waverec2(coeffs, "haar", axes=(1, 2))
        # the low band after `level` levels
        low = pywt.wavedec2(x, mode, level=level, axes=(1, 2))[0]
        med = np.median(low.reshape(b, -1), axis=1)
    else:
        if remove_max_haar_ll:
            # the top-level Haar LL of a power-of-two image is its mean: removing it subtracts the mean
            x = x - x.mean(axis=(1, 2), keepdims=True)
        # the low band as two matrix products
        p = wavelet_lowband_matrix(mode, image_scale, level, x.shape[1])
        low = np.einsum("kn,bnm->bkm", p, x)
        low = np.einsum("bkm,lm->bkl", low, p)
        med = np.median(low.reshape(b, -1), axis=1)
    return (low > med[:, None, None]).reshape(b, -1)


def colorhash_bits(image: Image.Image, binbits: int = 3) -> np.ndarray:
    """Colour hash, as ImageHash.colorhash (Johannes Buchner): fractions of the image in 14 HSV bins.

    One bin of black pixels, one of grey (low saturation) ones, then 6 hue bins for faint and 6 for bright
    colours; each fraction is quantised to `binbits` bits. Returns bool (14 * binbits,).
    """
    # brightness and HSV channels of every pixel
    intensity = np.asarray(image.convert("L")).ravel()
    h, s, _ = (np.asarray(c).ravel() for c in image.convert("HSV").split())
    # black bin, then grey (low saturation, not black)
    mask_black = intensity < 256 // 8
    frac_black = mask_black.mean()
    mask_gray = s < 256 // 3
    frac_gray = np.logical_and(~mask_black, mask_gray).mean()
    # colour pixels split into faint and bright, each binned by hue
    mask_colors = np.logical_and(~mask_black, ~mask_gray)
    mask_faint = np.logical_and(mask_colors, s < 256 * 2 // 3)
    mask_bright = np.logical_and(mask_colors, s > 256 * 2 // 3)
    c = max(1, mask_colors.sum())
    hue_bins = np.linspace(0, 255, 6 + 1)
    faint = np.histogram(h[mask_faint], bins=hue_bins)[0] if mask_faint.any() else np.zeros(6)
    bright = np.histogram(h[mask_bright], bins=hue_bins)[0] if mask_bright.any() else np.zeros(6)
    # quantise the 14 fractions to binbits bits each, most significant bit first
    maxvalue = 2 ** binbits
    values = [min(maxvalue - 1, int(frac_black * maxvalue)), min(maxvalue - 1, int(frac_gray * maxvalue))]
    values += [min(maxvalue - 1, int(count * maxvalue * 1.0 / c)) for count in list(faint) + list(bright)]
    return np.array([v // (2 ** (binbits - i - 1)) % 2 ** (binbits - i) > 0
                     for v in values for i in range(binbits)], dtype=bool)
