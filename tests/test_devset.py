"""The development benchmark builder (simbench.data.devset) and its edits (simbench.data.edits).

Runs on a tiny fake wallpaper folder made from scikit-image's photographs, with our own (non-AugLy) edits;
neither Debian's wallpaper packages nor AugLy are needed. AugLy edits are tested only where AugLy imports.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simbench.data import devset as ds
from simbench.data.edits import AUGLY_EDITS, EDITS, OVERLAYS, OWN_EDITS, make_copy

# Split by SHA-1 of the name: coffee, chelsea, motorcycle, immunohistochemistry, hubble_deep_field, grass -> tune;
# astronaut, rocket, page, moon, retina, brick -> report.
KDE_STYLE = ("coffee", "astronaut")
PLAIN = ("chelsea", "motorcycle", "immunohistochemistry", "brick", "rocket", "page", "moon", "hubble_deep_field",
         "retina", "grass")
SIDE = 192  # small pictures keep the build fast


def _photo(name: str) -> Image.Image:
    import skimage.data

    arr = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    img = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8), "RGB")
    img.thumbnail((480, 480))
    return img


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    """A fake /usr/share/wallpapers (KDE layout, two resolutions each) and /usr/share/backgrounds (plain
    files, plus a symlink, a near-duplicate and a flat gradient that must be left out)."""
    root = tmp_path_factory.mktemp("wallpapers")
    kde, plain = root / "wallpapers", root / "backgrounds"
    for name in KDE_STYLE:
        folder = kde / name / "contents" / "images"
        folder.mkdir(parents=True)
        img = _photo(name)
        img.save(folder / f"{img.width}x{img.height}.jpg", quality=92)
        small = img.resize((img.width // 2, img.height // 2))
        small.save(folder / f"{small.width}x{small.height}.jpg", quality=92)
        small.save(kde / name / "contents" / "screenshot.jpg")  # a preview, not a wallpaper
    plain.mkdir()
    for name in PLAIN:
        _photo(name).save(plain / f"{name}.jpg", quality=92)
    os.symlink(plain / "rocket.jpg", plain / "zz_alias_of_rocket.jpg")
    _photo("chelsea").resize((300, 200)).save(plain / "chelsea_small.png")  # same picture, other size
    ramp = np.linspace(60, 200, 400, dtype=np.float32)[None, :, None] * np.ones((300, 1, 3), np.float32)
    Image.fromarray(ramp.astype(np.uint8), "RGB").save(plain / "gradient.png")
    return [str(kde), str(plain)]


def _devset(sources, root, **kw) -> ds.DevSet:
    return ds.DevSet(root=str(root), edits=list(OWN_EDITS), long_side=SIDE, source_dirs=sources, **kw)


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("devset") / "built"
    _devset(sources, root).build(progress=False)
    return root


def _rows(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _base(source: str) -> str:
    return source.split("#")[0]


def test_sources_one_per_wallpaper_and_screened(sources, built):
    found = {s.name: s.path for s in ds.find_sources(sources)}
    assert "zz_alias_of_rocket" not in found  # the symlink is the same file
    assert found["coffee"].endswith(f"{_photo('coffee').width}x{_photo('coffee').height}.jpg")  # the largest
    with open(built / "sources.csv", newline="") as f:
        status = {row["name"]: row for row in csv.DictReader(f)}
    assert status["gradient"]["status"] == "flat"
    assert status["zz_alias_of_rocket"]["status"] == "same file"
    assert status["chelsea_small"]["status"] == "duplicate" and "chelsea" in status["chelsea_small"]["note"]
    assert {n for n, r in status.items() if r["status"] == "kept"} == set(KDE_STYLE + PLAIN)


def test_split_by_source(built):
    used = {}
    for split in ds.SPLITS:
        photo = {_base(r["source"]) for r in _rows(built / split / "photo")}
        lineart = {_base(r["source"]) for r in _rows(built / split / "lineart")}
        assert photo == lineart  # line art stays in its photograph's split
        assert all(ds.split_of(name) == split for name in photo)
        used[split] = photo
    assert used["tune"] and used["report"] and not used["tune"] & used["report"]
    with open(built / "sources.csv", newline="") as f:
        roles = {row["name"]: (row["role"], row["split"]) for row in csv.DictReader(f)}
    for split in ds.SPLITS:  # a wallpaper is a reference source or a distractor source, never both
        rows = _rows(built / split / "photo")
        refs = {r["source"] for r in rows if r["label"] == "reference"}
        distractors = {_base(r["source"]) for r in rows if r["label"] == "distractor"}
        assert refs and distractors and not refs & distractors
        # a paste background is a distractor source's tile that is not itself a distractor
        backgrounds = [json.loads(r["params"])["paste"]["background"] for r in rows if r["label"] == "paste"]
        assert backgrounds and len(set(backgrounds)) == len(backgrounds)
        assert all(roles[_base(b)] == ("distractor", split) for b in backgrounds)
        assert not set(backgrounds) & {r["source"] for r in rows if r["label"] == "distractor"}


@pytest.mark.parametrize("split,part", list(itertools.product(ds.SPLITS, ds.PARTS)))
def test_truth_labels_and_loader(built, sources, split, part):
    folder = built / split / part
    rows = _rows(folder)
    labels = {r["label"] for r in rows}
    assert {"reference", "distractor"} <= labels and labels <= {"reference", "distractor", *OWN_EDITS}
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r["group"] != "":
            groups.setdefault(r["group"], []).append(r["path"])
    refs = [r for r in rows if r["label"] == "reference"]
    assert all(len(groups[r["group"]]) == 1 + ds.COPIES_PER_REFERENCE for r in refs)
    expected = {frozenset(p) for g in groups.values() for p in itertools.combinations(g, 2)}
    with open(folder / "truth.csv", newline="") as f:
        truth = {frozenset((row["a"], row["b"])) for row in csv.DictReader(f)}
    assert truth == expected
    for r in rows:
        if r["label"] == "chain2" or r["label"] == "chain3":
            assert len(r["members"].split("+")) == int(r["label"][-1])
    assert {r["style"] for r in rows} <= ({"photo"} if part == "photo" else {"xdog", "hatching"})
    data = _devset(sources, built, split=split, part=part).load(progress=False)
    assert len(data) == len(rows) and data.n_true_pairs == len(truth)
    assert data.labels == [r["label"] for r in rows]
    assert all(p.is_file() for p in data.paths)
    with Image.open(data.paths[0]) as im:
        assert im.mode == "RGB" and max(im.size) <= SIDE


def test_families_dealt_evenly(built):
    rows = _rows(built / "tune" / "photo") + _rows(built / "report" / "photo")
    counts = [sum(r["label"] == f for r in rows) for f in OWN_EDITS]
    assert max(counts) - min(counts) <= 2
    dealt = ds.assign_families(7, list(OWN_EDITS), 8, np.random.default_rng(0))
    assert all(len(set(d)) == 8 for d in dealt)


def test_distractors_share_overlays_with_copies(built):
    for split, part in itertools.product(ds.SPLITS, ds.PARTS):
        rows = _rows(built / split / part)
        by_path = {r["path"]: r for r in rows}
        distractors = [r for r in rows if r["label"] == "distractor"]
        assert distractors
        logos = [r for r in rows if r["logo"] == "1"]
        assert logos and all(r["label"] not in ("reference", "distractor") for r in logos)
        for d in distractors:
            assert d["overlay"] in OVERLAYS
            copy = by_path[d["shares"]]  # an existing copy of this collection...
            assert copy["label"] not in ("reference", "distractor") and copy["source"] != _base(d["source"])
            # ...whose overlay parameters the distractor carries unchanged
            assert json.loads(d["params"])[d["overlay"]] == json.loads(copy["params"])[d["overlay"]]


def test_line_art_is_black_on_white(built):
    rows = _rows(built / "tune" / "lineart")
    ref = next(r for r in rows if r["label"] == "reference")
    grey = np.asarray(Image.open(built / "tune" / "lineart" / ref["path"]).convert("L"))
    assert np.median(grey) > 200 and (grey < 100).mean() > 0.005  # mostly paper, some ink
    photo = Image.fromarray(np.asarray(Image.open(built / "tune" / "photo" / ref["path"])))
    for style in ("xdog", "hatching"):
        art, used = ds.line_art(photo, style)
        assert art.mode == "RGB" and art.size == photo.size and used in ("xdog", "hatching")
    flat = Image.new("RGB", (200, 100), (120, 140, 160))
    assert ds.line_art(flat, "xdog")[1] == "hatching"  # no lines to draw: hatched tone instead


def test_each_drawing_is_hatched_on_its_own_lattice():
    """Different drawings (names, or seeds) get different lattices, one drawing always the same one; the
    tone of one flat picture hatched on two lattices shares almost no stroke."""
    assert ds.lattice_of("Kite#3", 0) == ds.lattice_of("Kite#3", 0)
    lattices = {ds.lattice_of(name, seed) for name in ("Kite#3", "Kite#4", "Volna") for seed in (0, 1)}
    assert len(lattices) == 6 and all(0 <= la.turn < 180 and 0.75 <= la.spacing <= 1.35 for la in lattices)
    dark = Image.new("RGB", (1024, 1024), (40, 40, 40))  # dark enough for all three layers
    blank = np.ones((1024, 1024), np.float32)
    one, other = (ds.hatching(dark, blank, ds.lattice_of(name, 0)) < 0.5 for name in ("Kite#3", "Kite#4"))
    assert 0.2 < one.mean() < 0.8 and 0.2 < other.mean() < 0.8
    # Ink where both have it: as for strokes laid independently (on one lattice it would be all the lesser's).
    assert (one & other).mean() < 1.1 * one.mean() * other.mean()
    np.testing.assert_array_equal(one, ds.hatching(dark, blank, ds.lattice_of("Kite#3", 0)) < 0.5)


def test_deterministic(sources, built, tmp_path):
    again = tmp_path / "again"
    _devset(sources, again).build(progress=False)
    for split, part in itertools.product(ds.SPLITS, ds.PARTS):
        for name in ("labels.csv", "truth.csv"):
            assert (built / split / part / name).read_bytes() == (again / split / part / name).read_bytes()
        for r in _rows(built / split / part):
            assert (built / split / part / r["path"]).read_bytes() == (again / split / part / r["path"]).read_bytes()


def test_default_root_is_keyed_by_settings(sources, cache_dir):
    a = ds.DevSet(edits=list(OWN_EDITS), source_dirs=sources)
    assert a.root.parent == cache_dir and a.root.name.startswith("devset-")
    assert ds.DevSet(edits=list(OWN_EDITS), source_dirs=sources, seed=1).root != a.root
    assert ds.DevSet(split="report", part="lineart", edits=list(OWN_EDITS), source_dirs=sources).root == a.root
    with pytest.raises(ValueError):
        ds.DevSet(split="test")
    with pytest.raises(ValueError):
        ds.DevSet(edits=["nope"])
    with pytest.raises(FileNotFoundError):
        ds.DevSet(edits=list(OWN_EDITS), source_dirs=[str(cache_dir / "nothing")]).build(progress=False)


def _check(out: Image.Image, src: Image.Image):
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert 16 <= min(out.size) and max(out.size) <= max(3 * max(src.size), 1200)  # 1200: screenshot templates
    assert np.asarray(out).std() > 1  # not blank


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    img = _photo("astronaut")
    img.thumbnail((256, 256))
    return img


@pytest.mark.parametrize("name", OWN_EDITS)
def test_own_edits_return_sane_rgb(picture, name):
    for seed in range(3):
        out, record = make_copy(name, picture, np.random.default_rng(seed), members=tuple(m for m in OWN_EDITS
                                                                                            if m in ds.CHAIN_MEMBERS))
        _check(out, picture)
        assert EDITS[name](picture, np.random.default_rng(seed)).mode == "RGB"
    out, _ = make_copy(name, picture, np.random.default_rng(5))
    again, _ = make_copy(name, picture, np.random.default_rng(5))
    if name not in ("chain2", "chain3"):  # chains without members= may use AugLy when it is there
        assert np.array_equal(np.asarray(out), np.asarray(again))


def test_logo_overlay(picture):
    out, record = make_copy("logo", picture, np.random.default_rng(0))
    _check(out, picture)
    assert out.size == picture.size and set(record["params"]) == {"corner", "size", "margin", "opacity"}
    assert not np.array_equal(np.asarray(out), np.asarray(picture))


@pytest.mark.parametrize("name", sorted(AUGLY_EDITS))
def test_augly_edits_return_sane_rgb(picture, name):
    pytest.importorskip("augly.image", reason="AugLy is installed by `python benchmarks/devset.py build`, not by the test extra (the issue: tests need not)")
    for seed in range(3):
        out, record = make_copy(name, picture, np.random.default_rng(seed))
        _check(out, picture)
        again = OVERLAYS[name][1](picture, json.loads(json.dumps(record["params"])))  # params replay exactly
        assert np.array_equal(np.asarray(out), np.asarray(again))
