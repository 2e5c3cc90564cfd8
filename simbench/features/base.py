"""The one interface every feature extractor implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simbench.types import Skipped


@dataclass
class Extracted:
    """Features of the images that could be read.

    features: BinaryCodes, KeypointSets or Embeddings with one entry per row;
    rows: (R,) int64, the index into the input paths of each feature row;
    skipped: the inputs that were not read, with reasons.
    """

    features: Any
    rows: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)


class Extractor(ABC):
    """Turns image files into features."""

    #: "binary", "keypoints" or "embedding"
    kind: str = "binary"

    @abstractmethod
    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        """Extract features of every readable image; unreadable ones go to `skipped`, never raise."""

    @abstractmethod
    def params(self) -> dict:
        """Everything that changes the extracted features (the cache key)."""

    @property
    def name(self) -> str:
        return type(self).__name__
