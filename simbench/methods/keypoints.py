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
   1981) to one-to-one best matches; pairs with fewer than min_inliers inliers score 0;
6. shared content (with verification): content shared by many pictures (a screenshot frame, a logo,
   an emoji, a caption, a page template) is not duplication. Each inlier is weighted down by how many
   images its descriptors match (burstiness, Jegou, Douze & Schmid, CVPR 2009), and the pair's
   evidence is scaled by how much of either picture the inliers cover (a reused picture covers itself;
   a shared logo covers a few percent of both); the verified score is the bag formula with that
   evidence standing for both m_a and m_b ("min": evidence / min(n_a, n_b)).

All aggregation is vectorised (sorts of int64 keys), so it scales to tens of millions of
descriptor pairs; only the RANSAC fits and the coverage of each verified pair loop in Python.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from simbench.features.base import Extractor
from simbench.methods.base import Method
from simbench.types import KeypointSets, Pairs, ScoredPairs, bytes_to_words

SCORES = ("min", "max", "mean", "union", "query")
TRANSFORMS = ("similarity", "affine", "homography")

#: A fitted transform that shrinks or grows by more than this (linear factor) is degenerate, not a copy.
MAX_SCALE_CHANGE = 16.0
#: Nor is one that scales one axis more than this many times the other: a copy squashed or stretched to another
#: aspect ratio is 1.6 at most (simbench.data.edits.aspect), while an affine map has the freedom to fold a few
#: chance matches onto a line.
MAX_ANISOTROPY = 3.0


class KeypointMethod(Method):
    """Bag-of-descriptors similarity between images, with optional RANSAC verification.

    score_pairs(features) -> ScoredPairs of feature rows a < b with at least one matched feature; extra:
    per pair n_matches (descriptor pairs), matched_a, matched_b (distinct matched features), n_a, n_b;
    with verify also bag_score, inliers, flipped (the mirrored fit won), and the shared-content fields
    weighted_inliers, distinctiveness, coverage_a, coverage_b, fill_a, fill_b, covered and evidence
    (below; `shared_content`), alignment (the inliers' affine map from a's picture to b's,
    `inlier_alignment`), inlier_box (where a's inliers are, `inlier_box`) and inlier_points (up to
    INLIER_POINTS of them, `inlier_points`): simbench.find.agreement lays one thumbnail over the other with
    them; scalars
    comparisons (descriptor distances computed), descriptor_pairs (matches between images) and, with
    verify, verified (pairs fitted) and correspondences (the kept pairs' inliers, `Correspondences`).

    evidence (verified pairs): the signal to calibrate (`simbench find`'s keypoint stage), a float,
        strictly increasing in the weighted inliers and in the covered share (where both are > 0):

            evidence = weighted_inliers * covered      (coverage=True; weighted_inliers with coverage=False)
            weighted_inliers = sum over the winning fit's inliers of sqrt(w_a * w_b), w = df ** -burstiness
            covered = ((c_a^4 + c_b^4) / 2)^(1/4),  c = coverage * fill of that side

        df: distinct other images a descriptor row matches (`image_frequency`); coverage: the inliers'
        convex hull over that of all the picture's keypoints; fill: how much of that hull the inliers
        reach, of what the picture's keypoints reach (`inlier_coverage`). A continuous value: pairs do
        not tie merely because they share an inlier count (the plateaus of `inliers`).
        Inliers count rows: a keypoint whose plain and mirrored rows both fit counts twice, as
        n_a, n_b count both rows. `inliers` is kept as it was (the plain RANSAC count).

    distance_threshold: Hamming radius (inclusive) under which two binary descriptors match. Ignored for
        float descriptors (SIFT), which match by Lowe's ratio test instead (`ratio`).
    score_threshold: pairs scoring at or above it are duplicates (`threshold`, as every Method has).
    score: how matched features become a score, see `bag_score` ("min" suits crops: a crop's features
        are mostly found in the full picture, but not the other way round).
    ratio: Lowe's ratio for float descriptors: nearest < ratio * second nearest (in the other image).
        0.7, stricter than Lowe's 0.8: in a bag every feature of an image gets a chance to match, and at
        0.8 unrelated photos reached bag scores of 0.2 on skimage's photos (as high as hard copies).
    verify: fit a geometric transform per candidate pair and score by its evidence (see `verify_pairs`).
        Only verified pairs that pass are returned: pairs below the pre-threshold, beyond
        max_pairs_verified, with fewer than min_inliers inliers, or (coverage) covering less than
        min_coverage score 0 (not returned); their bag score is in extra["bag_score"] for those that
        were verified.
    ransac_threshold: RANSAC reprojection threshold in pixels at the detector's working scale
        (long side `extractor.max_size`), so that it means the same for small and large originals.
    min_inliers: verified pairs with fewer inliers score 0 (they are not returned).
    transform: "similarity" (rotation, uniform scale, translation: cv2.estimateAffinePartial2D),
        "affine" (also one axis scaled more than the other, as a copy squashed or stretched:
        cv2.estimateAffine2D) or "homography" (cv2.findHomography; also perspective, e.g. photographed prints).
    max_pairs_verified: verify at most this many candidate pairs, best bag score first.
    verify_min_score: candidate pairs for verification need at least this bag score (a low pre-threshold)
        and at least min_inliers matched features.
    burstiness: exponent p of the inlier weights w = df ** -p (Jegou et al.'s power law); 0 = every
        inlier counts 1. Content on k pictures gives each of their pairs (k-1) ** -p of its inliers, and
        so does a photo reused in k pictures: the weights tell the two apart only where shared content
        is on more pictures than photos are reused in, by (df_shared / df_reused) ** p; coverage does
        the rest. 0.5 (the square root): a photo with six copies keeps 1/2.4 of its inliers (1/6 at
        p = 1: copies in tests/test_keypoints.py's photo set then scored under 0.01), a frame on 8
        pictures 1/2.6 of its own.
    coverage: scale the evidence by the covered share and drop pairs below min_coverage. Off (with
        burstiness 0) the verified score is the plain inlier score of before.
    min_coverage: pairs whose covered share is below it are dropped: the matches must cover a
        substantive part of at least one picture. Low, since the covered share already scales the
        evidence: 0.02 drops the pairs whose inliers sit in a spot of a few percent of both pictures
        (a shared emoji covered <= 0.03, a logo <= 0.05, a caption <= 0.07 on generated cases), and
        kept 202 of 204 originals with a crop, rotation, blur or flip on a 300-image set of skimage
        photo quarters (0.05 kept 199, and dropped a crop-and-rotate ORB copy in tests/test_keypoints.py).
    coverage_extent: the share of the picture that the coverage rule takes its keypoints to span at least
        (`inlier_coverage`); 0 (the default): the keypoints' hull alone, as before.
    proposals: how many of each image's best pairs by another stage (simbench find's CNN) `score_proposed`
        verifies when this method did not (0: none; find passes them, see simbench.find.pipeline). Their
        correspondences come from brute-force matching of the two images alone, Lowe's ratio test
        (proposal_ratio) under a Hamming distance of proposal_max_distance, far wider than the
        multi-index radius: a copy blurred, rescaled or turned keeps few descriptors within 31 bits
        but many nearest neighbours, and matching two given images costs milliseconds. A proposed pair
        must cover proposal_min_coverage (None: min_coverage): wider matching also reaches content many
        pictures share that the radius misses (a crest redrawn at each placement's scale); and have
        proposal_min_inliers inliers (None: min_inliers): matching every descriptor of one picture with
        its nearest in the other gives RANSAC far more chance correspondences to fit a few of.
    proposal_max_df: correspondences of a descriptor row that matches this many other images or more among
        all the proposed pairs are dropped before the fit (0: none): a crest or frame on the picture's
        proposed neighbours. A picture with that many copies loses its own matches too.
    own_pairs: False: find no pairs of its own, only verify the proposed ones (a stage of `simbench find` that
        checks the CNN's best pairs with other features, with no all-pairs matching to pay for).
    skip_verified: True: find leaves out of the proposals the pairs a keypoint stage before it verified (a second
        look, with other settings, at what the first did not verify: simbench.find.pipeline.raw_evidence). Its df
        then counts among the pairs it looks at.
    proposal_min_score: only pairs the proposing stage scores at least this (its raw signal: the CNN's normalised
        similarity) are proposed (None: any of each image's best). A costly look (simbench.find.on_demand: features
        extracted for the pictures proposed) then looks at the pairs worth it. Its df counts among those pairs.
    """

    evidence_fields = ("correspondences",)  # per pair, kept for the report's evidence (simbench.find.evidence)

    def __init__(self, extractor: Extractor, matcher, distance_threshold: int = 31,
                 score_threshold: float = 0.05, score: str = "min", ratio: float = 0.7,
                 verify: bool = False, ransac_threshold: float = 8.0, min_inliers: int = 8,
                 transform: str = "similarity", max_pairs_verified: int = 100_000,
                 verify_min_score: float = 0.01, burstiness: float = 0.5, coverage: bool = True,
                 min_coverage: float = 0.02, coverage_extent: float = 0.0, proposals: int = 0,
                 proposal_ratio: float = 0.8, proposal_max_distance: int = 90,
                 proposal_min_coverage: float | None = None, proposal_min_inliers: int | None = None,
                 proposal_max_df: int = 0, own_pairs: bool = True, skip_verified: bool = False,
                 proposal_min_score: float | None = None):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if burstiness < 0 or not 0 <= min_coverage <= 1 or not 0 <= coverage_extent <= 1:
            raise ValueError("burstiness must be >= 0, min_coverage and coverage_extent in [0, 1]")
        if proposals < 0 or not 0 < proposal_ratio <= 1 or proposal_max_distance < 0 or not (
                proposal_min_coverage is None or 0 <= proposal_min_coverage <= 1) or not (
                proposal_min_inliers is None or proposal_min_inliers >= 0):
            raise ValueError("proposals must be >= 0, proposal_ratio in (0, 1], proposal_max_distance >= 0, "
                             "proposal_min_coverage in [0, 1] or None and proposal_min_inliers >= 0 or None, got "
                             f"{proposals}, {proposal_ratio}, {proposal_max_distance}, {proposal_min_coverage}, "
                             f"{proposal_min_inliers}")
        if proposals and not verify:
            raise ValueError("proposals need verify=true: a proposed pair is kept only when it verifies")
        if proposal_max_df < 0:
            raise ValueError(f"proposal_max_df must be >= 0 (0: no descriptor cut), got {proposal_max_df}")
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
        self.burstiness = float(burstiness)
        self.coverage = bool(coverage)
        self.min_coverage = float(min_coverage)
        self.coverage_extent = float(coverage_extent)
        self.proposals = int(proposals)
        self.proposal_ratio = float(proposal_ratio)
        self.proposal_max_distance = int(proposal_max_distance)
        self.proposal_min_coverage = self.min_coverage if proposal_min_coverage is None else float(proposal_min_coverage)
        self.proposal_min_inliers = self.min_inliers if proposal_min_inliers is None else int(proposal_min_inliers)
        self.proposal_max_df = int(proposal_max_df)
        self.own_pairs = bool(own_pairs)
        self.skip_verified = bool(skip_verified)
        self.proposal_min_score = None if proposal_min_score is None else float(proposal_min_score)

    def params(self) -> dict:
        # The proposal settings only when proposals are on, the coverage extent only when not 0: without them
        # the raw signal is what it was, and so are the calibration keys made from these params.
        proposing = ({"proposals": self.proposals, "proposal_ratio": self.proposal_ratio,
                      "proposal_max_distance": self.proposal_max_distance,
                      "proposal_min_coverage": self.proposal_min_coverage} if self.proposals else {})
        if self.proposals and self.proposal_min_inliers != self.min_inliers:
            # Apart, so that runs (27)-(29)'s keys (floor = min_inliers, unnamed) are what they were.
            proposing["proposal_min_inliers"] = self.proposal_min_inliers
        if self.proposals and self.proposal_max_df:
            proposing["proposal_max_df"] = self.proposal_max_df
        if not self.own_pairs:
            proposing["own_pairs"] = False
        if self.proposals and self.skip_verified:
            proposing["skip_verified"] = True
        if self.proposals and self.proposal_min_score is not None:
            proposing["proposal_min_score"] = self.proposal_min_score
        if self.coverage_extent:
            proposing["coverage_extent"] = self.coverage_extent
        return {"distance_threshold": self.distance_threshold, "score_threshold": self.threshold,
                "score": self.score, "ratio": self.ratio, "verify": self.verify,
                "ransac_threshold": self.ransac_threshold, "min_inliers": self.min_inliers,
                "transform": self.transform, "max_pairs_verified": self.max_pairs_verified,
                "verify_min_score": self.verify_min_score, "burstiness": self.burstiness,
                "coverage": self.coverage, "min_coverage": self.min_coverage, **proposing}

    def score_pairs(self, features: KeypointSets) -> ScoredPairs:
        """Image pairs a < b (feature rows) with at least one matched feature, scored in [0, 1].

        extra also times the stages: descriptor_pairs_s (the matcher), bags_s, verify_s. Without own_pairs:
        none (the pairs come from `score_proposed`).
        """
        if not self.own_pairs:
            return ScoredPairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), extra={"evidence": np.empty(0)})
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

    def verify_candidates(self, features, matches, a, b, max_size) -> dict:
        """RANSAC of the candidate pairs (a[k], b[k]) with this method's settings (`verify_pairs`); the
        step simbench.distributed.match runs as tasks."""
        return verify_pairs(features, matches, a, b, self.transform, self.ransac_threshold, max_size)

    def _verified(self, features, matches, counts, bag, extra) -> ScoredPairs:
        """Replace bag scores by verified scores (from `evidence`); keep only pairs with >= min_inliers
        inliers and, with `coverage`, a covered share >= min_coverage."""
        n_pairs = len(counts["a"])
        order = self.candidates(counts, bag)
        max_size = getattr(self.extractor, "max_size", None)
        a, b = counts["a"][order], counts["b"][order]
        ver = self.verify_candidates(features, matches, a, b, max_size)
        weights = burstiness_weights(image_frequency(matches, len(features.descriptors), len(features)),
                                     self.burstiness)
        kept, fields = self.score_verified(ver, a, b, counts["n_a"][order], counts["n_b"][order], weights,
                                           _working_scale_points(features, max_size), features.offsets,
                                           relative_points(features))
        sel = order[kept]
        out = {k: (v[sel] if isinstance(v, np.ndarray) and len(v) == n_pairs else v) for k, v in extra.items()}
        score = fields.pop("score")
        out.update(bag_score=bag[sel], **fields, verified=len(order),
                   correspondences=Correspondences(ver, a, b, kept, features))
        return ScoredPairs(counts["a"][sel], counts["b"][sel], score, extra=out)

    def score_proposed(self, features: KeypointSets, a: np.ndarray, b: np.ndarray) -> ScoredPairs:
        """The proposed pairs of images (feature rows a[k] < b[k]) that verify, scored as `score_pairs`
        scores its own (fields bag_score, n_matches, matched_a and matched_b excepted): correspondences from
        `ratio_matches`, then the same one-to-one RANSAC fit, burstiness weights and coverage, with floors
        of their own (proposal_min_inliers, proposal_min_coverage).
        The weights' df counts the other images each row corresponds with among all the proposed pairs
        (the multi-index matches are another radius): content the proposals share, down-weighted alike.
        With proposal_max_df, correspondences of a row matched in that many other images or more are dropped
        before the fit (`without_shared`): a crest or frame on every proposed neighbour would otherwise be
        what RANSAC fits, and the picture's own few matches its outliers."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        points = _working_scale_points(features, getattr(self.extractor, "max_size", None))
        matches = ratio_matches(features, a, b, self.proposal_ratio, self.proposal_max_distance)
        df = image_frequency(matches, len(features.descriptors), len(features))
        if self.proposal_max_df:
            matches = without_shared(matches, df, self.proposal_max_df)
        ver = verify_correspondences(points, _mirror_flags(features), len(features), matches, a, b, self.transform,
                                     self.ransac_threshold)
        weights = burstiness_weights(df, self.burstiness)
        n = np.diff(features.offsets)
        kept, fields = self.score_verified(ver, a, b, n[a], n[b], weights, points, features.offsets,
                                           relative_points(features), self.proposal_min_coverage,
                                           self.proposal_min_inliers)
        score = fields.pop("score")
        return ScoredPairs(a[kept], b[kept], score, extra={**fields, "n_a": n[a[kept]], "n_b": n[b[kept]],
                                                           "proposed_pairs": len(a)})

    def eligible(self, counts: dict, bag: np.ndarray) -> np.ndarray:
        """Image pairs worth verifying: a bag score >= verify_min_score (a low pre-threshold), and at least
        min_inliers matched features (fewer can never pass)."""
        return (bag >= self.verify_min_score) & (np.minimum(counts["matched_a"], counts["matched_b"])
                                                 >= self.min_inliers)

    def candidates(self, counts: dict, bag: np.ndarray) -> np.ndarray:
        """Indices of the pairs to verify: the eligible ones, best bag score first (ties in pair order),
        at most max_pairs_verified."""
        order = np.flatnonzero(self.eligible(counts, bag))
        return order[np.argsort(-bag[order], kind="stable")][: self.max_pairs_verified]

    def score_verified(self, ver: dict, a, b, n_a, n_b, weights, points, offsets, relative,
                       min_coverage: float | None = None,
                       min_inliers: int | None = None) -> tuple[np.ndarray, dict]:
        """The verified scores of candidate pairs (a[k], b[k]) (images of `offsets`, the rows of `points`,
        `relative` and `weights`) from their RANSAC (`verify_candidates`): (the indices k that pass, their
        score, inliers, flipped, evidence, `content_stats` fields, alignment and inlier_box).
        Each pair's values depend on its own rows only, so a batch of pairs with only its rows gives the same."""
        keep = ver["inliers"] >= (self.min_inliers if min_inliers is None else min_inliers)
        kept = np.flatnonzero(keep)
        # The kept pairs' inlier correspondences, their pairs renumbered 0..len(kept)-1.
        on = keep[ver["pair"]]
        pair, ra, rb = (np.cumsum(keep) - 1)[ver["pair"][on]], ver["ra"][on], ver["rb"][on]
        stats = content_stats(weights, points, offsets, pair, ra, rb, a[kept], b[kept], relative,
                              self.coverage_extent)
        stats["alignment"] = inlier_alignment(relative, pair, ra, rb, len(kept))
        stats["inlier_box"] = inlier_box(relative, pair, ra, len(kept))
        stats["inlier_points"] = inlier_points(relative, pair, ra, len(kept))
        evidence = stats["weighted_inliers"] * (stats["covered"] if self.coverage else 1.0)
        floor = self.min_coverage if min_coverage is None else min_coverage
        passed = stats["covered"] >= floor if self.coverage else np.ones(len(kept), bool)
        evidence = evidence[passed]
        # Evidence is counted in one-to-one correspondences: it stands for both m_a and m_b in the same
        # formula (with the new options off it is the inlier count, and this is the plain inlier score).
        score = bag_score(evidence, evidence, n_a[kept][passed], n_b[kept][passed], self.score)
        return kept[passed], {"score": score, "inliers": ver["inliers"][kept][passed],
                              "flipped": ver["flipped"][kept][passed], "evidence": evidence,
                              **{k: v[passed] for k, v in stats.items()}}


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


def without_shared(matches: dict, df: np.ndarray, max_df: int) -> dict:
    """The matches (`between_images`' form) less those with a row that matches max_df or more other images
    (df per row, `image_frequency`)."""
    keep = (df[matches["ra"]] < max_df) & (df[matches["rb"]] < max_df)
    return {k: v[keep] for k, v in matches.items()}


def ratio_matches(features: KeypointSets, a: np.ndarray, b: np.ndarray, ratio: float, max_distance: float) -> dict:
    """Descriptor matches of each image pair (a[k], b[k]), a[k] < b[k], by brute force over the two images
    alone, in `between_images`' form (ra, rb, dist, ia, ib): each plain row of a with its nearest row of b
    when that is within max_distance (bits; L2 for float descriptors) and nearer than ratio x the second
    nearest (Lowe 2004; cv2's BFMatcher). With mirror rows, a's plain rows are matched to b's plain rows and
    to b's mirrored rows apart (a flip's matches must not fail the ratio test against the picture's own
    symmetry); mirrored rows of a matched to b's would add the same correspondences reflected."""
    mirrored = _mirror_flags(features)
    descriptors = features.descriptors if features.binary else distance_rows(features.descriptors)
    parts = []
    for i, j in zip(np.asarray(a, np.int64).tolist(), np.asarray(b, np.int64).tolist()):
        rows_a = np.arange(features.offsets[i], features.offsets[i + 1])
        rows_b = np.arange(features.offsets[j], features.offsets[j + 1])
        sides = [(rows_a, rows_b)] if mirrored is None else [
            (rows_a[~mirrored[rows_a]], rows_b[flip == mirrored[rows_b]]) for flip in (False, True)]
        for qa, tb in sides:
            if len(qa) == 0 or len(tb) < 2:
                continue
            nearest, first, second = two_nearest(descriptors[qa], descriptors[tb], features.binary)
            ok = (first <= max_distance) & (first < ratio * second)
            parts.append((qa[ok], tb[nearest[ok]], first[ok], i, j))
    if not parts:
        empty = np.empty(0, np.int64)
        return {"ra": empty, "rb": empty, "dist": empty, "ia": empty, "ib": empty}
    return {"ra": np.concatenate([p[0] for p in parts]), "rb": np.concatenate([p[1] for p in parts]),
            "dist": np.concatenate([p[2] for p in parts]).astype(np.int64 if features.binary else np.float64),
            "ia": np.concatenate([np.full(len(p[0]), p[3], np.int64) for p in parts]),
            "ib": np.concatenate([np.full(len(p[0]), p[4], np.int64) for p in parts])}


def two_nearest(query: np.ndarray, train: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query row's nearest train row (ties to the lower), its distance and the second nearest's (float64),
    as cv2.BFMatcher.knnMatch(k=2) gives them: Hamming, or L2 for float rows (train has >= 2 rows), by one matrix
    product in the rows' own precision (`distance_rows`: exact for OpenCV's SIFT rows in float32, whose square
    roots are then OpenCV's to the last bit)."""
    if binary:
        distance, index = cv2.batchDistance(query, train, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)
        return index[:, 0].astype(np.int64), distance[:, 0].astype(np.float64), distance[:, 1].astype(np.float64)
    squares = np.einsum("ij,ij->i", query, query)[:, None] + np.einsum("ij,ij->i", train, train)[None, :]
    d2 = squares - 2 * (query @ train.T)
    np.maximum(d2, 0, out=d2)  # rows that are not whole numbers: no rounding below zero
    rows = np.arange(len(query))
    nearest = d2.argmin(axis=1)
    first = d2[rows, nearest]
    d2[rows, nearest] = np.inf
    second = d2.min(axis=1)
    return nearest, *(np.sqrt(d.astype(np.float32)).astype(np.float64) for d in (first, second))


def distance_rows(descriptors: np.ndarray) -> np.ndarray:
    """Float descriptors in the precision `two_nearest` computes their distances in: float32 where every sum in the
    matrix product is a whole number below 2^24, so exact (OpenCV's SIFT rows: whole numbers up to 255, 128 wide),
    float64 otherwise."""
    largest = float(np.abs(descriptors).max(initial=0))
    exact = np.array_equal(descriptors, np.round(descriptors)) and 2 * descriptors.shape[1] * largest ** 2 < 2 ** 24
    return np.asarray(descriptors, np.float32 if exact else np.float64)


def verify_pairs(features: KeypointSets, matches: dict, a: np.ndarray, b: np.ndarray, transform: str,
                 ransac_threshold: float, max_size: int | None) -> dict:
    """RANSAC inliers (Fischler & Bolles 1981) of each image pair (a[k], b[k]), and which they are.

    Correspondences: for each feature of a its best match in b, then for each feature of b only its
    best such match (one-to-one, so inliers never exceed min(n_a, n_b)). Matches between a plain and a
    mirrored row (KeypointExtractor(mirror=True)) are fitted separately from the rest, with b's x negated:
    the geometry of a flip is a reflection, which a similarity cannot express. The pair's inliers are
    the larger of the two fits.

    Returns inliers (K,) and flipped (K,) (the mirrored fit won), and the winning fit's inlier
    correspondences: pair (index k, ascending), ra and rb (descriptor rows of a[k] and of b[k]).
    """
    return verify_correspondences(_working_scale_points(features, max_size), _mirror_flags(features),
                                  len(features), matches, a, b, transform, ransac_threshold)


def verify_correspondences(points: np.ndarray, mirrored: np.ndarray | None, n_images: int, matches: dict,
                           a: np.ndarray, b: np.ndarray, transform: str, ransac_threshold: float) -> dict:
    """`verify_pairs` given the keypoints at working scale and the mirror flags of the rows instead of
    the features, so that a batch of pairs can be verified with only its own rows (renumbered in the
    same order: ties then break alike). Each fit depends on its pair's correspondences alone: OpenCV's
    RANSAC seeds its own generator on every call, not from cv2's global RNG."""
    n_images = np.int64(n_images)
    wanted = a.astype(np.int64) * n_images + b
    key = matches["ia"] * n_images + matches["ib"]
    sel = np.flatnonzero(np.isin(key, wanted))
    corr = one_to_one(matches, sel, key, mirrored)
    inliers = np.zeros((len(wanted), 2), np.int64)
    mask = np.zeros(len(corr["group"]), bool)
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
        mask[s:e] = ransac_inliers(src, dst, transform, ransac_threshold)
        inliers[where[s], parity] = np.count_nonzero(mask[s:e])
    flipped = inliers[:, 1] > inliers[:, 0]
    # Only the winning fit's inliers describe the pair (a tie goes to the plain fit, as `flipped` says).
    win = mask & ((corr["group"] & 1) == flipped[where])
    order = np.argsort(where[win], kind="stable")
    return {"inliers": inliers.max(axis=1), "flipped": flipped, "pair": where[win][order],
            "ra": corr["ra"][win][order], "rb": corr["rb"][win][order]}


class Correspondences:
    """The inlier correspondences of some verified pairs, looked up by their feature rows: what a run's
    verification found, so that its evidence (simbench.find.evidence) need not match and fit them again.

    ver: `verify_correspondences` of the candidate pairs (a[k], b[k]) of `features`; kept: the candidates
    to look up. Rows mean rows of those very features, so `get` answers only for them."""

    def __init__(self, ver: dict, a: np.ndarray, b: np.ndarray, kept: np.ndarray, features: KeypointSets):
        self.features = features
        self.n_images = np.int64(max(len(features), 1))
        keys = np.asarray(a, np.int64)[kept] * self.n_images + np.asarray(b, np.int64)[kept]
        order = np.argsort(keys)
        self.keys, self.pairs = keys[order], np.asarray(kept, np.int64)[order]
        self.bounds = np.r_[0, np.cumsum(np.bincount(ver["pair"], minlength=len(a)))]  # ver["pair"] ascends
        self.ver = ver

    def get(self, features: KeypointSets, a: int, b: int) -> dict | None:
        """{"inliers", "flipped", "ra", "rb"} of the pair of rows (a, b), a < b, of `features`, as
        `verify_correspondences` gives them for that pair alone; None when it is not one of the kept pairs
        or `features` are not those verified (a cluster's subset of the shown images, say)."""
        if features is not self.features:
            return None
        at = int(np.searchsorted(self.keys, a * self.n_images + b))
        if at == len(self.keys) or self.keys[at] != a * self.n_images + b:
            return None
        k = int(self.pairs[at])
        s, e = self.bounds[k], self.bounds[k + 1]
        return {"inliers": np.array([self.ver["inliers"][k]]), "flipped": np.array([self.ver["flipped"][k]]),
                "ra": self.ver["ra"][s:e], "rb": self.ver["rb"][s:e]}


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


def relative_points(features: KeypointSets) -> np.ndarray:
    """Keypoints as fractions of their picture's width and height, float64 (M, 2): coordinates that hold
    for any rendering of the picture (its thumbnail too)."""
    sizes = np.maximum(np.asarray(features.image_sizes, np.float64), 1.0)
    return np.asarray(features.points, np.float64) / sizes[features.owners]


def inlier_alignment(relative: np.ndarray, pair: np.ndarray, ra: np.ndarray, rb: np.ndarray,
                     n_pairs: int) -> np.ndarray:
    """Per pair k, the affine map fitted by least squares to its inliers (the rows ra -> rb where pair == k),
    from a's relative coordinates (`relative_points`) to b's, (K, 2, 3): (u_b, v_b) = M @ (u_a, v_a, 1).
    A full affine, so that a squashed or mirrored copy maps too (RANSAC fitted a similarity, on b's x
    negated for a mirrored copy). NaN where the inliers do not determine it (collinear or fewer than 3)."""
    x = np.c_[relative[ra], np.ones(len(ra))]
    y = relative[rb]
    xtx = np.stack([np.bincount(pair, x[:, i] * x[:, j], n_pairs) for i in range(3) for j in range(3)], 1)
    xty = np.stack([np.bincount(pair, x[:, i] * y[:, j], n_pairs) for i in range(3) for j in range(2)], 1)
    xtx, xty = xtx.reshape(-1, 3, 3), xty.reshape(-1, 3, 2)
    # Relative coordinates are O(1), so the normal equations are well scaled: a tiny determinant means
    # inliers on a line (or a point).
    ok = np.abs(np.linalg.det(xtx)) > 1e-12 * np.maximum(xtx[:, 2, 2], 1.0) ** 3
    out = np.full((n_pairs, 2, 3), np.nan)
    if ok.any():
        out[ok] = np.linalg.solve(xtx[ok], xty[ok]).transpose(0, 2, 1)
    return out


def inlier_box(relative: np.ndarray, pair: np.ndarray, rows: np.ndarray, n_pairs: int) -> np.ndarray:
    """Per pair k, the box (u0, v0, u1, v1; relative coordinates) of its inliers `rows` (where pair == k),
    (K, 4); inf where it has none."""
    lo, hi = np.full((n_pairs, 2), np.inf), np.full((n_pairs, 2), -np.inf)
    np.minimum.at(lo, pair, relative[rows])
    np.maximum.at(hi, pair, relative[rows])
    return np.c_[lo, hi]


#: The most inliers per pair kept where they are (`inlier_points`): as many as the report draws.
INLIER_POINTS = 64


def inlier_points(relative: np.ndarray, pair: np.ndarray, rows: np.ndarray, n_pairs: int,
                  most: int = INLIER_POINTS) -> np.ndarray:
    """Per pair k, where a's inliers `rows` (where pair == k) are, (K, most, 2) float16 relative coordinates:
    all of them when there are at most `most`, else `most` spread evenly over them in their order (as the
    report picks the matches it draws); NaN rows pad. float16: a thousandth of the picture is fine enough
    for where a match is, and a run may keep many pairs."""
    out = np.full((n_pairs, most, 2), np.nan, np.float16)
    order = np.argsort(pair, kind="stable")
    count = np.bincount(pair, minlength=n_pairs)
    start = np.r_[0, np.cumsum(count)[:-1]]
    taken = np.minimum(count, most)
    k = np.repeat(np.arange(n_pairs), taken)  # pair and place j of each point kept
    j = np.arange(len(k)) - np.repeat(np.cumsum(taken) - taken, taken)
    c = count[k]
    at = np.where(c > most, np.round(j * ((c - 1) / max(most - 1, 1))), j).astype(np.int64)  # as np.linspace
    out[k, j] = relative[rows[order[start[k] + at]]]
    return out


def count_inliers(src: np.ndarray, dst: np.ndarray, transform: str, threshold: float) -> int:
    """Inliers of a RANSAC fit of src -> dst; 0 when too few points or the fit is degenerate."""
    return int(np.count_nonzero(ransac_inliers(src, dst, transform, threshold)))


def ransac_inliers(src: np.ndarray, dst: np.ndarray, transform: str, threshold: float) -> np.ndarray:
    """Which correspondences src[i] -> dst[i] are inliers of a RANSAC fit, (n,) bool; none when too few
    points or the fit is degenerate (see `plausible`)."""
    none = np.zeros(len(src), bool)
    if transform in ("similarity", "affine"):
        if len(src) < (2 if transform == "similarity" else 3):
            return none
        fit = cv2.estimateAffinePartial2D if transform == "similarity" else cv2.estimateAffine2D
        model, mask = fit(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold, maxIters=2000,
                          confidence=0.995, refineIters=10)
        linear = None if model is None else model[:, :2]
    else:
        if len(src) < 4:
            return none
        model, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=2000, confidence=0.995)
        linear = None if model is None or abs(model[2, 2]) < 1e-12 else model[:2, :2] / model[2, 2]
    if linear is None or mask is None or not plausible(linear):
        return none
    return mask.ravel().astype(bool)


def plausible(linear: np.ndarray) -> bool:
    """An orientation-preserving map that neither collapses nor explodes the picture, nor flattens it along one
    axis (MAX_ANISOTROPY).

    All points mapped onto a few pixels (scale near 0) fit any cluster of matches: not a copy.
    """
    if not np.all(np.isfinite(linear)):
        return False
    det = float(np.linalg.det(linear))
    if not 1.0 / MAX_SCALE_CHANGE ** 2 <= det <= MAX_SCALE_CHANGE ** 2:
        return False
    # Singular values s1 >= s2 have s1^2 + s2^2 = |M|_F^2 and s1 s2 = det, so |M|_F^2 / det = r + 1/r, increasing
    # in r = s1 / s2 >= 1: the ratio bound without an SVD per fit.
    return float(np.square(linear).sum()) <= (MAX_ANISOTROPY + 1.0 / MAX_ANISOTROPY) * det


# ---------------------------------------------------------------------------------------------------
# Shared content: collection-level weights (burstiness) and how much of each picture the inliers cover

#: Raster for `fill`: cells along the longer side of the inliers' hull (<= 10 px at a 640 px working scale).
RASTER_CELLS = 64


def shared_content(features: KeypointSets, matches: dict, pair: np.ndarray, ra: np.ndarray, rb: np.ndarray,
                   a: np.ndarray, b: np.ndarray, max_size: int | None, burstiness: float) -> dict:
    """Per verified pair k (images a[k], b[k]), from its inlier correspondences (pair, ra, rb; pair
    ascending): weighted_inliers; per side coverage and fill (see `inlier_coverage`); and covered, the
    pair's covered share from both sides (see `covered_share`).

    weighted_inliers = sum over inliers of sqrt(w(ra) * w(rb)), w = df ** -burstiness (`burstiness_weights`);
    distinctiveness = weighted_inliers / inliers, in (0, 1]: low when most inliers are content that many
    pictures share (a template matched in ten pictures weighs 10 ** -burstiness per inlier however many
    inliers it has; a reused photo's inliers are spread over the few copies each one reaches).
    """
    df = image_frequency(matches, len(features.descriptors), len(features))
    return content_stats(burstiness_weights(df, burstiness), _working_scale_points(features, max_size),
                         features.offsets, pair, ra, rb, a, b)


def content_stats(weights: np.ndarray, points: np.ndarray, offsets: np.ndarray, pair: np.ndarray, ra: np.ndarray,
                  rb: np.ndarray, a: np.ndarray, b: np.ndarray, relative: np.ndarray | None = None,
                  extent: float = 0.0) -> dict:
    """`shared_content` given the rows' burstiness weights and working-scale points (rows of the images
    of `offsets`), so that a batch of pairs needs only its own images' rows; relative and extent: see
    `inlier_coverage`."""
    weighted = np.bincount(pair, weights=np.sqrt(weights[ra] * weights[rb]), minlength=len(a)).astype(np.float64)
    inliers = np.bincount(pair, minlength=len(a))
    cov_a, fill_a = inlier_coverage(points, offsets, ra, pair, a, relative, extent)
    cov_b, fill_b = inlier_coverage(points, offsets, rb, pair, b, relative, extent)
    return {"weighted_inliers": weighted, "distinctiveness": weighted / np.maximum(inliers, 1),
            "coverage_a": cov_a, "coverage_b": cov_b, "fill_a": fill_a,
            "fill_b": fill_b, "covered": covered_share(cov_a * fill_a, cov_b * fill_b)}


def image_frequency(matches: dict, n_rows: int, n_images: int) -> np.ndarray:
    """df of every descriptor row: how many distinct OTHER images it matches (0: none), (M,) int64.

    Counted over images, not rows: a row matching a plain row and that row's mirrored twin (both of one
    image) counts that image once, and matches inside the row's own image were dropped before (a
    descriptor and its mirrored twin belong to the same image).
    """
    n = np.int64(max(n_images, 1))
    ra, rb, ia, ib = matches["ra"], matches["rb"], matches["ia"], matches["ib"]
    # Distinct (row, other image) keys from both ends of every descriptor pair.
    keys = unique_values(np.concatenate([ra * n + ib, rb * n + ia]))
    return np.bincount(keys // n, minlength=n_rows).astype(np.int64)


def burstiness_weights(df: np.ndarray, power: float) -> np.ndarray:
    """w = df ** -power: a descriptor found in many images (a frame, logo, caption, texture) weighs less.

    Jegou, Douze & Schmid, "On the burstiness of visual elements", CVPR 2009: matches of bursty visual
    elements are down-weighted by a power law of how often they occur (they use the square root against
    bursts inside an image, and an idf-like weight across images). Here the count is of other images
    (df = 1 for a descriptor shared by one pair only: w = 1). power 0 = every inlier counts 1.
    """
    return np.power(np.maximum(df, 1).astype(np.float64), -float(power))


def inlier_coverage(points: np.ndarray, offsets: np.ndarray, rows: np.ndarray, pair: np.ndarray,
                    images: np.ndarray, relative: np.ndarray | None = None,
                    extent: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """How much of one side's picture the inliers cover, per pair k (image images[k]; its inlier rows are
    the run of `rows` where pair == k; points at working scale, offsets as in KeypointSets):

    coverage = area of the inliers' convex hull / area of the convex hull of all the image's keypoints,
        in [0, 1]: 1 when the match spans all the detector saw in the picture. (Not the image's area:
        detectors leave a border bare, BRISK's sampling pattern needs room, and flat areas such as sky
        or a plain background; a copy of a picture with one textured spot still covers that spot.)
    fill = inside the inliers' hull, the area within r of an inlier / the area within r of any keypoint
        of the image, r = sqrt(hull area / distinct inliers) (the inliers' spacing were they spread
        evenly), in [0, 1]. Inliers spread over a region fill it (0.6-1 on copies; the least of 460
        copy pairs of a 300-image set, 0.40); a frame or page template around different photos spans
        the picture but leaves the photo's keypoints in the middle unreached (0.18-0.45 on generated
        screenshots). It is "inliers / keypoints inside the hull" by area, so that a copy whose
        repeatability is low (few inliers among many keypoints) still fills its hull. It sees only
        keypoints: where a frame's high-contrast text takes nearly all of max_features, the photo
        inside has none to leave unreached, and only the burstiness weights lower such pairs.
    extent > 0 (with `relative`, the rows as fractions of their picture's sides, `relative_points`): the
        keypoints' hull is taken to span at least that share of the picture, i.e. coverage is at most the
        inliers' hull over extent x the picture's area. On a nearly featureless picture whose keypoints sit
        mostly on one stamped logo, a match on the logo covers most of the keypoints' hull but little of
        the picture (results/find.md, run 29). Area ratios within one picture are the same in pixels and in
        relative coordinates, so extent 0 is exactly the keypoints' hull alone.
    Fewer than 3 distinct inlier points, or collinear ones, cover nothing (0, 0).
    """
    if extent > 0 and relative is None:
        raise ValueError("a coverage extent needs the rows' relative coordinates")
    coverage, fill = np.zeros(len(images)), np.zeros(len(images))
    hull_area = {i: _hull_area(points[offsets[i]:offsets[i + 1]]) for i in np.unique(images).tolist()}
    starts = np.flatnonzero(_run_starts(pair))
    for s, e in zip(starts, np.r_[starts[1:], len(pair)]):
        k = pair[s]
        p = _distinct_points(points[rows[s:e]])  # a plain row and its mirrored twin sit at one point
        image = images[k]
        if len(p) < 3 or hull_area[image] <= 0:
            continue
        hull = cv2.convexHull(p)
        area = float(cv2.contourArea(hull))
        if area <= 0:
            continue
        coverage[k] = min(1.0, area / hull_area[image])
        if extent > 0:
            coverage[k] = min(coverage[k], _hull_area(relative[rows[s:e]].astype(np.float32)) / extent)
        keypoints = points[offsets[image]:offsets[image + 1]]
        fill[k] = _fill(p, keypoints, hull.reshape(-1, 2), r=np.sqrt(area / len(p)))
    return coverage, fill


def _hull_area(p: np.ndarray) -> float:
    return float(cv2.contourArea(cv2.convexHull(p))) if len(p) >= 3 else 0.0


def _distinct_points(p: np.ndarray) -> np.ndarray:
    """The distinct points of p (float32 (n, 2)), equal up to 1/16 pixel (one sort of int64 keys)."""
    q = np.round(p.astype(np.float64) * 16).astype(np.int64) + (1 << 20)  # >= 0 for any point in a picture
    keys = q[:, 0] << np.int64(32) | q[:, 1]
    order = np.argsort(keys, kind="stable")
    return p[order[_run_starts(keys[order])]]


def _fill(inliers: np.ndarray, keypoints: np.ndarray, hull: np.ndarray, r: float) -> float:
    """Inside the convex polygon `hull`: area within r of an inlier / area within r of a keypoint.

    On a raster of RASTER_CELLS cells along the longer side of the hull's bounding box (keypoints
    outside the box are left out), by distance transforms (5x5 mask: distances within 2%, Borgefors 1986).
    """
    lo, hi = hull.min(axis=0), hull.max(axis=0)
    cell = max(float((hi - lo).max()) / RASTER_CELLS, 1e-6)
    shape = (int((hi[1] - lo[1]) / cell) + 1, int((hi[0] - lo[0]) / cell) + 1)
    inside = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(inside, np.floor((hull - lo) / cell).astype(np.int32), 1)
    inside = inside.astype(bool)
    reached = []
    for p in (inliers, keypoints):
        q = np.floor((p - lo) / cell).astype(np.int64)
        q = q[(q[:, 0] >= 0) & (q[:, 1] >= 0) & (q[:, 0] < shape[1]) & (q[:, 1] < shape[0])]
        empty = np.ones(shape, np.uint8)  # 0 at cells holding a point: distanceTransform measures to them
        empty[q[:, 1], q[:, 0]] = 0
        near = cv2.distanceTransform(empty, cv2.DIST_L2, cv2.DIST_MASK_5) <= r / cell
        reached.append(np.count_nonzero(near & inside))
    return min(1.0, reached[0] / reached[1]) if reached[1] else 0.0


def covered_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The pair's covered share from each side's (coverage * fill): ((a^4 + b^4) / 2)^(1/4), in [0, 1].

    A power mean near the maximum: large when EITHER picture is substantially covered (a pasted-in
    photo covers its source, a crop covers itself), small when a shared logo, emoji or caption covers
    a few percent of both, or a frame a hollow ring of both. Between 2^(-1/4) max(a, b) and max(a, b),
    and strictly increasing in each side, unlike max(a, b): equal values mean equal coverage.
    """
    a, b = np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)
    return ((a ** 4 + b ** 4) / 2.0) ** 0.25
