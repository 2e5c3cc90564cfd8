"""Different pictures inside one shared frame are not duplicates.

A screenshot template, an app's chrome, a page layout or a scanner's colour chart around different
photographs: keypoints and CNN features both see the frame, which is often most of the picture, so every
stage finds such pairs, and no count of how many pictures share a descriptor tells a frame held by 7
pictures from a photo reused 9 times. What does is the layout. Compared on the report thumbnails every
item already has (so images from the index need no decoding), pair (a, b) is "in a shared frame" when:

1. their thumbnails have one size, and the pixels where their grey levels differ by more than TOL fill a
   window (the box holding 98% of them) of MIN_WINDOW..MAX_WINDOW of the picture, touching at most two
   of its sides, around which they agree on a textured frame (grey deviation >= MIN_FRAME_STD: a shared
   blank margin is no frame; a caption bar along one side of a photo is a window in the photo, not a
   frame around a window);
2. the windows do not hold one picture: on the full thumbnails, inside the window less a MARGIN on each
   side, either the grey levels of the pixels that differ (by more than TOL) are not correlated
   (< SAME_PICTURE), or their detail (grey less its local mean) is not (< SAME_DETAIL). A recoloured or
   blurred copy inside the frame correlates in both and still pairs; two different landscapes, bright
   sky over dark ground, can correlate in grey levels but not in detail;
3. a third item c, found paired with a or b by a stage, differs from both inside the same window (the
   smaller of two boxes at least SAME_BOX inside the other, and at least half its size), and a and b each
   differ from both others all over it (`three_pictures`: the box of the pixels where each differs from the
   other two fills at least FILL of the window): three different pictures in one frame. A copy with an
   emoji differs from its original in a window too, but every other copy of that picture agrees with the
   original there; copies of one picture marked in different places (an emoji or a caption on each) differ
   from one another in a window, but each from both others only about its own mark.

A logo or emoji that one picture carries outside the window stretches the box of its differences over
the frame. So when that box fails rule 1, the box of the main regions of differences is tried
(`main_part`: a small mark away from the window is none of them), the pair agreeing outside it but for
STRAY of the pixels; and once some pairs are found framed, a pair of one size with one of those pictures
is framed too when it differs as rule 2 says inside that picture's window and, outside it, in at most
STRAY of the pixels.

Such pairs are dropped from every stage's pairs before calibration and fusion (and so are never linked);
the run logs how many. `SharedFrames.windows` gives what each framed picture shows inside its frame, which
the CNN stage then embeds instead of the whole picture (simbench.find.pipeline.window_views). A picture
pasted into another, a crop or a padded copy never qualifies: their pixels do not line up with the
original's outside a window. What the rules cannot tell from a frame: three or
more copies of one picture marked in about the same place, each mark most of the box the marks cover (three
captions over one another in the middle); they pair through a copy without a mark there, if any.
Nor sparse drawings letterboxed inside one frame: they differ in too few pixels to draw a window.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from simbench.evaluate import pair_keys
from simbench.find.items import Item, grey_thumbnail
from simbench.threads import thread_map
from simbench.types import ScoredPairs

log = logging.getLogger("simbench")

#: Long side, in pixels, of the grey thumbnails compared (from the 160 px report thumbnails).
SIDE = 64
#: Grey levels (of 1) by which two thumbnails' pixels must differ to count as different (JPEG noise of
#: the report thumbnails, averaged down to SIDE, stays well below it).
TOL = 0.08
#: The window's share of the picture: more than a caption or an emoji covers, up to most of the picture.
MIN_WINDOW, MAX_WINDOW = 0.1, 0.7
#: Cells (of the SIDE-pixel thumbnails) within which a window touches a side of the picture.
EDGE = 2
#: Grey-level deviation of the shared frame outside the window (of 1).
MIN_FRAME_STD = 0.1
#: Correlation of the two windows' differing grey levels at and above which they hold the same picture
#: (different pictures are near 0 or below, one picture recoloured near 1); each side of the window loses
#: MARGIN of its length first, so that the frame's edge around the window, which both share, does not count.
SAME_PICTURE = 0.5
MARGIN = 0.15
#: Correlation of the windows' detail (grey less its mean over DETAIL_SIDE pixels of the full thumbnails) at
#: and above which they hold the same picture: on the tuning split's same-size pairs, copies whose grey
#: levels correlate correlate in detail well above it (a blur keeps the edges), different pictures near 0.
SAME_DETAIL = 0.25
DETAIL_SIDE = 5
#: Share of the pixels outside a window in which two pictures in one frame may differ: a logo or emoji
#: stamped on the frame (the devset's logo and emoji cover a few percent of a picture).
STRAY = 0.06
#: Share of the largest region of differences a region needs to count as part of the window.
MAIN_SHARE = 0.25
#: The dilation that closes one-cell gaps between differences: each cell and its four neighbours.
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
#: Share of the smaller of two windows inside the larger at and above which they are the same place.
SAME_BOX = 0.6
#: Share of the window that the box of each picture's own differences (where it differs from both others)
#: fills, at the least, in three different pictures in one frame: near all of it, less where letterboxed
#: pictures of different shapes share bars (at 0.6 every framed distractor of the tuning split stays framed).
#: Copies of one picture marked in different places fill a part of it each.
FILL = 0.6


class SharedFrames:
    """Which pairs of a run are different pictures in one shared frame (see the module's rules)."""

    def __init__(self, items: Sequence[Item]):
        self.items = items
        self._grey: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self._windows: dict[tuple[int, int], tuple[int, int, int, int] | None] = {}
        self._framed: dict[int, list[np.ndarray]] = {}  # item -> the windows of its framed pairs, as fractions

    def pairs_in_frames(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Boolean per pair (a[k], b[k]), item indices: different pictures in a frame a third one shares
        (rule 3 looks for that third picture among the other partners of a and b in these pairs)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        self._compare(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
        out = np.zeros(len(a), bool)
        windows = {}
        for k, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
            box = self.window(x, y)
            if box is not None:
                windows[k] = box
        if not windows:
            return out
        partners: dict[int, set[int]] = {}
        for x, y in zip(a.tolist(), b.tolist()):
            partners.setdefault(x, set()).add(y)
            partners.setdefault(y, set()).add(x)
        for k, box in windows.items():
            x, y = int(a[k]), int(b[k])
            for c in sorted((partners[x] | partners[y]) - {x, y}):
                if (same_box(self.window(x, c), box) and same_box(self.window(y, c), box)
                        and three_pictures(self.grey(x)[1], self.grey(y)[1], self.grey(c)[1], box)):
                    out[k] = True
                    self._add(x, y, box)
                    break
        while True:  # pairs whose own box a stray mark stretched: inside a window already known
            known = {k: self._in_cells(k, box) for k, box in self.windows().items()}
            framed = np.fromiter(known, np.int64, len(known))
            near = ~out & (np.isin(a, framed) | np.isin(b, framed))  # the others have no known window
            more = [k for k in np.flatnonzero(near).tolist() if self._in_known_window(int(a[k]), int(b[k]), known)]
            if not more:
                return out
            out[more] = True

    def _add(self, x: int, y: int, box) -> None:
        """Record `box` (on the SIDE-pixel thumbnails) as a window of framed items x and y."""
        h, w = self.grey(x)[1].shape
        for item in (x, y):
            self._framed.setdefault(item, []).append(np.array(box, np.float64) / [h, w, h, w])

    def _in_cells(self, k: int, box) -> tuple[int, int, int, int]:
        """A box given as fractions of item k's picture, on its SIDE-pixel thumbnail."""
        h, w = self.grey(k)[1].shape
        return tuple(int(round(v)) for v in np.array(box) * [h, w, h, w])

    def _in_known_window(self, x: int, y: int, known: dict) -> bool:
        """Whether x and y hold different pictures (rule 2) inside the window of one of them that is
        framed already, and agree outside it but for STRAY of the pixels."""
        boxes = [box for box in (known.get(x), known.get(y)) if box is not None]
        greys = self._same_size(x, y) if boxes else None
        if greys is None:
            return False
        for box in boxes:
            if framed_in(*greys[0], *greys[1], box, stray=STRAY):
                self._add(x, y, box)
                return True
        return False

    def windows(self) -> dict[int, tuple[float, float, float, float]]:
        """{item: (top, left, bottom, right) as fractions of its picture} for every item found in a shared
        frame so far: the median of the windows of its framed pairs (what it shows inside the frame)."""
        return {k: tuple(float(v) for v in np.median(boxes, axis=0)) for k, boxes in self._framed.items()}

    def grey(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Item k's thumbnail in grey levels of 1: as it is, and SIDE pixels on its long side (None:
        undecodable)."""
        if k not in self._grey:
            self._grey[k] = grey_levels(self.items[k].thumb)
        return self._grey[k]

    def window(self, x: int, y: int) -> tuple[int, int, int, int] | None:
        """The box (top, left, bottom, right; on the SIDE-pixel thumbnails) where items x and y hold
        different pictures inside a frame they share (rules 1 and 2), else None."""
        key = (min(x, y), max(x, y))
        if key not in self._windows:
            self._windows[key] = self._window_of(key)
        return self._windows[key]

    def _window_of(self, key: tuple[int, int]) -> tuple[int, int, int, int] | None:
        greys = self._same_size(*key)
        return framed_window(*greys[0], *greys[1]) if greys is not None else None

    def _compare(self, keys) -> None:
        """`window` of every pair (x, y), x < y, in `keys` not compared yet, over threads (simbench.threads)."""
        keys = [key for key in dict.fromkeys(keys) if key not in self._windows]
        new = [k for k in dict.fromkeys(k for key in keys for k in key) if k not in self._grey]
        self._grey.update(zip(new, thread_map(lambda k: grey_levels(self.items[k].thumb), new)))
        self._windows.update(zip(keys, thread_map(self._window_of, keys)))

    def _same_size(self, x: int, y: int):
        """The grey thumbnails of items x and y (`grey`) when both decode and have one size, else None."""
        gx, gy = self.grey(x), self.grey(y)
        return (gx, gy) if gx is not None and gy is not None and gx[0].shape == gy[0].shape else None


def grey_levels(thumb: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """A report thumbnail in grey levels of 1: as it is, and SIDE pixels on its long side (None: undecodable)."""
    g = grey_thumbnail(thumb)
    if g is None:
        return None
    h, w = g.shape
    s = SIDE / max(w, h)
    levels = Image.fromarray(np.round(g * 255.0).astype(np.uint8))  # the thumbnail's own 8-bit grey
    small = levels.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
    return g, np.asarray(small, np.float32) / 255.0


def framed_window(full_x: np.ndarray, small_x: np.ndarray, full_y: np.ndarray,
                  small_y: np.ndarray) -> tuple[int, int, int, int] | None:
    """Rules 1 and 2 for two grey thumbnails of one size (each as it is and at SIDE pixels): the box (on
    the SIDE-pixel ones) of all their differences, or failing that of their main regions (`main_part`),
    when it is a window; else None."""
    differ = np.abs(small_x - small_y) > TOL
    box = central_box(differ)
    if box is not None and framed_in(full_x, small_x, full_y, small_y, box):
        return box
    box = central_box(main_part(differ))  # without a logo or emoji that stretched the box over the frame
    return box if box is not None and framed_in(full_x, small_x, full_y, small_y, box, stray=STRAY) else None


def main_part(mask: np.ndarray) -> np.ndarray:
    """The mask's connected regions (8-connected after closing one-cell gaps) holding at least MAIN_SHARE of
    the pixels of the largest: a logo or emoji away from the window is not part of it. (OpenCV's dilation
    and labelling: they release the GIL, so the pairs' threads use every core.)"""
    grown = cv2.dilate(mask.astype(np.uint8), CROSS)  # closing one-cell gaps: a 4-neighbour dilation
    n, regions = cv2.connectedComponents(grown, connectivity=8)  # n counts the background, label 0
    if n <= 2:
        return mask
    size = np.bincount(regions[mask], minlength=n)
    return mask & (size >= MAIN_SHARE * size.max())[regions]


def framed_in(full_x: np.ndarray, small_x: np.ndarray, full_y: np.ndarray, small_y: np.ndarray,
              box: tuple[int, int, int, int], stray: float = 0.0) -> bool:
    """Whether two grey thumbnails of one size hold different pictures inside `box` (on the SIDE-pixel ones)
    of a textured frame they share (rules 1 and 2), differing outside it in at most `stray` of the pixels."""
    top, left, bottom, right = box
    h, w = small_x.shape
    if not MIN_WINDOW <= (bottom - top) * (right - left) / (h * w) <= MAX_WINDOW:
        return False
    if (top <= EDGE) + (left <= EDGE) + (bottom >= h - EDGE) + (right >= w - EDGE) > 2:
        return False
    inside = np.zeros(small_x.shape, bool)
    inside[top:bottom, left:right] = True
    if small_x[~inside].std() < MIN_FRAME_STD:
        return False
    if stray and (np.abs(small_x - small_y)[~inside] > TOL).mean() > stray:
        return False
    scale = np.array(full_x.shape * 2) / np.array(small_x.shape * 2)  # (rows, cols, rows, cols)
    t, lf, b, r = np.array(box) * scale
    mh, mw = (b - t) * MARGIN, (r - lf) * MARGIN
    t, lf, b, r = int(t + mh), int(lf + mw), int(np.ceil(b - mh)), int(np.ceil(r - mw))
    x, y = full_x[t:b, lf:r], full_y[t:b, lf:r]
    changed = np.abs(x - y) > TOL  # what both show alike (letterbox bars, a blank page) says nothing
    if changed.sum() < 8:
        return False
    return (correlation(x[changed], y[changed]) < SAME_PICTURE
            or correlation(detail(x), detail(y)) < SAME_DETAIL)


def detail(grey: np.ndarray) -> np.ndarray:
    """Grey levels less their mean over DETAIL_SIDE pixels: edges and texture, not light and shade."""
    from scipy.ndimage import uniform_filter

    return grey - uniform_filter(grey, DETAIL_SIDE, mode="nearest")


def central_box(mask: np.ndarray, share: float = 0.98) -> tuple[int, int, int, int] | None:
    """The box holding the central `share` of mask's true pixels along each axis (a few stray pixels, JPEG
    ringing at the frame's edges, do not stretch it), as (top, left, bottom, right), end exclusive."""
    n = int(mask.sum())
    if n < 8:
        return None
    cut = (1.0 - share) / 2.0 * n
    rows, cols = np.cumsum(mask.sum(axis=1)), np.cumsum(mask.sum(axis=0))
    top, bottom = int(np.searchsorted(rows, cut, "right")), int(np.searchsorted(rows, n - cut, "left")) + 1
    left, right = int(np.searchsorted(cols, cut, "right")), int(np.searchsorted(cols, n - cut, "left")) + 1
    return (top, left, bottom, right) if bottom > top and right > left else None


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays of grey levels (0 when either is flat)."""
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    norm = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / norm) if norm > 1e-12 else 0.0


def three_pictures(x: np.ndarray, y: np.ndarray, c: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether x and y (SIDE-pixel grey thumbnails of one size, like c) each differ from both others all over
    `box`: the box of the pixels where each differs from the other two fills at least FILL of it."""
    t, lf, b, r = box
    x, y, c = x[t:b, lf:r], y[t:b, lf:r], c[t:b, lf:r]
    xy = np.abs(x - y) > TOL
    for own in (xy & (np.abs(x - c) > TOL), xy & (np.abs(y - c) > TOL)):
        part = central_box(own)
        if part is None or (part[2] - part[0]) * (part[3] - part[1]) < FILL * (b - t) * (r - lf):
            return False
    return True


def same_box(p, q) -> bool:
    """Whether two boxes (top, left, bottom, right) are one window: the smaller is at least SAME_BOX inside
    the larger and at least half its area (None never is)."""
    if p is None or q is None:
        return False
    inter = max(0, min(p[2], q[2]) - max(p[0], q[0])) * max(0, min(p[3], q[3]) - max(p[1], q[1]))
    small, large = sorted(((p[2] - p[0]) * (p[3] - p[1]), (q[2] - q[0]) * (q[3] - q[1])))
    return small > 0 and inter >= SAME_BOX * small and large <= 2 * small


def drop_shared_frames(raw: dict[str, ScoredPairs], shared: SharedFrames) -> dict[str, ScoredPairs]:
    """Each stage's pairs without those in shared frames; the third pictures of rule 3 are looked for among
    the pairs of every stage (a frame's pictures are found by the keypoints, the CNN or both)."""
    if not raw:
        return raw
    a = np.concatenate([p.a for p in raw.values()]).astype(np.int64)
    b = np.concatenate([p.b for p in raw.values()]).astype(np.int64)
    n = max(len(shared.items), 1)
    keys, first = np.unique(pair_keys(a, b, n), return_index=True)
    framed_keys = keys[shared.pairs_in_frames(a[first], b[first])]
    if len(framed_keys):
        log.info("%d pairs dropped: different pictures inside a frame that at least three share (a screenshot "
                 "template, a page layout)", len(framed_keys))
    out = {}
    for name, p in raw.items():
        keep = np.flatnonzero(~np.isin(pair_keys(p.a, p.b, n), framed_keys))
        out[name] = p if len(keep) == len(p.a) else p.subset(keep)
    return out
