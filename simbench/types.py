"""The data types every component shares: one type per feature kind, plus pairs.

Binary codes are packed little-endian into uint64 words: bit k of a code is bit (k % 64) of word k // 64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Skipped:
    """An input that was not used, and why (shown to the user as is)."""

    path: str
    reason: str


@dataclass
class BinaryCodes:
    """N binary codes of `bits` bits each, as a uint64 array (N, W) with W = ceil(bits / 64)."""

    words: np.ndarray
    bits: int

    def __post_init__(self):
        self.words = np.ascontiguousarray(self.words, dtype=np.uint64)
        if self.words.ndim != 2 or self.words.shape[1] != (self.bits + 63) // 64:
            raise ValueError(f"words of shape {self.words.shape} cannot hold {self.bits}-bit codes")

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class KeypointSets:
    """Keypoint descriptors of N images, stored flat: image i owns rows offsets[i]:offsets[i+1].

    descriptors: (M, D) uint8 for binary descriptors (D bytes) or float32 (SIFT);
    points (M, 2) x, y in pixels of the original image; sizes, angles, responses (M,) float32;
    image_sizes (N, 2) width, height of the original images; mirrored (M,) bool or None: True for rows
    found in the horizontally mirrored image (x mapped back to the original, angle reflected).
    """

    descriptors: np.ndarray
    offsets: np.ndarray
    points: np.ndarray
    sizes: np.ndarray
    angles: np.ndarray
    responses: np.ndarray
    image_sizes: np.ndarray
    binary: bool = True
    mirrored: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def owners(self) -> np.ndarray:
        """The image index of every descriptor row, (M,) int64."""
        counts = np.diff(self.offsets)
        return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


@dataclass
class Embeddings:
    """N L2-normalised float32 vectors (N, D); optionally R region views of each image, (N, R, D) L2-normalised
    float32 (a picture's windows, embedded on their own: simbench.features.cnn, `regions`)."""

    vectors: np.ndarray
    regions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass
class Pairs:
    """Pairs (a[k], b[k]) of row indices with their distance dist[k] (Hamming: int32)."""

    a: np.ndarray
    b: np.ndarray
    dist: np.ndarray

    @classmethod
    def empty(cls, dist_dtype=np.int32) -> "Pairs":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, dist_dtype))

    @classmethod
    def concat(cls, parts: list["Pairs"], dist_dtype=np.int32) -> "Pairs":
        if not parts:
            return cls.empty(dist_dtype)
        return cls(
            np.concatenate([p.a for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.b for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.dist for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.a)

    def sorted(self) -> "Pairs":
        """Canonical order (a, then b), so that two matchers' outputs compare with ==."""
        order = np.lexsort((self.b, self.a))
        return Pairs(self.a[order], self.b[order], self.dist[order])


@dataclass
class ScoredPairs:
    """Image pairs (a < b, indices into the dataset) with a similarity score: higher = more similar."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.a)

    def per_pair_fields(self) -> set[str]:
        """The names of the extras that hold one value per pair (the others are run-wide, such as counts)."""
        return {k for k, v in self.extra.items() if np.ndim(v) and len(v) == len(self)}

    def run_wide_numbers(self) -> dict:
        """The extras that are one number for the whole run (counts, seconds), not arrays or the objects a
        method hands on (a keypoint method's correspondences)."""
        return {k: v for k, v in self.extra.items() if isinstance(v, (int, float, np.number))}

    def subset(self, rows: np.ndarray) -> "ScoredPairs":
        """The pairs at `rows`, with their per-pair extras (run-wide extras kept whole)."""
        per_pair = self.per_pair_fields()
        extra = {k: np.asarray(v)[rows] if k in per_pair else v for k, v in self.extra.items()}
        return ScoredPairs(self.a[rows], self.b[rows], self.score[rows], extra)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array (N, nbits) into uint64 words (N, ceil(nbits/64)), bit k -> word k//64, bit k%64."""
    bits = np.asarray(bits, dtype=bool)
    n, nbits = bits.shape
    width = (nbits + 63) // 64
    padded = np.zeros((n, width * 64), dtype=bool)
    padded[:, :nbits] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")  # (N, 8W) bytes, little-endian bit order
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(n, width)


def unpack_bits(words: np.ndarray, nbits: int) -> np.ndarray:
    """Inverse of pack_bits: uint64 words (N, W) -> bool (N, nbits)."""
    words = np.ascontiguousarray(words, dtype="<u8")
    as_bytes = words.view(np.uint8).reshape(len(words), -1)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :nbits].astype(bool)


def bytes_to_words(descriptors: np.ndarray) -> np.ndarray:
    """Binary descriptors as bytes (M, D) -> uint64 words (M, ceil(D/8)), zero padded.

    Byte b, bit k (OpenCV's bit order, LSB first as cv2.norm(NORM_HAMMING) counts it) becomes code bit 8b+k.
    """
    descriptors = np.ascontiguousarray(descriptors, dtype=np.uint8)
    m, d = descriptors.shape
    width = (d + 7) // 8
    padded = np.zeros((m, width * 8), dtype=np.uint8)
    padded[:, :d] = descriptors
    return padded.view("<u8").astype(np.uint64).reshape(m, width)
