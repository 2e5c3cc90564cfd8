"""The Python API (simbench.hash / find / compare) on images in memory (PIL and numpy) and on files.

Hashes are checked bit for bit against ImageHash itself (the reference); find's objects against the
pairs.csv the same run writes; compare against find on the same two images.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import imagehash
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simbench
from simbench.api import HASH_ALIASES

#: simbench's name -> ImageHash's function, each with default arguments.
REFERENCE = {"ahash": imagehash.average_hash, "phash": imagehash.phash, "phash_simple": imagehash.phash_simple,
             "dhash": imagehash.dhash, "dhash_vertical": imagehash.dhash_vertical,
             "whash_haar": imagehash.whash, "whash_db4": lambda im: imagehash.whash(im, mode="db4"),
             "colorhash": imagehash.colorhash}


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(photos):
    rng = np.random.default_rng(5)
    return {"astronaut": Image.fromarray(photos["astronaut"]),
            "coffee grey": Image.fromarray(photos["coffee"]).convert("L"),
            "noise": Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))}


@pytest.mark.parametrize("algorithm", list(REFERENCE))
def test_hash_equals_imagehash_on_pil_images_and_arrays(images, algorithm):
    for name, image in images.items():
        expected = REFERENCE[algorithm](image)
        got = simbench.hash(image, algorithm)
        assert str(got) == str(expected), (name, algorithm)
        assert got - expected == 0 and got == expected
        assert len(got) == expected.hash.size
        assert simbench.hash(np.asarray(image), algorithm) == got  # the same pixels as an array
    a, b = images["astronaut"], images["noise"]
    distance = REFERENCE[algorithm](a) - REFERENCE[algorithm](b)
    assert simbench.hash(a, algorithm) - simbench.hash(b, algorithm) == distance > 0


def test_hash_of_a_file_equals_the_image_in_memory(tmp_path, images):
    path = tmp_path / "astronaut.png"
    images["astronaut"].save(path)
    for algorithm in ("phash", "dhash", "whash_haar", "colorhash"):
        in_memory = simbench.hash(images["astronaut"], algorithm)
        assert simbench.hash(path, algorithm) == in_memory == REFERENCE[algorithm](Image.open(path))
        assert simbench.hash(str(path), algorithm) == in_memory
        # find's fast path (compat=False): a PNG has no reduced-size decode, so a file and its pixels agree
        assert simbench.hash(path, algorithm, compat=False) == simbench.hash(images["astronaut"], algorithm,
                                                                             compat=False)


def test_hash_options_names_and_errors(tmp_path, images):
    image = images["astronaut"]
    assert str(simbench.hash(image, "phash", hash_size=16)) == str(imagehash.phash(image, hash_size=16))
    assert str(simbench.hash(image, "colorhash", binbits=4)) == str(imagehash.colorhash(image, binbits=4))
    assert simbench.hash(image, "average_hash") == simbench.hash(image, "ahash")  # ImageHash's names work too
    assert HASH_ALIASES["whash"] == "whash_haar"
    floats = np.asarray(image, np.float64) / 255.0  # floats in 0..1
    assert simbench.hash(floats, "phash") - simbench.hash(image, "phash") <= 2
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        simbench.hash(image, "md5")
    with pytest.raises(ValueError, match="not an image"):
        simbench.hash(np.zeros((4, 4, 7)), "phash")
    (tmp_path / "notes.png").write_text("not a picture\n")
    with pytest.raises(ValueError, match="notes.png: not an image"):
        simbench.hash(tmp_path / "notes.png", "phash")
    with pytest.raises(TypeError):
        _ = simbench.hash(image, "phash") - simbench.hash(image, "phash", hash_size=16)
    h = simbench.hash(image, "dhash")
    assert {h: 1}[simbench.hash(np.asarray(image), "dhash")] == 1  # hashable, equal hashes one key
    from simbench.types import unpack_bits

    assert (unpack_bits(h.words[None], len(h))[0] == h.bits).all()


def test_import_is_light():
    code = ("import sys, simbench; heavy = [m for m in ('numpy', 'PIL', 'simbench.api', 'hydra', 'torch') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# find and compare on images in memory


@pytest.fixture(scope="module")
def collection(photos):
    """A photo (PIL), its crop (numpy), an unrelated photo (PIL)."""
    rocket = photos["rocket"]
    return [Image.fromarray(rocket), np.ascontiguousarray(rocket[40:380, 80:560]), Image.fromarray(photos["coins"])]


def test_find_on_images_in_memory(tmp_path, collection):
    found = simbench.find(collection, method="keypoints", threshold=0.5, out=tmp_path / "out")
    assert [(p.a, p.b, p.method) for p in found.pairs] == [("<image 0>", "<image 1>", "keypoints")]
    pair = found.pairs[0]
    assert 0.5 <= pair.score <= 1 and pair.calibrated and pair.stages["keypoints"] == pytest.approx(pair.score)
    assert pair.a_page is None and Path(pair.a_source).is_file()  # a temporary PNG, kept while `found` lives
    assert [(g.members, g.pairs) for g in found.groups] == [(["<image 0>", "<image 1>"], [pair])]
    assert found.evidence(pair)["keypoints"]["inliers"] >= 5
    # The objects are what the run's pairs.csv says, and to_csv / report write the same files.
    rows = read_csv(tmp_path / "out" / "pairs.csv")
    assert [(r["a"], r["b"], float(r["score"]), r["method"]) for r in rows] == \
        [(p.a, p.b, pytest.approx(p.score, abs=1e-6), p.method) for p in found.pairs]
    found.to_csv(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "out" / "pairs.csv").read_bytes()
    found.report(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)[1])
    # The page names them as the pairs do, and shows them large with the matches drawn (read from the PNGs).
    assert [item["d"] for item in data["items"]] == ["<image 0>", "<image 1>"]
    assert all(item.get("v", "").startswith("data:image/jpeg") for item in data["items"])
    assert "3 images found, 0 skipped, 1 pairs, 1 duplicate groups at threshold 0.5" in repr(found)


def test_find_settings_and_errors(tmp_path, collection, photos):
    Image.fromarray(photos["rocket"]).save(tmp_path / "rocket.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    found = simbench.find([tmp_path, collection[1]], method="hash", link=False, settings={"min_score": 0.2})
    assert found.result.config.link is False and found.result.config.min_score == 0.2
    assert [s.path for s in found.skipped if "broken" in s.path]  # a bad file is skipped with its reason
    with pytest.raises(simbench.api.SettingsError, match="unknown setting"):
        simbench.find([tmp_path], method="hash", no_such_setting=1)
    with pytest.raises(simbench.api.SettingsError, match="unknown method"):
        simbench.find([tmp_path], method="nope")


def test_compare_equals_find_on_the_two(collection):
    a, b, other = collection
    same = simbench.compare(a, b, method="keypoints")
    found = simbench.find([a, b], method="keypoints", min_score=0.0)
    assert same.score == pytest.approx(found.pairs[0].score) and same.method == found.pairs[0].method
    assert same.duplicate == (same.score >= same.threshold) and same.threshold == 0.93  # conf/find.yaml
    assert same.raw["keypoints"] > 0 and same.stages["keypoints"] == pytest.approx(same.score)
    assert same.evidence["keypoints"]["inliers"] >= 5  # the verified matches, as the report draws them
    unrelated = simbench.compare(a, other, method="keypoints")
    assert unrelated.score < 0.5 and not unrelated.duplicate
    with pytest.raises(ValueError, match="not an image"):
        simbench.compare(a, np.zeros((3, 3, 9)))


def test_compare_names_the_image_it_cannot_use(tmp_path, collection):
    (tmp_path / "notes.png").write_text("not a picture\n")
    with pytest.raises(ValueError, match="notes.png: not an image"):
        simbench.compare(collection[0], tmp_path / "notes.png", method="hash")
    Image.fromarray(np.asarray(collection[1])).save(tmp_path / "crop.png")
    with pytest.raises(ValueError, match="the same file twice"):
        simbench.compare(tmp_path / "crop.png", tmp_path / "crop.png")


def test_the_command_line_runs_through_the_api(tmp_path, collection, monkeypatch):
    from simbench import api
    from simbench.cli import find_main

    calls = []
    original = api.find
    monkeypatch.setattr(api, "find", lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    for k, image in enumerate(collection):
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(tmp_path / f"{k}.png")
    assert find_main([str(tmp_path), "--out", str(tmp_path / "out"), "--method", "keypoints", "-q",
                      "threshold=0.5"]) == 0
    assert len(calls) == 1 and calls[0]["out"] == str(tmp_path / "out")
    assert len(read_csv(tmp_path / "out" / "pairs.csv")) == 1
