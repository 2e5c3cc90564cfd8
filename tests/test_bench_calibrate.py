"""bench_find.copied_about: a calibration file fitted with --stages names the commands that made what it copied,
each once, without quoting the previous file's whole "about" (which nested one level deeper with every such run).
bench_find.fitted_stages: the run that gives the align stage's raw pairs, as find runs it with each skip option.
bench_find.carried_fusions: --stages without --refit-fusion keys the shipped fusion to a refitted stage's settings.
bench_find.kept_fusion: --fusion-keep takes the kept stages' weights from a fusion of these stages, else of fewer."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import (carried_fusions, copied_about, fitted_stages, kept_fusion,  # noqa: E402
                                   refitted_keys, with_other_settings)
from simbench.find.calibration import Fusion, fit_calibration, settings_key  # noqa: E402


def test_copied_about_names_each_earlier_command_once_and_does_not_nest():
    first = "fits; made by `calibrate --seeds 1,2`"
    second = "fits; made by `calibrate --stages align`" + copied_about("its other tables", first)
    third = "fits; made by `calibrate --stages align`" + copied_about("its other tables", second)
    assert second == ("fits; made by `calibrate --stages align`; its other tables copied from the shipped file, itself "
                      "made by: `calibrate --seeds 1,2`")
    said = copied_about("its other tables and the fusion", third)
    assert said == ("; its other tables and the fusion copied from the shipped file, itself made by: "
                    "`calibrate --stages align`; `calibrate --seeds 1,2`")
    assert copied_about("its other tables", "no commands here").endswith("made by: (not said)")


def test_align_is_fitted_after_the_stages_its_skip_option_reads():
    names = lambda overrides: [s.name for s in fitted_stages("align", overrides)[1]]  # noqa: E731
    assert names([]) == ["keypoints", "cnn", "blobs", "align"]  # skip_held_at: every stage before it
    assert names(["blobs.method.proposals=0"]) == ["keypoints", "cnn", "align"]
    assert names(["align.method.skip_held_at=null"]) == ["keypoints", "cnn", "blobs", "align"]  # keypoint stages, CNN
    assert names(["align.method.skip_verified=false"]) == ["cnn", "align"]  # only the CNN's proposals
    assert names(["align.method.proposals=0"]) == []


def test_the_wide_blobs_look_is_fitted_after_the_keypoint_stages_it_skips():
    names = lambda overrides: [s.name for s in fitted_stages("blobs_wide", overrides)[1]]  # noqa: E731
    assert names([]) == ["keypoints", "cnn", "blobs", "blobs_wide"]  # not align: it comes before, reads no keypoints
    assert names(["blobs.method.proposals=0"]) == ["keypoints", "cnn", "blobs_wide"]
    assert names(["blobs_wide.method.skip_verified=false"]) == ["cnn", "blobs_wide"]
    assert names(["blobs_wide.method.proposals=0"]) == []


def test_a_refit_keeps_the_shipped_tables_and_fusions_of_other_settings():
    """calibrate for one setting (the int8 CNN) keeps what ships for another (the float32 CNN), once each."""
    def table(stage, precision):
        return fit_calibration([0.1, 0.5, 0.9] * 10, [0, 1, 1] * 10, settings={"stage": stage, "precision": precision})

    def fusion(keys):
        return Fusion(["keypoints", "cnn"], keys, -1.0, {}, {"cnn": 1.0}, {"cnn": "identity"})

    kp, cnn8, cnn32 = table("keypoints", None), table("cnn", "int8"), table("cnn", None)
    shipped_tables = {t.key: t for t in (kp, cnn32)}
    shipped_fusions = [fusion([kp.key, cnn32.key])]
    tables, fusions, kept = with_other_settings([kp, cnn8], [fusion([kp.key, cnn8.key])], shipped_tables, shipped_fusions)
    assert [t.key for t in tables] == [kp.key, cnn8.key, cnn32.key] and kept == 2
    assert [f.keys for f in fusions] == [[kp.key, cnn8.key], [kp.key, cnn32.key]]
    again = with_other_settings(tables, fusions, {t.key: t for t in tables}, fusions)
    assert [t.key for t in again[0]] == [t.key for t in tables] and len(again[1]) == 2 and again[2] == 0


def test_a_stage_refitted_under_new_settings_keeps_the_shipped_fusion_keyed_to_them():
    def fusion(keys, cnn_weight):
        return Fusion(["keypoints", "cnn"], keys, -1.0, {"keypoints": 4.0}, {"keypoints": 0.5, "cnn": cnn_weight},
                      {"keypoints": "log1p", "cnn": "identity"}, "fitted")

    shipped = [fusion(["kp-old", "cnn8"], 20.0), fusion(["kp-old", "cnn32"], 21.0)]
    fusions = carried_fusions(shipped, {"kp-old": "kp-new"}, "made by `x`")
    assert [f.keys for f in fusions] == [["kp-new", "cnn8"], ["kp-new", "cnn32"],
                                         ["kp-old", "cnn8"], ["kp-old", "cnn32"]]
    for carried, original in zip(fusions[:2], shipped):
        assert (carried.intercept, carried.found_weight, carried.weight, carried.transform) == (
            original.intercept, original.found_weight, original.weight, original.transform)
        assert carried.note == "fitted; carried over to the refitted table's settings, made by `x`"
    assert carried_fusions(shipped, {}, "made by `x`") == shipped


def test_refitted_keys_maps_a_stage_whose_settings_the_overrides_change():
    overrides = ["keypoints.extractor.coarse_scale=0.5"]
    settings = fitted_stages("keypoints", overrides)[1][-1].settings
    old, new = settings_key(fitted_stages("keypoints", [])[1][-1].settings), settings_key(settings)
    assert old != new
    refitted = fit_calibration([0.1, 0.5, 0.9] * 10, [0, 1, 1] * 10, settings=settings)
    assert refitted.key == new
    assert refitted_keys([refitted], ("keypoints",), overrides) == {old: new}
    assert refitted_keys([], ("keypoints",), overrides) == {}  # no table fitted for the new settings
    assert refitted_keys([refitted], ("keypoints",), ["align.method.ecc_eps=1e-4"]) == {}  # keypoints unchanged


def test_kept_weights_come_from_a_fusion_of_these_stages_else_of_fewer_with_the_kept_settings():
    def fusion(stages, keys):
        return Fusion(stages, keys, -1.0, {s: 0.0 for s in stages}, {s: 1.0 for s in stages},
                      {s: "identity" for s in stages})

    pair = fusion(["keypoints", "cnn"], ["k1", "c1"])
    float_cnn = fusion(["keypoints", "cnn"], ["k1", "c2"])
    names, keys = ["keypoints", "cnn", "align"], ["k1", "c1", "a1"]
    assert kept_fusion([float_cnn, pair], names, keys, ("keypoints", "cnn")) is pair  # align added to it
    assert kept_fusion([float_cnn, pair], names, keys, ("keypoints", "cnn", "intercept")) is pair  # its intercept too
    assert kept_fusion([float_cnn], names, keys, ("keypoints", "cnn")) is None  # the CNN's settings differ
    assert kept_fusion([float_cnn], names, keys, ("keypoints",)) is float_cnn  # only the keypoints' weights kept
    three = fusion(names, ["k1", "c1", "a9"])
    assert kept_fusion([pair, three], names, keys, ("keypoints", "cnn")) is three  # these stages' own first
    wider = fusion(["keypoints", "cnn", "blobs"], ["k1", "c1", "b1"])
    assert kept_fusion([wider], names, keys, ("keypoints", "cnn")) is None  # a stage the fit has not


def test_a_yearbook_collection_fits_only_on_pairs_without_a_content_free_placement():
    """What calibrate and the fusion fit on matches what the yearbook scores count (yearbook.scored_truth)."""
    from functools import partial
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.bench_find import Collection, placement_labels, placement_scored
    from simbench.find.yearbook import Placement
    from simbench.types import ScoredPairs

    placements = [Placement("y.pdf", page, (0, 0, 100, 100), photo, "crop", detail=d)
                  for page, (photo, d) in enumerate([(0, 9.0), (0, 0.5), (0, 9.0), (1, 9.0)], 1)]
    items = [SimpleNamespace(source="y.pdf", page=page, bbox="0 0 100 100") for page in (1, 2, 3, 4)]
    items.append(SimpleNamespace(source="other.png", page=None, bbox=""))  # an image that is no placement: counts
    pairs = ScoredPairs(np.array([0, 0, 1, 2, 3]), np.array([1, 2, 3, 3, 4]), np.ones(5))
    yearbook = Collection("y", [], partial(placement_labels, placements), 1, Path("."),
                          scored=partial(placement_scored, placements))
    keep, is_true = yearbook.labelled(items, pairs)
    assert keep.tolist() == [False, True, False, True, True]  # the pairs of placement 1 (content-free) do not count
    assert is_true.tolist() == [True, False, False]
    every = Collection("d", [], partial(placement_labels, placements), 3, Path("."))  # no `scored`: every pair
    keep, is_true = every.labelled(items, pairs)
    assert keep.all() and is_true.tolist() == [True, True, False, False, False]
