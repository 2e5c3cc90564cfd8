"""Keypoint descriptors matched as bags between images (the yearbook method), optionally verified.

Steps, for all images at once:
1. descriptor pairs: binary descriptors -> uint64 words -> matcher.self_join(words, distance_threshold)
   (Hamming distance <= threshold, inclusive); float descriptors (SIFT) -> brute-force L2 with Lowe's
   ratio test per image pair (Lowe 2004, section 7.1), as cv2.BFMatcher.knnMatch(k=2) would give it;
2. pairs of descriptors of the same image are dropped (their owners are equal);
3. per image pair (a, b): m_a = DISTINCT features of a with at least one match in b, m_b likewise, so a
   descriptor that matches many others counts once; n_a, n_b = features of each image;
4. bag score from those counts (see `bag_score`), in [0, 1];
5. optional geometric verification: a similarity or homography fitted with RANSAC (Fischler & Bolles
   1981) to one-to-one best matches; the score becomes the same formula with inliers standing for both
   m_a and m_b ("min": inliers / min(n_a, n_b)); pairs with fewer than min_inliers inliers score 0.

All aggregation is vectorised (sorts of int64 keys), so it scales to tens of millions of
descriptor pairs; only the RANSAC fits loop in Python, one per verified image pair.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from simbench.features.base import Extractor
from simbench.methods.base import Method
from simbench.types import KeypointSets, Pairs, ScoredPairs, bytes_to_words

SCORES = ("min", "max", "mean", "union", "query")
TRANSFORMS = ("similarity", "homography")

#: A fitted transform that shrinks or grows by more than this (linear factor) is degenerate, not a copy.
MAX_SCALE_CHANGE = 16.0


class KeypointMethod(Method):
    """Bag-of-descriptors similarity between images, with optional RANSAC verification.

    score_pairs(features) -> ScoredPairs of feature rows a < b with at least one matched feature; extra:
    per pair n_matches (descriptor pairs), matched_a, matched_b (distinct matched features), n_a, n_b;
    with verify also bag_score, inliers, flipped (the mirrored fit won); scalars comparisons (descriptor
    distances computed), descriptor_pairs (matches between images) and, with verify, verified (pairs fitted).

    distance_threshold: Hamming radius (inclusive) under which two binary descriptors match. Ignored for
        float descriptors (SIFT), which match by Lowe's ratio test instead (`ratio`).
    score_threshold: pairs scoring at or above it are duplicates (`threshold`, as every Method has).
    score: how matched features become a score, see `bag_score` ("min" suits crops: a crop's features
        are mostly found in the full picture, but not the other way round).
    ratio: Lowe's ratio for float descriptors: nearest < ratio * second nearest (in the other image).
        0.7, stricter than Lowe's 0.8: in a bag every feature of an image gets a chance to match, and at
        0.8 unrelated photos reached bag scores of 0.2 on skimage's photos (as high as hard copies).
    verify: fit a geometric transform per candidate pair and score by its inliers (see `verify_pairs`).
        Only verified pairs that pass are returned: pairs below the pre-threshold, beyond
        max_pairs_verified, or with fewer than min_inliers inliers score 0 (not returned); their bag
        score is in extra["bag_score"] for those that were verified.
    ransac_threshold: RANSAC reprojection threshold in pixels at the detector's working scale
        (long side `extractor.max_size`), so that it means the same for small and large originals.
    min_inliers: verified pairs with fewer inliers score 0 (they are not returned).
    transform: "similarity" (rotation, uniform scale, translation: cv2.estimateAffinePartial2D) or
        "homography" (cv2.findHomography; also perspective, e.g. photographed prints).
    max_pairs_verified: verify at most this many candidate pairs, best bag score first.
    verify_min_score: candidate pairs for verification need at least this bag score (a low pre-threshold)
        and at least min_inliers matched features.
    """

    def __init__(self, extractor: Extractor, matcher, distance_threshold: int = 31,
                 score_threshold: float = 0.05, score: str = "min", ratio: float = 0.7,
                 verify: bool = False, ransac_threshold: float = 8.0, min_inliers: int = 8,
                 transform: str = "similarity", max_pairs_verified: int = 100_000,
                 verify_min_score: float = 0.01):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        self.extractor = extractor
        self.matcher = matcher
        self.distance_threshold = int(distance_threshold)
        self.threshold = float(score_threshold)
        self.score = score
        self.ratio = float(ratio)
        self.verify = bool(verify)
        self.ransac_threshold = float(ransac_threshold)
        self.min_inliers = int(min_inliers)
        self.transform = transform
        self.max_pairs_verified = int(max_pairs_verified)
        self.verify_min_score = float(verify_min_score)

    def params(self) -> dict:
        return {"distance_threshold": self.distance_threshold, "score_threshold": self.threshold,
                "score": self.score, "ratio": self.ratio, "verify": self.verify,
                "ransac_threshold": self.ransac_threshold, "min_inliers": self.min_inliers,
                "transform": self.transform, "max_pairs_verified": self.max_pairs_verified,
                "verify_min_score": self.verify_min_score}

    def score_pairs(self, features: KeypointSets) -> ScoredPairs:
        """Image pairs a < b (feature rows) with at least one matched feature, scored in [0, 1].

        extra also times the stages: descriptor_pairs_s (the matcher), bags_s, verify_s.
        """
        started = time.perf_counter()
        pairs, comparisons = self.descriptor_pairs(features)
        paired = time.perf_counter()
        owners = features.owners
        matches = between_images(pairs, owners)
        counts = bag_counts(matches, owners, np.diff(features.offsets))
        bag = bag_score(counts["matched_a"], counts["matched_b"], counts["n_a"], counts["n_b"], self.score)
        extra = {"descriptors": len(features.descriptors), "comparisons": comparisons,
                 "descriptor_pairs": len(matches["ra"]),
                 "descriptor_pairs_s": paired - started, "bags_s": time.perf_counter() - paired,
                 **{k: v for k, v in counts.items() if k not in ("a", "b")}}
        if not self.verify:
            return ScoredPairs(counts["a"], counts["b"], bag, extra=extra)
        verifying = time.perf_counter()
        scored = self._verified(features, matches, counts, bag, extra)
        scored.extra["verify_s"] = time.perf_counter() - verifying
        return scored

    def descriptor_pairs(self, features: KeypointSets) -> tuple[Pairs, int]:
        """Matching descriptor rows (a < b) over all images, and how many descriptor pairs were compared."""
        m = len(features.descriptors)
        if not features.binary:
            return ratio_test_pairs(features, self.ratio)
        if m < 2:
            return Pairs.empty(), 0
        words = bytes_to_words(features.descriptors)
        return self.matcher.self_join(words, self.distance_threshold), m * (m - 1) // 2

    def _verified(self, features, matches, counts, bag, extra) -> ScoredPairs:
        """Replace bag scores by verified scores; keep only pairs with >= min_inliers inliers."""
        n_pairs = len(counts["a"])
        # Best bag scores first; a pair needs min_inliers matched features to ever pass.
        eligible = (bag >= self.verify_min_score) & (np.minimum(counts["matched_a"], counts["matched_b"])
                                                     >= self.min_inliers)
        order = np.flatnonzero(eligible)
        order = order[np.argsort(-bag[order], kind="stable")][: self.max_pairs_verified]
        inliers, flipped = verify_pairs(features, matches, counts["a"][order], counts["b"][order],
                                        self.transform, self.ransac_threshold,
                                        getattr(self.extractor, "max_size", None))
        keep = inliers >= self.min_inliers
        sel = order[keep]
        inl = inliers[keep]
        # Inliers are one-to-one correspondences: they stand for both m_a and m_b in the same formula.
        score = bag_score(inl, inl, counts["n_a"][sel], counts["n_b"][sel], self.score)
        out = {k: (v[sel] if isinstance(v, np.ndarray) and len(v) == n_pairs else v) for k, v in extra.items()}
        out.update(bag_score=bag[sel], inliers=inl, flipped=flipped[keep], verified=len(order))
        return ScoredPairs(counts["a"][sel], counts["b"][sel], score, extra=out)


# ---------------------------------------------------------------------------------------------------
# Descriptor pairs -> image pairs (vectorised)


def between_images(pairs: Pairs, owners: np.ndarray) -> dict:
    """Descriptor pairs whose two rows belong to different images, oriented so that image ia < ib.

    Returns arrays ra, rb (descriptor rows), dist, ia, ib (owner images).
    """
    ra, rb = np.asarray(pairs.a, np.int64), np.asarray(pairs.b, np.int64)
    ia, ib = owners[ra], owners[rb]
    keep = ia != ib  # a descriptor matching another of its own image says nothing about image pairs
    ra, rb, ia, ib, dist = ra[keep], rb[keep], ia[keep], ib[keep], np.asarray(pairs.dist)[keep]
    swap = ia > ib
    if swap.any():  # never for a self-join (rows a < b, images own consecutive rows); cheap to check
        ra, rb = np.where(swap, rb, ra), np.where(swap, ra, rb)
        ia, ib = np.where(swap, ib, ia), np.where(swap, ia, ib)
    return {"ra": ra, "rb": rb, "dist": dist, "ia": ia, "ib": ib}


def bag_counts(matches: dict, owners: np.ndarray, n_features: np.ndarray) -> dict:
    """Per image pair (a < b): descriptor pairs, distinct matched features of each side, feature counts.

    m_a counts the distinct rows of a that appear in at least one pair with b: the keys (row of a, b)
    are made unique first, so one descriptor matching many in b counts once (and likewise for b).
    """
    ra, rb, ia, ib = matches["ra"], matches["rb"], matches["ia"], matches["ib"]
    n = np.int64(max(len(n_features), 1))
    # Every key below is an int64: rows * n + image < 2^63 for any realistic M and N.
    keys, n_matches = unique_counts(ia * n + ib)
    # Distinct (feature of a, image b): the pair key follows from the feature's owner.
    fa = unique_values(ra * n + ib)
    fb = unique_values(rb * n + ia)
    matched_a = _count_into(keys, owners[fa // n] * n + fa % n)
    matched_b = _count_into(keys, (fb % n) * n + owners[fb // n])
    a, b = keys // n, keys % n
    nf = np.asarray(n_features, np.int64)
    return {"a": a, "b": b, "n_matches": n_matches, "matched_a": matched_a,
            "matched_b": matched_b, "n_a": nf[a], "n_b": nf[b]}


def _count_into(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How often each (sorted, unique) key occurs in values; every value is one of the keys."""
    uniq, counts = unique_counts(values)
    out = np.zeros(len(keys), np.int64)
    out[np.searchsorted(keys, uniq)] = counts
    return out


def unique_values(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values by one sort (NumPy 2.4's np.unique without counts hashes, ~50x slower)."""
    s = np.sort(x)
    return s[_run_starts(s)]


def unique_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and how often each occurs, by one sort."""
    s = np.sort(x)
    starts = np.flatnonzero(_run_starts(s))
    return s[starts], np.diff(np.append(starts, len(s))).astype(np.int64)


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Boolean mask of the first element of each run of equal values."""
    mask = np.ones(len(sorted_values), bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=mask[1:])
    return mask


def bag_score(matched_a, matched_b, n_a, n_b, score: str) -> np.ndarray:
    """Score in [0, 1] from matched features (m_a, m_b) and feature counts (n_a, n_b) of an image pair.

    m = min(m_a, m_b) is the number of matched features: it bounds any one-to-one matching between the
    two sides, so many-to-one matches cannot inflate it. Variants:
    - "min":   m / min(n_a, n_b)              the smaller image's share found in the other (crops)
    - "max":   m / max(n_a, n_b)              both images mostly covered (near-identical copies)
    - "mean":  (m_a + m_b) / (n_a + n_b)      share of all features that matched, each side counted
    - "union": m / (n_a + n_b - m)            Jaccard index of the two feature sets, m as intersection
    - "query": max(m_a / n_a, m_b / n_b)      the better containment of either image in the other
    """
    ma, mb = np.asarray(matched_a, np.float64), np.asarray(matched_b, np.float64)
    na, nb = np.asarray(n_a, np.float64), np.asarray(n_b, np.float64)
    m = np.minimum(ma, mb)
    with np.errstate(divide="ignore", invalid="ignore"):
        if score == "min":
            s = m / np.minimum(na, nb)
        elif score == "max":
            s = m / np.maximum(na, nb)
        elif score == "mean":
            s = (ma + mb) / (na + nb)
        elif score == "union":
            s = m / (na + nb - m)
        elif score == "query":
            s = np.maximum(ma / na, mb / nb)
        else:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return np.clip(np.nan_to_num(s, nan=0.0, posinf=0.0), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# Float descriptors (SIFT): Lowe's ratio test


def ratio_test_pairs(features: KeypointSets, ratio: float, block: int = 1 << 22) -> tuple[Pairs, int]:
    """Descriptor pairs passing Lowe's ratio test (Lowe 2004, section 7.1), both directions, per image pair.

    For images i < j: each feature of i keeps its nearest feature of j (L2) when nearest < ratio * second
    nearest, and each feature of j likewise its nearest in i; what cv2.BFMatcher(NORM_L2).knnMatch(k=2)
    gives per image pair, computed as one matrix product per image i against all later images (padded
    to a common row count), both directions read off the same distances. Brute force: O(M^2) work.
    Images need 2 features to be matched against (as knnMatch needs 2 neighbours for the test).
    Returns global rows (a < b) with float32 L2 distances, and the number of distances computed.
    """
    off = np.asarray(features.offsets, np.int64)
    counts = np.diff(off)
    desc = np.asarray(features.descriptors, np.float32)
    padded, valid = _padded_by_image(desc, off)
    norms = np.einsum("nkd,nkd->nk", padded, padded)
    parts, comparisons = [], 0
    for i in np.flatnonzero(counts):
        q = desc[off[i]:off[i + 1]]
        later = np.arange(i + 1, len(counts))
        later = later[counts[later] > 0]
        step = max(1, block // max(1, len(q) * padded.shape[1]))  # bound the (n_i, c, K) block
        for c0 in range(0, len(later), step):
            chunk = later[c0:c0 + step]
            d2 = _squared_distances(q, padded[chunk], norms[chunk], valid[chunk])
            comparisons += len(q) * int(counts[chunk].sum())  # each distance serves both directions
            parts.extend(_ratio_both_ways(d2, ratio, off[i], off[chunk]))
    pairs = Pairs.concat(parts, dist_dtype=np.float32)
    if len(pairs):
        # The two directions often find the same pair: keep it once.
        key = pairs.a * np.int64(len(desc)) + pairs.b
        order = np.argsort(key, kind="stable")
        first = order[_run_starts(key[order])]
        a, b = pairs.a[first], pairs.b[first]
        # Exact distances for the few kept pairs (the expanded form above loses digits when close).
        pairs = Pairs(a, b, np.linalg.norm(desc[a] - desc[b], axis=1).astype(np.float32))
    return pairs, comparisons


def _padded_by_image(desc: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors as (N, K, D) with K = the largest image's row count, and a (N, K) mask of real rows."""
    counts = np.diff(off)
    k = max(2, int(counts.max(initial=0)))
    padded = np.zeros((len(counts), k, desc.shape[1]), np.float32)
    valid = np.arange(k)[None, :] < counts[:, None]
    padded[valid] = desc
    return padded, valid


def _squared_distances(q, targets, target_norms, target_valid) -> np.ndarray:
    """(n_q, c, K) squared L2 distances, +inf at padding rows: |q|^2 + |t|^2 - 2 q.t by one BLAS product."""
    c, k, d = targets.shape
    dots = (q @ targets.reshape(c * k, d).T).reshape(len(q), c, k)
    d2 = np.einsum("qd,qd->q", q, q)[:, None, None] + target_norms[None] - 2.0 * dots
    np.maximum(d2, 0.0, out=d2)  # rounding can make identical vectors slightly negative
    d2[:, ~target_valid] = np.inf
    return d2


def _ratio_both_ways(d2: np.ndarray, ratio: float, q_start: int, t_starts: np.ndarray) -> list[Pairs]:
    """Ratio-test matches query -> each target image (along K) and each target row -> query (along n_q)."""
    out = []
    # Query image i -> target image j: nearest two over j's rows.
    best, ok = _nearest_passing(d2, axis=2, ratio=ratio)  # (n_q, c)
    qi, ci = np.nonzero(ok)
    out.append(Pairs(q_start + qi, t_starts[ci] + best[qi, ci], d2[qi, ci, best[qi, ci]]))
    if d2.shape[0] >= 2:
        # Target row -> query image: nearest two over i's rows (padding rows are inf columns: skipped).
        best, ok = _nearest_passing(d2, axis=0, ratio=ratio)  # (c, K)
        ci, ki = np.nonzero(ok & np.isfinite(d2[0]))
        out.append(Pairs(q_start + best[ci, ki], t_starts[ci] + ki, d2[best[ci, ki], ci, ki]))
    return out


def _nearest_passing(d2: np.ndarray, axis: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest along `axis`, and whether nearest < ratio * second nearest (distances)."""
    two = np.partition(d2, 1, axis=axis)
    first, second = np.take(two, 0, axis=axis), np.take(two, 1, axis=axis)
    # Squared distances: d1 < r * d2  <=>  d1^2 < r^2 * d2^2. A missing second neighbour (inf) fails.
    ok = np.isfinite(second) & (first < ratio * ratio * second)
    return np.argmin(d2, axis=axis), ok


# ---------------------------------------------------------------------------------------------------
# Geometric verification (RANSAC)


def verify_pairs(features: KeypointSets, matches: dict, a: np.ndarray, b: np.ndarray, transform: str,
                 ransac_threshold: float, max_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC inliers (Fischler & Bolles 1981) of each image pair (a[k], b[k]); and whether a flip won.

    Correspondences: for each feature of a its best match in b, then for each feature of b only its
    best such match (one-to-one, so inliers never exceed min(n_a, n_b)). Matches between a plain and a
    mirrored row (KeypointExtractor(mirror=True)) are fitted separately from the rest, with b's x negated:
    the geometry of a flip is a reflection, which a similarity cannot express. The pair's inliers are
    the larger of the two fits.
    """
    n_images = np.int64(len(features))
    wanted = a.astype(np.int64) * n_images + b
    key = matches["ia"] * n_images + matches["ib"]
    sel = np.flatnonzero(np.isin(key, wanted))
    corr = one_to_one(matches, sel, key, _mirror_flags(features))
    points = _working_scale_points(features, max_size)
    inliers = np.zeros((len(wanted), 2), np.int64)
    if len(corr["group"]) == 0:
        return inliers.max(axis=1), inliers[:, 1] > inliers[:, 0]
    slot = np.searchsorted(np.sort(wanted), corr["key"])
    where = np.argsort(wanted)[slot]  # index k of each correspondence's pair in (a, b)
    starts = np.flatnonzero(_run_starts(corr["group"]))
    ends = np.r_[starts[1:], len(corr["group"])]
    for s, e in zip(starts, ends):
        src = points[corr["ra"][s:e]]
        dst = points[corr["rb"][s:e]].copy()
        parity = int(corr["group"][s] & 1)
        if parity:
            dst[:, 0] = -dst[:, 0]  # a reflection becomes a proper similarity
        inliers[where[s], parity] = count_inliers(src, dst, transform, ransac_threshold)
    return inliers.max(axis=1), inliers[:, 1] > inliers[:, 0]


def one_to_one(matches: dict, sel: np.ndarray, key: np.ndarray, mirrored: np.ndarray | None) -> dict:
    """Best match per (pair, parity, feature of a), then best per (pair, parity, feature of b).

    Sorted by group = pair key * 2 + parity (1 when exactly one of the two rows is mirrored).
    Ties in distance go to the lower row, so the result is deterministic.
    """
    ra, rb, dist, k = matches["ra"][sel], matches["rb"][sel], matches["dist"][sel], key[sel]
    parity = (mirrored[ra] != mirrored[rb]).astype(np.int64) if mirrored is not None else 0
    group = k * 2 + parity
    keep = _best_per(group, ra, dist, rb)
    ra, rb, dist, group = ra[keep], rb[keep], dist[keep], group[keep]
    keep = _best_per(group, rb, dist, ra)
    ra, rb, group = ra[keep], rb[keep], group[keep]
    order = np.argsort(group, kind="stable")
    return {"ra": ra[order], "rb": rb[order], "key": group[order] // 2, "group": group[order]}


def _best_per(group: np.ndarray, rows: np.ndarray, dist: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Indices of the smallest-distance entry per (group, row); ties to the lower `other` row."""
    order = np.lexsort((other, dist, rows, group))
    if len(order) == 0:
        return order
    g, r = group[order], rows[order]
    first = np.r_[True, (g[1:] != g[:-1]) | (r[1:] != r[:-1])]
    return order[first]


def _mirror_flags(features) -> np.ndarray | None:
    flags = getattr(features, "mirrored", None)
    return None if flags is None else np.asarray(flags, dtype=bool)


def _working_scale_points(features: KeypointSets, max_size: int | None) -> np.ndarray:
    """Keypoints in pixels of the detector's working scale (long side <= max_size), float32 (M, 2)."""
    points = np.asarray(features.points, np.float32)
    if max_size is None or len(features) == 0:
        return points
    long_side = np.asarray(features.image_sizes, np.float64).max(axis=1)
    scale = np.minimum(1.0, max_size / np.maximum(long_side, 1.0))
    return (points * scale[features.owners][:, None]).astype(np.float32)


def count_inliers(src: np.ndarray, dst: np.ndarray, transform: str, threshold: float) -> int:
    """Inliers of a RANSAC fit of src -> dst; 0 when too few points or the fit is degenerate."""
    if transform == "similarity":
        if len(src) < 2:
            return 0
        model, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=threshold, maxIters=2000,
                                                  confidence=0.995, refineIters=10)
        linear = None if model is None else model[:, :2]
    else:
        if len(src) < 4:
            return 0
        model, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=2000, confidence=0.995)
        linear = None if model is None or abs(model[2, 2]) < 1e-12 else model[:2, :2] / model[2, 2]
    if linear is None or mask is None or not plausible(linear):
        return 0
    return int(mask.sum())


def plausible(linear: np.ndarray) -> bool:
    """An orientation-preserving map that neither collapses nor explodes the picture.

    All points mapped onto a few pixels (scale near 0) fit any cluster of matches: not a copy.
    """
    if not np.all(np.isfinite(linear)):
        return False
    det = float(np.linalg.det(linear))
    return 1.0 / MAX_SCALE_CHANGE ** 2 <= det <= MAX_SCALE_CHANGE ** 2
