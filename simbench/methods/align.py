"""Do two pictures line up, pixel for pixel? Dense alignment of their thumbnails, for pairs others propose.

Keypoints and blobs verify a pair by matching local features. A flat picture (a soft-focus portrait, a
blurred or low-contrast copy) has almost none, yet a copy of it still lines up with its original: some
similarity transform lays one over the other and the grey levels then agree wherever they overlap. Two
different pictures, however smooth, do not once that transform is refined to fit them as closely as it can.

`align_pair` looks for that transform in two steps:
1. Search: the normalised cross-correlation of the two thumbnails at COARSE_SIDE pixels over every shift at
   which they overlap by MIN_OVERLAP of the smaller (`overlap_ncc`), b turned by each quarter turn and scaled
   by each of SCALES against a; per turn, the scale and shift that correlate best.
2. Refinement: those within REFINE_MARGIN of the best are refined by ECC (Evangelidis & Psarakis 2008,
   OpenCV's findTransformECC) at REFINE_SIDE pixels, first as a rotation and shift, then as an affine map. A
   refinement that does not converge, ends with no finite correlation (a blank part compared: a drawing's white
   paper), leaves the two overlapping by less than MIN_REFINED_OVERLAP, or bends into a map far from a similarity
   (singular values further apart than MAX_ANISOTROPY, or a scale beyond MAX_RESCALE of the search's) is dropped.
   That check is what tells smooth different pictures apart: an affine map fitted to two unrelated gradients
   drifts into a degenerate one.
   As find runs it (since run 63), ECC is given only the part of a that the hypothesis lays over b (two crops of
   one photo, neither holding the other, share only that part), and b is laid over a as well, the better kept.
   `tilts` (off by default; tried in results/find.md "Run (64)") also searches b turned by a few degrees.
   `per_turn`: refine each turn's best few local maxima over scale, whatever their search correlation. On smooth
   pictures a small b laid inside a correlates well almost anywhere, so the search often ranks the true scale
   below such a placement; only refinement tells them apart.
   `all_scales_from` (off by default): an alignment that correlates that well but under ALL_SCALES_UNTIL is refined
   again from every scale of its quarter turn: a smooth picture also correlates well with a zoomed-in smooth part of
   itself, so the search's peaks over scale can sit at the ends of SCALES, far from the copy's scale
   (benchmarks/flat_scales_probe.py).
3. Trimming (`trim`): an overlay one picture carries and the other does not (a logo stamped in each placement's
   corner, a caption, a frame's band) disagrees wherever the two overlap, and on a flat picture it outweighs what
   is left. The pixels whose residual (after the best linear fit of grey levels) exceeds TRIM_SIGMAS robust
   standard deviations are left out, and ECC refines once more on the rest; where more than MAX_TRIM of the
   overlap would go, the untrimmed alignment stands.
4. Stretching (`stretch_below`; on as find runs it, since run 110): a pair that does not line up so well and whose thumbnails' aspect
   ratios (either way round) differ by a factor within STRETCH_RANGE is aligned again with the second stretched along
   one side to the first's aspect ratio (`stretch_factors`), the better kept if it overlaps STRETCH_MIN_OVERLAP of
   the smaller picture: a copy squashed or stretched (a thumbnail made at the wrong aspect ratio) lines up with its
   original only so, as the refinement bounds the anisotropy it may take up (MAX_ANISOTROPY), which is what keeps
   smooth different pictures apart.
The pair's signal is the best correlation ECC reaches (no hypothesis kept: the pair does not align). Its alignment
also carries `gradient_correlation`, that of the two pictures' edges (AlignMethod's min_gradient_correlation).
BORDER of each side of both thumbnails is left out: a yearbook's frame, a scan's edge.

Measured on the tuning split only (results/find.md, "Runs (61) and (62)"): among each picture's best CNN pairs, a
correlation of 0.95 or more held copies nearly always, the flat yearbook photos' among them. per_turn and trim: "Run
(83)" there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from simbench.methods.base import Method
from simbench.features.keypoints import equalised as equalised_levels
from simbench.features.thumbnails import Thumbnails
from simbench.processes import process_map
from simbench.threads import available_cores
from simbench.types import ScoredPairs

#: Long side, in pixels, of the thumbnails compared in the search (a flat picture has no finer detail).
COARSE_SIDE = 32
#: Scales of b against a searched, 26% apart (the refinement takes up the rest): from a crop of half of
#: one picture to the whole of it, either way round.
SCALES = tuple(float(s) for s in np.geomspace(0.4, 2.5, 9))
#: The least overlap, as a share of the smaller picture (less its border), searched at and kept after refining.
MIN_OVERLAP = 0.4
MIN_REFINED_OVERLAP = 0.3
#: Long side, in pixels, the hypotheses are refined at (the report thumbnails are 160).
REFINE_SIDE = 96
#: Hypotheses kept per quarter turn (the best local maxima over scale), and refined only when their search
#: correlation is within REFINE_MARGIN of the best turn's.
TOP_PER_TURN = 1
REFINE_MARGIN = 0.05
#: The band along each side of both pictures left out, as a share of the side.
BORDER = 0.08
#: How far the affine refinement may stray from a similarity (see the module docstring).
MAX_ANISOTROPY = 1.25
MAX_RESCALE = 1.33
#: refine's overlap_template: the share of the hypothesised overlap left out along each side (the search's placement
#: is coarse), and the smallest template side (pixels) refined.
OVERLAP_MARGIN = 0.1
MIN_TEMPLATE_SIDE = 8
#: ECC's iterations per step, and the change of the map at which it stops.
ECC_ITERATIONS = 25
ECC_EPS = 1e-5
#: Trimming: a pixel is an outlier past this many robust standard deviations (1.4826 MAD) of the residual (grown
#: by a pixel each way); at most this share of the overlap is left out.
TRIM_SIGMAS = 3.0
MAX_TRIM = 0.25
#: all_scales_from: alignments correlating this well or better are not refined again (a copy's alignment mostly does).
ALL_SCALES_UNTIL = 0.99
#: stretch_below: the factors by which two thumbnails' aspect ratios may differ for the second to be stretched to the
#: first's: past what MAX_ANISOTROPY takes up, and up to a little past the development set's squashed copies (0.6-0.8,
#: 1.25-1.6 along one side).
STRETCH_RANGE = (1.15, 1.8)
#: ...and the least overlap (share of the smaller picture, as MIN_REFINED_OVERLAP) a stretched alignment must reach: a
#: copy made at another aspect ratio is the whole picture, stretched back it lies over most of the other; a stretched
#: look at a part of a picture is one more degree of freedom for smooth different pictures to line up by.
STRETCH_MIN_OVERLAP = 0.8


def settings() -> dict:
    """Everything above: what the signal depends on (the calibration table's key)."""
    return {"coarse_side": COARSE_SIDE, "scales": [round(s, 4) for s in SCALES], "min_overlap": MIN_OVERLAP,
            "min_refined_overlap": MIN_REFINED_OVERLAP, "refine_side": REFINE_SIDE, "top_per_turn": TOP_PER_TURN,
            "refine_margin": REFINE_MARGIN, "border": BORDER, "max_anisotropy": MAX_ANISOTROPY,
            "max_rescale": MAX_RESCALE, "ecc_iterations": ECC_ITERATIONS, "ecc_eps": ECC_EPS}


def trim_settings() -> dict:
    """What trimming adds to the signal's settings (only when on: the tables fitted before keep their keys)."""
    return {"trim_sigmas": TRIM_SIGMAS, "max_trim": MAX_TRIM}


@dataclass(frozen=True)
class Alignment:
    """A pair's best refined alignment: ECC's correlation, the overlap (share of the smaller picture), b's
    quarter turns, and the affine map from a's thumbnail (less its border) to b's turned and rescaled one."""

    correlation: float
    overlap: float
    turns: int
    warp: np.ndarray
    swapped: bool = False  # aligned b over a (align_pair's both_ways): warp maps b's thumbnail to a's instead
    tilt: float = 0.0  # degrees (counter-clockwise) the second picture was turned by before its quarter turns
    gradient: float = float("nan")  # `gradient_correlation` of the alignment (NaN: too little overlap to tell)
    stretch: tuple[float, float] = (1.0, 1.0)  # factors b's thumbnail was stretched by along x and y (stretch_below)


def _border_px(shape: tuple[int, ...]) -> tuple[int, int]:
    return max(1, round(BORDER * shape[0])), max(1, round(BORDER * shape[1]))


def resized(image: np.ndarray, factor: float, factor_y: float | None = None) -> np.ndarray:
    """The image scaled by factor (along y by factor_y, where given: stretched), at least 6 pixels a side."""
    h, w = image.shape[:2]
    fy = factor if factor_y is None else factor_y
    size = (max(6, round(w * factor)), max(6, round(h * fy)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA if min(factor, fy) < 1 else
                      cv2.INTER_LINEAR)


def inner_mask(shape: tuple[int, int]) -> np.ndarray:
    """1 inside, 0 on the band of BORDER along each side (uint8)."""
    mask = np.zeros(shape, np.uint8)
    (h, w), (bh, bw) = shape, _border_px(shape)
    mask[bh:h - bh, bw:w - bw] = 1
    return mask


def overlap_ncc(f: np.ndarray, g: np.ndarray, min_overlap: float) -> np.ndarray:
    """The normalised cross-correlation of grey images f and g over their overlap, for every shift d at which
    f(p) lies over g(p - d) (at index d + g.shape - 1); -1 where they overlap by less than min_overlap of the
    smaller. The sums over each shift's overlap, a rectangle, come from summed-area tables; only the cross
    term needs a correlation (OpenCV's matchTemplate, over g padded with zeros). One f against many g:
    `OverlapNcc`."""
    return OverlapNcc(f, min_overlap)(g)


def _box_sums(table: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Sums over the boxes rows [r0, r1) x columns [c0, c1) (every row box with every column box) of the image
    whose summed-area table (OpenCV's integral: one row and column of zeros first) is `table`."""
    rows = table[r1] - table[r0]
    return rows[:, c1] - rows[:, c0]


class OverlapNcc:
    """overlap_ncc(f, g, min_overlap) for one f and many g: f's summed-area tables are built once, and what
    depends only on f and g's shape (each shift's overlap, f's sums over it) once per shape (a search's turns
    by a half turn share it)."""

    def __init__(self, f: np.ndarray, min_overlap: float):
        self.f = np.asarray(f, np.float64)
        self.f32 = self.f.astype(np.float32)
        self.min_overlap = float(min_overlap)
        self.sums, self.squares = cv2.integral2(self.f, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        self._by_shape: dict = {}

    def _f_side(self, shape: tuple[int, int]):
        if shape not in self._by_shape:
            (hf, wf), (hg, wg) = self.f.shape, shape
            d0, d1 = np.arange(-(hg - 1), hf), np.arange(-(wg - 1), wf)  # shifts: f(p) pairs with g(p - d)
            fr0, fr1 = np.maximum(0, d0), np.minimum(hf, hg + d0)  # the overlap's rows and columns in f
            fc0, fc1 = np.maximum(0, d1), np.minimum(wf, wg + d1)
            n = (fr1 - fr0)[:, None] * (fc1 - fc0)[None, :]
            sf = _box_sums(self.sums, fr0, fr1, fc0, fc1)
            var_f = np.maximum(_box_sums(self.squares, fr0, fr1, fc0, fc1) - sf ** 2 / n, 1e-9)
            in_g = (fr0 - d0, fr1 - d0, fc0 - d1, fc1 - d1)  # the same overlap in g
            enough = n >= self.min_overlap * min(self.f.size, hg * wg) - 1e-6
            self._by_shape[shape] = n, sf, var_f, in_g, enough
        return self._by_shape[shape]

    def __call__(self, g: np.ndarray) -> np.ndarray:
        n, sf, var_f, in_g, enough = self._f_side(g.shape)
        hf, wf = self.f.shape
        g = np.asarray(g, np.float64)
        sums, squares = cv2.integral2(g, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        sg = _box_sums(sums, *in_g)
        var_g = np.maximum(_box_sums(squares, *in_g) - sg ** 2 / n, 1e-9)
        padded = cv2.copyMakeBorder(g.astype(np.float32), hf - 1, hf - 1, wf - 1, wf - 1, cv2.BORDER_CONSTANT, value=0)
        cross = cv2.matchTemplate(padded, self.f32, cv2.TM_CCORR)[::-1, ::-1]
        ncc = (cross - sf * sg / n) / np.sqrt(var_f * var_g)
        return np.where(enough, ncc, -1.0)


def inner(image: np.ndarray) -> np.ndarray:
    """The image less the band inner_mask leaves out."""
    (h, w), (bh, bw) = image.shape[:2], _border_px(image.shape)
    return image[bh:h - bh, bw:w - bw]


def scale_hypotheses(a: np.ndarray, b: np.ndarray,
                     quarter_turns=range(4)) -> list[list[tuple[float, int, float, tuple[int, int]]]]:
    """Per quarter turn of b (those given), per scale of SCALES: the best placement of b over a on the coarse grid,
    as a hypothesis (correlation, quarter turns of b, scale of b against a, shift in coarse pixels of the whole
    thumbnails)."""
    whole = resized(a, COARSE_SIDE / max(a.shape))
    f = inner(whole)
    ncc_with = OverlapNcc(f, MIN_OVERLAP)
    f_at = _border_px(whole.shape)
    out = []
    for turns in quarter_turns:
        turned = np.rot90(b, turns)
        best = []
        for s in SCALES:
            g_whole = resized(turned, COARSE_SIDE / max(turned.shape) * s)
            g = inner(g_whole)
            ncc = ncc_with(g)
            at = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
            d = (int(at[0]) - (g.shape[0] - 1), int(at[1]) - (g.shape[1] - 1))
            g_at = _border_px(g_whole.shape)  # back to the whole thumbnails' pixels
            best.append((float(ncc[at]), turns, s, (d[0] + f_at[0] - g_at[0], d[1] + f_at[1] - g_at[1])))
        out.append(best)
    return out


def search(a: np.ndarray, b: np.ndarray, per_turn: int = TOP_PER_TURN) -> list[tuple[float, int, float, tuple[int, int]]]:
    """The search's hypotheses (`scale_hypotheses`), per_turn per turn: the best local maxima over SCALES."""
    out = []
    for best in scale_hypotheses(a, b):
        v = [h[0] for h in best]
        peaks = [best[i] for i in range(len(best))
                 if (i == 0 or v[i] >= v[i - 1]) and (i == len(best) - 1 or v[i] >= v[i + 1]) and v[i] > -1]
        out += sorted(peaks, key=lambda h: -h[0])[:per_turn]
    return out


def refine(a: np.ndarray, b: np.ndarray, hypothesis, overlap_template: bool = False,
           trim: bool = False, gradient: bool = False, ecc_eps: float | None = None) -> Alignment | None:
    """ECC refinement of one search hypothesis (see the module docstring), or None where it is dropped; trim: then
    trimmed (`trimmed`); gradient: its `gradient_correlation` worked out (else NaN). ecc_eps: ECC stops once a step
    changes the map by less than this (None: ECC_EPS).

    overlap_template: refine on the part of a that the hypothesis lays over b (less OVERLAP_MARGIN of it on each
    side) instead of all of a. Two crops of one picture, neither holding the other (a yearbook's placements), then
    give ECC only pixels both show (AlignMethod's overlap_template; benchmarks/flat_signals_probe.py's rows)."""
    _, turns, s, shift = hypothesis
    turned = np.ascontiguousarray(np.rot90(b, turns))
    la, lb = max(a.shape), max(turned.shape)
    top, left = _border_px(a.shape)
    template = np.ascontiguousarray(inner(a))
    k = lb / (la * s)  # b's pixels per a's pixel under the hypothesis: b is brought to a's scale first
    scaled = resized(turned, 1 / k)
    mask = inner_mask(scaled.shape)
    step = la / COARSE_SIDE  # a's pixels per coarse pixel
    warp = np.array([[1, 0, left - step * shift[1]], [0, 1, top - step * shift[0]]], np.float32)
    x0, y0, x1, y1 = 0, 0, template.shape[1], template.shape[0]
    if overlap_template:
        x0, y0, x1, y1 = _overlap_box(template.shape, scaled.shape, warp)
        if min(x1 - x0, y1 - y0) < MIN_TEMPLATE_SIDE:
            return None
    warp[:, 2] += (x0, y0)  # the refined part's pixel (0, 0) is the template's (x0, y0)
    refined = np.ascontiguousarray(template[y0:y1, x0:x1])
    eps = ECC_EPS if ecc_eps is None else ecc_eps
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, eps)
    try:
        _, warp = cv2.findTransformECC(refined, scaled, warp, cv2.MOTION_EUCLIDEAN, criteria, mask, 5)
        correlation, warp = cv2.findTransformECC(refined, scaled, warp, cv2.MOTION_AFFINE, criteria, mask, 3)
    except cv2.error:  # did not converge, or the two stopped overlapping
        return None
    if not np.isfinite(correlation):  # a blank part (a drawing's white paper): no correlation to speak of
        return None
    warp[:, 2] -= warp[:, :2] @ np.float32([x0, y0])  # back to the whole template's pixels
    if not _near_similarity(warp):
        return None
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    inside = cv2.warpAffine(mask.astype(np.float32), warp, template.shape[::-1], flags=flags)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8))
    overlap = float((inside > 0.5).sum()) / min(template.size, float(mask.sum()))
    if overlap < MIN_REFINED_OVERLAP:
        return None
    if trim:
        correlation, warp = trimmed(template, scaled, mask, warp, correlation, criteria)
    edges = gradient_correlation(template, scaled, mask, warp) if gradient else float("nan")
    return Alignment(float(correlation), overlap, turns, warp, gradient=edges)


def gradient_correlation(template: np.ndarray, scaled: np.ndarray, mask: np.ndarray, warp: np.ndarray) -> float:
    """The correlation of the two pictures' gradient magnitudes (3x3 Sobel) over the template's pixels that `warp`
    lays inside `mask` (less a pixel along the edge); NaN where fewer than 30 such pixels, or one side is flat.
    Grey levels that agree at large (smooth different pictures laid over each other) need not agree in their
    edges; a copy's do."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    shape = template.shape[::-1]
    inside = cv2.erode(_laid_inside(mask, warp, shape).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if inside.sum() < 30:
        return float("nan")
    p, q = (_gradient_magnitude(x)[inside].astype(np.float64)
            for x in (template, cv2.warpAffine(scaled, warp, shape, flags=flags)))
    p, q = p - p.mean(), q - q.mean()
    norm = float(np.sqrt((p @ p) * (q @ q)))
    return float(p @ q / norm) if norm > 0 else float("nan")


def _laid_inside(mask: np.ndarray, warp: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The template's pixels (an image of `shape`, width first) that `warp` lays wholly inside `mask`."""
    return cv2.warpAffine(mask.astype(np.float32), warp, shape, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) > 0.99


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gx, gy = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def _near_similarity(warp: np.ndarray) -> bool:
    sv = np.linalg.svd(warp[:, :2].astype(np.float64), compute_uv=False)
    return sv[0] / sv[1] <= MAX_ANISOTROPY and 1 / MAX_RESCALE < np.sqrt(sv[0] * sv[1]) < MAX_RESCALE


def trimmed(template: np.ndarray, scaled: np.ndarray, mask: np.ndarray, warp: np.ndarray, correlation: float,
            criteria) -> tuple[float, np.ndarray]:
    """(correlation, warp) refined once more by ECC on the template's pixels that `warp` lays inside `mask` less the
    outliers of their residual (see the module docstring); the given ones where too many are outliers, too few
    pixels are left, or that refinement fails."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    shape = template.shape[::-1]
    inside = _laid_inside(mask, warp, shape)
    if inside.sum() < 30:
        return correlation, warp
    t, w = template[inside], cv2.warpAffine(scaled, warp, shape, flags=flags)[inside]
    fit = np.c_[w, np.ones_like(w)]
    residual = np.zeros(template.shape, np.float32)
    residual[inside] = np.abs(t - fit @ np.linalg.lstsq(fit, t, rcond=None)[0])
    spread = 1.4826 * float(np.median(residual[inside])) + 1e-4
    outliers = cv2.dilate(((residual > TRIM_SIGMAS * spread) & inside).astype(np.uint8), np.ones((3, 3), np.uint8))
    keep = inside & (outliers == 0)
    if keep.sum() < (1 - MAX_TRIM) * inside.sum():
        return correlation, warp
    try:
        again, new_warp = cv2.findTransformECCWithMask(template, scaled, keep.astype(np.uint8) * 255, mask * 255,
                                                       warp.copy(), cv2.MOTION_AFFINE, criteria, 3)
    except cv2.error:
        return correlation, warp
    if not np.isfinite(again) or not _near_similarity(new_warp):
        return correlation, warp
    return float(again), new_warp


def _overlap_box(template_shape, scaled_shape, warp: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the template's pixels that the translation `warp` lays over the scaled picture's inner part
    (inner_mask), less OVERLAP_MARGIN of the box on each side."""
    (th, tw), (sh, sw), (bh, bw) = template_shape, scaled_shape, _border_px(scaled_shape)
    tx, ty = float(warp[0, 2]), float(warp[1, 2])
    x0, x1 = max(0.0, bw - tx), min(float(tw), sw - bw - tx)
    y0, y1 = max(0.0, bh - ty), min(float(th), sh - bh - ty)
    mx, my = OVERLAP_MARGIN * (x1 - x0), OVERLAP_MARGIN * (y1 - y0)
    return int(np.ceil(x0 + mx)), int(np.ceil(y0 + my)), int(np.floor(x1 - mx)), int(np.floor(y1 - my))


def align_pair(a: np.ndarray, b: np.ndarray, overlap_template: bool = False, both_ways: bool = False,
               tilts: tuple[float, ...] = (), per_turn: int = 0, trim: bool = False,
               equalise: bool = False, gradient: bool = False, all_scales_from: float | None = None,
               ecc_eps: float | None = None, stretch_below: float | None = None) -> Alignment | None:
    """The best refined alignment of grey thumbnails a and b (float32), or None: no hypothesis refines.
    overlap_template, trim: see `refine`. both_ways: b laid over a as well (its search and refinement), the better
    kept; one so aligned is `swapped` (its turns are then still b's relative to a). tilts: angles in degrees the
    second picture is also searched and refined at, turned by each first (`tilted`): ECC refines a small turn only
    from near it. per_turn: refine each turn's per_turn best hypotheses (local maxima over scale), all of them; 0:
    TOP_PER_TURN per turn, only those within REFINE_MARGIN of the best. equalise: both thumbnails' grey levels
    equalised first (`equalised`). gradient: the alignments' `gradient_correlation` worked out (else NaN).
    all_scales_from: a best alignment correlating at least this but under ALL_SCALES_UNTIL is refined again from every
    scale of SCALES at its quarter turn and tilt (each way round searched), the best kept (None: off). ecc_eps: see
    `refine`. stretch_below: a best alignment under this (or none) is sought again with b stretched to a's aspect
    ratio by each of `stretch_factors`, the best overlapping at least STRETCH_MIN_OVERLAP kept, marked with its
    `stretch` (None: off)."""
    if equalise:
        a, b = equalised(a), equalised(b)
    options = {"overlap_template": overlap_template, "both_ways": both_ways, "tilts": tilts, "per_turn": per_turn,
               "trim": trim, "gradient": gradient, "all_scales_from": all_scales_from, "ecc_eps": ecc_eps}
    best = _align(a, b, **options)
    if stretch_below is not None and (best is None or best.correlation < stretch_below):
        for factors in stretch_factors(a.shape, b.shape):
            found = _align(a, resized(b, *factors), **options)
            if (found is not None and found.overlap >= STRETCH_MIN_OVERLAP
                    and (best is None or found.correlation > best.correlation)):
                best = replace(found, stretch=factors)
    return best


def stretch_factors(a_shape: tuple[int, int], b_shape: tuple[int, int]) -> list[tuple[float, float]]:
    """The (x, y) factors that stretch a picture of shape b_shape to the aspect ratio of one of a_shape, or of one
    of a_shape turned a quarter (a copy may be turned too), where they differ by a factor within STRETCH_RANGE; one
    side grows, the other stays."""
    (ha, wa), (hb, wb) = a_shape[:2], b_shape[:2]
    out = []
    for target in sorted({wa / ha, ha / wa}):
        f = target / (wb / hb)
        if STRETCH_RANGE[0] <= max(f, 1 / f) <= STRETCH_RANGE[1]:
            out.append((f, 1.0) if f > 1 else (1.0, 1 / f))
    return out


def _align(a: np.ndarray, b: np.ndarray, overlap_template: bool, both_ways: bool, tilts: tuple[float, ...],
           per_turn: int, trim: bool, gradient: bool, all_scales_from: float | None,
           ecc_eps: float | None) -> Alignment | None:
    """align_pair's search and refinement of a and b as they are (their grey levels equalised or not)."""
    a, b = at_refine_side(a), at_refine_side(b)
    options = {"overlap_template": overlap_template, "trim": trim, "gradient": gradient, "ecc_eps": ecc_eps}
    best = None
    for tilt in (0.0, *tilts):
        for x, y, swapped in _ways(a, b, tilt, both_ways):
            found = _best_refined(x, y, search(x, y, per_turn or TOP_PER_TURN), bool(per_turn), **options)
            best = _better(best, found, swapped, tilt)
    if best is not None and all_scales_from is not None and all_scales_from <= best.correlation < ALL_SCALES_UNTIL:
        tilt, turns = best.tilt, best.turns  # b's quarter turns over a; a's over b are the rest of a full turn
        for x, y, swapped in _ways(a, b, tilt, both_ways):
            grid = [h for h in scale_hypotheses(x, y, [(4 - turns) % 4 if swapped else turns])[0] if h[0] > -1]
            best = _better(best, _best_refined(x, y, grid, True, **options), swapped, tilt)
    return best


def _ways(a: np.ndarray, b: np.ndarray, tilt: float, both_ways: bool):
    """(first, second turned by tilt, swapped): b over a, and with both_ways a over b."""
    return ((a, tilted(b, tilt), False), (b, tilted(a, tilt), True))[:1 + both_ways]


def _better(best: Alignment | None, found: Alignment | None, swapped: bool, tilt: float) -> Alignment | None:
    """The better of align_pair's best so far and one found (swapped: b laid over a; its turns then made b's over a
    again), marked with its tilt."""
    if found is None or (best is not None and found.correlation <= best.correlation):
        return best
    if swapped:
        found = replace(found, turns=(4 - found.turns) % 4, swapped=True)
    return replace(found, tilt=tilt)


def at_refine_side(image: np.ndarray) -> np.ndarray:
    """The thumbnail as align refines it: its long side at most REFINE_SIDE pixels."""
    return resized(image, REFINE_SIDE / max(image.shape)) if max(image.shape) > REFINE_SIDE else image


def equalised(image: np.ndarray) -> np.ndarray:
    """The grey thumbnail (float32 in [0, 1]) with its histogram equalised on 256 levels (the keypoints' `equalised`).
    ECC's correlation forgives a linear change of grey levels only; a recoloured copy (sepia, duotone, a tint) changes
    them by a monotone curve, which equalising both pictures undoes, up to what the two show that the other does not."""
    levels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return equalised_levels(levels).astype(np.float32) / 255


def tilted(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned counter-clockwise by `degrees` about its centre, on the same canvas (edges repeated)."""
    if not degrees:
        return image
    h, w = image.shape
    turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _best_refined(a: np.ndarray, b: np.ndarray, hypotheses, every: bool, **refine_options) -> Alignment | None:
    """The best `refine` of the hypotheses with refine_options (every: all of them, else only those within
    REFINE_MARGIN of the best)."""
    best = None
    top = max((h[0] for h in hypotheses), default=-1.0)
    for hypothesis in (h for h in hypotheses if every or h[0] >= top - REFINE_MARGIN):
        found = refine(a, b, hypothesis, **refine_options)
        if found is not None and (best is None or found.correlation > best.correlation):
            best = found
    return best


#: Pairs aligned per worker task, and the fewest pairs worth sending to worker processes.
PAIRS_PER_TASK = 32
MIN_PAIRS_FOR_WORKERS = 64


def align_rows(task: tuple[Thumbnails, list[int], list[int], dict]) -> list[Alignment | None]:
    """(thumbnails, rows a, rows b, align_pair's options) -> `align_pair` of each pair of rows; None where it does
    not align or a thumbnail does not decode. A worker task."""
    thumbs, rows_a, rows_b, options = task
    out = []
    for x, y in zip(rows_a, rows_b):
        ga, gb = thumbs.grey(x), thumbs.grey(y)
        out.append(None if ga is None or gb is None else align_pair(ga, gb, **options))
    return out


def align_tasks(thumbs: Thumbnails, a: np.ndarray, b: np.ndarray, size: int, options: dict):
    """align_rows tasks of `size` pairs each, with just the thumbnails they compare."""
    for s in range(0, len(a), size):
        rows, local = np.unique(np.r_[a[s:s + size], b[s:s + size]], return_inverse=True)
        n = len(a[s:s + size])
        yield Thumbnails([thumbs.jpegs[r] for r in rows.tolist()]), local[:n].tolist(), local[n:].tolist(), options


class AlignMethod(Method):
    """Verifies the pairs another stage proposes (simbench find's CNN: each image's `proposals` best) by
    `align_pair` on their thumbnails (simbench.features.thumbnails); finds no pairs of its own. A pair that
    aligns scores ECC's correlation (extra: the overlap and b's quarter turns); the others are not returned.

    skip_verified: leave out the proposed pairs that a keypoint stage (keypoints, blobs) already verified:
    they need no second look, and a table fitted on the rest is a table of what is left to verify.
    skip_verified_at: with skip_verified, skip only the pairs a keypoint stage keeps past its overlap agreement with
    a calibrated score of at least this (simbench.find.pipeline.verified_pairs; None: every pair it found): a pair
    verified by a few matches, or only by a logo stamped on both, still needs a look.
    skip_held_at: with skip_verified, what counts as verified is instead a pair the stages before this one already
    score at this or more (simbench.find.pipeline.held_pairs; None: what a keypoint stage found, as above): a pair
    the keypoints verify but the CNN doubts (a recoloured copy) gets a look, one the cascade already holds does not.
    The default since run (68) (results/find.md): on fresh tuning yearbooks more pairs found, at the same cost.
    also_found: with skip_held_at, also look at the pairs a keypoint stage found that are not held, whatever the CNN
    ranks them (a recoloured copy the CNN puts far down its list); tried in run (69), not kept.
    workers: processes that align the pairs (simbench.processes; 0: one per core, 1: this process).
    overlap_template, both_ways, tilts, per_turn, trim, equalise, all_scales_from, ecc_eps: align_pair's options (ECC on
    the overlap; b over a as well; more angles searched; more hypotheses refined; overlays trimmed; grey levels
    equalised first; a loose alignment refined again from every scale at its turn; ECC's stopping step, None: ECC_EPS,
    which ECC seldom reaches in its ECC_ITERATIONS: a larger one stops it sooner, its correlations a little other).
    stretch_below: a pair aligning under this, or not at all, whose thumbnails' aspect ratios differ within
    STRETCH_RANGE is aligned again with the second stretched to the first's aspect ratio (align_pair; None: off).
    min_correlation: alignments below it are not returned (0: every one). The stage's score is added to the others'
    by noisy-OR, so every pair it returns gains at least its table's lowest precision: a floor keeps different
    pictures that merely line up loosely (smooth ones, a drawing's white paper) where the other stages put them.
    proposal_depth: look at each image's `proposals` best pairs that are not skipped, among its proposal_depth best
    (0: its `proposals` best, less those skipped): an image whose best pairs the cascade already holds (one photo
    placed many times) gets its next ones looked at (simbench.find.pipeline.proposed_pairs).
    unheld_proposals: an image in none of the pairs skipped as verified (with skip_held_at: no pair the cascade holds
    includes it) gets this many more looks: nothing has found its copies yet (a flat photo, whose best CNN pairs are
    other flat photos), while an image already held spends none on them. Off without skip_verified (nothing is
    skipped then, so every image would count as unheld).
    min_gradient_correlation: alignments whose `gradient_correlation` is below it are not returned either (None: off;
    NaN, too little overlap to tell, is kept): smooth different pictures whose grey levels line up loosely.
    one_sided_min_correlation: a pair whose two images do not both rank each other among their `proposals` best (by
    the CNN) must align at least this well to be returned (None: off; simbench.find.pipeline.one_sided_dropped): a
    flat photo's look-alikes line up loosely with it, but seldom rank it among their own best.
    proposal_min_score: only the proposed pairs the proposing stage scores at least this are looked at (its raw
    signal: the CNN's normalised similarity, 0.5 = as similar as the images' k-th neighbours; None: every one). Most
    of a collection's images have no copy, and their best CNN pairs, a little over their neighbours, cost the
    stage most of its time."""

    own_pairs = False  # see __init__
    evidence_fields = ("overlap", "turns")  # per pair, kept for the report
    fusion_transform = "neg_log1m"  # a fusion reads the correlation's nearness to 1 (calibration.fusion_feature)

    def __init__(self, extractor, matcher=None, proposals: int = 2, threshold: float = 0.95,
                 skip_verified: bool = True, workers: int = 0, own_pairs: bool = False,
                 overlap_template: bool = False, both_ways: bool = False, tilts=(), per_turn: int = 0,
                 trim: bool = False, min_correlation: float = 0.0, skip_verified_at: float | None = None,
                 skip_held_at: float | None = None, also_found: bool = False, proposal_depth: int = 0,
                 min_gradient_correlation: float | None = None, equalise: bool = False, unheld_proposals: int = 0,
                 one_sided_min_correlation: float | None = None, all_scales_from: float | None = None,
                 ecc_eps: float | None = None, proposal_min_score: float | None = None,
                 stretch_below: float | None = None):
        if proposals < 0 or own_pairs:
            raise ValueError(f"proposals must be >= 0 (not {proposals}), and own_pairs false: align only verifies")
        self.extractor, self.matcher = extractor, matcher
        self.proposals, self.threshold, self.skip_verified = int(proposals), float(threshold), bool(skip_verified)
        self.workers = int(workers)
        self.skip_verified_at = None if skip_verified_at is None else float(skip_verified_at)
        self.skip_held_at = None if skip_held_at is None else float(skip_held_at)
        if self.skip_verified_at is not None and self.skip_held_at is not None:
            raise ValueError("align: give skip_verified_at or skip_held_at, not both (two readings of 'verified')")
        self.also_found = bool(also_found)
        if self.also_found and (self.skip_held_at is None or not self.skip_verified):
            raise ValueError("align: also_found needs skip_verified and skip_held_at (else it adds only skipped pairs)")
        if per_turn < 0:
            raise ValueError(f"align: per_turn must be >= 0 (not {per_turn})")
        if proposal_depth and proposal_depth < proposals:
            raise ValueError(f"align: proposal_depth must be 0 or >= proposals (not {proposal_depth} < {proposals})")
        self.proposal_depth = int(proposal_depth)
        if unheld_proposals < 0:
            raise ValueError(f"align: unheld_proposals must be >= 0 (not {unheld_proposals})")
        self.unheld_proposals = int(unheld_proposals) if skip_verified else 0
        self.min_correlation = float(min_correlation)
        self.one_sided_min_correlation = None if one_sided_min_correlation is None else float(one_sided_min_correlation)
        self.proposal_min_score = None if proposal_min_score is None else float(proposal_min_score)
        if self.one_sided_min_correlation is not None and not proposals:
            raise ValueError("align: one_sided_min_correlation needs proposals (the ranks it reads)")
        self.min_gradient_correlation = (None if min_gradient_correlation is None
                                         else float(min_gradient_correlation))
        self.options = {"overlap_template": bool(overlap_template), "both_ways": bool(both_ways),
                        "tilts": tuple(float(t) for t in tilts), "per_turn": int(per_turn), "trim": bool(trim),
                        "equalise": bool(equalise),
                        "all_scales_from": None if all_scales_from is None else float(all_scales_from),
                        "ecc_eps": None if ecc_eps is None else float(ecc_eps),
                        "stretch_below": None if stretch_below is None else float(stretch_below)}
        if ecc_eps is not None and not ecc_eps > 0:
            raise ValueError(f"align: ecc_eps must be > 0 or None (not {ecc_eps})")

    def params(self) -> dict:
        # The options only when on: the tables fitted before them keep their keys.
        on = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items() if v}
        if self.options["trim"]:
            on.update(trim_settings())
        if self.options["all_scales_from"] is not None:  # 0 is on too: every alignment under the bar refined again
            on.update(all_scales_from=self.options["all_scales_from"], all_scales_until=ALL_SCALES_UNTIL)
        if self.options["stretch_below"] is not None:
            on.update(stretch_below=self.options["stretch_below"], stretch_range=list(STRETCH_RANGE),
                      stretch_min_overlap=STRETCH_MIN_OVERLAP)
        if self.skip_verified_at is not None:
            on["skip_verified_at"] = self.skip_verified_at
        if self.skip_held_at is not None:
            on["skip_held_at"] = self.skip_held_at
        if self.also_found:
            on["also_found"] = True
        if self.min_correlation:
            on["min_correlation"] = self.min_correlation
        if self.proposal_depth > self.proposals:
            on["proposal_depth"] = self.proposal_depth
        if self.min_gradient_correlation is not None:
            on["min_gradient_correlation"] = self.min_gradient_correlation
        if self.unheld_proposals:
            on["unheld_proposals"] = self.unheld_proposals
        if self.one_sided_min_correlation is not None:
            on["one_sided_min_correlation"] = self.one_sided_min_correlation
        if self.proposal_min_score is not None:
            on["proposal_min_score"] = self.proposal_min_score
        return {"proposals": self.proposals, "skip_verified": self.skip_verified, **settings(), **on}

    def score_pairs(self, features) -> ScoredPairs:
        """No pairs of its own: it only verifies (score_proposed)."""
        empty = np.empty(0, np.int64)
        return ScoredPairs(empty, empty, np.empty(0), {"overlap": np.empty(0), "turns": empty})

    def score_proposed(self, features, a: np.ndarray, b: np.ndarray) -> ScoredPairs:
        """The proposed pairs of thumbnails (rows a[k] < b[k]) that align, scored by their correlation (a thumbnail
        that does not decode aligns with nothing)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        workers = self.workers or available_cores()
        options = {**self.options, "gradient": self.min_gradient_correlation is not None}  # worked out when read
        if workers > 1 and len(a) >= MIN_PAIRS_FOR_WORKERS:
            parts = process_map(align_rows, align_tasks(features, a, b, PAIRS_PER_TASK, options), workers)
            found = [f for part in parts for f in part]
        else:
            found = align_rows((features, a.tolist(), b.tolist(), options))
        floor = self.min_correlation or -np.inf
        edges = -np.inf if self.min_gradient_correlation is None else self.min_gradient_correlation
        kept = np.array([f is not None and f.correlation >= floor and not f.gradient < edges for f in found], bool)
        got = [f for f, k in zip(found, kept) if k]
        return ScoredPairs(a[kept], b[kept], np.array([f.correlation for f in got], np.float64),
                           {"overlap": np.array([f.overlap for f in got], np.float64),
                            "turns": np.array([f.turns for f in got], np.int64), "proposed_pairs": len(a)})
