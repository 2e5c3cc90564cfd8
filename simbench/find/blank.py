"""Blank images: empty scans, black frames, solid fills. Listed as blank, never reported as duplicates.

Every blank image "matches" every other (a black frame hashes like any black frame), so left in they
would open the report with a large group of nothing. They are detected on the report thumbnail each item
already has (so images from the index need no decoding), counted by colour, and listed in skipped.csv.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageStat

from simbench.find.items import Item

#: Blank when, in every RGB channel, the thumbnail's standard deviation is at most MAX_STD grey levels (of
#: 255) and its 32x32 box average spans at most MAX_RANGE levels (this catches a small mark on an empty
#: page, which barely moves the deviation). Conservative, measured on scikit-image photos: cut to a tenth
#: of their contrast every one still has a deviation of 1.3 or more (tests/test_odd_files.py); only at a
#: twentieth do the faintest textures fall below. The thumbnail (at most 160 px) has already averaged
#: away the sensor and paper noise of a large scan; an unevenly lit empty scan is compared as an image,
#: which costs a spurious pair at worst.
MAX_STD = 1.0
MAX_RANGE = 6.0
SIDE = 32
#: Blank images whose mean colours fall in the same bin of this many levels per channel count as copies.
COLOUR_STEP = 16

REASON = "blank: uniform image"

log = logging.getLogger("simbench")


def blank_colour(thumb: bytes) -> tuple[int, int, int] | None:
    """The mean colour of a thumbnail (JPEG bytes) that is blank, else None."""
    with Image.open(io.BytesIO(thumb)) as im:
        rgb = im.convert("RGB")
    whole = ImageStat.Stat(rgb)  # per channel, from histograms (fast)
    if max(whole.stddev) > MAX_STD:
        return None
    small = ImageStat.Stat(rgb.resize((SIDE, SIDE), Image.Resampling.BOX))
    if max(hi - lo for lo, hi in small.extrema) > MAX_RANGE:
        return None
    return tuple(int(v) for v in np.rint(whole.mean))


def find_blanks(items: Sequence[Item]) -> dict[int, str]:
    """{item index: reason} for the blank items; the reason counts the copies of that colour in the run."""
    colours, undecodable = {}, 0
    for k, item in enumerate(items):
        try:
            colour = blank_colour(item.thumb)
        except (OSError, ValueError):  # a damaged thumbnail: the image itself is still compared
            undecodable += 1
            continue
        if colour is not None:
            colours[k] = colour
    if undecodable:
        log.warning("%d thumbnails could not be decoded, so those images were not checked for being blank",
                    undecodable)
    bins = {k: tuple(round(v / COLOUR_STEP) for v in c) for k, c in colours.items()}
    copies: dict[tuple, int] = {}
    for key in bins.values():
        copies[key] = copies.get(key, 0) + 1
    out = {}
    for k, colour in colours.items():
        n = copies[bins[k]]
        out[k] = f"{REASON} ({n} {'copy' if n == 1 else 'copies'} in this run, colour #{bytes(colour).hex()})"
    return out
