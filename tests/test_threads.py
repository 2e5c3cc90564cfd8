"""Loops spread over threads (simbench.threads.thread_map) give what the plain loop gives, in its order; so
do the per-pair steps of `find` that use it: the pictures' agreement over their overlap and the shared-frame
windows (the keypoint evidence records: tests/test_evidence.py); and the stages of `find`, matched at the same
time."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import skimage.data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simbench.find.agreement import agreement, pair_agreement  # noqa: E402
from simbench.find.frames import SharedFrames, framed_window, grey_levels  # noqa: E402
from simbench.find.items import Item, grey_thumbnail, thumbnail_jpeg  # noqa: E402
from simbench.threads import thread_map  # noqa: E402
from tests.test_frames import PICTURES, _template  # noqa: E402


def _costly(x: int) -> float:
    """A step whose cost differs from item to item (a NumPy product of its own size)."""
    m = np.random.default_rng(x).random((8 + 7 * (x % 13), 8 + 7 * (x % 13)))
    return float(np.trace(m @ m))


@pytest.mark.parametrize("threads", [None, 1, 2, 3, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 100])
def test_thread_map_is_the_plain_loop_in_order(threads, n):
    items = list(np.random.default_rng(n).permutation(n).tolist())
    assert thread_map(_costly, items, threads) == [_costly(x) for x in items]
    assert thread_map(_costly, iter(items), threads) == [_costly(x) for x in items]  # any iterable


def test_thread_map_raises_what_a_step_raises():
    def step(x):
        if x == 37:
            raise ValueError("step 37")
        return x

    with pytest.raises(ValueError, match="step 37"):
        thread_map(step, range(100), 3)


def _photo(name: str, w: int = 400, h: int = 300) -> Image.Image:
    return ImageOps.fit(Image.fromarray(getattr(skdata, name)()).convert("RGB"), (w, h))


def _item(k: int, image: Image.Image | None) -> Item:
    thumb = thumbnail_jpeg(image) if image is not None else b"not a picture"
    return Item(None, f"/p/{k}.jpg", f"/p/{k}.jpg", None, None, str(k), thumb, f"{k}:0")


CROP = (60, 40, 340, 250)


@pytest.mark.parametrize("box", [False, True])
def test_pair_agreement_over_threads_is_the_plain_loop(box):
    """On real photos, their crops and an undecodable thumbnail, with true, random and missing maps: every
    thread count gives, bit for bit, what `agreement` gives pair by pair."""
    photos = [_photo(name) for name in ("astronaut", "chelsea", "coffee", "camera")]
    images = photos + [p.crop(CROP) for p in photos] + [None]
    items = [_item(k, im) for k, im in enumerate(images)]
    rng = np.random.default_rng(7)
    a, b = np.triu_indices(len(items), 1)
    maps = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (len(a), 1, 1))
    maps[:, :, :2] += rng.normal(0, 0.1, (len(a), 2, 2))
    maps[:, :, 2] += rng.normal(0, 0.1, (len(a), 2))
    (x0, y0, x1, y1), (w, h) = CROP, (400, 300)
    copies = (b == a + 4) & (a < 4)  # a photo and its crop: the true map
    maps[copies] = [[w / (x1 - x0), 0, -x0 / (x1 - x0)], [0, h / (y1 - y0), -y0 / (y1 - y0)]]
    maps[1::9] = np.nan  # pairs whose inliers define no map
    boxes = None
    if box:  # random boxes of a's inliers; the copies' over most of the photo
        boxes = np.sort(rng.random((len(a), 2, 2)), axis=1).transpose(0, 2, 1).reshape(-1, 4)
        boxes[copies] = [0.2, 0.2, 0.8, 0.8]
    greys = [grey_thumbnail(item.thumb) for item in items]
    want = np.array([np.nan if greys[i] is None or greys[j] is None
                     else 0.0 if not np.all(np.isfinite(maps[k]))
                     else agreement(greys[i], greys[j], maps[k], None if boxes is None else boxes[k], 12.0)
                     for k, (i, j) in enumerate(zip(a.tolist(), b.tolist()))])
    assert (want[copies] > 0.9).all() and not (want[~copies] > 0.5).any()  # the copies agree, nothing else
    assert np.isnan(want).sum() == len(items) - 1  # every pair with the undecodable thumbnail
    for threads in (1, 2, 5):
        got = pair_agreement(items, a, b, maps, boxes, 12.0, undecoded=np.nan, threads=threads)
        np.testing.assert_array_equal(got, want)


def test_shared_frames_windows_over_threads_are_the_pairwise_rule(monkeypatch):
    """Every pair's window, compared over threads up front, is what framed_window gives that pair alone."""
    import simbench.threads

    monkeypatch.setattr(simbench.threads, "available_cores", lambda: 4)  # threads on any machine
    images = [_template(_photo(name)) for name in PICTURES[:4]] + [_photo("chelsea"), None]
    items = [_item(k, im) for k, im in enumerate(images)]
    a, b = np.triu_indices(len(items), 1)
    frames = SharedFrames(items)
    framed = frames.pairs_in_frames(a, b)
    levels = [grey_levels(item.thumb) for item in items]
    for x, y in zip(a.tolist(), b.tolist()):
        gx, gy = levels[x], levels[y]
        same = gx is not None and gy is not None and gx[0].shape == gy[0].shape
        assert frames.window(x, y) == (framed_window(*gx, *gy) if same else None), (x, y)
    assert framed[(a < 4) & (b < 4)].all() and not framed[b >= 4].any()


def test_the_stages_match_at_once_as_one_after_another(tmp_path, monkeypatch):
    """raw_evidence matches the keypoint, CNN and blobs stages on a thread each: the raw pairs of one after the other
    (the blobs, align and blobs_wide stages, which verify the CNN's proposals after them, alike)."""
    from simbench.find import cascade, pipeline

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        photo = _photo(name)
        photo.save(folder / f"{name}.jpg", quality=92)
        photo.crop(CROP).save(folder / f"{name}_crop.jpg", quality=92)
    cfg = cascade.make_config()
    stages = cascade.build_stages(cfg, quiet=True)
    collected = pipeline.collect([folder], stages, cfg, None, tmp_path, False)
    at_once = pipeline.raw_evidence(stages, dict(collected.features), False, None, collected.items, True, cfg)
    monkeypatch.setattr(pipeline, "thread_map", lambda fn, items, threads=None: [fn(x) for x in items])
    in_turn = pipeline.raw_evidence(stages, dict(collected.features), False, None, collected.items, True, cfg)
    assert [s.name for s in stages] == list(at_once) == list(in_turn) == ["keypoints", "cnn", "blobs", "align",
                                                                         "blobs_wide"]
    assert len(at_once["keypoints"]) >= 3 and len(at_once["cnn"]) >= 3
    for name, got in at_once.items():
        want = in_turn[name]
        for x, y in [(got.a, want.a), (got.b, want.b), (got.score, want.score)]:
            np.testing.assert_array_equal(x, y)
        assert got.extra.keys() == want.extra.keys()
        for key in got.per_pair_fields():
            np.testing.assert_array_equal(got.extra[key], want.extra[key])
