"""benchmarks/bench_find.py holdout's picture fetching: packages downloaded and unpacked into the cache, whole or
not at all. A fake `apt-get` (first on PATH) hands over small .deb files built here with the real dpkg-deb."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_find  # noqa: E402


def _deb(out: Path, package: str, files: dict[str, tuple[int, int, int]]) -> None:
    """A .deb of `package` holding a PNG of each colour at each path."""
    root = out / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test\n")
    for path, colour in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), colour).save(root / path)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out / f"{package}.deb")],
                   check=True, capture_output=True)


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """`apt-get download P...` copies P.deb from a folder of built packages; `fail` makes it exit 100."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("builds and unpacks real .deb files: needs Debian's dpkg-deb")
    debs = tmp_path / "debs"
    debs.mkdir()
    _deb(debs, "mate-backgrounds", {"usr/share/backgrounds/mate/nature/Aqua.png": (0, 90, 200),
                                    "usr/share/backgrounds/mate/desktop/Stripes.png": (9, 9, 9)})
    _deb(debs, "ukui-wallpapers", {"usr/share/backgrounds/city.png": (200, 90, 0)})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(f"#!/bin/sh\n[ -e {tmp_path}/fail ] && exit 100\n[ \"$1\" = download ] || exit 0\nshift\n"
                      f"for p in \"$@\"; do cp {debs}/$p.deb . || exit 100; done\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('dpkg-deb')).parent}")
    return tmp_path


def test_holdout_pictures_are_unpacked_into_the_cache_not_installed(fake_apt):
    tree = fake_apt / "cache" / "holdout-sources"
    dirs = bench_find.holdout_sources(tree, progress=False)
    assert dirs == [str(tree / d) for d in bench_find.HOLDOUT_DIRS]
    assert (tree / "usr/share/backgrounds/city.png").is_file()
    assert (tree / "usr/share/backgrounds/mate/nature/Aqua.png").is_file()
    # Found as the devset finds wallpapers: the desktop/ folder's variants are not among the searched folders.
    from simbench.data.devset import find_sources

    assert sorted(s.name for s in find_sources(dirs)) == ["Aqua", "city"]
    (tree / "usr/share/backgrounds/city.png").unlink()  # a second call keeps what is there
    assert bench_find.holdout_sources(tree, progress=False) == dirs
    assert not (tree / "usr/share/backgrounds/city.png").exists()


def test_a_failed_download_leaves_nothing_behind(fake_apt, monkeypatch):
    (fake_apt / "fail").touch()
    monkeypatch.setattr(bench_find.os, "geteuid", lambda: 1000)  # not root: no `apt-get update` retry
    cache = fake_apt / "cache"
    cache.mkdir()
    with pytest.raises(subprocess.CalledProcessError):
        bench_find.holdout_sources(cache / "holdout-sources", progress=False)
    assert list(cache.iterdir()) == []


def test_without_debian_tools_it_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    with pytest.raises(RuntimeError, match="apt-get and dpkg-deb"):
        bench_find.holdout_sources(tmp_path / "cache" / "holdout-sources", progress=False)
    assert not (tmp_path / "cache").exists()


def test_school_yearbooks_of_a_holdout_split_are_built_from_the_holdout_build(tmp_path, monkeypatch):
    """yearbook --splits holdout1: the photos come from the holdout build's split (holdout_set), not the devset's."""
    from types import SimpleNamespace

    from simbench.find.yearbook import yearbook_photos

    photos = yearbook_photos()[:8]
    paths = []
    for k, photo in enumerate(photos):
        paths.append(tmp_path / f"{k}.png")
        photo.save(paths[-1])
    asked = []

    def fake_set(kind):
        def load(name, part, progress):
            asked.append((kind, name, part))
            return SimpleNamespace(paths=paths, labels=["reference"] * len(paths))
        return load

    monkeypatch.setattr(bench_find, "holdout_set", fake_set("holdout"))
    monkeypatch.setattr(bench_find, "dev_set", fake_set("devset"))
    placements = bench_find.school_yearbook(tmp_path / "h1", "holdout1", 0, False)
    assert asked == [("holdout", "holdout1", "photo")] and placements
    bench_find.school_yearbook(tmp_path / "r", "report", 0, False)
    assert asked[-1] == ("devset", "report", "photo")


def test_holdout_set_names_the_holdout_builds_splits(tmp_path, monkeypatch):
    import simbench.data.devset as devset

    made = []

    class FakeDevSet:
        def __init__(self, split, part, source_dirs):
            made.append((split, part, source_dirs))

        def load(self, progress):
            return made[-1]

    monkeypatch.setattr(devset, "DevSet", FakeDevSet)
    monkeypatch.setattr(bench_find, "holdout_sources", lambda tree, progress: ["dirs"])
    assert bench_find.holdout_set("holdout1", "photo", False) == ("tune", "photo", ["dirs"])
    assert bench_find.holdout_set("holdout2", "lineart", False) == ("report", "lineart", ["dirs"])
