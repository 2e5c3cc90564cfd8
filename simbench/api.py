"""A small Python API for notebooks, in ImageHash's spirit: hash an image, find duplicates, compare two.

    >>> import simbench
    >>> h = simbench.hash("photo.jpg", "phash")      # or a PIL image, or a numpy array
    >>> str(h), h - simbench.hash(other, "phash")     # ImageHash's hex; a - b is the Hamming distance
    >>> found = simbench.find(["photos/", "book.pdf"], method="keypoints", threshold=0.9)
    >>> found.pairs[0], found.groups[0]               # Pair / Group objects, with provenance
    >>> found.to_csv("pairs.csv"); found.report("report.html")
    >>> simbench.compare("a.jpg", "b.jpg")            # the score find gives the two, and why

`simbench find` on the command line is `find` here (simbench.cli). Everything heavy is imported when a
function is first called, so `import simbench` stays fast.
"""
from __future__ import annotations

import builtins
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: ImageHash's function names for simbench's hash algorithms (simbench.features.hashes.ALGORITHMS).
HASH_ALIASES = {"average_hash": "ahash", "whash": "whash_haar", "crop_resistant_hash": "crop_resistant"}


class SettingsError(ValueError):
    """A method or setting that does not exist (said in find's words)."""


# ---------------------------------------------------------------------------------------------------
# hash


class Hash:
    """A perceptual hash: its bits in ImageHash's `hash.flatten()` order.

    str() and `hex` are ImageHash's hex string, `a - b` the Hamming distance (to another Hash or to an
    imagehash.ImageHash), `==` compares the bits, len() is the number of bits; `words` packs them into
    uint64 as simbench's matchers store codes (simbench.types.pack_bits).
    """

    def __init__(self, bits: np.ndarray, algorithm: str = ""):
        self.bits = np.asarray(bits, bool).ravel()
        self.algorithm = algorithm

    @property
    def hex(self) -> str:
        # ImageHash's _binary_array_to_hex: the bits as one binary number, zero-padded to ceil(bits / 4) digits
        value = int("".join("1" if b else "0" for b in self.bits) or "0", 2)
        return f"{value:0{-(-len(self.bits) // 4)}x}"

    @property
    def words(self) -> np.ndarray:
        from simbench.types import pack_bits

        return pack_bits(self.bits[None])[0]

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        return f"Hash({self.hex!r}, {self.algorithm!r})" if self.algorithm else f"Hash({self.hex!r})"

    def __len__(self) -> int:
        return len(self.bits)

    def __sub__(self, other) -> int:
        theirs = _bits_of(other)
        if theirs.shape != self.bits.shape:
            raise TypeError(f"hashes of {len(self.bits)} and {len(theirs)} bits cannot be compared")
        return int(np.count_nonzero(self.bits != theirs))

    def __eq__(self, other) -> bool:
        try:
            return self - other == 0
        except TypeError:
            return NotImplemented

    def __hash__(self) -> int:
        return builtins.hash(self.bits.tobytes())


def _bits_of(other) -> np.ndarray:
    if isinstance(other, Hash):
        return other.bits
    if hasattr(other, "hash"):  # imagehash.ImageHash
        return np.asarray(other.hash, bool).ravel()
    raise TypeError(f"cannot compare a hash with {type(other).__name__}")


def hash(image, algorithm: str = "phash", hash_size: int = 8, **params) -> Hash:  # noqa: A001 (ImageHash's name)
    """The perceptual hash `algorithm` of one image: a path, a PIL image, or a numpy array (H x W grey or
    H x W x 3/4 RGB(A), uint8, or floats in 0..1).

    Computed by simbench's own kernels (simbench.features.fasthash) with compat=True by default, which
    reproduces ImageHash bit for bit on the same pixels. Algorithms: ahash (average_hash), phash,
    phash_simple, dhash, dhash_vertical, whash_haar (whash), whash_db4, colorhash. params: the
    HashExtractor's (highfreq_factor, binbits, image_scale, remove_max_haar_ll, compat...). compat=False
    for a path is what `simbench find`'s hash stage computes (a JPEG decoded at reduced size: within a bit
    or two of ImageHash). Files are decoded as find decodes them (EXIF orientation applied, transparency
    on white); an image in memory is hashed as given (transparency on white).
    Raises ValueError for an unknown algorithm or an image it cannot hash (with the reason).
    """
    from simbench.features.fasthash import image_bits
    from simbench.features.hashes import HashExtractor
    from simbench.types import unpack_bits

    name = HASH_ALIASES.get(algorithm, algorithm)
    params.setdefault("compat", True)
    extractor = HashExtractor(name, hash_size=hash_size, workers=1, **params)
    if isinstance(image, (str, os.PathLike)):
        extracted = extractor.extract([Path(image)])
        if extracted.skipped or not len(extracted.rows):
            why = extracted.skipped[0].reason if extracted.skipped else "no hash"
            raise ValueError(f"{image}: {why}")
        return Hash(unpack_bits(extracted.features.words[:1], extractor.bits)[0], name)
    return Hash(image_bits(extractor.spec, as_pil(image)), name)


def as_pil(image):
    """A PIL image from a PIL image or a numpy array (grey, RGB or RGBA; uint8, or floats in 0..1)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype.kind == "f":
        array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.dtype == object:
        raise ValueError(f"not an image: an array of shape {array.shape} and type {array.dtype} (give H x W, "
                         "H x W x 3 or H x W x 4)")
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def _is_image(x) -> bool:
    from PIL import Image

    return isinstance(x, (Image.Image, np.ndarray))


# ---------------------------------------------------------------------------------------------------
# find


@dataclass(frozen=True)
class Pair:
    """Two images found alike. a, b: names as in pairs.csv (a path as found; a PDF image as
    `book.pdf#page=3&image=2`; an image given in memory as `<image K>`, K its position in the input).
    score: the estimated precision (0..1); method: the stage that gave it (identical, keypoints, cnn,
    hash, linked, or decision: a reviewer confirmed it); calibrated: False when no table covers the
    settings (ranked, not a precision); stages: each stage's calibrated score (0 where it did not find it).
    source: the file it came from (an image file, a PDF; for an image given in memory its temporary PNG);
    page, bbox: the 1-based page and placed box of a PDF image (None for image files)."""

    a: str
    b: str
    score: float
    method: str
    calibrated: bool
    stages: dict[str, float]
    a_source: str
    b_source: str
    a_page: int | None = None
    b_page: int | None = None
    a_bbox: str | None = None
    b_bbox: str | None = None


@dataclass(frozen=True)
class Group:
    """Images joined by pairs scoring at least the threshold (best pair first)."""

    members: list[str]
    best_score: float
    pairs: list[Pair]


@dataclass
class Found:
    """What `find` found: pairs (best first, as pairs.csv), groups (as groups.json), skipped inputs
    (path, reason), the decisions applied (simbench.find.decisions.Decisions or None), and the run itself
    (`result`: simbench.find.pipeline.FindResult, with its items, raw stage signals and evidence)."""

    pairs: list[Pair]
    groups: list[Group]
    skipped: list
    threshold: float
    result: Any = field(repr=False)
    _scratch: Any = field(default=None, repr=False)  # the temporary folder of the images given in memory

    @property
    def decisions(self):
        return self.result.decisions

    def evidence(self, pair: Pair) -> dict:
        """Why the two images pair (simbench.find.evidence: matched points and regions, CNN cosine and
        ranks, a linked pair's chain); {} for a pair beyond the best ones that get a record."""
        position = {item.display: k for k, item in enumerate(self.result.items)}
        a, b = sorted((position[pair.a], position[pair.b]))
        return self.result.evidence.get((a, b), {})

    def to_csv(self, path: str | Path) -> None:
        """pairs.csv, as `simbench find` writes it."""
        from simbench.find.outputs import write_pairs_csv

        write_pairs_csv(Path(path), self.result.pairs, self.result.items)

    def report(self, path: str | Path) -> None:
        """report.html, the page to review the pairs (self-contained, offline)."""
        from simbench.find.report import write_report

        write_report(Path(path), self.result, self.result.config, self.result.stages)

    def save(self, out_dir: str | Path) -> None:
        """Every output of `simbench find --out DIR`: pairs.csv, groups.json, skipped.csv, report.html..."""
        from simbench.find.pipeline import write_outputs

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_outputs(Path(out_dir), self.result, self.result.config, self.result.stages)

    def summary(self) -> str:
        return self.result.summary(threshold=self.threshold)

    def __repr__(self) -> str:
        return f"Found({self.summary()})"


def configure(method: str | None = None, threshold: float | None = None,
              settings: Sequence[str] | Mapping[str, Any] = (), calibration: str | Path | None = None,
              **overrides) -> Any:
    """find's settings: conf/find.yaml with `settings` (["key=value", ...] or {"key": value}, dotted keys
    allowed) and `overrides` (top-level keys as keywords: link=False, min_score=0.1) composed by Hydra.
    Raises SettingsError for an unknown method or setting."""
    from simbench.find.cascade import make_config

    pairs = list(settings.items()) if isinstance(settings, Mapping) else []
    texts = [] if isinstance(settings, Mapping) else [str(s) for s in settings]
    texts += [f"{k}={_setting_value(v)}" for k, v in [*pairs, *overrides.items()]]
    try:
        cfg = make_config(method, texts)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if threshold is not None:
        cfg.threshold = float(threshold)
    if calibration is not None:
        cfg.calibration = os.path.abspath(calibration)
    return cfg


def _setting_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def find(paths, method: str | None = None, threshold: float | None = None, *, out: str | Path | None = None,
         index: str | Path | None = None, decisions: str | Path | None = None,
         calibration: str | Path | None = None, settings: Sequence[str] | Mapping[str, Any] = (),
         progress: bool = False, **overrides) -> Found:
    """Duplicate images among `paths` (folders, searched recursively; image files; PDFs, every placed
    image; and images in memory: PIL images or numpy arrays), as `simbench find` finds them.

    method: cascade (default), keypoints, cnn or hash; threshold: the score from which a pair is a
    duplicate (groups; default 0.93, conf/find.yaml); out: also write every output there (pairs.csv, groups.json,
    skipped.csv, report.html, evidence.npz; and decisions.json); index: the feature store of later runs;
    decisions: a reviewer's decisions.csv to apply (simbench.find.decisions); calibration: tables from
    `simbench calibrate`; settings / overrides: see `configure`.

    Images in memory are written as lossless PNGs to a temporary folder and named `<image K>` (K: their
    position in `paths`); the folder (their `source`, read by the report) lasts as long as the Found.
    """
    from simbench.find.pipeline import find as run_find
    from simbench.find.pipeline import write_outputs

    cfg = configure(method, threshold, settings, calibration, **overrides)
    given = [paths] if isinstance(paths, (str, os.PathLike)) or _is_image(paths) else list(paths)
    # Removed when the Found object goes: it holds the images given in memory, which the report reads.
    scratch = tempfile.TemporaryDirectory(prefix="simbench-find-")
    inputs, names = _materialise(given, Path(scratch.name) / "in-memory")
    result = run_find(inputs, out if out is not None else scratch.name, cfg, index=index, progress=progress,
                      decisions=decisions, write=False)
    _rename(result, names)
    if out is not None:
        write_outputs(Path(out), result, cfg, result.stages)
    return _found(result, float(cfg.threshold), scratch if names else None)


def _materialise(given: list, folder: Path) -> tuple[list[str], dict[str, str]]:
    """Inputs as paths: images in memory saved as PNG into folder; {saved path: the name it goes by}."""
    inputs, names = [], {}
    for k, x in enumerate(given):
        if _is_image(x):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{k}.png"
            as_pil(x).save(path)
            inputs.append(str(path))
            names[str(path)] = f"<image {k}>"
        else:
            inputs.append(str(x))
    return inputs, names


def _rename(result, names: dict[str, str]) -> None:
    """Images given in memory go by their `<image K>` names (their source stays the temporary file)."""
    if not names:
        return
    from simbench.types import Skipped

    for item in result.items:
        item.display = names.get(item.display, item.display)
    result.skipped = [Skipped(names.get(s.path, s.path), s.reason) for s in result.skipped]


def _found(result, threshold: float, scratch=None) -> Found:
    from simbench.find.outputs import score_order

    pairs, items = result.pairs, result.items
    calibrated = pairs.calibrated if pairs.calibrated is not None else np.ones(len(pairs), bool)

    def pair(k: int) -> Pair:
        a, b = items[int(pairs.a[k])], items[int(pairs.b[k])]
        return Pair(a.display, b.display, float(pairs.score[k]), str(pairs.method[k]), bool(calibrated[k]),
                    {name: float(v[k]) for name, v in pairs.per_stage.items()}, a.source, b.source,
                    a.page, b.page, a.bbox, b.bbox)

    by_row = {int(k): pair(int(k)) for k in score_order(pairs)}
    groups = [Group([items[m].display for m in g["members"]], g["best"], [by_row[k] for k in g["pairs"]])
              for g in result.groups]
    return Found(list(by_row.values()), groups, list(result.skipped), threshold, result, scratch)


# ---------------------------------------------------------------------------------------------------
# compare


@dataclass(frozen=True)
class Comparison:
    """How alike two images are, as `find` scores them when given just the two.

    score: the estimated precision (0 when no stage found the pair); method: the stage that gave it
    (None when none did); duplicate: score >= threshold; stages: each stage's calibrated score; raw: each
    stage's raw signal where it found the pair (what its calibration maps); evidence: why they pair
    (simbench.find.evidence: the verified keypoint matches and matched regions, the CNN's cosine and ranks).
    """

    score: float
    method: str | None
    calibrated: bool
    duplicate: bool
    threshold: float
    stages: dict[str, float]
    raw: dict[str, float]
    evidence: dict


def compare(a, b, method: str | None = None, threshold: float | None = None, **overrides) -> Comparison:
    """Score two images (paths, PIL images or numpy arrays) with find's pipeline, run on the two alone.

    The score equals find's on a collection of just these two; in a larger collection the CNN stage scores
    against each image's neighbours there, so its score can differ. Pairs scoring below min_score are
    kept here (min_score=0 unless given). Raises ValueError when either image cannot be compared (with
    the reason) or is not exactly one image (a PDF with several)."""
    if not (_is_image(a) or _is_image(b)) and os.path.realpath(a) == os.path.realpath(b):
        raise ValueError(f"{a}: the same file twice (compare takes two images)")
    overrides.setdefault("min_score", 0.0)
    found = find([a, b], method, threshold, **overrides)
    items = found.result.items
    sides = [[k for k, item in enumerate(items) if _given_as(item, x, k_in)] for k_in, x in enumerate((a, b))]
    for x, k_in, side in zip((a, b), (0, 1), sides):
        if len(side) != 1:
            name = f"<image {k_in}>" if _is_image(x) else str(x)
            why = "; ".join(s.reason for s in found.skipped if s.path.split("#")[0] in (name, str(x)))
            raise ValueError(f"{name}: {why or f'{len(side)} images in it (compare takes one each; use find)'}")
    ia, ib = sorted((sides[0][0], sides[1][0]))
    pairs = found.result.pairs
    at = np.flatnonzero((pairs.a == ia) & (pairs.b == ib))
    raw = {}
    for stage, stage_pairs in found.result.raw.items():
        hit = np.flatnonzero((np.asarray(stage_pairs.a) == ia) & (np.asarray(stage_pairs.b) == ib))
        if len(hit):
            raw[stage] = float(np.asarray(stage_pairs.score)[hit].max())
    if not len(at):
        return Comparison(0.0, None, True, False, found.threshold, {}, raw, {})
    k = int(at[0])
    score = float(pairs.score[k])
    calibrated = bool(pairs.calibrated is None or pairs.calibrated[k])
    return Comparison(score, str(pairs.method[k]), calibrated, score >= found.threshold, found.threshold,
                      {name: float(v[k]) for name, v in pairs.per_stage.items()}, raw,
                      found.result.evidence.get((ia, ib), {}))


def _given_as(item, x, position: int) -> bool:
    """Whether an item of compare's run is the input x (given at `position`)."""
    if _is_image(x):
        return item.display == f"<image {position}>"
    return os.path.realpath(item.source) == os.path.realpath(x)
