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

A school's yearbook is harder than that, and the options of `build_yearbook` make it so (`SCHOOL_STYLE`
turns them all on): the school's logo stamped into the corner of every photo and its decorative frame
burned around every photo (so unrelated photos share a textured logo and frame, which must not make them
a pair), the page frame and the logo on every page, some placements recoloured (sepia, duotone, grey, a
strong tint) while the same photo shows elsewhere in its own colours, and some photos genuinely flat
(soft, low-contrast, like a portrait against a plain backdrop), where the logo and frame are most of
the detail there is. Logo, frame and recolouring are applied to the window of the photo that shows,
upright as the reader sees it, then burned into the placed pixels, as a layout program exports them.

Photos are scikit-image's sample photographs (offline), whole or cut into non-overlapping halves and
quadrants where they are large: 20 distinct pictures of 300 to 720 pixels; or any list of photos passed
in (`photos_from_folder` picks them from a folder of images, `reference_photos` from a dataset's
references, e.g. one split of the development set).
`build_yearbook` returns every placement with its page and rectangle; `true_pairs` gives the pairs of
placements of the same photo (the logo and the frame are never a placement: they are part of each
photo's pixels, or tiny, or vector graphics).

A crop of a photo with a large plain field (a sky, a blank backdrop, a graphic design's flat ground) can show
nothing but that field: such a placement is `content_free` and is left out of the scoring (`scored_truth`), as
the development set leaves out flat pictures, for the same reason: to any method, and to a reader, it is the same
picture as every other plain field, so counting it would only add label noise.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from simbench.data.devset import MIN_DETAIL, detail
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
    colour: str = "original"  # or the recolouring shown: one of RECOLOURINGS
    flat: bool = False  # the photo is a low-texture one (see _flatten)
    #: The window's grey detail (simbench.data.devset.detail) on the photo as chosen, before it was flattened or
    #: recoloured; NaN: not measured (a placement made by hand counts as having content).
    detail: float = float("nan")


#: Whole photographs; and large ones cut into parts (cols, rows) that share no pixel.
WHOLE = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "immunohistochemistry", "moon", "cell",
         "clock")
PARTS = (("motorcycle", 2, 1), ("hubble_deep_field", 2, 2), ("retina", 2, 2))
MAX_PHOTO_SIDE = 720
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

#: The school's yearbook of the issue: shared logo and frame, 30% of the placements recoloured, a
#: quarter of the photos flat. `build_yearbook(out_dir, **SCHOOL_STYLE)`.
SCHOOL_STYLE = {"shared_logo": True, "shared_frame": True, "recolour": 0.3, "low_texture": 0.25}
RECOLOURINGS = ("sepia", "duotone", "grey", "tint")

# The school's look: colours (RGB), the photo frame's width and the logo's size and place on a photo.
NAVY, GOLD, WHITE, SKY = (22, 38, 92), (214, 170, 52), (245, 242, 230), (70, 110, 170)
FRAME_PT = 7.0  # width of the frame band around every photo, in points on the page
LOGO_WIDTH = 0.15  # the logo's side as a fraction of the photo's width on the page
LOGO_INSET_PT = 1.5 * FRAME_PT  # from the photo's bottom right corner, clear of the frame
# The logo on the page itself stays an icon, under PdfOptions.min_side_px (32 px), as today's 20 px one:
# find skips it; were it compared, every page would pair with every other through it.
PAGE_LOGO_PX = 28
PAGE_LOGO_RECT = (A4[0] - 62, 26, A4[0] - 30, 58)
PLAIN_ICON_RECT = (A4[0] - 50, 15, A4[0] - 30, 35)


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


def photos_from_folder(folder: str | Path, n: int | None = None, seed: int = 0,
                       one_per_subfolder: bool = False) -> list[Image.Image]:
    """Up to n photos (all when None) from the images under `folder`, picked by `seed` as
    photos_from_paths does.

    one_per_subfolder: each entry of `folder` is one picture, a subfolder included, of whose images the
    smallest with a long side of at least MAX_PHOTO_SIDE (else the largest) is used. KDE's wallpapers
    (/usr/share/wallpapers) keep one picture per folder in several sizes plus a screenshot; taken as
    separate photos they would be duplicates that the truth calls distinct.
    """
    folder = Path(folder)
    if one_per_subfolder:
        groups = [sorted(_image_files(e)) if e.is_dir() else [e] for e in sorted(folder.iterdir())]
        paths = [_fitting_size(g) for g in groups if any(p.suffix.lower() in IMAGE_SUFFIXES for p in g)]
    else:
        paths = sorted(_image_files(folder))
    return photos_from_paths(paths, n, seed)


def reference_photos(dataset, n: int | None = None, seed: int = 0) -> list[Image.Image]:
    """Up to n of a dataset's reference pictures (label "reference": distinct pictures, none a copy of
    another), e.g. one split of the development set: `reference_photos(DevSet("tune").load())`."""
    return photos_from_paths([p for p, label in zip(dataset.paths, dataset.labels) if label == "reference"], n, seed)


def photos_from_paths(paths, n: int | None = None, seed: int = 0) -> list[Image.Image]:
    """Up to n photos (all when None) from image files, picked at random by `seed` (the same paths and
    seed give the same photos in the same order), RGB, long side at most MAX_PHOTO_SIDE. Files that do
    not open as images are passed over. The files must show distinct pictures: the truth says they are."""
    paths = list(paths)
    photos = []
    for k in np.random.default_rng(seed).permutation(len(paths)):
        if n is not None and len(photos) >= n:
            break
        try:
            with Image.open(paths[k]) as image:
                image.draft("RGB", (MAX_PHOTO_SIDE, MAX_PHOTO_SIDE))  # JPEGs: decode at a reduced scale
                photos.append(_fit(image))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return photos


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _fitting_size(paths: list[Path]) -> Path:
    """Of the images of one picture, the smallest that is large enough (reading only their headers)."""
    sides = []
    for p in paths:
        try:
            with Image.open(p) as image:
                sides.append((max(image.size), p))
        except (OSError, ValueError):
            continue
    if not sides:
        return paths[0]
    large = [s for s in sides if s[0] >= MAX_PHOTO_SIDE]
    return min(large)[1] if large else max(sides)[1]


def _fit(photo: Image.Image) -> Image.Image:
    """An RGB copy, long side at most MAX_PHOTO_SIDE (the caller's image is left as it was)."""
    photo = photo.convert("RGB")  # convert always copies
    photo.thumbnail((MAX_PHOTO_SIDE, MAX_PHOTO_SIDE), Image.Resampling.LANCZOS)
    return photo


def build_yearbook(out_dir: str | Path, n_pdfs: int = 3, n_photos: int = 16, n_single: int = 4,
                   seed: int = 0, *, photos: list[Image.Image] | None = None, shared_logo: bool = False,
                   shared_frame: bool = False, recolour: float = 0.0, low_texture: float = 0.0) -> list[Placement]:
    """Write yearbook-1.pdf ... into out_dir; return every placement of a photo.

    n_photos photos are placed 2 or 3 times, n_single more once, drawn from `photos` (PIL images; by
    default the 20 of yearbook_photos()), so n_photos + n_single <= len(photos).
    shared_logo: the school's logo (school_logo()) stamped into the bottom right corner of every photo
        placement, and drawn small on every page (a tiny image, skipped by find as an icon).
    shared_frame: the school's frame burned around every photo placement, and a page frame, running
        head and folio drawn as vector graphics on every page.
    recolour: the fraction of placements recoloured (one of RECOLOURINGS), never the first placement of
        a photo, so that every recoloured photo is also shown in its own colours.
    low_texture: the fraction of photos made flat (_flatten), in every placement.
    With all options off, the PDFs and placements are today's for a given seed: the options draw their
    random choices from a stream of their own.
    """
    import pymupdf

    rng = np.random.default_rng(seed)
    style_rng = np.random.default_rng([seed, 1])  # the options' own choices: the layout stays the seed's
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    available = yearbook_photos() if photos is None else [_fit(p) for p in photos]
    if n_photos + n_single > len(available):
        raise ValueError(f"at most {len(available)} distinct photos, {n_photos + n_single} asked for")
    photos = [available[k] for k in rng.permutation(len(available))[: n_photos + n_single]]
    chosen = photos  # what a placement's detail is measured on: the photo before _flatten
    uses = [int(rng.integers(2, 4)) for _ in range(n_photos)] + [1] * n_single
    slots = [p for p, n in enumerate(uses) for _ in range(n)]
    slots = _spread(slots, rng)
    pages = _paginate(slots, rng)
    flat = {int(k) for k in style_rng.choice(len(photos), round(low_texture * len(photos)), replace=False)}
    photos = [_flatten(photo) if k in flat else photo for k, photo in enumerate(photos)]
    looks = iter(_looks(pages, photos, recolour, style_rng))
    emblem = school_logo() if shared_logo else None
    icon = _png(emblem.resize((PAGE_LOGO_PX, PAGE_LOGO_PX), Image.Resampling.LANCZOS)) if emblem else _logo_png()
    docs = [pymupdf.open() for _ in range(n_pdfs)]
    placements = []
    for k, photos_on_page in enumerate(pages):
        d = k % n_pdfs
        doc = docs[d]
        page = doc.new_page(width=A4[0], height=A4[1])
        name = str(out_dir / f"yearbook-{d + 1}.pdf")
        if shared_frame:
            _page_frame(page, doc.page_count)
        page.insert_image(pymupdf.Rect(PAGE_LOGO_RECT if shared_logo or shared_frame else PLAIN_ICON_RECT),
                          stream=icon)
        for cell, p in zip(_cells(len(photos_on_page)), photos_on_page):
            dress = Dress(emblem, shared_frame, next(looks))
            rect, how, crop = _place(page, photos[p], cell, rng, dress)
            placements.append(Placement(name, doc.page_count, rect, p, how, crop, dress.look, p in flat,
                                        detail(chosen[p].crop(crop))))
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


def content_free(placement: Placement) -> bool:
    """The window shown has less detail than the development set keeps a picture for (MIN_DETAIL): a plain field."""
    return placement.detail < MIN_DETAIL


def scored_truth(placements: list[Placement], every_placement: bool = False) -> tuple[set[tuple[int, int]], set[int]]:
    """(true pairs scored, placements left out): the `true_pairs` of the placements that are not `content_free`
    (every_placement: of all of them), and the indices of those left out, whose pairs, true or false, count neither
    way."""
    left_out = set() if every_placement else {k for k, p in enumerate(placements) if content_free(p)}
    return {pair for pair in true_pairs(placements) if not left_out & set(pair)}, left_out


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


def _looks(pages: list[list[int]], photos: list[Image.Image], recolour: float, rng) -> list[str]:
    """The colouring of each placement, in drawing order: round(recolour * placements) of them
    recoloured, chosen among the second and later placements of a photo (a grey photo is not made grey:
    it would look the same)."""
    order = [p for page in pages for p in page]
    seen, later = set(), []
    for i, p in enumerate(order):
        if p in seen:
            later.append(i)
        seen.add(p)
    looks = ["original"] * len(order)
    for i in rng.choice(later, min(len(later), round(recolour * len(order))), replace=False):
        kinds = [k for k in RECOLOURINGS if k != "grey" or not _is_grey(photos[order[i]])]
        looks[int(i)] = kinds[int(rng.integers(len(kinds)))]
    return looks


def _is_grey(photo: Image.Image) -> bool:
    a = np.asarray(photo.resize((32, 32)), np.int16)
    return float((a.max(axis=2) - a.min(axis=2)).mean()) < 6


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


@dataclass(frozen=True)
class Dress:
    """What the layout adds to one placement: the logo in its corner (or None), the frame, a recolouring."""

    logo: Image.Image | None = None
    frame: bool = False
    look: str = "original"

    @property
    def plain(self) -> bool:
        return self.logo is None and not self.frame and self.look == "original"


def _place(page, photo: Image.Image, cell, rng, dress: Dress = Dress()) -> tuple[tuple, str, tuple]:
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
    if not dress.plain:
        photo = _dressed(photo, crop, rotate90, w, dress)
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


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _logo_png() -> bytes:
    """A 20 x 20 px school logo: a tiny image on every page that must be skipped."""
    a = np.zeros((20, 20, 3), np.uint8)
    a[:, :, 2] = 200
    a[5:15, 5:15] = 255
    return _png(Image.fromarray(a))


# ---------------------------------------------------------------------------------------------------
# The school's look: logo, frames, recolourings, flat photos


def _dressed(photo: Image.Image, crop, rotate90: int, width_pt: float, dress: Dress) -> Image.Image:
    """A copy of `photo` whose window `crop` is recoloured, framed and stamped with the logo, upright as
    it shows on the page once turned by rotate90 (PyMuPDF's rotate, like PIL's, is counter-clockwise);
    `width_pt` is the placement's width on the page, which sets the frame's and the logo's size."""
    window = photo.crop(crop)
    if dress.look != "original":
        window = recoloured(window, dress.look)
    view = window.rotate(rotate90, expand=True)
    overlay = decoration(view.size, view.width / width_pt, dress.logo, dress.frame)
    view.paste(overlay, (0, 0), overlay)
    out = photo.copy()
    out.paste(view.rotate(-rotate90, expand=True), crop[:2])
    return out


def decoration(size: tuple[int, int], px_per_pt: float, logo: Image.Image | None, frame: bool) -> Image.Image:
    """The layout's overlay on a placed photo of `size` pixels (RGBA, transparent where the photo shows):
    the frame around it and the logo in its bottom right corner, sized in page points."""
    w, h = size
    overlay = _frame(size, FRAME_PT * px_per_pt) if frame else Image.new("RGBA", size, (0, 0, 0, 0))
    if logo is not None:
        x0, y0, x1, y1 = logo_box(w / px_per_pt, h / px_per_pt)
        side = max(8, round((x1 - x0) * px_per_pt))
        stamp = logo.resize((side, side), Image.Resampling.LANCZOS)
        overlay.alpha_composite(stamp, (max(0, round(x0 * px_per_pt)), max(0, round(y0 * px_per_pt))))
    return overlay


def logo_box(width_pt: float, height_pt: float) -> tuple[float, float, float, float]:
    """Where the logo sits on a placed photo of that size, in points from its top left corner."""
    side = LOGO_WIDTH * width_pt
    x1, y1 = width_pt - LOGO_INSET_PT, height_pt - LOGO_INSET_PT
    return (x1 - side, y1 - side, x1, y1)


def school_logo(side: int = 256) -> Image.Image:
    """The school's emblem (RGBA, transparent around it), the same in every build: a shield with a gold
    chief of three roundels over a hatched field, a ring around a star, and the initials; shapes,
    letters and texture, as a real crest has (and as keypoint detectors find plenty on)."""
    s = 2 * side  # drawn at twice the size, then reduced: smooth edges

    def at(*xy):  # fractions of the side -> pixels
        return [(x * s, y * s) for x, y in zip(xy[::2], xy[1::2])]

    shield = at(0.08, 0.04, 0.92, 0.04, 0.92, 0.55, 0.75, 0.82, 0.5, 0.97, 0.25, 0.82, 0.08, 0.55)
    field = Image.new("RGB", (s, s), NAVY)
    draw = ImageDraw.Draw(field)
    for x in range(-s, s, s // 14):  # diagonal hatching: the field's texture
        draw.line(at(x / s, 0, x / s + 1, 1), fill=SKY, width=s // 60)
    draw.rectangle((0, 0, s, 0.25 * s), fill=GOLD)
    for cx in (0.3, 0.5, 0.7):
        draw.ellipse(((cx - 0.055) * s, 0.085 * s, (cx + 0.055) * s, 0.195 * s), fill=NAVY)
    draw.ellipse((0.33 * s, 0.29 * s, 0.67 * s, 0.63 * s), fill=NAVY, outline=WHITE, width=s // 45)
    star = []
    for k in range(10):  # a five-pointed star: outer and inner points in turn
        a, r = k * np.pi / 5, (0.13 if k % 2 == 0 else 0.055)
        star.append(((0.5 + r * np.sin(a)) * s, (0.46 - r * np.cos(a)) * s))
    draw.polygon(star, fill=GOLD)
    font = ImageFont.load_default(size=int(0.15 * s))
    draw.text((0.5 * s, 0.73 * s), "NHS", fill=WHITE, font=font, anchor="mm")
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).polygon(shield, fill=255)
    logo = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    logo.paste(field, (0, 0), mask)
    ImageDraw.Draw(logo).line(shield + shield[:1], fill=GOLD, width=s // 30, joint="curve")
    return logo.resize((side, side), Image.Resampling.LANCZOS)


def _frame(size: tuple[int, int], band: float) -> Image.Image:
    """The school's photo frame for a photo of `size` pixels (RGBA, transparent inside): a navy band
    `band` pixels wide between gold rules, a row of gold diamonds and white dots along it, and a square
    rosette on each corner."""
    k = 2  # drawn at twice the size, then reduced
    w, h, b = size[0] * k, size[1] * k, max(3.0, band) * k
    frame = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(frame)
    draw.rectangle((0, 0, w - 1, h - 1), outline=NAVY, width=round(b))
    rule = max(1, round(0.1 * b))
    draw.rectangle((0.12 * b, 0.12 * b, w - 0.12 * b, h - 0.12 * b), outline=GOLD, width=rule)
    draw.rectangle((b - rule, b - rule, w - b + rule, h - b + rule), outline=GOLD, width=rule)

    def diamond(x, y, r, fill):
        draw.polygon([(x - r, y), (x, y - r), (x + r, y), (x, y + r)], fill=fill)

    m, step = b / 2, 1.6 * b
    for n, along in enumerate(np.arange(2 * b, max(w, h) - 2 * b, step / 2)):
        fill, r = (GOLD, 0.28 * b) if n % 2 == 0 else (WHITE, 0.12 * b)
        for x, y in ((along, m), (along, h - m), (m, along), (w - m, along)):
            if 2 * b <= x <= w - 2 * b or 2 * b <= y <= h - 2 * b:  # along this edge, clear of its corners
                diamond(x, y, r, fill)
    c = 0.75 * b  # corner rosettes: gold square, navy diamond, white centre
    for x, y in ((m, m), (w - m, m), (m, h - m), (w - m, h - m)):
        draw.rectangle((x - c, y - c, x + c, y + c), fill=GOLD)
        diamond(x, y, 0.7 * c, NAVY)
        diamond(x, y, 0.25 * c, WHITE)
    return frame.resize(size, Image.Resampling.LANCZOS)


def _page_frame(page, number: int) -> None:
    """The book's page design, drawn as vector graphics (no image, nothing for find to compare): a navy
    and a gold rule around the page with a row of dots between them, diamonds on the corners, a running
    head and the page number. It stays outside the photo cells, so no placement shows any of it."""
    import pymupdf

    navy, gold = tuple(v / 255 for v in NAVY), tuple(v / 255 for v in GOLD)
    w, h = page.rect.width, page.rect.height
    shape = page.new_shape()
    shape.draw_rect(pymupdf.Rect(14, 14, w - 14, h - 14))
    shape.finish(color=navy, width=2.4)
    shape.draw_rect(pymupdf.Rect(21, 21, w - 21, h - 21))
    shape.finish(color=gold, width=0.8)
    for x in np.arange(40, w - 30, 12):
        for y in (17.5, h - 17.5):
            shape.draw_circle((float(x), y), 0.9)
    shape.finish(color=gold, fill=gold, width=0)
    for x, y in ((17.5, 17.5), (w - 17.5, 17.5), (17.5, h - 17.5), (w - 17.5, h - 17.5)):
        shape.draw_polyline([(x - 9, y), (x, y - 9), (x + 9, y), (x, y + 9), (x - 9, y)])
    shape.finish(color=navy, fill=gold, width=0.8, closePath=True)
    shape.commit()
    page.insert_text((MARGIN, 46), "Northfield High School  \u00b7  Yearbook", fontsize=11, color=navy)
    page.insert_text((w / 2 - 5, h - 28), str(number), fontsize=9, color=navy)


def recoloured(image: Image.Image, look: str) -> Image.Image:
    """The image as a layout program recolours it: "sepia" (the usual sepia matrix), "duotone" (grey
    levels mapped from deep violet to pale cyan), "grey", or "tint" (a warm cast with 50% more contrast)."""
    a = np.asarray(image.convert("RGB"), np.float32)
    grey = a @ np.array([0.299, 0.587, 0.114], np.float32)
    if look == "sepia":
        out = a @ np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32).T
    elif look == "duotone":
        t = grey[:, :, None] / 255.0
        out = (1 - t) * np.array((40, 20, 90), np.float32) + t * np.array((160, 230, 255), np.float32)
    elif look == "grey":
        out = np.repeat(grey[:, :, None], 3, axis=2)
    elif look == "tint":
        out = ((a - a.mean()) * 1.5 + a.mean()) * np.array([1.2, 0.95, 0.65], np.float32)
    else:
        raise ValueError(f"unknown recolouring {look!r}; one of {RECOLOURINGS}")
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _flatten(photo: Image.Image) -> Image.Image:
    """A genuinely flat version of a photo, like a soft-focus portrait against a plain backdrop: fine
    detail blurred away (a Gaussian of 1.2% of the long side) and contrast lowered by a quarter, so few
    keypoints are left but the shapes and colours still tell it from other photos."""
    soft = photo.filter(ImageFilter.GaussianBlur(0.012 * max(photo.size)))
    return ImageEnhance.Contrast(soft).enhance(0.75)


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


def placement_pairs(placements: list[Placement], rows: list[dict]) -> list[tuple[int | None, int | None]]:
    """The placements (i, j) that each pairs.csv row (a dict) joins, in the row's order; None for an image that
    is no placement."""
    return [(match_placement(placements, row["a_source"], int(row["a_page"]), row["a_bbox"]),
             match_placement(placements, row["b_source"], int(row["b_page"]), row["b_bbox"])) for row in rows]


#: What makes a true pair of placements hard, first that applies: the photo is a flat one; the two placements
#: are coloured differently; either is turned a few degrees on the page; none of these (crops, clipping paths and
#: right-angle turns only).
PAIR_KINDS = ("flat", "recoloured", "turned", "plain")


def pair_kind(a: Placement, b: Placement) -> str:
    """The kind (PAIR_KINDS) of the pair of placements a and b of one photo."""
    if a.flat or b.flat:
        return "flat"
    if a.colour != b.colour:
        return "recoloured"
    if "rotate_small" in a.how or "rotate_small" in b.how:
        return "turned"
    return "plain"


#: How the two placements of a pair are turned (`pair_turn`): neither, one or both by a right angle only, or one by a
#: few degrees (rotate_small: drawn turned, page background in the corners of its box).
PAIR_TURNS = ("upright", "right angle", "few degrees")


def pair_turn(a: Placement, b: Placement) -> str:
    """The turn (PAIR_TURNS) of the pair of placements a and b."""
    if "rotate_small" in a.how or "rotate_small" in b.how:
        return "few degrees"
    return "right angle" if "rotate90" in a.how or "rotate90" in b.how else "upright"


def score_found_pairs(placements: list[Placement], rows: list[dict], threshold: float,
                      every_placement: bool = False) -> dict:
    """Precision and recall of pairs.csv rows (dicts) scoring >= threshold against the true pairs.

    A found pair counts as true when both its images are placements of the same photo; a pair whose
    image matches no placement is false. Pairs with a `content_free` placement count neither way
    (`scored_truth`; every_placement: they count too).
    """
    truth, left_out = scored_truth(placements, every_placement)
    rows = [row for row in rows if float(row["score"]) >= threshold]
    found, false = set(), 0
    for i, j in placement_pairs(placements, rows):
        if {i, j} & left_out:
            continue
        pair = (min(i, j), max(i, j)) if i is not None and j is not None else None
        if pair in truth:
            found.add(pair)
        else:
            false += 1
    n_pred = len(found) + false
    return {"precision": len(found) / n_pred if n_pred else 1.0, "recall": len(found) / len(truth) if truth else 1.0,
            "true_pairs": len(truth), "found": len(found), "false": false,
            "missed": sorted(truth - found), "left_out": len(true_pairs(placements)) - len(truth)}
