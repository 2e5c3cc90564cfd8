"""SyntheticDataset (built from skimage photos, cached) and FolderDataset (listing and ground truth)."""
from __future__ import annotations

import csv
import itertools
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from simbench.data import synthetic
from simbench.data.folder import NOT_AN_IMAGE, FolderDataset
from simbench.data.images import open_image
from simbench.data.synthetic import SyntheticDataset, quadtree_boxes
from simbench.data.transforms import TRANSFORMS

SMALL = dict(n_references=3, n_distractors=4, long_side=96, seed=0)


# ---------- synthetic ----------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small build, shared by the read-only checks below."""
    cache = tmp_path_factory.mktemp("cache_a")
    return SyntheticDataset(**SMALL, cache_dir=str(cache)).load(progress=False)


def _group(path: Path) -> str:
    """r000_crop.jpg -> r000; distractors d003.jpg -> d003 (their own singleton group)."""
    return path.name.split("_")[0].split(".")[0]


def test_synthetic_size_and_labels(built):
    n_kinds = len(TRANSFORMS)
    assert len(built) == 3 * (1 + n_kinds) + 4
    assert built.name == "synthetic"
    counts = Counter(built.labels)
    assert counts["reference"] == 3 and counts["distractor"] == 4
    assert all(counts[name] == 3 for name in TRANSFORMS)
    assert set(counts) == {"reference", "distractor", *TRANSFORMS}
    assert all(p.is_file() and p.parent == built.root / "images" for p in built.paths)


def test_synthetic_truth_is_all_pairs_in_each_group(built):
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(built.paths):
        groups.setdefault(_group(path), []).append(i)
    expected = {pair for members in groups.values() for pair in itertools.combinations(sorted(members), 2)}
    assert {tuple(map(int, p)) for p in built.truth} == expected
    assert built.n_true_pairs == 3 * (1 + len(TRANSFORMS)) * len(TRANSFORMS) // 2
    distractors = {i for i, label in enumerate(built.labels) if label == "distractor"}
    assert not distractors & set(built.truth.ravel().tolist())
    for i, path in enumerate(built.paths):  # the label names how the file was made
        assert built.labels[i] == ("distractor" if path.name.startswith("d") else path.stem.split("_", 1)[1])


def test_synthetic_files_and_csvs(built):
    root = built.root
    assert root.name.startswith("synthetic-") and root.parent.name.startswith("cache_a")
    with open(root / "truth.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["a", "b"] and len(rows) - 1 == built.n_true_pairs
    assert all(not Path(a).is_absolute() and (root / a).is_file() for a, _ in rows[1:])
    with open(root / "labels.csv", newline="") as f:
        assert next(csv.reader(f)) == ["path", "label"]
    sizes = {label: open_image(p).size for p, label in zip(built.paths, built.labels)}
    assert max(sizes["reference"]) == 96
    assert max(sizes["scale_down"]) < 96 and max(sizes["border"]) > 96
    assert open_image(built.paths[built.labels.index("grayscale")], mode="RGB").mode == "RGB"


def test_synthetic_sources_are_distinct(built):
    # Every reference and distractor is a different picture: no two near-identical thumbnails.
    sources = [p for p, label in zip(built.paths, built.labels) if label in ("reference", "distractor")]
    thumbs = []
    for path in sources:
        grey = np.asarray(open_image(path, mode="L").resize((16, 16)), dtype=np.float64).ravel()
        grey -= grey.mean()
        thumbs.append(grey / np.linalg.norm(grey))
    corr = np.array(thumbs) @ np.array(thumbs).T
    np.fill_diagonal(corr, 0)
    assert corr.max() < 0.95


def test_quadtree_tiles_cover_without_overlap():
    for w, h in [(512, 512), (451, 300), (1000, 872), (384, 191)]:
        cover = np.zeros((h, w), dtype=np.int32)
        boxes = quadtree_boxes(w, h)
        for x0, y0, x1, y1 in boxes:
            cover[y0:y1, x0:x1] += 1
            assert min(x1 - x0, y1 - y0) >= min(synthetic.MIN_TILE_SIDE, w, h)
        assert (cover == 1).all()
        if min(w, h) >= 4 * synthetic.MIN_TILE_SIDE:
            assert len({(x1 - x0) for x0, _, x1, _ in boxes}) >= 2  # a few scales


def test_synthetic_default_pool_is_big_enough():
    pool = synthetic.source_tiles()
    assert sum(len(tiles) for tiles in pool) >= 30 + 150  # the defaults
    with pytest.raises(ValueError, match="distinct tiles"):
        synthetic.pick_tiles(pool, 10_000, np.random.default_rng(0))


def test_synthetic_cache_is_reused(built, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(SyntheticDataset, "_build", no_build)
    again = SyntheticDataset(**SMALL, cache_dir=str(built.root.parent)).load(progress=False)
    assert again.paths == built.paths and np.array_equal(again.truth, built.truth)
    assert again.labels == built.labels


def test_synthetic_deterministic(built, tmp_path):
    other = SyntheticDataset(**SMALL, cache_dir=str(tmp_path)).load(progress=False)
    assert other.root.name == built.root.name
    assert [p.name for p in other.paths] == [p.name for p in built.paths]
    assert other.labels == built.labels and np.array_equal(other.truth, built.truth)
    for a, b in zip(built.paths, other.paths):
        assert a.read_bytes() == b.read_bytes(), a.name
    for name in ("truth.csv", "labels.csv"):
        assert (built.root / name).read_bytes() == (other.root / name).read_bytes()


def test_synthetic_seed_and_transform_subset(built, tmp_path):
    params = dict(SMALL, seed=1, transforms=["hflip", "crop"])
    ds = SyntheticDataset(**params, cache_dir=str(tmp_path)).load(progress=False)
    assert ds.root != built.root
    assert Counter(ds.labels) == {"reference": 3, "distractor": 4, "hflip": 3, "crop": 3}
    assert ds.n_true_pairs == 3 * 3
    ref_new = ds.paths[ds.labels.index("reference")].read_bytes()
    assert ref_new != built.paths[built.labels.index("reference")].read_bytes()
    # Same seed, fewer kinds: the same sources and the same copies, by name.
    same = SyntheticDataset(**dict(SMALL, transforms=["crop", "hflip", "crop"]), cache_dir=str(tmp_path)).load(
        progress=False)
    assert [p.name for p in same.paths if not p.name.startswith("d")] == [
        f"r{i:03d}_{kind}.jpg" for i in range(3) for kind in ("reference", "crop", "hflip")]
    full = {p.name: p for p in built.paths}
    for path in same.paths:
        if path.name.startswith("r"):
            assert path.read_bytes() == full[path.name].read_bytes(), path.name


def test_synthetic_rejects_bad_params(tmp_path):
    with pytest.raises(ValueError, match="unknown transforms"):
        SyntheticDataset(transforms=["sharpen"], cache_dir=str(tmp_path))
    with pytest.raises(ValueError):
        SyntheticDataset(n_references=-1, cache_dir=str(tmp_path))


def test_synthetic_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMBENCH_CACHE", str(tmp_path / "env_cache"))
    assert SyntheticDataset().root.parent == tmp_path / "env_cache"


def test_synthetic_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(self, out, j, tile):
        raise KeyboardInterrupt

    params = dict(SMALL, n_references=1, n_distractors=1, transforms=["hflip"])
    with monkeypatch.context() as m:
        m.setattr(SyntheticDataset, "_write_distractor", interrupted)
        with pytest.raises(KeyboardInterrupt):
            SyntheticDataset(**params, cache_dir=str(tmp_path)).load(progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a half dataset nor a temporary folder
    ds = SyntheticDataset(**params, cache_dir=str(tmp_path)).load(progress=False)
    assert len(ds) == 3 and ds.n_true_pairs == 1


def test_synthetic_removes_stale_temporary_builds(tmp_path):
    sd = SyntheticDataset(**dict(SMALL, n_references=1, n_distractors=0, transforms=[]), cache_dir=str(tmp_path))
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / f".{sd.root.name}.tmp-{dead}-x"
    stale.mkdir()
    ds = sd.load(progress=False)
    assert not stale.exists()
    assert len(ds) == 1 and ds.n_true_pairs == 0


# ---------- folder ----------

def _touch(root: Path, *names: str) -> None:
    """Files need not be real images: FolderDataset only lists."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def _rel(ds, pairs=None):
    pairs = ds.truth if pairs is None else pairs
    names = [p.relative_to(ds.root).as_posix() for p in ds.paths]
    return {(names[a], names[b]) for a, b in pairs}


def test_folder_truth_csv(tmp_path):
    _touch(tmp_path, "a.jpg", "b.PNG", "c.jpeg", "sub/d.jpg")
    (tmp_path / "truth.csv").write_text("a,b\na.jpg,sub/d.jpg\nc.jpeg,b.PNG\n")
    ds = FolderDataset(str(tmp_path)).load(progress=False)
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == ["a.jpg", "b.PNG", "c.jpeg", "sub/d.jpg"]
    assert _rel(ds) == {("a.jpg", "sub/d.jpg"), ("b.PNG", "c.jpeg")}
    assert ds.skipped == []  # truth.csv itself is not reported
    assert ds.labels == [""] * 4 and ds.name == tmp_path.name


def test_folder_truth_given_elsewhere_and_unknown_paths(tmp_path):
    root = tmp_path / "imgs"
    _touch(root, "x.jpg", "y.jpg", "z.jpg")
    truth = tmp_path / "pairs.csv"
    truth.write_text(f"a,b\nx.jpg,y.jpg\nx.jpg,gone.jpg\n{root / 'z.jpg'},./y.jpg\nx.jpg,x.jpg\n")
    with pytest.warns(UserWarning, match="gone.jpg"):
        ds = FolderDataset(str(root), truth=str(truth)).load(progress=False)
    assert _rel(ds) == {("x.jpg", "y.jpg"), ("y.jpg", "z.jpg")}
    with pytest.raises(FileNotFoundError):
        FolderDataset(str(root), truth=str(tmp_path / "missing.csv")).load(progress=False)
    (tmp_path / "bad.csv").write_text("left,right\nx.jpg,y.jpg\n")
    with pytest.raises(ValueError, match="a,b"):
        FolderDataset(str(root), truth=str(tmp_path / "bad.csv")).load(progress=False)


def test_folder_subfolder_groups(tmp_path):
    _touch(tmp_path, "g1/x.jpg", "g1/deeper/y.jpg", "g2/z.jpg", "g3/u.png", "g3/v.png", "g3/w.png")
    ds = FolderDataset(str(tmp_path)).load(progress=False)
    assert _rel(ds) == {("g1/deeper/y.jpg", "g1/x.jpg"), ("g3/u.png", "g3/v.png"), ("g3/u.png", "g3/w.png"),
                        ("g3/v.png", "g3/w.png")}


def test_folder_no_truth_when_layout_is_not_groups(tmp_path):
    _touch(tmp_path / "loose", "top.jpg", "g1/a.jpg", "g1/b.jpg")  # an image directly in root
    assert FolderDataset(str(tmp_path / "loose")).load(progress=False).truth is None
    _touch(tmp_path / "one", "photos/a.jpg", "photos/b.jpg")  # a single subfolder is not a grouping
    assert FolderDataset(str(tmp_path / "one")).load(progress=False).truth is None
    _touch(tmp_path / "singles", "g1/a.jpg", "g2/b.jpg")  # no group with two images
    assert FolderDataset(str(tmp_path / "singles")).load(progress=False).truth is None


def test_folder_symlink_loop_and_followed_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _touch(root, "a/1.jpg", "b/2.jpg")
    _touch(outside, "3.jpg")
    (root / "a" / "loop").symlink_to(root)  # points back up: must not hang
    (root / "b" / "again").symlink_to(root / "a")  # a second way into a folder already listed
    (root / "ext").symlink_to(outside)  # a linked folder outside root is followed
    (root / "dead.jpg").symlink_to(tmp_path / "nowhere.jpg")
    ds = FolderDataset(str(root)).load(progress=False)
    assert [p.relative_to(root).as_posix() for p in ds.paths] == ["a/1.jpg", "b/2.jpg", "ext/3.jpg"]
    reasons = {Path(s.path).relative_to(root).as_posix(): s.reason for s in ds.skipped}
    assert reasons["a/loop"].startswith("symlink loop")
    assert reasons["b/again"].startswith("folder already listed")
    assert reasons["dead.jpg"] == f"broken symlink (target {tmp_path / 'nowhere.jpg'} does not exist)"


def test_folder_extensions(tmp_path):
    _touch(tmp_path, "a.JPG", "b.tiff", "notes.txt", "archive.tar.gz", "noext", "c.webp")
    ds = FolderDataset(str(tmp_path)).load(progress=False)
    assert [p.name for p in ds.paths] == ["a.JPG", "b.tiff", "c.webp"]
    assert sorted((Path(s.path).name, s.reason) for s in ds.skipped) == [
        ("archive.tar.gz", NOT_AN_IMAGE), ("noext", NOT_AN_IMAGE), ("notes.txt", NOT_AN_IMAGE)]
    only_png = FolderDataset(str(tmp_path), extensions=["PNG", ".webp"]).load(progress=False)
    assert [p.name for p in only_png.paths] == ["c.webp"]


def test_folder_empty_and_missing(tmp_path):
    ds = FolderDataset(str(tmp_path)).load(progress=False)
    assert len(ds) == 0 and ds.truth is None and ds.skipped == []
    with pytest.raises(NotADirectoryError):
        FolderDataset(str(tmp_path / "missing")).load(progress=False)


def test_folder_reads_the_synthetic_layout(built):
    # A built synthetic dataset is also a plain folder with truth.csv: both readers agree.
    ds = FolderDataset(str(built.root)).load(progress=False)
    index = {p: i for i, p in enumerate(ds.paths)}
    remap = np.array([index[p] for p in built.paths])
    assert np.array_equal(np.unique(np.sort(remap[built.truth], axis=1), axis=0), ds.truth)
    assert sorted(Path(s.path).name for s in ds.skipped) == ["labels.csv", "params.json"]


def test_atomic_writes_keep_the_usual_permissions(tmp_path):
    """Reports and pairs.csv are written through a private temporary file: the result must still be
    readable by others, as a plain open() would make it under the umask."""
    import os
    import stat

    from simbench.cache import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").read_bytes() == b"<html></html>"
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary file left behind
