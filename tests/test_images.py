"""open_image / image_size: the bad-input matrix, odd modes, EXIF orientation, bombs, transforms."""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from simbench.data import images
from simbench.data.images import UnreadableImage, image_size, open_image
from simbench.data.transforms import TRANSFORMS

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# ---------- helpers ----------

def _photo(w=96, h=64, seed=0) -> Image.Image:
    """A smooth random RGB picture (JPEG-friendly, every transform visibly changes it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)


def _halves(w=60, h=40, left=RED, right=BLUE) -> Image.Image:
    im = Image.new("RGB", (w, h), left)
    im.paste(Image.new("RGB", (w - w // 2, h), right), (w // 2, 0))
    return im


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height RGB pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _reason(path, **kwargs) -> str:
    with pytest.raises(UnreadableImage) as info:
        open_image(path, **kwargs)
    return str(info.value)


def _px(im: Image.Image, xy) -> tuple:
    return tuple(int(v) for v in np.atleast_1d(np.asarray(im)[xy[1], xy[0]]))


# ---------- the bad-input matrix ----------

def test_missing_file(tmp_path):
    assert _reason(tmp_path / "nope.jpg") == "file not found"


def test_directory(tmp_path):
    assert _reason(tmp_path) == "is a directory"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _reason(path) == "empty file"


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("just some notes, not a picture\n" * 10)
    assert _reason(path) == "not an image (a text file)"


def test_pdf_file(tmp_path):
    path = tmp_path / "doc.png"
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    assert _reason(path) == "not an image (a PDF document)"


def test_eps_is_not_opened(tmp_path):
    # Pillow can open EPS by running Ghostscript; we refuse the format instead.
    path = tmp_path / "figure.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert "PostScript" in _reason(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8)))
    assert _reason(path).startswith("not an image")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_does_not_hang(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    assert _reason(path) == "not a regular file"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt, monkeypatch):
    buffer = io.BytesIO()
    _photo(200, 150).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * 0.7)])
    # Even if some other library switched it on, truncated data must still be refused.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    reason = _reason(path)
    assert reason.startswith("truncated image"), reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    buffer = io.BytesIO()
    _photo(200, 150).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\x00" * 64
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    assert _reason(path).startswith("corrupt image"), _reason(path)


def test_corrupt_png_header(tmp_path):
    data = bytearray(_png_header_only(10, 10))
    data[29] ^= 0xFF  # break the IHDR checksum
    path = tmp_path / "badcrc.png"
    path.write_bytes(bytes(data))
    assert _reason(path) == "corrupt image (damaged PNG header)"


# ---------- decompression bombs ----------

def test_bomb_header_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    assert path.stat().st_size < 200
    assert "decompression bomb" in _reason(path)
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        image_size(path)


def test_bomb_between_limits_refused_before_decoding(tmp_path):
    # 15000^2 = 225M pixels: above our limit, below Pillow's hard error. Had it been decoded, the
    # reason would be "truncated" (the file has almost no pixel data); it must be refused first.
    path = tmp_path / "bomb2.png"
    path.write_bytes(_png_header_only(15_000, 15_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        reason = _reason(path)
    assert reason.startswith("decompression bomb refused (15000x15000"), reason


def test_limit_applies_to_the_decoded_size(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    _photo(400, 320).save(path, quality=90)
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000)
    assert "decompression bomb" in _reason(path)
    # JPEG draft decodes at 1/8 scale: 50x40 pixels, well under the limit.
    assert open_image(path, draft=(50, 40)).size == (50, 40)


# ---------- modes ----------

def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    im = open_image(path)
    assert im.mode == "RGB"
    r, g, b = _px(im, (16, 16))
    assert r > 230 and g < 30 and b < 30


def test_16bit_png(tmp_path):
    a = np.zeros((8, 12), dtype=np.uint16)
    a[:, 4:8] = 32768
    a[:, 8:] = 65535
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    im = open_image(path, mode="L")
    assert im.mode == "L"
    assert [_px(im, (x, 0))[0] for x in (0, 5, 10)] == [0, 128, 255]


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (5, 0, 10, 10))
    path = tmp_path / "pal.png"
    im.save(path, transparency=0)
    out = open_image(path)
    assert out.mode == "RGB"
    assert _px(out, (1, 1)) == WHITE  # transparent black becomes white
    assert _px(out, (8, 1)) == RED


def test_rgb_colour_key_transparency(tmp_path):
    im = _halves(10, 10, left=(0, 0, 0), right=RED)
    path = tmp_path / "key.png"
    im.save(path, transparency=(0, 0, 0))  # PNG tRNS: black means transparent
    out = open_image(path)
    assert _px(out, (1, 1)) == WHITE and _px(out, (8, 1)) == RED


@pytest.mark.parametrize("mode,colour", [("RGBA", (0, 0, 0, 0)), ("LA", (0, 0))])
def test_alpha_composited_on_white(tmp_path, mode, colour):
    im = Image.new(mode, (10, 10), colour)
    opaque = (255, 0, 0, 255) if mode == "RGBA" else (0, 255)
    im.paste(Image.new(mode, (5, 10), opaque), (5, 0))
    path = tmp_path / f"alpha_{mode}.png"
    im.save(path)
    out = open_image(path)
    assert _px(out, (1, 1)) == WHITE
    assert _px(out, (8, 1)) == (RED if mode == "RGBA" else (0, 0, 0))


def test_one_bit(tmp_path):
    im = Image.new("1", (16, 8), 0)
    im.paste(1, (8, 0, 16, 8))
    path = tmp_path / "bits.png"
    im.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and _px(out, (2, 2)) == (0, 0, 0) and _px(out, (12, 2)) == WHITE


def test_float_tiff(tmp_path):
    a = np.tile(np.linspace(-1.0, 3.0, 16, dtype=np.float32), (4, 1))
    path = tmp_path / "float.tif"
    Image.fromarray(a, "F").save(path)
    out = open_image(path, mode="L")
    assert out.mode == "L"
    row = np.asarray(out)[0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) >= 0)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 2
    assert _px(open_image(path), (10, 10)) == RED


def test_grey_output_and_rgb_passthrough(tmp_path):
    path = tmp_path / "photo.png"
    _photo().save(path)
    rgb = open_image(path)
    assert rgb.mode == "RGB" and rgb.size == (96, 64)
    assert np.array_equal(np.asarray(rgb), np.asarray(_photo()))
    assert open_image(str(path), mode="L").mode == "L"


# ---------- EXIF orientation ----------

@pytest.mark.parametrize("orientation,top,bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation(tmp_path, orientation, top, bottom):
    # Stored 60x40 with red left, blue right; 6 = turn clockwise to view, 8 = counter-clockwise.
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    _halves().save(path, quality=95, exif=exif)
    out = open_image(path)
    assert out.size == (40, 60)
    assert image_size(path) == (40, 60)
    assert np.abs(np.subtract(_px(out, (20, 5)), top)).max() < 40
    assert np.abs(np.subtract(_px(out, (20, 55)), bottom)).max() < 40


def test_image_size_without_orientation(tmp_path):
    path = tmp_path / "plain.png"
    _photo(30, 20).save(path)
    assert image_size(path) == (30, 20)
    with pytest.raises(UnreadableImage, match="file not found"):
        image_size(tmp_path / "missing.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_size_reads_only_the_header(tmp_path, monkeypatch, fmt):
    path = tmp_path / f"photo.{fmt.lower()}"
    _photo(200, 150).save(path, format=fmt)
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(1) or original_load(im))
    assert image_size(path) == (200, 150)
    assert decoded == []
    assert open_image(path).size == (200, 150) and decoded


def test_draft_keeps_at_least_requested_size(tmp_path):
    path = tmp_path / "big.jpg"
    _photo(400, 320).save(path, quality=90)
    out = open_image(path, draft=(100, 80), mode="L")
    assert out.mode == "L" and out.size == (100, 80)
    assert open_image(path, draft=(120, 90)).size == (200, 160)
    # The requested size is upright: for a stored-sideways JPEG it is swapped before decoding.
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(400, 320).save(path, quality=90, exif=exif)
    assert open_image(path, draft=(40, 50)).size == (40, 50)


# ---------- transforms ----------

TRANSFORM_NAMES = ["crop", "rotate_small", "rotate90", "scale_down", "jpeg_quality", "brightness_contrast",
                   "hflip", "text_overlay", "border", "blur", "grayscale", "crop_rotate"]


def test_transform_registry_names():
    assert list(TRANSFORMS) == TRANSFORM_NAMES


def _run(name, seed, img=None):
    img = _photo(160, 120) if img is None else img
    return TRANSFORMS[name](img, np.random.default_rng(seed))


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_transform_valid_and_deterministic(name):
    source = _photo(160, 120)
    out = _run(name, 7, source)
    assert isinstance(out, Image.Image) and out.mode in ("RGB", "L")
    assert min(out.size) >= 1
    assert np.asarray(out).size > 0
    again = _run(name, 7)
    assert out.size == again.size and out.tobytes() == again.tobytes()
    changed = out.size != source.size or out.mode != source.mode
    assert changed or not np.array_equal(np.asarray(out), np.asarray(source)), "transform changed nothing"
    assert source.tobytes() == _photo(160, 120).tobytes(), "input image was modified"


@pytest.mark.parametrize("name", [n for n in TRANSFORM_NAMES if n not in ("hflip", "grayscale")])
def test_transform_parameters_depend_on_seed(name):
    outs = {(o.size, o.tobytes()) for o in (_run(name, s) for s in range(6))}
    assert len(outs) > 1


def test_transform_geometry():
    src = _photo(160, 120)
    assert np.array_equal(np.asarray(_run("hflip", 0, src)), np.asarray(src)[:, ::-1])
    crop = _run("crop", 1, src)
    assert 80 <= crop.width <= 136 and 60 <= crop.height <= 102
    scaled = _run("scale_down", 2, src)
    assert scaled.width < 0.61 * 160 and abs(scaled.width / scaled.height - 160 / 120) < 0.1
    assert _run("border", 3, src).width > 160 and _run("border", 3, src).height > 120
    assert _run("rotate_small", 4, src).width > 160  # expanded canvas
    assert sorted(_run("rotate90", 5, src).size) == [120, 160]
    assert _run("grayscale", 6, src).mode == "L"
    cr = _run("crop_rotate", 8, src)
    assert cr.size != src.size and cr.getpixel((0, 0)) == WHITE  # rotated corner is white


def test_transform_photometric():
    src = _photo(160, 120)
    a = np.asarray(src, dtype=np.float64)
    blurred = np.asarray(_run("blur", 0, src), dtype=np.float64)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(a, axis=1)).mean()
    jpeg = _run("jpeg_quality", 0, src)
    assert jpeg.format == "JPEG" and jpeg.size == src.size
    bc = np.asarray(_run("brightness_contrast", 0, src), dtype=np.float64)
    assert abs(bc.mean() - a.mean()) > 3 or abs(bc.std() - a.std()) > 3
    text = np.asarray(_run("text_overlay", 0, src), dtype=np.float64)
    assert (np.abs(text - a).max(axis=2) > 60).mean() > 0.005  # visible lettering


def test_framed_box_cuts_a_burned_in_frame_and_leaves_photographs_whole(photos):
    """Oracle: the frame's band width is known; the box starts past it, taking at most 3 px of the picture."""
    from conftest import framed_picture

    from simbench.data.images import framed_box
    from simbench.find.yearbook import FRAME_PT

    def box(image):
        return framed_box(np.asarray(image.convert("L")))

    picture = Image.fromarray(photos["coffee"]).resize((400, 300))
    for px_per_pt in (1.0, 2.0, 3.0):
        band = FRAME_PT * px_per_pt
        x0, y0, x1, y1 = box(framed_picture(picture, px_per_pt))
        assert band <= x0 == y0 == 400 - x1 == 300 - y1 <= band + 3, (px_per_pt, x0)
    padded = Image.new("RGB", (440, 340), "white")  # a uniform border
    padded.paste(picture, (20, 20))
    assert box(padded) in [(d, d, 440 - d, 340 - d) for d in (20, 21, 22, 23)]
    for name, pixels in photos.items():  # no frame: whole
        image = Image.fromarray(pixels)
        assert box(image) == (0, 0, *image.size), name
    turned = framed_picture(picture, 2.0).rotate(5, expand=True, fillcolor="white")  # no straight inner edge
    assert box(turned) == (0, 0, *turned.size)
    assert box(Image.new("RGB", (20, 20), "white")) == (0, 0, 20, 20)


def test_corner_greys_are_the_whole_images_grey_corners(photos):
    """Oracle: OpenCV's grey conversion of the whole image, read at its four corners (upright's first look reads
    only those four pixels), on random images of several sizes and on real photographs."""
    import cv2

    from simbench.data.images import corner_greys

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in ((1, 1), (2, 7), (16, 16), (31, 45), (200, 3))]
    images += list(photos.values())
    for pixels in images:
        pixels = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
        grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY).astype(np.int16)
        want = list(grey[[0, 0, -1, -1], [0, -1, 0, -1]])
        assert list(corner_greys(Image.fromarray(pixels))) == want, pixels.shape


def test_upright_turns_a_picture_turned_on_a_plain_page_back(photos):
    """Oracle: the picture before it was turned. Turned by a known angle on a white page (expanded, so the page
    shows in the corners), it comes back at its own size (within the 2 px rim cut on each side) and agrees with
    the original pixel for pixel but for interpolation."""
    from simbench.data.images import upright

    picture = Image.fromarray(photos["astronaut"]).resize((300, 200))
    want = np.asarray(picture.convert("L"), np.float64)[8:-8, 8:-8]
    for angle in (4.0, -7.0, 20.0, -44.0):
        page = picture.rotate(angle, expand=True, fillcolor="white", resample=Image.Resampling.BICUBIC)
        back = upright(page)
        assert abs(back.width - 296) <= 3 and abs(back.height - 196) <= 3, (angle, back.size)
        got = np.asarray(back.convert("L").resize((300, 200)), np.float64)[8:-8, 8:-8]
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9, angle


def test_upright_leaves_pictures_that_are_not_turned_on_a_page(photos):
    from simbench.data.images import upright

    picture = Image.fromarray(photos["coffee"]).resize((300, 200))
    padded = Image.new("RGB", (340, 240), "white")  # on a page, square to it
    padded.paste(picture, (20, 20))
    disc = Image.new("RGB", (200, 200), "white")  # on a page, but no rectangle
    disc.paste(Image.new("RGB", (160, 160), "navy"), (20, 20), Image.fromarray(
        (np.hypot(*np.mgrid[-80:80, -80:80]) < 80).astype(np.uint8) * 255))
    barely = picture.rotate(0.2, expand=True, fillcolor="white")  # nothing of the page shows
    for image in [Image.fromarray(p) for p in photos.values()] + [padded, disc, barely, Image.new("RGB", (8, 8))]:
        assert upright(image) is image
