"""Copy-making transforms: one small function per kind, `fn(img, rng) -> img`, random but seeded.

The kinds follow the edits that make copies in the two jobs behind simbench (reused book illustrations,
yearbook photos cropped and rotated) and the ISC2021 augmentation families (Douze et al., "The 2021 Image
Similarity Dataset and Challenge", arXiv:2106.09672): geometric, photometric, re-encoding, overlays.
Every parameter is drawn from `rng` inside the range each docstring states, so a seed fixes the output.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]

WHITE = (255, 255, 255)

# Words for text_overlay: captions and stamps, as found on reused pictures.
_WORDS = ("Class of 2019", "SAMPLE", "Figure 3", "Plate XII", "copyright", "Team photo", "draft",
          "Vol. II p. 214", "Spring fair", "CONFIDENTIAL", "from the archive", "Chapter 7")


def crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep a random window of 50-85% of the width and, independently, of the height."""
    return _random_window(img, rng, 0.50, 0.85)


def rotate_small(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 3-15 degrees either way, canvas expanded, corners filled white (a tilted paste-up)."""
    return _rotate(img, _small_angle(rng))


def rotate90(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 90, 180 or 270 degrees (lossless transpose)."""
    method = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
    return img.transpose(method[int(rng.integers(3))])


def scale_down(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shrink both sides by a factor of 0.25-0.6 (a thumbnail), at least 16 px a side."""
    factor = rng.uniform(0.25, 0.6)
    size = (max(16, round(img.width * factor)), max(16, round(img.height * factor)))
    return img.resize(size, Image.Resampling.LANCZOS)


def jpeg_quality(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 8-30 (heavy block artefacts).

    Returns the decoded JPEG itself (format "JPEG"), so a writer can keep its quantisation tables
    (`save(..., quality="keep")`) instead of re-encoding at high quality.
    """
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, format="JPEG", quality=int(rng.integers(8, 31)))
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out


def brightness_contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Change brightness by a factor 1 +- 0.15..0.4 and contrast by 1 +- 0.1..0.4 (signs random)."""
    brightness = 1.0 + _signed(rng, 0.15, 0.4)
    contrast = 1.0 + _signed(rng, 0.10, 0.4)
    out = ImageEnhance.Brightness(img).enhance(brightness)
    return ImageEnhance.Contrast(out).enhance(contrast)


def hflip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirror left-right (no parameters)."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def text_overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Write 1-3 captions at random places, font height 6-12% of the image height, white with black edge."""
    out = img.convert("RGB")
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 4))):
        size = max(8, round(out.height * rng.uniform(0.06, 0.12)))
        font = ImageFont.load_default(size=size)
        text = _WORDS[int(rng.integers(len(_WORDS)))]
        x = int(rng.integers(0, max(1, out.width - size * 2)))
        y = int(rng.integers(0, max(1, out.height - size)))
        draw.text((x, y), text, font=font, fill=WHITE, stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return out


def border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pad each side by 4-20% of the long side with one solid colour (white, black or random): a frame."""
    long_side = max(img.size)
    widths = [round(long_side * rng.uniform(0.04, 0.20)) for _ in range(4)]  # left, top, right, bottom
    colour = _border_colour(rng)
    return ImageOps.expand(img.convert("RGB"), border=tuple(widths), fill=colour)


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 1.5-4 px per 512 px of the long side."""
    radius = rng.uniform(1.5, 4.0) * max(img.size) / 512
    return img.filter(ImageFilter.GaussianBlur(radius))


def grayscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Drop colour (ITU-R 601-2 luma, Pillow's "L"); returns an "L" image."""
    return img.convert("L")


def crop_rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Crop a 55-85% window, then rotate it by 3-15 degrees either way (corners white)."""
    return _rotate(_random_window(img, rng, 0.55, 0.85), _small_angle(rng))


#: name -> transform; the names are the labels of the copies in every dataset.
TRANSFORMS: dict[str, Transform] = {
    "crop": crop,
    "rotate_small": rotate_small,
    "rotate90": rotate90,
    "scale_down": scale_down,
    "jpeg_quality": jpeg_quality,
    "brightness_contrast": brightness_contrast,
    "hflip": hflip,
    "text_overlay": text_overlay,
    "border": border,
    "blur": blur,
    "grayscale": grayscale,
    "crop_rotate": crop_rotate,
}


def _random_window(img: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """A window of lo..hi of each side at a random position (at least 1 px)."""
    w = max(1, round(img.width * rng.uniform(lo, hi)))
    h = max(1, round(img.height * rng.uniform(lo, hi)))
    x = int(rng.integers(0, img.width - w + 1))
    y = int(rng.integers(0, img.height - h + 1))
    return img.crop((x, y, x + w, y + h))


def _small_angle(rng: np.random.Generator) -> float:
    """3-15 degrees, either way."""
    return _signed(rng, 3.0, 15.0)


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A magnitude in [lo, hi) with a random sign (so the change is never negligible)."""
    magnitude = rng.uniform(lo, hi)
    return float(magnitude if rng.integers(2) else -magnitude)


def _rotate(img: Image.Image, angle: float) -> Image.Image:
    """Rotate counter-clockwise by `angle` degrees, canvas expanded to fit, corners white."""
    img = img.convert("RGB")
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)


def _border_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """White, black or a random colour, one in three each."""
    choice = int(rng.integers(3))
    if choice == 0:
        return WHITE
    if choice == 1:
        return (0, 0, 0)
    return tuple(int(v) for v in rng.integers(0, 256, size=3))
