"""The align stage (conf/find.yaml `align`): thumbnails laid over each other. The search's correlation against
a loop over every shift, a flat photo's turned and rescaled crop that aligns while a different flat photo does
not, the thumbnails extractor on good and bad files, and the stage in find: off unless it has proposals, not in
the index, its pairs and evidence where keypoints see nothing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from simbench.features.thumbnails import ThumbnailExtractor, Thumbnails
from simbench.find import cascade
from simbench.find.items import grey_thumbnail, thumbnail_jpeg
from simbench.find.yearbook import decoration, school_logo
from simbench.methods import align
from simbench.methods.align import (ALL_SCALES_UNTIL, STRETCH_RANGE, AlignMethod, OverlapNcc, align_pair,
                                    at_refine_side, overlap_ncc, refine, resized, scale_hypotheses, stretch_factors)


def _ncc_by_loops(f: np.ndarray, g: np.ndarray, min_overlap: float) -> np.ndarray:
    """For every shift d (at index d + g.shape - 1): f(p) over g(p - d) where both exist, the cosine of the two
    overlaps less their means; -1 where fewer than min_overlap of the smaller picture's pixels overlap."""
    out = np.full((f.shape[0] + g.shape[0] - 1, f.shape[1] + g.shape[1] - 1), -1.0)
    for dy in range(-g.shape[0] + 1, f.shape[0]):
        for dx in range(-g.shape[1] + 1, f.shape[1]):
            fs, gs = [], []
            for y in range(max(0, dy), min(f.shape[0], dy + g.shape[0])):
                for x in range(max(0, dx), min(f.shape[1], dx + g.shape[1])):
                    fs.append(f[y, x])
                    gs.append(g[y - dy, x - dx])
            if len(fs) >= min_overlap * min(f.size, g.size) and len(fs) > 1:
                u, v = np.array(fs) - np.mean(fs), np.array(gs) - np.mean(gs)
                out[dy + g.shape[0] - 1, dx + g.shape[1] - 1] = u @ v / np.sqrt((u @ u) * (v @ v))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_ncc_equals_the_correlation_over_every_shift(seed):
    rng = np.random.default_rng(seed)
    f = rng.random(tuple(rng.integers(4, 12, 2))).astype(np.float32)
    g = rng.random(tuple(rng.integers(4, 12, 2))).astype(np.float32)
    assert np.allclose(overlap_ncc(f, g, 0.4), _ncc_by_loops(f, g, 0.4), atol=1e-5)


def test_one_f_against_many_g_equals_each_pair_alone():
    """OverlapNcc keeps what depends on f and g's shape between calls (a search's turns and scales): shapes seen
    before, new ones and a half turn of one seen all give the loops' correlation."""
    rng = np.random.default_rng(4)
    f = rng.random((9, 7)).astype(np.float32)
    ncc_with = OverlapNcc(f, 0.4)
    gs = [rng.random(tuple(rng.integers(4, 12, 2))).astype(np.float32) for _ in range(4)]
    for g in [*gs, np.rot90(gs[0], 2), gs[1].T, *gs]:
        assert np.allclose(ncc_with(g), _ncc_by_loops(f, g, 0.4), atol=1e-5)


def test_a_window_of_a_picture_correlates_exactly_where_it_was_cut():
    f = np.random.default_rng(3).random((20, 24)).astype(np.float32)
    window = 3 * f[5:17, 4:20] + 0.5  # contrast and brightness changed alike
    ncc = overlap_ncc(f, window, 0.4)
    at = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    assert ncc[at] == pytest.approx(1.0, abs=1e-5)
    assert (at[0] - (window.shape[0] - 1), at[1] - (window.shape[1] - 1)) == (5, 4)  # f(p) over window(p - d)


def _flat(image: Image.Image, blur: float = 0.012) -> Image.Image:
    """As the yearbook makes a photo flat (simbench.find.yearbook._flatten; blur: of the long side)."""
    return ImageEnhance.Contrast(image.filter(ImageFilter.GaussianBlur(blur * max(image.size)))).enhance(0.75)


def _grey(image: Image.Image) -> np.ndarray:
    return grey_thumbnail(thumbnail_jpeg(image))


@pytest.mark.parametrize("turn", [0, 90, 270])
def test_a_flat_photos_turned_crop_aligns_and_a_different_flat_photo_does_not(photos, turn):
    whole = _flat(Image.fromarray(photos["astronaut"]))
    crop = whole.crop((60, 40, 440, 380)).rotate(turn, expand=True).resize((300, 268) if turn % 180 == 0
                                                                             else (268, 300))
    same = align_pair(_grey(whole), _grey(crop))
    assert same is not None and same.correlation > 0.95 and same.overlap > 0.5, same
    assert same.turns == {0: 0, 90: 3, 270: 1}[turn]  # b turned back by np.rot90's (counter-clockwise) quarter turns
    for other in ("coffee", "camera", "rocket"):
        different = align_pair(_grey(whole), _grey(_flat(Image.fromarray(photos[other]))))
        assert different is None or different.correlation < same.correlation - 0.05, (other, different)


def test_align_method_returns_the_pairs_that_align_with_their_fields(photos):
    pictures = [_flat(Image.fromarray(photos[name])) for name in ("astronaut", "coffee")]
    pictures.append(pictures[0].crop((50, 50, 450, 450)))
    thumbs = Thumbnails([thumbnail_jpeg(p) for p in pictures] + [b"not a jpeg"])
    assert thumbs.grey(3) is None and thumbs.grey(0).dtype == np.float32
    method = AlignMethod(ThumbnailExtractor(), proposals=2)
    got = method.score_proposed(thumbs, np.array([0, 0, 1, 0]), np.array([1, 2, 2, 3]))
    assert (0, 2) in set(zip(got.a.tolist(), got.b.tolist()))
    k = list(zip(got.a.tolist(), got.b.tolist())).index((0, 2))
    assert got.score[k] > 0.95 and got.extra["overlap"][k] > 0.5 and got.extra["turns"][k] == 0
    assert (0, 3) not in set(zip(got.a.tolist(), got.b.tolist()))  # what does not decode aligns with nothing
    assert got.extra["proposed_pairs"] == 4 and len(method.score_pairs(thumbs)) == 0
    with pytest.raises(ValueError, match="own_pairs"):
        AlignMethod(ThumbnailExtractor(), own_pairs=True)


def test_thumbnail_extractor_reads_files_and_skips_what_does_not_decode(photos, tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(photos["coffee"]).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    got = ThumbnailExtractor().extract([good, bad])
    assert got.rows.tolist() == [0] and [s.path for s in got.skipped] == [str(bad)]
    assert max(got.features.grey(0).shape) == 160 and got.features.grey(0).dtype == np.float32
    assert ThumbnailExtractor().params() == {"side": 160}


def _align(overrides=()):
    """The align stage of the cascade with these settings (uncalibrated)."""
    stages = cascade.build_stages(cascade.make_config("cascade", list(overrides)), calibrations={}, quiet=True)
    return next(s for s in stages if s.name == "align")


def test_the_align_stage_runs_only_with_proposals_and_is_keyed_by_its_settings():
    off = cascade.build_stages(cascade.make_config("cascade", ["align.method.proposals=0"]), calibrations={},
                               quiet=True)
    assert "align" not in [s.name for s in off]
    align = _align()  # 3 proposals by default (run 101)
    assert align.name == "align" and not align.indexed and not align.scores_any_pair
    params = align.settings["method_params"]
    assert params["proposals"] == 3 and params["skip_verified"] is True and params["refine_side"] == 96
    two = _align(["align.method.proposals=2"])
    assert cascade.settings_key(two.settings) != cascade.settings_key(align.settings)
    assert params["overlap_template"] is True and params["both_ways"] is True  # on since run (63)
    assert params["skip_held_at"] == 0.95  # since run (68)
    plain = _align(["align.method.overlap_template=false", "align.method.both_ways=false"])
    assert "overlap_template" not in plain.settings["method_params"]  # off: run (62)'s key, as its table has it
    assert "both_ways" not in plain.settings["method_params"]
    assert cascade.settings_key(plain.settings) != cascade.settings_key(align.settings)


def test_find_aligns_the_proposed_pairs_that_no_keypoint_stage_verified(photos, tmp_path):
    """A flat photo, its turned flat crop and other flat photos, the CNN proposing. The keypoint stages verify the
    copy here, so the align stage skipping what they found (skip_verified without skip_held_at) leaves it out, and so
    it does with skip_held_at below the copy's score by the other stages (not at 1); told not to skip, it aligns it,
    with its evidence, uncalibrated without a table and said so. The index keeps no thumbnails section."""
    import csv

    from simbench.find.pipeline import find

    folder = tmp_path / "photos"
    folder.mkdir()
    flat = _flat(Image.fromarray(photos["astronaut"]))
    flat.save(folder / "original.png")
    flat.crop((40, 60, 470, 420)).rotate(90, expand=True).save(folder / "copy.png")
    for name in ("coffee", "camera", "rocket"):
        _flat(Image.fromarray(photos[name]).convert("RGB")).save(folder / f"{name}.png")

    def run(*overrides):
        cfg = cascade.make_config(None, ["align.method.proposals=2", *overrides])
        result = find([folder], tmp_path / "out", cfg, index=tmp_path / "index", progress=False)
        names = [item.display.rsplit("/", 1)[-1] for item in result.items]
        copy = tuple(sorted((names.index("original.png"), names.index("copy.png"))))
        return result, copy, {name: set(zip(p.a.tolist(), p.b.tolist())) for name, p in result.raw.items()}

    result, copy, found = run("align.method.skip_held_at=null")  # skip what a keypoint stage found
    assert copy in found["keypoints"] | found["blobs"] and copy not in found["align"]
    result, copy, found = run("align.method.skip_held_at=null", "align.method.skip_verified_at=1.0")
    assert copy in found["keypoints"] | found["blobs"] and copy in found["align"]  # no calibrated score is certain
    result, copy, found = run("align.method.skip_held_at=0.5")  # the stages before align already hold the copy
    assert result.pairs.score[(result.pairs.a == copy[0]) & (result.pairs.b == copy[1])][0] >= 0.5
    assert copy not in found["align"]
    result, copy, found = run("align.method.skip_held_at=1.0")  # none held at certainty: the copy is looked at
    assert copy in found["align"]
    looked = found["align"]
    # A bar no alignment reaches for the pairs one side alone proposes: the copy, each other's best, stays.
    result, copy, found = run("align.method.skip_held_at=1.0", "align.method.one_sided_min_correlation=1.01")
    assert copy in found["align"] and found["align"] <= looked
    result, copy, found = run("align.method.skip_verified=false")
    assert copy in found["align"]
    assert result.evidence[copy]["align"]["correlation"] > 0.95 and result.evidence[copy]["align"]["turns"] in (1, 3)
    with open(tmp_path / "out" / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["calibrated"] == "no" for r in rows if r["method"] == "align")
    assert not any("thumbnails" in p.name for p in (tmp_path / "index").rglob("*"))
    from simbench.find.pipeline import stage_features

    align = _align()
    align.extractor.side = 100  # find has only the report's thumbnails to give it
    with pytest.raises(ValueError, match="report thumbnails"):
        stage_features(align, result.items, [], None, {}, None)


def test_two_ways_of_skipping_verified_pairs_are_not_asked_for_at_once():
    with pytest.raises(ValueError, match="skip_verified_at or skip_held_at"):
        AlignMethod(ThumbnailExtractor(), skip_verified_at=0.9, skip_held_at=0.95)
    with pytest.raises(ValueError, match="also_found needs"):
        AlignMethod(ThumbnailExtractor(), also_found=True)  # without skip_held_at it would add only skipped pairs


def test_also_found_pairs_are_verified_with_the_proposals_once_and_held_ones_not():
    """with_proposed's `also` (align's also_found): the keypoint stages' pairs join the CNN's proposals, each pair once
    whichever way round it comes, less the pairs the stage found itself and those `verified` (held) holds."""
    from types import SimpleNamespace

    from simbench.find.pipeline import with_proposed
    from simbench.types import ScoredPairs

    asked = []

    def score_proposed(features, a, b):
        asked.extend(zip(a.tolist(), b.tolist()))
        return ScoredPairs(a, b, np.ones(len(a)))

    stage = SimpleNamespace(name="align", method=SimpleNamespace(proposals=1, score_proposed=score_proposed))
    none = ScoredPairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    cnn = ScoredPairs(np.array([0, 2, 1]), np.array([1, 3, 4]), np.array([0.9, 0.8, 0.1]))  # best: 0-1, 2-3, 4-1
    keypoints = ScoredPairs(np.array([4, 0, 3]), np.array([0, 1, 5]), np.ones(3))  # 0-4 once as 4-0, 0-1 again
    held = ScoredPairs(np.array([3]), np.array([5]), np.ones(1))
    features = (object(), np.arange(6), None)
    got = with_proposed(stage, features, none, [cnn], verified=[held], also=[keypoints])
    assert sorted(asked) == [(0, 1), (0, 4), (1, 4), (2, 3)]
    assert sorted(zip(got.a.tolist(), got.b.tolist())) == [(0, 1), (0, 4), (1, 4), (2, 3)]


def test_worker_processes_align_as_this_process_does(photos, monkeypatch):
    import simbench.methods.align as align

    pictures = [_flat(Image.fromarray(photos[name])) for name in ("astronaut", "coffee", "cat")]
    pictures += [pictures[0].crop((50, 50, 450, 450)), pictures[2].rotate(90, expand=True)]
    thumbs = Thumbnails([thumbnail_jpeg(p) for p in pictures] + [b"not a jpeg"])
    a, b = np.array([0, 0, 1, 2, 0, 3, 1]), np.array([1, 3, 2, 4, 5, 4, 4])
    here = AlignMethod(ThumbnailExtractor(), workers=1).score_proposed(thumbs, a, b)
    monkeypatch.setattr(align, "MIN_PAIRS_FOR_WORKERS", 1)
    monkeypatch.setattr(align, "PAIRS_PER_TASK", 2)  # four tasks, each with its own few thumbnails
    pooled = AlignMethod(ThumbnailExtractor(), workers=2).score_proposed(thumbs, a, b)
    assert {(0, 3), (2, 4)} <= set(zip(here.a.tolist(), here.b.tolist()))
    for x, y in zip((here.a, here.b, here.score, here.extra["overlap"], here.extra["turns"]),
                    (pooled.a, pooled.b, pooled.score, pooled.extra["overlap"], pooled.extra["turns"])):
        np.testing.assert_array_equal(x, y)


def test_two_crops_neither_holding_the_other_align_on_their_overlap(photos):
    """A yearbook's two placements of one flat photo: each crop shows a part the other does not. Refined on the part
    of one that the search lays over the other (overlap_template), they line up closely; a different flat photo
    does not."""
    photo = _flat(Image.fromarray(photos["astronaut"]))
    left, right = photo.crop((0, 60, 380, 440)), photo.crop((130, 0, 512, 380))
    a, b = (grey_thumbnail(thumbnail_jpeg(p)) for p in (left, right))
    other = grey_thumbnail(thumbnail_jpeg(_flat(Image.fromarray(photos["coffee"])).crop((0, 0, 400, 400))))
    found = align_pair(a, b, overlap_template=True)
    assert found is not None and found.correlation > 0.95 and found.turns == 0
    scale = np.sqrt(abs(np.linalg.det(found.warp[:, :2].astype(np.float64))))
    assert abs(scale - 1) < 0.1  # the two crops are at one scale
    different = align_pair(a, other, overlap_template=True)
    assert different is None or different.correlation < found.correlation - 0.05


def test_both_ways_keeps_the_better_of_a_over_b_and_b_over_a(photos):
    photo = _flat(Image.fromarray(photos["astronaut"]))
    a, b = (grey_thumbnail(thumbnail_jpeg(p)) for p in (photo.crop((0, 60, 380, 440)), photo.crop((130, 0, 512, 380))))
    b = np.ascontiguousarray(np.rot90(b))  # b turned a quarter turn counter-clockwise
    one, other = align_pair(a, b, overlap_template=True), align_pair(b, a, overlap_template=True)
    both = align_pair(a, b, overlap_template=True, both_ways=True)
    best = max((x for x in (one, other) if x is not None), key=lambda x: x.correlation)
    assert both.correlation == best.correlation and both.swapped == (best is other)
    assert both.turns == 3  # b turned three more quarter turns lies as a does, whichever way round it was aligned


def test_tilts_align_a_crop_drawn_turned_by_a_few_degrees(photos):
    """A placement drawn turned by 7 degrees (the page white in its box's corners): ECC does not get there from the
    upright search's placement; searched at 5 degrees as well (tilts), it lines up, the tilt said. A different flat
    picture so turned still does not."""
    photo = _flat(Image.fromarray(photos["coins"]).convert("RGB"), 0.03)
    width, height = photo.size
    a = _grey(photo.crop((0, height // 10, 3 * width // 4, 17 * height // 20)))
    turned = photo.crop((width // 4, 0, width, 3 * height // 4)).rotate(-7, expand=True, resample=Image.BICUBIC,
                                                                       fillcolor=(255, 255, 255))
    b = _grey(turned)
    upright = align_pair(a, b, overlap_template=True, both_ways=True)
    tilted = align_pair(a, b, overlap_template=True, both_ways=True, tilts=(-5.0, 5.0))
    assert upright is not None and upright.correlation < 0.95 and upright.tilt == 0
    assert tilted.correlation > 0.99 and abs(tilted.tilt) == 5
    for other in ("coffee", "rocket", "cat", "camera"):
        picture = _flat(Image.fromarray(photos[other]).convert("RGB"), 0.03)
        picture = picture.rotate(-7, expand=True, fillcolor=(255, 255, 255))
        different = align_pair(a, _grey(picture), overlap_template=True, both_ways=True, tilts=(-5.0, 5.0))
        assert different is None or different.correlation < 0.95, (other, different)


def test_tilts_key_the_table_only_when_set():
    default, tilted = _align(), _align(["align.method.tilts=[-5,5]"])
    assert "tilts" not in default.settings["method_params"]
    assert tilted.settings["method_params"]["tilts"] == [-5.0, 5.0]
    assert cascade.settings_key(tilted.settings) != cascade.settings_key(default.settings)


def test_an_alignment_without_a_finite_correlation_is_dropped(photos, monkeypatch):
    """OpenCV's ECC can return inf where a part compared is blank (a drawing's white paper): no alignment, rather
    than one that outranks every real one."""
    import simbench.methods.align as align

    photo = _flat(Image.fromarray(photos["astronaut"]))
    a, b = (_grey(p) for p in (photo.crop((0, 60, 380, 440)), photo.crop((130, 0, 512, 380))))
    assert align_pair(a, b, overlap_template=True) is not None
    ecc = align.cv2.findTransformECC

    def no_finite_correlation(*args):
        _, warp = ecc(*args)
        return float("inf"), warp

    monkeypatch.setattr(align.cv2, "findTransformECC", no_finite_correlation)
    assert align_pair(a, b, overlap_template=True, both_ways=True) is None


def test_verified_pairs_are_the_kept_ones_scoring_at_least_the_floor(caplog):
    """align's skip_verified_at: of a keypoint stage's found pairs, those it keeps (past its overlap agreement) with a
    calibrated score >= the floor; every found pair without a floor, or (said in the log) without a table."""
    import logging
    from types import SimpleNamespace

    from simbench.find.pipeline import verified_pairs
    from simbench.types import ScoredPairs

    found = ScoredPairs(np.array([0, 0, 1, 2]), np.array([1, 2, 3, 3]), np.ones(4),
                        {"evidence": np.array([9.0, 1.0, 5.0, 7.0])})
    kept = found.subset(np.array([0, 1, 2]))  # the agreement dropped (2, 3)
    stage = SimpleNamespace(name="keypoints", is_calibrated=True, raw_signal=lambda p: p.extra["evidence"],
                            calibrated=lambda raw: raw / 10)
    assert verified_pairs(stage, found, lambda s: kept, None) is found
    got = verified_pairs(stage, found, lambda s: kept, 0.5)
    assert list(zip(got.a.tolist(), got.b.tolist())) == [(0, 1), (1, 3)]
    stage.is_calibrated = False
    with caplog.at_level(logging.WARNING, logger="simbench"):
        assert verified_pairs(stage, found, lambda s: kept, 0.5) is found
    assert "not calibrated" in caplog.text


def _placed(photo: Image.Image, crop: tuple[int, int, int, int]) -> np.ndarray:
    """A yearbook placement's thumbnail (simbench.find.yearbook): the crop, framed, the school's logo stamped in its
    own bottom right corner, drawn 220 points wide."""
    shown = photo.crop(crop).convert("RGB")
    overlay = decoration(shown.size, shown.width / 220, school_logo(), frame=True)
    shown.paste(overlay, (0, 0), overlay)
    return _grey(shown)


@pytest.mark.parametrize("name, crops", [
    ("astronaut", ((189, 25, 460, 486), (30, 20, 491, 409))),
    ("cat", ((138, 12, 391, 223), (41, 15, 396, 198))),
    ("coins", ((142, 15, 345, 295), (23, 12, 368, 242)))])
def test_trim_leaves_out_the_logo_each_placement_carries_in_its_own_corner(photos, name, crops):
    """Two placements of one flat photo, each with the logo in its own corner: over their overlap each logo lies on
    the other's photo and the correlation drops. Trimmed, the two line up closely; different flat photos so dressed
    still do not."""
    photo = _flat(Image.fromarray(photos[name]).convert("RGB"))
    a, b = (_placed(photo, crop) for crop in crops)
    plain = align_pair(a, b, overlap_template=True, both_ways=True)
    trimmed = align_pair(a, b, overlap_template=True, both_ways=True, trim=True)
    assert trimmed.correlation > 0.998 and trimmed.correlation > plain.correlation + 0.005, (plain, trimmed)
    for other in ("coffee", "rocket", "clock", "horse"):
        picture = _flat(Image.fromarray(photos[other]).convert("RGB"))
        w, h = picture.size
        different = align_pair(a, _placed(picture, (w // 5, h // 5, w, h)), overlap_template=True, both_ways=True,
                               per_turn=3, trim=True)
        assert different is None or different.correlation < 0.98, (other, different)


def test_per_turn_refines_a_scale_the_search_ranks_below_its_best(photos):
    """Two flat placements whose search puts its best correlation on a wrong placement: refining each turn's three
    best scales finds the better alignment the search's margin left out."""
    photo = _flat(Image.fromarray(photos["horse"]).convert("RGB"))
    a, b = _placed(photo, (58, 22, 378, 244)), _placed(photo, (44, 61, 389, 227))
    best_only = align_pair(a, b, overlap_template=True, both_ways=True)
    three = align_pair(a, b, overlap_template=True, both_ways=True, per_turn=3)
    assert three.correlation > 0.995 and three.correlation > best_only.correlation + 0.005, (best_only, three)
    with pytest.raises(ValueError, match="per_turn"):
        AlignMethod(ThumbnailExtractor(), per_turn=-1)


def test_per_turn_and_trim_key_the_table_only_when_set():
    default, new = _align(["align.method.per_turn=0", "align.method.trim=false"]), _align(
        ["align.method.per_turn=3", "align.method.trim=true"])
    assert not {"per_turn", "trim", "trim_sigmas"} & set(default.settings["method_params"])
    assert new.settings["method_params"]["per_turn"] == 3 and new.settings["method_params"]["trim_sigmas"] == 3.0
    assert cascade.settings_key(new.settings) != cascade.settings_key(default.settings)


def test_trim_keeps_the_untrimmed_alignment_where_too_much_would_be_left_out(photos, monkeypatch):
    """With every pixel an outlier (no spread allowed) more than MAX_TRIM of the overlap would go: the alignment is
    the untrimmed one, not one fitted on what little is left."""
    import simbench.methods.align as align

    photo = _flat(Image.fromarray(photos["astronaut"]).convert("RGB"))
    a, b = _placed(photo, (189, 25, 460, 486)), _placed(photo, (30, 20, 491, 409))
    plain = align_pair(a, b, overlap_template=True, both_ways=True)
    monkeypatch.setattr(align, "TRIM_SIGMAS", -1.0)
    everything_out = align_pair(a, b, overlap_template=True, both_ways=True, trim=True)
    assert everything_out.correlation == plain.correlation
    np.testing.assert_array_equal(everything_out.warp, plain.warp)


def test_min_correlation_drops_looser_alignments_and_keys_the_table_only_when_set(photos):
    pictures = [_flat(Image.fromarray(photos["astronaut"]))]
    pictures.append(pictures[0].crop((50, 50, 450, 450)))
    thumbs = Thumbnails([thumbnail_jpeg(p) for p in pictures])
    every = AlignMethod(ThumbnailExtractor(), overlap_template=True).score_proposed(thumbs, np.array([0]), np.array([1]))
    assert len(every) == 1
    at = float(every.score[0])
    kept = AlignMethod(ThumbnailExtractor(), overlap_template=True, min_correlation=at - 1e-6)
    dropped = AlignMethod(ThumbnailExtractor(), overlap_template=True, min_correlation=np.nextafter(at, 2.0))
    assert kept.score_proposed(thumbs, np.array([0]), np.array([1])).score.tolist() == [at]
    none = dropped.score_proposed(thumbs, np.array([0]), np.array([1]))
    assert len(none) == 0 and none.extra["proposed_pairs"] == 1
    assert "min_correlation" not in _align(["align.method.min_correlation=0"]).settings["method_params"]
    assert _align(["align.method.min_correlation=0.97"]).settings["method_params"]["min_correlation"] == 0.97


def test_proposal_depth_keys_the_table_only_when_deeper_than_proposals():
    assert "proposal_depth" not in AlignMethod(ThumbnailExtractor(), proposals=2).params()
    assert "proposal_depth" not in AlignMethod(ThumbnailExtractor(), proposals=2, proposal_depth=2).params()
    assert AlignMethod(ThumbnailExtractor(), proposals=2, proposal_depth=4).params()["proposal_depth"] == 4
    with pytest.raises(ValueError, match="proposal_depth"):
        AlignMethod(ThumbnailExtractor(), proposals=3, proposal_depth=2)


def test_unheld_proposals_key_the_table_only_when_on():
    assert "unheld_proposals" not in AlignMethod(ThumbnailExtractor(), proposals=2).params()
    assert AlignMethod(ThumbnailExtractor(), proposals=2, unheld_proposals=1).params()["unheld_proposals"] == 1
    with pytest.raises(ValueError, match="unheld_proposals"):
        AlignMethod(ThumbnailExtractor(), proposals=2, unheld_proposals=-1)
    # Without skip_verified nothing is skipped, so no image is held: off (find's default 1 with skip_verified=false).
    looks_at_all = AlignMethod(ThumbnailExtractor(), proposals=2, unheld_proposals=1, skip_verified=False)
    assert looks_at_all.unheld_proposals == 0 and "unheld_proposals" not in looks_at_all.params()


def test_gradient_correlation_against_a_plain_computation(photos):
    """gradient_correlation: Pearson's r of the Sobel gradient magnitudes over the template's pixels that the warp lays
    inside the mask, less one pixel along that part's edge, as plain NumPy computes it (here a whole-pixel shift); 1
    for a picture against itself, unchanged by a linear change of grey levels, near 0 against noise."""
    from simbench.methods.align import gradient_correlation

    a = grey_thumbnail(thumbnail_jpeg(Image.fromarray(photos["astronaut"]).resize((160, 160))))
    b = grey_thumbnail(thumbnail_jpeg(Image.fromarray(photos["coffee"]).resize((160, 160))))
    template = np.ascontiguousarray(a[8:-8, 8:-8])
    mask = np.zeros(a.shape, np.uint8)
    mask[20:130, 30:150] = 1  # part of the template falls outside it
    warp = np.float32([[1, 0, 8], [0, 1, 8]])  # template pixel (x, y) -> (x + 8, y + 8)

    def magnitude(x):  # Sobel 3 x 3, borders reflected as OpenCV's default (REFLECT_101)
        p = np.pad(x.astype(np.float64), 1, mode="reflect")
        gx = (p[:-2, 2:] - p[:-2, :-2]) + 2 * (p[1:-1, 2:] - p[1:-1, :-2]) + (p[2:, 2:] - p[2:, :-2])
        gy = (p[2:, :-2] - p[:-2, :-2]) + 2 * (p[2:, 1:-1] - p[:-2, 1:-1]) + (p[2:, 2:] - p[:-2, 2:])
        return np.sqrt(gx * gx + gy * gy)

    def plain(other):
        under = mask[8:-8, 8:-8] > 0  # the mask where the shift lays it
        h, w = under.shape
        inside = under.copy()
        for y in range(h):  # 3 x 3 erosion; outside the picture counts as inside (OpenCV's default)
            for x in range(w):
                inside[y, x] = under[max(0, y - 1):y + 2, max(0, x - 1):x + 2].all()
        return np.corrcoef(magnitude(template)[inside], magnitude(other[8:-8, 8:-8])[inside])[0, 1]

    for other in (b, 0.6 * a + 0.3 * b):
        assert gradient_correlation(template, other, mask, warp) == pytest.approx(plain(other), abs=1e-4)
    assert 0.3 < plain(0.6 * a + 0.3 * b) < 0.99 and plain(b) < 0.5
    assert gradient_correlation(template, a, mask, warp) == pytest.approx(1.0, abs=1e-5)
    assert gradient_correlation(template, 0.5 * a + 0.2, mask, warp) == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(0).random(a.shape).astype(np.float32)
    assert abs(gradient_correlation(template, noise, mask, warp)) < 0.1
    tiny = np.zeros(a.shape, np.uint8)
    tiny[40:44, 40:44] = 1
    assert np.isnan(gradient_correlation(template, b, tiny, warp))


def test_min_gradient_correlation_drops_alignments_below_it_and_keys_the_table_only_when_set(photos):
    pictures = [Image.fromarray(photos["astronaut"])]
    pictures.append(pictures[0].crop((50, 50, 450, 450)))
    thumbs = Thumbnails([thumbnail_jpeg(p) for p in pictures])
    found = align_pair(thumbs.grey(0), thumbs.grey(1), overlap_template=True, gradient=True)
    assert found is not None and found.gradient > 0.8  # a crop of the photo: its edges line up too
    pair = (np.array([0]), np.array([1]))
    kept = AlignMethod(ThumbnailExtractor(), overlap_template=True, min_gradient_correlation=found.gradient - 1e-6)
    dropped = AlignMethod(ThumbnailExtractor(), overlap_template=True,
                          min_gradient_correlation=np.nextafter(found.gradient, 2.0))
    assert len(kept.score_proposed(thumbs, *pair)) == 1 and len(dropped.score_proposed(thumbs, *pair)) == 0
    assert "min_gradient_correlation" not in _align([]).settings["method_params"]
    assert _align(["align.method.min_gradient_correlation=0.1"]).settings["method_params"][
        "min_gradient_correlation"] == 0.1


def test_equalised_against_a_plain_histogram_equalisation():
    from simbench.methods.align import equalised

    rng = np.random.default_rng(0)
    image = (rng.beta(2, 5, (40, 60)) * 0.8).astype(np.float32)  # skewed grey levels
    levels = np.clip(np.rint(image * 255), 0, 255).astype(int)
    counts = np.bincount(levels.ravel(), minlength=256)
    cdf = np.cumsum(counts)
    first = counts[np.flatnonzero(counts)[0]]
    lut = np.clip(np.rint((cdf - first) * 255.0 / (levels.size - first)), 0, 255)
    assert np.abs(equalised(image) * 255 - lut[levels]).max() <= 1.0
    # A monotone change of grey levels comes out the same, up to the 256 levels' rounding.
    change = np.abs(equalised(np.sqrt(image)) - equalised(image))
    assert change.max() <= 6 / 255 and change.mean() <= 1.5 / 255


def test_equalise_aligns_a_copy_recoloured_by_a_curve_and_keys_the_table_only_when_set(photos):
    from simbench.methods.align import equalised

    original = _flat(Image.fromarray(photos["astronaut"]))
    grey = np.asarray(original.convert("L"), np.float32) / 255
    curved = Image.fromarray((255 * (grey ** 3)).astype(np.uint8)).crop((40, 40, 440, 460))  # darkened by a curve
    a, b = (grey_thumbnail(thumbnail_jpeg(p)) for p in (original, curved))
    plain = align_pair(a, b, overlap_template=True, both_ways=True)
    even = align_pair(a, b, overlap_template=True, both_ways=True, equalise=True)
    assert even is not None and even.correlation > 0.97
    assert plain is None or even.correlation > plain.correlation
    assert align_pair(equalised(a), equalised(b), overlap_template=True, both_ways=True).correlation == even.correlation
    assert "equalise" not in _align([]).settings["method_params"]
    assert _align(["align.method.equalise=true"]).settings["method_params"]["equalise"] is True


def test_one_sided_min_correlation_keys_the_table_only_when_on():
    assert "one_sided_min_correlation" not in AlignMethod(ThumbnailExtractor(), proposals=2).params()
    method = AlignMethod(ThumbnailExtractor(), proposals=2, one_sided_min_correlation=0.99)
    assert method.params()["one_sided_min_correlation"] == 0.99
    with pytest.raises(ValueError, match="one_sided_min_correlation"):
        AlignMethod(ThumbnailExtractor(), proposals=0, one_sided_min_correlation=0.99)


_AS_FIND_ALIGNS = {"overlap_template": True, "both_ways": True, "per_turn": 3, "trim": True}


def test_all_scales_from_refines_a_loose_alignment_from_every_scale_of_its_turn(photos):
    """Two placements of one flat photo whose search peaks over scale miss the copy's scale: the best refinement
    correlates under 0.99, and refined again from every scale of its turn the two line up closely. With the bar above
    that correlation nothing is refined again; a different flat photo still does not align closely."""
    photo = _flat(Image.fromarray(photos["coins"]).convert("RGB"))
    a, b = _placed(photo, (51, 31, 245, 251)), _placed(photo, (155, 8, 357, 248))
    peaks = align_pair(a, b, **_AS_FIND_ALIGNS)
    every = align_pair(a, b, **_AS_FIND_ALIGNS, all_scales_from=0.97)
    assert 0.97 <= peaks.correlation < ALL_SCALES_UNTIL and every.correlation > 0.995, (peaks, every)
    assert align_pair(a, b, **_AS_FIND_ALIGNS, all_scales_from=peaks.correlation + 1e-6).correlation == \
        peaks.correlation
    for other in ("coffee", "rocket", "clock"):
        picture = _flat(Image.fromarray(photos[other]).convert("RGB"))
        w, h = picture.size
        different = align_pair(a, _placed(picture, (w // 5, h // 5, w, h)), **_AS_FIND_ALIGNS, all_scales_from=0.97)
        assert different is None or different.correlation < 0.98, (other, different)


def _all_scales_by_loops(a: np.ndarray, b: np.ndarray, peaks) -> float:
    """The best correlation of `peaks` (align_pair's alignment without all_scales_from) and of `refine` from every
    scale of the search grid at its quarter turn, b over a and a over b, written out plainly."""
    a, b = at_refine_side(a), at_refine_side(b)
    best = peaks.correlation
    for x, y, turns in ((a, b, peaks.turns), (b, a, (4 - peaks.turns) % 4)):
        for hypothesis in scale_hypotheses(x, y)[turns]:
            if hypothesis[0] > -1:
                found = refine(x, y, hypothesis, overlap_template=True, trim=True)
                if found is not None and found.correlation > best:
                    best = found.correlation
    return best


def _random_placement(picture: Image.Image, rng, smallest: float) -> np.ndarray:
    """`_placed` of a crop of the picture at a random place, each side smallest..0.9 of the picture's."""
    w, h = picture.size
    cw, ch = int(w * rng.uniform(smallest, 0.9)), int(h * rng.uniform(smallest, 0.9))
    x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
    return _placed(picture, (x, y, x + cw, y + ch))


def test_all_scales_from_against_refining_every_scale_by_loops(photos, monkeypatch):
    """Placements of flat photos, of one photo and of two, the second turned: with the bar at 0 and ALL_SCALES_UNTIL
    past 1, every alignment is refined again; its correlation is the plain loop's, at the same quarter turn."""
    monkeypatch.setattr(align, "ALL_SCALES_UNTIL", 1.01)
    grids = []  # the quarter turns each grid the rescan asks for is searched at
    whole_grid = align.scale_hypotheses
    monkeypatch.setattr(align, "scale_hypotheses", lambda a, b, quarter_turns=range(4): grids.append(
        list(quarter_turns)) or whole_grid(a, b, quarter_turns))
    rng = np.random.default_rng(3)
    names = ["coins", "page", "moon", "clock", "horse"]
    pictures = {n: _flat(Image.fromarray(photos[n]).convert("RGB")) for n in names}
    compared = 0
    for k in range(12):  # even: two placements of one photo; odd: of two photos
        first = names[k % len(names)]
        second = names[(k + 2) % len(names)] if k % 2 else first
        crops = [_random_placement(pictures[name], rng, 0.45) for name in (first, second)]
        crops[1] = np.ascontiguousarray(np.rot90(crops[1], k // 2))  # each way round at each quarter turn
        peaks = align_pair(*crops, **_AS_FIND_ALIGNS)
        grids.clear()
        every = align_pair(*crops, **_AS_FIND_ALIGNS, all_scales_from=0.0)
        if peaks is None:
            assert every is None
            continue
        compared += 1
        assert every.correlation == pytest.approx(_all_scales_by_loops(*crops, peaks), abs=1e-9), (first, second)
        assert every.turns == peaks.turns
        assert grids[-2:] == [[peaks.turns], [(4 - peaks.turns) % 4]]  # b's turn over a, then a's over b
    assert compared >= 6


def test_all_scales_from_keys_the_table_only_when_on():
    assert "all_scales_from" not in AlignMethod(ThumbnailExtractor(), proposals=2).params()
    for bar in (0.0, 0.97):
        params = AlignMethod(ThumbnailExtractor(), proposals=2, all_scales_from=bar).params()
        assert (params["all_scales_from"], params["all_scales_until"]) == (bar, ALL_SCALES_UNTIL)


def test_ecc_eps_is_the_module_stopping_step_given_per_run(photos, monkeypatch):
    """Oracle: align_pair with ecc_eps gives what it gives with ECC_EPS itself set to that value (ECC and the trim's
    ECC alike), over placements of one flat photo and of two."""
    rng = np.random.default_rng(5)
    names = ["coins", "page", "moon", "clock"]
    pictures = {n: _flat(Image.fromarray(photos[n]).convert("RGB")) for n in names}
    placements = [[_random_placement(pictures[name], rng, 0.5) for name in (names[k % 4], names[(k + (k % 2)) % 4])]
                  for k in range(6)]
    given = [align_pair(a, b, **_AS_FIND_ALIGNS, ecc_eps=1e-3) for a, b in placements]
    default = [align_pair(a, b, **_AS_FIND_ALIGNS) for a, b in placements]
    monkeypatch.setattr(align, "ECC_EPS", 1e-3)
    module = [align_pair(a, b, **_AS_FIND_ALIGNS) for a, b in placements]
    corr = lambda found: None if found is None else (found.correlation, found.turns, found.warp.tolist())  # noqa: E731
    assert [corr(x) for x in given] == [corr(x) for x in module]
    assert [corr(x) for x in given] != [corr(x) for x in default]  # the step is taken: other maps
    assert sum(x is not None for x in default) >= 3


def test_ecc_eps_keys_the_table_only_when_set():
    assert AlignMethod(ThumbnailExtractor(), proposals=2).params()["ecc_eps"] == align.ECC_EPS
    assert AlignMethod(ThumbnailExtractor(), proposals=2, ecc_eps=1e-4).params()["ecc_eps"] == 1e-4
    with pytest.raises(ValueError, match="ecc_eps"):
        AlignMethod(ThumbnailExtractor(), proposals=2, ecc_eps=0.0)


def test_proposal_min_score_keys_the_table_only_when_set():
    assert "proposal_min_score" not in AlignMethod(ThumbnailExtractor(), proposals=2).params()
    assert AlignMethod(ThumbnailExtractor(), proposals=2, proposal_min_score=0.52).params()["proposal_min_score"] == 0.52
    assert _align([]).settings["method_params"]["proposal_min_score"] == 0.52  # find's default since run (99)
    assert "proposal_min_score" not in _align(["align.method.proposal_min_score=null"]).settings["method_params"]


def test_stretch_factors_bring_one_aspect_ratio_to_the_others_within_the_range():
    """Oracle: for random shapes, each factor stretches one side only (by more than 1), and b then has a's aspect ratio
    or a's turned a quarter; every such ratio within STRETCH_RANGE is found, and none outside it."""
    rng = np.random.default_rng(3)
    low, high = STRETCH_RANGE
    for _ in range(500):
        a, b = tuple(int(v) for v in rng.integers(20, 200, 2)), tuple(int(v) for v in rng.integers(20, 200, 2))
        got = stretch_factors(a, b)
        wanted = {round(t, 9) for t in (a[1] / a[0], a[0] / a[1])
                  if low <= max(t / (b[1] / b[0]), (b[1] / b[0]) / t) <= high}
        assert {round(b[1] * fx / (b[0] * fy), 9) for fx, fy in got} == wanted, (a, b, got)
        assert all(min(f) == 1.0 and max(f) > 1.0 for f in got)
    assert stretch_factors((60, 100), (80, 80)) == [(1.0, pytest.approx(100 / 60)), (pytest.approx(100 / 60), 1.0)]
    assert stretch_factors((80, 80), (80, 80)) == [] and stretch_factors((40, 100), (80, 80)) == []  # 1 and 2.5 apart
    assert resized(np.zeros((60, 80), np.float32), 1.5, 1.0).shape == (60, 120)


@pytest.mark.parametrize("factor", [0.65, 1.5])
def test_stretch_below_aligns_a_copy_made_at_the_wrong_aspect_ratio_and_not_different_pictures(photos, factor):
    """A photo squashed or stretched along one side (a thumbnail made at the wrong aspect ratio) lines up with its
    original only once stretched back; different photos squashed alike still do not."""
    def squashed(name):
        picture = Image.fromarray(photos[name]).convert("RGB")
        return _grey(picture.resize((round(picture.width * factor), picture.height), Image.Resampling.LANCZOS))

    original = _grey(Image.fromarray(photos["astronaut"]).convert("RGB"))
    copy = squashed("astronaut")
    plain = align_pair(original, copy, **_AS_FIND_ALIGNS)
    assert plain is None or plain.correlation < 0.97, plain
    got = align_pair(original, copy, **_AS_FIND_ALIGNS, stretch_below=0.99)
    assert got is not None and got.correlation >= 0.99 and got.overlap > 0.8, got
    assert np.allclose(got.stretch, (1 / factor, 1.0) if factor < 1 else (1.0, factor), rtol=0.02), got.stretch
    for other in ("coffee", "camera", "rocket"):
        different = align_pair(original, squashed(other), **_AS_FIND_ALIGNS, stretch_below=0.99)
        assert different is None or different.correlation < 0.97, (other, different)
    crop = _grey(Image.fromarray(photos["astronaut"]).convert("RGB").crop((0, 60, 512, 440)))  # 1.35 apart, as it is
    plain = align_pair(original, crop, **_AS_FIND_ALIGNS)
    held = align_pair(original, crop, **_AS_FIND_ALIGNS, stretch_below=plain.correlation)
    assert stretch_factors(original.shape, crop.shape) and plain.correlation >= 0.99
    assert (held.correlation, held.stretch, held.warp.tolist()) == (plain.correlation, (1.0, 1.0), plain.warp.tolist())


def test_stretch_below_keys_the_table_only_when_set():
    assert "stretch_below" not in AlignMethod(ThumbnailExtractor(), proposals=2).params()
    assert _align([]).settings["method_params"]["stretch_below"] == 0.99  # find's default since run (110)
    assert "stretch_below" not in _align(["align.method.stretch_below=null"]).settings["method_params"]
    params = AlignMethod(ThumbnailExtractor(), proposals=2, stretch_below=0.99).params()
    assert (params["stretch_below"], params["stretch_range"], params["stretch_min_overlap"]) == (
        0.99, list(STRETCH_RANGE), align.STRETCH_MIN_OVERLAP)


def test_a_stretched_alignment_overlapping_less_than_the_floor_is_not_kept(photos, monkeypatch):
    """With STRETCH_MIN_OVERLAP just above a squashed copy's stretched alignment, stretch_below gives what the plain
    alignment gives."""
    picture = Image.fromarray(photos["astronaut"]).convert("RGB")
    original = _grey(picture)
    copy = _grey(picture.resize((333, 512), Image.Resampling.LANCZOS))
    got = align_pair(original, copy, **_AS_FIND_ALIGNS, stretch_below=0.99)
    assert got is not None and got.stretch != (1.0, 1.0) and got.correlation >= 0.97, got
    monkeypatch.setattr(align, "STRETCH_MIN_OVERLAP", got.overlap + 0.01)
    plain = align_pair(original, copy, **_AS_FIND_ALIGNS)
    again = align_pair(original, copy, **_AS_FIND_ALIGNS, stretch_below=0.99)
    assert (None if again is None else (again.correlation, again.stretch)) == (
        None if plain is None else (plain.correlation, (1.0, 1.0)))
