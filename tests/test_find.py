"""`simbench find` as a user runs it: real PDFs built with PyMuPDF, real photos, the command line.

The yearbook fixture places scikit-image photos cropped, scaled and rotated (by 90 degrees and by a few)
on several pages of two PDFs, some cropped by a clipping path, and checks every found pair against where
the photos were placed. The other tests cover exact reuse of one embedded image, bad inputs, the
incremental --index, and the pieces with arithmetic of their own (calibration, linking, groups).
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pymupdf

from simbench.cli import find_main  # noqa: E402
from simbench.find import cascade, outputs  # noqa: E402
from simbench.find.yearbook import build_yearbook, match_placement, score_found_pairs, true_pairs  # noqa: E402


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# The default method on a small yearbook, through the command line


@pytest.fixture(scope="module")
def yearbook_run(tmp_path_factory):
    """2 PDFs, 5 photos placed 2-3 times each plus 2 placed once; `simbench find PDFS --out OUT`."""
    root = tmp_path_factory.mktemp("yearbook")
    placements = build_yearbook(root / "pdfs", n_pdfs=2, n_photos=5, n_single=2, seed=3)
    out = root / "out"
    assert find_main([str(root / "pdfs"), "--out", str(out), "--quiet"]) == 0
    return placements, out


def test_yearbook_pairs_are_where_the_photos_were_placed(yearbook_run):
    placements, out = yearbook_run
    rows = read_csv(out / "pairs.csv")
    result = score_found_pairs(placements, rows, cascade.make_config().threshold)
    # Every pair called a duplicate is two placements of one photo; (nearly) every such pair is found.
    assert result["false"] == 0, result
    assert result["recall"] >= 0.85, result
    assert result["true_pairs"] == len(true_pairs(placements)) >= 5


def test_yearbook_provenance_columns(yearbook_run):
    placements, out = yearbook_run
    rows = read_csv(out / "pairs.csv")
    assert rows and list(rows[0]) == list(outputs.PAIR_COLUMNS)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for r in rows:
        for side in "ab":
            source, page, bbox = r[f"{side}_source"], int(r[f"{side}_page"]), r[f"{side}_bbox"]
            # a = "<pdf>#page=<page>&image=<n>", consistent with the provenance columns.
            assert re.fullmatch(re.escape(source) + rf"#page={page}&image=\d+", r[side])
            x0, y0, x1, y1 = map(float, bbox.split())
            assert 0 <= x0 < x1 <= 595 and 0 <= y0 < y1 <= 842
            assert match_placement(placements, source, page, bbox) is not None


def test_yearbook_groups_skipped_and_report(yearbook_run):
    placements, out = yearbook_run
    groups = json.loads((out / "groups.json").read_text())
    threshold = groups["threshold"]
    # Groups are the union-find components of the pairs scoring >= threshold.
    rows = [r for r in read_csv(out / "pairs.csv") if float(r["score"]) >= threshold]
    names = sorted({r[s] for r in rows for s in "ab"})
    pos = {n: k for k, n in enumerate(names)}
    expected = outputs.union_find_groups(len(names), np.array([pos[r["a"]] for r in rows]),
                                         np.array([pos[r["b"]] for r in rows]))
    got = sorted(sorted(m["path"] for m in g["members"]) for g in groups["groups"])
    assert got == sorted(sorted(names[k] for k in g) for g in expected)
    best = [g["best_score"] for g in groups["groups"]]
    assert best == sorted(best, reverse=True)
    # The 20 x 20 px logo on every page is skipped as tiny, with its page.
    skipped = read_csv(out / "skipped.csv")
    tiny = [s for s in skipped if s["reason"].startswith("tiny image")]
    n_pages = sum(pymupdf.open(p).page_count for p in sorted((out.parent / "pdfs").glob("*.pdf")))
    assert len(tiny) == n_pages and all("#page=" in s["file"] for s in tiny)
    page = (out / "report.html").read_text()
    assert "data:image/jpeg;base64," in page
    assert not re.search(r"""(src|href)=["']?https?:""", page)  # self-contained: nothing fetched


# ---------------------------------------------------------------------------------------------------
# Exact reuse, clipping, bad input


def test_one_image_drawn_on_two_pages_is_a_pair(tmp_path, photos):
    doc = pymupdf.open()
    data, other = jpeg_bytes(photos["astronaut"]), jpeg_bytes(photos["coffee"])
    first, second = pymupdf.Rect(60, 80, 300, 320), pymupdf.Rect(200, 400, 440, 640)
    page = doc.new_page()
    page.insert_image(first, stream=data)
    page = doc.new_page()
    page.insert_image(second, stream=data)  # the same embedded image, drawn again
    page.insert_image(pymupdf.Rect(60, 60, 180, 160), stream=other)
    doc.save(tmp_path / "book.pdf")
    out = tmp_path / "out"
    assert find_main([str(tmp_path / "book.pdf"), "--out", str(out), "--method", "keypoints", "-q"]) == 0
    rows = read_csv(out / "pairs.csv")
    same = [r for r in rows if r["method"] == "identical"]
    assert len(same) == 1 and float(same[0]["score"]) == 1.0
    r = same[0]
    assert (r["a_page"], r["b_page"]) == ("1", "2")
    assert [float(v) for v in r["a_bbox"].split()] == pytest.approx(list(first), abs=0.05)
    assert [float(v) for v in r["b_bbox"].split()] == pytest.approx(list(second), abs=0.05)


def test_clipped_placement_reports_the_visible_box(tmp_path, photos):
    """A photo drawn through a clipping path (a layout program's crop) is reported, and compared, as the
    part that shows, not as the whole image box that reaches under the neighbouring photo."""
    from simbench.find.pdf import PdfOptions, extract_pdf

    src = pymupdf.open()
    src_page = src.new_page(width=512, height=512)
    src_page.insert_image(src_page.rect, stream=jpeg_bytes(photos["astronaut"]))
    doc = pymupdf.open()
    page = doc.new_page()
    target = pymupdf.Rect(100, 100, 300, 300)
    page.show_pdf_page(target, src, 0, clip=pymupdf.Rect(100, 100, 400, 400))  # the middle of the photo
    doc.save(tmp_path / "clip.pdf")
    placements, skipped = extract_pdf(tmp_path / "clip.pdf", tmp_path / "work", PdfOptions())
    assert not skipped and len(placements) == 1
    assert [float(v) for v in placements[0].bbox.split()] == pytest.approx(list(target), abs=0.5)
    rendered = np.asarray(Image.open(placements[0].image_path).convert("RGB"), np.float64)
    expected = np.asarray(Image.fromarray(photos["astronaut"][100:400, 100:400]).resize(rendered.shape[1::-1]),
                          np.float64)
    assert np.abs(rendered - expected).mean() < 12  # the crop, at the image's own resolution


def test_bad_inputs_are_listed_and_the_rest_is_processed(tmp_path, photos):
    folder = tmp_path / "in"
    folder.mkdir()
    coffee = photos["coffee"]
    Image.fromarray(coffee).save(folder / "coffee.jpg", quality=92)
    Image.fromarray(coffee[40:360, 60:520]).save(folder / "coffee-crop.jpg", quality=85)
    (folder / "truncated.jpg").write_bytes((folder / "coffee.jpg").read_bytes()[:3000])
    (folder / "notes.jpg").write_text("not a picture at all\n")
    (folder / "readme.txt").write_text("hello\n")
    (folder / "garbage.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    text_only = pymupdf.open()
    text_only.new_page().insert_text((72, 72), "No pictures here.")
    text_only.save(folder / "text-only.pdf")
    locked = pymupdf.open()
    locked.new_page().insert_image(pymupdf.Rect(50, 50, 300, 300), stream=jpeg_bytes(coffee))
    locked.save(folder / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")
    out = tmp_path / "out"
    assert find_main([str(folder), "--out", str(out), "--method", "keypoints", "-q"]) == 0
    reasons = {Path(r["file"]).name: r["reason"] for r in read_csv(out / "skipped.csv")}
    assert "encrypted" in reasons["locked.pdf"]
    assert "not a readable PDF" in reasons["garbage.pdf"] or "no pages" in reasons["garbage.pdf"]
    assert reasons["text-only.pdf"] == "no images in this PDF"
    assert reasons["truncated.jpg"].startswith(("truncated image", "corrupt image"))
    assert reasons["notes.jpg"].startswith("not an image")
    assert "readme.txt" in reasons
    rows = read_csv(out / "pairs.csv")
    assert [{Path(r["a"]).name, Path(r["b"]).name} for r in rows] == [{"coffee.jpg", "coffee-crop.jpg"}]
    assert rows[0]["a_page"] == "" and rows[0]["method"] == "keypoints"
    assert "locked.pdf" in (out / "report.html").read_text()  # skipped files are in the report too


# ---------------------------------------------------------------------------------------------------
# --index: a later run extracts only what is new


def test_index_extracts_only_new_files(tmp_path, photos, monkeypatch):
    from simbench.features.keypoints import KeypointExtractor

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "rocket", "coins"):
        Image.fromarray(photos[name]).save(folder / f"{name}.jpg", quality=90)
    index, out = tmp_path / "index", tmp_path / "out"
    extracted: list[list[str]] = []
    original = KeypointExtractor.extract

    def spy(self, paths, progress=False):
        extracted.append([Path(p).name for p in paths])
        return original(self, paths, progress)

    monkeypatch.setattr(KeypointExtractor, "extract", spy)
    args = [str(folder), "--out", str(out), "--method", "keypoints", "--index", str(index), "-q"]
    assert find_main(args) == 0
    assert sorted(extracted[-1]) == ["astronaut.jpg", "coins.jpg", "rocket.jpg"]
    assert read_csv(out / "pairs.csv") == []
    # Later: a new file, a crop of an indexed one; and an indexed one moved to a subfolder.
    Image.fromarray(photos["rocket"][50:400, 100:600]).save(folder / "rocket-crop.jpg", quality=90)
    (folder / "old").mkdir()
    (folder / "coins.jpg").rename(folder / "old" / "coins.jpg")
    assert find_main(args) == 0
    assert extracted[-1] == ["rocket-crop.jpg"]  # only the new file was read
    pairs = [{Path(r["a"]).name, Path(r["b"]).name} for r in read_csv(out / "pairs.csv")]
    assert pairs == [{"rocket.jpg", "rocket-crop.jpg"}]
    # Nothing new: nothing extracted at all.
    assert find_main(args) == 0
    assert len(extracted) == 2


def test_help_is_clear(capsys):
    with pytest.raises(SystemExit) as exit_info:
        find_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--out", "--index", "--method", "pairs.csv", "groups.json", "skipped.csv", "report.html",
                 "threshold"):
        assert word in text


# ---------------------------------------------------------------------------------------------------
# Calibration, fusion, linking, groups


def test_fuse_keeps_the_best_stage_and_link_scores_chains():
    from simbench.types import ScoredPairs

    evidence = {"keypoints": ScoredPairs(np.array([0, 1]), np.array([1, 2]), np.array([0.9, 0.8])),
                "cnn": ScoredPairs(np.array([1, 3]), np.array([0, 4]), np.array([0.95, 0.3]))}
    fused = cascade.fuse(5, evidence)
    got = {(int(a), int(b)): (round(float(s), 3), m) for a, b, s, m in zip(fused.a, fused.b, fused.score, fused.method)}
    assert got == {(0, 1): (0.95, "cnn"), (1, 2): (0.8, "keypoints"), (3, 4): (0.3, "cnn")}
    linked = cascade.link(fused, 5, floor=0.5, max_group=10)  # find's default rule: product
    got = {(int(a), int(b)): (round(float(s), 3), m) for a, b, s, m in zip(linked.a, linked.b, linked.score, linked.method)}
    assert got[(0, 2)] == (round(0.95 * 0.8, 3), "linked")  # 0 ~ 1 ~ 2: product along the chain
    weakest = cascade.link(fused, 5, floor=0.5, max_group=10, rule="weakest")
    assert (weakest.a.tolist(), weakest.b.tolist()) == (linked.a.tolist(), linked.b.tolist())
    assert weakest.score[(weakest.a == 0) & (weakest.b == 2)].tolist() == [0.8]  # its weakest pair
    with pytest.raises(ValueError, match="link_score"):
        cascade.link(fused, 5, floor=0.5, max_group=10, rule="mean")
    assert (3, 4) in got and len(got) == 4  # below the floor: kept, but links nothing
    assert cascade.link(fused, 5, floor=0.5, max_group=2).a.tolist() == fused.a.tolist()


def test_union_find_groups():
    groups = outputs.union_find_groups(7, np.array([0, 2, 5, 1]), np.array([1, 3, 6, 3]))
    assert sorted(groups) == [[0, 1, 2, 3], [5, 6]]


def test_overrides_and_bad_overrides():
    cfg = cascade.make_config("keypoints", ["threshold=0.8", "keypoints.extractor.max_features=300"])
    assert cfg.method == "keypoints" and cfg.threshold == 0.8 and cfg.keypoints.extractor.max_features == 300
    with pytest.raises(ValueError):
        cascade.make_config("nope")
    assert cascade.make_config(None, ["link_score=weakest"]).link_score == "weakest"
    with pytest.raises(ValueError, match="unknown link_score 'mean'"):
        cascade.make_config(None, ["link_score=mean"])


@pytest.mark.parametrize("degrees, page_rotation", [(5, 0), (-7, 0), (93, 0), (5, 90)])
def test_a_placement_turned_by_a_few_degrees_renders_upright_when_asked(tmp_path, degrees, page_rotation):
    """pdf.upright_below: a photo drawn turned by a few degrees from a right angle (a rotated form XObject, as
    layout programs and the yearbook builder draw it) renders with white page corners as the reader sees it (0), and
    upright without them (the default), keyed apart in the index."""
    from simbench.find.pdf import PdfOptions, extract_pdf
    from simbench.find.pipeline import sources_key
    from simbench.find.yearbook import _source_page

    photo = Image.new("RGB", (400, 300), (40, 90, 160))
    doc = pymupdf.open()
    page = doc.new_page(width=600, height=600)
    page.show_pdf_page(pymupdf.Rect(100, 100, 500, 400), _source_page(photo), 0, rotate=degrees)
    page.set_rotation(page_rotation)  # a page shown turned (/Rotate): the rendering is turned with it
    doc.save(tmp_path / "turned.pdf")

    def corners(options):
        placements, _ = extract_pdf(tmp_path / "turned.pdf", tmp_path / f"work{options.upright_below}", options)
        grey = np.asarray(Image.open(placements[0].image_path).convert("L"), np.float64)
        return grey, [grey[2, 2], grey[2, -3], grey[-3, 2], grey[-3, -3]]

    seen, seen_corners = corners(PdfOptions(upright_below=0))
    assert max(seen_corners) > 200  # the page shows in the corners of the turned photo's box
    up, up_corners = corners(PdfOptions(upright_below=20))
    assert max(up_corners) < 150 and up.size < seen.size  # the photo's own box: its colour to the corners
    assert sources_key(PdfOptions(upright_below=0)) != sources_key(PdfOptions(upright_below=20))
    assert PdfOptions().upright_below == 20  # the default since run (70)
