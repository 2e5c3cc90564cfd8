"""Images drawn on PDF pages, through PyMuPDF (https://pymupdf.readthedocs.io/en/latest/page.html).

Every *placement* is one image: `page.get_image_info(hashes=True, xrefs=True)` lists each time a page draws
an image (the same picture on two pages is two entries) with its bounding box, its transformation matrix
and MuPDF's digest of the image data. A layout program crops a placed photo with a clipping path and
rotates it with the matrix; to know the part the reader sees, the page is also run through MuPDF's trace
device (`fz_new_trace_device`, what `mutool trace` prints), which lists the clipping paths around each
drawn image. The visible box is the image's box cut by those clips and by the page.

What the features are computed on: the **placed region rendered as the reader sees it**
(`page.get_pixmap(clip=visible box)`), not the embedded image data. That is the honest input for
finding reuse: a photo embedded once but shown cropped to a face on page 3 and in full on page 9 is
compared as the two crops the reader sees, rotations and mirrorings of the placement matrix are applied,
soft masks and colour spaces (CMYK, JPX, JBIG2, inline images, images inside forms) all come out the same
way, and the resolution is chosen here (the image's own pixel density, kept between `min_render_side`
and `max_render_side` pixels on the long side). Whatever else is drawn over the photo (a caption) is part
of what the reader sees and is kept. The embedded data is used only when rendering fails
(`doc.extract_image(xref)`), and identical embedded data gives an exact-duplicate pair on its own
(see the "identical" stage of simbench.find.cascade).

Coordinates: bbox is in PDF points in PyMuPDF's page coordinates (origin top left, y down, before the
page's /Rotate is applied), the same numbers `page.get_image_rects()` returns.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from simbench.find.items import format_bbox, thumbnail_jpeg
from simbench.types import Skipped


@dataclass(frozen=True)
class PdfOptions:
    """How PDF images are chosen and rendered.

    min_side_px: skip images whose own pixel width or height is below this (icons, rules, spacers).
    min_side_pt: skip placements whose visible box is narrower or lower than this in points (72 pt = 1 in).
    min_render_side, max_render_side: long side of the rendered placement in pixels (the image's own
        density, clamped to this range: small images are upsampled so that keypoints can be found).
    jpeg_quality: quality of the rendered file features are extracted from.
    thumb_side: long side of the report thumbnail.
    upright_below: a placement its matrix turns by more than MIN_TURN and at most this many degrees from a right
        angle is rendered upright (`upright`: the turn undone, cut to the image's own box, so no page corners);
        0: every placement as the reader sees it. 20 since run (70) (results/find.md): on fresh tuning yearbooks
        more pairs found and fewer false ones (a photo turned by a few degrees no longer looks like another one
        turned alike to the CNN, and its copies line up).
    """

    min_side_px: int = 32
    min_side_pt: float = 24.0
    min_render_side: int = 512
    max_render_side: int = 1024
    jpeg_quality: int = 92
    thumb_side: int = 160
    upright_below: float = 20.0


#: The least turn (degrees from a right angle) `upright` undoes: below it a placement is square to the page.
MIN_TURN = 0.5


@dataclass
class Placement:
    """One image drawn on a page: where, what it looks like, and the file it was rendered to."""

    page: int  # 1-based
    number: int  # 1-based, in drawing order on the page
    bbox: str
    digest: str
    image_path: str
    thumb: bytes


# ---------------------------------------------------------------------------------------------------
# One document


def extract_pdf(path: str | Path, work_dir: str | Path, options: PdfOptions) -> tuple[list[Placement], list[Skipped]]:
    """Render every large-enough image placement of a PDF into work_dir. Never raises for bad input:
    broken, encrypted or image-less documents and unreadable pages come back as Skipped with a reason."""
    n_pages, reason = page_count(path)
    if reason:
        return [], [Skipped(str(path), reason)]
    part = extract_pages(path, work_dir, options, 0, n_pages)
    return part.placements, finish_skipped(str(path), [part], options)


@dataclass
class PagesResult:
    """What a range of pages gave: placements, skipped entries, and how many tiny images were skipped."""

    placements: list[Placement]
    skipped: list[Skipped]
    tiny: int


def page_count(path: str | Path) -> tuple[int, str | None]:
    """(number of pages, None), or (0, why the document cannot be used)."""
    doc, reason = open_pdf(str(path))
    if doc is None:
        return 0, reason
    with doc:
        return doc.page_count, None


def extract_pages(path: str | Path, work_dir: str | Path, options: PdfOptions, start: int, stop: int) -> PagesResult:
    """Placements of pages start..stop-1 (0-based), rendered into work_dir (files named by page)."""
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF's own messages would interleave with progress bars
    path = str(path)
    doc, reason = open_pdf(path)
    if doc is None:  # it opened when the pages were counted; say so if it no longer does
        return PagesResult([], [Skipped(path, reason)], 0)
    result = PagesResult([], [], 0)
    with doc:
        os.makedirs(work_dir, exist_ok=True)
        for index in range(start, min(stop, doc.page_count)):
            found, lost, n_tiny = page_placements(doc, index, path, work_dir, options)
            result.placements += found
            result.skipped += lost
            result.tiny += n_tiny
    return result


def finish_skipped(path: str, parts: list[PagesResult], options: PdfOptions) -> list[Skipped]:
    """The skipped entries of all page ranges, plus one for the file when it had nothing to compare."""
    skipped = [s for part in parts for s in part.skipped]
    tiny = sum(part.tiny for part in parts)
    if not any(part.placements for part in parts) and len(skipped) == tiny:
        # Nothing to compare in this file: say so once for the file, on top of the tiny ones.
        skipped.append(Skipped(path, no_images_reason(tiny, options)))
    return skipped


def open_pdf(path: str):
    """(document, None), or (None, why it cannot be used)."""
    import pymupdf

    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:  # MuPDF raises FileDataError, RuntimeError, ValueError... on damaged files
        return None, f"not a readable PDF ({_short(exc)})"
    if doc.needs_pass:
        doc.close()
        return None, "encrypted PDF (a password is needed to open it)"
    if doc.page_count == 0:
        doc.close()
        return None, "PDF has no pages (damaged or empty)"
    return doc, None


def no_images_reason(tiny: int, options: PdfOptions) -> str:
    if tiny:
        return f"no images large enough to compare (only {tiny} tiny ones)"
    return "no images in this PDF"


def tiny_reason(info: dict, box, options: PdfOptions) -> str:
    return (f"tiny image ({info['width']}x{info['height']} px placed at {box.width:.0f}x{box.height:.0f} pt; "
            f"limits {options.min_side_px} px, {options.min_side_pt:g} pt)")


# ---------------------------------------------------------------------------------------------------
# One page


def page_placements(doc, index: int, path: str, work_dir, options: PdfOptions):
    """(placements, skipped, number of tiny images) of page `index` (0-based)."""
    page_no = index + 1
    try:
        page = doc.load_page(index)
        infos = page.get_image_info(hashes=True, xrefs=True)
        clips = visible_boxes(page)
    except Exception as exc:
        return [], [Skipped(f"{path}#page={page_no}", f"page could not be read ({_short(exc)})")], 0
    placements, skipped, tiny = [], [], 0
    used = [False] * len(clips)
    for number, info in enumerate(infos, start=1):
        display = f"{path}#page={page_no}&image={number}"
        box = placed_box(page, info, clips, used)
        if box is None:
            skipped.append(Skipped(display, "image not visible (clipped away or outside the page)"))
            continue
        if is_tiny(info, box, options):
            tiny += 1
            skipped.append(Skipped(display, tiny_reason(info, box, options)))
            continue
        try:
            placements.append(render_placement(doc, page, info, box, page_no, number, work_dir, options))
        except Exception as exc:
            skipped.append(Skipped(display, f"image could not be rendered or extracted ({_short(exc)})"))
    return placements, skipped, tiny


def placed_box(page, info: dict, clips: list, used: list):
    """The visible part of a placement: its box cut by its clipping paths and the page; None if empty."""
    import pymupdf

    box = pymupdf.Rect(info["bbox"])
    clip = _matching_clip(info["transform"], clips, used)
    if clip is not None:
        box &= clip
    box &= page.rect * page.derotation_matrix  # the page in unrotated coordinates
    if box.is_empty or box.width <= 0 or box.height <= 0:
        return None
    return box


def _matching_clip(transform, clips: list, used: list):
    """The clip of the first unused trace entry drawn with the same matrix (both list images in drawing
    order, so equal matrices pair up in order)."""
    for k, (matrix, clip) in enumerate(clips):
        if not used[k] and _same_matrix(matrix, transform):
            used[k] = True
            return clip
    return None


def _same_matrix(m1, m2, tolerance: float = 0.05) -> bool:
    return all(abs(float(x) - float(y)) <= tolerance * max(1.0, abs(float(y))) for x, y in zip(m1, m2))


def is_tiny(info: dict, box, options: PdfOptions) -> bool:
    """Icons, rules and spacers: too few pixels of their own, or placed too small to be a picture."""
    return (min(info["width"], info["height"]) < options.min_side_px
            or min(box.width, box.height) < options.min_side_pt)


# ---------------------------------------------------------------------------------------------------
# Rendering


def render_placement(doc, page, info: dict, box, page_no: int, number: int, work_dir, options: PdfOptions):
    """Render the visible box at the image's own density (clamped), save it as JPEG, make the thumbnail.

    Falls back to the embedded image data when rendering fails.
    """
    import pymupdf

    name = Path(work_dir) / f"p{page_no:05d}-{number:03d}.jpg"
    zoom = render_zoom(info, box, options)
    # get_pixmap's clip is in the displayed (rotated) page space; our boxes are unrotated.
    clip = box * page.rotation_matrix
    try:
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=clip, alpha=False,
                              colorspace=pymupdf.csRGB)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        if options.upright_below:
            image = upright(image, info, box, page.rotation, options.upright_below)
        image.save(name, format="JPEG", quality=options.jpeg_quality)
    except Exception:
        image = extract_embedded(doc, info, name)
    digest = info.get("digest")
    digest = digest.hex() if isinstance(digest, (bytes, bytearray)) else str(digest or name)
    return Placement(page_no, number, format_bbox(box), "pdf:" + digest, str(name),
                     thumbnail_jpeg(image, options.thumb_side))


def upright(image: Image.Image, info: dict, box, page_rotation: int, below: float) -> Image.Image:
    """The rendered placement `image` (of the visible `box`, on a page shown turned by `page_rotation`) turned back
    by its matrix's turn from the nearest right angle when that is between MIN_TURN and `below` degrees, and cut to
    the image's own box around the centre (where the page showed in its corners); else `image` itself."""
    a, b, c, d = (float(v) for v in info["transform"][:4])
    angle = math.degrees(math.atan2(b, a))
    off = (angle + 45) % 90 - 45  # from the nearest right angle
    if not MIN_TURN < abs(off) <= below:
        return image
    width_pt, height_pt = math.hypot(a, b), math.hypot(c, d)
    if (((angle + 45) // 90) + page_rotation // 90) % 2:  # the image's width runs down the rendering
        width_pt, height_pt = height_pt, width_pt
    across = image.width if page_rotation % 180 == 0 else image.height  # the box's width, rendered
    zoom = across / max(float(box.width), 1e-6)
    turned = image.rotate(off, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    w, h = min(turned.width, round(width_pt * zoom)), min(turned.height, round(height_pt * zoom))
    x, y = (turned.width - w) // 2, (turned.height - h) // 2
    return turned.crop((x, y, x + w, y + h))


def render_zoom(info: dict, box, options: PdfOptions) -> float:
    """Pixels per point: the image's own density (pixels over the length of its placed sides), clamped so
    that the rendered long side is within [min_render_side, max_render_side]."""
    a, b, c, d = (float(v) for v in info["transform"][:4])
    along_x = max((a * a + b * b) ** 0.5, 1e-6)  # points covered by the image's width
    along_y = max((c * c + d * d) ** 0.5, 1e-6)
    native = max(info["width"] / along_x, info["height"] / along_y)
    long_pt = max(box.width, box.height, 1e-6)
    return min(max(native, options.min_render_side / long_pt), options.max_render_side / long_pt)


def extract_embedded(doc, info: dict, name: Path) -> Image.Image:
    """The embedded image data of the placement (no clip or matrix applied), saved as JPEG at `name`."""
    import io

    xref = int(info.get("xref") or 0)
    if xref <= 0:
        raise ValueError("rendering failed and the image has no xref to extract")
    data = doc.extract_image(xref)
    image = Image.open(io.BytesIO(data["image"])).convert("RGB")
    image.save(name, format="JPEG", quality=92)
    return image


# ---------------------------------------------------------------------------------------------------
# Clipping paths (MuPDF's trace device)


def visible_boxes(page) -> list[tuple[tuple, object]]:
    """[(image matrix, clip rectangle or None)] for every image the page draws, in drawing order.

    The clip is the intersection of the bounding boxes of every clipping path around the image (a
    clip we cannot bound, such as text used as a clip, leaves it unrestricted). Images drawn inside a
    soft-mask definition are not shown themselves; they get an empty clip. An unparsable trace gives []
    (then every placement keeps its full box).
    """
    try:
        return _walk_trace(_trace_xml(page))
    except (ET.ParseError, RuntimeError, ValueError):
        return []


def _trace_xml(page) -> str:
    """The page as MuPDF's trace device writes it, in unrotated page coordinates."""
    import pymupdf

    mu = pymupdf.mupdf
    buffer = mu.FzBuffer(4096)
    out = mu.FzOutput(buffer)
    device = mu.fz_new_trace_device(out)
    try:
        mu.fz_run_page(page.this, device, mu.FzMatrix(*page.derotation_matrix), mu.FzCookie())
        mu.fz_close_device(device)
    finally:
        mu.fz_close_output(out)
    return buffer.fz_buffer_extract().decode("utf-8", errors="replace")


def _walk_trace(xml: str) -> list:
    """The trace's images with their clips, in drawing order. Elements nest (a transparency group holds
    what it draws, a soft mask its content), so it is read as a stream of start and end events."""
    import pymupdf

    stack: list = []  # active clips (Rect or None = unbounded), innermost last
    in_mask = 0  # > 0 while drawing a soft mask's content
    out = []
    parser = ET.XMLPullParser(events=("start", "end"))
    parser.feed("<trace>" + xml + "</trace>")
    parser.close()
    for event, el in parser.read_events():
        tag = el.tag
        if event == "end":
            if tag in ("mask", "end_mask"):  # `mask` nests its content; older MuPDF: begin/end_mask
                in_mask = max(0, in_mask - 1)
                stack.append(None)  # the mask then clips like a clipping path until its pop_clip
            continue
        if tag in ("clip_path", "clip_stroke_path"):
            stack.append(_path_bbox(el))
        elif tag == "clip_image_mask":
            stack.append(_unit_square_bbox(_matrix(el)))
        elif tag.startswith("clip_"):  # text used as a clip: not bounded here
            stack.append(None)
        elif tag in ("mask", "begin_mask"):
            in_mask += 1
        elif tag == "pop_clip":
            if stack:
                stack.pop()
        elif tag == "fill_image":
            matrix = _matrix(el)
            clip = pymupdf.Rect() if in_mask else _intersection(stack)
            out.append((matrix, clip))
    return out


def _matrix(el) -> tuple:
    values = [float(v) for v in el.get("transform", "1 0 0 1 0 0").split()]
    return tuple(values[:6]) if len(values) >= 6 else (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _path_bbox(el):
    """Bounding box of a traced path's points, transformed to page space; None when it has no points."""
    import pymupdf

    a, b, c, d, e, f = _matrix(el)
    xs, ys = [], []
    for op in el:
        for k in ("", "1", "2", "3"):
            x, y = op.get("x" + k), op.get("y" + k)
            if x is not None and y is not None:
                px, py = float(x), float(y)
                xs.append(a * px + c * py + e)
                ys.append(b * px + d * py + f)
    if not xs:
        return None
    return pymupdf.Rect(min(xs), min(ys), max(xs), max(ys))


def _unit_square_bbox(matrix):
    import pymupdf

    a, b, c, d, e, f = matrix
    xs = [e, a + e, c + e, a + c + e]
    ys = [f, b + f, d + f, b + d + f]
    return pymupdf.Rect(min(xs), min(ys), max(xs), max(ys))


def _intersection(stack: list):
    """The intersection of the bounded clips on the stack, None when none is bounded."""
    box = None
    for clip in stack:
        if clip is None:
            continue
        box = clip if box is None else (box & clip)
    return None if box is None else type(box)(box)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
