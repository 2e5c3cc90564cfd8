"""Batched kernels for the perceptual hashes: the fast path behind simbench.features.hashes.

ImageHash (Johannes Buchner, https://github.com/JohannesBuchner/imagehash) hashes one PIL image at a time:
full JPEG decode, LANCZOS resize from full size, then a small transform. Here the same hashes are computed
in three cheap stages:

1. decode small: JPEG draft decoding lets libjpeg scale by 1/2, 1/4 or 1/8 while decoding (at 1/8 only the
   DC coefficient of each 8x8 block is inverse-transformed), keeping at least 8 * hash_size pixels a side;
2. resize the small image to the hash's working size (PIL LANCZOS, as ImageHash, but from the small image);
3. transform the whole batch at once: the DCT low-frequency block and the wavelet low band are matrix
   products (D8 @ X @ D8.T), the thresholds are vectorised over the batch.

With `compat=True` every stage is ImageHash's own (full decode, convert("L"), LANCZOS from full size,
scipy.fftpack.dct and pywt over the batch axis, the same numpy reductions), so the codes equal ImageHash's
bit for bit. Batches are spread over worker processes by `map_batches`.

Every kernel returns bits as bool (B, nbits) in ImageHash's `hash.flatten()` order.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFilter

from simbench.data.images import UnreadableImage, open_image
from simbench.types import pack_bits

LANCZOS = Image.Resampling.LANCZOS

#: Algorithms with a batched path, and whether they hash a greyscale thumbnail (all but colorhash).
FAST_ALGORITHMS = ("ahash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash_haar", "whash_db4",
                   "colorhash")


# ---------------------------------------------------------------------------------------------------------
# The kernels: one small function per algorithm, on stacks of thumbnails (B, h, w).
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# Transform matrices (cached: built once per size)
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# One batch: decode, resize, transform, pack
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HashSpec:
    """Everything a worker needs to hash a batch (small and picklable)."""

    algorithm: str
    hash_size: int = 8
    highfreq_factor: int = 4
    binbits: int = 3
    compat: bool = False
    min_decode_size: int | None = None
    image_scale: int | None = None
    remove_max_haar_ll: bool = True
    work_size: int | None = None

    @property
    def wavelet(self) -> str:
        return self.algorithm.split("_", 1)[1]

    @property
    def bits(self) -> int:
        """Code length in bits (whash_db4: the padded low band, e.g. 14 x 14 = 196 for hash_size 8)."""
        if self.algorithm == "colorhash":
            return 14 * self.binbits
        if self.algorithm.startswith("whash"):
            scale = self.image_scale or 8 * self.hash_size
            return whash_low_size(self.wavelet, scale, self.hash_size) ** 2
        return self.hash_size * self.hash_size

    def thumb_size(self) -> tuple[int, int]:
        """(width, height) of the greyscale thumbnail ImageHash resizes to (whash: per image, see below)."""
        h, a = self.hash_size, self.algorithm
        if a in ("phash", "phash_simple"):
            return h * self.highfreq_factor, h * self.highfreq_factor
        if a == "dhash":
            return h + 1, h
        if a == "dhash_vertical":
            return h, h + 1
        return h, h

    def decode_side(self) -> int:
        """Fast path: JPEGs are draft-decoded keeping at least this many pixels a side.

        Default: 8 * hash_size (64 for 64-bit hashes: 1/8 scale for photos of 512 pixels and more), and at
        least the wavelet working size; measured to keep codes within a bit or two of ImageHash's.
        """
        if self.algorithm == "colorhash":
            return self.min_decode_size or 64
        side = self.min_decode_size or 8 * self.hash_size
        if self.algorithm.startswith("whash") and not self.min_decode_size:
            side = max(side, self.whash_work(1 << 30))
        return max(side, *self.thumb_size())

    def whash_scale(self, min_side: int) -> int:
        return self.image_scale or natural_scale(min_side, self.hash_size)

    def whash_work(self, scale: int) -> int:
        """Fast path: the thumbnail side fed to the low band operator (never above the scale itself)."""
        work = self.work_size or (8 if self.wavelet == "haar" else 16) * self.hash_size
        return min(scale, work)


def _original_size(path, decoded: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) of the image before draft decoding, in the decoded orientation.

    Reads the header only. The decoder scales by s in {1, 2, 4, 8}, rounding up; a swapped match means the
    EXIF orientation transposed the image.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # the file was readable a moment ago; fall back to the decoded size
        return decoded
    for s in (1, 2, 4, 8):
        if decoded == (-(-w // s), -(-h // s)):
            return w, h
        if decoded == (-(-h // s), -(-w // s)):
            return h, w
    return decoded


def _thumbnail(path, spec: HashSpec) -> tuple[np.ndarray | Image.Image, int]:
    """Decode one image and resize it for spec; returns (thumbnail, whash scale or 0).

    compat: what the reference backend hands ImageHash (open_image, full RGB decode), then ImageHash's own
    convert("L") and LANCZOS resize. Fast: a draft decode straight to greyscale, LANCZOS from the small image.
    """
    if spec.algorithm == "colorhash":
        if spec.compat:
            return open_image(path), 0
        d = spec.decode_side()
        return open_image(path, draft=(d, d), mode="RGB"), 0
    is_whash = spec.algorithm.startswith("whash")
    if spec.compat:
        im = open_image(path)
        if is_whash:
            scale = spec.whash_scale(min(im.size))
            size = (scale, scale)
        else:
            scale, size = 0, spec.thumb_size()
        return np.asarray(im.convert("L").resize(size, LANCZOS)), scale
    tw, th = spec.thumb_size()
    d = spec.decode_side()
    im = open_image(path, draft=(d, d), mode="L")
    scale = 0
    if is_whash:
        scale = spec.whash_scale(min(_original_size(path, im.size)))
        work = spec.whash_work(scale)
        tw = th = work
    return np.asarray(im.resize((tw, th), LANCZOS)), scale


def _hash_stack(spec: HashSpec, pixels: np.ndarray, scale: int) -> np.ndarray:
    """Bits (B, nbits) of a stack of same-shaped thumbnails."""
    a, h, exact = spec.algorithm, spec.hash_size, spec.compat
    if a == "ahash":
        return average_hash_bits(pixels)
    if a == "phash":
        return phash_bits(pixels, h, exact)
    if a == "phash_simple":
        return phash_simple_bits(pixels, h, exact)
    if a == "dhash":
        return dhash_bits(pixels)
    if a == "dhash_vertical":
        return dhash_vertical_bits(pixels)
    if a.startswith("whash"):
        return whash_bits(pixels, h, scale, spec.wavelet, spec.remove_max_haar_ll, exact)
    raise ValueError(f"no batched kernel for {a!r}")


@dataclass
class BatchResult:
    """Codes of the readable images of one batch: rows (indices into the input), words, skipped."""

    rows: np.ndarray
    words: np.ndarray
    skipped: list[tuple[int, str]]


def hash_batch(spec: HashSpec, items: Sequence[tuple[int, str]]) -> BatchResult:
    """Hash a batch of (row, path): decode and resize each image, then one vectorised kernel per shape."""
    thumbs: dict[tuple, list[tuple[int, object]]] = {}
    skipped: list[tuple[int, str]] = []
    bits_of: dict[int, np.ndarray] = {}
    for row, path in items:
        try:
            thumb, scale = _thumbnail(path, spec)
            if spec.algorithm == "colorhash":
                bits_of[row] = colorhash_bits(thumb, spec.binbits)
                continue
        except UnreadableImage as exc:
            skipped.append((row, str(exc)))
            continue
        except Exception as exc:  # whatever else a decoder may throw: skip the image, never raise
            skipped.append((row, _failure(exc)))
            continue
        # group same-shaped thumbnails (whash: same image scale) for one vectorised call
        thumbs.setdefault((thumb.shape, scale), []).append((row, thumb))
    for (shape, scale), group in thumbs.items():
        # at most ~4M pixels a call (compat whash thumbnails are up to 512 x 512 float64)
        step = max(1, (1 << 22) // int(np.prod(shape)))
        for i in range(0, len(group), step):
            part = group[i:i + step]
            bits = _hash_stack(spec, np.stack([t for _, t in part]), scale)
            for (row, _), b in zip(part, bits):
                bits_of[row] = b
    return _pack(spec.bits, bits_of, skipped, spec.algorithm)


def reference_batch(spec: HashSpec, items: Sequence[tuple[int, str]]) -> BatchResult:
    """The reference: ImageHash itself, one image at a time, on what open_image decodes (full RGB)."""
    fn = reference_function(spec)
    bits_of: dict[int, np.ndarray] = {}
    skipped: list[tuple[int, str]] = []
    for row, path in items:
        try:
            bits_of[row] = np.asarray(fn(open_image(path)).hash).ravel()
        except UnreadableImage as exc:
            skipped.append((row, str(exc)))
        except Exception as exc:
            skipped.append((row, _failure(exc)))
    return _pack(spec.bits, bits_of, skipped, spec.algorithm)


def _failure(exc: Exception) -> str:
    return f"cannot hash this image ({type(exc).__name__}: {exc})"


def reference_function(spec: HashSpec) -> Callable[[Image.Image], object]:
    """The ImageHash function and arguments for spec."""
    import imagehash

    a, h = spec.algorithm, spec.hash_size
    if a == "ahash":
        return functools.partial(imagehash.average_hash, hash_size=h)
    if a == "phash":
        return functools.partial(imagehash.phash, hash_size=h, highfreq_factor=spec.highfreq_factor)
    if a == "phash_simple":
        return functools.partial(imagehash.phash_simple, hash_size=h, highfreq_factor=spec.highfreq_factor)
    if a == "dhash":
        return functools.partial(imagehash.dhash, hash_size=h)
    if a == "dhash_vertical":
        return functools.partial(imagehash.dhash_vertical, hash_size=h)
    if a.startswith("whash"):
        return functools.partial(imagehash.whash, hash_size=h, image_scale=spec.image_scale, mode=spec.wavelet,
                                 remove_max_haar_ll=spec.remove_max_haar_ll)
    if a == "colorhash":
        return functools.partial(imagehash.colorhash, binbits=spec.binbits)
    raise ValueError(f"unknown hash algorithm {a!r}")


def _pack(nbits: int, bits_of: dict[int, np.ndarray], skipped: list, algorithm: str) -> BatchResult:
    """Pack the bits in row order; a code of another length (a tiny image for whash_db4) is skipped."""
    rows, codes = [], []
    for row in sorted(bits_of):
        b = bits_of[row]
        if b.size != nbits:
            skipped.append((row, f"image too small for {algorithm}: {b.size}-bit hash, expected {nbits} bits"))
            continue
        rows.append(row)
        codes.append(b)
    words = pack_bits(np.array(codes, dtype=bool).reshape(len(codes), nbits)) if codes else \
        np.zeros((0, (nbits + 63) // 64), np.uint64)
    return BatchResult(np.array(rows, dtype=np.int64), words, sorted(skipped))


# ---------------------------------------------------------------------------------------------------------
# Crop-resistant hash: segmentation as ImageHash, by connected-component labelling
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Segments:
    """Segments of the segmentation image, in ImageHash's order: labels (S, S) int32 (0 = none) and, per
    segment, its pixel count, centroid (row, col) and bounding box (min_row, min_col, max_row, max_col)."""

    labels: np.ndarray
    sizes: np.ndarray
    centroids: np.ndarray
    boxes: np.ndarray


def find_segments(pixels: np.ndarray, segment_threshold: float = 128, min_segment_size: int = 500) -> Segments:
    """The bright ("hill") and dark ("valley") regions of ImageHash.crop_resistant_hash, after Steinebach,
    Liu and Yannikos, "Efficient Cropping-Resistant Robust Image Hashing" (ARES 2014, DOI 10.1109/ARES.2014.85).

    ImageHash grows each region by a set-based flood fill (4-neighbours) from the first remaining pixel in
    row-major order: hills first, then valleys. That is connected-component labelling, in the order of each
    component's first pixel. Its quirks are kept so that the segments are the same: the valley search stops
    once its count of segmented pixels (which includes the 4 * S pixels of the frame around the image and
    leaves out the pixel of one-pixel regions) reaches S * S; regions must have more than min_segment_size
    pixels. Where ImageHash would run out of valleys (and raise), the segments found so far are returned.
    """
    from scipy import ndimage

    n_rows, n_cols = pixels.shape
    hills = pixels > segment_threshold
    regions = []  # (label image, label, size) in ImageHash's order
    counted = 2 * (n_rows + n_cols)  # the frame of pixels around the image, pre-marked as segmented
    target = n_rows * n_cols
    for mask, is_valley in ((hills, False), (~hills, True)):
        # 4-connected components, ordered by their first pixel in row-major order
        labels, n = ndimage.label(mask)
        if n == 0:
            continue
        flat = labels.ravel()
        ids, first = np.unique(flat, return_index=True)
        keep = ids > 0
        ids, first = ids[keep], first[keep]
        counts = np.bincount(flat, minlength=n + 1)
        for lab in ids[np.argsort(first, kind="stable")]:
            if is_valley and counted >= target:
                break
            size = int(counts[lab])
            counted += size if size > 1 else 0  # a one-pixel region never enters ImageHash's set
            regions.append((labels, int(lab), size, is_valley))
    out = np.zeros(pixels.shape, np.int32)
    sizes, centroids, boxes = [], [], []
    rr, cc = np.indices(pixels.shape)
    for labels, lab, size, _ in regions:
        if size <= min_segment_size:
            continue
        member = labels == lab
        out[member] = len(sizes) + 1
        r, c = rr[member], cc[member]
        sizes.append(size)
        centroids.append((r.mean(), c.mean()))
        boxes.append((r.min(), c.min(), r.max(), c.max()))
    return Segments(out, np.array(sizes, np.int64), np.array(centroids, np.float64).reshape(-1, 2),
                    np.array(boxes, np.int64).reshape(-1, 4))


@dataclass(frozen=True)
class CropResistantSpec:
    """Parameters of the crop-resistant hash (ImageHash.crop_resistant_hash with dhash segment hashes)."""

    hash_size: int = 8
    limit_segments: int | None = None
    segment_threshold: int = 128
    min_segment_size: int = 500
    segmentation_image_size: int = 300
    compat: bool = False
    min_decode_size: int = 300


@dataclass
class SegmentHashes:
    """Segment hashes of one image: bits (K, nbits), centroids (K, 2) x, y in original pixels, sizes (K,),
    and the original image size (width, height)."""

    bits: np.ndarray
    points: np.ndarray
    sizes: np.ndarray
    image_size: tuple[int, int]


def crop_resistant_hash(image: Image.Image, spec: CropResistantSpec,
                        original_size: tuple[int, int] | None = None) -> SegmentHashes:
    """Crop-resistant hash, after Steinebach, Liu and Yannikos (ARES 2014) as ImageHash.crop_resistant_hash.

    Segment a blurred greyscale thumbnail into bright and dark regions, then dhash the bounding box of each
    region in the image. `image` may be a reduced decode of the original (fast path): boxes are scaled to it,
    and points are reported in original_size pixels.
    """
    size = spec.segmentation_image_size
    w, h = image.size
    ow, oh = original_size or (w, h)
    # greyscale thumbnail, blurred then median filtered, as ImageHash
    thumb = image.convert("L").resize((size, size), LANCZOS)
    thumb = thumb.filter(ImageFilter.GaussianBlur()).filter(ImageFilter.MedianFilter())
    seg = find_segments(np.array(thumb).astype(np.float32), spec.segment_threshold, spec.min_segment_size)
    boxes, sizes, centroids = seg.boxes, seg.sizes, seg.centroids
    if len(sizes) == 0:
        # no segment: one segment spanning the whole image
        boxes = np.array([[0, 0, size - 1, size - 1]])
        sizes = np.array([size * size])
        centroids = np.array([[(size - 1) / 2.0, (size - 1) / 2.0]])
    if spec.limit_segments:
        # keep the largest segments (a stable sort, as Python's sorted)
        order = np.argsort(-sizes, kind="stable")[:spec.limit_segments]
        boxes, sizes, centroids = boxes[order], sizes[order], centroids[order]
    # dhash of each segment's bounding box, cut from the image (ImageHash's float box, PIL rounds it)
    scale_w, scale_h = float(w) / size, float(h) / size
    crops = []
    for min_r, min_c, max_r, max_c in boxes:
        box = (min_c * scale_w, min_r * scale_h, (max_c + 1) * scale_w, (max_r + 1) * scale_h)
        crop = image.crop(box).convert("L").resize((spec.hash_size + 1, spec.hash_size), LANCZOS)
        crops.append(np.asarray(crop))
    bits = dhash_bits(np.stack(crops))
    # centroids (row, col) in segmentation pixels -> (x, y) in original pixels, at pixel centres
    points = np.column_stack([(centroids[:, 1] + 0.5) * ow / size, (centroids[:, 0] + 0.5) * oh / size])
    return SegmentHashes(bits, points.astype(np.float32), sizes.astype(np.float32), (ow, oh))


def crop_resistant_batch(spec: CropResistantSpec, items: Sequence[tuple[int, str]]
                         ) -> tuple[list[tuple[int, SegmentHashes]], list[tuple[int, str]]]:
    """Segment hashes of a batch of (row, path); compat decodes in full, otherwise a draft decode."""
    done, skipped = [], []
    for row, path in items:
        try:
            if spec.compat:
                image = open_image(path)
                original = image.size
            else:
                d = max(spec.min_decode_size, spec.segmentation_image_size)
                image = open_image(path, draft=(d, d), mode="L")
                original = _original_size(path, image.size)
            done.append((row, crop_resistant_hash(image, spec, original)))
        except UnreadableImage as exc:
            skipped.append((row, str(exc)))
        except Exception as exc:
            skipped.append((row, _failure(exc)))
    return done, skipped


def reference_crop_resistant(spec: CropResistantSpec, items: Sequence[tuple[int, str]]
                             ) -> tuple[list[tuple[int, SegmentHashes]], list[tuple[int, str]]]:
    """The reference: imagehash.crop_resistant_hash per image (slow: a Python flood fill). Points are zeros."""
    import imagehash

    done, skipped = [], []
    for row, path in items:
        try:
            image = open_image(path)
            multi = imagehash.crop_resistant_hash(
                image, functools.partial(imagehash.dhash, hash_size=spec.hash_size), spec.limit_segments,
                spec.segment_threshold, spec.min_segment_size, spec.segmentation_image_size)
        except UnreadableImage as exc:
            skipped.append((row, str(exc)))
            continue
        except Exception as exc:  # e.g. ImageHash's flood fill running out of valleys
            skipped.append((row, _failure(exc)))
            continue
        bits = np.array([np.asarray(s.hash).ravel() for s in multi.segment_hashes], dtype=bool)
        k = len(bits)
        done.append((row, SegmentHashes(bits, np.zeros((k, 2), np.float32), np.zeros(k, np.float32),
                                        image.size)))
    return done, skipped


# ---------------------------------------------------------------------------------------------------------
# Spreading batches over processes
# ---------------------------------------------------------------------------------------------------------

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    """Set up a forked worker: default signal handling, one thread (the processes are the parallelism).

    A forked worker inherits the parent's signal handlers (a job runner such as submitit catches SIGTERM),
    which would keep Pool.terminate() from stopping it: SIGTERM goes back to its default, and SIGINT is left
    to the parent. The kernels call no BLAS (einsum, pocketfft and pywt are single-threaded); the variables
    below cover anything loaded later, and threadpoolctl / OpenCV are limited when present.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    cv2 = sys.modules.get("cv2")  # only if loaded: importing it costs each worker a fifth of a second
    if cv2 is not None:
        cv2.setNumThreads(1)


def prepare(spec) -> None:
    """Import what the kernels of spec need and build their fixed matrices, in the parent process, so that
    forked workers start with them."""
    if isinstance(spec, HashSpec):
        if spec.algorithm.startswith("whash"):
            import pywt  # noqa: F401
        if spec.compat and spec.algorithm.startswith("phash"):
            import scipy.fftpack  # noqa: F401
        if spec.algorithm == "phash" and not spec.compat:
            dct_matrix(spec.thumb_size()[0], spec.hash_size)
        if spec.algorithm == "phash_simple" and not spec.compat:
            dct_matrix(spec.thumb_size()[0], spec.hash_size + 1)
    else:
        from scipy import ndimage  # noqa: F401


def _call(job):
    fn, spec, items = job
    return fn(spec, items)


def map_batches(fn: Callable, spec, batches: Sequence[Sequence[tuple[int, str]]], workers: int
                ) -> Iterator:
    """Yield fn(spec, batch) for every batch, in order; over `workers` threads when workers > 1.

    Threads, not processes: JPEG decoding and resizing in Pillow, and NumPy's array work, release the GIL,
    so threads use the cores without starting interpreters; and unlike forked processes they cannot
    inherit a lock held by another thread (numba, OpenMP, OpenCV), nor hang inside job runners (joblib,
    submitit) that handle signals or processes their own way.
    """
    jobs = [(fn, spec, list(batch)) for batch in batches]
    prepare(spec)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _call(job)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="simbench-hash") as pool:
        futures = [pool.submit(_call, job) for job in jobs]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:  # the caller stopped early or failed: drop what has not started
                future.cancel()


def split_batches(n: int, batch_size: int, workers: int) -> list[range]:
    """Index ranges of at most batch_size images, small enough to keep every worker busy (>= 4 per worker)."""
    if n == 0:
        return []
    per = max(1, min(batch_size, math.ceil(n / (max(1, workers) * 4))))
    return [range(i, min(i + per, n)) for i in range(0, n, per)]


def iter_batches(fn: Callable, spec, paths: Sequence, batch_size: int, workers: int) -> Iterable:
    """(batch range, fn result) over paths split into batches."""
    batches = split_batches(len(paths), batch_size, workers)
    items = [[(i, str(paths[i])) for i in b] for b in batches]
    yield from zip(batches, map_batches(fn, spec, items, workers))
