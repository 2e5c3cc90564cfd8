"""One batch of images: decode, resize, transform, pack; and the ImageHash reference for the same batch."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simbench.data.images import UnreadableImage, open_image, to_mode
from simbench.features.fasthash.kernels import (average_hash_bits, colorhash_bits, dhash_bits, dhash_vertical_bits,
                                                phash_bits, phash_simple_bits, whash_bits)
from simbench.features.fasthash.transforms import LANCZOS, natural_scale, whash_low_size
from simbench.types import pack_bits

#: Algorithms with a batched path, and whether they hash a greyscale thumbnail (all but colorhash).
FAST_ALGORITHMS = ("ahash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash_haar", "whash_db4",
                   "colorhash")


@dataclass(frozen=True)
class HashSpec:
    """Everything needed to hash a batch (frozen: the threads share it)."""

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


def original_size(path, decoded: tuple[int, int]) -> tuple[int, int]:
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

    compat: what the reference backend hands ImageHash (open_image, full RGB decode). Fast: a draft decode
    straight to greyscale (RGB for colorhash).
    """
    if spec.compat:
        return _resized(open_image(path), spec)
    d = spec.decode_side()
    im = open_image(path, draft=(d, d), mode="RGB" if spec.algorithm == "colorhash" else "L")
    return _resized(im, spec, original_size(path, im.size))


def _resized(im: Image.Image, spec: HashSpec, original: tuple[int, int] | None = None
             ) -> tuple[np.ndarray | Image.Image, int]:
    """What the kernels take from a decoded image: colorhash the image itself, the others a greyscale
    LANCZOS thumbnail; whash's scale follows the `original` size (before a draft decode; None: im's own).

    compat: ImageHash's own convert("L") and resize; fast: im is greyscale already, whash resized to its
    working size only."""
    if spec.algorithm == "colorhash":
        return im, 0
    is_whash = spec.algorithm.startswith("whash")
    scale = spec.whash_scale(min(original or im.size)) if is_whash else 0
    if spec.compat:
        size = (scale, scale) if is_whash else spec.thumb_size()
        return np.asarray(im.convert("L").resize(size, LANCZOS)), scale
    size = (spec.whash_work(scale),) * 2 if is_whash else spec.thumb_size()
    return np.asarray(im.resize(size, LANCZOS)), scale


def image_bits(spec: HashSpec, image: Image.Image) -> np.ndarray:
    """The bits of one image already in memory (simbench.hash): the steps hash_batch takes after decoding
    (no draft decode: the pixels are all there). Raises ValueError when the image is too small for spec."""
    im = to_mode(image, "RGB" if spec.compat or spec.algorithm == "colorhash" else "L")
    thumb, scale = _resized(im, spec)
    bits = colorhash_bits(thumb, spec.binbits) if spec.algorithm == "colorhash" else \
        _hash_stack(spec, np.asarray(thumb)[None], scale)[0]
    if bits.size != spec.bits:
        raise ValueError(f"image too small for {spec.algorithm}: {bits.size}-bit hash, expected {spec.bits} bits")
    return np.asarray(bits, bool).ravel()


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
            skipped.append((row, failure_reason(exc)))
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
            skipped.append((row, failure_reason(exc)))
    return _pack(spec.bits, bits_of, skipped, spec.algorithm)


def failure_reason(exc: Exception) -> str:
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
