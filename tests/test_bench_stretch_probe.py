"""benchmarks/stretch_probe.py: which copies it looks at, and a squashed copy held only by the stretched look."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import skimage.data as skdata
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stretch_probe import copies_with, main  # noqa: E402


def _collection(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    photo = Image.fromarray(skdata.astronaut())
    photo.save(folder / "images" / "r000_reference.jpg", quality=90)
    photo.resize((333, 512), Image.Resampling.LANCZOS).save(folder / "images" / "r000_0_chain3.jpg", quality=90)
    photo.rotate(90).save(folder / "images" / "r000_1_chain3.jpg", quality=90)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source", "members"])
        w.writerow(["images/r000_reference.jpg", "reference", "a.jpg", ""])
        w.writerow(["images/r000_0_chain3.jpg", "chain3", "a.jpg", "blur+aspect+jpeg"])
        w.writerow(["images/r000_1_chain3.jpg", "chain3", "a.jpg", "rotate90+jpeg+blur"])


def test_the_copies_with_a_member_and_a_squashed_one_held_only_stretched(tmp_path, capsys):
    _collection(tmp_path)
    assert copies_with(tmp_path, "aspect") == [("r000_reference.jpg", "r000_0_chain3.jpg")]
    assert copies_with(tmp_path, "rotate90") == [("r000_reference.jpg", "r000_1_chain3.jpg")]
    main([str(tmp_path)])
    assert capsys.readouterr().out.strip().endswith("1 pairs aligned at 0.97 or more: 0 as it is, 1 as find runs it")
    main([str(tmp_path), "align.method.stretch_below=null"])  # find without the stretched look
    assert capsys.readouterr().out.strip().endswith("0 as it is, 0 as find runs it")
