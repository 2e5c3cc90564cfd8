"""Copy-making edits of the development benchmark (simbench.data.devset): one small function per family.

Every edit is `fn(img, rng) -> img` (PIL RGB in, PIL RGB out), random but seeded: every parameter is drawn
from `rng` inside the range its docstring states. The families are the edits DESIGN.md says users expect to
be found, and the ISC2021 augmentations (Douze et al., "The 2021 Image Similarity Dataset and Challenge",
arXiv:2106.09672) made with their library, AugLy (Papakipos & Bitton, "AugLy: Data Augmentations for
Robustness", arXiv:2201.06494; github.com/facebookresearch/AugLy).

- AugLy-backed (AUGLY_EDITS): screenshot, emoji, text, stripes, pad. AugLy is imported inside these
  functions only, so simbench imports without it; its bundled assets (screenshot templates, Twemoji
  emoji, fonts) are used as they ship.
- Our own: crop, crop_rotate, rotate, rotate90, hflip, aspect, scan, colour, grayscale, blur, jpeg,
  downscale, paste; and chain2 / chain3 (two or three of CHAIN_MEMBERS in turn). Where
  simbench.data.transforms already has the edit, it is imported from there.

Overlays (the AugLy ones and `logo`) are split in two: `<name>_params(rng) -> dict` draws the parameters
(JSON-ready, independent of the picture) and `apply_<name>(img, params)` draws the overlay. The builder
records the parameters of each copy and stamps the *same* overlay onto unrelated distractors, so that a
shared emoji, caption, frame or logo alone never makes two pictures a pair.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from simbench.data.transforms import blur as _blur_transform
from simbench.data.transforms import brightness_contrast, grayscale as _grey, hflip as _hflip
from simbench.data.transforms import jpeg_quality, rotate90 as _rotate90

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]

#: Fonts of AugLy's assets used for captions: readable ones (no dingbats or symbol fonts).
TEXT_FONTS = ("Montserrat-Bold.ttf", "IBMPlexSans-Bold.ttf", "IBMPlexSerif-Regular.ttf", "Chunkfive.ttf",
              "Lobster_1.3.ttf", "LeagueSpartan-Bold.ttf", "Impact.ttf", "KaushanScript-Regular.ttf")
#: Captions for the text overlay, passed to AugLy explicitly (it picks random characters otherwise).
CAPTIONS = ("Class of 2019", "SAMPLE", "Figure 3", "Plate XII", "copyright 2021", "Team photo", "DRAFT",
            "Vol. II p. 214", "Spring fair", "CONFIDENTIAL", "from the archive", "Chapter 7", "@holiday_pics",
            "Best of summer", "NOT FOR SALE", "Photo: J. Smith", "Welcome home", "Page 42", "#tbt", "LIMITED")
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
#: Paper tints for scans (RGB multipliers as 0-255 colours): white, cream, old yellowed, cool grey.
PAPERS = ((250, 249, 245), (246, 239, 222), (236, 224, 196), (238, 240, 242))


# --------------------------------------------------------------------------------------- helpers


def _rgb(img: Image.Image) -> Image.Image:
    """img as RGB (an RGB image is returned as is, so a JPEG's format survives)."""
    return img if img.mode == "RGB" else img.convert("RGB")


def _colour(rng: np.random.Generator) -> list[int]:
    """White, black or a random colour, one in three each (as a JSON-ready list)."""
    choice = int(rng.integers(3))
    if choice < 2:
        return list(WHITE if choice == 0 else BLACK)
    return [int(v) for v in rng.integers(0, 256, size=3)]


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A magnitude in [lo, hi) with a random sign."""
    magnitude = float(rng.uniform(lo, hi))
    return magnitude if rng.integers(2) else -magnitude


def _window(img: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """A window keeping lo..hi of the area, its aspect ratio within 1.5x of the picture's, placed at random."""
    area = rng.uniform(lo, hi)
    stretch = math.exp(rng.uniform(-math.log(1.5), math.log(1.5)))
    w = min(img.width, max(1, round(img.width * math.sqrt(area * stretch))))
    h = min(img.height, max(1, round(img.height * math.sqrt(area / stretch))))
    x = int(rng.integers(0, img.width - w + 1))
    y = int(rng.integers(0, img.height - h + 1))
    return img.crop((x, y, x + w, y + h))


def _inscribed(w: int, h: int, degrees: float) -> tuple[int, int]:
    """Width and height of the largest axis-aligned rectangle inside a w x h rectangle rotated by `degrees`
    (the crop AugLy's rotate makes, after its `rotated_rect_with_max_area`)."""
    a = math.radians(abs(degrees))
    sin_a, cos_a = abs(math.sin(a)), abs(math.cos(a))
    long_side, short_side = max(w, h), min(w, h)
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side  # half-constrained: two corners touch the longer side
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    return max(1, int(wr)), max(1, int(hr))


def _rotate(img: Image.Image, degrees: float, fill=None) -> Image.Image:
    """Rotate counter-clockwise; fill=None crops to the largest inscribed rectangle (no corners),
    else the canvas is expanded and the corners filled with that colour."""
    img = _rgb(img)
    if fill is not None:
        return img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=tuple(fill))
    out = img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)
    w, h = _inscribed(img.width, img.height, degrees)
    x, y = (out.width - w) // 2, (out.height - h) // 2
    return out.crop((x, y, x + w, y + h))


def _augly():
    """augly.image.functional, imported on first use (AugLy is an optional dependency)."""
    try:
        import augly.image.functional as augly_functional
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("this edit needs AugLy: pip install augly (and Debian's libmagic1)") from exc
    return augly_functional


def augly_available() -> bool:
    """True when AugLy imports."""
    try:
        _augly()
    except ImportError:
        return False
    return True


def _assets_dir() -> str:
    """AugLy's bundled assets folder."""
    from augly.utils.base_paths import ASSETS_BASE_DIR

    return ASSETS_BASE_DIR


@functools.lru_cache(maxsize=1)
def _emoji_files() -> tuple[str, ...]:
    """AugLy's Twemoji PNGs, relative to its assets folder, sorted (so a seed picks the same one)."""
    root = os.path.join(_assets_dir(), "twemojis")
    found = [os.path.relpath(os.path.join(d, f), _assets_dir())
             for d, _, files in os.walk(root) for f in files if f.endswith(".png")]
    return tuple(sorted(found))


# ---------------------------------------------------------------------- AugLy-backed overlays


def screenshot_params(rng: np.random.Generator) -> dict:
    """One of AugLy's screenshot templates (web page or phone feed), the picture cropped or squeezed to fit."""
    return {"template": ("web.png", "mobile.png")[int(rng.integers(2))], "crop_to_fit": bool(rng.integers(2))}


def apply_screenshot(img: Image.Image, params: dict) -> Image.Image:
    """AugLy overlay_onto_screenshot: the picture shown inside a social-media screenshot template."""
    template = os.path.join(_assets_dir(), "screenshot_templates", params["template"])
    return _rgb(_augly().overlay_onto_screenshot(_rgb(img), template_filepath=template,
                                                  crop_src_to_fit=params["crop_to_fit"]))


def screenshot(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Picture inside a screenshot frame (AugLy overlay_onto_screenshot; ISC2021's "screenshot" edit)."""
    return apply_screenshot(img, screenshot_params(rng))


def emoji_params(rng: np.random.Generator) -> dict:
    """An AugLy Twemoji, 15-40% of the picture's height, anywhere, opacity 0.6-1."""
    files = _emoji_files()
    return {"emoji": files[int(rng.integers(len(files)))], "size": round(float(rng.uniform(0.15, 0.40)), 3),
            "x": round(float(rng.uniform(0.0, 0.8)), 3), "y": round(float(rng.uniform(0.0, 0.8)), 3),
            "opacity": round(float(rng.uniform(0.6, 1.0)), 3)}


def apply_emoji(img: Image.Image, params: dict) -> Image.Image:
    """AugLy overlay_emoji with the given emoji, size, place and opacity."""
    return _rgb(_augly().overlay_emoji(_rgb(img), emoji_path=os.path.join(_assets_dir(), params["emoji"]),
                                       emoji_size=params["size"], x_pos=params["x"], y_pos=params["y"],
                                       opacity=params["opacity"]))


def emoji(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An emoji stuck on the picture (AugLy overlay_emoji)."""
    return apply_emoji(img, emoji_params(rng))


def text_params(rng: np.random.Generator) -> dict:
    """A caption from CAPTIONS in one of TEXT_FONTS, 8-18% of the short side high, a random colour,
    placed in the left half, opacity 0.7-1."""
    return {"text": CAPTIONS[int(rng.integers(len(CAPTIONS)))],
            "font": TEXT_FONTS[int(rng.integers(len(TEXT_FONTS)))],
            "size": round(float(rng.uniform(0.08, 0.18)), 3), "colour": _colour(rng),
            "x": round(float(rng.uniform(0.0, 0.45)), 3), "y": round(float(rng.uniform(0.05, 0.8)), 3),
            "opacity": round(float(rng.uniform(0.7, 1.0)), 3)}


@functools.lru_cache(maxsize=None)
def _font_chars(font: str) -> tuple[int, ...]:
    """The code points AugLy's overlay_text indexes for `font` (the .pkl next to the .ttf)."""
    import pickle

    with open(os.path.join(_assets_dir(), "fonts", os.path.splitext(font)[0] + ".pkl"), "rb") as f:
        return tuple(pickle.load(f))


def apply_text(img: Image.Image, params: dict) -> Image.Image:
    """AugLy overlay_text with our own caption: AugLy takes text as indices into the font's character list,
    so the caption is translated into those (characters the font lacks are dropped)."""
    chars = _font_chars(params["font"])
    indices = [chars.index(ord(c)) for c in params["text"] if ord(c) in chars]
    return _rgb(_augly().overlay_text(_rgb(img), text=indices,
                                      font_file=os.path.join(_assets_dir(), "fonts", params["font"]),
                                      font_size=params["size"], color=tuple(params["colour"]),
                                      x_pos=params["x"], y_pos=params["y"], opacity=params["opacity"]))


def text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption written over the picture (AugLy overlay_text with a seeded caption, not AugLy's random one)."""
    return apply_text(img, text_params(rng))


def stripes_params(rng: np.random.Generator) -> dict:
    """Stripes of width 0.2-0.6 and density 0.2-0.6 (AugLy's units), any angle, solid (half the time),
    dashed or dotted, a random colour at opacity 0.4-0.8."""
    return {"width": round(float(rng.uniform(0.2, 0.6)), 3), "density": round(float(rng.uniform(0.2, 0.6)), 3),
            "angle": round(float(rng.uniform(-90, 90)), 1),
            "type": ("solid", "solid", "dashed", "dotted")[int(rng.integers(4))], "colour": _colour(rng),
            "opacity": round(float(rng.uniform(0.4, 0.8)), 3)}


def apply_stripes(img: Image.Image, params: dict) -> Image.Image:
    """AugLy overlay_stripes with the given parameters."""
    return _rgb(_augly().overlay_stripes(_rgb(img), line_width=params["width"], line_density=params["density"],
                                         line_angle=params["angle"], line_type=params["type"],
                                         line_color=tuple(params["colour"]), line_opacity=params["opacity"]))


def stripes(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A stripe pattern over the picture (AugLy overlay_stripes)."""
    return apply_stripes(img, stripes_params(rng))


def pad_params(rng: np.random.Generator) -> dict:
    """Padded square (one in three) or 5-30% of the width and, independently, height on each side;
    white, black or a random colour."""
    square = bool(rng.integers(3) == 0)
    return {"square": square, "w": round(float(rng.uniform(0.05, 0.30)), 3),
            "h": round(float(rng.uniform(0.05, 0.30)), 3), "colour": _colour(rng)}


def apply_pad(img: Image.Image, params: dict) -> Image.Image:
    """AugLy pad_square or pad with the given colour."""
    colour = tuple(params["colour"])
    if params["square"]:
        return _rgb(_augly().pad_square(_rgb(img), color=colour))
    return _rgb(_augly().pad(_rgb(img), w_factor=params["w"], h_factor=params["h"], color=colour))


def pad(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A solid border or letterbox around the picture (AugLy pad / pad_square)."""
    return apply_pad(img, pad_params(rng))


# ----------------------------------------------------------------------------------- the logo


@functools.lru_cache(maxsize=1)
def make_logo() -> Image.Image:
    """The fixed logo stamped on some copies and distractors: a 256 px RGBA badge drawn with PIL (a ring,
    a triangle and a bar), the same on every call."""
    logo = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    draw.ellipse((8, 8, 248, 248), fill=(20, 70, 160, 255), outline=WHITE, width=14)
    draw.polygon([(128, 52), (208, 188), (48, 188)], fill=(250, 190, 30, 255))
    draw.rectangle((70, 196, 186, 214), fill=WHITE)
    return logo


def logo_params(rng: np.random.Generator) -> dict:
    """Corner 0-3 (top left, top right, bottom left, bottom right), size 10-20% of the short side,
    margin 2-5% of it, opacity 0.6-1."""
    return {"corner": int(rng.integers(4)), "size": round(float(rng.uniform(0.10, 0.20)), 3),
            "margin": round(float(rng.uniform(0.02, 0.05)), 3), "opacity": round(float(rng.uniform(0.6, 1.0)), 3)}


def apply_logo(img: Image.Image, params: dict) -> Image.Image:
    """Stamp make_logo() into a corner (alpha-composited at the given opacity)."""
    out = _rgb(img).copy()
    short = min(out.size)
    side = max(8, round(short * params["size"]))
    margin = round(short * params["margin"])
    logo = make_logo().resize((side, side), Image.Resampling.LANCZOS)
    alpha = logo.getchannel("A").point(lambda a: round(a * params["opacity"]))
    x = margin if params["corner"] in (0, 2) else out.width - side - margin
    y = margin if params["corner"] in (0, 1) else out.height - side - margin
    out.paste(logo.convert("RGB"), (x, y), alpha)
    return out


def logo(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The fixed logo (make_logo) stamped in a corner (own, PIL)."""
    return apply_logo(img, logo_params(rng))


# ------------------------------------------------------------------------------ our own edits


def crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep a window of 20-60% of the area (aspect ratio within 1.5x of the picture's), placed at random."""
    return _rgb(_window(img, rng, 0.20, 0.60))


def crop_rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 30-70% of the area, then rotate by 3-30 degrees either way (as rotate does)."""
    return rotate(_window(img, rng, 0.30, 0.70), rng)


def rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 3-30 degrees either way; half the time cropped to the largest inscribed rectangle (as
    AugLy's rotate does), else on an expanded canvas with white, black or coloured corners."""
    degrees = _signed(rng, 3.0, 30.0)
    fill = None if rng.integers(2) else _colour(rng)
    return _rotate(img, degrees, fill)


def rotate90(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 90, 180 or 270 degrees (simbench.data.transforms.rotate90)."""
    return _rgb(_rotate90(img, rng))


def hflip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirror left-right (simbench.data.transforms.hflip)."""
    return _rgb(_hflip(img, rng))


def aspect(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Squash (x0.6-0.8) or stretch (x1.25-1.6) one axis, as a thumbnail made at the wrong aspect ratio."""
    factor = rng.uniform(0.6, 0.8) if rng.integers(2) else rng.uniform(1.25, 1.6)
    w, h = img.size
    size = (max(1, round(w * factor)), h) if rng.integers(2) else (w, max(1, round(h * factor)))
    return _rgb(img).resize(size, Image.Resampling.LANCZOS)


def scan(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A printed copy scanned back: grey, ink contrast squeezed (blacks 20-50), printed on tinted paper with a
    2-8% margin, skewed 0.5-2 degrees, blurred 0.4-1.2 px, paper grain noise (sigma 2-6), and rescanned at
    0.6-1.3 of the size."""
    grey = np.asarray(_rgb(img).convert("L"), dtype=np.float32) / 255.0
    black = rng.uniform(20, 50)
    paper = np.array(PAPERS[int(rng.integers(len(PAPERS)))], dtype=np.float32)
    ink = black + grey[..., None] * (paper - black)  # multiply-blend on tinted paper
    out = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8), "RGB")
    margin = max(1, round(max(out.size) * rng.uniform(0.02, 0.08)))
    paper_rgb = tuple(int(v) for v in paper)
    out = ImageOps.expand(out, border=margin, fill=paper_rgb)
    out = out.rotate(_signed(rng, 0.5, 2.0), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=paper_rgb)
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    noisy = np.asarray(out, dtype=np.float32) + rng.normal(0.0, rng.uniform(2.0, 6.0), size=(out.height, out.width, 1))
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    factor = rng.uniform(0.6, 1.3)
    return out.resize((max(16, round(out.width * factor)), max(16, round(out.height * factor))),
                      Image.Resampling.BICUBIC)


def colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Colour jitter: brightness and contrast (simbench.data.transforms.brightness_contrast), saturation
    x0.3-1.7 and a hue shift of 10-60 degrees either way."""
    out = ImageEnhance.Color(_rgb(brightness_contrast(_rgb(img), rng))).enhance(rng.uniform(0.3, 1.7))
    hsv = np.asarray(out.convert("HSV")).copy()
    shift = round(_signed(rng, 10.0, 60.0) * 256 / 360)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256  # hue wraps round the colour circle
    return Image.fromarray(hsv, "HSV").convert("RGB")


def grayscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Drop colour (simbench.data.transforms.grayscale), stored as RGB."""
    return _grey(img, rng).convert("RGB")


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 1.5-4 px per 512 px of the long side (simbench.data.transforms.blur)."""
    return _rgb(_blur_transform(_rgb(img), rng))


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 8-30 (simbench.data.transforms.jpeg_quality; the result keeps format
    "JPEG", so a writer can keep its quantisation tables)."""
    return jpeg_quality(_rgb(img), rng)


def downscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shrink both sides to 0.15-0.4 of the size (a thumbnail), at least 16 px a side."""
    factor = rng.uniform(0.15, 0.40)
    return _rgb(img).resize((max(16, round(img.width * factor)), max(16, round(img.height * factor))),
                            Image.Resampling.LANCZOS)


def paste(img: Image.Image, rng: np.random.Generator, background: Image.Image | None = None) -> Image.Image:
    """A collage: the picture scaled so its long side is 40-70% of the background's, pasted at a random place
    into a larger unrelated picture. The builder passes `background` (a picture of the distractor pool used
    nowhere else); without one, a smooth random colour field of the picture's size stands in."""
    if background is None:
        field = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        background = Image.fromarray(field, "RGB").resize(img.size, Image.Resampling.BICUBIC)
    background = _rgb(background).copy()
    scale = rng.uniform(0.40, 0.70) * max(background.size) / max(img.size)
    w = max(1, min(background.width, round(img.width * scale)))
    h = max(1, min(background.height, round(img.height * scale)))
    x = int(rng.integers(0, background.width - w + 1))
    y = int(rng.integers(0, background.height - h + 1))
    background.paste(_rgb(img).resize((w, h), Image.Resampling.LANCZOS), (x, y))
    return background


# -------------------------------------------------------------------------------------- chains


#: Families a chain draws from: the single-step ones (no screenshot, scan, paste or crop_rotate, which are
#: already compound).
CHAIN_MEMBERS = ("crop", "rotate", "rotate90", "hflip", "aspect", "colour", "grayscale", "blur", "jpeg",
                 "downscale", "pad", "text", "emoji", "stripes")


def chain(img: Image.Image, rng: np.random.Generator, n: int,
          members: tuple[str, ...] | None = None) -> tuple[Image.Image, list[str]]:
    """n different families of `members` applied in turn; returns the image and the names used.

    members=None: CHAIN_MEMBERS, less the AugLy ones when AugLy does not import.
    """
    if members is None:
        members = tuple(m for m in CHAIN_MEMBERS if m not in AUGLY_EDITS or augly_available())
    picked = [members[int(k)] for k in rng.choice(len(members), size=min(n, len(members)), replace=False)]
    for name in picked:
        img = EDITS[name](img, rng)
    return _rgb(img), picked


def chain2(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Two different CHAIN_MEMBERS families in turn (e.g. crop then JPEG)."""
    return chain(img, rng, 2)[0]


def chain3(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Three different CHAIN_MEMBERS families in turn."""
    return chain(img, rng, 3)[0]


#: family name -> edit; the names are the labels of the copies.
EDITS: dict[str, Edit] = {
    "screenshot": screenshot, "emoji": emoji, "text": text, "stripes": stripes, "pad": pad,
    "crop": crop, "crop_rotate": crop_rotate, "rotate": rotate, "rotate90": rotate90, "hflip": hflip,
    "aspect": aspect, "scan": scan, "colour": colour, "grayscale": grayscale, "blur": blur, "jpeg": jpeg,
    "downscale": downscale, "paste": paste, "chain2": chain2, "chain3": chain3,
}
#: The families that need AugLy.
AUGLY_EDITS = frozenset({"screenshot", "emoji", "text", "stripes", "pad"})
#: The families that work without AugLy.
OWN_EDITS = tuple(name for name in EDITS if name not in AUGLY_EDITS)
#: Overlays whose parameters can be copied onto other pictures: name -> (draw params, apply).
OVERLAYS: dict[str, tuple[Callable[[np.random.Generator], dict], Callable[[Image.Image, dict], Image.Image]]] = {
    "screenshot": (screenshot_params, apply_screenshot), "emoji": (emoji_params, apply_emoji),
    "text": (text_params, apply_text), "stripes": (stripes_params, apply_stripes), "pad": (pad_params, apply_pad),
    "logo": (logo_params, apply_logo),
}


def make_copy(name: str, img: Image.Image, rng: np.random.Generator, members: tuple[str, ...] | None = None,
              background: Image.Image | None = None) -> tuple[Image.Image, dict]:
    """Apply family `name`; returns the copy and what to record: {"params": ...} for an overlay,
    {"members": [...]} for a chain, {} otherwise. `members` restricts chains, `background` is paste's."""
    if name in OVERLAYS:
        params = OVERLAYS[name][0](rng)
        return OVERLAYS[name][1](img, params), {"params": params}
    if name in ("chain2", "chain3"):
        out, used = chain(img, rng, int(name[-1]), members)
        return out, {"members": used}
    if name == "paste":
        return paste(img, rng, background), {}
    return EDITS[name](img, rng), {}
