"""A dataset: image paths, optional ground truth pairs and per-image labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simbench.types import Skipped


@dataclass
class Dataset:
    """Images to compare.

    truth: (P, 2) int64 index pairs a < b of true duplicates, or None when there is no ground truth.
    labels: one string per image: "reference", "distractor" or the transform name that made a copy
        ("" when unknown). Per-transform recall uses pairs (reference, copy).
    """

    name: str
    root: Path
    paths: list[Path]
    truth: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self):
        if not self.labels:
            self.labels = [""] * len(self.paths)
        if self.truth is not None:
            t = np.asarray(self.truth, dtype=np.int64).reshape(-1, 2)
            self.truth = np.unique(np.sort(t, axis=1), axis=0)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_true_pairs(self) -> int:
        return 0 if self.truth is None else len(self.truth)
