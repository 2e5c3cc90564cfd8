"""Evaluation of scored image pairs against ground-truth duplicate pairs, as ISC2021 defines it.

Reference: Facebook's Image Similarity Challenge 2021, `isc/metrics.py` in
https://github.com/facebookresearch/isc2021 (functions `precision_recall`, `average_precision`,
`find_operating_point`, `evaluate`). What it does, and what this module does the same way:

* Every predicted pair of the whole run is pooled into one list (micro average, not per query).
* The list is sorted by decreasing score; among equal scores the false pairs come first
  (ISC sorts on `(score, NOT(is_true))` and reverses). Ties are therefore broken pessimistically:
  giving every pair the same score cannot buy a good AP.
* Precision and recall are taken after *every* prediction of that list, not once per distinct score:
  `precision_i = TP_i / i`, `recall_i = TP_i / n_true`, where `n_true` is the number of ground-truth
  pairs. True pairs that were never predicted are in `n_true` and so lower recall and AP.
* micro-AP = sum_i (recall_i - recall_{i-1}) * precision_i (with recall_0 = 0), i.e. the sum of the
  precision at each true positive divided by `n_true` (ISC's `average_precision`, "Jay Qi's version").
  Because precision is taken inside a tie group with its negatives first, this is lower than a
  score-threshold curve (scikit-learn style) would give when positives and negatives share a score.
* recall at precision 0.9 = the highest recall over all points with precision >= 0.9, the first such
  point in the list; its threshold is the score of that point (ISC's `find_operating_point`). That
  point always ends a tie group, so predicting `score >= threshold` gives exactly that precision and
  recall.

Where simbench differs, on purpose:

* Pairs are unordered (ISC's are ordered (query, db)): (a, b) and (b, a) are the same pair.
* ISC rejects a submission with duplicated predictions. simbench collapses them instead
  (`dedupe_pairs`): one row per unordered pair, keeping its maximum score. The entry points that take
  `ScoredPairs` (`evaluate`, `threshold_sweep`, `per_transform_recall`, `bootstrap_ci`) do this
  themselves; the array functions (`micro_ap`, ...) expect collapsed input and raise if they see more
  true predictions than ground-truth pairs.
* Ground-truth self pairs (a == b) are dropped and duplicated ground-truth pairs counted once.
* Where ISC returns None (precision 0.9 never reached) simbench returns recall 0.0 and threshold nan.
  With no ground-truth pairs at all (n_true == 0) AP and recalls are nan (ISC would divide by zero).
* At a fixed threshold, precision with nothing predicted is 0.0 (and so is f1), as scikit-learn's
  `zero_division=0`.
"""
from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from simbench.types import ScoredPairs

__all__ = [
    "pair_keys",
    "dedupe_pairs",
    "label_pairs",
    "precision_recall_curve",
    "micro_ap",
    "recall_at_precision",
    "metrics_at_threshold",
    "per_transform_recall",
    "per_transform_found",
    "wilson_interval",
    "evaluate",
    "threshold_sweep",
    "connected_groups",
    "bootstrap_ci",
]

# labels that are not a transform name: they never get a per-transform recall of their own
_NOT_TRANSFORMS = ("", "reference", "distractor")
COPY_PAIRS = "copy_pairs"


# ----------------------------------------------------------------------------------------- pairs


def pair_keys(a, b, n: int) -> np.ndarray:
    """Canonical int64 key of the unordered pair {a, b} of indices in [0, n): min(a, b) * n + max(a, b)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    return lo * np.int64(n) + hi


def _canonical_truth(truth) -> np.ndarray:
    """Ground truth as unique (P, 2) int64 rows a < b; self pairs dropped."""
    t = np.asarray(truth, dtype=np.int64).reshape(-1, 2)
    t = np.sort(t, axis=1)
    t = t[t[:, 0] != t[:, 1]]
    if len(t) == 0:
        return np.empty((0, 2), np.int64)
    return np.unique(t, axis=0)


def _n_index(*arrays) -> int:
    """One more than the largest index in any of the arrays (at least 1)."""
    top = 0
    for arr in arrays:
        arr = np.asarray(arr)
        if arr.size:
            if arr.min() < 0:
                raise ValueError("image indices must be >= 0")
            top = max(top, int(arr.max()) + 1)
    return max(top, 1)


def dedupe_pairs(pairs: ScoredPairs) -> ScoredPairs:
    """One row per unordered pair, a <= b, keeping the row with the maximum score (the first such row).

    ISC2021 rejects duplicated predictions; simbench collapses them so that a matcher that reports a
    pair twice (e.g. once per direction) is not counted twice. Rows come out in key order (a, then b).
    Per-pair arrays in `extra` (same length as the pairs) are filtered alongside; other entries are kept.
    """
    a = np.asarray(pairs.a, dtype=np.int64)
    b = np.asarray(pairs.b, dtype=np.int64)
    score = np.asarray(pairs.score)
    n_rows = len(a)
    if n_rows == 0:
        return ScoredPairs(np.minimum(a, b), np.maximum(a, b), score, dict(pairs.extra))
    keys = pair_keys(a, b, _n_index(a, b))
    # sort by key, then by decreasing score (stable: among equal max scores the first row wins)
    by_score_desc = np.argsort(-score.astype(np.float64), kind="stable")
    order = by_score_desc[np.argsort(keys[by_score_desc], kind="stable")]
    sorted_keys = keys[order]
    first = np.ones(n_rows, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    keep = order[first]
    extra = {
        k: (np.asarray(v)[keep] if isinstance(v, np.ndarray) and len(v) == n_rows else v)
        for k, v in pairs.extra.items()
    }
    return ScoredPairs(np.minimum(a, b)[keep], np.maximum(a, b)[keep], score[keep], extra)


def label_pairs(pairs: ScoredPairs, truth) -> np.ndarray:
    """Which predicted pairs are true duplicates: a bool per row of `pairs`, order-insensitive.

    Labels every row as given, duplicates included (each copy of a true pair is True). The metrics
    count each unordered pair once, so collapse duplicated predictions with `dedupe_pairs` first
    (keeps the maximum score); `evaluate` and the other ScoredPairs entry points do.
    """
    t = _canonical_truth(truth)
    a = np.asarray(pairs.a, dtype=np.int64)
    b = np.asarray(pairs.b, dtype=np.int64)
    n = _n_index(a, b, t)
    return np.isin(pair_keys(a, b, n), pair_keys(t[:, 0], t[:, 1], n))


def _prepare(pairs: ScoredPairs, truth):
    """Deduplicated pairs, their labels, canonical truth."""
    pairs = dedupe_pairs(pairs)
    t = _canonical_truth(truth)
    return pairs, label_pairs(pairs, t), t


# ---------------------------------------------------------------------------------- ISC metrics


def _check(scores, is_true, n_true):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    is_true = np.asarray(is_true).astype(bool).ravel()
    if scores.shape != is_true.shape:
        raise ValueError(f"{len(scores)} scores but {len(is_true)} labels")
    if np.isnan(scores).any():
        raise ValueError("scores contain nan")
    n_true = int(n_true)
    if int(is_true.sum()) > n_true:
        raise ValueError(
            f"{int(is_true.sum())} true predictions but only {n_true} true pairs: "
            "collapse duplicated predictions first (dedupe_pairs)"
        )
    return scores, is_true, n_true


def _pessimistic_order(scores: np.ndarray, is_true: np.ndarray) -> np.ndarray:
    """ISC2021's order: decreasing score; among equal scores the false pairs first.

    ISC sorts ascending on (score, NOT is_true) and reverses: so within a tie the pairs with
    NOT is_true = True (false pairs) come first. np.lexsort sorts on its last key first.
    """
    return np.lexsort((~is_true, scores))[::-1]


def _curve_sorted(y_sorted: np.ndarray, n_true: int):
    """Precision and recall after each prediction of a list already in ISC order."""
    ntp = np.cumsum(y_sorted, dtype=np.int64)  # true positives among the first i predictions
    nres = np.arange(1, len(y_sorted) + 1, dtype=np.int64)  # number of predictions so far
    precision = ntp / nres
    if n_true > 0:
        recall = ntp / n_true
    else:
        recall = np.full(len(y_sorted), np.nan)
    return precision, recall


def _ap_from_curve(precision: np.ndarray, recall: np.ndarray, n_true: int) -> float:
    """ISC2021 `average_precision`: sum of (recall_i - recall_{i-1}) * precision_i, recall_0 = 0."""
    if n_true <= 0:
        return float("nan")
    steps = np.diff(recall, prepend=0.0)
    return float((steps * precision).sum())


def _operating_point(precision, recall, thresholds, required: float, n_true: int):
    """ISC2021 `find_operating_point`: highest recall among points with precision >= required.

    The first point with that recall (np.argmax) gives the threshold. Not reached: (0.0, nan).
    """
    if n_true <= 0:
        return float("nan"), float("nan")
    valid = precision >= required
    if not valid.any():
        return 0.0, float("nan")
    i = int(np.argmax(np.where(valid, recall, -np.inf)))
    return float(recall[i]), float(thresholds[i])


def precision_recall_curve(scores, is_true, n_true: int):
    """Precision, recall and threshold after each prediction, in ISC2021's pessimistic order.

    Follows `precision_recall` of facebookresearch/isc2021 isc/metrics.py: predictions sorted by
    decreasing score, false ones before true ones among equal scores; point i (1-based) has
    precision TP_i / i and recall TP_i / n_true (n_true = all ground-truth pairs, predicted or not).
    Returns three float64 arrays of the length of `scores`, by increasing recall; thresholds are the
    scores in that order. With n_true == 0 recall is nan.
    """
    scores, is_true, n_true = _check(scores, is_true, n_true)
    order = _pessimistic_order(scores, is_true)
    precision, recall = _curve_sorted(is_true[order], n_true)
    return precision, recall, scores[order]


def micro_ap(scores, is_true, n_true: int) -> float:
    """Micro average precision (uAP) of ISC2021 over all pooled predictions.

    sum_i (recall_i - recall_{i-1}) * precision_i over `precision_recall_curve`, as `average_precision`
    in facebookresearch/isc2021 isc/metrics.py; equal to the sum of the precision at each true
    positive divided by n_true, so unpredicted true pairs contribute 0. No predictions: 0.0;
    n_true == 0: nan.
    """
    precision, recall, _ = precision_recall_curve(scores, is_true, n_true)
    return _ap_from_curve(precision, recall, int(n_true))


def recall_at_precision(scores, is_true, n_true: int, precision: float = 0.9) -> tuple[float, float]:
    """(recall, threshold) at the best operating point with precision >= `precision`, as ISC2021.

    ISC's `find_operating_point(precisions, recalls, thresholds, required_x=0.9)`: among all points of
    the pessimistic curve with precision >= 0.9, the highest recall; threshold = the score of the
    first point with that recall. Keeping pairs with score >= threshold reproduces that recall.
    Never reached: (0.0, nan) where ISC returns None. n_true == 0: (nan, nan).
    """
    p, r, t = precision_recall_curve(scores, is_true, n_true)
    return _operating_point(p, r, t, float(precision), int(n_true))


def _prf(tp, n_pred, n_true):
    """Vectorised precision, recall, f1 from counts; precision 0 when nothing is predicted."""
    tp = np.asarray(tp, dtype=np.float64)
    n_pred = np.asarray(n_pred, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        recall = tp / n_true if n_true > 0 else np.full_like(tp, np.nan)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
        if n_true <= 0:
            f1 = np.full_like(tp, np.nan)
    return precision, recall, f1


def metrics_at_threshold(scores, is_true, n_true: int, threshold: float) -> dict:
    """Precision, recall and F1 when every pair with score >= threshold is called a duplicate.

    Recall is over all n_true ground-truth pairs. Nothing predicted: precision 0.0, f1 0.0.
    A nan threshold predicts nothing.
    """
    scores, is_true, n_true = _check(scores, is_true, n_true)
    called = scores >= threshold
    p, r, f = _prf(np.count_nonzero(called & is_true), np.count_nonzero(called), n_true)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def threshold_sweep(pairs: ScoredPairs, truth, thresholds) -> list[dict]:
    """Precision, recall and F1 at each threshold (score >= threshold), from one sort of the scores.

    Duplicated predictions are collapsed first (max score). The scores are sorted once; each
    threshold finds its cut with a binary search and reads the true positives above it from a suffix
    count. Returns one dict {threshold, precision, recall, f1} per threshold, in the order given.
    """
    pairs, is_true, t = _prepare(pairs, truth)
    scores, is_true, n_true = _check(pairs.score, is_true, len(t))
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    order = np.argsort(scores, kind="stable")
    s_asc = scores[order]
    # tp_from[i] = true pairs among s_asc[i:], i = 0..n
    tp_from = np.concatenate([np.cumsum(is_true[order][::-1])[::-1], [0]])
    cut = np.searchsorted(s_asc, thresholds, side="left")  # first index with score >= threshold
    cut[np.isnan(thresholds)] = len(s_asc)  # nan threshold: nothing called
    p, r, f = _prf(tp_from[cut], len(s_asc) - cut, n_true)
    return [
        {"threshold": float(th), "precision": float(pi), "recall": float(ri), "f1": float(fi)}
        for th, pi, ri, fi in zip(thresholds, p, r, f)
    ]


# ----------------------------------------------------------------------------------- per transform


def per_transform_recall(pairs: ScoredPairs, truth, labels, threshold: float) -> dict[str, float]:
    """Recall of ground-truth (reference, copy) pairs, one value per transform name.

    A true pair counts for transform T when one image is labelled "reference" and the other T
    (labels "", "reference" and "distractor" are not transforms). True pairs of two copies (both
    labelled with a transform) are pooled under "copy_pairs". A pair is found when it is predicted
    with score >= threshold (its maximum score if predicted more than once). Transforms with no
    true pair are absent. No labels: {}.
    """
    return {name: found / n for name, (found, n) in per_transform_found(pairs, truth, labels, threshold).items()}


def per_transform_found(pairs: ScoredPairs, truth, labels, threshold: float) -> dict[str, tuple[int, int]]:
    """`per_transform_recall`'s counts: per transform name, (true pairs found at >= threshold, true pairs)."""
    if truth is None or labels is None or len(labels) == 0:
        return {}
    t = _canonical_truth(truth)
    if len(t) == 0:
        return {}
    lab = np.asarray([str(x) for x in labels], dtype=str)
    if t.max() >= len(lab):
        raise ValueError(f"truth refers to image {int(t.max())} but there are {len(lab)} labels")
    la, lb = lab[t[:, 0]], lab[t[:, 1]]
    a_copy = ~np.isin(la, _NOT_TRANSFORMS)
    b_copy = ~np.isin(lb, _NOT_TRANSFORMS)
    a_ref = la == "reference"
    b_ref = lb == "reference"
    group = np.full(len(t), None, dtype=object)
    group[a_ref & b_copy] = lb[a_ref & b_copy]
    group[b_ref & a_copy] = la[b_ref & a_copy]
    group[a_copy & b_copy] = COPY_PAIRS

    pairs = dedupe_pairs(pairs)
    n = _n_index(pairs.a, pairs.b, t)
    called = np.asarray(pairs.score) >= threshold
    found_keys = pair_keys(pairs.a[called], pairs.b[called], n)
    found = np.isin(pair_keys(t[:, 0], t[:, 1], n), found_keys)

    out = {}
    for name in sorted({g for g in group if g is not None}):
        sel = group == name
        out[str(name)] = (int(found[sel].sum()), int(sel.sum()))
    return out


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval (1927) for a proportion k / n at confidence `level`; (nan, nan) when n == 0.

    For the figures that are counts of few: a recall of 5 / 7 copies, 128 / 135 yearbook pairs. Unlike the
    plain normal (Wald) interval it stays inside [0, 1] and keeps a width at k = 0 and k = n."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


# ---------------------------------------------------------------------------------------- evaluate


def evaluate(pairs: ScoredPairs, truth, labels=None, threshold: float | None = None) -> dict | None:
    """All metrics of a run, the `metrics` object of result.json; None when there is no ground truth.

    Keys: uap, recall_at_p90, threshold_at_p90 (ISC2021, see module docstring), precision, recall, f1
    at `threshold` (score >= threshold; None means threshold_at_p90), threshold, per_transform_recall
    (at `threshold`), per_transform_recall_at_p90 (at threshold_at_p90: the same precision for every
    method, so that methods whose own thresholds sit at different precisions compare fairly; all 0.0
    when precision 0.9 is never reached).
    Duplicated predictions are collapsed first (max score). threshold_at_p90 is nan when precision
    0.9 is never reached (json.dumps writes it as NaN; a strict JSON writer must map it to null).
    """
    if truth is None:
        return None
    pairs, is_true, t = _prepare(pairs, truth)
    n_true = len(t)
    p, r, th = precision_recall_curve(pairs.score, is_true, n_true)
    uap = _ap_from_curve(p, r, n_true)
    r90, t90 = _operating_point(p, r, th, 0.9, n_true)
    if threshold is None:
        threshold = t90
    threshold = float(threshold)
    at = metrics_at_threshold(pairs.score, is_true, n_true, threshold)
    return {
        "uap": uap,
        "recall_at_p90": r90,
        "threshold_at_p90": t90,
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "threshold": threshold,
        "per_transform_recall": per_transform_recall(pairs, t, labels, threshold),
        "per_transform_recall_at_p90": per_transform_recall(pairs, t, labels, t90),
    }


# ---------------------------------------------------------------------------------------- bootstrap


def connected_groups(truth, n_images: int) -> np.ndarray:
    """Group id per image (0..G-1): connected components of the truth graph; other images alone.

    Min-label propagation with pointer jumping, all in NumPy (a few passes for real duplicate groups).
    """
    labels = np.arange(n_images, dtype=np.int64)
    t = _canonical_truth(truth) if truth is not None else np.empty((0, 2), np.int64)
    if len(t):
        a, b = t[:, 0], t[:, 1]
        while True:
            low = np.minimum(labels[a], labels[b])
            new = labels.copy()
            np.minimum.at(new, a, low)
            np.minimum.at(new, b, low)
            new = new[new]  # pointer jumping: follow the label's own label
            while True:
                jumped = new[new]
                if np.array_equal(jumped, new):
                    break
                new = jumped
            if np.array_equal(new, labels):
                break
            labels = new
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _group_ids(groups, n_images: int) -> np.ndarray:
    """Normalise `groups` (None, list of index arrays, or an id per image) to ids 0..G-1 per image."""
    if isinstance(groups, np.ndarray) and groups.dtype != object and groups.ndim == 1:
        gid = groups.astype(np.int64)
        if len(gid) < n_images:
            raise ValueError(f"{len(gid)} group ids but pairs refer to {n_images} images")
        return np.unique(gid, return_inverse=True)[1].astype(np.int64)
    if isinstance(groups, Sequence) and len(groups) and np.ndim(groups[0]) == 0:
        return _group_ids(np.asarray(groups), n_images)  # a plain list of ids per image
    members = [np.asarray(g, dtype=np.int64).ravel() for g in groups]
    n = max([n_images] + [int(m.max()) + 1 for m in members if m.size])
    gid = np.full(n, -1, dtype=np.int64)
    for k, m in enumerate(members):
        if (gid[m] >= 0).any():
            raise ValueError("an image belongs to more than one group")
        gid[m] = k
    alone = gid < 0  # images in no group are groups of their own
    gid[alone] = len(members) + np.arange(int(alone.sum()))
    return np.unique(gid, return_inverse=True)[1].astype(np.int64)


class _Resampler:
    """Pairs sorted once in ISC order, with the groups of their images, to score resampled datasets.

    A resample draws G groups with replacement: group g is drawn m[g] times. The resampled dataset
    holds m[g] copies of the images of g; a pair within one group then appears m[g] times, a pair
    across groups g != h appears m[g] * m[h] times (every copy with every copy). Repeating the rows of
    the ISC-sorted list keeps it in ISC order (copies share score and label), so the metrics of a
    resample are the plain ISC metrics of `np.repeat(sorted_list, weights)`: no re-sort.
    """

    def __init__(self, pairs: ScoredPairs, truth, groups=None, n_images: int | None = None):
        pairs, is_true, t = _prepare(pairs, truth)
        scores, is_true, _ = _check(pairs.score, is_true, len(t))
        n = _n_index(pairs.a, pairs.b, t)
        if n_images is not None:
            n = max(n, int(n_images))
        self.gid = connected_groups(t, n) if groups is None else _group_ids(groups, n)
        self.n_groups = int(self.gid.max()) + 1 if len(self.gid) else 0
        order = _pessimistic_order(scores, is_true)
        self.y = is_true[order]
        self.ga = self.gid[pairs.a[order]]
        self.gb = self.gid[pairs.b[order]]
        self.same = self.ga == self.gb
        self.ta = self.gid[t[:, 0]]
        self.tb = self.gid[t[:, 1]]
        self.tsame = self.ta == self.tb

    def metrics(self, m: np.ndarray) -> tuple[float, float]:
        """(uap, recall_at_p90) of the dataset with group g drawn m[g] times."""
        m = np.asarray(m, dtype=np.int64)
        w = np.where(self.same, m[self.ga], m[self.ga] * m[self.gb])
        n_true = int(np.where(self.tsame, m[self.ta], m[self.ta] * m[self.tb]).sum())
        y = np.repeat(self.y, w)
        p, r = _curve_sorted(y, n_true)
        if n_true <= 0:
            return float("nan"), float("nan")
        valid = p >= 0.9  # ISC find_operating_point: highest recall with precision >= 0.9
        r90 = float(r[valid].max()) if valid.any() else 0.0
        return _ap_from_curve(p, r, n_true), r90


def bootstrap_ci(
    pairs: ScoredPairs,
    truth,
    groups=None,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    n_images: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of uAP and recall at precision 0.9, resampling duplicate groups.

    groups: None (connected components of the truth graph, every other image alone), a list of index
    arrays (images in none of them are groups of their own), or a group id per image. Each resample
    draws as many groups as there are, with replacement, and recomputes the ISC2021 metrics on the
    pairs of the resampled dataset (see `_Resampler` for how pairs are repeated); true pairs of drawn
    groups that were not predicted still count. Returns {"uap": (lo, hi), "recall_at_p90": (lo, hi)},
    the alpha/2 and 1 - alpha/2 quantiles; resamples without any true pair are left out.
    Deterministic for a seed (numpy default_rng).
    """
    res = _Resampler(pairs, truth, groups, n_images)
    rng = np.random.default_rng(seed)
    values = np.empty((int(n_boot), 2))
    for k in range(int(n_boot)):
        m = np.bincount(rng.integers(0, res.n_groups, res.n_groups), minlength=res.n_groups)
        values[k] = res.metrics(m)
    out = {}
    for j, name in enumerate(("uap", "recall_at_p90")):
        v = values[:, j]
        v = v[~np.isnan(v)]
        if len(v) == 0:
            out[name] = (float("nan"), float("nan"))
        else:
            lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
            out[name] = (float(lo), float(hi))
    return out
