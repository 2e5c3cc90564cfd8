"""The embedded default dataset: copies of real photographs made by known transforms, built offline.

Source pictures are non-overlapping tiles cut at a few scales from the photographs that ship inside
scikit-image (skimage.data), so every reference and distractor is a different picture. Each reference gets
one copy per transform kind; ground truth is every pair inside a group (reference + its copies), as in
ISC2021's pairwise truth (a duplicate finder must find copy-copy pairs too). Distractors are other tiles,
each put through one random transform so that artefacts alone do not give copies away.

Layout of a built dataset (`cache_dir/synthetic-<hash>/`): images/*.jpg, labels.csv (path,label),
truth.csv (a,b), params.json. Built once into a temporary folder and renamed into place, so an interrupted
build leaves nothing half-made behind.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simbench.data.dataset import Dataset
from simbench.data.folder import read_pairs_csv
from simbench.data.transforms import TRANSFORMS

#: Bump when the build changes, so old caches are not reused.
BUILD_VERSION = 1

#: skimage.data photographs that load offline. "cat" is "chelsea" again, and the right stereo view of the
#: motorcycle nearly duplicates the left one, so each appears once.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry",
          "moon", "rocket", "retina", "clock", "cell", "page", "text", "brick", "grass", "gravel", "motorcycle")

#: Tiles are cut down to this side at least, and split while longer than MAX_TILE_SIDE.
MIN_TILE_SIDE = 80
MAX_TILE_SIDE = 256
#: Tiles this alike (correlation of 16x16 normalised thumbnails) are the same picture to us; keep one.
MAX_TILE_CORRELATION = 0.9
#: Tiles with less detail than this (see has_detail) are not used.
MIN_TILE_DETAIL = 3.0

REFERENCE = "reference"
DISTRACTOR = "distractor"


def default_cache_dir() -> Path:
    """$SIMBENCH_CACHE, else ~/.cache/simbench."""
    return Path(os.environ.get("SIMBENCH_CACHE") or Path.home() / ".cache" / "simbench")


class SyntheticDataset:
    """n_references groups of (reference + one copy per transform) and n_distractors singletons.

    transforms: transform names (simbench.data.transforms.TRANSFORMS), None = all of them.
    long_side: every source tile is resized to this long side before being transformed.
    """

    def __init__(self, n_references: int = 30, n_distractors: int = 150, transforms: list[str] | None = None,
                 long_side: int = 512, seed: int = 0, cache_dir: str | None = None):
        self.n_references = int(n_references)
        self.n_distractors = int(n_distractors)
        names = TRANSFORMS if transforms is None else [str(t) for t in transforms]
        self.transforms = list(dict.fromkeys(names))  # each kind once, in the order given
        self.long_side = int(long_side)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        unknown = [t for t in self.transforms if t not in TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown transforms {unknown}; known: {sorted(TRANSFORMS)}")
        if self.n_references < 0 or self.n_distractors < 0:
            raise ValueError("n_references and n_distractors must be >= 0")
        if self.long_side < 32:
            raise ValueError("long_side must be at least 32")

    def params(self) -> dict:
        """Everything that changes the built files (the cache key)."""
        import skimage

        return {"build": BUILD_VERSION, "n_references": self.n_references, "n_distractors": self.n_distractors,
                "transforms": self.transforms, "long_side": self.long_side, "seed": self.seed,
                "skimage": skimage.__version__}

    @property
    def root(self) -> Path:
        """cache_dir/synthetic-<short hash of params>."""
        return built_root(self.cache_dir, "synthetic", self.params())

    def load(self, progress: bool = True) -> Dataset:
        """The dataset, built on first use and read from the cache afterwards."""
        root = self.root
        if not root.is_dir():
            build_atomically(root, self._build, progress)
        return read_built(root)

    def _build(self, out: Path, progress: bool) -> None:
        """Write images, labels.csv, truth.csv and params.json into `out`."""
        rng = np.random.default_rng(self.seed)
        tiles = pick_tiles(source_tiles(), self.n_references + self.n_distractors, rng)
        (out / "images").mkdir()
        rows: list[tuple[str, str]] = []  # (relative path, label), in dataset order
        truth: list[tuple[str, str]] = []
        bar = tqdm(total=len(tiles), desc="building synthetic dataset", unit="source",
                   disable=not progress or None)
        for i, tile in enumerate(tiles[: self.n_references]):
            group = self._write_group(out, i, tile)
            rows += group
            truth += list(itertools.combinations([path for path, _ in group], 2))
            bar.update()
        for j, tile in enumerate(tiles[self.n_references:]):
            rows.append((self._write_distractor(out, j, tile), DISTRACTOR))
            bar.update()
        bar.close()
        write_csv(out / "labels.csv", ("path", "label"), rows)
        write_csv(out / "truth.csv", ("a", "b"), truth)
        (out / "params.json").write_text(json.dumps(self.params(), indent=2, sort_keys=True) + "\n")

    def _write_group(self, out: Path, i: int, tile: np.ndarray) -> list[tuple[str, str]]:
        """Reference i and one copy per transform; returns [(path, label)]."""
        source = resize_long_side(tile, self.long_side)
        rows = [(save_jpeg(source, out, f"images/r{i:03d}_{REFERENCE}.jpg"), REFERENCE)]
        for name in self.transforms:
            # Seeded by the kind's place in TRANSFORMS, so a copy does not depend on which others are made.
            kind = list(TRANSFORMS).index(name)
            copy = TRANSFORMS[name](source, np.random.default_rng([self.seed, 1, i, kind]))
            rows.append((save_jpeg(copy, out, f"images/r{i:03d}_{name}.jpg"), name))
        return rows

    def _write_distractor(self, out: Path, j: int, tile: np.ndarray) -> str:
        """Distractor j, put through one random transform of the chosen kinds (none if there are none)."""
        image = resize_long_side(tile, self.long_side)
        rng = np.random.default_rng([self.seed, 2, j])
        if self.transforms:
            image = TRANSFORMS[self.transforms[int(rng.integers(len(self.transforms)))]](image, rng)
        return save_jpeg(image, out, f"images/d{j:03d}.jpg")


def built_root(cache_dir: Path, kind: str, params: dict) -> Path:
    """cache_dir/<kind>-<short hash of params>: where a generated dataset with these parameters lives."""
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"{kind}-{key}"


def build_atomically(root: Path, build, progress: bool) -> None:
    """build(folder, progress) into a temporary sibling folder, then rename it to root (another builder
    may win the race: then its folder stays)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-{os.getpid()}-", dir=root.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        build(tmp, progress)
        os.replace(tmp, root)
    except OSError:
        if not root.is_dir():  # a real failure, not a concurrent builder that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_built(root: Path, name: str = "synthetic") -> Dataset:
    """A built dataset from its labels.csv and truth.csv (no image is opened)."""
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [root / row["path"] for row in rows]
    truth = read_pairs_csv(root / "truth.csv", root, paths)
    return Dataset(name=name, root=root, paths=paths, truth=truth, labels=[row["label"] for row in rows])


def load_photo(name: str) -> np.ndarray:
    """A skimage.data photograph as uint8 RGB (grey ones repeated over three channels)."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) * (255.0 / max(float(image.max()), 1e-12))).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def quadtree_boxes(width: int, height: int, x0: int = 0, y0: int = 0, index: int = 0) -> list[tuple]:
    """Non-overlapping boxes (x0, y0, x1, y1) covering the image, at a few scales.

    A box is split into quadrants while longer than MAX_TILE_SIDE; quadrants 1 and 2 (top right, bottom
    left) are split once more when they can be, so one photograph gives tiles of two or three sizes.
    No box is split below MIN_TILE_SIDE.
    """
    can_split = min(width, height) // 2 >= MIN_TILE_SIDE
    if not can_split or (max(width, height) <= MAX_TILE_SIDE and index not in (1, 2)):
        return [(x0, y0, x0 + width, y0 + height)]
    w, h = width // 2, height // 2
    quadrants = [(0, 0, w, h), (w, 0, width - w, h), (0, h, w, height - h), (w, h, width - w, height - h)]
    boxes = []
    for k, (dx, dy, qw, qh) in enumerate(quadrants):
        boxes += quadtree_boxes(qw, qh, x0 + dx, y0 + dy, k)
    return boxes


def has_detail(tile: np.ndarray) -> bool:
    """False for tiles too flat or too dark to be a picture (sky, smooth gradients, black borders).

    Detail is the mean absolute difference between neighbouring pixels of a 64x64 grey thumbnail
    (grey levels per pixel step); 3.0 keeps sky-with-a-mast and drops plain sky and fundus edges.
    """
    grey = np.asarray(Image.fromarray(tile, "RGB").convert("L").resize((64, 64), Image.Resampling.BILINEAR),
                      dtype=np.float64)
    detail = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    return detail >= MIN_TILE_DETAIL and (grey < 20).mean() < 0.9


@functools.lru_cache(maxsize=1)
def source_tiles() -> list[list[np.ndarray]]:
    """Usable tiles of every photograph, one list per photograph, near-identical tiles dropped.

    Cached for the process (decoding the photographs takes a second or two); treat as read-only.
    """
    per_photo, thumbs = [], []
    for name in PHOTOS:
        photo = load_photo(name)
        kept = []
        for x0, y0, x1, y1 in quadtree_boxes(photo.shape[1], photo.shape[0]):
            tile = photo[y0:y1, x0:x1]
            thumb = _thumbnail(tile)
            if has_detail(tile) and all(float(thumb @ t) < MAX_TILE_CORRELATION for t in thumbs):
                kept.append(tile)
                thumbs.append(thumb)
        per_photo.append(kept)
    return per_photo


def pick_tiles(per_photo: list[list[np.ndarray]], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n distinct tiles, drawn round-robin over the photographs (so no photograph dominates), shuffled."""
    available = sum(len(tiles) for tiles in per_photo)
    if n > available:
        raise ValueError(f"{n} source pictures asked for, but only {available} distinct tiles exist "
                         "(lower n_references + n_distractors)")
    queues = [[tiles[k] for k in rng.permutation(len(tiles))] for tiles in per_photo]
    order = rng.permutation(len(queues))
    picked = []
    while len(picked) < n:
        for p in order:
            if queues[p] and len(picked) < n:
                picked.append(queues[p].pop())
    return [picked[k] for k in rng.permutation(n)]


def resize_long_side(tile: np.ndarray, long_side: int) -> Image.Image:
    """The tile as an RGB image whose longer side is `long_side` (Lanczos)."""
    h, w = tile.shape[:2]
    scale = long_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return Image.fromarray(tile, "RGB").resize(size, Image.Resampling.LANCZOS)


def save_jpeg(image: Image.Image, root: Path, relative: str) -> str:
    """Save as JPEG quality 95; a JPEG from a transform (jpeg_quality) keeps its own low quality."""
    if getattr(image, "format", None) == "JPEG":
        image.save(root / relative, format="JPEG", quality="keep")
    else:
        image.save(root / relative, format="JPEG", quality=95)
    return relative


def _thumbnail(tile: np.ndarray) -> np.ndarray:
    """A 16x16 grey thumbnail, zero mean and unit norm (its dot product is a correlation)."""
    grey = Image.fromarray(tile, "RGB").convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    v = np.asarray(grey, dtype=np.float64).ravel()
    v = v - v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-12)


def write_csv(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _remove_stale_builds(root: Path) -> None:
    """Delete temporary build folders of this dataset left by processes that no longer run."""
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
