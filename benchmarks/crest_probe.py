"""Different photos that share only the school crest stamped into their corner, through the whole `simbench find`
with its defaults: the pairs it writes at or above 0.5. The small generated case behind results/find.md's
"After run (29)"; tests/test_shared_crest.py pins what holds on it.

    python benchmarks/crest_probe.py

Six scikit-image photos and a crop of the first (COPY), each with the crest (the yearbook's school_logo) stamped
into its bottom right corner at LOGO_WIDTH of its width; once as they are, once made flat as the yearbook makes a
quarter of its photos (blurred, lower contrast: few keypoints of their own).
"""
from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

from PIL import Image

import skimage.data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simbench.find import cascade  # noqa: E402
from simbench.find.pipeline import find  # noqa: E402
from simbench.find.yearbook import LOGO_WIDTH, _flatten, school_logo  # noqa: E402

PHOTOS = [("coffee", 600), ("chelsea", 520), ("rocket", 560), ("astronaut", 500), ("camera", 600), ("coins", 560)]
COPY = ("coffee", 560, (60, 40, 560, 380))  # a crop of the first photo, at another scale
#: The one true pair: file stems, sorted.
COPY_PAIR = ("0-coffee", "copy-coffee")


def stamped(name: str, width: int, flat: bool, crop: tuple | None = None) -> Image.Image:
    """The photo at `width` px (cropped first), flattened or not, the crest stamped into its bottom right corner
    at LOGO_WIDTH of its width, as the yearbook stamps it."""
    photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    photo = photo.crop(crop) if crop else photo
    photo = photo.resize((width, round(width * photo.height / photo.width)))
    photo = _flatten(photo) if flat else photo
    side = round(LOGO_WIDTH * photo.width)
    crest = school_logo().resize((side, side))
    photo.paste(crest, (photo.width - side - 10, photo.height - side - 10), crest)
    return photo


def crest_images(root: Path, flat: bool) -> Path:
    """The stamped photos and the copy, as root/in/<k>-<name>.png and root/in/copy-<name>.png."""
    (root / "in").mkdir(parents=True)
    for k, (name, width) in enumerate(PHOTOS):
        stamped(name, width, flat).save(root / "in" / f"{k}-{name}.png")
    name, width, crop = COPY
    stamped(name, width, flat, crop).save(root / "in" / f"copy-{name}.png")
    return root / "in"


def found_pairs(folder: Path) -> tuple[dict, float]:
    """{(stem, stem) sorted: (score, method)} of every pair `find` (defaults) writes over the folder, and its
    threshold; outputs in folder/../out."""
    cfg = cascade.make_config("cascade")
    find([folder], folder.parent / "out", cfg, progress=False)
    with open(folder.parent / "out" / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return ({tuple(sorted((Path(r["a"]).stem, Path(r["b"]).stem))): (float(r["score"]), r["method"]) for r in rows},
            float(cfg.threshold))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for flat in (False, True):
            pairs, threshold = found_pairs(crest_images(Path(tmp) / ("flat" if flat else "textured"), flat))
            print(f"{'flat' if flat else 'textured'} photos with the crest (threshold {threshold}): pairs >= 0.5")
            for pair, (score, method) in sorted(pairs.items(), key=lambda p: -p[1][0]):
                if score >= 0.5:
                    print(f"  {pair[0]} ~ {pair[1]}: {score:.3f} ({method}){'  true' if pair == COPY_PAIR else ''}")


if __name__ == "__main__":
    main()
