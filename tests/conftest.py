"""Shared fixtures: real photographs from scikit-image, written as files where a test needs files."""
from __future__ import annotations

import numpy as np
import pytest

# Photographs that ship inside scikit-image (no network).
PHOTOS = ["astronaut", "camera", "cat", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "moon", "horse", "clock", "coins", "retina", "brick", "grass", "gravel", "page"]


def photo(name: str) -> np.ndarray:
    """An RGB uint8 sample photograph from scikit-image."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def framed_picture(picture, px_per_pt: float):
    """A PIL picture with the yearbook's school frame burned around it (a band FRAME_PT * px_per_pt px wide)."""
    from simbench.find.yearbook import decoration

    out = picture.convert("RGB")
    overlay = decoration(out.size, px_per_pt, None, True)
    out.paste(overlay, (0, 0), overlay)
    return out


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return {name: photo(name) for name in PHOTOS}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An isolated simbench cache (datasets, features) for one test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("SIMBENCH_CACHE", str(d))
    return d


def _random_keypoint_sets(seed: int, n_images: int = 7, nbytes: int = 8, logo_images: int = 0):
    """Random binary descriptors, some planted near copies across images, duplicates within an image,
    one descriptor copied near many rows, an empty image (image 2), and with logo_images > 0 one
    descriptor put into that many images (a logo shared by pictures)."""
    from simbench.types import KeypointSets

    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 12, n_images)
    counts[2] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)])
    m = int(offsets[-1])
    desc = rng.integers(0, 256, (m, nbytes), dtype=np.uint8)

    def flips(row):  # a near copy: each bit flipped with probability 5%
        mask = np.packbits(rng.random(nbytes * 8) < 0.05, bitorder="little")
        return row ^ mask

    for _ in range(m // 2):
        i, j = rng.integers(0, m, 2)
        desc[j] = flips(desc[i])
    hub = int(rng.integers(0, m))
    for j in rng.integers(0, m, 6):
        desc[j] = flips(desc[hub])
    if logo_images:
        with_rows = np.flatnonzero(counts)[:logo_images]
        desc[offsets[with_rows]] = desc[offsets[with_rows[0]]]
    z = np.zeros(m, np.float32)
    return KeypointSets(desc, offsets, rng.random((m, 2)).astype(np.float32) * 100, z, z, z,
                        np.full((n_images, 2), 100), binary=True)


@pytest.fixture(scope="session")
def random_keypoint_sets():
    """The generator of random KeypointSets for oracle tests (a function: call it with a seed)."""
    return _random_keypoint_sets
