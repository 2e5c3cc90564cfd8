"""Odd files (issue 12, item 5): each is listed in skipped.csv with a reason and the run goes on.

Every case is a real file made in tmp_path (symlinks, a FIFO, mode 000, a non-UTF-8 name, 16/32-bit
images, blank frames and PDF pages) next to a true duplicate pair, and `simbench find` runs through its
command-line entry with the fast hash method; each test checks the reason or the result, and that the
pair next to the odd file is still found.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from simbench.cli import find_main
from simbench.data.images import open_image
from simbench.find.blank import blank_colour
from simbench.find.items import thumbnail_jpeg

PAIR = {"photo.jpg", "photo-copy.jpg"}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def add_pair(folder: Path, photos) -> None:
    """A true duplicate pair: a photo and a smaller re-encoded copy."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(photos["astronaut"])
    image.save(folder / "photo.jpg", quality=92)
    image.resize((384, 384)).save(folder / "photo-copy.jpg", quality=80)


def run_find(inputs: list[Path], out: Path) -> tuple[dict[str, str], list[dict]]:
    """`simbench find INPUTS --out OUT --method hash`: (skipped file -> reason, pairs.csv rows)."""
    assert find_main([*map(str, inputs), "--out", str(out), "--method", "hash", "-q"]) == 0
    skipped = {r["file"]: r["reason"] for r in read_csv(out / "skipped.csv")}
    return skipped, read_csv(out / "pairs.csv")


def pair_names(rows: list[dict]) -> list[set[str]]:
    return [{Path(r["a"]).name, Path(r["b"]).name} for r in rows]


def by_name(skipped: dict[str, str]) -> dict[str, str]:
    return {Path(k).name: v for k, v in skipped.items()}


@pytest.fixture
def as_non_root(monkeypatch, tmp_path):
    """Root reads mode-000 files and folders anyway. So that the code path for an unreadable file is
    tested under root too (as CI runs), os.access answers for paths under tmp_path as their non-root
    owner would, from the owner permission bits; for any other user the real os.access is left alone."""
    if os.geteuid() != 0:
        return
    real = os.access
    bits = ((os.R_OK, stat.S_IRUSR), (os.W_OK, stat.S_IWUSR), (os.X_OK, stat.S_IXUSR))

    def access(path, mode, *args, **kwargs):
        if not os.fsdecode(os.path.abspath(path)).startswith(str(tmp_path)):
            return real(path, mode, *args, **kwargs)
        st_mode = os.stat(path).st_mode
        return all(st_mode & bit for flag, bit in bits if mode & flag)

    monkeypatch.setattr(os, "access", access)


# ---------------------------------------------------------------------------------------------------
# Links, permissions, FIFOs, names


def test_symlink_to_itself(tmp_path, photos):
    add_pair(tmp_path / "in", photos)
    os.symlink("self.jpg", tmp_path / "in" / "self.jpg")
    skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    assert by_name(skipped)["self.jpg"] == "symlink to itself"
    assert pair_names(rows) == [PAIR]


def test_symlink_cycle_between_files(tmp_path, photos):
    """Two links pointing at each other used to crash the whole run with ELOOP."""
    add_pair(tmp_path / "in", photos)
    os.symlink("b.png", tmp_path / "in" / "a.png")
    os.symlink("a.png", tmp_path / "in" / "b.png")
    skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    reasons = by_name(skipped)
    assert reasons["a.png"] == "symlink loop (a.png -> b.png -> a.png)"
    assert reasons["b.png"] == "symlink loop (b.png -> a.png -> b.png)"
    assert pair_names(rows) == [PAIR]
    # Given directly on the command line, the same reason.
    skipped, _ = run_find([tmp_path / "in" / "a.png", tmp_path / "in" / "photo.jpg"], tmp_path / "out2")
    assert by_name(skipped)["a.png"].startswith("symlink loop")


def test_dangling_symlink(tmp_path, photos):
    add_pair(tmp_path / "in", photos)
    os.symlink(tmp_path / "gone.jpg", tmp_path / "in" / "dangling.jpg")
    skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    assert by_name(skipped)["dangling.jpg"] == f"broken symlink (target {tmp_path / 'gone.jpg'} does not exist)"
    assert pair_names(rows) == [PAIR]


def test_unreadable_file(tmp_path, photos, as_non_root):
    add_pair(tmp_path / "in", photos)
    locked = tmp_path / "in" / "locked.jpg"
    Image.fromarray(photos["coffee"]).save(locked)
    locked.chmod(0)
    try:
        skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    finally:
        locked.chmod(0o644)
    assert by_name(skipped)["locked.jpg"] == "permission denied (file not readable)"
    assert pair_names(rows) == [PAIR]


def test_unreadable_folder(tmp_path, photos, as_non_root):
    add_pair(tmp_path / "in", photos)
    locked = tmp_path / "in" / "locked"
    locked.mkdir()
    Image.fromarray(photos["astronaut"]).save(locked / "third-copy.jpg")  # would pair if it were listed
    locked.chmod(0)
    try:
        skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    finally:
        locked.chmod(0o755)
    assert skipped[str(locked)] == "cannot list folder (permission denied)"
    assert pair_names(rows) == [PAIR]


def test_fifo_is_listed_and_never_opened(tmp_path, photos):
    """Opening a FIFO for reading waits for a writer forever: find must finish without opening it."""
    add_pair(tmp_path / "in", photos)
    os.mkfifo(tmp_path / "in" / "pipe.jpg")
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(
        found=run_find([tmp_path / "in", tmp_path / "in" / "pipe.jpg"], tmp_path / "out")), daemon=True)
    run.start()
    run.join(timeout=120)
    assert not run.is_alive(), "simbench find blocked on a FIFO"
    skipped, rows = result["found"]
    assert skipped[str(tmp_path / "in" / "pipe.jpg")].startswith("not a regular file (a FIFO")
    assert pair_names(rows) == [PAIR]


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux file systems take names that are not UTF-8")
def test_name_not_utf8(tmp_path, photos):
    add_pair(tmp_path / "in", photos)
    folder = os.fsencode(tmp_path / "in")
    Image.fromarray(photos["coffee"]).save(folder + b"/caf\xe9.jpg")  # Latin-1 bytes
    os.mkdir(folder + b"/dossier-\xe9t\xe9")
    Image.fromarray(photos["astronaut"]).save(folder + b"/dossier-\xe9t\xe9/copy.jpg")
    skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    reason = "name is not valid UTF-8 (rename it to compare it)"
    assert skipped[f"{tmp_path / 'in'}/caf\\xe9.jpg"] == reason
    assert skipped[f"{tmp_path / 'in'}/dossier-\\xe9t\\xe9"] == reason
    assert pair_names(rows) == [PAIR]
    (tmp_path / "out" / "report.html").read_bytes().decode("utf-8")  # every output stays valid UTF-8


# ---------------------------------------------------------------------------------------------------
# 16-bit and 32-bit images


def _grey(photos) -> np.ndarray:
    return photos["camera"][..., 0]  # 0..255


WIDE = {
    # name: (file name, writer of the grey picture g (uint8) in a wide format)
    "16-bit PNG, values below 256": ("g16.png", lambda g, p: Image.fromarray(g.astype(np.uint16)).save(p)),
    "16-bit big-endian TIFF, 12-bit values": (
        "g16b.tif", lambda g, p: Image.frombytes("I;16B", g.shape[::-1], (g.astype(np.uint16) * 16).astype(">u2").tobytes()).save(p)),
    "32-bit integer TIFF, values below 256": ("g32.tif", lambda g, p: Image.fromarray(g.astype(np.int32)).save(p)),
    "float TIFF in [0, 0.05]": ("f32.tif", lambda g, p: Image.fromarray((g / 255 * 0.05).astype(np.float32)).save(p)),
    "16-bit RGB PNG (OpenCV), values below 256": (
        "rgb16.png", lambda g, p: cv2.imwrite(str(p), np.dstack([g, g, g]).astype(np.uint16))),
}


@pytest.mark.parametrize("case", list(WIDE))
def test_narrow_range_wide_images_are_scaled_by_their_range(tmp_path, photos, case):
    """Each of these was read as (nearly) black before: it must read as the 8-bit picture it holds, and
    pair with that picture's 8-bit JPEG in a find run."""
    name, write = WIDE[case]
    grey = _grey(photos)
    assert grey.max() == 255
    (tmp_path / "in").mkdir()
    write(grey, tmp_path / "in" / name)
    read = np.asarray(open_image(tmp_path / "in" / name, mode="L"), dtype=int)
    assert np.abs(read - grey).max() <= 1, case
    add_pair(tmp_path / "in", photos)
    Image.fromarray(grey).save(tmp_path / "in" / "camera.jpg", quality=90)
    skipped, rows = run_find([tmp_path / "in"], tmp_path / "out")
    assert not skipped
    assert sorted(map(sorted, pair_names(rows))) == sorted([sorted(PAIR), sorted({name, "camera.jpg"})])


def test_full_range_16bit_keeps_a_fixed_scale(tmp_path, photos):
    grey = _grey(photos).astype(np.uint16)
    full = tmp_path / "full.png"
    Image.fromarray(grey * 257).save(full)  # 0..65535: exactly the 8-bit picture
    assert np.array_equal(np.asarray(open_image(full, mode="L")), grey)
    # Brightest sample 40035 (above half scale): top byte, not stretched to white, so that two exposures
    # of one scene keep their relative brightness.
    dim = tmp_path / "dim.png"
    Image.fromarray(grey * 157).save(dim)
    assert np.asarray(open_image(dim, mode="L")).max() == (255 * 157) >> 8
    # Faint noise on a 16-bit black frame stays black (it is not stretched into full-contrast noise).
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 4, (64, 64)).astype(np.uint16)).save(noise)
    assert np.asarray(open_image(noise, mode="L")).max() <= 3


# ---------------------------------------------------------------------------------------------------
# Blank images


def _blank_pdf(path: Path, photos) -> None:
    """Three pages of photographs, each with a black rectangle image (as scanned yearbooks have)."""
    import pymupdf

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    doc = pymupdf.open()
    for k, (name, black) in enumerate([("rocket", (300, 200)), ("rocket", (300, 200)), ("coins", (240, 320))]):
        page = doc.new_page()
        page.insert_image(pymupdf.Rect(60, 60, 300, 300), stream=png(photos[name]))
        page.insert_image(pymupdf.Rect(60, 400, 360, 600), stream=png(np.zeros((*black[::-1], 3), np.uint8)))
    doc.save(path)


def test_blank_images_are_counted_not_paired(tmp_path, photos, capsys):
    folder = tmp_path / "in"
    add_pair(folder, photos)
    for k, size in enumerate([(640, 480), (300, 200), (1200, 900)]):  # black frames of different files
        Image.new("RGB", size, (0, 0, 0)).save(folder / f"black-{k}.png")
    Image.new("RGB", (800, 600), (255, 255, 255)).save(folder / "empty-scan.jpg", quality=95)
    ramp = np.tile(np.linspace(121, 123, 400), (300, 1))  # near-uniform (a 2-level ramp), noise-free
    Image.fromarray(np.dstack([ramp, ramp - 60, ramp + 40]).astype(np.uint8)).save(folder / "fill.png")
    # A real photo at a tenth of its contrast is not blank: it and its copy still pair.
    low = (128 + (photos["coffee"].astype(float) - 128) * 0.1).astype(np.uint8)
    Image.fromarray(low).save(folder / "low.png")
    Image.fromarray(low).resize((300, 200)).save(folder / "low-copy.png")
    _blank_pdf(folder / "book.pdf", photos)
    capsys.readouterr()
    skipped, rows = run_find([folder], tmp_path / "out")

    blank = {Path(k).name: v for k, v in skipped.items() if v.startswith("blank: uniform image")}
    black = "blank: uniform image (6 copies in this run, colour #000000)"  # 3 files + 3 PDF placements
    assert blank == {"black-0.png": black, "black-1.png": black, "black-2.png": black,
                     "book.pdf#page=1&image=2": black, "book.pdf#page=2&image=2": black,
                     "book.pdf#page=3&image=2": black,
                     "empty-scan.jpg": "blank: uniform image (1 copy in this run, colour #ffffff)",
                     "fill.png": blank["fill.png"]}
    fill = re.fullmatch(r"blank: uniform image \(1 copy in this run, colour #(\w{6})\)", blank["fill.png"])
    assert fill and np.abs(np.frombuffer(bytes.fromhex(fill[1]), np.uint8) - np.array([122, 62, 162])).max() <= 4
    assert len(skipped) == len(blank)  # nothing else was skipped ("no features" is not said twice)
    named = {name for pair in pair_names(rows) for name in pair}
    assert not named & set(blank), "a blank image was paired"
    assert PAIR in pair_names(rows) and {"low.png", "low-copy.png"} in pair_names(rows)
    assert {"book.pdf#page=1&image=1", "book.pdf#page=2&image=1"} in pair_names(rows)  # the rocket twice
    groups = json.loads((tmp_path / "out" / "groups.json").read_text())
    members = {Path(m["path"]).name for g in groups["groups"] for m in g["members"]}
    assert members and not members & set(blank)
    assert "(8 of them blank images, not compared)" in capsys.readouterr().out
    page = (tmp_path / "out" / "report.html").read_text()
    assert '"blank":8' in page and "blank: uniform image (6 copies" in page


def test_low_contrast_photos_are_not_blank(photos):
    """The blank test is conservative: every sample photo, cut to a tenth of its contrast, is an image."""
    for name, image in photos.items():
        low = (128 + (image.astype(float) - image.mean()) * 0.1).clip(0, 255).astype(np.uint8)
        assert blank_colour(thumbnail_jpeg(Image.fromarray(low))) is None, name
    assert blank_colour(thumbnail_jpeg(Image.new("RGB", (300, 200), (20, 30, 40)))) == (20, 30, 40)


@pytest.mark.parametrize("with_broken", [False, True])
def test_one_usable_picture_runs_the_default_method(tmp_path, photos, with_broken):
    """One picture (and perhaps a broken file beside it): the keypoint stages have fewer than two pictures to match,
    so their empty pairs carry none of their per-pair fields; the overlap agreement must not read them (the
    default method crashed here: no `alignment`)."""
    (tmp_path / "in").mkdir()
    Image.fromarray(photos["astronaut"]).save(tmp_path / "in" / "photo.jpg")
    if with_broken:
        (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a picture")
    assert find_main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-q"]) == 0
    assert read_csv(tmp_path / "out" / "pairs.csv") == []
    assert ("broken.jpg" in by_name({r["file"]: r["reason"] for r in read_csv(tmp_path / "out" / "skipped.csv")})
            ) == with_broken
