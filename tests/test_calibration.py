"""Scores that rank and say what they mean: strictly monotone calibration, tables keyed by the settings
that change the signal, "uncalibrated" marked, `simbench calibrate` and `simbench find --truth`."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simbench.cli import find_main, main as cli_main
from simbench.find import cascade
from simbench.find.calibration import (Calibration, Fusion, fit_calibration, load_calibrations, rekeyed,
                                       save_calibrations, settings_key)
from simbench.types import ScoredPairs


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------
# The map


def test_fit_is_strictly_increasing_everywhere_and_never_certain():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 4000)
    is_true = rng.uniform(0, 1, 4000) < raw ** 2
    fit = fit_calibration(raw, is_true)
    grid = np.linspace(-1, 3, 4001)  # far beyond both ends of the data
    values = fit(grid)
    assert np.all(np.diff(values) > 0), "a plateau: equal scores for different evidence"
    assert values.min() > 0 and values.max() < 1
    assert fit(np.array([0.9]))[0] == pytest.approx(0.81, abs=0.12)  # close to the true precision raw ** 2


def test_no_plateau_where_the_old_table_had_one():
    """Many true pairs with large counts used to share the top knot's precision; now each count ranks."""
    raw = np.r_[np.arange(5, 40), np.arange(40, 500, 3)].astype(float)
    is_true = raw > 9
    fit = fit_calibration(raw, is_true, min_block=5)
    scores = fit(raw)
    assert len(np.unique(scores)) == len(raw)
    assert np.all(np.diff(scores) > 0)


def test_equal_evidence_gets_equal_scores_and_ties_never_split():
    fit = fit_calibration(np.repeat([1.0, 2.0, 3.0], 30), np.repeat([0, 1, 1], 30).astype(bool), min_block=10)
    s = fit(np.array([2.0, 2.0, 3.0]))
    assert s[0] == s[1] < s[2]


def test_tables_round_trip_through_json(tmp_path):
    t = Calibration(np.array([1.0, 2.0, 4.0]), np.array([0.2, 0.2, 0.9]), "inliers", {"stage": "x"})
    save_calibrations([t], tmp_path / "c.json", "test")
    back = load_calibrations(tmp_path / "c.json")
    assert list(back) == [settings_key({"stage": "x"})]
    got = back[t.key]
    assert got.signal == "inliers" and np.all(np.diff(got.precision) > 0)  # the repeated 0.2 became a step
    assert np.allclose(got(np.array([1.5, 3.0, 9.0])), t(np.array([1.5, 3.0, 9.0])), atol=1e-6)


def test_rekeyed_tables_and_fusions_carry_the_new_settings_and_nothing_else():
    old = {name: {"stage": name, "v": 1} for name in ("kp", "cnn", "hash")}
    tables = {settings_key(s): Calibration(np.array([0.0, 1.0]), np.array([0.1, 0.9]), "score", s, "n", 7, 3)
              for s in old.values()}
    both = Fusion(["kp", "cnn"], [settings_key(old["kp"]), settings_key(old["cnn"])], -1.0, {"kp": 0.5, "cnn": 0.0},
                  {"kp": 1.0, "cnn": 2.0}, {"kp": "log1p", "cnn": "identity"})
    with_hash = Fusion(["hash"], [settings_key(old["hash"])], 0.0, {"hash": 0.0}, {"hash": 1.0}, {"hash": "identity"})
    new = {settings_key(old[n]): {"stage": n, "v": 2} for n in ("kp", "cnn")}  # hash not moved
    moved, fitted = rekeyed(tables, [both, with_hash], new)
    assert sorted(t.settings["stage"] for t in moved) == ["cnn", "kp"] and all(t.settings["v"] == 2 for t in moved)
    kp = next(t for t in moved if t.settings["stage"] == "kp")
    assert (kp.pairs, kp.true, kp.note) == (7, 3, "n") and np.array_equal(kp.raw, tables[settings_key(old["kp"])].raw)
    assert len(fitted) == 1
    assert fitted[0].keys == [settings_key({"stage": "kp", "v": 2}), settings_key({"stage": "cnn", "v": 2})]
    assert (fitted[0].intercept, fitted[0].weight) == (both.intercept, both.weight)


@pytest.mark.parametrize("rule, within", [("weakest", 0.98), ("product", 0.99 * 0.98)])
def test_linking_never_pushes_a_chain_through_a_weak_pair_over_the_threshold(rule, within):
    # Two groups of real copies (0,1,2) and (3,4), joined by one weak pair (2,3).
    evidence = {"keypoints": ScoredPairs(np.array([0, 1, 3, 2]), np.array([1, 2, 4, 3]),
                                         np.array([0.99, 0.98, 0.99, 0.6]))}
    fused = cascade.fuse(5, evidence)
    linked = cascade.link(fused, 5, floor=0.5, max_group=10, rule=rule)
    scores = {(int(a), int(b)): float(s) for a, b, s in zip(linked.a, linked.b, linked.score)}
    assert scores[(0, 2)] == pytest.approx(within)  # within a group: linked
    cross = [s for (a, b), s in scores.items() if (a < 3) != (b < 3)]
    assert len(cross) == 6 and max(cross) <= 0.6  # never above the weakest pair of the chain
    assert all(s <= 0.6 for (a, b), s in scores.items() if (a, b) != (2, 3) and (a < 3) != (b < 3))


class _OwnCnn:
    """A calibrated CNN stage for own_evidence_weigher: its raw signal for a pair is the table's precision, given
    per pair (0.5 elsewhere); it was fitted on 100 pairs, 20 of them true."""

    name, scores_any_pair, is_calibrated = "cnn", True, True
    calibration = Calibration(np.array([0.0, 1.0]), np.array([0.0, 1.0]), pairs=100, true=20)

    def __init__(self, own: dict):
        self.own = own

    def score_given(self, features, a, b):
        raw = np.array([self.own.get((min(x, y), max(x, y)), 0.5) for x, y in zip(a.tolist(), b.tolist())])
        return raw, np.array([(min(x, y), max(x, y)) != (1, 3) for x, y in zip(a.tolist(), b.tolist())])

    def calibrated(self, raw):
        return raw


@pytest.mark.parametrize("rule", cascade.LINK_SCORES)
def test_a_linked_pair_loses_what_its_own_cnn_evidence_says_against_it_and_gains_nothing(rule):
    """Groups (0, 1) and (2, 3, 4) joined by one strong pair (1, 2): the linked pairs' chains score alike, but the
    CNN's own evidence is against (0, 3) and (0, 4) (odds 1/999 against the table's prior 1/4), for (0, 2) and
    neutral on (1, 4) (at the prior); (1, 3) it cannot score."""
    evidence = {"keypoints": ScoredPairs(np.array([0, 2, 3, 1]), np.array([1, 3, 4, 2]),
                                         np.array([0.99, 0.99, 0.99, 0.98]))}
    cnn = _OwnCnn({(0, 2): 0.95, (0, 3): 0.001, (0, 4): 0.001, (1, 4): 0.2})
    weigh = cascade.own_evidence_weigher([cnn], {"cnn": None})

    def scores(pairs):
        return {(int(a), int(b)): float(x) for a, b, x in zip(pairs.a, pairs.b, pairs.score)}

    plain = scores(cascade.link(cascade.fuse(5, evidence), 5, floor=0.5, max_group=10, rule=rule))
    weighed = scores(cascade.link(cascade.fuse(5, evidence), 5, floor=0.5, max_group=10, rule=rule, weigh=weigh))
    assert plain.keys() == weighed.keys()
    for pair in [(0, 2), (1, 4), (1, 3), (0, 1), (1, 2), (2, 3)]:  # for, neutral, unscored, direct: unchanged
        assert weighed[pair] == pytest.approx(plain[pair])
    for pair in [(0, 3), (0, 4)]:
        odds = plain[pair] / (1 - plain[pair]) * (0.001 / 0.999) / (0.2 / 0.8)
        assert plain[pair] > 0.95 and weighed[pair] == pytest.approx(odds / (1 + odds)) and weighed[pair] < 0.5
    assert cascade.own_evidence_weigher([], {}) is None  # no CNN stage: nothing to weigh by


def test_a_chain_the_cnn_does_not_doubt_keeps_its_score_to_the_last_bit():
    """The weigher leaves a linked score exactly as it was where the CNN's ratio is 1 (for, neutral, unscored): its
    odds' round trip would move some scores by a rounding step, and with it whether a direct pair that ties its own
    chain (a pair of the spanning tree) is called "linked" (what differed between a cluster's run and a local one)."""
    cnn = _OwnCnn({(0, 2): 0.95, (1, 4): 0.2, (0, 3): 0.001})
    weigh = cascade.own_evidence_weigher([cnn], {"cnn": None})
    scores = np.random.default_rng(0).uniform(0.5, 1.0, 3000)
    a, b = np.array([[0, 1, 1][k % 3] for k in range(3000)]), np.array([[2, 4, 3][k % 3] for k in range(3000)])
    weighed = weigh(ScoredPairs(a, b, scores)).score
    kept = np.array([(x, y) != (0, 3) for x, y in zip(a.tolist(), b.tolist())])
    assert np.array_equal(weighed[kept], scores[kept]) and np.all(weighed[~kept] < scores[~kept])
    odds = scores / (1 - scores)
    assert np.any(odds / (1 + odds) != scores)  # the round trip alone does move some of them


@pytest.mark.parametrize("rule", cascade.LINK_SCORES)
@pytest.mark.parametrize("seed", range(3))
def test_a_lower_linking_floor_only_reorders_the_pairs_below_the_higher_one(seed, rule):
    """conf/find.yaml's promise: what scores >= a floor is the same with any lower floor (a chain is never
    stronger than its weakest pair), on random pairs of 40 items, with and without a group cap."""
    rng = np.random.default_rng(seed)
    n = 40
    a, b = np.triu_indices(n, 1)
    pick = rng.random(len(a)) < 0.15
    evidence = {"keypoints": ScoredPairs(a[pick], b[pick], rng.beta(2, 1, int(pick.sum())))}

    def above(p):
        return {(int(x), int(y)): float(s) for x, y, s in zip(p.a, p.b, p.score) if s >= 0.9}

    for max_group in (200, 6):
        high = cascade.link(cascade.fuse(n, evidence), n, floor=0.9, max_group=max_group, rule=rule)
        low = cascade.link(cascade.fuse(n, evidence), n, floor=0.5, max_group=max_group, rule=rule)
        assert above(low) == above(high) and len(above(high)) > pick.sum() * 0.1
        assert len(low.a) > len(high.a)  # the lower floor did link more, below 0.9


@pytest.mark.parametrize("seed", range(3))
def test_weakest_link_scores_a_pair_at_least_a_threshold_exactly_when_groups_join_it(seed):
    """link_score=weakest against its definition: for every threshold t >= the floor, a pair scores >= t
    after linking exactly when its two images are in one connected component of the direct pairs >= t
    (outputs.union_find_groups, as groups.json is made), on random pairs of 40 items."""
    from simbench.find import outputs

    rng = np.random.default_rng(seed)
    n = 40
    a, b = np.triu_indices(n, 1)
    pick = rng.random(len(a)) < 0.06
    evidence = {"keypoints": ScoredPairs(a[pick], b[pick], rng.uniform(0.3, 1.0, int(pick.sum())))}
    fused = cascade.fuse(n, evidence)
    linked = cascade.link(fused, n, floor=0.5, max_group=n, rule="weakest")
    scores = {(int(x), int(y)): float(s) for x, y, s in zip(linked.a, linked.b, linked.score)}
    for t in (0.5, 0.6, 0.75, 0.9, 0.97):
        keep = fused.score >= t
        component = {}
        for k, members in enumerate(outputs.union_find_groups(n, fused.a[keep], fused.b[keep])):
            component.update({m: k for m in members})
        joined = {(x, y) for x in range(n) for y in range(x + 1, n)
                  if x in component and component.get(y) == component[x]}
        assert {p for p, s in scores.items() if s >= t} == joined
        if t == 0.5:
            assert len(joined) > keep.sum()  # linking did add pairs


# ---------------------------------------------------------------------------------------------------
# Through the command line: keyed tables, "uncalibrated", calibrate, --truth


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory, photos):
    """Three photos, each with a crop and a rotated copy; truth.csv of the 9 true pairs."""
    root = tmp_path_factory.mktemp("collection")
    folder = root / "photos"
    folder.mkdir()
    truth = []
    for name in ("astronaut", "rocket", "coffee"):
        img = Image.fromarray(photos[name])
        w, h = img.size
        img.save(folder / f"{name}.jpg", quality=90)
        img.crop((w // 6, h // 6, w - w // 5, h - h // 4)).save(folder / f"{name}-crop.jpg", quality=85)
        img.rotate(8, expand=True).save(folder / f"{name}-rot.jpg", quality=85)
        members = [f"{name}.jpg", f"{name}-crop.jpg", f"{name}-rot.jpg"]
        truth += [(members[0], members[1], "crop"), (members[0], members[2], "rotate"),
                  (members[1], members[2], "")]
    with open(folder / "truth.csv", "w", newline="") as f:
        csv.writer(f).writerows([("a", "b", "label"), *truth, ("astronaut.jpg", "missing.jpg", "")])
    index = root / "index"
    out = root / "out"
    assert find_main([str(folder), "--out", str(out), "--method", "keypoints", "--index", str(index),
                      "--truth", str(folder / "truth.csv"), "-q"]) == 0
    return folder, index, out


def test_truth_scores_a_run(small_collection, capsys):
    folder, index, out = small_collection
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["true_pairs"] == 9 and metrics["unmatched_truth_rows"] == 1
    assert 0.5 <= metrics["uap"] <= 1.0
    assert set(metrics["per_label_recall_at_p90"]) == {"crop", "rotate"}
    # how sure: Wilson's intervals from the counts, bootstrap intervals of micro-AP and R@P90, per-label counts
    from simbench.evaluate import wilson_interval

    counts, intervals = metrics["counts"], metrics["intervals"]
    assert counts["true_pairs"] == 9 and counts["true_called"] <= counts["called"]
    assert intervals["precision"] == pytest.approx(list(wilson_interval(counts["true_called"], counts["called"])))
    assert intervals["recall"] == pytest.approx(list(wilson_interval(counts["true_called"], 9)))
    assert metrics["recall"] == pytest.approx(counts["true_called"] / 9)
    for key in ("uap", "recall_at_p90"):
        assert 0 <= intervals[key][0] <= intervals[key][1] <= 1
    assert {k: found / n for k, (found, n) in metrics["per_label_found_at_p90"].items()} == \
        pytest.approx(metrics["per_label_recall_at_p90"])
    from simbench.cli import metrics_text

    printed = metrics_text(metrics)  # what find --truth printed
    lo, hi = intervals["uap"]
    assert f"micro-AP {metrics['uap']:.3f} ({lo:.3f}-{hi:.3f})" in printed and "in brackets: 95% intervals" in printed
    # No plateau in what find writes: pairs with different raw evidence have different scores.
    from simbench.find.outputs import read_evidence

    items, raw, _ = read_evidence(out / "evidence.npz")
    evidence = {frozenset((items[a], items[b])): e for a, b, e in zip(raw["keypoints"].a, raw["keypoints"].b,
                                                                     raw["keypoints"].score)}
    rows = [r for r in read_csv(out / "pairs.csv") if r["method"] == "keypoints"]
    scores = {float(r["score"]): evidence[frozenset((r["a"], r["b"]))] for r in rows}
    assert len(rows) >= 6 and len(scores) == len({evidence[frozenset((r["a"], r["b"]))] for r in rows})


def test_uncalibrated_settings_are_marked(small_collection, tmp_path):
    folder, index, _ = small_collection
    out = tmp_path / "out"
    # A setting that changes the raw signal (and is not in any shipped table): uncalibrated, and said so.
    assert find_main([str(folder), "--out", str(out), "--method", "keypoints", "--index", str(index), "-q",
                      "keypoints.method.ransac_threshold=7.5"]) == 0
    rows = read_csv(out / "pairs.csv")
    assert rows and {r["calibrated"] for r in rows if r["method"] == "keypoints"} == {"no"}
    assert '"uncalibrated":["keypoints"]' in (out / "report.html").read_text()  # the page says so


def test_calibrate_fits_tables_that_find_then_uses(small_collection, tmp_path, monkeypatch, capsys):
    folder, index, out = small_collection
    table = tmp_path / "mine.json"
    monkeypatch.setattr("sys.argv", ["simbench", "calibrate", str(out), str(folder / "truth.csv"), "--out", str(table)])
    with pytest.raises(SystemExit) as done:
        cli_main()
    assert done.value.code == 0
    tables = load_calibrations(table)
    assert len(tables) == 1 and next(iter(tables.values())).settings["stage"] == "keypoints"
    again = tmp_path / "again"
    assert find_main([str(folder), "--out", str(again), "--method", "keypoints", "--index", str(index), "-q",
                      "--calibration", str(table)]) == 0
    rows = read_csv(again / "pairs.csv")
    assert rows and all(r["calibrated"] == "yes" for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert all(0 < s < 1 for s in scores)


def test_calibrate_refuses_a_folder_without_evidence(tmp_path, monkeypatch, capsys):
    (tmp_path / "truth.csv").write_text("a,b\nx.jpg,y.jpg\n")
    monkeypatch.setattr("sys.argv", ["simbench", "calibrate", str(tmp_path), str(tmp_path / "truth.csv")])
    with pytest.raises(SystemExit) as done:
        cli_main()
    assert done.value.code == 2 and "evidence.npz" in capsys.readouterr().err


def test_shared_sticker_neither_pairs_nor_links_unrelated_pictures(tmp_path, photos):
    """The default find on a folder where unrelated photos carry the same sticker (a textured badge in a
    corner), two of them with a real crop each: the crops pair with their originals, no sticker-only pair
    is a duplicate, and no chain through the sticker joins the two groups."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sticker = Image.fromarray(photos["brick"]).resize((120, 90))
    names = ("astronaut", "coffee", "rocket", "cat", "horse", "camera")
    for name in names:
        img = Image.fromarray(photos[name]).resize((512, 384))
        img.paste(sticker, (512 - 130, 384 - 100))
        img.save(folder / f"{name}.jpg", quality=90)
        if name in ("astronaut", "coffee"):
            img.crop((40, 30, 400, 300)).save(folder / f"{name}-crop.jpg", quality=85)
    out = tmp_path / "out"
    assert find_main([str(folder), "--out", str(out), "-q"]) == 0
    threshold = cascade.make_config().threshold
    called = {frozenset((Path(r["a"]).stem, Path(r["b"]).stem)) for r in read_csv(out / "pairs.csv")
              if float(r["score"]) >= threshold}
    assert frozenset(("astronaut", "astronaut-crop")) in called
    assert frozenset(("coffee", "coffee-crop")) in called
    picture = lambda stem: stem.split("-")[0]  # noqa: E731
    assert all(len({picture(s) for s in pair}) == 1 for pair in called), called
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert all(len({picture(Path(m["path"]).stem) for m in g["members"]}) == 1 for g in groups)


# ---------------------------------------------------------------------------------------------------
# Fusion of the stages


def test_fusion_fit_recovers_a_logistic_model_and_stays_monotone():
    from simbench.find.calibration import MIN_WEIGHT, fit_fusion

    rng = np.random.default_rng(0)
    n = 20000
    kp_found = rng.random(n) < 0.4
    kp = np.where(kp_found, rng.exponential(30, n), 0.0)
    cnn = rng.uniform(0.3, 0.7, n)
    z = -12 + 2.0 * kp_found + 0.3 * kp_found * np.log1p(kp) + 20 * cnn
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    fusion = fit_fusion(["keypoints", "cnn"], ["k1", "k2"], {"keypoints": "log1p", "cnn": "identity"},
                        {"keypoints": kp, "cnn": cnn}, {"keypoints": kp_found, "cnn": np.ones(n, bool)}, y)
    assert fusion.weight["cnn"] == pytest.approx(20, rel=0.15)
    assert fusion.found_weight["keypoints"] == pytest.approx(2.0, abs=0.6)
    assert fusion.found_weight["cnn"] == 0.0  # found everywhere: the intercept's job
    # A signal that hurts is held at the smallest weight: more evidence never lowers the score.
    fusion = fit_fusion(["keypoints", "cnn"], ["k1", "k2"], {"keypoints": "log1p", "cnn": "identity"},
                        {"keypoints": kp, "cnn": cnn}, {"keypoints": kp_found, "cnn": np.ones(n, bool)},
                        (rng.random(n) < 1 / (1 + np.exp(-(-10 + 20 * cnn - 0.5 * np.log1p(kp))))))
    assert fusion.weight["keypoints"] == MIN_WEIGHT
    grid = np.linspace(0, 500, 50)
    fused = fusion({"keypoints": grid, "cnn": np.full(50, 0.5)}, {"keypoints": np.ones(50, bool), "cnn": np.ones(50, bool)})
    assert np.all(np.diff(fused) > 0)


def test_a_correlation_is_read_by_its_nearness_to_one_and_stays_monotone():
    """neg_log1m (the align stage's correlation): -log(1 - x), 0 at or below 0, capped below 1; unknown names fail."""
    from simbench.find.calibration import NEAR_ONE, fusion_feature
    from simbench.methods.align import AlignMethod

    x = np.array([-0.5, 0.0, 0.5, 0.9, 0.99, 1.0, np.nan])
    want = [0.0, 0.0, np.log(2), np.log(10), np.log(100), -np.log(NEAR_ONE), 0.0]
    assert fusion_feature(x, "neg_log1m") == pytest.approx(want)
    grid = np.linspace(0, 1 - NEAR_ONE, 200)
    assert np.all(np.diff(fusion_feature(grid, "neg_log1m")) > 0)
    with pytest.raises(ValueError, match="no fusion transform"):
        fusion_feature(x, "logit")
    cfg = cascade.make_config("cascade", [])
    align = [s for s in cascade.build_stages(cfg, calibrations={}, quiet=True) if isinstance(s.method, AlignMethod)]
    assert align and align[0].fusion_inputs == {"align": "neg_log1m"}


def test_find_uses_a_fusion_with_align_in_it_over_the_smaller_one(monkeypatch):
    """calibrate --refit-fusion --fusion-stages keypoints,cnn,align: find then reads that model (the one over the most
    stages) rather than the shipped one over keypoints and CNN, and its score rises with the correlation."""
    from simbench.find.calibration import Fusion

    cfg = cascade.make_config("cascade")
    stages = cascade.build_stages(cfg, quiet=True)
    shipped = cascade.fusion_model(stages, cfg)
    assert shipped is not None and "align" not in shipped.stages
    names = [s.name for s in stages if s.name in ("keypoints", "cnn", "align")]
    keys = [s.calibration.key for s in stages if s.name in names]
    with_align = Fusion(names, keys, shipped.intercept, {**shipped.found_weight, "align": 0.0},
                        {**shipped.weight, "align": 0.6}, {**shipped.transform, "align": "neg_log1m"})
    monkeypatch.setattr(cascade, "load_fusions", lambda *args: [shipped, with_align])
    assert cascade.fusion_model(stages, cfg) is with_align
    n = 5
    found = {"keypoints": np.zeros(n, bool), "cnn": np.ones(n, bool), "align": np.ones(n, bool)}
    raw = {"keypoints": np.zeros(n), "keypoints/distinctiveness": np.zeros(n), "cnn": np.full(n, 0.6),
           "align": np.array([0.5, 0.9, 0.97, 0.99, 0.999])}
    assert np.all(np.diff(with_align(raw, found)) > 0)


def fusion_case(seed: int) -> tuple:
    """fit_fusion's arguments for 20,000 synthetic pairs of a known logistic model: a keypoint stage that finds
    40% of them (its evidence log1p-transformed, a found step of 2) and a CNN that scores every one."""
    rng = np.random.default_rng(seed)
    n = 20000
    kp_found = rng.random(n) < 0.4
    kp = np.where(kp_found, rng.exponential(30, n), 0.0)
    cnn = rng.uniform(0.3, 0.7, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(-12 + 2.0 * kp_found + 0.3 * kp_found * np.log1p(kp) + 20 * cnn)))
    return (["keypoints", "cnn"], ["k1", "k2"], {"keypoints": "log1p", "cnn": "identity"},
            {"keypoints": kp, "cnn": cnn}, {"keypoints": kp_found, "cnn": np.ones(n, bool)}, y)


def test_fusion_without_found_weights_scores_the_evidence_only():
    """found_weights=False: no stage gets a step for having found a pair, so a found pair with no evidence
    scores as one not found, and the evidence's weight carries what the step did."""
    from simbench.find.calibration import fit_fusion

    args = fusion_case(2)
    stepped, plain = fit_fusion(*args), fit_fusion(*args, found_weights=False)
    assert stepped.found_weight["keypoints"] > 1.0
    assert plain.found_weight == {"keypoints": 0.0, "cnn": 0.0}
    assert plain.weight["keypoints"] > stepped.weight["keypoints"]
    half = np.full(2, 0.5)
    assert np.ptp(plain({"keypoints": np.zeros(2), "cnn": half}, {"keypoints": np.array([True, False]), "cnn": half > 0})) == 0


def test_fusion_fit_keeps_a_stage_as_fitted_before_and_fits_the_rest_given_it():
    """keep: the kept stage's weights are the earlier fusion's to the bit, and the others are the maximum
    likelihood given them (checked against a plain fit of the same logistic model with those weights as an
    offset column of known coefficient: no other setting of the free weights scores the data better)."""
    from simbench.find.calibration import Fusion, fit_fusion, fit_logistic

    args = fusion_case(3)
    _, _, _, raw, found, y = args
    kp_found, kp, cnn, n = found["keypoints"], raw["keypoints"], raw["cnn"], len(y)
    before = Fusion(["keypoints", "cnn"], ["k1", "k0"], -9.0, {"keypoints": 1.5, "cnn": 0.0},
                    {"keypoints": 0.5, "cnn": 10.0}, {"keypoints": "log1p", "cnn": "identity"})
    kept = fit_fusion(*args, kept=before, keep=("keypoints",))
    assert kept.found_weight["keypoints"] == 1.5 and kept.weight["keypoints"] == 0.5
    assert kept.keys == ["k1", "k2"] and kept.weight["cnn"] != 10.0
    # The free part (intercept, CNN weight) fitted directly with the kept part as a fixed offset.
    offset = 1.5 * kp_found + 0.5 * kp_found * np.log1p(kp)
    w = fit_logistic(np.stack([np.ones(n), cnn], axis=1), y, np.array([-np.inf, 0.0]), offset=offset)
    assert kept.intercept == pytest.approx(w[0], rel=1e-9) and kept.weight["cnn"] == pytest.approx(w[1], rel=1e-9)

    def loglik(intercept, w_cnn):
        z = intercept + w_cnn * cnn + offset
        return np.sum(y * z - np.logaddexp(0, z))

    best = loglik(kept.intercept, kept.weight["cnn"])
    assert all(best >= loglik(kept.intercept + d0, kept.weight["cnn"] + d1)
               for d0 in (-0.05, 0, 0.05) for d1 in (-0.1, 0, 0.1))
    with pytest.raises(ValueError, match="keep the fusion weights"):
        fit_fusion(*args, keep=("keypoints",))
    with pytest.raises(ValueError, match="fitted on identity"):
        fit_fusion(*args, kept=Fusion(before.stages, before.keys, -9.0, before.found_weight, before.weight,
                                      {"keypoints": "identity", "cnn": "identity"}), keep=("keypoints",))


def test_fusion_fit_may_hold_the_intercept_and_fits_only_the_free_weights_given_it():
    """keep with "intercept": the earlier fusion's intercept to the bit, the kept stage's weights too, and the
    free weight the maximum likelihood given both (a plain fit with them as an offset); with nothing left free,
    a clear error."""
    from simbench.find.calibration import MIN_WEIGHT, Fusion, fit_fusion, fit_logistic

    args = fusion_case(3)
    _, _, _, raw, found, y = args
    kp_found, kp, cnn = found["keypoints"], raw["keypoints"], raw["cnn"]
    before = Fusion(["keypoints", "cnn"], ["k1", "k0"], -9.0, {"keypoints": 1.5, "cnn": 0.0},
                    {"keypoints": 0.5, "cnn": 10.0}, {"keypoints": "log1p", "cnn": "identity"})
    held = fit_fusion(*args, kept=before, keep=("keypoints", "intercept"))
    assert held.intercept == -9.0 and held.found_weight["keypoints"] == 1.5 and held.weight["keypoints"] == 0.5
    offset = -9.0 + 1.5 * kp_found + 0.5 * kp_found * np.log1p(kp)
    w = fit_logistic(cnn[:, None], y, np.array([MIN_WEIGHT]), offset=offset)
    assert held.weight["cnn"] == pytest.approx(w[0], rel=1e-9)
    free = fit_fusion(*args, kept=before, keep=("keypoints",))
    assert free.intercept != -9.0  # without it the intercept is fitted (the test above)
    with pytest.raises(ValueError, match="nothing left to fit"):
        fit_fusion(*args, kept=before, keep=("keypoints", "cnn", "intercept"))
    with pytest.raises(ValueError, match="keep the fusion weights"):
        fit_fusion(*args, keep=("intercept",))


def test_fusion_lets_the_cnn_doubt_a_shared_frame():
    """Two pairs with the same keypoint evidence: the one whose pictures the CNN finds no closer than their
    background (a shared frame) scores below the one both stages agree on; identical data stays 1."""
    from simbench.find.calibration import Fusion
    from simbench.find.cascade import FusedPairs, apply_fusion

    class Cnn:  # a stage that scores any pair: the second pair's pictures look unrelated
        name, signal = "cnn", "score"
        scores_any_pair = True

        def score_given(self, features, a, b):
            return np.array([0.6, 0.45, 0.5]), np.ones(3, bool)

        def calibrated(self, raw):
            return raw

    class Kp:
        name, signal, scores_any_pair, extra_signals = "keypoints", "evidence", False, ()

    pairs = FusedPairs(np.array([0, 2, 4]), np.array([1, 3, 5]), np.zeros(3), np.array(["keypoints"] * 3, object),
                       {"identical": np.array([0.0, 0.0, 1.0]), "keypoints": np.array([0.9, 0.9, 0.0])})
    raw = {"keypoints": ScoredPairs(np.array([0, 2]), np.array([1, 3]), np.array([50.0, 50.0]))}
    model = Fusion(["keypoints", "cnn"], ["k", "c"], -20.0, {"keypoints": 3.0, "cnn": 0.0},
                   {"keypoints": 0.5, "cnn": 35.0}, {"keypoints": "log1p", "cnn": "identity"})
    out = apply_fusion(pairs, 6, [Kp(), Cnn()], raw, {"cnn": None}, model)
    assert out.score[0] > 0.9 > out.score[1] and out.score[2] == 1.0


def test_fusion_reads_a_stage_extra_signal_and_stays_monotone_in_it(monkeypatch, caplog):
    """An extra input ("keypoints/distinctiveness": how much of the inliers' weight is content few pictures
    share) is fitted like a signal, raises the score with its value, and a model that reads it is only used
    by stages that give it (a config without it falls back rather than reading zeros)."""
    from simbench.find.calibration import MIN_WEIGHT, Fusion, fit_fusion

    rng = np.random.default_rng(1)
    n = 20000
    kp_found = rng.random(n) < 0.5
    kp = np.where(kp_found, rng.exponential(30, n), 0.0)
    distinct = np.where(kp_found, rng.uniform(0.2, 1.0, n), 0.0)
    cnn = rng.uniform(0.3, 0.7, n)
    z = -12 + 0.2 * kp_found * np.log1p(kp) + 6 * kp_found * distinct + 18 * cnn
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    transform = {"keypoints": "log1p", "keypoints/distinctiveness": "identity", "cnn": "identity"}
    fusion = fit_fusion(["keypoints", "cnn"], ["k1", "k2"], transform,
                        {"keypoints": kp, "keypoints/distinctiveness": distinct, "cnn": cnn},
                        {"keypoints": kp_found, "cnn": np.ones(n, bool)}, y)
    assert fusion.weight["keypoints/distinctiveness"] == pytest.approx(6, rel=0.2)
    assert min(fusion.weight.values()) >= MIN_WEIGHT
    assert Fusion.from_json(json.loads(json.dumps(fusion.to_json()))) == fusion
    grid = np.linspace(0.05, 1, 40)
    ones = np.ones(40, bool)
    fused = fusion({"keypoints": np.full(40, 20.0), "keypoints/distinctiveness": grid, "cnn": np.full(40, 0.5)},
                   {"keypoints": ones, "cnn": ones})
    assert np.all(np.diff(fused) > 0)
    # A stage that is not found gets nothing from its extra signal either.
    unfound = fusion({"keypoints": np.zeros(2), "keypoints/distinctiveness": np.array([0.1, 1.0]),
                      "cnn": np.full(2, 0.5)}, {"keypoints": np.zeros(2, bool), "cnn": np.ones(2, bool)})
    assert unfound[0] == unfound[1]

    # find uses such a model only with stages that give every input it reads (the default's do).
    cfg = cascade.make_config("cascade")
    stages = cascade.build_stages(cfg, quiet=True)
    assert stages[0].fusion_inputs == {"keypoints": "log1p", "keypoints/distinctiveness": "identity"}
    shipped = cascade.fusion_model(stages, cfg)
    model = Fusion(shipped.stages, [s.calibration.key for s in stages if s.name in shipped.stages], fusion.intercept,
                   fusion.found_weight, fusion.weight, transform)
    monkeypatch.setattr(cascade, "load_fusions", lambda *args: [model])
    assert cascade.fusion_model(stages, cfg) is model
    # A stage giving more than the model reads still uses it, and says what it leaves unread.
    more = cascade.make_config("cascade", ["keypoints.extra_signals=[distinctiveness,agreement]"])
    with caplog.at_level(logging.WARNING, logger="simbench"):
        assert cascade.fusion_model(cascade.build_stages(more, quiet=True), more) is model
    assert "does not read keypoints/agreement" in caplog.text
    without = cascade.make_config("cascade", ["keypoints.extra_signals=[]"])
    assert cascade.fusion_model(cascade.build_stages(without, quiet=True), without) is None


def test_an_extra_signal_the_method_does_not_give_is_named():
    stage = cascade.build_stages(cascade.make_config("cascade", ["keypoints.extra_signals=[nonsense]"]),
                                 quiet=True)[0]
    found = ScoredPairs(np.array([0]), np.array([1]), np.array([0.5]),
                        extra={"evidence": np.array([3.0]), "inliers": np.array([9])})
    with pytest.raises(ValueError, match=r"nonsense.*evidence"):
        stage.raw_pairs(found)
    none = ScoredPairs(np.zeros(0, int), np.zeros(0, int), np.zeros(0), extra={"evidence": np.zeros(0)})
    assert len(stage.raw_pairs(none)) == 0  # no pairs: nothing to read, no error
