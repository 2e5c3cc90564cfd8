"""Robust image decoding: every failure becomes an UnreadableImage with a reason a user can read.

Follows Pillow's own safety switches (https://pillow.readthedocs.io/en/stable/reference/Image.html):
decompression-bomb limits checked on the header before any pixel is allocated, truncated files refused
(ImageFile.LOAD_TRUNCATED_IMAGES stays False), and only plain raster formats opened (no EPS, which would
start Ghostscript).
"""
from __future__ import annotations

import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

#: Refuse images whose decoded size exceeds this many pixels (decompression bombs).
MAX_PIXELS = 200_000_000

#: Pillow formats we open; anything else (EPS, PDF, FITS...) is "not an image" to us. JPEG includes MPO
#: (multi-picture camera JPEGs); formats this Pillow build lacks (AVIF, say) are left out.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "ICO",
                            "JPEG2000", "PCX", "PSD", "QOI", "SGI") if f in Image.OPEN)

# Pillow warns above MAX_IMAGE_PIXELS and (before Pillow 13) raises above twice that, while reading the
# header. Align its limit with ours; our own check (_refuse_bomb) on every header read refuses the rest.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Truncated files must raise, not decode to grey; say so once here in case anything flipped it.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_ORIENTATION = 0x0112
# EXIF orientation tag -> the transpose that shows the image upright (EXIF 2.3, tag 274).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnreadableImage(Exception):
    """The file is not a usable image; str(exc) says why."""


def open_image(path: str | Path, *, draft: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """Decode `path` into a PIL image of `mode` ("RGB" or "L"), EXIF orientation applied.

    draft: for JPEG, let the decoder scale down by 1/2, 1/4 or 1/8 while keeping at least this
    (width, height) of the upright image (much faster than decoding in full and resizing).
    Animated images give their first frame. Raises UnreadableImage on any failure.
    """
    with _reasons(path):
        with Image.open(path, formats=FORMATS) as im:
            if draft is not None and im.format in ("JPEG", "MPO"):
                if _orientation(im) in (5, 6, 7, 8):
                    draft = (draft[1], draft[0])  # draft is asked for upright; the decoder sees it stored
                im.draft(mode, draft)
            _refuse_bomb(im.size)
            wide = _is_wide_colour(im)  # the tile says so only before load()
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            im.load()
            im = _apply_orientation(im, _wide_colour_to_8bit(path, im) if wide else im)
            return to_mode(im, mode)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as open_image would return it, from the header only (no pixels decoded).

    EXIF orientations 5-8 swap width and height. Raises UnreadableImage like open_image.
    """
    with _reasons(path):
        with Image.open(path, formats=FORMATS) as im:
            w, h = im.size
            _refuse_bomb((w, h))  # Pillow 13 no longer raises on the header alone
            # Pillow's PNG getexif() decodes the whole image when no eXIf chunk came before the pixels;
            # such late chunks are rare, so a header read takes "no EXIF" for them.
            header_only = im.format == "PNG" and "exif" not in im.info
            if not header_only and _orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            return w, h


@contextmanager
def _reasons(path: str | Path):
    """Check the path, then turn every exception from Pillow into UnreadableImage with a plain reason."""
    _check_file(path)
    try:
        yield
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"decompression bomb refused ({exc})") from None
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except IsADirectoryError:
        raise UnreadableImage("is a directory") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except Image.UnidentifiedImageError:
        known = _magic_format(path)
        if known:  # the signature says image, but Pillow could not parse the header
            raise UnreadableImage(f"corrupt image (damaged {known} header)") from None
        raise UnreadableImage(f"not an image ({_sniff(path)})") from None
    except MemoryError:
        raise UnreadableImage("out of memory while decoding") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        # Pillow's plugins raise many kinds of errors on bad data; all of them mean a damaged file.
        text = str(exc) or type(exc).__name__
        kind = "truncated image" if "truncated" in text else "corrupt image"
        raise UnreadableImage(f"{kind} ({text})") from None


def _check_file(path: str | Path) -> None:
    """Reasons that need no decoding: missing, a directory, not a regular file, empty."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot stat file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableImage("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImage("not a regular file")
    if st.st_size == 0:
        raise UnreadableImage("empty file")


# File signatures of the formats we open (first bytes), for telling "damaged" from "not an image".
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _magic_format(path: str | Path) -> str | None:
    """The format whose signature the file starts with, if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _sniff(path: str | Path) -> str:
    """Say what a file that Pillow did not recognise looks like (for the reason text)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return "unrecognised format"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"%!PS") or head.startswith(b"\xc5\xd0\xd3\xc6"):
        return "a PostScript/EPS file, not opened for safety"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 3:  # a multi-byte character cut by the 1 KiB window
                return "a text file"
    return "unrecognised format"


def _refuse_bomb(size: tuple[int, int]) -> None:
    """Refuse, before any pixel is allocated, an image whose decoded size is above MAX_PIXELS."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise UnreadableImage(f"decompression bomb refused ({w}x{h} = {w * h} pixels > limit {MAX_PIXELS})")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when absent or unreadable."""
    try:
        value = int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block must not make a good image unreadable
        return 1
    return value if value in _TRANSPOSE else 1


def _apply_orientation(im: Image.Image, pixels: Image.Image | None = None) -> Image.Image:
    """Show `pixels` (default: im itself) upright as im's EXIF says the camera meant it; no copy when it
    already is (the usual case)."""
    pixels = im if pixels is None else pixels
    method = _TRANSPOSE.get(_orientation(im))
    return pixels if method is None else pixels.transpose(method)


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode (CMYK, 16-bit, float, palette, alpha, 1-bit...) to RGB or L.

    Transparent areas are composited on white, as a page would show them.
    """
    if im.mode == mode and "transparency" not in im.info:
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        im = _integer_to_l(im)
    elif im.mode == "F":
        im = _float_to_l(im)
    if "transparency" in im.info or im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # applies palette / tRNS transparency as alpha
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = _composite_on_white(im)
    try:
        return im.convert(mode)
    except ValueError:
        raise UnreadableImage(f"unsupported colour mode {im.mode}") from None


def _integer_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer grey to 8 bits (see _wide_to_8bit); 32-bit data holding 16-bit values is 16-bit."""
    a = np.asarray(im).astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    bits = 16 if im.mode.startswith("I;16") or (lo >= 0 and hi <= 0xFFFF) else 32
    return Image.fromarray(_wide_to_8bit(a, bits), "L")


def _float_to_l(im: Image.Image) -> Image.Image:
    """Float grey to 8 bits. Values within [0, 1] (the usual float convention, 1 = white) are scaled as
    16-bit data; other floats carry no fixed scale and are stretched over their own range."""
    a = np.nan_to_num(np.asarray(im, dtype=np.float64))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        return Image.fromarray(_wide_to_8bit(np.rint(a * 0xFFFF).astype(np.int64), 16), "L")
    return Image.fromarray(((a - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8), "L")


def _wide_to_8bit(a: np.ndarray, bits: int) -> np.ndarray:
    """Integer samples of a 16- or 32-bit image to uint8.

    Full range (the brightest sample sets the top bit): a fixed scale, the top 8 bits, as Pillow shows
    16-bit colour, so two exposures of a scene keep their relative brightness.
    Narrow range (a 16-bit file holding 8- to 15-bit values, as scanners and cameras write): scaled by its
    own maximum, so a 16-bit PNG with values below 256 is not read as black. Never brightened beyond
    reading values below 256 as 8-bit values, so a black frame with faint noise stays black.
    Negative values (signed 32-bit) are first shifted to start at 0.
    """
    a = a.astype(np.int64)
    if not a.size:
        return a.astype(np.uint8)
    a = a - min(int(a.min()), 0)
    hi = int(a.max())
    if hi >= 1 << (bits - 1):
        out = a >> (bits - 8)
    else:
        scale = max(hi, 255)
        out = (a * 255 + scale // 2) // scale
    return np.clip(out, 0, 255).astype(np.uint8)


def _is_wide_colour(im: Image.Image) -> bool:
    """True for 16-bit-per-channel colour, which Pillow decodes to 8 bits by keeping the top byte."""
    if im.mode not in ("RGB", "RGBA"):
        return False
    for tile in im.tile:
        raw = tile.args if isinstance(tile.args, str) else (tile.args or (None,))[0]
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def _wide_colour_to_8bit(path: str | Path, im: Image.Image) -> Image.Image:
    """16-bit colour re-read with OpenCV (which keeps all 16 bits) and scaled like grey (_wide_to_8bit),
    one scale for all colour channels so the colours keep their balance; alpha keeps its fixed scale.

    If OpenCV cannot read it, Pillow's top-byte image is kept (correct for full-range data) with a warning.
    """
    import cv2

    a = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    channels = len(im.mode)
    if a is None or a.dtype != np.uint16 or a.shape != (im.height, im.width, channels):
        warnings.warn(f"{path}: 16-bit colour read as its top 8 bits only (OpenCV could not read all 16 "
                      "bits); a dark, narrow-range image may look black", stacklevel=3)
        return im
    rgb = _wide_to_8bit(a[..., 2::-1], 16)  # OpenCV gives BGR(A)
    if channels == 4:
        rgb = np.dstack([rgb, (a[..., 3] >> 8).astype(np.uint8)])
    return Image.fromarray(np.ascontiguousarray(rgb), im.mode)


def _composite_on_white(im: Image.Image) -> Image.Image:
    """Alpha-composite on an opaque white background."""
    im = im.convert("RGBA")
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, im)


# ---------------------------------------------------------------------------------------------------
# A frame burned around a picture


#: framed_box: a frame's inner edge is a grey-level step of more than FRAME_STEP (0..255) ...
FRAME_STEP = 24
#: ... along at least FRAME_RUN of the middle 80% of each side ...
FRAME_RUN = 0.6
#: ... at most FRAME_MAX_DEPTH of the short side in from the border.
FRAME_MAX_DEPTH = 0.12


def framed_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """The picture inside a frame burned around it (a yearbook's school frame, a passe-partout, a uniform
    border), as a box (left, top, right, bottom) in the pixels of `grey` (a 2-D grey-level array); the whole
    image when it has none.

    A frame's inner edge is a straight, continuous edge at one depth from all four sides: the deepest depth d
    (2 px up to FRAME_MAX_DEPTH of the short side) at which every side has, within a pixel of d, a row (or
    column) of pixels whose grey level steps by more than FRAME_STEP from its outer neighbour's along at
    least FRAME_RUN of the side's middle 80%. A photograph's own edges (a horizon, a wall) are rarely straight
    and continuous on all four sides at one depth, so a picture without a frame is left whole; a frame
    turned with its picture (a small rotation on a page) has no straight inner edge and is left too (`upright`
    turns such a picture back first)."""
    grey = np.asarray(grey, np.int16)
    h, w = grey.shape
    depth = int(FRAME_MAX_DEPTH * min(h, w))
    if depth < 3:
        return (0, 0, w, h)
    sides = [grey, grey[::-1], grey.T, grey.T[::-1]]  # each with its outer border on row 0
    runs = []
    for side in sides:
        n = side.shape[1]
        middle = side[: depth + 2, n // 10: n - n // 10]
        runs.append((np.abs(np.diff(middle, axis=0)) > FRAME_STEP).mean(axis=1))  # step between rows r, r+1
    found = 0
    for d in range(2, depth):
        if all(run[d - 1: d + 2].max() >= FRAME_RUN for run in runs):
            found = d
    if not found:
        return (0, 0, w, h)
    inside = found + 2  # past the edge's own row and the one it steps to
    return (inside, inside, w - inside, h - inside)


# ---------------------------------------------------------------------------------------------------
# A picture turned on a plain page

#: upright: the four corners agree within this many grey levels (0..255): a plain page or canvas ...
BACKGROUND_SPREAD = 8
#: ... and a pixel is part of the picture when it differs from them by more than this.
PICTURE_STEP = 12
#: A turn smaller than this (degrees) is left: nothing of the page shows.
MIN_TURN = 0.5
#: The picture's outline must fill this share of its best-fitting turned rectangle.
RECTANGLE_FILL = 0.95


def corner_greys(rgb: Image.Image) -> np.ndarray:
    """The grey levels (int16) of an RGB image's four corner pixels, as OpenCV's RGB -> grey conversion of the
    whole image gives them."""
    import cv2

    w, h = rgb.size
    corners = np.array([[rgb.getpixel(xy)] for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))], np.uint8)
    return cv2.cvtColor(corners, cv2.COLOR_RGB2GRAY).astype(np.int16).ravel()


def upright(image: Image.Image) -> Image.Image:
    """A picture set turned on a plain page (a photo placed a few degrees off square in a PDF, a print laid
    askew on a scanner), turned back and cut out of the page; the image itself when it is not one.

    It is one when the four corners share one grey level (within BACKGROUND_SPREAD), and what differs from it
    (by more than PICTURE_STEP) is, but for small gaps, one region filling at least RECTANGLE_FILL of its
    smallest enclosing rectangle, turned by at least MIN_TURN degrees. The cut lies two pixels inside that
    rectangle, past the rim that interpolation mixes with the page. Turns beyond 45 degrees read as the
    nearest right angle less the turn, as for any rectangle."""
    import cv2

    if min(image.size) < 16:
        return image
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    corners = corner_greys(rgb)  # alone first: most pictures are no page, and their pixels are left untouched
    if corners.max() - corners.min() > BACKGROUND_SPREAD:
        return image
    rgb = np.asarray(rgb)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.int16)
    picture = (np.abs(grey - int(np.median(corners))) > PICTURE_STEP).astype(np.uint8)
    picture = cv2.morphologyEx(picture, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    outlines, _ = cv2.findContours(picture, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not outlines:
        return image
    outline = max(outlines, key=cv2.contourArea)
    rect = cv2.minAreaRect(outline)
    (cx, cy), corner = rect[0], cv2.boxPoints(rect)
    # The turn of the edge nearest to level, in (-45, 45] degrees (y down: positive = turned clockwise), and
    # the rectangle's width along that edge.
    edges = np.roll(corner, -1, axis=0) - corner
    slopes = np.degrees(np.arctan2(edges[:, 1], edges[:, 0]))
    level = int(np.argmin(np.abs((slopes + 90) % 180 - 90)))
    angle = float((slopes[level] + 45) % 90 - 45)
    w, h = float(np.hypot(*edges[level])), float(np.hypot(*edges[(level + 1) % 4]))
    if abs(angle) < MIN_TURN or min(w, h) < 16 or cv2.contourArea(outline) < RECTANGLE_FILL * w * h:
        return image
    turn = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    turn[:, 2] += (w / 2 - cx, h / 2 - cy)  # the rectangle's centre to the middle of the output
    out = cv2.warpAffine(rgb, turn, (int(w), int(h)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(np.ascontiguousarray(out[2:-2, 2:-2]))
