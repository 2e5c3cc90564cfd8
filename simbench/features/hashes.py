"""Perceptual hashes as extractors: one algorithm per HashExtractor, the crop-resistant hash as keypoint sets.

ImageHash (https://github.com/JohannesBuchner/imagehash) is the reference: backend="imagehash" calls it per
image. backend="fast" runs the batched kernels of simbench.features.fasthash over threads; with
compat=True they reproduce ImageHash bit for bit, with compat=False they decode JPEGs at reduced size and
agree with ImageHash to within a bit or two of 64 (see tests/test_hashes.py and results/hash_extraction.md).

Codes are ImageHash's `hash.flatten()` packed by simbench.types.pack_bits, so both backends compare bit for
bit. The algorithms and the papers they follow:

    ahash           Neal Krawetz, "Looks Like It" (hackerfactor.com, 2011)
    phash           Christoph Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions"
                    (2010), as in Krawetz's "Looks Like It"
    phash_simple    Krawetz, "Looks Like It" (1-D DCT of the rows)
    dhash           Neal Krawetz, "Kind of Like That" (hackerfactor.com, 2013), horizontal differences
    dhash_vertical  the same, vertical differences
    whash_haar      wavelet hash, after the Avito duplicate-ads Kaggle solution, Haar wavelet
    whash_db4       the same, Daubechies-4 wavelet (hash_size 8 gives a 14 x 14 = 196-bit low band)
    colorhash       ImageHash's colour hash: 14 HSV-bin fractions of binbits bits each
    crop-resistant  Steinebach, Liu, Yannikos, "Efficient Cropping-Resistant Robust Image Hashing"
                    (ARES 2014, DOI 10.1109/ARES.2014.85): CropResistantHashExtractor
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from simbench.features import fasthash
from simbench.features.base import Extracted, Extractor
from simbench.types import BinaryCodes, KeypointSets, Skipped, pack_bits

ALGORITHMS = ("ahash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash_haar", "whash_db4",
              "colorhash")
BACKENDS = ("fast", "imagehash")

#: Bump when the fast (compat=False) path changes its codes: part of the cache key.
FAST_VERSION = 1


def _versions(backend: str) -> dict:
    import PIL
    from PIL import features

    out = {"pillow": PIL.__version__, "libjpeg": features.version("libjpeg_turbo") or features.version("jpg")}
    if backend == "imagehash":
        import imagehash

        out["imagehash"] = imagehash.__version__
    return out


def _workers(workers: int) -> int:
    return fasthash.available_cores() if workers <= 0 else workers


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img")


class HashExtractor(Extractor):
    """One perceptual hash per image, as BinaryCodes.

    algorithm: one of ALGORITHMS. hash_size: bits per side (ImageHash's hash_size; whash needs a power of 2).
    backend: "fast" (batched, this package) or "imagehash" (the reference, per image).
    compat: fast path only; True reproduces ImageHash bit for bit (full decode, ImageHash's resize and
        numerics), False decodes JPEGs at reduced size (much faster, agrees to a bit or two).
    workers: threads (0 = all cores); batch_size: images per batch (an upper bound).
    highfreq_factor: phash/phash_simple thumbnail = hash_size * highfreq_factor. binbits: colorhash.
    image_scale, remove_max_haar_ll: whash, as ImageHash (image_scale None: a power of two per image).
    min_decode_size: fast path, JPEGs are decoded at 1/2, 1/4 or 1/8 scale keeping at least this many pixels
        a side (None: 8 * hash_size, and the wavelet working size for whash; 64 for colorhash).
    work_size: fast whash, thumbnail side fed to the wavelet low band operator (None: 8 * hash_size for
        haar, 16 * hash_size for db4).
    """

    kind = "binary"

    def __init__(self, algorithm: str, hash_size: int = 8, backend: str = "fast", compat: bool = False,
                 workers: int = 0, batch_size: int = 64, highfreq_factor: int = 4, binbits: int = 3,
                 image_scale: int | None = None, remove_max_haar_ll: bool = True,
                 min_decode_size: int | None = None, work_size: int | None = None):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if algorithm != "colorhash" and hash_size < 2:
            raise ValueError("hash_size must be at least 2")
        if algorithm.startswith("whash"):
            if hash_size & (hash_size - 1):
                raise ValueError("whash needs a power-of-2 hash_size")
            if image_scale is not None and (image_scale & (image_scale - 1) or image_scale < hash_size):
                raise ValueError("whash image_scale must be a power of 2, at least hash_size")
        if algorithm == "colorhash" and binbits < 1:
            raise ValueError("binbits must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.algorithm = algorithm
        self.hash_size = int(hash_size)
        self.backend = backend
        self.compat = bool(compat)
        self.workers = int(workers)
        self.batch_size = int(batch_size)
        self.highfreq_factor = int(highfreq_factor)
        self.binbits = int(binbits)
        self.image_scale = image_scale
        self.remove_max_haar_ll = bool(remove_max_haar_ll)
        self.min_decode_size = None if min_decode_size is None else int(min_decode_size)
        self.work_size = work_size
        self.spec = fasthash.HashSpec(algorithm, self.hash_size, self.highfreq_factor, self.binbits, self.compat,
                                      self.min_decode_size, image_scale, self.remove_max_haar_ll, work_size)

    @property
    def effective_backend(self) -> str:
        """The backend that really runs: "fast" falls back to "imagehash" where there is no batched path."""
        if self.backend == "fast" and self.algorithm in fasthash.FAST_ALGORITHMS:
            return "fast"
        return "imagehash"

    @property
    def bits(self) -> int:
        return self.spec.bits

    def params(self) -> dict:
        """Everything that changes the codes (the cache key); workers and batch_size do not."""
        backend = self.effective_backend
        p = {"extractor": "hash", "algorithm": self.algorithm, "backend": backend, "bits": self.bits}
        if self.algorithm != "colorhash":
            p["hash_size"] = self.hash_size
        if self.algorithm.startswith("phash"):
            p["highfreq_factor"] = self.highfreq_factor
        if self.algorithm == "colorhash":
            p["binbits"] = self.binbits
        if self.algorithm.startswith("whash"):
            p["image_scale"] = self.image_scale
            p["remove_max_haar_ll"] = self.remove_max_haar_ll
        if backend == "fast":
            p["compat"] = self.compat
            if not self.compat:
                p["fast_version"] = FAST_VERSION
                p["decode_side"] = self.spec.decode_side()
                if self.algorithm.startswith("whash"):
                    p["work_size"] = self.work_size
        p["versions"] = _versions(backend)
        return p

    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        """Hash every readable image; unreadable ones go to `skipped` with the reason, never raise."""
        fn = fasthash.hash_batch if self.effective_backend == "fast" else fasthash.reference_batch
        rows, words, skipped = [], [], []
        with _progress(len(paths), progress, self.algorithm) as bar:
            for batch, result in fasthash.iter_batches(fn, self.spec, paths, self.batch_size,
                                                       _workers(self.workers)):
                rows.append(result.rows)
                words.append(result.words)
                skipped += [Skipped(str(paths[row]), reason) for row, reason in result.skipped]
                bar.update(len(batch))
        width = (self.bits + 63) // 64
        words = np.concatenate(words) if words else np.zeros((0, width), np.uint64)
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return Extracted(BinaryCodes(words, self.bits), rows.astype(np.int64), skipped)

    def __repr__(self) -> str:
        return f"HashExtractor({self.algorithm!r}, hash_size={self.hash_size}, backend={self.backend!r}, " \
               f"compat={self.compat})"


class CropResistantHashExtractor(Extractor):
    """ImageHash's crop-resistant hash as a set of segment hashes per image (KeypointSets).

    After Steinebach, Liu and Yannikos, "Efficient Cropping-Resistant Robust Image Hashing" (ARES 2014,
    DOI 10.1109/ARES.2014.85): the image is segmented into bright and dark regions and each region's
    bounding box gets a dhash. Each segment is one binary descriptor: its hash_size**2-bit dhash as bytes in
    pack_bits order (bytes_to_words gives back the packed code). points: segment centroids (x, y) in original
    image pixels; sizes: segment pixel counts in the segmentation image; angles and responses: zeros.

    backend "imagehash" runs imagehash.crop_resistant_hash (a Python flood fill, about a second an image;
    its points and sizes are zeros). "fast" labels connected components instead (same segments, same order);
    compat=True decodes in full and gives ImageHash's segment hashes bit for bit, compat=False decodes JPEGs
    at reduced size (at least min_decode_size, default the segmentation size).
    """

    kind = "keypoints"

    def __init__(self, hash_size: int = 8, limit_segments: int | None = None, segment_threshold: int = 128,
                 min_segment_size: int = 500, segmentation_image_size: int = 300, backend: str = "fast",
                 compat: bool = False, workers: int = 0, batch_size: int = 16, min_decode_size: int = 300):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if hash_size < 2:
            raise ValueError("hash_size must be at least 2")
        self.backend = backend
        self.workers = int(workers)
        self.batch_size = int(batch_size)
        self.spec = fasthash.CropResistantSpec(int(hash_size), limit_segments, segment_threshold,
                                               int(min_segment_size), int(segmentation_image_size), bool(compat),
                                               int(min_decode_size))

    @property
    def descriptor_bytes(self) -> int:
        return (self.spec.hash_size ** 2 + 7) // 8

    def params(self) -> dict:
        s = self.spec
        p = {"extractor": "crop_resistant_hash", "segment_hash": "dhash", "backend": self.backend,
             "hash_size": s.hash_size, "limit_segments": s.limit_segments,
             "segment_threshold": s.segment_threshold, "min_segment_size": s.min_segment_size,
             "segmentation_image_size": s.segmentation_image_size}
        if self.backend == "fast":
            p["compat"] = s.compat
            if not s.compat:
                p["fast_version"] = FAST_VERSION
                p["min_decode_size"] = s.min_decode_size
        p["versions"] = _versions(self.backend)
        return p

    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        fn = fasthash.crop_resistant_batch if self.backend == "fast" else fasthash.reference_crop_resistant
        done, skipped = [], []
        with _progress(len(paths), progress, "crop_resistant") as bar:
            for batch, (hashed, failed) in fasthash.iter_batches(fn, self.spec, paths, self.batch_size,
                                                                 _workers(self.workers)):
                done += hashed
                skipped += [Skipped(str(paths[row]), reason) for row, reason in failed]
                bar.update(len(batch))
        return Extracted(self._keypoint_sets(done), np.array([row for row, _ in done], np.int64), skipped)

    def _keypoint_sets(self, done: list) -> KeypointSets:
        nbytes = self.descriptor_bytes
        counts = [len(h.bits) for _, h in done]
        offsets = np.zeros(len(done) + 1, np.int64)
        offsets[1:] = np.cumsum(counts)
        if done:
            bits = np.concatenate([h.bits for _, h in done])
            # bytes of the packed little-endian words, cut to the code's bytes
            desc = pack_bits(bits).astype("<u8").view(np.uint8).reshape(len(bits), -1)[:, :nbytes]
            points = np.concatenate([h.points for _, h in done]).astype(np.float32)
            sizes = np.concatenate([h.sizes for _, h in done]).astype(np.float32)
            image_sizes = np.array([h.image_size for _, h in done], np.int64)
        else:
            desc = np.zeros((0, nbytes), np.uint8)
            points = np.zeros((0, 2), np.float32)
            sizes = np.zeros(0, np.float32)
            image_sizes = np.zeros((0, 2), np.int64)
        m = len(desc)
        return KeypointSets(np.ascontiguousarray(desc), offsets, points, sizes, np.zeros(m, np.float32),
                            np.zeros(m, np.float32), image_sizes, binary=True)
