"""Do two pictures agree once one is laid over the other? A check of the pixels between a pair's inliers.

RANSAC verifies that a pair's matched keypoints move together. So does a texture two different pictures
share: the hatching of two engravings, a halftone screen, a fabric or brick wall, a printer's ornament.
Its corners match under a translation by the texture's period, and a lattice gives hundreds of inliers.
What the inliers do not say is whether the pictures agree between them. Here each keypoint pair's inlier
map (KeypointMethod's `alignment`, in relative coordinates) lays b's report thumbnail over a's. Every
item already has that thumbnail, so no image is decoded again. `agreement` is then the correlation of the
two thumbnails' detail where they overlap, within the box of a's inliers (and a margin of BOX_MARGIN).
Detail is grey less its local mean, so a recoloured, darkened or low-contrast copy still agrees. At
thumbnail scale a fine texture averages to flat tone, while the drawing's lines and shapes, which differ
between different pictures, remain.

A copy agrees with its original where the inliers are: a crop over its part, a picture pasted into a
collage or a yearbook's frame over the picture, not the frame around it. An overlay (a caption, an emoji)
lowers it by what it covers. Two different pictures whose inliers spread over a shared texture are near 0.
Content shared as a block (a template, a logo, an ornament: the inliers' box is the block) agrees. Only
the keypoint evidence's coverage and burstiness weigh that (simbench.methods.keypoints), so a fusion that
leans on agreement and lets them go lets such pairs through: run (21)'s did, on the report split
(results/find.md, "Run (21)"). A per-pair signal in [0, 1] (negative correlations count 0), readable by the
fusion as an extra signal (`keypoints.extra_signals`) and, times the keypoint evidence, as the signal
`agreed_evidence`; the shipped settings read neither. Pairs whose thumbnails do not decode, or whose inliers
define no map, get 0: no added confidence.

Two gates drop a keypoint stage's pairs (simbench.find.pipeline.agreed_over_overlap): `overlap_agreement`, detail
correlated over the whole overlap, and `away_agreement`, grey levels correlated AWAY from the matches (less a disc
around each and a band along the edges). A crest and frame stamped on two different flat photos agree where they are,
and so over much of the overlap; away from them, only a copy still lines up.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from simbench.find.items import Item, grey_thumbnail
from simbench.threads import thread_map
from simbench.types import ScoredPairs

log = logging.getLogger("simbench")

#: Gaussian sigma, in pixels of the report thumbnail (160 px on its long side), of the local mean that
#: detail is taken from: fine enough to keep a drawing's strokes, coarse enough that JPEG noise and a
#: texture finer than a thumbnail pixel do not count.
DETAIL_SIGMA = 3.0
#: Gaussian sigma (thumbnail pixels) of the local contrast that detail is divided by, and the least
#: contrast (grey levels of 1: about JPEG noise and paper grain at thumbnail scale) divided by.
BALANCE_SIGMA = 8.0
MIN_CONTRAST = 0.02
#: Pixels lost at the overlap's edge (interpolation there mixes in the border).
EDGE = 2
#: Margin around the inliers' box, as a share of its longer side.
BOX_MARGIN = 0.1
#: The least overlap, in thumbnail pixels, that a correlation is taken over (a 10 x 10 patch).
MIN_OVERLAP = 100
#: Gaussian sigma (thumbnail pixels) of the local mean for `overlap_agreement`: coarse, so that a flat
#: (blurred, low-contrast) photo keeps its shapes while its fine detail is gone.
OVERLAP_SIGMA = 12.0


#: `agreement_away`: the blur (thumbnail pixels) of both pictures' grey levels, the band along each picture's
#: edges left out (a share of its width and of its height: a frame or mat), the disc around each match left out
#: (a share of the longer side: about a keypoint's patch at thumbnail scale), and the least spread of grey levels
#: (grey levels of 1) that a correlation is taken of. Chosen on used tuning yearbooks (results/find.md).
AWAY_SIGMA = 2.0
AWAY_BORDER = 0.08
AWAY_RADIUS = 0.06
FLAT_GREY = 1e-4


#: The per-pair fields `with_agreement` adds to a keypoint stage's pairs (a stage's signal or extra signals).
FIELDS = ("agreement", "agreed_evidence")


def with_agreement(found: ScoredPairs, items: list[Item]) -> ScoredPairs:
    """A keypoint stage's pairs (item indices, with its method's alignment, inlier_box and evidence) with two
    more per-pair fields: agreement (`pair_agreement`) and agreed_evidence = evidence x agreement, the
    inliers counted as far as the pictures they join agree."""
    if not len(found):  # a stage that found nothing may carry none of its per-pair fields
        return ScoredPairs(found.a, found.b, found.score, {**found.extra, "agreement": np.empty(0),
                                                           "agreed_evidence": np.empty(0)})
    score = pair_agreement(items, found.a, found.b, found.extra["alignment"], found.extra["inlier_box"])
    extra = {**found.extra, "agreement": score, "agreed_evidence": np.asarray(found.extra["evidence"]) * score}
    return ScoredPairs(found.a, found.b, found.score, extra)


def overlap_agreement(found: ScoredPairs, items: list[Item], border: float = 0.0) -> np.ndarray:
    """Per pair of a keypoint stage (item indices, with its method's alignment): how well the two pictures
    agree over ALL of their overlap once one is laid over the other, in [0, 1], detail taken at
    OVERLAP_SIGMA; NaN where a thumbnail does not decode (nothing to tell). border: the share of each
    picture's width and height along its edges left out (`agreement`).

    A logo, crest or ornament stamped on different pictures agrees where it is (`agreement` in the inliers'
    box is high) but nowhere else; a copy agrees over the overlap: a crop over its part of the original,
    a picture pasted into a collage over where it was pasted. Where a flat picture's keypoints sit mostly
    on such a mark, this tells the two apart when coverage and burstiness cannot (results/find.md)."""
    if not len(found):  # a stage that found nothing may carry none of its per-pair fields
        return np.empty(0)
    return pair_agreement(items, found.a, found.b, found.extra["alignment"], None, OVERLAP_SIGMA, undecoded=np.nan,
                          border=border)


def away_agreement(found: ScoredPairs, items: list[Item], threads: int | None = None) -> np.ndarray:
    """Per pair of a keypoint stage (item indices, with its method's alignment and inlier_points): how well the
    two pictures agree AWAY from their matches (`agreement_away`), in [-1, 1]; NaN where it cannot tell (a
    thumbnail that does not decode, too little left to correlate); 0 where the inliers define no map (as
    `pair_agreement`: nothing lines up)."""
    if not len(found):
        return np.empty(0)
    points = found.extra["inlier_points"]
    return _per_pair(items, found.a, found.b, found.extra["alignment"], np.nan, threads,
                     lambda k, ga, gb, relative_map: agreement_away(ga, gb, relative_map, points[k]))


def agreement_away(grey_a: np.ndarray, grey_b: np.ndarray, relative_map: np.ndarray, points: np.ndarray) -> float:
    """Pearson correlation of grey picture a and grey picture b laid over it by `relative_map` (as `agreement`),
    both blurred at AWAY_SIGMA, over their overlap less a band of AWAY_BORDER along each picture's edges and less
    a disc of AWAY_RADIUS (of a's longer side) around each of a's matched points `points` ((P, 2), a's relative
    coordinates; NaN rows ignored); NaN where fewer than MIN_OVERLAP pixels are left or either side is flat there.

    What the matches sit on (a crest, a logo, a frame) agrees in any pair that shares it; a copy agrees beyond
    it as well, a flat one too, while two different pictures that share only the mark do not. Grey levels, not
    detail (`agreement`): a flat picture has little detail, but its shapes and shading still line up."""
    h, w = grey_a.shape
    m = _pixel_map(grey_a.shape, grey_b.shape, relative_map)
    blurred_b = cv2.GaussianBlur(grey_b, (0, 0), AWAY_SIGMA)
    over = cv2.warpAffine(blurred_b, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
    inside = cv2.warpAffine(_interior(grey_b, AWAY_BORDER), m, (w, h),
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0) > 0
    inside &= _interior(grey_a, AWAY_BORDER) > 0
    holes = np.zeros((h, w), np.uint8)
    radius = max(2, int(AWAY_RADIUS * max(h, w)))
    for u, v in np.asarray(points, np.float64):
        if np.isfinite(u) and np.isfinite(v):
            cv2.circle(holes, (int(round(u * w - 0.5)), int(round(v * h - 0.5))), radius, 1, -1)
    inside &= holes == 0
    if np.count_nonzero(inside) < MIN_OVERLAP:
        return np.nan
    x, y = cv2.GaussianBlur(grey_a, (0, 0), AWAY_SIGMA)[inside], over[inside]
    if x.std() < FLAT_GREY or y.std() < FLAT_GREY:
        return np.nan
    return _correlation(x.astype(np.float64), y.astype(np.float64))


def pair_agreement(items: list[Item], a: np.ndarray, b: np.ndarray, alignment: np.ndarray,
                   box: np.ndarray | None = None, sigma: float = DETAIL_SIGMA, undecoded: float = 0.0,
                   border: float = 0.0, threads: int | None = None) -> np.ndarray:
    """Agreement of item pairs (a[k], b[k]) once b is laid over a by alignment[k] ((K, 2, 3): a's relative
    coordinates -> b's, see simbench.methods.keypoints.inlier_alignment), within box[k] (a's inliers,
    (K, 4); None: the whole overlap), in [0, 1], detail taken at `sigma`, each picture's `border` left out;
    `undecoded` where a thumbnail does not decode. Pairs over `threads` threads (simbench.threads)."""
    return _per_pair(items, a, b, alignment, undecoded, threads,
                     lambda k, ga, gb, relative_map: agreement(ga, gb, relative_map, None if box is None else box[k],
                                                               sigma, border))


def _per_pair(items: list[Item], a, b, alignment: np.ndarray, undecoded: float, threads: int | None,
              score: Callable[[int, np.ndarray, np.ndarray, np.ndarray], float]) -> np.ndarray:
    """score(k, grey a, grey b, alignment[k]) of item pairs (a[k], b[k]), each thumbnail decoded once, over
    `threads` threads; `undecoded` where a thumbnail does not decode, 0 where the inliers define no map
    (nothing lines up)."""
    a, b = np.asarray(a).tolist(), np.asarray(b).tolist()
    needed = list(dict.fromkeys(a + b))
    greys = dict(zip(needed, thread_map(lambda x: grey_thumbnail(items[x].thumb), needed, threads)))

    def one(k: int) -> float:
        ga, gb = greys[a[k]], greys[b[k]]
        if ga is None or gb is None:
            return float(undecoded)
        if not np.all(np.isfinite(alignment[k])):
            return 0.0
        return score(k, ga, gb, alignment[k])

    with threadpool_limits(1, user_api="blas"):  # the pairs use every core: BLAS threads would fight them
        out = np.array(thread_map(one, range(len(a)), threads), np.float64).reshape(len(a))
    failed = sum(g is None for g in greys.values())
    if failed:
        log.warning("%d thumbnails could not be decoded: their keypoint pairs get agreement %g", failed, undecoded)
    return out


def agreement(grey_a: np.ndarray, grey_b: np.ndarray, relative_map: np.ndarray,
              box: np.ndarray | None = None, sigma: float = DETAIL_SIGMA, border: float = 0.0) -> float:
    """Correlation, in [0, 1], of the detail (grey less its local mean over `sigma` pixels) of grey picture
    a and of grey picture b laid over it by `relative_map` ((2, 3), a's coordinates as fractions of its
    width and height -> b's), where they overlap inside `box` (u0, v0, u1, v1 in a's relative coordinates,
    widened by BOX_MARGIN; None: all) and away from both pictures' edges: a band of `border` (a share of
    the picture's width on its left and right, of its height at its top and bottom) is left out of each.
    A frame, mat or ruler that many pictures carry along their edges agrees in every pair of them."""
    h, w = grey_a.shape
    m = _pixel_map(grey_a.shape, grey_b.shape, relative_map)
    over = cv2.warpAffine(grey_b, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
    inside = cv2.warpAffine(_interior(grey_b, border), m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                            borderValue=0)
    inside = cv2.erode(inside, np.ones((2 * EDGE + 1, 2 * EDGE + 1), np.uint8)) > 0
    if border > 0:
        inside &= _interior(grey_a, border) > 0
    if box is not None and np.all(np.isfinite(box)):
        u0, v0, u1, v1 = box
        pad = BOX_MARGIN * max(u1 - u0, v1 - v0)
        x0, x1 = max(int(np.floor((u0 - pad) * w)), 0), max(int(np.ceil((u1 + pad) * w)), 0)
        y0, y1 = max(int(np.floor((v0 - pad) * h)), 0), max(int(np.ceil((v1 + pad) * h)), 0)
        within = np.zeros_like(inside)
        within[y0:y1, x0:x1] = True
        inside &= within
    if np.count_nonzero(inside) < MIN_OVERLAP:
        return 0.0
    overlap = _Overlap(inside)
    return max(0.0, _correlation(_balanced(_detail(grey_a, overlap, sigma), overlap)[inside],
                                 _balanced(_detail(over, overlap, sigma), overlap)[inside]))


def _pixel_map(shape_a: tuple, shape_b: tuple, relative_map: np.ndarray) -> np.ndarray:
    """A relative map (a's coordinates as fractions of its width and height -> b's) as a's pixels -> b's pixels
    (pixel centres at +0.5), for warpAffine's inverse map."""
    (h, w), (hb, wb) = shape_a, shape_b
    to_relative = np.array([[1 / w, 0, 0.5 / w], [0, 1 / h, 0.5 / h], [0, 0, 1]])
    to_pixels = np.array([[wb, 0, -0.5], [0, hb, -0.5]])
    return to_pixels @ np.vstack([relative_map, [0, 0, 1]]) @ to_relative


def _interior(grey: np.ndarray, border: float) -> np.ndarray:
    """1 over the picture less a band of `border` (shares of its height and width) along its edges, else 0."""
    out = np.ones_like(grey)
    if border > 0:
        h, w = grey.shape
        dy, dx = int(round(border * h)), int(round(border * w))
        out[:dy], out[h - dy:], out[:, :dx], out[:, w - dx:] = 0, 0, 0, 0
    return out


def aligned_as_ordered(alignment: np.ndarray, box: np.ndarray, swapped: np.ndarray,
                       points: np.ndarray | None = None) -> dict:
    """{"alignment", "inlier_box"} (and "inlier_points" when `points` are given) with, for the pairs whose ends
    were swapped, the map inverted (b's picture -> a's), the box replaced by the bounding box of its image
    under the map and the points by their images (where b's inliers are, up to the fit's residuals)."""
    box = np.array(box, np.float64, copy=True)
    points = None if points is None else np.array(points, copy=True)
    if swapped.any():
        m = np.asarray(alignment, np.float64)[swapped]
        u0, v0, u1, v1 = box[swapped].T
        corners = np.stack([np.stack([u, v, np.ones_like(u)], 1)
                            for u, v in ((u0, v0), (u1, v0), (u0, v1), (u1, v1))], 1)
        mapped = np.einsum("kij,kcj->kci", m, corners)  # a NaN map stays NaN (agreement 0)
        box[swapped] = np.c_[mapped.min(axis=1), mapped.max(axis=1)]
        if points is not None:
            points[swapped] = np.einsum("kij,kpj->kpi", m[:, :, :2], points[swapped].astype(np.float64)) \
                + m[:, None, :, 2]
    out = {"alignment": _inverted(alignment, swapped), "inlier_box": box}
    return out if points is None else {**out, "inlier_points": points}


def _inverted(alignment: np.ndarray, swapped: np.ndarray) -> np.ndarray:
    """alignment (K, 2, 3) with the swapped pairs' maps inverted (NaN where singular)."""
    out = np.array(alignment, np.float64, copy=True)
    full = np.concatenate([out, np.broadcast_to([[0.0, 0.0, 1.0]], (len(out), 1, 3))], axis=1)
    ok = swapped & np.isfinite(full).all(axis=(1, 2))
    ok[ok] = np.abs(np.linalg.det(full[ok])) > 1e-12
    out[swapped] = np.nan
    out[ok] = np.linalg.inv(full[ok])[:, :2]
    return out


def _detail(grey: np.ndarray, overlap: "_Overlap", sigma: float) -> np.ndarray:
    """grey less its local mean over the overlap only."""
    return grey - overlap.local_mean(grey, sigma)


def _balanced(detail: np.ndarray, overlap: "_Overlap") -> np.ndarray:
    """detail over its local contrast (root mean square over BALANCE_SIGMA, within the overlap; at least
    MIN_CONTRAST), so that every part of the overlap counts alike: a high-contrast frame or crest that
    does not line up cannot outweigh a soft photograph that does."""
    return detail / np.sqrt(overlap.local_mean(detail * detail, BALANCE_SIGMA) + MIN_CONTRAST ** 2)


class _Overlap:
    """Where two laid-over pictures overlap, for Gaussian means over its pixels only (normalised convolution:
    outside pixels weigh 0). The blurred mask is kept per sigma: both pictures' means divide by the same one."""

    def __init__(self, inside: np.ndarray):
        self.weight = inside.astype(np.float32)
        self._norm: dict[float, np.ndarray] = {}

    def local_mean(self, values: np.ndarray, sigma: float) -> np.ndarray:
        if sigma not in self._norm:
            self._norm[sigma] = np.maximum(gaussian_blur(self.weight, sigma), 1e-6)
        return gaussian_blur(values * self.weight, sigma) / self._norm[sigma]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur(image, (0, 0), sigma) of a float32 picture (the same kernel, mirrored border), as two
    matrix products. The kernels here span most of a thumbnail, where a product runs faster than a sliding
    filter; every pair of a keypoint stage takes several of them."""
    h, w = image.shape
    return _blur_matrix(h, sigma) @ image @ _blur_matrix(w, sigma).T


@functools.lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32: row i weighs the pixels of a line of n that OpenCV's Gaussian kernel (its size for
    float pictures: 8 sigma + 1, odd) blends into pixel i, reflected at the ends without repeating the edge
    pixel (BORDER_REFLECT_101, as often as a kernel longer than the line needs)."""
    size = int(round(sigma * 8 + 1)) | 1
    kernel = cv2.getGaussianKernel(size, sigma, cv2.CV_32F).ravel().astype(np.float64)
    radius = size // 2
    source = np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :]
    if n == 1:
        source[:] = 0
    else:
        period = 2 * n - 2  # reflect-101 is periodic: fold into one period, then mirror its second half
        source = np.mod(source, period)
        source = np.where(source >= n, period - source, source)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (np.repeat(np.arange(n), size), source.ravel()), np.tile(kernel, n))
    return matrix.astype(np.float32)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    d = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return float(np.dot(x, y) / d) if d > 1e-12 else 0.0
