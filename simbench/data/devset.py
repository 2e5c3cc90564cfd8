"""The development benchmark: real photographs and line art, split by source picture into tune and report.

Sources are the wallpapers of Debian's plasma-workspace-wallpapers and lomiri-wallpapers* packages
(/usr/share/wallpapers/<Name>/contents/images/<W>x<H>.<ext>, /usr/share/backgrounds/<name>.<ext>), one
picture per wallpaper (a package ships the same wallpaper at several resolutions). Pictures with nearly no
detail (flat gradients) are left out, and of near-identical pictures (phash within MAX_PHASH_DISTANCE) only the
first by name is kept; sources.csv says which and why.

Split: by a SHA-1 of the wallpaper's name (behind a fixed prefix, SPLIT_SALT; stable, independent of list
order, seed or the other wallpapers), about half `tune`, half `report`. Nothing is fitted, chosen or
calibrated on `report`. Within a split each wallpaper is either a reference source or a distractor source,
never both (a tile of a reference would be a true crop of it): the first REFERENCE_SHARE of the split's
pictures, ordered by a SHA-1 of seed and name, are references.

Four collections, each a folder like the synthetic set (images/, labels.csv, truth.csv, params.json):
<root>/tune/photo, <root>/tune/lineart, <root>/report/photo, <root>/report/lineart.

- references: the whole picture, long side `long_side` (1024), JPEG quality 90;
- copies: COPIES_PER_REFERENCE per reference, families (simbench.data.edits.EDITS) dealt round-robin from
  reshuffled decks so each family gets about the same count; LOGO_SHARE of them also get the fixed logo;
  `paste` copies are pasted into a tile of a distractor source that is used nowhere else;
- distractors: non-overlapping tiles of the distractor sources, about DISTRACTORS_PER_REFERENCE per
  reference, each given one overlay (screenshot frame, emoji, text, stripes, pad or logo) with parameters
  copied from a copy of the same collection, so that different pictures share nothing but the overlay;
- truth: every pair inside a group (reference + its copies), as in ISC2021's pairwise truth.

Line art: every reference, distractor and paste background is rendered as black lines on white by XDoG
(Winnemöller, Kyprianidis & Olsen, "XDoG: An eXtended difference-of-Gaussians compendium including advanced
image stylization", Computers & Graphics 36(6), 2012); HATCHING_SHARE of the pictures add pen-and-ink
hatching for tone (after Winkenbach & Salesin, "Computer-generated pen-and-ink illustration", SIGGRAPH 1994),
each drawing (and each distractor tile) on its own lattice: turned, spaced and shifted by seed and name.
The line-art part is built from the renderings exactly as the photo part is from the photographs: same
split, same groups, same edits with the same seeds (applied to the line-art reference).

Labels: "reference", "distractor" or the copy's family. Extra columns of labels.csv: source (wallpaper
name, `name#k` for tile k), group (reference index), members (a chain's families, `+`-joined), logo (1 when
the logo was stamped), overlay (a distractor's overlay), shares (the copy whose overlay a distractor
carries), style (photo, xdog, hatching), params (JSON of the overlay parameters).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simbench.data.dataset import Dataset
from simbench.data.edits import AUGLY_EDITS, CHAIN_MEMBERS, EDITS, OVERLAYS, apply_logo, logo_params, make_copy
from simbench.data.folder import IMAGE_EXTENSIONS
from simbench.data.synthetic import (DISTRACTOR, MAX_TILE_CORRELATION, REFERENCE, _thumbnail, build_atomically,
                                     built_root, default_cache_dir, has_detail, pick_tiles, read_built, write_csv)

log = logging.getLogger(__name__)

#: Bump when the build changes, so old caches are not reused. 2: each drawing hatched on its own lattice.
BUILD_VERSION = 2
#: Where Debian's wallpaper packages put their pictures (`dpkg -L plasma-workspace-wallpapers
#: lomiri-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04`).
SOURCE_DIRS = ("/usr/share/wallpapers", "/usr/share/backgrounds")
#: The Debian packages the benchmark is made from.
PACKAGES = ("plasma-workspace-wallpapers", "lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
SPLITS = ("tune", "report")
PARTS = ("photo", "lineart")

#: Of a wallpaper's files, the largest whose long side is at most this (4K) is taken, unless it is less
#: than half the long side of the largest (a phone-sized variant): then the largest.
MAX_SOURCE_SIDE = 4096
#: Pictures with less detail than this (mean absolute step between neighbours of a 64x64 grey thumbnail, in
#: grey levels) are flat gradients and left out: a gradient's copies and other gradients are the same
#: picture to any method, so they would only add label noise. 3.5 drops warty-final-ubuntu, umang, Fossa,
#: PastelHills; real low-key photographs (DarkestHour, MilkyWay) stay.
MIN_DETAIL = 3.5
#: Pictures whose 64-bit phash differ in at most this many bits are the same picture: one is kept.
MAX_PHASH_DISTANCE = 10
#: Prefix of the name whose SHA-1 gives the split. Fixed once, and not from any result: the first of
#: "simbench-devset-1/" .. "-9/" that splits the 46 usable wallpapers of Debian 12's packages 23/23 (the bare
#: name splits them 19/27).
SPLIT_SALT = "simbench-devset-9/"
#: Share of a split's pictures used as reference sources; the rest are cut into distractor tiles.
REFERENCE_SHARE = 0.75
COPIES_PER_REFERENCE = 8
DISTRACTORS_PER_REFERENCE = 2.0
#: Share of copies that get the logo stamped on top of their edit.
LOGO_SHARE = 0.25
#: Share of line-art pictures rendered with hatching (the rest: XDoG lines only).
HATCHING_SHARE = 0.3
#: XDoG line art with less ink than this (share of pixels) is hatched instead.
MIN_INK = 0.01
JPEG_QUALITY = 90
#: Tiles smaller than this (short side, px) are not used.
MIN_TILE_SIDE = 64


@dataclass(frozen=True)
class Source:
    """One wallpaper: its name (the folder name, or the file name without extension) and the file used."""

    name: str
    path: str


# ----------------------------------------------------------------------------------- the loader


class DevSet:
    """One collection of the development benchmark: split "tune" or "report", part "photo" or "lineart".

    root: the folder holding all four collections (built there when it has no params.json yet);
        None = cache_dir/devset-<hash of the settings>, cache_dir = $SIMBENCH_CACHE or ~/.cache/simbench.
    edits: copy families (simbench.data.edits.EDITS), None = all of them (needs AugLy).
    source_dirs: folders searched for wallpapers, None = SOURCE_DIRS.
    long_side: long side of references (and the largest size of distractor tiles).
    """

    def __init__(self, split: str = "tune", part: str = "photo", root: str | None = None, seed: int = 0,
                 edits: list[str] | None = None, long_side: int = 1024, source_dirs: list[str] | None = None,
                 cache_dir: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        self.split, self.part, self.seed, self.long_side = split, part, int(seed), int(long_side)
        self.edits = list(EDITS) if edits is None else list(dict.fromkeys(str(e) for e in edits))
        unknown = [e for e in self.edits if e not in EDITS]
        if unknown:
            raise ValueError(f"unknown edits {unknown}; known: {sorted(EDITS)}")
        if not self.edits:
            raise ValueError("at least one edit family is needed")
        if self.long_side < 64:
            raise ValueError("long_side must be at least 64")
        self.source_dirs = [str(Path(d).expanduser()) for d in (source_dirs or SOURCE_DIRS)]
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._root = Path(root).expanduser() if root else None

    def params(self) -> dict:
        """The settings that change the built files (the cache key; the sources are recorded, not keyed)."""
        return {"build": BUILD_VERSION, "seed": self.seed, "edits": self.edits, "long_side": self.long_side,
                "copies_per_reference": COPIES_PER_REFERENCE, "distractors_per_reference": DISTRACTORS_PER_REFERENCE,
                "reference_share": REFERENCE_SHARE, "source_dirs": self.source_dirs}

    @property
    def root(self) -> Path:
        """The folder holding the four collections."""
        return self._root if self._root is not None else built_root(self.cache_dir, "devset", self.params())

    @property
    def folder(self) -> Path:
        """This collection's folder: root/split/part."""
        return self.root / self.split / self.part

    def is_built(self) -> bool:
        return (self.root / "params.json").is_file()

    def build(self, progress: bool = True) -> Path:
        """Build all four collections into root unless they are there already; returns root."""
        root = self.root
        if self.is_built():
            return root
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not a built devset (no params.json); pick an empty folder")
        missing = sorted(set(self.edits) & AUGLY_EDITS)
        if missing:
            try:
                import augly.image  # noqa: F401
            except ImportError as exc:
                raise ImportError(f"edits {missing} need AugLy: pip install augly (Debian: libmagic1), or pass "
                                  "edits=simbench.data.edits.OWN_EDITS") from exc
        if not find_sources(self.source_dirs):
            raise FileNotFoundError(f"no wallpapers under {self.source_dirs}: run `python benchmarks/devset.py "
                                    f"build` (as root it installs Debian's {', '.join(PACKAGES)})")
        if root.exists():
            root.rmdir()  # empty: let the atomic rename put the build in its place
        build_atomically(root, lambda out, bar: build_devset(out, self, bar), progress)
        return root

    def load(self, progress: bool = True) -> Dataset:
        """This collection (built on first use), as a Dataset with truth and labels."""
        self.build(progress)
        return read_built(self.folder, name=f"devset-{self.split}-{self.part}")


# ----------------------------------------------------------------------------------- sources


def find_sources(dirs, skipped: list[dict] | None = None) -> list[Source]:
    """One Source per wallpaper under `dirs`, sorted by name.

    A folder with contents/images/ (KDE's wallpaper package layout) is one wallpaper: pick_file chooses one
    of its resolutions (images_dark/ variants are not used). An image file directly in a search folder is a
    wallpaper of its own. A file reached twice (a symlink) and a second wallpaper of the same name are skipped
    (and appended to `skipped` as sources.csv rows when it is given).
    """
    found: dict[str, Source] = {}
    seen: set[str] = set()
    for d in dirs:
        base = Path(d)
        if not base.is_dir():
            continue
        # Real files before symlinks, so a link (lomiri-default-background.png) is the one skipped.
        for entry in sorted(base.iterdir(), key=lambda p: (p.is_symlink(), p.name)):
            if entry.is_dir():
                files = _images_in(entry / "contents" / "images")
                path = pick_file(files) if files else None
                name = entry.name
            else:
                path = str(entry) if _is_image(entry) else None
                name = entry.stem
            if path is None:
                continue
            real = os.path.realpath(path)
            if real in seen or name in found:
                if skipped is not None:
                    skipped.append({"name": name, "path": path, "split": "", "role": "", "detail": "",
                                    "status": "same file", "note": "same file or name as one already found"})
                continue
            seen.add(real)
            found[name] = Source(name, path)
    return [found[name] for name in sorted(found)]


def pick_file(files: list[str]) -> str:
    """Of one wallpaper's resolutions, the largest whose long side is at most MAX_SOURCE_SIDE, unless that
    is under half the long side of the largest file (a phone variant): then the largest."""
    sizes = {f: Image.open(f).size for f in files}  # reads the header only
    by_area = sorted(files, key=lambda f: (sizes[f][0] * sizes[f][1], f))
    largest = by_area[-1]
    fitting = [f for f in by_area if max(sizes[f]) <= MAX_SOURCE_SIDE]
    if fitting and 2 * max(sizes[fitting[-1]]) >= max(sizes[largest]):
        return fitting[-1]
    return largest


def split_of(name: str) -> str:
    """"tune" or "report", from the SHA-1 of the wallpaper's name (after SPLIT_SALT): stable, whatever the seed,
    the list order or the other wallpapers."""
    return SPLITS[int(hashlib.sha1((SPLIT_SALT + name).encode()).hexdigest(), 16) % 2]


def load_picture(path: str, long_side: int) -> Image.Image:
    """The picture as RGB, shrunk to `long_side` when larger (JPEG decoded at a reduced scale when it can)."""
    Image.MAX_IMAGE_PIXELS = None  # wallpapers are big, and come from a trusted package
    with Image.open(path) as im:
        im.draft("RGB", (long_side, long_side))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale if still large enough
        img = im.convert("RGB")
    return _shrink(img, long_side)


def detail(img: Image.Image) -> float:
    """Mean absolute step between neighbouring pixels of a 64x64 grey thumbnail (grey levels): ~1 for a smooth
    gradient, 5-60 for photographs."""
    grey = np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def screen_sources(sources: list[Source]) -> tuple[list[Source], list[dict]]:
    """The usable sources, and one row per source for sources.csv (status kept / flat / duplicate)."""
    import imagehash

    kept, rows, hashes = [], [], []
    for source in sources:
        thumb = load_picture(source.path, 512)
        d = detail(thumb)
        h = imagehash.phash(thumb)
        row = {"name": source.name, "path": source.path, "split": split_of(source.name), "role": "",
               "detail": round(d, 2), "status": "kept", "note": ""}
        near = [(h - other, name) for name, other in hashes if h - other <= MAX_PHASH_DISTANCE]
        if d < MIN_DETAIL:
            row.update(status="flat", note=f"detail {d:.1f} < {MIN_DETAIL}")
        elif near:
            distance, name = min(near)
            row.update(status="duplicate", note=f"near-identical to {name} (phash distance {distance})")
        else:
            kept.append(source)
            hashes.append((source.name, h))
        if row["status"] != "kept":
            log.warning("source %s left out: %s", source.name, row["note"] or row["status"])
        rows.append(row)
    return kept, rows


def assign_roles(sources: list[Source], seed: int) -> dict[str, str]:
    """name -> "reference" or "distractor": per split, the first REFERENCE_SHARE (rounded, at least one, and
    one left for distractors when there are two or more) by SHA-1 of seed and name."""
    roles = {}
    for split in SPLITS:
        names = sorted((s.name for s in sources if split_of(s.name) == split),
                       key=lambda n: hashlib.sha1(f"{seed}/{n}".encode()).hexdigest())
        n_ref = min(max(1, round(REFERENCE_SHARE * len(names))), max(1, len(names) - 1))
        roles.update({n: REFERENCE if k < n_ref else DISTRACTOR for k, n in enumerate(names)})
    return roles


def cut_tiles(img: Image.Image) -> list[Image.Image]:
    """Non-overlapping tiles of a 3x3 grid (each of the picture's shape); tiles with little detail (sky, flat
    areas; synthetic.has_detail) or too small are dropped."""
    cols = rows = 3
    w, h = img.width // cols, img.height // rows
    tiles = []
    for r, c in itertools.product(range(rows), range(cols)):
        tile = img.crop((c * w, r * h, (c + 1) * w, (r + 1) * h))
        if min(tile.size) >= MIN_TILE_SIDE and has_detail(np.asarray(tile)):
            tiles.append(tile)
    return tiles


# ----------------------------------------------------------------------------------- line art


def xdog(img: Image.Image, sigma: float | None = None, k: float = 1.6, tau: float = 0.98, eps: float = -1.5,
         phi: float = 3.0) -> np.ndarray:
    """XDoG lines (Winnemöller et al. 2012) as paper values in [0, 1]: 1 = white paper, 0 = full ink.

    Steps: grey, contrast stretched to its 1st-99th percentiles (so pale and dark pictures draw alike) and
    smoothed a little; the difference of Gaussians D = G_sigma - tau * G_{k sigma} (k = 1.6, tau = 0.98: a
    sharpened edge response that is ~0 on flat areas and negative on the dark side of an edge); D divided by
    its standard deviation (so eps means "this many standard deviations", whatever the picture's contrast);
    then the soft threshold T(D) = 1 if D >= eps else 1 + tanh(phi * (D - eps)). sigma defaults to 1.5 px per
    1024 px of the long side.
    """
    from scipy.ndimage import gaussian_filter

    scale = max(img.size) / 1024
    sigma = sigma if sigma is not None else max(0.6, 1.5 * scale)
    grey = _stretched_grey(img)
    grey = gaussian_filter(grey, max(0.5, scale))
    d = gaussian_filter(grey, sigma) - tau * gaussian_filter(grey, k * sigma)
    d = d / max(float(d.std()), 1e-6)
    return np.where(d >= eps, 1.0, 1.0 + np.tanh(phi * (d - eps))).astype(np.float32)


@dataclass(frozen=True)
class Lattice:
    """Where a drawing's hatching strokes lie: the layers' angles turned by `turn` degrees, the stroke spacing
    `spacing` times 8 px per 1024 px, and each layer shifted by `phases` (fractions of the spacing). The
    default is one fixed lattice for every drawing, laid from its corner."""

    turn: float = 0.0
    spacing: float = 1.0
    phases: tuple[float, float, float] = (0.0, 0.0, 0.0)


def lattice_of(name: str, seed: int) -> Lattice:
    """The drawing's own lattice, by seed and name: engravers' hatching differs from plate to plate, so two
    different drawings must not share pixel-identical texture (a fixed lattice made tiles of one hatched
    painting verify against each other under a translation)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 1])
    return Lattice(float(rng.uniform(0, 180)), float(rng.uniform(0.75, 1.35)), tuple(float(x) for x in rng.random(3)))


def hatching(img: Image.Image, lines: np.ndarray, lattice: Lattice = Lattice()) -> np.ndarray:
    """Pen-and-ink tone over XDoG lines: the smoothed tone picks 1-3 layers of parallel 1 px strokes (45, -45
    and 0 degrees, 8 px apart per 1024 px, before the lattice's turn and spacing) where it is darker than
    0.5, 0.32 and 0.15 (cf. Winkenbach & Salesin 1994's stroke textures). Returns paper values in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    scale = max(img.size) / 1024
    tone = gaussian_filter(_stretched_grey(img), 4 * scale)
    period = max(4.0, 8.0 * scale * lattice.spacing)
    yy, xx = np.mgrid[0:img.height, 0:img.width].astype(np.float32)
    out = lines.copy()
    for (level, degrees), phase in zip(((0.5, 45), (0.32, -45), (0.15, 0)), lattice.phases):
        a = np.radians(degrees + lattice.turn)
        u = (xx * np.cos(a) + yy * np.sin(a)) / period + phase
        stroke = np.clip(np.abs(u - np.round(u)) * period - 0.5, 0.0, 1.0)  # 0 on a stroke's centre line
        out = np.minimum(out, np.where(tone < level, stroke, 1.0))
    return out


def line_art(img: Image.Image, style: str, lattice: Lattice = Lattice()) -> tuple[Image.Image, str]:
    """The picture as black lines on white ("xdog") or on cream paper with hatched tone ("hatching", on
    `lattice`), RGB, and the style used: a smooth picture whose XDoG lines cover under MIN_INK of it (a
    sunset, a blurred background) is hatched instead, or its line art would be a nearly blank page."""
    paper = xdog(img)
    ink, sheet = np.array([20, 20, 20], np.float32), np.array([255, 255, 255], np.float32)
    if style == "xdog" and float((paper < 0.5).mean()) < MIN_INK:
        style = "hatching"
    if style == "hatching":
        paper = hatching(img, paper, lattice)
        sheet = np.array([250, 246, 234], np.float32)
    rgb = ink + paper[..., None] * (sheet - ink)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB"), style


def style_of(name: str, seed: int) -> str:
    """"hatching" for HATCHING_SHARE of the pictures (by seed and name), else "xdog"."""
    return "hatching" if np.random.default_rng([seed, zlib.crc32(name.encode())]).random() < HATCHING_SHARE else "xdog"


def _stretched_grey(img: Image.Image) -> np.ndarray:
    """Grey in [0, 1], its 1st-99th percentiles stretched to 0-1."""
    grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    lo, hi = np.percentile(grey, (1, 99))
    return np.clip((grey - lo) / max(float(hi - lo), 1e-3), 0.0, 1.0)


# ----------------------------------------------------------------------------------- the build


def assign_families(n_references: int, families: list[str], per_reference: int,
                    rng: np.random.Generator) -> list[list[str]]:
    """per_reference families for each reference, dealt in turn from decks of all families, each deck
    reshuffled, so every family gets about the same count; no family twice for one reference while it can
    be avoided."""
    deck: list[str] = []
    dealt = []
    for _ in range(n_references):
        chosen: list[str] = []
        for _ in range(per_reference):
            avoid = set(chosen) if len(set(chosen)) < len(families) else set()
            j = next((j for j, f in enumerate(deck) if f not in avoid), None)
            while j is None:
                deck += [families[int(k)] for k in rng.permutation(len(families))]
                j = next((j for j, f in enumerate(deck) if f not in avoid), None)
            chosen.append(deck.pop(j))
        dealt.append(chosen)
    return dealt


def build_devset(out: Path, devset: DevSet, progress: bool) -> None:
    """Write the four collections, sources.csv and params.json into `out`."""
    start = time.perf_counter()
    skipped: list[dict] = []
    sources, source_rows = screen_sources(find_sources(devset.source_dirs, skipped))
    for row in skipped:
        log.warning("source %s left out: %s", row["path"], row["note"])
    source_rows += skipped
    roles = assign_roles(sources, devset.seed)
    for row in source_rows:
        row["role"] = roles.get(row["name"], "")
    summary = {}
    for s, split in enumerate(SPLITS):
        mine = [src for src in sources if split_of(src.name) == split]
        summary[split] = _build_split(out / split, s, [src for src in mine if roles[src.name] == REFERENCE],
                                      [src for src in mine if roles[src.name] == DISTRACTOR], devset, progress)
    with open(out / "sources.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(source_rows[0]))
        writer.writeheader()
        writer.writerows(source_rows)
    params = devset.params() | {"augly": _augly_version(), "build_seconds": round(time.perf_counter() - start, 1),
                                "sources": {r["name"]: r["status"] for r in source_rows}, "collections": summary}
    (out / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _build_split(out: Path, split_index: int, references: list[Source], distractor_sources: list[Source],
                 devset: DevSet, progress: bool) -> dict:
    """Both parts of one split; returns {part: counts}."""
    seed, long_side = devset.seed, devset.long_side
    rng = np.random.default_rng([seed, split_index])
    refs = [(src.name, load_picture(src.path, long_side)) for src in references]
    per_source, thumbs = [], []
    for src in distractor_sources:
        # Cut from the picture at up to 3x the reference size, so a tile is about reference-sized. Tiles as
        # alike as synthetic's MAX_TILE_CORRELATION (a repeating pattern) are one picture to us: keep one.
        kept = []
        for k, tile in enumerate(cut_tiles(load_picture(src.path, 3 * long_side))):
            thumb = _thumbnail(np.asarray(tile))
            if all(float(thumb @ t) < MAX_TILE_CORRELATION for t in thumbs):
                kept.append((f"{src.name}#{k}", _shrink(tile, long_side)))
                thumbs.append(thumb)
        per_source.append(kept)
    families = assign_families(len(refs), devset.edits, COPIES_PER_REFERENCE, rng)
    n_paste = sum(f.count("paste") for f in families)
    wanted = round(DISTRACTORS_PER_REFERENCE * len(refs))
    available = sum(len(tiles) for tiles in per_source)
    if n_paste > available:
        raise ValueError(f"{n_paste} paste backgrounds needed but only {available} distractor tiles exist")
    if n_paste + wanted > available:
        log.warning("split %s: only %d distractor tiles for %d references", SPLITS[split_index], available, len(refs))
    # Drawn round-robin over the distractor sources (synthetic.pick_tiles), so no wallpaper dominates.
    tiles = pick_tiles(per_source, min(available, n_paste + wanted), rng)
    backgrounds, distractors = tiles[:n_paste], tiles[n_paste:]
    members = (tuple(m for m in CHAIN_MEMBERS if m in devset.edits)
               or tuple(m for m in CHAIN_MEMBERS if m not in AUGLY_EDITS))
    counts = {}
    for part in PARTS:
        def render(items, part=part):
            if part == "photo":
                return [(name, img, "photo") for name, img in items]
            return [(name, *line_art(img, style_of(name, seed), lattice_of(name, seed))) for name, img in items]

        bar = tqdm(total=len(refs) + len(distractors), desc=f"devset {SPLITS[split_index]}/{part}", unit="picture",
                   disable=not progress or None)
        counts[part] = _write_collection(out / part, render(refs), families, render(backgrounds), render(distractors),
                                         members, devset, split_index, part, bar)
        bar.close()
    return counts


def _write_collection(out: Path, refs, families, backgrounds, distractors, members, devset: DevSet,
                      split_index: int, part: str, bar) -> dict:
    """Write one collection; returns its counts (also in its params.json)."""
    seed = devset.seed
    (out / "images").mkdir(parents=True)
    rows, truth = [], []
    overlays: dict[str, list[tuple[str, dict]]] = {}  # overlay kind -> [(copy path, params)]
    backgrounds = iter(backgrounds)
    for i, (name, img, style) in enumerate(refs):
        group = [_save(img, out, f"images/r{i:03d}_reference.jpg")]
        rows.append(_row(group[0], REFERENCE, name, i, style=style))
        for k, family in enumerate(families[i]):
            # Seeded by (split, reference, slot) only, so the photo and line-art copies get the same edit.
            rng = np.random.default_rng([seed, split_index, 1, i, k])
            stamp = rng.random() < LOGO_SHARE
            background = next(backgrounds) if family == "paste" else (None, None, None)
            copy, record = make_copy(family, img, rng, members=members, background=background[1])
            params = {family: record["params"]} if "params" in record else {}
            if background[0] is not None:
                params["paste"] = {"background": background[0]}  # the tile, used nowhere else
            if stamp:
                params["logo"] = logo_params(rng)
                copy = apply_logo(copy, params["logo"])
            path = _save(copy, out, f"images/r{i:03d}_{k}_{family}.jpg")
            for kind, p in params.items():
                if kind in OVERLAYS:
                    overlays.setdefault(kind, []).append((path, p))
            rows.append(_row(path, family, name, i, members="+".join(record.get("members", [])), logo=int(stamp),
                             style=style, params=params))
            group.append(path)
        truth += list(itertools.combinations(group, 2))
        bar.update()
    kinds = sorted(overlays)
    rng = np.random.default_rng([seed, split_index, 2])
    deck: list[str] = []
    for j, (name, img, style) in enumerate(distractors):
        overlay, shares, params = "", "", {}
        if kinds:
            if not deck:
                deck = [kinds[int(k)] for k in rng.permutation(len(kinds))]
            overlay = deck.pop()
            shares, p = overlays[overlay][int(rng.integers(len(overlays[overlay])))]
            params = {overlay: p}
            img = OVERLAYS[overlay][1](img, p)
        path = _save(img, out, f"images/d{j:03d}.jpg")
        rows.append(_row(path, DISTRACTOR, name, "", overlay=overlay, shares=shares, style=style, params=params))
        bar.update()
    header = ("path", "label", "source", "group", "members", "logo", "overlay", "shares", "style", "params")
    write_csv(out / "labels.csv", header, [tuple(r[h] for h in header) for r in rows])
    write_csv(out / "truth.csv", ("a", "b"), truth)
    labels = [r["label"] for r in rows]
    counts = {"images": len(rows), "references": labels.count(REFERENCE), "distractors": labels.count(DISTRACTOR),
              "copies": len(rows) - labels.count(REFERENCE) - labels.count(DISTRACTOR), "true_pairs": len(truth),
              "copies_per_family": {f: labels.count(f) for f in devset.edits}}
    params = devset.params() | {"split": SPLITS[split_index], "part": part, "counts": counts}
    (out / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return counts


def _row(path, label, source, group, members="", logo=0, overlay="", shares="", style="", params=None) -> dict:
    return {"path": path, "label": label, "source": source, "group": group, "members": members, "logo": logo,
            "overlay": overlay, "shares": shares, "style": style,
            "params": json.dumps(params, sort_keys=True) if params else ""}


def _shrink(img: Image.Image, long_side: int) -> Image.Image:
    """img with its long side at most long_side."""
    scale = long_side / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)


def _save(img: Image.Image, root: Path, relative: str) -> str:
    """Save as JPEG quality 90; a JPEG made by the jpeg edit keeps its own low quality."""
    if getattr(img, "format", None) == "JPEG":
        img.save(root / relative, format="JPEG", quality="keep")
    else:
        img.convert("RGB").save(root / relative, format="JPEG", quality=JPEG_QUALITY)
    return relative


def _augly_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("augly")
    except Exception:  # not installed
        return None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else []


# ----------------------------------------------------------------------------------- summaries


def collection_counts(folder: Path) -> dict:
    """Counts of a built collection from its labels.csv and truth.csv: images, references, copies,
    distractors, true_pairs, copies_per_family."""
    with open(folder / "labels.csv", newline="") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    with open(folder / "truth.csv", newline="") as f:
        n_truth = sum(1 for _ in f) - 1
    families = {}
    for label in labels:
        if label not in (REFERENCE, DISTRACTOR):
            families[label] = families.get(label, 0) + 1
    return {"images": len(labels), "references": labels.count(REFERENCE), "copies": sum(families.values()),
            "distractors": labels.count(DISTRACTOR), "true_pairs": n_truth, "copies_per_family": families}
