"""One image to compare, wherever it came from, with its provenance; and its thumbnail.

An image file found in a folder is one Item; an image drawn on a PDF page is one Item per placement
(the same picture drawn on two pages is two Items, and they are a duplicate pair to report).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Long side of report thumbnails in pixels, and their JPEG quality (small: the report embeds them).
THUMB_SIDE = 160
THUMB_QUALITY = 75


@dataclass
class Item:
    """An image to compare.

    path: the image file features are extracted from: the original file, or for a PDF placement the
        rendering of its placed region in the work folder; None when every feature came from the index.
    display: the path as the user knows it (pairs.csv columns a, b): the file itself, or
        `book.pdf#page=3&image=2` for the 2nd image drawn on page 3.
    source: the file it came from (the image file or the PDF).
    page: 1-based page number for PDF images, else None.
    bbox: "x0 y0 x1 y1" in PDF points as placed (visible part, origin top left), else None.
    digest: identical-image-data key: equal digests mean the same pixels (file hash for image files,
        MuPDF's image digest for PDF images, so one picture embedded twice shares it).
    thumb: JPEG bytes of a small thumbnail (the placed region for PDF images).
    key: where its features live in the index: "<content hash of the source>:<local id>".
    """

    path: str | None
    display: str
    source: str
    page: int | None
    bbox: str | None
    digest: str
    thumb: bytes
    key: str


def thumbnail_jpeg(image: Image.Image, side: int = THUMB_SIDE) -> bytes:
    """A JPEG thumbnail whose long side is at most `side` pixels."""
    im = image.convert("RGB")
    im.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=THUMB_QUALITY, optimize=True)
    return buffer.getvalue()


def grey_thumbnail(thumb: bytes) -> np.ndarray | None:
    """A thumbnail's grey levels, float32 in [0, 1] (None: it does not decode)."""
    try:
        with Image.open(io.BytesIO(thumb)) as im:
            return np.asarray(im.convert("L"), np.float32) / 255.0
    except (OSError, ValueError):
        return None


def format_bbox(rect) -> str:
    """A rectangle (x0, y0, x1, y1) as the pairs.csv bbox text, to a hundredth of a point."""
    return " ".join(f"{float(v):.2f}" for v in tuple(rect)[:4])
