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
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from simbench.data.images import UnreadableImage, image_size, open_image
from simbench.features.base import Extracted, Extractor
from simbench.types import KeypointSets, Skipped

#: Descriptor width per detector: (bytes or floats per row, binary).
DESCRIPTOR_SHAPE = {"brisk": (64, True), "orb": (32, True), "akaze": (61, True), "sift": (128, False)}

#: OpenCV's default for the detector-specific `threshold` (what None means).
DEFAULT_THRESHOLD = {"brisk": 30, "orb": 20, "akaze": 0.001, "sift": 0.04}

#: Images (at working scale) narrower than this have no keypoints: no detector is run on them.
MIN_SIDE = 16

#: Bump when the same parameters start giving different features, so caches and indexes re-extract.
#: 2: threshold ladder; mirror rows from the reflected keypoints instead of a second detection.
VERSION = 2

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


class KeypointExtractor(Extractor):
    """Keypoints and descriptors of each image: the strongest `max_features` by detector response.

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
        500 are already found. Low-contrast pictures still go down to `threshold`.
    mirror: also describe the horizontally mirrored image, at the image's own keypoints reflected (no
        second detection), appended after the plain rows of the same image (flag in
        `KeypointSets.mirrored`), so that mirrored copies match. Doubles the rows, and the descriptor
        pairs about fourfold.
    workers: processes; 0 = one per core, 1 = in this process.
    """

    kind = "keypoints"

    def __init__(self, detector: str = "brisk", max_features: int = 500, max_size: int = 640,
                 threshold: float | None = None, mirror: bool = False, adaptive: bool = True,
                 workers: int = 0):
        if detector not in DESCRIPTOR_SHAPE:
            raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DESCRIPTOR_SHAPE)}")
        if max_features < 1 or max_size < 16:
            raise ValueError("max_features must be >= 1 and max_size >= 16")
        self.detector = detector
        self.max_features = int(max_features)
        self.max_size = int(max_size)
        self.threshold = threshold
        self.mirror = bool(mirror)
        self.adaptive = bool(adaptive)
        self.workers = int(workers)

    @property
    def binary(self) -> bool:
        return DESCRIPTOR_SHAPE[self.detector][1]

    def params(self) -> dict:
        return {"detector": self.detector, "max_features": self.max_features, "max_size": self.max_size,
                "threshold": self.threshold, "mirror": self.mirror, "adaptive": self.adaptive,
                "version": VERSION}

    @property
    def name(self) -> str:
        return f"keypoints-{self.detector}"

    def extract(self, paths: Sequence[Path], progress: bool = False) -> Extracted:
        config = _Config(self.detector, self.max_features, self.max_size, self.threshold, self.mirror,
                         self.adaptive)
        results = _map_images(paths, config, self.workers, progress)
        return _collect(paths, results, config)


# ---------------------------------------------------------------------------------------------------
# Running over many images


def _map_images(paths: Sequence[Path], config: _Config, workers: int, progress: bool) -> list:
    """extract_image over all paths in order; a spawn-started process pool when workers != 1."""
    n_workers = workers if workers > 0 else _cores()
    n_workers = min(n_workers, max(1, len(paths)))
    args = [(str(p), config) for p in paths]
    if n_workers == 1 or len(paths) < MIN_IMAGES_FOR_POOL:
        return [_extract_task(a) for a in _progress(args, progress, len(args))]
    # spawn, not fork: a forked child can inherit OpenCV's thread pool in a locked state.
    with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        chunk = max(1, min(32, len(args) // (8 * n_workers)))
        return list(_progress(pool.map(_extract_task, args, chunksize=chunk), progress, len(args)))


def _cores() -> int:
    """Cores this process may run on (not all of the machine's, in a container or under taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    """One OpenCV thread per worker process: the processes already use every core."""
    cv2.setNumThreads(1)


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
    detectors = [make_detector(config.detector, config.max_features, t) for t in threshold_ladder(config)]
    scale = (original_size[0] / gray.shape[1], original_size[1] / gray.shape[0])
    keypoints = find_keypoints(detectors, gray, config.max_features)
    parts = [describe(detectors[0], gray, keypoints, mirrored=False)]
    if config.mirror:
        # Features of the mirror image, so a flipped copy's features match these rows. Its keypoints are
        # this image's reflected (what a detector finds on a flip, up to its own repeatability), which
        # saves a second detection: most of the extraction's cost.
        parts.append(describe(detectors[0], np.ascontiguousarray(gray[:, ::-1]),
                              reflect(keypoints, gray.shape[1]), mirrored=True))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    out["points"] = to_original_pixels(out["points"], scale)
    out["sizes"] = out["sizes"] * np.float32((scale[0] + scale[1]) / 2)
    out["image_size"] = original_size
    return out


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


def _contrib(name: str):
    """BRISK and AKAZE live in cv2 up to OpenCV 4 and in cv2.xfeatures2d (contrib) from OpenCV 5."""
    factory = getattr(cv2, name, None) or getattr(getattr(cv2, "xfeatures2d", None), name, None)
    if factory is None:
        raise RuntimeError(f"OpenCV has no {name}; install opencv-contrib-python-headless")
    return factory


def find_keypoints(detectors: list, gray: np.ndarray, max_features: int) -> list:
    """The strongest max_features keypoints by response.

    detectors: tried in turn (a threshold ladder, most selective first) until one finds max_features.
    """
    keypoints = []
    # A sliver has no room for a descriptor's sampling pattern, and BRISK's pyramid fails on it.
    if min(gray.shape) >= MIN_SIDE:
        for detector in detectors:
            keypoints = detector.detect(gray, None)
            if len(keypoints) >= max_features:
                break
    return sorted(keypoints, key=lambda k: -k.response)[:max_features]


def reflect(keypoints: list, width: int) -> list:
    """The keypoints of the horizontally mirrored image: x -> width - 1 - x, orientation a -> 180 - a."""
    return [cv2.KeyPoint(width - 1 - k.pt[0], k.pt[1], k.size, float(_reflect_angle(k.angle)), k.response,
                         k.octave, k.class_id) for k in keypoints]


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
