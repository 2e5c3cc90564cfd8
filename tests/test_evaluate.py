"""Tests of simbench.evaluate against hand-computed ISC2021 metrics and brute-force oracles."""
import math

import numpy as np
import pytest

from simbench.evaluate import (
    _Resampler,
    bootstrap_ci,
    connected_groups,
    dedupe_pairs,
    evaluate,
    label_pairs,
    metrics_at_threshold,
    micro_ap,
    pair_keys,
    per_transform_found,
    per_transform_recall,
    precision_recall_curve,
    recall_at_precision,
    threshold_sweep,
    wilson_interval,
)
from simbench.types import ScoredPairs


def sp(rows):
    """ScoredPairs from (a, b, score) rows."""
    a, b, s = zip(*rows) if rows else ((), (), ())
    return ScoredPairs(np.array(a, np.int64), np.array(b, np.int64), np.array(s, np.float64))


# ------------------------------------------------------------------------ brute-force oracles


def oracle_sorted(scores, is_true):
    """Explicit ISC order: decreasing score, false before true among equal scores."""
    items = sorted(zip(scores, is_true), key=lambda x: (-x[0], bool(x[1])))
    return items


def oracle_ap(scores, is_true, n_true):
    """Sum of the precision at each true positive of the pessimistic list, over n_true."""
    tp = 0
    total = 0.0
    for i, (_, y) in enumerate(oracle_sorted(scores, is_true), start=1):
        if y:
            tp += 1
            total += tp / i
    return total / n_true


def oracle_r90(scores, is_true, n_true, required=0.9):
    """Walk the pessimistic list; keep the first point with the highest recall at precision >= required."""
    tp = 0
    best = None
    for i, (s, y) in enumerate(oracle_sorted(scores, is_true), start=1):
        tp += bool(y)
        if tp / i >= required and (best is None or tp / n_true > best[0]):
            best = (tp / n_true, s)
    return best if best is not None else (0.0, math.nan)


# ------------------------------------------------------------------------------------- pairs


def test_pair_keys_are_symmetric_and_distinct():
    n = 7
    a, b = np.triu_indices(n, k=1)
    keys = pair_keys(a, b, n)
    assert np.array_equal(keys, pair_keys(b, a, n))
    assert len(np.unique(keys)) == len(keys)
    assert keys.dtype == np.int64
    assert pair_keys(2, 5, 7) == 2 * 7 + 5


def test_label_pairs_is_order_insensitive():
    pairs = sp([(0, 1, 0.9), (3, 2, 0.8), (1, 2, 0.7), (4, 0, 0.1)])
    truth = np.array([[1, 0], [2, 3], [0, 4]])
    assert label_pairs(pairs, truth).tolist() == [True, True, False, True]


def test_dedupe_keeps_max_score_once():
    pairs = sp([(1, 2, 0.3), (2, 1, 0.9), (0, 1, 0.5), (1, 2, 0.1), (0, 1, 0.5)])
    d = dedupe_pairs(pairs)
    assert list(zip(d.a.tolist(), d.b.tolist(), d.score.tolist())) == [(0, 1, 0.5), (1, 2, 0.9)]


def test_duplicated_predictions_are_counted_once():
    # (1,2) predicted twice: collapsed to its max score 0.9, so it ranks above the false (0,3) at 0.8.
    truth = np.array([[1, 2]])
    dup = sp([(1, 2, 0.3), (0, 3, 0.8), (2, 1, 0.9)])
    m = evaluate(dup, truth, threshold=0.5)
    assert m["uap"] == 1.0
    assert (m["precision"], m["recall"]) == (0.5, 1.0)
    # the raw array functions refuse uncollapsed true duplicates instead of reporting recall > 1
    with pytest.raises(ValueError):
        micro_ap(dup.score, label_pairs(dup, truth), 1)


# --------------------------------------------------------------------------- hand-computed AP


def test_ap_hand_computed_with_unpredicted_true_pair():
    # list: 0.9 T, 0.8 F, 0.7 T, 0.6 F; 3 true pairs, one never predicted.
    # precision at the true positives: 1/1, 2/3  ->  AP = (1 + 2/3) / 3 = 5/9
    scores = [0.9, 0.8, 0.7, 0.6]
    is_true = [True, False, True, False]
    assert micro_ap(scores, is_true, 3) == pytest.approx(5 / 9, abs=1e-15)
    p, r, t = precision_recall_curve(scores, is_true, 3)
    assert p.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2])
    assert r.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert t.tolist() == [0.9, 0.8, 0.7, 0.6]
    # every ground-truth pair found would give (1 + 2/3) / 2 = 5/6: the unpredicted pair lowers AP
    assert micro_ap(scores, is_true, 2) == pytest.approx(5 / 6, abs=1e-15)
    # precision >= 0.9 only at the first point: recall 1/3 at threshold 0.9
    assert recall_at_precision(scores, is_true, 3) == (pytest.approx(1 / 3), 0.9)


def test_ap_order_of_input_does_not_matter():
    scores = np.array([0.2, 0.9, 0.7, 0.8, 0.6])
    is_true = np.array([False, True, True, False, True])
    perm = np.array([3, 0, 4, 1, 2])
    assert micro_ap(scores, is_true, 4) == micro_ap(scores[perm], is_true[perm], 4)


def test_ties_are_broken_pessimistically():
    # two pairs, same score, one true: ISC ranks the false one first -> precision 1/2 at the TP.
    assert micro_ap([0.5, 0.5], [True, False], 1) == 0.5
    assert micro_ap([0.5, 0.5], [False, True], 1) == 0.5
    # distinct scores with the true one on top would give 1.0: the tie order changes AP
    assert micro_ap([0.6, 0.5], [True, False], 1) == 1.0
    # 0.9 T, then a tie at 0.5 of {T, F, T}: ISC order T | F T T.
    # precisions at TPs: 1, 2/3, 3/4 -> AP = (1 + 2/3 + 3/4) / 3 = 29/36.
    # (a per-threshold curve like scikit-learn's gives both tied TPs 3/4 -> 30/36; best order gives 1.)
    scores = [0.9, 0.5, 0.5, 0.5]
    is_true = [True, True, False, True]
    assert micro_ap(scores, is_true, 3) == pytest.approx(29 / 36, abs=1e-15)
    # giving every pair the same score cannot win: 2 true of 4 tied -> (1/3 + 2/4) / 2
    assert micro_ap([1.0] * 4, [True, False, True, False], 2) == pytest.approx(5 / 12)


def test_ties_inside_curve_put_negatives_first():
    p, r, t = precision_recall_curve([0.5, 0.5, 0.5], [True, True, False], 2)
    assert p.tolist() == pytest.approx([0, 1 / 2, 2 / 3])
    assert r.tolist() == pytest.approx([0, 1 / 2, 1])


def test_no_predictions_and_no_truth():
    assert micro_ap([], [], 5) == 0.0
    assert recall_at_precision([], [], 5) == (0.0, pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(micro_ap([0.3], [False], 0))


# ------------------------------------------------------------------------ recall at precision


def test_recall_at_p90_with_threshold():
    # 9 true, 1 false, 1 true, then falses. Points: i=10 -> 9/10 = 0.9 (counts, >=), i=11 -> 10/11.
    # The best point with precision >= 0.9 is i=11: recall 10/12 at the 11th score.
    scores = np.arange(20, 0, -1) / 20.0
    is_true = np.array([True] * 9 + [False, True] + [False] * 9)
    r, t = recall_at_precision(scores, is_true, 12)
    assert r == pytest.approx(10 / 12)
    assert t == scores[10]
    # the threshold reproduces the operating point
    at = metrics_at_threshold(scores, is_true, 12, t)
    assert at["recall"] == pytest.approx(r) and at["precision"] >= 0.9
    # precision exactly 0.9 qualifies (9/10 == 0.9 in floating point)
    r, t = recall_at_precision(scores[:10], is_true[:10], 9)
    assert (r, t) == (1.0, scores[8])


def test_recall_at_p90_never_reached():
    r, t = recall_at_precision([0.9, 0.8], [False, True], 1)
    assert r == 0.0 and math.isnan(t)


def test_recall_at_p90_threshold_ends_tie_group():
    # tie at 0.8 of {T, T, F}: the operating point is the end of the tie group, not inside it
    scores = [0.9, 0.8, 0.8, 0.8] + [0.1] * 3
    is_true = [True, True, False, True] + [False] * 3
    r, t = recall_at_precision(scores, is_true, 3, precision=0.75)
    assert (r, t) == (1.0, 0.8)
    r, t = recall_at_precision(scores, is_true, 3, precision=0.9)
    assert (r, t) == (pytest.approx(1 / 3), 0.9)


# ------------------------------------------------------------------------------ random oracle


def test_micro_ap_and_r90_match_brute_force_on_random_cases():
    rng = np.random.default_rng(1)
    for case in range(50):
        n = int(rng.integers(1, 60))
        levels = int(rng.integers(1, 8))  # few distinct scores: many ties
        scores = rng.integers(0, levels, n) / levels
        is_true = rng.random(n) < rng.random()
        n_true = int(is_true.sum()) + int(rng.integers(0, 5))
        if n_true == 0:
            n_true = 1
        assert micro_ap(scores, is_true, n_true) == pytest.approx(
            oracle_ap(scores, is_true, n_true), abs=1e-12
        ), case
        for req in (0.5, 0.9):
            r, t = recall_at_precision(scores, is_true, n_true, req)
            r_o, t_o = oracle_r90(scores, is_true, n_true, req)
            assert r == pytest.approx(r_o, abs=1e-12), case
            assert (math.isnan(t) and math.isnan(t_o)) or t == t_o, case


# -------------------------------------------------------------------------- threshold metrics


def test_metrics_at_threshold_hand_computed():
    scores = [0.9, 0.8, 0.7, 0.6]
    is_true = [True, False, True, False]
    m = metrics_at_threshold(scores, is_true, 4, 0.7)  # 3 called, 2 true, 4 true pairs
    assert m == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)})
    assert metrics_at_threshold(scores, is_true, 4, 1.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_threshold_sweep_equals_metrics_at_threshold():
    rng = np.random.default_rng(2)
    n_img = 40
    a, b = np.triu_indices(n_img, k=1)
    keep = rng.random(len(a)) < 0.3
    pairs = ScoredPairs(a[keep], b[keep], np.round(rng.random(keep.sum()), 2))
    truth = np.stack([a, b], 1)[rng.random(len(a)) < 0.05]
    d = dedupe_pairs(pairs)
    is_true = label_pairs(d, truth)
    thresholds = np.concatenate([[-1.0, 0.0, 0.5, 0.505, 0.99, 1.0, 2.0, np.nan], d.score[:20]])
    sweep = threshold_sweep(pairs, truth, thresholds)
    assert len(sweep) == len(thresholds)
    for th, row in zip(thresholds, sweep):
        ref = metrics_at_threshold(d.score, is_true, len(truth), th)
        assert {k: row[k] for k in ref} == ref, th
        assert row["threshold"] == th or (math.isnan(th) and math.isnan(row["threshold"]))


# ------------------------------------------------------------------------------ per transform


def test_per_transform_recall():
    labels = ["reference", "rotate", "crop", "reference", "crop", "distractor", "rotate", ""]
    truth = np.array([[0, 1], [0, 2], [3, 4], [1, 2], [3, 6], [0, 7]])
    pairs = sp([(1, 0, 0.9), (0, 2, 0.2), (3, 4, 0.8), (1, 2, 0.95), (5, 6, 0.99), (3, 6, 0.4)])
    got = per_transform_recall(pairs, truth, labels, threshold=0.5)
    # rotate: (0,1) found, (3,6) below threshold -> 1/2; crop: (0,2) below, (3,4) found -> 1/2;
    # copy-copy (1,2) found -> 1; (0,7) has an unknown label and is skipped.
    assert got == {"copy_pairs": 1.0, "crop": 0.5, "rotate": 0.5}
    assert per_transform_recall(pairs, truth, labels, threshold=0.1) == {
        "copy_pairs": 1.0,
        "crop": 1.0,
        "rotate": 1.0,
    }
    assert per_transform_recall(pairs, truth, [], 0.5) == {}
    # the same case's counts: (found at the threshold, true pairs) per transform
    assert per_transform_found(pairs, truth, labels, threshold=0.5) == {"copy_pairs": (1, 1), "crop": (1, 2),
                                                                         "rotate": (1, 2)}
    assert per_transform_found(pairs, truth, labels, threshold=float("nan")) == {"copy_pairs": (0, 1), "crop": (0, 2),
                                                                                  "rotate": (0, 2)}


def test_wilson_interval_equals_scipy_and_the_formula_by_hand():
    from scipy.stats import binomtest

    for k, n in [(5, 7), (128, 135), (0, 7), (7, 7), (1, 1), (40, 100)]:
        lo, hi = wilson_interval(k, n)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (lo, hi) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    # 5 of 7 by hand: z = 1.959964, centre (5/7 + z^2/14) / (1 + z^2/7), half-width z sqrt(p q / 7 + z^2 / 196) / (...)
    z = 1.959963984540054
    p = 5 / 7
    centre = (p + z * z / 14) / (1 + z * z / 7)
    half = z * math.sqrt(p * (1 - p) / 7 + z * z / 196) / (1 + z * z / 7)
    assert wilson_interval(5, 7) == (pytest.approx(centre - half), pytest.approx(centre + half))
    narrow, wide = wilson_interval(50, 100, level=0.8), wilson_interval(50, 100, level=0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


# ----------------------------------------------------------------------------------- evaluate


def test_evaluate_keys_and_values():
    labels = ["reference", "rotate", "reference", "crop", "distractor"]
    truth = np.array([[0, 1], [2, 3]])
    pairs = sp([(0, 1, 0.9), (1, 4, 0.8), (3, 2, 0.7)])
    m = evaluate(pairs, truth, labels, threshold=0.75)
    assert set(m) == {
        "uap", "recall_at_p90", "threshold_at_p90", "precision", "recall", "f1", "threshold",
        "per_transform_recall", "per_transform_recall_at_p90",
    }
    assert m["uap"] == pytest.approx((1 + 2 / 3) / 2)
    assert (m["recall_at_p90"], m["threshold_at_p90"]) == (0.5, 0.9)
    assert (m["precision"], m["recall"], m["threshold"]) == (0.5, 0.5, 0.75)
    assert m["per_transform_recall"] == {"crop": 0.0, "rotate": 1.0}
    assert m["per_transform_recall_at_p90"] == {"crop": 0.0, "rotate": 1.0}  # threshold 0.9
    # precision 0.9 never reached: nothing is called at that operating point
    never = evaluate(sp([(1, 4, 0.9), (0, 1, 0.8)]), truth, labels, threshold=0.5)
    assert never["per_transform_recall"] == {"crop": 0.0, "rotate": 1.0}
    assert never["per_transform_recall_at_p90"] == {"crop": 0.0, "rotate": 0.0}
    # default threshold: the one at precision 0.9
    assert evaluate(pairs, truth, labels)["threshold"] == 0.9
    assert evaluate(pairs, None, labels, 0.5) is None


# ---------------------------------------------------------------------------------- bootstrap


def test_connected_groups():
    gid = connected_groups(np.array([[0, 1], [1, 2], [4, 5], [7, 5]]), 9)
    assert gid[0] == gid[1] == gid[2]
    assert gid[4] == gid[5] == gid[7]
    assert len({gid[0], gid[3], gid[4], gid[6], gid[8]}) == 5
    # a long chain in shuffled order still collapses to one group
    chain = np.stack([np.arange(99), np.arange(1, 100)], 1)[np.random.default_rng(0).permutation(99)]
    assert len(np.unique(connected_groups(chain, 100))) == 1


def test_resample_weights_equal_explicit_resampled_dataset():
    # groups: {0,1,2}, {3,4}, {5}, {6}; a draw with multiplicities m, compared with building the
    # resampled dataset image by image and evaluating it from scratch.
    truth = np.array([[0, 1], [1, 2], [3, 4]])
    pairs = sp([(0, 1, 0.9), (0, 2, 0.4), (3, 4, 0.6), (2, 5, 0.7), (4, 6, 0.6), (1, 3, 0.4)])
    res = _Resampler(pairs, truth, n_images=7)
    gid = res.gid
    for m in ([1, 1, 1, 1], [2, 0, 1, 1], [0, 3, 1, 2], [3, 1, 0, 0]):
        m = np.array(m)
        copies = {}  # image -> list of new indices
        nxt = 0
        for img in range(7):
            copies[img] = list(range(nxt, nxt + m[gid[img]]))
            nxt += m[gid[img]]

        def expand(a, b):
            out = []
            for x, y in zip(a, b):
                if gid[x] == gid[y]:  # within a group: copy k pairs with copy k
                    out += list(zip(copies[x], copies[y]))
                else:  # across groups: every copy with every copy
                    out += [(u, v) for u in copies[x] for v in copies[y]]
            return out

        new_truth = np.array(expand(truth[:, 0], truth[:, 1])).reshape(-1, 2)
        rows = []
        for x, y, s in zip(pairs.a, pairs.b, pairs.score):
            rows += [(u, v, s) for u, v in expand([x], [y])]
        ref = evaluate(sp(rows), new_truth) if len(new_truth) else None
        uap, r90 = res.metrics(m)
        if ref is None:
            assert math.isnan(uap)
        else:
            assert uap == pytest.approx(ref["uap"], abs=1e-12), m
            assert r90 == pytest.approx(ref["recall_at_p90"], abs=1e-12), m


def make_benchmark(rng, n_groups, size, n_false):
    """Duplicate groups of `size` images, all their pairs true, predicted with noisy scores."""
    base = np.arange(n_groups)[:, None] * size
    ia, ib = np.triu_indices(size, k=1)
    truth = np.stack([(base + ia).ravel(), (base + ib).ravel()], 1)
    found = rng.random(len(truth)) < 0.8
    n_img = n_groups * size
    fa = rng.integers(0, n_img, n_false)
    fb = rng.integers(0, n_img, n_false)
    ok = fa != fb
    a = np.concatenate([truth[found, 0], fa[ok]])
    b = np.concatenate([truth[found, 1], fb[ok]])
    s = np.concatenate([rng.normal(0.7, 0.15, found.sum()), rng.normal(0.3, 0.15, ok.sum())])
    return ScoredPairs(a, b, np.round(s, 3)), truth, n_img


def test_bootstrap_contains_point_estimate_and_is_deterministic():
    rng = np.random.default_rng(3)
    pairs, truth, n_img = make_benchmark(rng, n_groups=150, size=3, n_false=2000)
    point = evaluate(pairs, truth)
    ci = bootstrap_ci(pairs, truth, n_boot=100, seed=7)
    assert set(ci) == {"uap", "recall_at_p90"}
    for key in ci:
        lo, hi = ci[key]
        assert lo <= point[key] <= hi, key
        assert hi - lo > 0, key
    assert bootstrap_ci(pairs, truth, n_boot=100, seed=7) == ci
    assert bootstrap_ci(pairs, truth, n_boot=100, seed=8) != ci
    # the same groups given as index lists or as ids per image give the same intervals
    gid = connected_groups(truth, n_img)
    lists = [np.nonzero(gid == g)[0] for g in range(gid.max() + 1)]
    assert bootstrap_ci(pairs, truth, lists, n_boot=100, seed=7) == ci
    assert bootstrap_ci(pairs, truth, gid, n_boot=100, seed=7) == ci


def test_bootstrap_on_100k_pairs_gives_a_sane_interval():
    # Scale check (speed itself is measured in benchmarks, not asserted here).
    rng = np.random.default_rng(4)
    pairs, truth, _ = make_benchmark(rng, n_groups=5000, size=4, n_false=75000)
    assert len(pairs) > 95_000
    ci = bootstrap_ci(pairs, truth, n_boot=50, seed=0)
    point = evaluate(pairs, truth)["uap"]
    assert ci["uap"][0] < point < ci["uap"][1]
