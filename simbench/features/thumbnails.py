"""Small grey thumbnails: the features of simbench.methods.align, which lays pictures over each other.

`simbench find` makes a thumbnail of every image anyway (the report's, simbench.find.items), so its align
stage takes them from the items and keeps nothing in the index; `extract` makes the same thumbnails from image
files, for use outside find.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from simbench.data.images import UnreadableImage, open_image
from simbench.features.base import Extracted, Extractor
from simbench.find.items import THUMB_SIDE, grey_thumbnail, thumbnail_jpeg
from simbench.types import Skipped


#: Thumbnails narrower than this (pixels) are not aligned: a sliver has no shape to line up.
MIN_SIDE = 8


@dataclass
class Thumbnails:
    """One JPEG thumbnail per image (long side at most the extractor's side), decoded only when compared: a
    collection's worth of decoded thumbnails would hold hundreds of megabytes for the few pairs that need them."""

    jpegs: list[bytes]

    def __len__(self) -> int:
        return len(self.jpegs)

    def grey(self, row: int) -> np.ndarray | None:
        """Row's grey levels, float32 in [0, 1]; None when it does not decode or is too small to align."""
        image = grey_thumbnail(self.jpegs[row])
        return image if image is not None and min(image.shape) >= MIN_SIDE else None


class ThumbnailExtractor(Extractor):
    """Grey thumbnails of `side` pixels on the long side, as simbench find's report thumbnails (JPEG)."""

    kind = "thumbnails"

    def __init__(self, side: int | None = None):
        self.side = int(side or THUMB_SIDE)

    @property
    def name(self) -> str:
        return "thumbnails"

    def params(self) -> dict:
        return {"side": self.side}

    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        jpegs, rows, skipped = [], [], []
        for k, path in enumerate(tqdm(paths, desc="thumbnails", unit="img", disable=not progress or None)):
            try:
                jpegs.append(thumbnail_jpeg(open_image(path), self.side))
                rows.append(k)
            except UnreadableImage as exc:
                skipped.append(Skipped(str(path), str(exc)))
        return Extracted(Thumbnails(jpegs), np.asarray(rows, np.int64), skipped)
