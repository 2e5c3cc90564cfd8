"""The school's yearbook (simbench.find.yearbook with SCHOOL_STYLE): PDFs whose every photo carries the same
logo and frame, some placements recoloured and some photos flat, with the truth unchanged.

The checks read the PDFs back with PyMuPDF: the rendered page (what a reader, and find, sees) for logo and
frame, the embedded pixels where the page shows them turned by a few degrees or where colours are compared.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageFilter

from simbench.find import yearbook as yb
from simbench.find.pdf import PdfOptions, is_tiny

SMALL = {"n_pdfs": 2, "n_photos": 6, "n_single": 2, "seed": 5}
LOGO = yb.school_logo()


@pytest.fixture(scope="module")
def source_photos():
    return yb.yearbook_photos()


@pytest.fixture(scope="module")
def school(tmp_path_factory, source_photos):
    out = tmp_path_factory.mktemp("school")
    return out, yb.build_yearbook(out, photos=source_photos, **SMALL, **{**yb.SCHOOL_STYLE, "recolour": 0.4})


@pytest.fixture(scope="module")
def plain(tmp_path_factory, source_photos):
    out = tmp_path_factory.mktemp("plain")
    return out, yb.build_yearbook(out, photos=source_photos, **SMALL)


def layout(placements):
    """What the truth is made of: where each placement is and which photo it shows (PDF names without folder)."""
    return [(p.pdf.rsplit("/", 1)[-1], p.page, p.rect, p.photo, p.how, p.crop) for p in placements]


def page_images(pdf: str):
    """{page number: [(image info, embedded PIL image), ...] in drawing order}."""
    out = {}
    with pymupdf.open(pdf) as doc:
        for page in doc:
            infos = page.get_image_info(xrefs=True)
            out[page.number + 1] = [(info, Image.open(io.BytesIO(doc.extract_image(info["xref"])["image"])))
                                    for info in infos]
    return out


def embedded_window(placements):
    """For each placement, its embedded pixels cut to the window of the photo it shows (photo orientation);
    the first image of every page is the page's logo."""
    images = {pdf: page_images(pdf) for pdf in {p.pdf for p in placements}}
    seen: dict[tuple, int] = {}
    windows = []
    for p in placements:
        k = seen[(p.pdf, p.page)] = seen.get((p.pdf, p.page), 0) + 1
        image = images[p.pdf][p.page][k][1].convert("RGB")
        windows.append(image.crop(p.crop) if "+clip" in p.how else image)
    return windows


def decor_error(view: Image.Image, width_pt: float, part: str) -> float:
    """Mean absolute difference, over the opaque pixels of the school's logo or frame (`part`) drawn for a
    photo of that size, between them and `view` (the placed photo upright, as on the page)."""
    overlay = yb.decoration(view.size, view.width / width_pt, LOGO if part == "logo" else None, part == "frame")
    alpha = np.asarray(overlay.getchannel("A").filter(ImageFilter.MinFilter(3)))  # away from edges
    want = np.asarray(overlay.convert("RGB"), np.float64)
    got = np.asarray(view.convert("RGB"), np.float64)
    return float(np.abs(want - got)[alpha == 255].mean())


def views(placements):
    """Each placement upright as the reader sees it: rendered from the page at the photo's own resolution
    (where the logo and frame were burned in), or, for the ones turned by a few degrees (which fill their
    rectangle only in part), the embedded pixels before turning."""
    windows = embedded_window(placements)
    out = []
    for p, window in zip(placements, windows):
        if p.how.startswith("rotate_small"):
            out.append(window)
            continue
        zoom = (window.height if p.how.startswith("rotate90") else window.width) / (p.rect[2] - p.rect[0])
        with pymupdf.open(p.pdf) as doc:
            pix = doc[p.page - 1].get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=pymupdf.Rect(p.rect))
            out.append(Image.frombytes("RGB", (pix.width, pix.height), pix.samples))
    return out


def test_pdfs_open_and_every_page_shows_its_photos_and_a_tiny_logo(school):
    out, placements = school
    pdfs = sorted(out.glob("yearbook-*.pdf"))
    assert [p.name for p in pdfs] == ["yearbook-1.pdf", "yearbook-2.pdf"]
    for pdf in pdfs:
        for number, images in page_images(str(pdf)).items():
            mine = [p for p in placements if p.pdf == str(pdf) and p.page == number]
            assert len(images) == 1 + len(mine) and 2 <= len(mine) <= 4
            info, logo = images[0]
            assert logo.size == (yb.PAGE_LOGO_PX, yb.PAGE_LOGO_PX)
            assert is_tiny(info, pymupdf.Rect(info["bbox"]), PdfOptions())  # find skips it as an icon
            assert all(not is_tiny(i, pymupdf.Rect(i["bbox"]), PdfOptions()) for i, _ in images[1:])
        with pymupdf.open(pdf) as doc:
            assert doc[0].get_drawings()  # the page frame, as vector graphics
            assert "Northfield High School" in doc[0].get_text()


def test_every_placement_carries_the_logo_and_the_frame(school, plain):
    _, placements = school
    _, bare = plain
    school_views, bare_views = views(placements), views(bare)
    for part in ("logo", "frame"):
        errors = [decor_error(view, p.rect[2] - p.rect[0], part) for p, view in zip(placements, school_views)]
        # 9 to 27 here, from JPEG alone (quality 88, halved chroma, on sharp navy and gold edges; the most
        # on the smallest logos).
        assert max(errors) < 35, (part, errors)
        # The check tells: the same placements without the school's style are far from it (53 or more here).
        bare_errors = [decor_error(view, p.rect[2] - p.rect[0], part) for p, view in zip(bare, bare_views)]
        assert min(bare_errors) > 45, (part, bare_errors)


def test_logo_and_frame_are_never_part_of_the_truth(school, plain):
    _, placements = school
    _, bare = plain
    # The style changes pixels only: the same placements, so the same true pairs, as the plain build.
    assert layout(placements) == layout(bare)
    assert yb.true_pairs(placements) == yb.true_pairs(bare)
    assert yb.true_pairs(placements) == {(i, j) for i, a in enumerate(placements) for j, b in enumerate(placements)
                                         if i < j and a.photo == b.photo}
    # Page logo and page frame lie outside every photo, so no placement found by find can be them.
    logo = pymupdf.Rect(yb.PAGE_LOGO_RECT)
    for p in placements:
        rect = pymupdf.Rect(p.rect)
        assert not rect.intersects(logo)
        assert rect in pymupdf.Rect(22, 22, yb.A4[0] - 22, yb.A4[1] - 22)


def test_recoloured_placements_differ_from_their_twin_in_its_own_colours(tmp_path, source_photos):
    # Without logo and frame, so that two crops of a photo compare pixel for pixel where they overlap.
    placements = yb.build_yearbook(tmp_path, photos=source_photos, **SMALL, recolour=0.4)
    assert sum(p.colour != "original" for p in placements) == round(0.4 * len(placements))
    windows = embedded_window(placements)
    first: dict[int, int] = {}
    recoloured_diffs = []
    for i, p in enumerate(placements):
        if p.photo not in first:
            assert p.colour == "original"  # every photo shows in its own colours first
            first[p.photo] = i
            continue
        j = first[p.photo]
        a, b = _common_pixels(placements[j], windows[j], p, windows[i])
        diff = float(np.abs(a - b).mean())
        if p.colour == "original":
            assert diff < 8, (p, diff)  # JPEG noise only
        else:
            # The twin's pixels recoloured that way are what this placement shows, its own are not.
            expected = np.asarray(yb.recoloured(Image.fromarray(a.astype(np.uint8)), p.colour), np.float64)
            assert np.abs(expected - b).mean() < 0.5 * diff, (p, diff)
            recoloured_diffs.append(diff)
    # A dark photo changes little, whatever the recolouring; on the whole the change is plain to see.
    assert len(recoloured_diffs) >= 3 and np.mean(recoloured_diffs) > 20, recoloured_diffs


def _common_pixels(p: yb.Placement, window: Image.Image, q: yb.Placement, other: Image.Image):
    """The pixels of the part of the photo that both windows show (crops are in the photo's pixels)."""
    x0, y0 = max(p.crop[0], q.crop[0]), max(p.crop[1], q.crop[1])
    x1, y1 = min(p.crop[2], q.crop[2]), min(p.crop[3], q.crop[3])

    def cut(placement, image):
        ox, oy = placement.crop[:2]
        return np.asarray(image.crop((x0 - ox, y0 - oy, x1 - ox, y1 - oy)), np.float64)

    return cut(p, window), cut(q, other)


def test_school_style_counts_and_flat_photos(school, source_photos):
    _, placements = school
    n_photos = SMALL["n_photos"] + SMALL["n_single"]
    assert len({p.photo for p in placements if p.flat}) == round(yb.SCHOOL_STYLE["low_texture"] * n_photos)
    assert {p.colour for p in placements} - {"original"}
    # Flat means flat: far less fine detail than the photo it was made from.
    for photo in source_photos[:5]:
        assert _detail(yb._flatten(photo)) < 0.25 * _detail(photo)


def _detail(image: Image.Image) -> float:
    grey = np.asarray(image.convert("L"), np.float64)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_same_seed_same_yearbook_other_seed_another(tmp_path, school, source_photos):
    out, placements = school
    again = yb.build_yearbook(tmp_path / "again", photos=source_photos, **SMALL, **{**yb.SCHOOL_STYLE, "recolour": 0.4})
    assert layout(again) == layout(placements)
    assert [(p.colour, p.flat) for p in again] == [(p.colour, p.flat) for p in placements]
    for name in ("yearbook-1.pdf", "yearbook-2.pdf"):
        with pymupdf.open(out / name) as a, pymupdf.open(tmp_path / "again" / name) as b:
            assert [p.get_pixmap(dpi=30).samples for p in a] == [p.get_pixmap(dpi=30).samples for p in b]
    other = yb.build_yearbook(tmp_path / "other", photos=source_photos, **{**SMALL, "seed": 6}, **yb.SCHOOL_STYLE)
    assert layout(other) != layout(placements)


def test_any_photos_can_be_passed_in_and_picked_from_a_folder(tmp_path, source_photos):
    folder = tmp_path / "refs"
    (folder / "wallpaper" / "contents" / "images").mkdir(parents=True)
    for k, photo in enumerate(source_photos[:6]):
        photo.save(folder / f"ref-{k}.jpg", quality=90)
    big = source_photos[6].resize((1600, 1200))
    big.save(folder / "wallpaper" / "contents" / "images" / "1600x1200.jpg")
    big.resize((800, 600)).save(folder / "wallpaper" / "contents" / "images" / "800x600.jpg")
    big.resize((160, 120)).save(folder / "wallpaper" / "contents" / "screenshot.png")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")

    picked = yb.photos_from_folder(folder, n=5, seed=1)
    assert len(picked) == 5 and all(max(p.size) <= yb.MAX_PHOTO_SIDE and p.mode == "RGB" for p in picked)
    assert [np.asarray(p).tobytes() for p in picked] == \
        [np.asarray(p).tobytes() for p in yb.photos_from_folder(folder, n=5, seed=1)]
    assert len(yb.photos_from_folder(folder)) == 9  # all that open: 6 refs, 3 sizes of the wallpaper
    per_picture = yb.photos_from_folder(folder, one_per_subfolder=True)
    assert len(per_picture) == 7 and sorted(p.size for p in per_picture)[-1] == (720, 540)  # from 800x600

    # A dataset's references (e.g. a development set split), never its copies of them.
    paths = sorted(folder.glob("ref-*.jpg"))
    dataset = SimpleNamespace(paths=paths, labels=["reference", "crop", "reference", "distractor", "reference", "jpeg"])
    refs = yb.reference_photos(dataset, seed=2)
    assert sorted(np.asarray(p).tobytes() for p in refs) == \
        sorted(np.asarray(p).tobytes() for p in yb.photos_from_paths(paths[::2]))

    placements = yb.build_yearbook(tmp_path / "pdfs", n_pdfs=1, n_photos=4, n_single=1, photos=per_picture,
                                   **yb.SCHOOL_STYLE)
    assert len({p.photo for p in placements}) == 5
    with pytest.raises(ValueError, match="at most 7 distinct photos"):
        yb.build_yearbook(tmp_path / "too-many", n_photos=7, n_single=1, photos=per_picture)


def test_find_sees_each_placement_as_placed_clips_inside_transparency_groups(school, plain):
    """A page with a transparent logo is drawn inside a transparency group: the clipping paths of photos
    cropped by `+clip` nest inside it, and find's visible box must still be the clipped rectangle."""
    from simbench.find.pdf import page_placements

    for out, placements in (school, plain):
        (out / "render").mkdir(exist_ok=True)
        clipped = [p for p in placements if p.how.endswith("+clip")]
        assert clipped  # the seed places some photos through a clipping path
        for pdf in sorted({p.pdf for p in placements}):
            with pymupdf.open(pdf) as doc:
                for page in doc:
                    found, _, _ = page_placements(doc, page.number, pdf, out / "render", PdfOptions())
                    boxes = [tuple(float(v) for v in f.bbox.split()) for f in found]
                    mine = [p for p in placements if p.pdf == pdf and p.page == page.number + 1]
                    assert len(boxes) == len(mine)
                    for p in mine:
                        assert max(yb._iou(p.rect, b) for b in boxes) > 0.9, (p.how, p.rect, boxes)  # rotated: within rect


def test_a_window_showing_only_a_plain_field_is_content_free_whatever_the_edits(tmp_path, source_photos):
    """Each placement's detail is measured on its window of the photo as chosen: a plain photo's placements are
    content-free, a textured photo's are not, even flattened (every photo here is: low_texture=1)."""
    from simbench.data.devset import MIN_DETAIL, detail

    photos = [*source_photos[:5], Image.new("RGB", (400, 300), (250, 250, 245))]
    placements = yb.build_yearbook(tmp_path, n_pdfs=1, n_photos=4, n_single=2, seed=3, photos=photos,
                                   low_texture=1.0)
    free = {p.photo for p in placements if yb.content_free(p)}
    assert len(free) == 1  # the plain photo, wherever the permutation put it
    assert all(yb.content_free(p) == (p.photo in free) for p in placements)
    assert all(p.flat for p in placements)
    assert min(p.detail for p in placements if p.photo not in free) >= MIN_DETAIL
    # measured on the window of the photo as passed in, not of the flattened one placed (which has less detail)
    chosen = {p.photo: photo for p in placements for photo in photos
              if p.photo not in free and detail(photo.crop(p.crop)) == p.detail}
    assert len(chosen) == len({p.photo for p in placements}) - 1
    assert all(detail(yb._flatten(chosen[p.photo]).crop(p.crop)) < p.detail for p in placements if p.photo in chosen)


def test_pairs_with_a_content_free_placement_count_neither_way():
    a, b, c = (yb.Placement("y.pdf", page, (0, 0, 100, 100), 0, "crop", detail=d) for page, d in ((1, 9.0), (2, 1.0),
                                                                                               (3, 9.0)))
    d = yb.Placement("y.pdf", 4, (0, 0, 100, 100), 1, "crop", detail=4.0)
    placements = [a, b, c, d]
    assert yb.scored_truth(placements) == ({(0, 2)}, {1})
    assert yb.scored_truth(placements, every_placement=True) == (yb.true_pairs(placements), set())
    assert yb.content_free(b) and not yb.content_free(yb.Placement("y.pdf", 5, (0, 0, 1, 1), 2, "crop"))  # NaN: counts

    def row(i, j):
        return {"a_source": "y.pdf", "a_page": i + 1, "a_bbox": "0 0 100 100",
                "b_source": "y.pdf", "b_page": j + 1, "b_bbox": "0 0 100 100", "score": 0.99}

    rows = [row(0, 1), row(0, 2), row(1, 3), row(2, 3)]  # true (left out), true, false (left out), false
    scored = yb.score_found_pairs(placements, rows, 0.95)
    assert (scored["found"], scored["false"], scored["true_pairs"], scored["left_out"]) == (1, 1, 1, 2)
    every = yb.score_found_pairs(placements, rows, 0.95, every_placement=True)
    assert (every["found"], every["false"], every["true_pairs"], every["left_out"]) == (2, 2, 3, 0)
