"""Different pictures inside one shared frame (simbench.find.frames): a generated social-media template
(header, menu text, a row of avatars, an advert photo) around a window that holds a picture, as AugLy's
screenshot overlay makes them; scikit-image photos as the pictures."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

import skimage.data as skdata

from simbench.find import cascade
from simbench.find.frames import (FILL, MAIN_SHARE, TOL, SharedFrames, central_box, drop_shared_frames,
                                  main_part, same_box, three_pictures)
from simbench.find.items import Item, thumbnail_jpeg
from simbench.find.pipeline import find
from simbench.types import ScoredPairs

PICTURES = ["chelsea", "rocket", "coffee", "hubble_deep_field", "immunohistochemistry", "camera"]
WINDOW = (200, 150, 520, 400)  # 320 x 250 of a 720 x 480 page: 23% of it


def _photo(name: str, w: int, h: int) -> Image.Image:
    return ImageOps.fit(Image.fromarray(getattr(skdata, name)()).convert("RGB"), (w, h))


def _template(picture: Image.Image, window: tuple = WINDOW) -> Image.Image:
    """The picture inside the shared template, in `window` (x0, y0, x1, y1)."""
    page = Image.new("RGB", (720, 480), (246, 247, 249))
    d = ImageDraw.Draw(page)
    d.rectangle((0, 0, 720, 44), fill=(40, 70, 140))
    d.text((16, 12), "network   search ...", fill=(255, 255, 255))
    text = Image.fromarray(skdata.text()).convert("RGB").crop((0, 0, 170, 420))
    page.paste(text, (12, 54))
    astronaut = Image.fromarray(skdata.astronaut()).convert("RGB")
    for k in range(6):  # stories: a row of avatars
        avatar = ImageOps.fit(astronaut.crop((40 * k, 0, 40 * k + 200, 200)), (44, 44))
        page.paste(avatar, (200 + 54 * k, 60))
    page.paste(_photo("coffee", 160, 120), (545, 60))  # an advert
    page.paste(_photo("astronaut", 160, 120), (545, 250))
    d.text((200, 120), "John Doe  - 2 h", fill=(60, 60, 60))
    x0, y0, x1, y1 = window
    page.paste(ImageOps.fit(picture, (x1 - x0, y1 - y0)), (x0, y0))
    d.text((200, 410), "Like   Comment   Share", fill=(90, 90, 90))
    return page


def _item(k: int, image: Image.Image) -> Item:
    return Item(None, f"/pictures/{k}.jpg", f"/pictures/{k}.jpg", None, None, str(k), thumbnail_jpeg(image), f"{k}:0")


def _all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.triu_indices(n, 1)
    return a.astype(np.int64), b.astype(np.int64)


def _sepia(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L"), np.float32)[..., None] / 255
    return Image.fromarray((grey * np.array([255, 225, 180])).astype(np.uint8))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _caption(image: Image.Image, text: str) -> Image.Image:
    """A caption bar along the bottom, its text filling most of the bar."""
    out = image.copy()
    d = ImageDraw.Draw(out)
    d.rectangle((0, out.height - 60, out.width, out.height), fill=(0, 0, 0))
    d.text((10, out.height - 50), text, fill=(255, 255, 255), font=_font(34))
    return out


def _logo(image: Image.Image) -> Image.Image:
    """scikit-image's logo in the top left corner, outside the template's window."""
    out = image.copy()
    logo = Image.fromarray(skdata.logo()).resize((90, 90))
    out.paste(logo, (20, 380), logo)
    return out


def test_different_pictures_in_one_template_are_framed():
    items = [_item(k, _template(_photo(name, 400, 300))) for k, name in enumerate(PICTURES[:4])]
    a, b = _all_pairs(len(items))
    assert SharedFrames(items).pairs_in_frames(a, b).all()


def test_two_pictures_are_not_a_shared_frame():
    """Rule 3: a frame needs a third different picture."""
    items = [_item(k, _template(_photo(name, 400, 300))) for k, name in enumerate(PICTURES[:2])]
    assert not SharedFrames(items).pairs_in_frames(np.array([0]), np.array([1])).any()


def test_a_recoloured_copy_in_the_same_template_still_pairs():
    chelsea = _photo("chelsea", 400, 300)
    images = [_template(chelsea), _template(_sepia(chelsea)), _template(_photo("rocket", 400, 300)),
              _template(_photo("coffee", 400, 300))]
    items = [_item(k, im) for k, im in enumerate(images)]
    a, b = _all_pairs(len(items))
    framed = SharedFrames(items).pairs_in_frames(a, b)
    assert not framed[(a == 0) & (b == 1)].any()  # the same picture, recoloured
    assert framed[~((a == 0) & (b == 1))].all()  # every other pair holds two different pictures


def test_a_logo_on_one_picture_does_not_hide_the_frame():
    """One framed picture also carries a logo outside the window: its boxes grow a little, still one window."""
    images = [_template(_photo(name, 400, 300)) for name in PICTURES[:4]]
    images[1] = _logo(images[1])
    items = [_item(k, im) for k, im in enumerate(images)]
    a, b = _all_pairs(len(items))
    assert SharedFrames(items).pairs_in_frames(a, b).all()


def _corner_logo(image: Image.Image) -> Image.Image:
    """scikit-image's logo in the top left corner of the page: the box of its differences from another
    picture in the template now spans the page from that corner to the window."""
    out = image.copy()
    logo = Image.fromarray(skdata.logo()).resize((70, 70))
    out.paste(logo, (4, 4), logo)
    return out


def test_a_logo_in_the_corner_does_not_hide_the_frame():
    """The pairs of the picture with the logo are framed through the window its other pairs show."""
    images = [_template(_photo(name, 400, 300)) for name in PICTURES[:4]]
    images[1] = _corner_logo(images[1])
    items = [_item(k, im) for k, im in enumerate(images)]
    frames = SharedFrames(items)
    assert not same_box(frames.window(0, 1), frames.window(0, 2))  # stretched to more than twice the window
    a, b = _all_pairs(len(items))
    assert frames.pairs_in_frames(a, b).all()


def test_a_logo_in_the_corner_of_a_page_whose_window_meets_its_foot_does_not_hide_the_frame():
    """With the window along the page's foot, the logo's box touches three sides of the page: the window is
    then the main region of the differences, the logo a stray mark outside it."""
    foot = (200, 230, 520, 480)
    images = [_template(_photo(name, 400, 300), foot) for name in PICTURES[:4]]
    images[1] = _corner_logo(images[1])
    items = [_item(k, im) for k, im in enumerate(images)]
    frames = SharedFrames(items)
    assert same_box(frames.window(0, 1), frames.window(0, 2))
    a, b = _all_pairs(len(items))
    assert frames.pairs_in_frames(a, b).all()


def _under_sky(picture: Image.Image) -> Image.Image:
    """The picture's texture in a bright sky over dark ground: different pictures made so correlate in grey
    levels, as two landscapes do, but not in detail."""
    grey = np.asarray(picture.convert("L"), np.float32) / 255
    light = np.linspace(0.95, 0.1, grey.shape[0])[:, None]
    return Image.fromarray((255 * np.clip(0.75 * light + 0.25 * grey, 0, 1)).astype(np.uint8)).convert("RGB")


def test_different_landscapes_in_one_template_are_framed_and_a_blurred_copy_is_not():
    landscapes = [_under_sky(_photo(name, 400, 300)) for name in PICTURES[:4]]
    images = [_template(p) for p in landscapes] + [_template(landscapes[0].filter(ImageFilter.GaussianBlur(1.5)))]
    items = [_item(k, im) for k, im in enumerate(images)]
    a, b = _all_pairs(len(items))
    framed = SharedFrames(items).pairs_in_frames(a, b)
    blurred_copy = (a == 0) & (b == 4)
    assert not framed[blurred_copy].any()
    assert framed[~blurred_copy].all()


def test_captioned_copies_of_one_picture_are_not_framed():
    """Captions differ from the original in a bar along one side: a window in the photo, not a frame."""
    photo = _photo("astronaut", 480, 360)
    images = [photo, _caption(photo, "Class of 2024, Springfield"), _caption(photo, "Springfield High School"),
              _caption(photo, "Spring term 2024 portraits"), photo.copy()]
    items = [_item(k, im) for k, im in enumerate(images)]
    a, b = _all_pairs(len(items))
    assert not SharedFrames(items).pairs_in_frames(a, b).any()


def _sticker(image: Image.Image, centre: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """A round sticker (a face, 120 px across) stuck on the picture at `centre`, as an emoji overlay is."""
    out = image.copy()
    d = ImageDraw.Draw(out)
    x, y = centre
    d.ellipse((x - 60, y - 60, x + 60, y + 60), fill=colour, outline=(0, 0, 0), width=6)
    d.ellipse((x - 30, y - 20, x - 14, y - 4), fill=(0, 0, 0))
    d.ellipse((x + 14, y - 20, x + 30, y - 4), fill=(0, 0, 0))
    d.arc((x - 35, y - 10, x + 35, y + 40), 20, 160, fill=(0, 0, 0), width=6)
    return out


def test_copies_marked_side_by_side_are_not_framed():
    """Three copies of one photo, each with a sticker, the stickers side by side: the outer two differ in a box
    that the middle one differs from both in too (rules 1 and 2 find that window, the same for all three), yet
    no copy differs from the other two all over it: one picture, marked in three places (rule 3's FILL)."""
    photo = _photo("astronaut", 480, 360)
    images = [photo] + [_sticker(photo, (x, 180), colour)
                        for x, colour in ((120, (250, 200, 30)), (240, (230, 60, 60)), (360, (60, 160, 230)))]
    items = [_item(k, im) for k, im in enumerate(images)]
    shared = SharedFrames(items)
    outer = shared.window(1, 3)
    assert outer is not None and same_box(shared.window(1, 2), outer) and same_box(shared.window(2, 3), outer)
    a, b = _all_pairs(len(items))
    assert not shared.pairs_in_frames(a, b).any()


def test_three_pictures_against_a_plain_count():
    """three_pictures on random grey levels: three different pictures fill the box; copies of one picture with
    a mark each differ from both others where their own mark is (and where the other two marks overlap), and
    count as three pictures when those boxes fill FILL of the window, as a plain count over the sorted
    coordinates of those pixels says."""
    rng = np.random.default_rng(0)
    box = (4, 6, 28, 40)
    pictures = rng.uniform(0, 1, (3, 32, 48)).astype(np.float32)
    assert three_pictures(*pictures, box)
    photo = pictures[0]
    outcomes = []
    for trial in range(100):
        marked = []
        for _ in range(3):
            copy = photo.copy()
            h, w = rng.integers(4, 24), rng.integers(4, 34)
            t, lf = rng.integers(box[0], box[2] - h + 1), rng.integers(box[1], box[3] - w + 1)
            copy[t:t + h, lf:lf + w] = rng.uniform(0, 1, (h, w))
            marked.append(copy)
        x, y, c = (m[box[0]:box[2], box[1]:box[3]] for m in marked)
        fills = []
        for own, o1, o2 in ((x, y, c), (y, x, c)):
            rows, cols = np.nonzero((np.abs(own - o1) > TOL) & (np.abs(own - o2) > TOL))
            if len(rows) < 8:
                fills.append(0.0)
                continue
            lo, hi = int(0.01 * len(rows)), len(rows) - 1 - int(0.01 * len(rows))  # central_box's 98%
            rows, cols = np.sort(rows), np.sort(cols)
            fills.append((rows[hi] - rows[lo] + 1) * (cols[hi] - cols[lo] + 1) / x.size)
        outcomes.append(three_pictures(*marked, box))
        assert outcomes[-1] == (min(fills) >= FILL), trial
    assert 0 < sum(outcomes) < len(outcomes)  # large marks over most of the box count as different pictures


def test_pasted_cropped_and_plain_copies_are_not_framed():
    photo = _photo("chelsea", 480, 360)
    collage = _photo("hubble_deep_field", 480, 360)
    collage.paste(photo.resize((240, 180)), (200, 150))
    images = [photo, collage, photo.crop((50, 40, 350, 265)), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              _photo("rocket", 480, 360), _photo("coffee", 480, 360)]
    items = [_item(k, im) for k, im in enumerate(images)]
    a, b = _all_pairs(len(items))
    assert not SharedFrames(items).pairs_in_frames(a, b).any()


def test_blank_margins_are_not_a_frame():
    """Different pictures padded onto one plain canvas share only its blank margin."""
    def padded(name):
        canvas = Image.new("RGB", (720, 480), (255, 255, 255))
        canvas.paste(_photo(name, 320, 250), WINDOW[:2])
        return canvas

    items = [_item(k, padded(name)) for k, name in enumerate(PICTURES[:4])]
    a, b = _all_pairs(len(items))
    assert not SharedFrames(items).pairs_in_frames(a, b).any()


def test_same_box():
    assert same_box((10, 10, 30, 40), (10, 10, 30, 40))
    assert same_box((10, 10, 30, 40), (10, 2, 30, 40))  # stretched by a logo beside it
    assert not same_box((10, 10, 30, 40), (10, 10, 30, 90))  # more than twice the area
    assert not same_box((10, 10, 30, 40), (25, 10, 45, 40))  # a quarter of it inside the other
    assert not same_box(None, (10, 10, 30, 40)) and not same_box((5, 5, 5, 9), (5, 5, 5, 9))


@pytest.mark.parametrize("seed", range(6))
def test_central_box_against_sorted_coordinates(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(5, 40), rng.integers(5, 40))) < rng.uniform(0.02, 0.5)
    box = central_box(mask)
    n = int(mask.sum())
    if n < 8:
        assert box is None
        return
    cut = 0.01 * n
    ys, xs = np.sort(np.nonzero(mask)[0]), np.sort(np.nonzero(mask)[1])
    # the first coordinate with more than `cut` pixels at or before it; the last before n - cut are reached
    expected = (int(ys[int(np.floor(cut))]), int(xs[int(np.floor(cut))]),
                int(ys[int(np.ceil(n - cut)) - 1]) + 1, int(xs[int(np.ceil(n - cut)) - 1]) + 1)
    assert box == expected


def test_main_part_drops_a_far_small_mark_and_keeps_the_window_in_pieces():
    mask = np.zeros((40, 64), bool)
    mask[20:38, 14:30] = True  # the window, in two pieces one cell apart
    mask[20:38, 31:42] = True
    mask[2:7, 2:7] = True  # a logo in the corner
    mask[30, 60] = True  # a stray pixel
    kept = main_part(mask)
    assert not kept[:10, :10].any() and not kept[30, 60]
    assert np.array_equal(kept[15:, 10:45], mask[15:, 10:45])
    assert central_box(kept) == (20, 14, 38, 42)
    empty = np.zeros((8, 8), bool)
    assert np.array_equal(main_part(empty), empty)


def test_main_part_is_the_plain_labellings_on_random_masks():
    """Against scipy.ndimage: a 4-neighbour dilation, then 8-connected regions of the dilated mask, each kept
    (its pixels of the mask) when it holds MAIN_SHARE of the largest's mask pixels."""
    from scipy.ndimage import binary_dilation, label

    rng = np.random.default_rng(7)
    for _ in range(400):
        mask = rng.random(tuple(rng.integers(1, 70, 2))) < rng.random() * 0.6
        regions, n = label(binary_dilation(mask), structure=np.ones((3, 3), bool))
        size = np.bincount(regions[mask], minlength=n + 1)
        expected = mask if n <= 1 else mask & (size >= MAIN_SHARE * size.max())[regions]
        assert np.array_equal(main_part(mask), expected)


def test_drop_shared_frames_removes_the_pairs_from_every_stage_and_keeps_the_rest():
    images = [_template(_photo(name, 400, 300)) for name in PICTURES[:3]]
    images.append(_photo("chelsea", 400, 300))  # the first picture on its own: a copy of item 0's
    items = [_item(k, im) for k, im in enumerate(images)]
    keypoints = ScoredPairs(np.array([0, 0, 1, 0]), np.array([1, 2, 2, 3]), np.array([5.0, 6.0, 7.0, 8.0]),
                            {"distinctiveness": np.array([0.1, 0.2, 0.3, 0.4]), "comparisons": 12})
    cnn = ScoredPairs(np.array([0, 2]), np.array([3, 1]), np.array([0.5, 0.6]))  # (2, 1): either order
    out = drop_shared_frames({"keypoints": keypoints, "cnn": cnn}, SharedFrames(items))
    assert list(zip(out["keypoints"].a, out["keypoints"].b)) == [(0, 3)]
    assert out["keypoints"].extra["distinctiveness"].tolist() == [0.4]
    assert out["keypoints"].extra["comparisons"] == 12  # run-wide extras stay whole
    assert list(zip(out["cnn"].a, out["cnn"].b)) == [(0, 3)] and out["cnn"].score.tolist() == [0.5]


def test_undecodable_thumbnails_are_never_framed():
    images = [_template(_photo(name, 400, 300)) for name in PICTURES[:3]]
    items = [_item(k, im) for k, im in enumerate(images)]
    items[1].thumb = b"not a jpeg"
    a, b = _all_pairs(3)
    framed = SharedFrames(items).pairs_in_frames(a, b)
    assert not framed[(a == 1) | (b == 1)].any()


def test_find_reports_no_pair_of_different_pictures_in_one_template(tmp_path):
    """End to end: five different photos in the template and one of them also on its own. Without the
    rule the template pairs them (so this test can fail); with it (the default) none of them pair."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for k, name in enumerate(PICTURES[:5]):
        _template(_photo(name, 400, 300)).save(folder / f"shot{k}.jpg", quality=90)
    _photo("chelsea", 640, 480).save(folder / "original.jpg", quality=90)
    index = tmp_path / "index"
    found = {}
    for drop in (False, True):
        cfg = cascade.make_config("cascade", [f"drop_shared_frames={str(drop).lower()}",
                                              "keypoints.extractor.workers=1", "cnn.extractor.workers=0"])
        out = tmp_path / f"out-{drop}"
        find([folder], out, cfg, index=index, progress=False)
        with open(out / "pairs.csv", newline="") as f:
            found[drop] = {tuple(sorted((r["a"].rsplit("/", 1)[1], r["b"].rsplit("/", 1)[1]))): float(r["score"])
                           for r in csv.DictReader(f)}
    shots = {p: s for p, s in found[False].items() if p[0].startswith("shot") and p[1].startswith("shot")}
    assert max(shots.values()) >= 0.5  # the template alone makes them look like copies
    assert not any(p[0].startswith("shot") and p[1].startswith("shot") for p in found[True])
    # The photo in the template still pairs with its original; the other framed photos do not.
    assert [p for p, s in found[True].items() if s >= 0.5] == [("original.jpg", "shot0.jpg")]


def test_a_framed_picture_is_embedded_by_its_window(tmp_path):
    """raw_evidence with the run's items: the CNN embeddings of the framed pictures are replaced by those of
    their windows, so the framed copy of a photo comes close to the photo; the unframed photo is untouched."""
    from simbench.find.pipeline import collect, raw_evidence

    folder = tmp_path / "shots"
    folder.mkdir()
    for k, name in enumerate(PICTURES[:4]):
        _template(_photo(name, 400, 300)).save(folder / f"shot{k}.jpg", quality=90)
    _photo("chelsea", 640, 480).save(folder / "original.jpg", quality=90)
    cfg = cascade.make_config("cascade", ["keypoints.extractor.workers=1", "cnn.extractor.workers=0"])
    stages = cascade.build_stages(cfg)
    got = collect([folder], stages, cfg, tmp_path / "index", tmp_path, progress=False)
    names = [item.display.rsplit("/", 1)[1] for item in got.items]
    vectors, rows, _ = got.features["cnn"]
    before = dict(zip(rows.tolist(), np.array(vectors.vectors)))
    raw_evidence(stages, got.features, False, None, got.items, cfg.drop_shared_frames, cfg)
    vectors, rows, _ = got.features["cnn"]
    after = dict(zip(rows.tolist(), np.array(vectors.vectors)))
    original, shot = names.index("original.jpg"), names.index("shot0.jpg")
    assert np.array_equal(after[original], before[original])
    assert all(not np.array_equal(after[k], before[k]) for k in after if names[k].startswith("shot"))
    assert float(after[original] @ after[shot]) > float(before[original] @ before[shot]) + 0.1
    assert float(after[original] @ after[shot]) > 0.9
