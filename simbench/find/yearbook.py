"""A synthetic yearbook: PDFs whose pages reuse photos cropped, scaled and rotated, with known placements.

Built like the yearbook editor's problem (DESIGN.md): each photo is placed 2 to 3 times over the pages of
several PDFs, 2 to 4 photos a page, each placement cropped to 50-90% of the width and height, at its own
size, some rotated by 90 degrees or by a few degrees; a few photos appear once (they must not be paired).
Crops are made two ways, as layout programs do: most by embedding the cropped pixels, some by drawing the
whole photo through a clipping rectangle (PyMuPDF's show_pdf_page with clip). Small rotations also go
through show_pdf_page (a rotated form XObject), right angles through insert_image(rotate=...). Every page
also carries a caption per photo and a small logo (a tiny image that find must skip).

Crops always keep the photo's central 20% (its subject), so any two placements of a photo share a
region; how much varies (from a sixth of the smaller crop up to all of it).

Photos are scikit-image's sample photographs (offline), whole or cut into non-overlapping halves and
quadrants where they are large: 20 distinct pictures of 300 to 720 pixels.
`build_yearbook` returns every placement with its page and rectangle; `true_pairs` gives the pairs of
placements of the same photo.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from simbench.data.synthetic import load_photo

A4 = (595.0, 842.0)
MARGIN = 40.0


@dataclass(frozen=True)
class Placement:
    """Photo `photo` drawn on `page` (1-based) of `pdf`, inside `rect` (x0, y0, x1, y1, points)."""

    pdf: str
    page: int
    rect: tuple[float, float, float, float]
    photo: int
    how: str  # "crop", "rotate90" or "rotate_small", "+clip" when cropped by a clipping path
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # the window of the photo shown, in its pixels


#: Whole photographs; and large ones cut into parts (cols, rows) that share no pixel.
WHOLE = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "immunohistochemistry", "moon", "cell",
         "clock")
PARTS = (("motorcycle", 2, 1), ("hubble_deep_field", 2, 2), ("retina", 2, 2))
MAX_PHOTO_SIDE = 720


def yearbook_photos() -> list[Image.Image]:
    """The 20 distinct photos, long side at most MAX_PHOTO_SIDE."""
    photos = [Image.fromarray(load_photo(name)) for name in WHOLE]
    for name, cols, rows in PARTS:
        image = Image.fromarray(load_photo(name))
        w, h = image.width // cols, image.height // rows
        photos += [image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(rows) for c in range(cols)]
    for photo in photos:
        photo.thumbnail((MAX_PHOTO_SIDE, MAX_PHOTO_SIDE), Image.Resampling.LANCZOS)
    return photos


def build_yearbook(out_dir: str | Path, n_pdfs: int = 3, n_photos: int = 16, n_single: int = 4,
                   seed: int = 0) -> list[Placement]:
    """Write yearbook-1.pdf ... into out_dir; return every placement of a photo.

    n_photos photos are placed 2 or 3 times, n_single more once (n_photos + n_single <= 20).
    """
    import pymupdf

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    available = yearbook_photos()
    if n_photos + n_single > len(available):
        raise ValueError(f"at most {len(available)} distinct photos, {n_photos + n_single} asked for")
    photos = [available[k] for k in rng.permutation(len(available))[: n_photos + n_single]]
    uses = [int(rng.integers(2, 4)) for _ in range(n_photos)] + [1] * n_single
    slots = [p for p, n in enumerate(uses) for _ in range(n)]
    slots = _spread(slots, rng)
    pages = _paginate(slots, rng)
    docs = [pymupdf.open() for _ in range(n_pdfs)]
    logo = _logo_png()
    placements = []
    for k, photos_on_page in enumerate(pages):
        d = k % n_pdfs
        doc = docs[d]
        page = doc.new_page(width=A4[0], height=A4[1])
        name = str(out_dir / f"yearbook-{d + 1}.pdf")
        page.insert_image(pymupdf.Rect(A4[0] - 50, 15, A4[0] - 30, 35), stream=logo)  # 20 x 20 px icon
        for cell, p in zip(_cells(len(photos_on_page)), photos_on_page):
            rect, how, crop = _place(page, photos[p], cell, rng)
            placements.append(Placement(name, doc.page_count, rect, p, how, crop))
    for d, doc in enumerate(docs):
        doc.save(out_dir / f"yearbook-{d + 1}.pdf", garbage=3, deflate=True)
        doc.close()
    return placements


def true_pairs(placements: list[Placement]) -> set[tuple[int, int]]:
    """Index pairs (i < j) of placements showing the same photo."""
    by_photo: dict[int, list[int]] = {}
    for i, p in enumerate(placements):
        by_photo.setdefault(p.photo, []).append(i)
    return {pair for group in by_photo.values() for pair in itertools.combinations(group, 2)}


def _spread(slots: list[int], rng) -> list[int]:
    """Shuffle so that two placements of one photo rarely share a page."""
    order = list(rng.permutation(len(slots)))
    return [slots[k] for k in order]


def _paginate(slots: list[int], rng) -> list[list[int]]:
    """Pages of 2 to 4 photos; a photo is not placed twice on one page (pushed to the next instead)."""
    pages, rest = [], list(slots)
    while rest:
        want = int(rng.integers(2, 5))
        page, keep = [], []
        for p in rest:
            if len(page) < want and p not in page:
                page.append(p)
            else:
                keep.append(p)
        pages.append(page)
        rest = keep
    return pages


def _cells(n: int) -> list[tuple[float, float, float, float]]:
    """n cells of a 2 x 2 grid (or 1 x 2 for two photos), each leaving room for a caption."""
    w, h = A4[0] - 2 * MARGIN, A4[1] - 2 * MARGIN - 20
    rows = 1 if n <= 2 else 2
    cells = []
    for k in range(n):
        r, c = (k // 2, k % 2)
        if n == 2:
            r, c = k, 0
            cw, ch = w, h / 2
        else:
            cw, ch = w / 2, h / rows
        cells.append((MARGIN + c * cw, MARGIN + 20 + r * ch, MARGIN + (c + 1) * cw, MARGIN + 20 + (r + 1) * ch))
    return cells


def _place(page, photo: Image.Image, cell, rng) -> tuple[tuple, str, tuple]:
    """Draw one placement of `photo` in `cell`: crop, size, rotation drawn at random.

    Returns (rect, how, crop)."""
    import pymupdf

    x0, y0, x1, y1 = cell
    crop = _crop_box(photo.size, rng)
    by_clip = rng.random() < 0.3
    turn = rng.random()
    rotate90 = int(rng.choice([90, 270])) if turn < 0.25 else 0
    small = float(rng.uniform(2, 8) * rng.choice([-1, 1])) if 0.25 <= turn < 0.5 else 0.0
    cw, ch = crop[2] - crop[0], crop[3] - crop[1]
    if rotate90:
        cw, ch = ch, cw
    # Size: 55-95% of the cell (less 22 pt for the caption), keeping the crop's aspect ratio.
    room_w, room_h = (x1 - x0) - 10, (y1 - y0) - 32
    scale = min(room_w / cw, room_h / ch) * float(rng.uniform(0.55, 0.95))
    w, h = cw * scale, ch * scale
    left, top = x0 + 5 + (room_w - w) * float(rng.random()), y0 + 5 + (room_h - h) * float(rng.random())
    rect = pymupdf.Rect(left, top, left + w, top + h)
    if by_clip or small:
        src = _source_page(photo if by_clip else photo.crop(crop))
        clip = pymupdf.Rect(crop) if by_clip else None
        page.show_pdf_page(rect, src, 0, clip=clip, rotate=small + rotate90)
    else:
        page.insert_image(rect, stream=_jpeg(photo.crop(crop)), rotate=rotate90)
    page.insert_text((rect.x0, rect.y1 + 14), f"Photo {int(rng.integers(1000))}", fontsize=9)
    how = ("rotate90" if rotate90 else "rotate_small" if small else "crop") + ("+clip" if by_clip else "")
    return (rect.x0, rect.y0, rect.x1, rect.y1), how, crop


def _crop_box(size: tuple[int, int], rng) -> tuple[int, int, int, int]:
    """A window of 50-90% of the width and, independently, of the height, around the photo's subject:
    it always holds the central 20% (as a crop around a face would), so two crops of one photo overlap."""
    w, h = size
    fw, fh = rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9)
    cw, ch = max(16, round(w * fw)), max(16, round(h * fh))
    x = int(rng.integers(max(0, round(0.6 * w) - cw), min(w - cw, round(0.4 * w)) + 1))
    y = int(rng.integers(max(0, round(0.6 * h) - ch), min(h - ch, round(0.4 * h)) + 1))
    return (x, y, x + cw, y + ch)


def _source_page(image: Image.Image):
    """A one-page PDF exactly the size of the image (in points), showing it: what show_pdf_page draws."""
    import pymupdf

    src = pymupdf.open()
    page = src.new_page(width=image.width, height=image.height)
    page.insert_image(page.rect, stream=_jpeg(image))
    return src


def _jpeg(image: Image.Image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _logo_png() -> bytes:
    """A 20 x 20 px school logo: a tiny image on every page that must be skipped."""
    a = np.zeros((20, 20, 3), np.uint8)
    a[:, :, 2] = 200
    a[5:15, 5:15] = 255
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Checking found pairs against the placements


def match_placement(placements: list[Placement], source: str, page: int, bbox: str,
                    min_iou: float = 0.5) -> int | None:
    """The placement a found image is (same file and page, boxes overlapping by IoU >= min_iou)."""
    box = tuple(float(v) for v in bbox.split())
    best, best_iou = None, min_iou
    for k, p in enumerate(placements):
        if p.page == page and Path(p.pdf).name == Path(source).name:
            iou = _iou(box, p.rect)
            if iou >= best_iou:
                best, best_iou = k, iou
    return best


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_found_pairs(placements: list[Placement], rows: list[dict], threshold: float) -> dict:
    """Precision and recall of pairs.csv rows (dicts) scoring >= threshold against the true pairs.

    A found pair counts as true when both its images are placements of the same photo; a pair whose
    image matches no placement is false.
    """
    truth = true_pairs(placements)
    found, false = set(), 0
    for row in rows:
        if float(row["score"]) < threshold:
            continue
        i = match_placement(placements, row["a_source"], int(row["a_page"]), row["a_bbox"])
        j = match_placement(placements, row["b_source"], int(row["b_page"]), row["b_bbox"])
        pair = (min(i, j), max(i, j)) if i is not None and j is not None else None
        if pair in truth:
            found.add(pair)
        else:
            false += 1
    n_pred = len(found) + false
    return {"precision": len(found) / n_pred if n_pred else 1.0, "recall": len(found) / len(truth) if truth else 1.0,
            "true_pairs": len(truth), "found": len(found), "false": false,
            "missed": sorted(truth - found)}
