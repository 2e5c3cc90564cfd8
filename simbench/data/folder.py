"""A folder of images as a dataset: listed recursively, ground truth from truth.csv or subfolders.

Ground truth follows the two conventions in DESIGN.md: a `truth.csv` of `a,b` pairs (ISC2021), or one
subfolder per duplicate group. Images are only listed here, never decoded: extraction decodes them and
reports the unreadable ones.
"""
from __future__ import annotations

import csv
import errno
import itertools
import os
import stat
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
UNREADABLE = "permission denied (file not readable)"
NOT_UTF8 = "name is not valid UTF-8 (rename it to compare it)"


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
    Odd entries are skipped with a reason, never opened: symlinks to themselves or in a loop, dangling
    links, FIFOs, sockets, devices, unreadable files and folders, and names that are not UTF-8.
    """
    ignore = {os.path.realpath(p) for p in (ignore or set()) if p is not None}
    paths, skipped = [], []
    visited = {os.path.realpath(root)}
    stack = [Path(root)]
    bar = tqdm(desc="listing images", unit="file", disable=not progress or None)
    while stack:
        folder = stack.pop()
        try:
            # os.access first: scandir succeeds for root on a mode-000 folder, access says what others see.
            if not os.access(folder, os.R_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "permission denied")
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(str(folder), f"cannot list folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            path = folder / entry.name
            if not is_utf8(entry.name):
                # Such a path cannot be written to the UTF-8 outputs: skipped, shown with \x escapes.
                skipped.append(Skipped(printable_path(path), NOT_UTF8))
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symlinks
            except OSError as exc:  # a symlink loop (ELOOP), or a target in a folder we may not search
                skipped.append(Skipped(str(path), odd_path_reason(path, exc)))
                continue
            if is_dir:
                reason = _revisit_reason(path, visited)
                if reason:
                    skipped.append(Skipped(str(path), reason))
                else:
                    stack.append(path)
            elif os.path.realpath(path) in ignore:
                continue
            elif not is_file:
                skipped.append(Skipped(str(path), odd_path_reason(path)))
            elif path.suffix.lower() not in extensions:
                skipped.append(Skipped(str(path), NOT_AN_IMAGE))
            elif not os.access(path, os.R_OK):
                skipped.append(Skipped(str(path), UNREADABLE))
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


def odd_path_reason(path: Path, error: OSError | None = None) -> str:
    """Why a path that is neither a folder nor a regular file (or could not be stat'ed: `error`) is skipped.

    Only lstat, stat and readlink are used: nothing is opened, so a FIFO cannot block the run.
    """
    if os.path.islink(path):
        return _link_reason(path, error)
    if error is not None:
        return f"cannot stat ({error.strerror or error})"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a FIFO; never opened, as reading it could wait forever)"
    kind = "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None
    return f"not a regular file ({kind})" if kind else "not a regular file"


def _link_reason(path: Path, error: OSError | None) -> str:
    """Why a symlink cannot be followed: it points to itself, goes round a loop of links, or its target
    is missing. The chain is followed with readlink only (at most 40 links, the kernel's own limit)."""
    start = os.path.abspath(path)
    chain, current = [start], start
    for _ in range(40):
        try:
            target = os.readlink(current)
        except OSError:
            break  # not a link: the end of the chain
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
        if current in chain:
            if current == start and len(chain) == 1:
                return "symlink to itself"
            names = " -> ".join(os.path.relpath(p, os.path.dirname(start)) for p in chain + [current])
            return f"symlink loop ({names})"
        chain.append(current)
    if not os.path.lexists(current):
        return f"broken symlink (target {current} does not exist)"
    if error is not None:
        return f"cannot follow symlink ({error.strerror or error})"
    return odd_path_reason(Path(current))  # a link to a FIFO, socket or device


def is_utf8(name: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str | Path) -> str:
    """A path with its non-UTF-8 bytes shown as \\xNN, for messages and the UTF-8 output files."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
