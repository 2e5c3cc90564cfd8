"""A large generated collection for scale runs: thousands of distinct pictures, a few of them copied.

The embedded synthetic set (simbench.data.synthetic) is cut from scikit-image's eighteen photographs, so
it cannot grow past a few hundred distinct pictures. Scale runs need many *different* pictures, or every
descriptor finds thousands of true partners and the run measures a degenerate collection. So each picture
here is drawn from its own seed:

- a background of coloured 1/f^2 noise (the power spectrum of natural images, Field 1987), with
  fine-grained noise on top so flat areas still have texture;
- 10 to 40 shapes (rectangles, ellipses, polygons, lines, stripes) in random colours;
- a few words of text.

A fraction of the collection (`copy_fraction`) are copies of other pictures, made by the transforms of the
synthetic set (simbench.data.transforms: crops, rotations, flips, JPEG, ...), one random kind per copy;
truth is every pair inside a group. Built once into `cache_dir/collection-<hash>/` (images/*.jpg,
labels.csv, truth.csv, params.json), in worker processes, atomically like the synthetic set.
"""
from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from simbench.data.dataset import Dataset
from simbench.data.synthetic import (DISTRACTOR, REFERENCE, build_atomically, built_root, default_cache_dir,
                                     read_built, save_jpeg, write_csv)
from simbench.data.transforms import TRANSFORMS

#: Bump when the build changes, so old caches are not reused.
BUILD_VERSION = 1

_WORDS = ("North", "archive", "1764", "Plate", "figure", "Lorem", "ipsum", "Vol. III", "map", "index",
          "harbour", "garden", "the", "of", "school", "team", "fig. 12", "page", "spring", "royal")


class CollectionDataset:
    """n_images pictures: n_images * copy_fraction copies (one transform each) of distinct originals.

    Originals that were copied are labelled "reference", the others "distractor", copies by their
    transform's name (so per-transform recall works as on the synthetic set).
    """

    def __init__(self, n_images: int = 10_000, copy_fraction: float = 0.1, long_side: int = 512,
                 transforms: list[str] | None = None, seed: int = 0, workers: int = 0,
                 cache_dir: str | None = None):
        if n_images < 1:
            raise ValueError("n_images must be >= 1")
        if not 0.0 <= copy_fraction < 1.0:
            raise ValueError("copy_fraction must be in [0, 1)")
        if long_side < 64:
            raise ValueError("long_side must be at least 64")
        self.n_images = int(n_images)
        self.copy_fraction = float(copy_fraction)
        self.long_side = int(long_side)
        self.transforms = list(TRANSFORMS) if transforms is None else [str(t) for t in transforms]
        unknown = [t for t in self.transforms if t not in TRANSFORMS]
        if unknown or not self.transforms:
            raise ValueError(f"unknown or no transforms {unknown}; known: {sorted(TRANSFORMS)}")
        self.seed = int(seed)
        self.workers = int(workers)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    def params(self) -> dict:
        """Everything that changes the built files (the cache key); workers do not."""
        return {"build": BUILD_VERSION, "n_images": self.n_images, "copy_fraction": self.copy_fraction,
                "long_side": self.long_side, "transforms": self.transforms, "seed": self.seed,
                "opencv": cv2.__version__}

    @property
    def root(self) -> Path:
        """cache_dir/collection-<short hash of params>."""
        return built_root(self.cache_dir, "collection", self.params())

    def load(self, progress: bool = True) -> Dataset:
        """The collection, built on first use and read from the cache afterwards."""
        if not self.root.is_dir():
            build_atomically(self.root, self._build, progress)
        return read_built(self.root, name="collection")

    def plan(self) -> list[tuple[str, int, str | None]]:
        """(relative path, original index, transform or None) per image, in dataset order."""
        rng = np.random.default_rng([self.seed, 0])
        n_copies = int(round(self.n_images * self.copy_fraction))
        n_originals = self.n_images - n_copies
        sources = rng.integers(0, n_originals, size=n_copies)  # an original may be copied more than once
        kinds = rng.integers(0, len(self.transforms), size=n_copies)
        jobs = [(f"images/p{i:05d}.jpg", i, None) for i in range(n_originals)]
        jobs += [(f"images/c{k:05d}_{self.transforms[kind]}.jpg", int(src), self.transforms[kind])
                 for k, (src, kind) in enumerate(zip(sources, kinds))]
        return jobs

    def _build(self, out: Path, progress: bool) -> None:
        (out / "images").mkdir()
        jobs = self.plan()
        n_originals = sum(kind is None for _, _, kind in jobs)  # copies follow them, numbered from 0
        args = [(str(out), path, self.seed, source, kind, job - n_originals, self.long_side)
                for job, (path, source, kind) in enumerate(jobs)]
        workers = self.workers or os.cpu_count() or 1
        with ProcessPoolExecutor(workers) as pool:
            done = pool.map(_write_image, args, chunksize=64)
            for _ in tqdm(done, total=len(args), desc="building collection", unit="img",
                          disable=not progress or None):
                pass
        copied = {source for _, source, kind in jobs if kind is not None}
        groups: dict[int, list[str]] = {}
        rows = []
        for path, source, kind in jobs:
            if kind is None:
                rows.append((path, REFERENCE if source in copied else DISTRACTOR))
            else:
                rows.append((path, kind))
            if source in copied:
                groups.setdefault(source, []).append(path)
        truth = [pair for members in groups.values() for pair in itertools.combinations(members, 2)]
        write_csv(out / "labels.csv", ("path", "label"), rows)
        write_csv(out / "truth.csv", ("a", "b"), truth)
        (out / "params.json").write_text(json.dumps(self.params(), indent=2, sort_keys=True) + "\n")


def _write_image(arg) -> str:
    """Draw original `source` (from its own seed) and save it, or a transformed copy of it."""
    out, path, seed, source, kind, copy, long_side = arg
    picture = Image.fromarray(scene(np.random.default_rng([seed, 1, source]), long_side), "RGB")
    if kind is not None:  # the transform's randomness is seeded by the copy's number: every copy differs
        picture = TRANSFORMS[kind](picture, np.random.default_rng([seed, 2, copy]))
    return save_jpeg(picture, Path(out), path)


def scene(rng: np.random.Generator, long_side: int) -> np.ndarray:
    """One generated picture, uint8 RGB, long side `long_side`, aspect ratio 4:3 to 3:4."""
    aspect = rng.uniform(0.75, 1.0)
    w, h = (long_side, round(long_side * aspect)) if rng.random() < 0.6 else (round(long_side * aspect), long_side)
    img = _background(rng, w, h)
    for _ in range(int(rng.integers(10, 41))):
        _shape(img, rng)
    for _ in range(int(rng.integers(0, 4))):
        text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))
        org = (int(rng.integers(0, w * 3 // 4)), int(rng.integers(20, h)))
        cv2.putText(img, text, org, int(rng.integers(0, 8)), float(rng.uniform(0.5, 1.6)), _colour(rng),
                    int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Coloured 1/f^2 noise: three random-phase fields mixed by a random colour matrix, plus grain."""
    small = (h // 4 + 1, w // 4 + 1)
    fy = np.fft.fftfreq(small[0])[:, None]
    fx = np.fft.rfftfreq(small[1])[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(small))
    fields = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, size=amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=small)
        fields.append((field - field.mean()) / (field.std() + 1e-9))
    mixed = np.tensordot(rng.normal(0, 25, size=(3, 3)), np.stack(fields), axes=1)
    mixed = mixed.transpose(1, 2, 0) + rng.uniform(60, 200, size=3)
    img = cv2.resize(mixed.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, rng.uniform(0.5, 3), size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _shape(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw one random shape in place (anti-aliased)."""
    h, w = img.shape[:2]
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    size = int(rng.integers(max(4, min(w, h) // 40), max(8, min(w, h) // 4)))
    kind = int(rng.integers(5))
    colour, aa = _colour(rng), cv2.LINE_AA
    filled = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
    if kind == 0:
        cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, filled, aa)
    elif kind == 1:
        axes = (size, max(2, int(size * rng.uniform(0.2, 1))))
        cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, filled, aa)
    elif kind == 2:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = size * rng.uniform(0.4, 1.0, n)
        points = np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], 1).astype(np.int32)
        if filled < 0:
            cv2.fillPoly(img, [points], colour, aa)
        else:
            cv2.polylines(img, [points], True, colour, filled, aa)
    elif kind == 3:
        end = (x + int(rng.integers(-2 * size, 2 * size)), y + int(rng.integers(-2 * size, 2 * size)))
        cv2.line(img, (x, y), end, colour, int(rng.integers(1, 5)), aa)
    else:  # stripes inside a box: texture with many corners at its ends
        step = int(rng.integers(3, 9))
        other = _colour(rng)
        for k, x0 in enumerate(range(x, min(w, x + size), step)):
            cv2.line(img, (x0, y), (x0, min(h - 1, y + size // 2)), colour if k % 2 else other, max(1, step // 2))
