"""Local keypoint descriptors of every image (the yearbook method's features), stored as KeypointSets.

Detectors, each as OpenCV implements the paper:
- "brisk": Leutenegger, Chli & Siegwart 2011, BRISK: Binary Robust Invariant Scalable Keypoints
  (AGAST corners in scale space, 512-bit descriptor = 64 bytes).
- "orb": Rublee, Rabaud, Konolige & Bradski 2011, ORB: an efficient alternative to SIFT or SURF
  (oriented FAST + rotated BRIEF, 256 bits = 32 bytes).
- "akaze": Alcantarilla, Nuevo & Bartoli 2013, Fast Explicit Diffusion for Accelerated Features in
  Nonlinear Scale Spaces (M-LDB descriptor, 486 bits = 61 bytes; matchers see it zero-padded to 64 bytes).
- "sift": Lowe 2004, Distinctive Image Features from Scale-Invariant Keypoints (128 float32).

Every image is decoded in grey, scaled so that its long side is at most `max_size` (the detector's working
scale), and its keypoints are mapped back to pixel coordinates of the original image.

Which max_features keypoints are kept: the strongest by detector response, or (spread="grid") an even share
per cell of a grid over the picture (see `spread_over_grid`), so that a high-contrast overlay (a screenshot
frame's text, a caption, stripes, a logo) cannot take the whole budget from the picture around or inside it.

Where (coarse_share) part of the budget goes: keypoints of the picture smoothed by a Gaussian (a coarser
scale of it, Lindeberg 1994). Thin strokes (line art, engravings, hatching) give corners whose position and
descriptor change with the copy's scale, blur and compression; the smoothed strokes' corners survive them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from simbench.data.images import UnreadableImage, framed_box, image_size, open_image
from simbench.features.base import Extracted, Extractor
from simbench.processes import process_map
from simbench.threads import available_cores
from simbench.types import KeypointSets, Skipped

#: Descriptor width per detector: (bytes or floats per row, binary).
DESCRIPTOR_SHAPE = {"brisk": (64, True), "orb": (32, True), "akaze": (61, True), "sift": (128, False)}

#: KeypointExtractor's `equalise` choices.
EQUALISED = (None, "all", "coarse")

#: OpenCV's default for the detector-specific `threshold` (what None means).
DEFAULT_THRESHOLD = {"brisk": 30, "orb": 20, "akaze": 0.001, "sift": 0.04}

#: Images (at working scale) narrower than this have no keypoints: no detector is run on them.
MIN_SIDE = 16

#: Bump when the same parameters start giving different features, so caches and indexes re-extract.
#: 2: threshold ladder; mirror rows from the reflected keypoints instead of a second detection.
VERSION = 2

#: Ways to choose max_features keypoints spread over the picture (KeypointExtractor's `spread`; None = the
#: strongest by response).
SPREADS = ("grid",)

#: spread="grid": square cells along the image's long side at working scale (8: 80 px cells at 640 px,
#: 8 x 6 = 48 cells on a 4:3 picture, about 10 keypoints each of 500). 6 and 12 did no better on the
#: development set's tuning split.
SPREAD_CELLS = 8

#: spread: the threshold ladder goes on down while the kept keypoints would fill less than this share of
#: max_features with at most an even share per cell (`even_fill`), as well as while too few are found: a
#: photo inside a text-heavy frame gets its own, weaker corners from a lower threshold. 0.75 on the tuning
#: split: micro-AP 0.646 against 0.622 with the plain ladder (0.6: 0.625; 0.9: 0.648 at 1.2x the cost).
SPREAD_MIN_FILL = 0.75

#: ...unless the last step raised that share by less than this: what stays empty is flat (the white of line
#: art, sky), and a lower threshold would only cost time there (line art: 97 ms per image instead of 131).
SPREAD_MIN_GAIN = 0.05

#: spread: ORB and SIFT cap what they detect (nfeatures); they detect this many times max_features, for
#: the spreading to choose from. (BRISK and AKAZE return every corner above the threshold.)
SPREAD_CANDIDATES = 20

#: Below this many images a process pool costs more than it saves (interpreter start-up).
MIN_IMAGES_FOR_POOL = 16


@dataclass(frozen=True)
class _Config:
    """What one worker needs to extract one image (picklable)."""

    detector: str
    max_features: int
    max_size: int
    threshold: float | None
    mirror: bool
    adaptive: bool = True
    spread: str | None = None
    coarse_share: float = 0.0
    coarse_sigma: tuple[float, ...] = (2.0,)
    trim_frame: bool = False
    equalise: str | None = None
    equalise_clip: float | None = None
    coarse_scale: float = 1.0


class KeypointExtractor(Extractor):
    """Keypoints and descriptors of each image: `max_features` of them, the strongest by detector
    response, or (spread) the strongest of each part of the picture.

    extract(paths) -> Extracted(KeypointSets): descriptors (M, bytes) uint8 for binary detectors,
    (M, 128) float32 for SIFT; points in pixels of the original image (after EXIF rotation), sizes
    scaled alike; image_sizes (N, 2) original width, height. Images with no keypoints keep zero rows;
    unreadable files are skipped with the reason.

    detector: "brisk", "orb", "akaze" or "sift" (see the module docstring for the papers).
    max_size: long side in pixels the detector runs at (larger images are scaled down first).
    threshold: detector-specific sensitivity; None = OpenCV's default. BRISK: AGAST `thresh` (30);
        ORB: `fastThreshold` (20); AKAZE: detector response `threshold` (0.001); SIFT: `contrastThreshold` (0.04).
    adaptive: with a threshold below the detector's default, detect at the default first and lower the
        threshold (halving, down to `threshold`) only while fewer than max_features keypoints are found.
        A keypoint's response does not depend on the threshold it was found at, so a detailed picture
        keeps (nearly) the same strongest keypoints for a fraction of the cost: at BRISK threshold 8 a
        textured 512 px picture has ~7,000 corners and detection costs ~6x what it does at 30, where
        500 are already found (so the steps read off one detection at `threshold` cost as much: run 95,
        results/find.md). Low-contrast pictures still go down to `threshold`. With spread, the
        ladder also goes on down while the keypoints crowd into part of the picture (SPREAD_MIN_FILL,
        SPREAD_MIN_GAIN).
    spread: None = keep the strongest max_features by response. "grid" = keep them spread over the
        picture: a grid of square cells (SPREAD_CELLS along the long side at working scale), the
        strongest keypoint of every cell first, then the second of every cell, and so on (an even share
        per cell; what flat cells cannot use goes to the others), see `spread_over_grid`. Against
        overlays that take the budget: the 500 strongest BRISK corners of a photo in an app-screenshot
        frame are nearly all the frame's text, so the copy loses its photo and different photos in
        the same frame match through it. Pictures with at most max_features keypoints keep them all,
        as without. Costs detection time, as the ladder goes lower: 1.4x the extraction time on the
        development set's tuning photos and line art, 2x on textured 1024 px wallpapers.
    coarse_share: the share of max_features detected and described on the picture smoothed by a Gaussian
        of coarse_sigma pixels at working scale (its own threshold ladder and spread); the rest on the
        picture as it is. coarse_sigma may list several sigmas: the share is split evenly among them.
        Rows of every scale are appended per image. Line art's copies that change its scale (crops,
        downscales, pastes, scans) are verified far more often (results/find.md); each coarse sigma costs
        one more detection.
    coarse_scale: the coarse scales' smoothed pictures are detected and described at this share of the working
        size (1: as they are), their keypoints mapped back: what the smoothing took out a smaller picture does not
        need, and its detection costs about that share squared.
    mirror: also describe the horizontally mirrored image, at the image's own keypoints reflected (no
        second detection), appended after the image's rows at the same scale (flag in
        `KeypointSets.mirrored`), so that mirrored copies match. Doubles the rows, and the descriptor
        pairs about fourfold.
    trim_frame: detect (at working scale) only inside a frame burned around the picture (a yearbook's school
        frame, a passe-partout, a uniform border: simbench.data.images.framed_box). Otherwise the frame's
        corners take part of the budget, most of all from a smooth photograph inside it, and different
        photos in one frame share them.
    equalise: which pictures the detector runs on have their grey histogram equalised first (cv2.equalizeHist,
        at working scale, after trim_frame). None: none. "all": the picture, before it is smoothed for the
        coarse scales too. "coarse": only the smoothed pictures of the coarse scales. A copy recoloured
        (sepia, a duotone, a strong tint), darkened or with its contrast lowered keeps the order of its grey
        levels but not their spacing: the detector's absolute threshold then finds other corners, and the
        descriptor's comparisons of near-equal smoothed intensities flip. Equalised, the copy's grey levels
        come back close to the original's. But a picture pasted into another, or half covered, is equalised
        with the rest of its image: its grey levels move with what surrounds it.
    equalise_clip: the equalisation's clip limit (as CLAHE's, over the whole picture: no grey level's count
        above this many times the mean count, the excess spread over all levels; `equalised`). None: none.
        Equalised unclipped, a line drawing's paper (most of its pixels, in a few near-white levels) is
        spread over the whole grey range, and its grain with it.
    workers: processes; 0 = one per core, 1 = in this process.
    """

    kind = "keypoints"

    def __init__(self, detector: str = "brisk", max_features: int = 500, max_size: int = 640,
                 threshold: float | None = None, mirror: bool = False, adaptive: bool = True,
                 spread: str | None = None, coarse_share: float = 0.0,
                 coarse_sigma: float | Sequence[float] = 2.0, trim_frame: bool = False,
                 equalise: str | None = None, equalise_clip: float | None = None, workers: int = 0,
                 coarse_scale: float = 1.0):
        if detector not in DESCRIPTOR_SHAPE:
            raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DESCRIPTOR_SHAPE)}")
        if spread is not None and spread not in SPREADS:
            raise ValueError(f"unknown spread {spread!r}; choose None or one of {list(SPREADS)}")
        if equalise not in EQUALISED:
            raise ValueError(f"unknown equalise {equalise!r}; choose None or one of {list(EQUALISED[1:])}")
        if equalise_clip is not None and not equalise_clip >= 1.0:  # without equalise it is unused
            raise ValueError("equalise_clip must be None or >= 1 (times the mean count of a grey level)")
        if max_features < 1 or max_size < 16:
            raise ValueError("max_features must be >= 1 and max_size >= 16")
        if isinstance(coarse_sigma, str) or not isinstance(coarse_sigma, Sequence):
            coarse_sigma = [coarse_sigma]
        sigmas = tuple(float(s) for s in coarse_sigma)
        if not 0.0 <= coarse_share <= 1.0 or not sigmas or min(sigmas) <= 0:
            raise ValueError("coarse_share must be in [0, 1] and coarse_sigma one or more sigmas > 0")
        self.detector = detector
        self.max_features = int(max_features)
        self.max_size = int(max_size)
        self.threshold = threshold
        self.mirror = bool(mirror)
        self.adaptive = bool(adaptive)
        self.spread = spread
        self.coarse_share = float(coarse_share)
        self.coarse_sigma = sigmas
        self.trim_frame = bool(trim_frame)
        self.equalise = equalise
        self.equalise_clip = None if equalise_clip is None else float(equalise_clip)
        self.workers = int(workers)
        if not 0.0 < coarse_scale <= 1.0:
            raise ValueError(f"coarse_scale must be in (0, 1], got {coarse_scale}")
        self.coarse_scale = float(coarse_scale)

    @property
    def binary(self) -> bool:
        return DESCRIPTOR_SHAPE[self.detector][1]

    def params(self) -> dict:
        """The settings that change the features. `spread` and the coarse scale only when set: without
        them the features are as before, so caches, indexes and calibration tables keyed on these settings
        stay valid."""
        params = {"detector": self.detector, "max_features": self.max_features, "max_size": self.max_size,
                  "threshold": self.threshold, "mirror": self.mirror, "adaptive": self.adaptive,
                  "version": VERSION}
        if self.spread is not None:
            params["spread"] = self.spread
        if self.coarse_share > 0:  # one sigma as a number, as before lists were taken
            sigmas = self.coarse_sigma
            params.update(coarse_share=self.coarse_share, coarse_sigma=sigmas[0] if len(sigmas) == 1 else list(sigmas))
            if self.coarse_scale != 1.0:
                params["coarse_scale"] = self.coarse_scale
        if self.trim_frame:
            params["trim_frame"] = True
        if self.equalise:
            params["equalise"] = self.equalise
            if self.equalise_clip is not None:
                params["equalise_clip"] = self.equalise_clip
        return params

    @property
    def name(self) -> str:
        return f"keypoints-{self.detector}"

    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        config = _Config(self.detector, self.max_features, self.max_size, self.threshold, self.mirror,
                         self.adaptive, self.spread, self.coarse_share, self.coarse_sigma, self.trim_frame,
                         self.equalise, self.equalise_clip, self.coarse_scale)
        results = _map_images(paths, config, self.workers, progress)
        return _collect(paths, results, config)


# ---------------------------------------------------------------------------------------------------
# Running over many images


def _map_images(paths: Sequence[Path], config: _Config, workers: int, progress: bool) -> list:
    """extract_image over all paths in order; over the kept worker processes (simbench.processes) when
    workers != 1."""
    n_workers = workers if workers > 0 else available_cores()
    n_workers = min(n_workers, max(1, len(paths)))
    args = [(str(p), config) for p in paths]
    if n_workers == 1 or len(paths) < MIN_IMAGES_FOR_POOL:
        return [_extract_task(a) for a in _progress(args, progress, len(args))]
    chunk = max(1, min(32, len(args) // (8 * n_workers)))
    return list(_progress(process_map(_extract_task, args, n_workers, chunksize=chunk), progress, len(args)))


def _progress(iterable, progress: bool, total: int):
    """A tqdm bar over iterable when asked for."""
    if not progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="keypoints", unit="img")


def _extract_task(arg):
    """Worker entry point: (path, config) -> dict of arrays, or Skipped when the file cannot be read."""
    path, config = arg
    try:
        return extract_image(path, config)
    except UnreadableImage as exc:
        return Skipped(path, str(exc))
    except cv2.error as exc:  # a detector failing on a readable image: say so rather than stop the run
        return Skipped(path, f"keypoint detection failed ({str(exc).strip().splitlines()[-1]})")


def _collect(paths: Sequence[Path], results: list, config: _Config) -> Extracted:
    """Concatenate per-image results into one KeypointSets; Skipped results go to `skipped`."""
    width, binary = DESCRIPTOR_SHAPE[config.detector]
    kept = [(i, r) for i, r in enumerate(results) if not isinstance(r, Skipped)]
    skipped = [Skipped(str(paths[i]), r.reason) for i, r in enumerate(results) if isinstance(r, Skipped)]
    per = [r for _, r in kept]
    counts = np.array([len(r["descriptors"]) for r in per], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def cat(key, shape, dtype):
        parts = [r[key] for r in per]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(shape, dtype)

    extra = {"mirrored": cat("mirrored", (0,), bool)} if config.mirror else {}
    features = KeypointSets(
        descriptors=cat("descriptors", (0, width), np.uint8 if binary else np.float32),
        offsets=offsets,
        points=cat("points", (0, 2), np.float32),
        sizes=cat("sizes", (0,), np.float32),
        angles=cat("angles", (0,), np.float32),
        responses=cat("responses", (0,), np.float32),
        image_sizes=np.array([r["image_size"] for r in per], dtype=np.int64).reshape(-1, 2),
        binary=binary,
        **extra,
    )
    rows = np.array([i for i, _ in kept], dtype=np.int64)
    return Extracted(features, rows, skipped)


# ---------------------------------------------------------------------------------------------------
# One image


def extract_image(path: str | Path, config: _Config) -> dict:
    """Keypoints of one image file in original pixel coordinates (raises UnreadableImage)."""
    gray, original_size = decode_gray(path, config.max_size)
    scale = (original_size[0] / gray.shape[1], original_size[1] / gray.shape[0])
    left, top = 0, 0
    if config.trim_frame:
        left, top, right, bottom = framed_box(gray)
        gray = np.ascontiguousarray(gray[top:bottom, left:right])
    if config.equalise == "all":
        gray = equalised(gray, config.equalise_clip)
    parts = []
    for sigma, budget in scale_budgets(config):
        image = cv2.GaussianBlur(gray, (0, 0), sigma) if sigma else gray
        if sigma and config.equalise == "coarse":
            image = equalised(image, config.equalise_clip)
        shrunk = bool(sigma) and config.coarse_scale < 1.0 and min(image.shape) > 1
        if shrunk:
            size = (max(1, round(image.shape[1] * config.coarse_scale)), max(1, round(image.shape[0] * config.coarse_scale)))
            factor = np.float32([image.shape[1] / size[0], image.shape[0] / size[1]])
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        candidates = budget * (SPREAD_CANDIDATES if config.spread else 1)  # ORB and SIFT cap theirs
        ladder = threshold_ladder(config)
        finders = [make_finder(config.detector, candidates, t) for t in ladder]
        keypoints = find_keypoints(finders, image, budget, config.spread)
        describer = make_detector(config.detector, candidates, ladder[0])
        here = [describe(describer, image, keypoints, mirrored=False)]
        if config.mirror:
            # Features of the mirror image, so a flipped copy's features match these rows. Its keypoints
            # are this image's reflected (what a detector finds on a flip, up to its own repeatability),
            # which saves a second detection: most of the extraction's cost. (Spread or not: the same.)
            here.append(describe(describer, np.ascontiguousarray(image[:, ::-1]),
                                 reflect(keypoints, image.shape[1]), mirrored=True))
        if shrunk:  # back to working-scale pixels (pixel centres map to pixel centres)
            for part in here:
                part["points"] = (part["points"] + np.float32(0.5)) * factor - np.float32(0.5)
                part["sizes"] = part["sizes"] * np.float32(factor.mean())
        parts += here
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    out["points"] = to_original_pixels(out["points"] + np.float32([left, top]), scale)
    out["sizes"] = out["sizes"] * np.float32((scale[0] + scale[1]) / 2)
    out["image_size"] = original_size
    return out


def equalised(gray: np.ndarray, clip: float | None = None) -> np.ndarray:
    """A grey uint8 picture with its histogram equalised (cv2.equalizeHist); with a clip limit, as CLAHE (Zuiderveld
    1994) over one tile, the whole picture: no grey level counts more than clip times the mean count."""
    if not gray.size:
        return gray
    if clip is None:
        return cv2.equalizeHist(gray)
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(1, 1)).apply(gray)


def scale_budgets(config: _Config) -> list[tuple[float, int]]:
    """[(Gaussian sigma at working scale, 0 = none; keypoints to keep there)]: the picture as it is, and
    (coarse_share, split evenly, any remainder to the finest) the picture smoothed at each coarse sigma."""
    coarse = round(config.max_features * config.coarse_share)
    each, extra = divmod(coarse, len(config.coarse_sigma))
    budgets = [(0.0, config.max_features - coarse)] + [
        (sigma, each + (k < extra)) for k, sigma in enumerate(config.coarse_sigma)]
    return [(sigma, n) for sigma, n in budgets if n > 0]


def threshold_ladder(config: _Config) -> list[float | None]:
    """Thresholds to try in turn: the configured one, or (adaptive) the default halved down to it."""
    if not config.adaptive or config.threshold is None:
        return [config.threshold]
    default, lowest = DEFAULT_THRESHOLD[config.detector], config.threshold
    ladder = []
    t = default
    while t > lowest:
        ladder.append(t)
        t /= 2
    return ladder + [lowest]


def decode_gray(path: str | Path, max_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey uint8 image with long side <= max_size, and the original (width, height) after EXIF rotation.

    JPEGs are decoded at a reduced scale (libjpeg's 1/2..1/8 DCT scaling) that still covers max_size,
    then resized with area averaging (no aliasing, unlike nearest or bilinear on a large downscale).
    """
    original = image_size(path)  # header only: the size keypoints are mapped back to
    gray = np.asarray(open_image(path, draft=(max_size, max_size), mode="L"), dtype=np.uint8)
    h, w = gray.shape
    long_side = max(w, h)
    if long_side > max_size:
        f = max_size / long_side
        size = (max(1, round(w * f)), max(1, round(h * f)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray), original


def to_original_pixels(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Working-scale pixel coordinates -> original pixels (pixel centres at integers in both)."""
    out = (points.astype(np.float64) + 0.5) * np.asarray(scale) - 0.5
    return out.astype(np.float32).reshape(-1, 2)


@functools.lru_cache(maxsize=8)
def make_detector(detector: str, max_features: int, threshold: float | None):
    """The OpenCV feature object for a detector name; `threshold` None = OpenCV's default.

    Cached: one object per process and setting (BRISK builds its sampling pattern when created).
    """
    t = DEFAULT_THRESHOLD[detector] if threshold is None else threshold
    if detector == "brisk":
        return _contrib("BRISK_create")(thresh=int(round(t)), octaves=3)
    if detector == "orb":
        # ORB spreads nfeatures over its pyramid levels itself (Rublee 2011, section 3).
        return cv2.ORB_create(nfeatures=max_features, fastThreshold=int(round(t)))
    if detector == "akaze":
        return _contrib("AKAZE_create")(threshold=float(t))
    if detector == "sift":
        return cv2.SIFT_create(nfeatures=max_features, contrastThreshold=float(t))
    raise ValueError(f"unknown detector {detector!r}")


#: The outer ring of OpenCV's BRISK sampling pattern (BRISK_Impl's default: radius 0.85 x 10.8 pixels at keypoint
#: scale 1, 20 points; its short pairs end at 5.85): it sets how close to the border a keypoint may lie.
BRISK_OUTER_RING = (0.85 * 10.8, 20)
BRISK_SHORT_PAIRS = 5.85


@functools.lru_cache(maxsize=8)
def make_finder(detector: str, max_features: int, threshold: float | None):
    """The object that detects: make_detector's, except for BRISK, whose `detect` also computes every corner's
    orientation (from the sampling pattern's long pairs), which `compute` computes again for the few kept. Its
    finder samples only the pattern's centre and outer ring, with no long pairs: the same corners in the same
    order (the scale space does not depend on the pattern, the border keypoints are dropped by the outer ring's
    size), at no orientation cost. Only its `detect` is used; `describe` takes make_detector's."""
    if detector != "brisk":
        return make_detector(detector, max_features, threshold)
    t = DEFAULT_THRESHOLD[detector] if threshold is None else threshold
    radius, points = BRISK_OUTER_RING
    return _contrib("BRISK_create")(int(round(t)), 3, [0.0, radius], [1, points], BRISK_SHORT_PAIRS, np.inf)


def _contrib(name: str):
    """BRISK and AKAZE live in cv2 up to OpenCV 4 and in cv2.xfeatures2d (contrib) from OpenCV 5."""
    factory = getattr(cv2, name, None) or getattr(getattr(cv2, "xfeatures2d", None), name, None)
    if factory is None:
        raise RuntimeError(f"OpenCV has no {name}; install opencv-contrib-python-headless")
    return factory


def find_keypoints(detectors: list, gray: np.ndarray, max_features: int, spread: str | None = None) -> list:
    """max_features keypoints: the strongest by response, or (spread="grid") spread over the picture.

    detectors: tried in turn (a threshold ladder, most selective first) until one finds max_features;
        with spread, also until they fill at least SPREAD_MIN_FILL of max_features evenly (`even_fill`),
        or a step raised that share by less than SPREAD_MIN_GAIN.
    """
    keypoints = []
    # A sliver has no room for a descriptor's sampling pattern, and BRISK's pyramid fails on it.
    if min(gray.shape) >= MIN_SIDE:
        filled = -1.0
        for detector in detectors:
            keypoints = detector.detect(gray, None)
            if len(keypoints) < max_features:
                continue  # too few: lower the threshold (or, at the last step, keep them all)
            if spread is None:
                break
            # Enough keypoints, but crowded into part of the picture (a frame's text, a caption)? Lower
            # the threshold while that brings the rest of the picture corners of its own.
            was, filled = filled, even_fill(_points(keypoints), gray.shape, max_features)
            if filled >= SPREAD_MIN_FILL or filled - was < SPREAD_MIN_GAIN:
                break
    if spread is None or len(keypoints) <= max_features:
        return sorted(keypoints, key=lambda k: -k.response)[:max_features]
    return spread_over_grid(keypoints, gray.shape, max_features)


def spread_over_grid(keypoints: list, shape: tuple[int, int], max_features: int) -> list:
    """max_features keypoints taken round-robin over the cells of a grid, strongest first in each cell.

    Grid bucketing, as ORB-SLAM extracts its corners (Mur-Artal, Montiel & Tardos 2015, ORB-SLAM: a
    versatile and accurate monocular SLAM system: each pyramid level divided into a grid, corners taken in
    every cell), for the reason Brown, Szeliski & Winder give for adaptive non-maximal suppression (2005,
    Multi-image matching using multi-scale oriented patches: keypoints spread over the image match better
    than the strongest alone, which crowd where the contrast is highest).

    Steps, by plain sorting: rank every keypoint within its cell by response; keep all of rank 0 (the best
    of every cell), then all of rank 1, and so on, each round ordered by response, until max_features. So
    every cell gets the same share, up to what it has, and the budget that flat cells cannot use goes
    evenly to the others (water-filling). A budget smaller than the cells is one round, by response: the
    strongest cells' best. Deterministic: ties go to the detector's order. Returned strongest first, as
    without spreading.

    Why not ANMS itself (keep the keypoints farthest from any 10% stronger one): measured on the tuning
    split with BRISK as `simbench find` runs it, it did no better (micro-AP 0.603 against the grid's 0.622,
    both with the plain ladder) and cost far more: AGAST scores tie a lot, so many keypoints have no
    stronger one among their nearest neighbours and the k-d tree search widens (line art: 259 ms per image
    against 70). And the ladder needs the cells anyway (`even_fill`).
    """
    n = len(keypoints)
    response = np.array([k.response for k in keypoints], np.float64)
    cell = grid_cells(_points(keypoints), shape)
    index = np.arange(n)
    # Rank within the cell: sort by (cell, response descending), count from each cell's first entry.
    by_cell = np.lexsort((index, -response, cell))
    sorted_cells = cell[by_cell]
    first = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    starts = np.repeat(first, np.diff(np.r_[first, n]))
    rank = np.empty(n, np.int64)
    rank[by_cell] = index - starts
    # Round-robin: by rank, then by response; keep the first max_features, strongest first.
    keep = np.lexsort((index, -response, rank))[:max_features]
    keep = keep[np.lexsort((keep, -response[keep]))]
    return [keypoints[i] for i in keep.tolist()]


def grid_cells(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Cell index of each point (x, y) in a grid of square cells, SPREAD_CELLS along the long side of an
    image of shape (h, w); the last row or column of a non-square image may be partial."""
    nx, ny, size = _grid(shape)
    cx = np.clip((points[:, 0] / size).astype(np.int64), 0, nx - 1)
    cy = np.clip((points[:, 1] / size).astype(np.int64), 0, ny - 1)
    return cy * nx + cx


def even_fill(points: np.ndarray, shape: tuple[int, int], max_features: int) -> float:
    """How much of max_features the points fill with at most an even share per grid cell, in [0, 1]:
    sum over cells of min(points in the cell, ceil(max_features / cells)) / max_features."""
    nx, ny, _ = _grid(shape)
    share = -(-max_features // (nx * ny))
    counts = np.bincount(grid_cells(points, shape), minlength=nx * ny)
    return min(1.0, float(np.minimum(counts, share).sum()) / max_features)


def _grid(shape: tuple[int, int]) -> tuple[int, int, float]:
    """(cells along x, cells along y, cell side in pixels) for an image of shape (h, w)."""
    h, w = shape
    size = max(h, w) / SPREAD_CELLS
    return max(1, int(np.ceil(w / size - 1e-9))), max(1, int(np.ceil(h / size - 1e-9))), size


def _points(keypoints: list) -> np.ndarray:
    """(n, 2) float32 coordinates of OpenCV keypoints."""
    return cv2.KeyPoint_convert(keypoints).reshape(-1, 2) if keypoints else np.empty((0, 2), np.float32)


def reflect(keypoints: list, width: int) -> list:
    """The keypoints of the horizontally mirrored image: x -> width - 1 - x, orientation a -> 180 - a."""
    angles = _reflect_angle(np.array([k.angle for k in keypoints], np.float64)).tolist()  # one NumPy call, not one each
    return [cv2.KeyPoint(width - 1 - k.pt[0], k.pt[1], k.size, a, k.response, k.octave, k.class_id)
            for k, a in zip(keypoints, angles)]


def _reflect_angle(angle):
    """Orientation in the mirrored image (degrees; -1, "none", stays)."""
    return np.where(np.asarray(angle) >= 0, np.mod(180.0 - np.asarray(angle), 360.0), angle)


def describe(detector, gray: np.ndarray, keypoints: list, mirrored: bool) -> dict:
    """Descriptors of the given keypoints (the detector's threshold plays no part); points of a mirrored
    image are mapped back to the unmirrored one. `compute` may drop keypoints (too close to the border
    for the sampling pattern), so the result can have fewer rows than keypoints.
    """
    width, binary = _descriptor_shape_of(detector)
    descriptors = None
    if keypoints:
        keypoints, descriptors = detector.compute(gray, keypoints)
    if descriptors is None or not keypoints:
        keypoints, descriptors = [], np.empty((0, width), np.uint8 if binary else np.float32)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    angles = np.array([k.angle for k in keypoints], dtype=np.float32)
    if mirrored:
        points[:, 0] = gray.shape[1] - 1 - points[:, 0]
        angles = _reflect_angle(angles).astype(np.float32)
    return {
        "descriptors": np.ascontiguousarray(descriptors),
        "points": points,
        "sizes": np.array([k.size for k in keypoints], dtype=np.float32),
        "angles": angles,
        "responses": np.array([k.response for k in keypoints], dtype=np.float32),
        "mirrored": np.full(len(keypoints), mirrored, dtype=bool),
    }


def _descriptor_shape_of(detector) -> tuple[int, bool]:
    """(descriptor width, binary) of an OpenCV feature object, for images with no keypoints."""
    size = detector.descriptorSize()
    binary = detector.descriptorType() == cv2.CV_8U
    return size, binary
