"""benchmarks/chain_probe.py: the collection it builds, and its per-member counts by hand."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import skimage.data as skdata
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.chain_probe import LONG_SIDE, build, member_table  # noqa: E402
from simbench.types import ScoredPairs  # noqa: E402


def _pictures(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for name in ("astronaut", "coffee"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(getattr(skdata, name)()).resize((1200, 900)).save(paths[-1])
    return paths


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_build_makes_groups_of_a_reference_and_its_seeded_copies(tmp_path):
    pictures = _pictures(tmp_path / "pictures")
    build(pictures, tmp_path / "a", "chain2", 3, seed=7)
    labels, truth = _rows(tmp_path / "a" / "labels.csv"), _rows(tmp_path / "a" / "truth.csv")
    assert [r["label"] for r in labels] == ["reference", "chain2", "chain2", "chain2"] * 2
    assert all(len([m for m in r["members"].split("+") if m != "logo"]) == 2 for r in labels if r["label"] == "chain2")
    assert max(Image.open(tmp_path / "a" / labels[0]["path"]).size) == LONG_SIDE
    # Every pair inside a group, none across: 6 per group, 3 of them reference-copy.
    assert len(truth) == 12 and sum(r["label"] == "chain2" for r in truth) == 6
    assert all(r["a"].split("_")[0] == r["b"].split("_")[0] for r in truth)
    assert all(r["a"].endswith("_reference.jpg") == (r["label"] == "chain2") for r in truth)
    build(pictures, tmp_path / "crop", "crop", 1, seed=7)
    assert [r["members"] for r in _rows(tmp_path / "crop" / "labels.csv")][1] in ("crop", "crop+logo")
    build(pictures, tmp_path / "b", "chain2", 3, seed=7)  # the same seed makes the same copies
    assert _rows(tmp_path / "b" / "labels.csv") == labels
    assert all(np.array_equal(np.asarray(Image.open(tmp_path / "a" / r["path"])),
                              np.asarray(Image.open(tmp_path / "b" / r["path"]))) for r in labels)


def test_member_table_counts_reference_copy_pairs_at_the_threshold(tmp_path):
    out = tmp_path / "c"
    (out / "images").mkdir(parents=True)
    names = ["r000_reference.jpg", "r000_0_chain2.jpg", "r000_1_chain2.jpg", "r001_reference.jpg",
             "r001_0_chain2.jpg"]
    with open(out / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "source", "members"), ("images/" + names[0], "reference", "x", ""),
                                 ("images/" + names[1], "chain2", "x", "crop+jpeg"),
                                 ("images/" + names[2], "chain2", "x", "crop+blur+logo"),
                                 ("images/" + names[3], "reference", "y", ""),
                                 ("images/" + names[4], "chain2", "y", "blur+jpeg")])
    items = [SimpleNamespace(display=str(out / "images" / n)) for n in names]
    # Found: r000 with its copy 0 at 0.95, with copy 1 at 0.5 (below), r001's copy not at all; a copy-copy pair and a
    # cross pair do not count. The keypoint stage kept both of r000's reference-copy pairs.
    pairs = ScoredPairs(np.array([0, 0, 1, 0]), np.array([1, 2, 2, 4]), np.array([0.95, 0.5, 0.99, 0.99]))
    kept = ScoredPairs(np.array([0, 0]), np.array([1, 2]), np.array([3.0, 0.2]))
    result = SimpleNamespace(items=items, pairs=SimpleNamespace(as_scored=lambda: pairs), raw={"keypoints": kept})
    assert member_table(out, result, "chain2", 0.93) == [("blur", 0, 1, 2), ("crop", 1, 2, 2), ("jpeg", 1, 1, 2),
                                                         ("logo", 0, 1, 1)]
