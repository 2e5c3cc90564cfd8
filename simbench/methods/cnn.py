"""CNN embeddings compared by cosine similarity (the digital-humanities team's ResNet features, generalised).

Candidate pairs, ranked for micro-AP (pairs not returned score 0):
- range (default): every pair with cosine >= min_similarity;
- neighbours = k: also each image's k nearest other images (the matcher's top-k, the image itself left
  out), whatever their cosine, so every image gets ranked candidates and no fixed cut decides alone;
  min_similarity = None leaves only these. A pair found both ways (or from both ends) is listed once.

Score without normalisation (normalise_k None/0): the cosine clipped to [0, 1]. For L2-normalised pooled
features of ReLU networks the cosine is never negative, so it is the natural, interpretable score and
`threshold` reads as a cosine (0.9 = "cosine >= 0.9"). (cos + 1) / 2 was not chosen: it would squeeze all
real scores into [0.5, 1] and make every threshold mean something else than the cosine users know.

Score normalisation (normalise_k = k), as used in the ISC2021 descriptor track (Douze et al., "The 2021
Image Similarity Dataset and Challenge", 2021: subtract each image's similarity to its k-th neighbour in a
background of non-matching images; in the spirit of Jégou et al.'s "contextual dissimilarity measure",
CVPR 2007): a pair of images that are both close to everything (plain skies, text pages, blank scans) is
less telling than the same cosine between two distinctive images. With the collection itself (and the copy
whitening's background pictures, when it has some: a small collection's k-th neighbour would otherwise be
one of few) as the background of non-matching images, b_i = the cosine of image i to its k-th nearest other
image (the farthest available one when there are fewer than k others), and

    margin(i, j) = cos(i, j) - beta * (b_i + b_j) / 2,
    score(i, j)  = (margin + 1 + beta) / (2 + 2 beta),

the affine map of margin's whole range [-1 - beta, 1 + beta] onto [0, 1]: strictly increasing, never
clipped, so pairs stay ranked by margin without plateaus. (beta = 1: score = (margin + 2) / 4, so 0.5 =
"as similar as the k-th neighbours are on average", and threshold t means margin >= 4 t - 2; choose it
on a tuning set, or calibrate on extra["margin"].) ScoredPairs.extra holds per pair "cosine" (always)
and "margin" (when normalised), so a calibration can use either.

Centring (centre=True): before any search, every embedding has the collection's mean subtracted and is
L2-normalised again, so that what all the pictures share (ImageNet features of a mostly white page, a
common frame or palette) stops counting as similarity; the first step of whitening learned on a background
(Jégou & Chum, ECCV 2012), with the collection as the background. The mean is shrunk toward a prior mean as
if `centre_prior` more images sat there, so a handful of images is centred on (nearly) the prior (two images
centred on their own mean would point in opposite directions): the copy whitening's background mean (the
mean embedding of the pictures it was fitted on) when whitening, else the origin (barely centred). The
cosines in extra["cosine"] are then those of the centred vectors.

Copy whitening (copy_whitening): after centring, the directions along which copies of one picture differ
most (an overlay, a screenshot frame, a recolouring, a blur) are shrunk, so that what an edit adds stops
counting as similarity and what survives the edits counts more. It is the whitening learned from matching
pairs of Mikolajczyk & Matas (ICCV 2007) and Radenović, Tolias & Chum (TPAMI 2018), P = C_S^(-1/2) with C_S
the covariance of the differences between embeddings of true pairs, kept to its top `rank` directions: the
other eigenvalues of C_S are replaced by their mean, so P is that mean^(-1/2) times a map that is the
identity except on the top directions, each shrunk by sqrt(mean / eigenvalue); as the vectors are
L2-normalised afterwards, only that map is stored (`CopyWhitening`), with the mean embedding of the pictures
it was fitted on: the map expects centred vectors, and a collection too small to have a mean of its own is
centred on that one (see Centring). Fitted on annotated pairs
(`fit_copy_whitening`; the shipped one by benchmarks/bench_find.py whiten on the development set's tuning
split), for one extractor's settings: "auto" uses the shipped fit when it was made for this extractor's
settings and says so when not.

Region views (the extractor's `regions`: Embeddings.regions holds R windows of each picture, squares of
part of its short side along its long side, each embedded on its own): a picture pasted into a collage, or
a detail cropped from a picture, resembles a window of the other far more than the other's whole view. A
pair's region cosine is the best cosine of either picture's vector with a window of the other (centred and
whitened as the vectors are, not augmented), normalised as the cosines are, against each image's
normalise_k-th best region cosine among the collection's pictures (its best region partners, searched by
the matcher: each vector against every window) and the background pictures (their vectors against its
windows). The pair's score is the higher of its whole-view score and that region score (extra["region"]);
the best region partners of each image are candidates as its nearest others are.

Database-side augmentation (augment_k = k; Arandjelović & Zisserman, CVPR 2012; Radenović, Tolias & Chum,
TPAMI 2018 weight the neighbours by a power of their similarity, as here): after the whitening, each vector
is replaced by itself plus its k nearest others, each weighted by max(cos, 0) ** augment_alpha, L2-normalised
again. Copies of one picture pull one another together (two edits of a picture, each far from the other but
close to the original, end up closer); with a high power, a neighbour that is not a copy (a lower cosine)
adds almost nothing, so a picture with no copies stays where it was.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simbench.features.base import Extractor
from simbench.match.cosine import as_vectors, cosine_matcher_for
from simbench.methods.base import Method
from simbench.types import Embeddings, Pairs, ScoredPairs

log = logging.getLogger(__name__)

#: The copy whitening shipped with simbench for find's default CNN: `python benchmarks/bench_find.py whiten`
#: (tuning split only). Others ship beside it as cnn_whitening-*.npz, each fitted for other extractor settings
#: (float32: runtime onnx or torch, as on a GPU); "auto" takes the one fitted for the extractor's.
SHIPPED_WHITENING = Path(__file__).with_name("cnn_whitening.npz")


def shipped_whitenings() -> list[Path]:
    """The shipped copy whitenings, find's default first."""
    return sorted(SHIPPED_WHITENING.parent.glob("cnn_whitening*.npz"), key=lambda p: (p != SHIPPED_WHITENING, p.name))


class CnnMethod(Method):
    """Candidate pairs by cosine range and/or k nearest neighbours, optionally score-normalised; duplicate
    at score >= threshold.

    matcher: the binary matcher Hydra built from the `matcher` group (exact, lsh, gpu, faiss); its cosine
        counterpart does the search (simbench.match.cosine.cosine_matcher_for). lsh_bits, lsh_recall: the
        random-hyperplane signature length and per-pair target recall used when matcher=lsh.
    min_similarity: range candidates have cosine >= this; None: no range search (neighbours only).
    neighbours: k > 0 adds each image's k nearest others (None or 0: range search only).
    normalise_k, beta: score normalisation against the k-th neighbour (None or 0: off), see the module
        docstring.
    centre, centre_prior: subtract the collection's (shrunk) mean embedding first, see the module docstring.
    copy_whitening: None (off), "auto" (the shipped fit when made for this extractor's settings, else off,
        logged) or a file written by CopyWhitening.save (an error when made for other settings); applied
        after centring, see the module docstring.
    augment_k, augment_alpha: database-side augmentation with each vector's augment_k nearest others (0:
        off), weighted by cos ** augment_alpha; after the whitening, see the module docstring.
    """

    def __init__(self, extractor: Extractor, matcher, min_similarity: float | None = 0.5, threshold: float = 0.9,
                 lsh_bits: int = 256, lsh_recall: float = 0.95, neighbours: int | None = None,
                 normalise_k: int | None = None, beta: float = 1.0, centre: bool = False,
                 centre_prior: float = 20.0, copy_whitening: str | Path | None = None, augment_k: int = 0,
                 augment_alpha: float = 3.0):
        self.extractor = extractor
        self.binary_matcher = matcher
        self.matcher = cosine_matcher_for(matcher, lsh_bits=lsh_bits, lsh_recall=lsh_recall)
        self.min_similarity = None if min_similarity is None else float(min_similarity)
        self.threshold = float(threshold)
        self.lsh_bits = int(lsh_bits)
        self.lsh_recall = float(lsh_recall)
        self.neighbours = int(neighbours or 0)
        self.normalise_k = int(normalise_k or 0)
        self.beta = float(beta)
        if self.neighbours < 0 or self.normalise_k < 0:
            raise ValueError(f"neighbours and normalise_k must be >= 0, got {neighbours}, {normalise_k}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.centre = bool(centre)
        self.centre_prior = float(centre_prior)
        if not self.centre_prior >= 0:
            raise ValueError(f"centre_prior must be >= 0, got {centre_prior}")
        if self.min_similarity is None and not self.neighbours:
            raise ValueError("min_similarity=None needs neighbours > 0: there would be no candidate pairs")
        self.copy_whitening = whitening_for(copy_whitening, extractor)
        self.augment_k = int(augment_k or 0)
        self.augment_alpha = float(augment_alpha)
        if self.augment_k < 0 or not self.augment_alpha >= 0:
            raise ValueError(f"augment_k and augment_alpha must be >= 0, got {augment_k}, {augment_alpha}")
        self._prepared_for: tuple | None = None  # (features, prepared(features))
        self._regions: RegionViews | None = None  # of the features prepared last

    def vectors(self, features) -> np.ndarray:
        """The vectors the searches compare: the embeddings, centred when `centre` is set, copy-whitened
        when `copy_whitening` is, then augmented with their neighbours when `augment_k` is."""
        return self.prepared(features)[0]

    def prepared(self, features) -> tuple[np.ndarray, np.ndarray | None]:
        """`vectors(features)` and each row's cosines to the background pictures (`background_topk` of
        `background_vectors`; None without), from one sum of the embeddings. Kept for the last features
        object asked: the cascade's search and its fusion scores ask for the same one."""
        if self._prepared_for is not None and self._prepared_for[0] is features:
            return self._prepared_for[1]
        raw = as_vectors(features)
        total = embedding_sum(raw) if self.centre or self.copy_whitening is not None else None
        whitened = v = self.projected(raw, total, len(raw))
        if self.augment_k and len(v) > 1:
            v = augmented(v, *nearest_others(self.matcher, v, self.augment_k), self.augment_alpha)
        background = self.background_vectors(total, len(raw))
        result = v, background_topk(v, background, self.normalise_k)
        regions = getattr(features, "regions", None)
        self._regions = None if regions is None else self.region_views(whitened, regions, total, background)
        self._prepared_for = (features, result)
        return result

    def projected(self, x: np.ndarray, total: np.ndarray | None, n_rows: int) -> np.ndarray:
        """Embeddings (of the collection, or its region views) centred on the collection's mean (from its
        embedding_sum `total` of n_rows rows) when `centre` is set, then copy-whitened when that is."""
        return projected(x, total, n_rows, self.centring, self.copy_whitening)

    @property
    def centring(self) -> tuple | None:
        """(centre_prior, prior_mean) when `centre` is set (`projected`), else None."""
        return (self.centre_prior, self.prior_mean) if self.centre else None

    def region_views(self, vectors: np.ndarray, regions: np.ndarray, total, background) -> RegionViews:
        """The region views prepared as the vectors are, each image's best region partners (by the matcher:
        every vector against every window) and its normalise_k-th best region cosine, counting the
        background pictures' (module docstring). vectors: prepared, not augmented."""
        n, r = regions.shape[:2]
        windows = self.projected(regions.reshape(n * r, -1), total, n).reshape(n, r, -1)
        views = RegionViews(vectors, windows, np.zeros(n), np.full((n, 0), -1), np.zeros((n, 0), np.float32))
        if n < 2:
            return views
        idx, _ = self.matcher.topk(vectors, windows.reshape(n * r, -1), self.region_search_k(n, r))
        views.searched(idx, r, self, lambda: region_background_topk(windows, background, self.normalise_k))
        return views

    def region_search_k(self, n: int, r: int) -> int:
        """Windows searched per vector for its best region partners: enough for search_k other images."""
        return min(r * (max(self.search_k, 1) + 1), n * r)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_prepared_for": None, "_regions": None}  # a pickled method carries no collection

    @property
    def prior_mean(self) -> np.ndarray | None:
        """Where centring's prior images sit: the copy whitening's background mean, or None (the origin)."""
        return None if self.copy_whitening is None else self.copy_whitening.mean

    def background_vectors(self, total: np.ndarray, n_rows: int) -> np.ndarray | None:
        """The copy whitening's background pictures prepared as the collection's vectors are (centred on the
        collection's mean, from its embedding_sum `total` of n_rows rows, then whitened), or None: no
        normalisation, or no background (then the collection alone is the background)."""
        w = self.copy_whitening
        if not self.normalise_k or w is None or w.background is None or not len(w.background):
            return None
        x = centred(w.background, total, n_rows, self.centre_prior, w.mean) if self.centre else w.background
        return w.apply(x)

    def score_pairs(self, features: Embeddings) -> ScoredPairs:
        v, background_sims = self.prepared(features)
        found = self.matcher.self_join(v, self.min_similarity) if self.min_similarity is not None else None
        others = nearest_others(self.matcher, v, self.search_k) if self.search_k and len(v) > 1 else None
        region_pairs = self.region_pairs(self._regions, lambda a, b: pair_cosines(v, a, b))
        return self.scored(len(v), found, others, background_sims, self._regions, region_pairs)

    def region_pairs(self, regions: RegionViews | None, cosines: Callable) -> tuple | None:
        """The pairs of each image's `neighbours` best region partners with the cosines of their prepared
        vectors, cosines(a, b) (a, b, cos), or None: no region views, or no neighbours."""
        if regions is None or not self.neighbours:
            return None
        a, b, _ = neighbour_pairs(regions.partners[:, : self.neighbours], regions.partner_sims[:, : self.neighbours])
        return a, b, cosines(a, b)

    @property
    def search_k(self) -> int:
        """The neighbours each image's search keeps: enough for the candidates and the background."""
        return max(self.neighbours, self.normalise_k)

    def scored(self, n: int, found: Pairs | None, others: tuple | None, background_sims: np.ndarray | None = None,
               regions: RegionViews | None = None, region_pairs: tuple | None = None) -> ScoredPairs:
        """The pairs and scores of n images from the searches' results: the range pairs `found` (None: no
        range search), each image's search_k nearest others (nearest_others; None: no k-NN search), its
        similarities to the background pictures (`prepared`; None: none), its region views (None: none) and
        the pairs of its best region partners with their cosines (a, b, cos; None: none).
        What score_pairs gives; simbench.distributed.cnn runs the searches as tasks and calls this."""
        parts = [(found.a, found.b, found.dist)] if found is not None else []
        if self.neighbours and others is not None:
            parts.append(neighbour_pairs(others[0][:, : self.neighbours], others[1][:, : self.neighbours]))
        if region_pairs is not None:
            parts.append(region_pairs)
        a, b, cos = unique_pairs(parts, n)

        extra = {"comparisons": n * (n - 1) // 2, "cosine": cos.astype(np.float64),
                 "extract_runtime": getattr(self.extractor, "runtime", "torch")}
        if self.normalise_k:
            background = (kth_similarity(*others, self.normalise_k, background_sims) if others is not None
                          else np.zeros(n))
            margin, score = normalised_scores(cos, background[a], background[b], self.beta)
            extra["margin"] = margin
        else:
            score = np.clip(cos.astype(np.float64), 0.0, 1.0)
        if regions is not None:
            extra["region"] = regions.scores(a, b, self)
            score = np.maximum(score, extra["region"])
        stats = getattr(self.matcher, "last_stats", None)
        if stats:
            extra["lsh"] = dict(stats)
        return ScoredPairs(a, b, score, extra=extra)

    def score_given(self, features, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The score of the given row pairs (found by another stage, say), as score_pairs would give them.
        features: Embeddings, or the EmbeddingChunks a cluster holds (simbench.distributed.cnn: the
        cosines and the neighbours are computed by its tasks)."""
        from simbench.distributed.cnn import EmbeddingChunks, score_given_on_chunks

        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if isinstance(features, EmbeddingChunks):
            return score_given_on_chunks(self, features, a, b)
        v, background_sims = self.prepared(features)
        normalised = self.normalise_k and len(v) >= 2
        score = self.given_scores(pair_cosines(v, a, b), a, b,
                                  kth_similarity(*nearest_others(self.matcher, v, self.normalise_k), self.normalise_k,
                                                 background_sims) if normalised else None)
        return score if self._regions is None else np.maximum(score, self._regions.scores(a, b, self))

    def given_scores(self, cos: np.ndarray, a: np.ndarray, b: np.ndarray, background: np.ndarray | None):
        """score_given from the pairs' cosines and each image's k-th neighbour similarity (None: not
        normalised, or fewer than two images)."""
        if background is None:
            return np.clip(cos, 0.0, 1.0)
        return normalised_scores(cos, background[a], background[b], self.beta)[1]

    def params(self) -> dict:
        return {"min_similarity": self.min_similarity, "threshold": self.threshold,
                "neighbours": self.neighbours, "normalise_k": self.normalise_k,
                "beta": self.beta if self.normalise_k else None,
                # Only when used, so that the tables and caches of before keep their keys.
                **({"centre": True, "centre_prior": self.centre_prior} if self.centre else {}),
                **({"copy_whitening": self.copy_whitening.digest} if self.copy_whitening is not None else {}),
                **({"augment_k": self.augment_k, "augment_alpha": self.augment_alpha} if self.augment_k else {}),
                "matcher": self.matcher.name, "lsh_bits": self.lsh_bits, "lsh_recall": self.lsh_recall,
                "extract_device": self.extractor.device, "extract_fallback": self.extractor.fallback,
                "match_device": self.matcher.device, "match_fallback": self.matcher.fallback}

    @property
    def device(self) -> str:
        """The accelerator when either step ran on one, else "cpu" (params() has each step's device)."""
        for dev in (self.extractor.device, self.matcher.device):
            if str(dev).startswith("cuda"):
                return str(dev)
        return "cpu"

    @property
    def fallback(self) -> bool:
        """True when the extractor or the matcher was asked for a device it did not get."""
        return bool(getattr(self.extractor, "fallback", False) or getattr(self.matcher, "fallback", False))


#: Fixed point of embedding_sum: 2^-32 steps, and up to 2^31 unit-length rows before an int64 overflows.
SUM_SCALE = 2.0 ** 32


def embedding_sum(vectors: np.ndarray) -> np.ndarray:
    """The sum of the rows as int64 fixed point (each value rounded to 2^-32): integer sums are exact, so a
    cluster's chunks summed in any order give the very mean of one process (float sums would differ in
    their last bits, and with them the pairs found)."""
    if not len(vectors):
        return np.zeros(np.shape(vectors)[1], np.int64)
    return np.rint(np.asarray(vectors, np.float64) * SUM_SCALE).astype(np.int64).sum(axis=0)


def centred(vectors: np.ndarray, total: np.ndarray, n_rows: int, n_prior: float,
            prior_mean: np.ndarray | None = None) -> np.ndarray:
    """Rows minus the shrunk mean (total + n_prior * prior_mean) / (n_rows + n_prior), L2-normalised (a row
    equal to it stays zero). total: embedding_sum of the whole collection of n_rows rows, of which `vectors`
    may be a chunk; prior_mean: where the n_prior images sit (None: the origin)."""
    total = total / SUM_SCALE + (0.0 if prior_mean is None else n_prior * np.asarray(prior_mean, np.float64))
    mean = (total / (n_rows + n_prior)).astype(np.float32)
    x = np.asarray(vectors, np.float32) - mean
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# Region views


@dataclass
class RegionViews:
    """A collection's region views as CnnMethod compares them (module docstring): vectors (N, D) and windows
    (N, R, D), prepared; background (N,): each image's normalise_k-th best region cosine; partners,
    partner_sims (N, k): its best region partners, most similar first (-1 / -inf where it has fewer).
    simbench.distributed.cnn.ChunkRegionViews: the same with the vectors and windows on a cluster's workers."""

    vectors: np.ndarray
    windows: np.ndarray
    background: np.ndarray
    partners: np.ndarray
    partner_sims: np.ndarray

    def cosines(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per pair, the best cosine of either image's vector with a window of the other, float64."""
        return region_cosines(self.vectors, self.windows, a, b)

    def searched(self, idx: np.ndarray, r: int, method: CnnMethod, background_topk: Callable) -> None:
        """Set each image's best region partners and background from the search of every vector against
        every window: idx (N, K), the windows found per vector, best first (window w of image w // r; -1:
        none); background_topk() gives the background pictures' best cosines with each image's windows
        (region_background_topk), asked only when the method normalises."""
        n, k = len(idx), max(method.search_k, 1)
        owner = np.where(idx >= 0, idx // r, -1)
        mine = np.broadcast_to(np.arange(n)[:, None], owner.shape)
        ok = (owner >= 0) & (owner != mine)
        a, b, _ = unique_pairs([(mine[ok], owner[ok], np.zeros(int(ok.sum()), np.float32))], n)
        self.partners, self.partner_sims = best_partners(a, b, self.cosines(a, b), n, k)
        if method.normalise_k:
            self.background = kth_similarity(self.partners, self.partner_sims, method.normalise_k, background_topk())

    def scores(self, a: np.ndarray, b: np.ndarray, method: CnnMethod) -> np.ndarray:
        """The region score of each pair: its region cosine normalised as the method normalises cosines."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        cos = self.cosines(a, b)
        if not method.normalise_k:
            return np.clip(cos, 0.0, 1.0)
        return normalised_scores(cos, self.background[a], self.background[b], method.beta)[1]


def projected(x: np.ndarray, total: np.ndarray | None, n_rows: int, centring: tuple | None, whitening) -> np.ndarray:
    """CnnMethod.projected without the method (a cluster's tasks): rows centred (`centred`, centring = its
    n_prior and prior_mean) when centring is given, then copy-whitened when whitening is."""
    x = centred(x, total, n_rows, *centring) if centring is not None else as_vectors(x)
    return whitening.apply(x) if whitening is not None else x


def region_cosines(vectors: np.ndarray, windows: np.ndarray, a: np.ndarray, b: np.ndarray,
                   chunk: int = 1 << 12) -> np.ndarray:
    """RegionViews.cosines of rows (vectors (N, D), windows (N, R, D)): each pair's rows alone give its value."""
    out = np.empty(len(a), np.float64)
    for s in range(0, len(a), chunk):
        a_in_b, b_in_a = window_cosines(vectors, windows, a[s : s + chunk], b[s : s + chunk])
        out[s : s + chunk] = np.maximum(a_in_b.max(axis=1), b_in_a.max(axis=1))
    return out


def window_cosines(vectors: np.ndarray, windows: np.ndarray, a: np.ndarray, b: np.ndarray):
    """For pairs of rows (a, b): the cosines of a's vector with each of b's windows, and of b's vector with
    each of a's, (len(a), R) each."""
    return np.einsum("nd,nrd->nr", vectors[a], windows[b]), np.einsum("nd,nrd->nr", vectors[b], windows[a])


def best_partners(a: np.ndarray, b: np.ndarray, sim: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of n rows' k best partners among the pairs (a, b) with similarity sim, most similar first (ties
    to the lower row): (indices (n, k), -1 where fewer; similarities (n, k) float32, -inf there)."""
    row, other = np.concatenate([a, b]).astype(np.int64), np.concatenate([b, a]).astype(np.int64)
    value = np.concatenate([sim, sim]).astype(np.float32)
    order = np.lexsort((other, -value, row))
    row, other, value = row[order], other[order], value[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row)
    keep = rank < k
    idx, out = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    idx[row[keep], rank[keep]], out[row[keep], rank[keep]] = other[keep], value[keep]
    return idx, out


def region_background_topk(windows: np.ndarray, background: np.ndarray | None, k: int,
                           chunk: int = 1024) -> np.ndarray | None:
    """Each image's min(k, B) highest cosines of a background picture's vector with one of its windows,
    most similar first, float32 (N, <= k); None without a background."""
    if background is None:
        return None
    k = min(int(k), len(background))
    out = np.zeros((len(windows), max(k, 0)), np.float32)
    for s in range(0, len(windows) if k else 0, chunk):
        sims = np.einsum("nrd,md->nrm", windows[s : s + chunk], np.asarray(background, np.float32)).max(axis=1)
        out[s : s + chunk] = -np.sort(-sims, axis=1)[:, :k]
    return out


# ---------------------------------------------------------------------------------------------------------
# Copy whitening


@dataclass(frozen=True)
class CopyWhitening:
    """x -> x + ((x U) (s - 1)) U^T, L2-normalised: each of the r orthonormal `directions` U (D, r) shrunk by
    its `scale` s in (0, 1] (module docstring), for vectors centred first. mean (D,): the mean embedding of
    the pictures it was fitted on, before centring (where centring's prior sits); fitted_for: the extractor
    settings of the vectors it was fitted on (`vector_settings`); note: what it was fitted on; background
    (B, D): embeddings (before centring) of pictures that are copies of none of a collection's, searched
    with the collection for each image's k-th neighbour (`CnnMethod.prepared`), or None."""

    directions: np.ndarray
    scales: np.ndarray
    mean: np.ndarray
    fitted_for: dict = field(default_factory=dict)
    note: str = ""
    background: np.ndarray | None = None

    @property
    def digest(self) -> str:
        """Identifies the map (the calibration tables and caches key on it)."""
        h = hashlib.sha256(np.ascontiguousarray(self.directions, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.scales, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.mean, np.float32).tobytes())
        if self.background is not None:
            h.update(np.ascontiguousarray(self.background, np.float32).tobytes())
        return h.hexdigest()[:16]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """The map of every row. Each value is summed on its own (einsum, no BLAS blocking), so that a row
        gives the same bits in any batch of rows: a cluster's chunks agree with one process."""
        x = np.asarray(vectors, np.float32)
        u = np.asarray(self.directions, np.float32)
        shrink = np.einsum("ij,jk->ik", x, u) * (np.asarray(self.scales, np.float32) - 1)
        y = x + np.einsum("ik,jk->ij", shrink, u)
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return np.ascontiguousarray(y / np.maximum(norms, 1e-12), dtype=np.float32)

    def save(self, path: str | Path) -> None:
        """Written atomically (a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, directions=np.asarray(self.directions, np.float32),
                                scales=np.asarray(self.scales, np.float32), mean=np.asarray(self.mean, np.float32),
                                background=np.asarray(self.background if self.background is not None
                                                      else np.zeros((0, len(self.mean))), np.float32),
                                fitted_for=json.dumps(self.fitted_for, sort_keys=True, default=str), note=self.note)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> CopyWhitening:
        with np.load(path, allow_pickle=False) as z:
            background = z["background"] if "background" in z.files and len(z["background"]) else None
            return cls(z["directions"], z["scales"], z["mean"], json.loads(str(z["fitted_for"])),
                       str(z["note"]), background)


def fit_copy_whitening(collections: list[tuple[np.ndarray, np.ndarray]], rank: int, mean: np.ndarray,
                       fitted_for: dict, note: str = "", shrinkage: float = 0.1,
                       background: np.ndarray | None = None) -> CopyWhitening:
    """Fit on annotated collections: each (vectors (N, D) as the method compares them before the whitening,
    i.e. centred; true pairs (P, 2) of row indices); mean: their mean embedding before centring; background:
    embeddings of pictures copied in none of them (CopyWhitening.background). C_S = the mean outer product of
    the true pairs' differences, shrunk toward its mean eigenvalue (C_S (1 - shrinkage) + shrinkage tr(C_S) / D
    I: with fewer pairs than dimensions most eigenvalues are 0, and no direction should vanish); its top
    `rank` eigenvectors are kept, each shrunk by sqrt(mean of the other eigenvalues / its eigenvalue)."""
    diffs = [np.asarray(v, np.float64)[p[:, 0]] - np.asarray(v, np.float64)[p[:, 1]]
             for v, p in collections if len(p)]
    if not diffs:
        raise ValueError("copy whitening needs true pairs to learn from")
    d = np.concatenate(diffs)
    dim = d.shape[1]
    if not 0 < rank < dim:
        raise ValueError(f"rank must be in 1..{dim - 1}, got {rank}")
    if not 0 < shrinkage <= 1:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    eigenvalues, eigenvectors = np.linalg.eigh(d.T @ d / len(d))
    eigenvalues = np.clip(eigenvalues[::-1], 0.0, None)  # largest first; rounding leaves tiny negatives
    eigenvalues = (1 - shrinkage) * eigenvalues + shrinkage * eigenvalues.mean()
    rest = float(eigenvalues[rank:].mean())
    if rest <= 0:  # every difference is 0: nothing to learn
        raise ValueError("copy whitening: the true pairs' embeddings do not differ")
    scales = np.sqrt(rest / np.maximum(eigenvalues[:rank], rest))  # <= 1; a direction at the mean is kept
    return CopyWhitening(eigenvectors[:, ::-1][:, :rank].astype(np.float32), scales.astype(np.float32),
                         np.asarray(mean, np.float32), dict(fitted_for), note,
                         None if background is None else np.asarray(background, np.float32))


#: The extractor settings of its region views (CnnExtractor `regions`).
REGION_SETTINGS = frozenset({"regions", "region_size"})


def vector_settings(extractor) -> dict:
    """The extractor settings that change its vectors (not where or how fast it runs; not the weights
    file's path and time): what a copy whitening must have been fitted for."""
    # The one list of run-only settings (a function-level import: simbench.find imports this module).
    from simbench.find.calibration import NOT_SIGNAL

    params = extractor.params() if hasattr(extractor, "params") else {}
    # Region views leave the vectors as they are (Embeddings.regions holds them apart).
    return {k: v for k, v in sorted(params.items()) if k not in NOT_SIGNAL | REGION_SETTINGS and k != "weights"}


def whitening_for(spec, extractor) -> CopyWhitening | None:
    """CnnMethod's copy_whitening: None, "auto" (the shipped fit made for these settings, if one is) or a file."""
    if spec is None or str(spec).lower() in ("none", "null", "false", ""):
        return None
    if str(spec) == "auto":
        found = shipped_whitening_for(extractor)
        if found is None:
            differ = _settings_differ(CopyWhitening.load(SHIPPED_WHITENING), extractor) if SHIPPED_WHITENING.is_file() else []
            log.warning("copy_whitening=auto: no shipped whitening was fitted for these extractor settings%s: "
                        "not whitened", f" (the default's differs in {', '.join(differ)})" if differ else "")
            return None
        return found[1]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"copy_whitening: no such file {path}")
    whitening = CopyWhitening.load(path)
    differ = _settings_differ(whitening, extractor)
    if differ:
        raise ValueError(f"copy whitening {path} was fitted for other extractor settings ({', '.join(differ)})")
    return whitening


def shipped_whitening_for(extractor) -> tuple[Path, "CopyWhitening"] | None:
    """(file, fit) of the shipped copy whitening fitted for this extractor's settings (shipped_whitenings), or
    None."""
    for path in shipped_whitenings():
        whitening = CopyWhitening.load(path)
        if not _settings_differ(whitening, extractor):
            return path, whitening
    return None


def _settings_differ(whitening: "CopyWhitening", extractor) -> list[str]:
    """The vector settings (vector_settings) a whitening was fitted for that this extractor does not have."""
    wanted = json.loads(json.dumps(vector_settings(extractor), sort_keys=True, default=str))
    return sorted(k for k in set(wanted) | set(whitening.fitted_for) if whitening.fitted_for.get(k) != wanted.get(k))


def nearest_others(matcher, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows, most similar first: (indices (N, k) int64, -1 where the collection
    has fewer; cosines (N, k) float32, -inf there). The search asks for k + 1 and drops the row itself."""
    return without_self(*matcher.topk(vectors, vectors, k + 1))


def without_self(idx: np.ndarray, sim: np.ndarray, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The top k + 1 lists (idx, sim) of rows first, first + 1, ... without the row itself (or, when
    k + 1 exact duplicates crowd it out, without the last one: the same similarity): k columns."""
    n, k = idx.shape[0], idx.shape[1] - 1
    drop = idx == np.arange(first, first + n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop  # exactly k per row: boolean indexing keeps row-major order
    return idx[keep].reshape(n, k), sim[keep].reshape(n, k)


def augmented(vectors: np.ndarray, idx: np.ndarray, sim: np.ndarray, alpha: float,
              take: Callable[[np.ndarray], np.ndarray] | None = None, block: int = 4096) -> np.ndarray:
    """Database-side augmentation (module docstring): row i -> v_i + sum over its neighbours j of
    max(sim_ij, 0) ** alpha * v_j, L2-normalised; idx, sim: each row's nearest others (nearest_others; -1 =
    none). take(rows): the vectors of those rows (default: of `vectors`; a cluster's chunk fetches its
    rows' neighbours). Float32 sums of one neighbour at a time, in blocks of rows, so a row gives the same
    bits in any batch of rows: a cluster's chunks agree with one process."""
    x = np.asarray(vectors, np.float32)
    take = take or (lambda rows: x[rows])
    weight = np.where(idx >= 0, np.maximum(np.asarray(sim, np.float32), 0) ** np.float32(alpha), 0).astype(np.float32)
    out = np.empty_like(x)
    for s in range(0, len(x), block):
        y = x[s : s + block].copy()
        for j in range(idx.shape[1]):
            y += weight[s : s + block, j : j + 1] * take(np.maximum(idx[s : s + block, j], 0))
        out[s : s + block] = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return out


def neighbour_pairs(idx: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cosine) for every valid (row, neighbour) entry."""
    rows = np.broadcast_to(np.arange(len(idx))[:, None], idx.shape)
    valid = idx >= 0
    return rows[valid], idx[valid], sim[valid]


def unique_pairs(parts, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated (a, b, cosine) parts as unordered pairs a < b, each once with its best cosine, sorted
    by (a, b)."""
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    cos = np.concatenate([p[2] for p in parts]).astype(np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * max(n, 1) + hi
    order = np.lexsort((-cos, key))  # by pair, its best cosine first
    key, lo, hi, cos = key[order], lo[order], hi[order], cos[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return lo[first], hi[first], cos[first]


def pair_cosines(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """cos(vectors[a[k]], vectors[b[k]]) for each k (L2-normalised rows), float64, in chunks."""
    out = np.empty(len(a), np.float64)
    for s in range(0, len(a), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", vectors[a[s:s + chunk]], vectors[b[s:s + chunk]])
    return out


def kth_similarity(idx: np.ndarray, sim: np.ndarray, k: int,
                   background_sims: np.ndarray | None = None) -> np.ndarray:
    """b_i: the cosine of row i to its k-th nearest other row, or to the farthest one it has when fewer
    (0 for a row with none: it is in no pair anyway). float64 (N,). background_sims (N, j): row i's
    cosines to background pictures (background_topk), counted as more neighbours of it."""
    if background_sims is not None and background_sims.shape[1]:
        k = int(k)
        sim = np.where(idx[:, :k] >= 0, sim[:, :k], -np.inf)
        idx = np.concatenate([idx[:, :k], np.zeros(background_sims.shape, np.int64)], axis=1)
        sim = np.concatenate([sim, background_sims.astype(sim.dtype)], axis=1)
        order = np.argsort(-sim, axis=1, kind="stable")
        idx, sim = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sim, order, axis=1)
    count = (idx >= 0).sum(axis=1)
    col = np.clip(np.minimum(k, count) - 1, 0, None)
    return np.where(count > 0, sim[np.arange(len(idx)), col], 0.0).astype(np.float64)


def background_topk(vectors: np.ndarray, background: np.ndarray | None, k: int) -> np.ndarray | None:
    """Each row's min(k, B) highest cosines to the background rows, most similar first, float32 (N, <= k);
    None without a background. Each cosine is summed on its own (einsum, no BLAS blocking), so a row gives
    the same values in any batch of rows: a cluster's chunks agree with one process to the last bit."""
    if background is None:
        return None
    k = min(int(k), len(background))
    if not len(vectors) or not k:
        return np.zeros((len(vectors), max(k, 0)), np.float32)
    sims = np.einsum("ij,kj->ik", np.asarray(vectors, np.float32), np.asarray(background, np.float32))
    return -np.sort(-sims, axis=1)[:, :k].astype(np.float32)


def normalised_scores(cos: np.ndarray, b_a: np.ndarray, b_b: np.ndarray, beta: float):
    """(margin, score): margin = cos - beta (b_a + b_b) / 2 and its affine map onto [0, 1] (module
    docstring). float64."""
    margin = np.asarray(cos, np.float64) - beta * (b_a + b_b) / 2
    return margin, (margin + 1 + beta) / (2 + 2 * beta)
