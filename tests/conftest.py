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


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return {name: photo(name) for name in PHOTOS}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An isolated simbench cache (datasets, features) for one test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("SIMBENCH_CACHE", str(d))
    return d
