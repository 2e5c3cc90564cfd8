"""A folder of images as a dataset: listed recursively, ground truth from truth.csv or subfolders.

Ground truth follows the two conventions in DESIGN.md: a `truth.csv` of `a,b` pairs (ISC2021), or one
subfolder per duplicate group. Images are only listed here, never decoded: extraction decodes them and
reports the unreadable ones.
"""
from __future__ import annotations

import csv
import itertools
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from simbench.data.dataset import Dataset
from simbench.types import Skipped

#: File name endings listed as images (case-insensitive).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pbm")

TRUTH_FILE = "truth.csv"
NOT_AN_IMAGE = "not an image extension"


class FolderDataset:
    """Every image under `root` (recursive, symlinked folders followed, loops refused).

    truth: a truth.csv (a,b paths relative to root); None = root/truth.csv if present, else subfolder
        groups if they apply (see subfolder_groups), else no ground truth (a speed-only run).
    extensions: file name endings taken as images, default IMAGE_EXTENSIONS.
    """

    def __init__(self, root: str, truth: str | None = None, extensions: list[str] | None = None):
        self.root = Path(root).expanduser()
        self.truth = Path(truth).expanduser() if truth else None
        exts = IMAGE_EXTENSIONS if extensions is None else extensions
        self.extensions = frozenset("." + str(e).lower().lstrip(".") for e in exts)

    def load(self, progress: bool = True) -> Dataset:
        """List the images and read or infer the ground truth (no image is opened)."""
        if not self.root.is_dir():
            raise NotADirectoryError(f"dataset folder not found: {self.root}")
        truth_file = self._truth_file()
        paths, skipped = list_images(self.root, self.extensions, progress, ignore={truth_file})
        if truth_file is not None:
            truth = read_pairs_csv(truth_file, self.root, paths)
        else:
            truth = subfolder_groups(self.root, paths)
        name = self.root.resolve().name or str(self.root)
        return Dataset(name=name, root=self.root, paths=paths, truth=truth, skipped=skipped)

    def _truth_file(self) -> Path | None:
        """The truth.csv to use: the one given (must exist), else root/truth.csv when present."""
        if self.truth is not None:
            if not self.truth.is_file():
                raise FileNotFoundError(f"ground truth file not found: {self.truth}")
            return self.truth
        default = self.root / TRUTH_FILE
        return default if default.is_file() else None


def list_images(root: Path, extensions: frozenset[str], progress: bool = False,
                ignore: set | None = None) -> tuple[list[Path], list[Skipped]]:
    """Image files under root, sorted, and what was skipped with why.

    Walks depth-first with os.scandir, following symlinked folders; every folder's real path is
    remembered, so a link back to a visited folder (a loop, or a second way into the same folder) is
    recorded as skipped instead of walked again. Paths are kept as found (root joined with the names).
    """
    ignore = {os.path.realpath(p) for p in (ignore or set()) if p is not None}
    paths, skipped = [], []
    visited = {os.path.realpath(root)}
    stack = [Path(root)]
    bar = tqdm(desc="listing images", unit="file", disable=not progress or None)
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(str(folder), f"cannot list folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            path = folder / entry.name
            if entry.is_dir():  # follows symlinks
                reason = _revisit_reason(path, visited)
                if reason:
                    skipped.append(Skipped(str(path), reason))
                else:
                    stack.append(path)
            elif os.path.realpath(path) in ignore:
                continue
            elif not entry.is_file():
                skipped.append(Skipped(str(path), _odd_entry_reason(entry)))
            elif path.suffix.lower() not in extensions:
                skipped.append(Skipped(str(path), NOT_AN_IMAGE))
            else:
                paths.append(path)
                bar.update()
    bar.close()
    return sorted(paths), skipped


def _revisit_reason(path: Path, visited: set[str]) -> str | None:
    """None for a folder seen for the first time (and remember it); else why it is not walked again."""
    real = os.path.realpath(path)
    if real not in visited:
        visited.add(real)
        return None
    parent = os.path.realpath(path.parent)
    if parent == real or parent.startswith(real.rstrip(os.sep) + os.sep):
        return f"symlink loop (points back to {real})"
    return f"folder already listed (symlink to {real})"


def _odd_entry_reason(entry: os.DirEntry) -> str:
    """Why a directory entry that is neither a folder nor a regular file is skipped."""
    if entry.is_symlink():
        return "broken symlink"
    return "not a regular file"


def subfolder_groups(root: Path, paths: list[Path]) -> np.ndarray | None:
    """Truth from one subfolder per duplicate group, or None when the layout is not that.

    Applies when every image is inside a subfolder of root, there are at least two top-level subfolders,
    and one of them holds two or more images. A group is a top-level subfolder (with everything below it);
    all pairs inside a group are true pairs. With a single subfolder every image would be a duplicate of
    every other, which is never what a plain photo folder means, so that gives None.
    """
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            return None  # an image directly in root: not the subfolder layout
        groups.setdefault(parts[0], []).append(i)
    if len(groups) < 2 or max(len(g) for g in groups.values()) < 2:
        return None
    pairs = [pair for members in groups.values() for pair in itertools.combinations(members, 2)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def read_pairs_csv(path: Path, root: Path, paths: list[Path]) -> np.ndarray:
    """(P, 2) index pairs from a CSV with columns a,b of paths relative to root (or absolute).

    Pairs naming an image that is not in `paths` are dropped with a warning; a pair of an image with
    itself is dropped silently.
    """
    index = {p.relative_to(root).as_posix(): i for i, p in enumerate(paths)}
    pairs, missing = [], set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"a", "b"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with columns a,b, got {reader.fieldnames}")
        for row in reader:
            a, b = index.get(_truth_key(row["a"], root)), index.get(_truth_key(row["b"], root))
            if a is None or b is None:
                missing.update(name for name, i in ((row["a"], a), (row["b"], b)) if i is None)
            elif a != b:
                pairs.append((a, b))
    if missing:
        warnings.warn(f"{path}: {len(missing)} paths are not among the images and their pairs were dropped, "
                      f"e.g. {sorted(missing)[:3]}", stacklevel=2)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _truth_key(name: str, root: Path) -> str:
    """A truth.csv entry as a POSIX path relative to root (absolute entries under root are made relative)."""
    path = Path(name.replace("\\", "/"))
    if path.is_absolute():
        try:
            path = path.relative_to(root.absolute())
        except ValueError:
            return path.as_posix()
    return Path(os.path.normpath(path)).as_posix()
