"""Why two images were paired: the evidence the review page draws, computed once by `find`.

Interface: `pair_evidence(...)` returns {(a, b): record} for item pairs a < b (item positions in
`FindResult.items`); `simbench find` keeps it as `FindResult.evidence`, stores it in evidence.npz
(`pair_evidence` entry, one compact JSON string: no pickle) and embeds it in report.html. For two images
outside a run (simbench.compare), call `keypoint_evidence` / `cnn_evidence` on their features directly.

A record holds what applies to the pair (every value plain JSON):
- "keypoints": the verified matches of the keypoint stage: "inliers" (RANSAC inlier count), "flipped"
  (the mirrored fit won), "size_a"/"size_b" (width, height of each item's image, the pixel space of the
  points: the original file, or for a PDF image the rendering of its placed region), "points_a"/"points_b"
  (matched point pairs: points_a[k] in a matches points_b[k] in b, at most MAX_MATCHES of them, evenly
  subsampled, to a tenth of a pixel), "box_a"/"box_b" (x0 y0 x1 y1 of ALL inliers) and "hull_a"/"hull_b"
  (their convex hull): the matched region on each image.
- "cnn": "cosine" of the two embeddings, "rank_a" (b's rank among a's nearest neighbours, 1 = nearest)
  and "rank_b" (a's rank among b's), "score" (the stage's calibrated score).
- "hash": "distance" (Hamming distance of the two codes) of "bits", and "score" (the stage's calibrated score).
- "align": "correlation" (what the align stage's ECC reached), "overlap" (share of the smaller thumbnail) and
  "turns" (b's quarter turns, counter-clockwise), and "score" (the stage's calibrated score): read from the run's
  own align pairs (the stage keeps them), never aligned again.
- "chain": for a pair scored through others (method "linked"), the direct pairs along the strongest
  chain, [[x, y, score, method], ...] from a to b: the linked score is their product (or, with
  link_score=weakest, the least of them; with link_own_evidence=true, lowered by the pair's own "cnn" score).

How they are obtained, so that they are the stage's own reasons:
- keypoints: the inliers the stage's own verification kept in the run (its `Correspondences`); for a pair
  it did not verify there (a run on a cluster verifies in its tasks; two images outside a run), the two
  images' features are matched and verified again by the stage's own method
  (`KeypointMethod.descriptor_pairs` and `verify_candidates`) on just those two images, its matcher
  swapped for the exact one (on two images a brute force is quicker than building an index). A RANSAC
  fit depends on its pair's correspondences alone and rows keep their order, and every binary matcher
  of simbench returns the exact range (multi-index hashing too), so both give the inliers `find`
  verified (faiss's peer matcher keeps distance < radius, not <=: there the boundary may differ).
- cnn: cosines of each image to every other (in blocks of bounded memory), counted: one pass over the
  collection's embeddings per pair (on a cluster, by tasks over the chunks its workers hold:
  simbench.distributed.cnn.neighbour_ranks).
- chain: Kruskal's maximum spanning forest over the direct pairs scoring >= link_min_score, best first,
  as simbench.find.cascade.link builds it; the chain is the tree path.

Only the MAX_EVIDENCE_PAIRS best pairs get records (a pair verified again costs one small match); the
page says when a pair has none.
"""
from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Sequence

import cv2
import numpy as np

from simbench.distributed.cnn import EmbeddingChunks, chunk_pair_cosines, neighbour_ranks
from simbench.features.thumbnails import Thumbnails
from simbench.find.cascade import LINKED, FusedPairs, spanning_merges
from simbench.find.index import _one, join_features
from simbench.match.exact import ExactMatcher
from simbench.methods.cnn import window_cosines
from simbench.methods.keypoints import Correspondences, between_images, ratio_matches
from simbench.threads import thread_map
from simbench.types import BinaryCodes, KeypointSets, ScoredPairs

#: Pairs (best score first) that get an evidence record in a run.
MAX_EVIDENCE_PAIRS = 2000
#: Matched point pairs kept per pair (the region boxes and hulls use them all).
MAX_MATCHES = 64
#: Similarities computed at once when ranking neighbours (rows x collection; bounds the memory to 256 MB).
BLOCK_SIMILARITIES = 1 << 26

Evidence = dict[tuple[int, int], dict]


def shown(pairs: FusedPairs, limit: int | None = None) -> np.ndarray:
    """Positions of the pairs that get records: the `limit` (MAX_EVIDENCE_PAIRS) best, ties by (a, b)."""
    return np.lexsort((pairs.b, pairs.a, -pairs.score))[: MAX_EVIDENCE_PAIRS if limit is None else limit]


def pair_evidence(pairs: FusedPairs, stages: Sequence, features: dict, link_min_score: float | None = None,
                  limit: int = MAX_EVIDENCE_PAIRS, raw: dict | None = None) -> Evidence:
    """Evidence records of the `limit` best pairs (see the module docstring), keyed by (a, b), a < b.

    stages: simbench.find.cascade.Stage list; features: stage name -> (features, item rows, reasons), as
    simbench.find.pipeline.load_features gives them; link_min_score: the linking floor (None: no chains);
    raw: the run's raw pairs per stage (FindResult.raw): a keypoint stage's correspondences there give the
    records of the pairs it verified, which are then not verified again.
    """
    order = shown(pairs, limit)
    out: Evidence = {(int(pairs.a[k]), int(pairs.b[k])): {} for k in order}
    for stage in stages:
        found = pairs.per_stage.get(stage.name)
        if found is None or stage.name not in features:
            continue
        feats, rows, _ = features[stage.name]
        position = {int(item): r for r, item in enumerate(rows)}
        mine = [k for k in order if found[k] > 0 and int(pairs.a[k]) in position and int(pairs.b[k]) in position]
        if isinstance(feats, KeypointSets):  # a later keypoint stage (blobs) only where an earlier one has no record
            mine = [k for k in mine if "keypoints" not in out[int(pairs.a[k]), int(pairs.b[k])]]
            known = (raw or {}).get(stage.name)
            known = known.extra.get("correspondences") if known is not None else None
            records = thread_map(lambda k: keypoint_evidence(feats, position[int(pairs.a[k])],
                                                             position[int(pairs.b[k])], stage.method,
                                                             verified=known), mine)
            for k, record in zip(mine, records):
                if record is not None:
                    out[int(pairs.a[k]), int(pairs.b[k])]["keypoints"] = record
        elif isinstance(feats, BinaryCodes) and mine:
            a = np.array([position[int(pairs.a[k])] for k in mine])
            b = np.array([position[int(pairs.b[k])] for k in mine])
            distance = np.unpackbits((feats.words[a] ^ feats.words[b]).view(np.uint8), axis=1).sum(axis=1)
            for k, d in zip(mine, distance.tolist()):
                out[int(pairs.a[k]), int(pairs.b[k])]["hash"] = {"distance": int(d), "bits": int(feats.bits),
                                                                 "score": round(float(found[k]), 4)}
        elif isinstance(feats, Thumbnails) and mine and raw is not None and stage.name in raw:
            for k, record in zip(mine, alignment_records(raw[stage.name], pairs.a[mine], pairs.b[mine])):
                if record is not None:
                    out[int(pairs.a[k]), int(pairs.b[k])]["align"] = {**record, "score": round(float(found[k]), 4)}
        elif (hasattr(feats, "vectors") or isinstance(feats, EmbeddingChunks)) and mine:
            a = np.array([position[int(pairs.a[k])] for k in mine])
            b = np.array([position[int(pairs.b[k])] for k in mine])
            windows = window_records(feats, a, b)
            for k, record, window in zip(mine, cnn_evidence(getattr(feats, "vectors", feats), a, b), windows):
                out[int(pairs.a[k]), int(pairs.b[k])]["cnn"] = {**record, **({"window": window} if window else {}),
                                                                "score": round(float(found[k]), 4)}
    if link_min_score is not None:
        linked = [k for k in order if pairs.method[k] == LINKED]
        for k, chain in zip(linked, linked_chains(pairs, [(int(pairs.a[k]), int(pairs.b[k])) for k in linked],
                                                  link_min_score)):
            if chain:
                out[int(pairs.a[k]), int(pairs.b[k])]["chain"] = chain
    return out


def alignment_records(found: ScoredPairs, a: np.ndarray, b: np.ndarray) -> list[dict | None]:
    """What the align stage measured of item pairs (a, b) among its own pairs `found` (None: not there)."""
    n = np.int64(max(a.max(initial=0), b.max(initial=0), found.b.max(initial=0)) + 1)
    position = {int(key): k for k, key in enumerate(found.a.astype(np.int64) * n + found.b)}
    out = []
    for x, y in zip(np.asarray(a, np.int64).tolist(), np.asarray(b, np.int64).tolist()):
        k = position.get(min(x, y) * int(n) + max(x, y))
        out.append(None if k is None else {"correlation": round(float(found.score[k]), 4),
                                           "overlap": round(float(found.extra["overlap"][k]), 3),
                                           "turns": int(found.extra["turns"][k])})
    return out


# ---------------------------------------------------------------------------------------------------
# Keypoints


def keypoint_evidence(features: KeypointSets, ra: int, rb: int, method, max_matches: int = MAX_MATCHES,
                      verified: Correspondences | None = None) -> dict | None:
    """The verified matches between feature rows ra < rb (images of `features`), by `method` (a
    KeypointMethod) on these two images alone; None when no fit has inliers. Matched within the method's
    radius; where that fit has fewer than min_inliers and the method verifies proposed pairs, on their
    ratio-test matches (`ratio_matches`), as it verified them. verified: the run's own correspondences
    (`Correspondences`): a pair they hold of these features is read from them (the same, as the module
    docstring says)."""
    ver = verified.get(features, ra, rb) if verified is not None else None
    if ver is None:
        features, ra, rb = join_features([_one(features, ra), _one(features, rb)], "keypoints")[0], 0, 1
        ver = _verified_alone(features, method)
    if not len(ver["ra"]):
        return None
    points = np.asarray(features.points)
    pa, pb = points[ver["ra"]].astype(np.float64), points[ver["rb"]].astype(np.float64)
    keep = np.unique(np.linspace(0, len(pa) - 1, min(max_matches, len(pa))).round().astype(int))
    sizes = np.asarray(features.image_sizes)[[ra, rb]]
    return {"inliers": int(ver["inliers"][0]), "flipped": bool(ver["flipped"][0]),
            "size_a": [int(v) for v in sizes[0]], "size_b": [int(v) for v in sizes[1]],
            "points_a": _rounded(pa[keep]), "points_b": _rounded(pb[keep]),
            "box_a": _box(pa), "box_b": _box(pb), "hull_a": _hull(pa), "hull_b": _hull(pb)}


def _verified_alone(pair: KeypointSets, method) -> dict:
    """`verify_candidates` of the two images of `pair`, matched by the exact matcher (see keypoint_evidence)."""
    exact = copy.copy(method)
    exact.matcher = ExactMatcher()
    descriptor_pairs, _ = exact.descriptor_pairs(pair)
    matches = between_images(descriptor_pairs, pair.owners)
    first, second = np.array([0]), np.array([1])
    max_size = getattr(method.extractor, "max_size", None)
    ver = method.verify_candidates(pair, matches, first, second, max_size)
    if ver["inliers"][0] < method.min_inliers and getattr(method, "proposals", 0) and pair.binary:
        matches = ratio_matches(pair, first, second, method.proposal_ratio, method.proposal_max_distance)
        ver = method.verify_candidates(pair, matches, first, second, max_size)
    return ver


def _rounded(points: np.ndarray) -> list:
    return np.round(points, 1).tolist()


def _box(points: np.ndarray) -> list:
    return [round(float(v), 1) for v in (*points.min(axis=0), *points.max(axis=0))]


def _hull(points: np.ndarray) -> list:
    return _rounded(cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64))


# ---------------------------------------------------------------------------------------------------
# CNN


def cnn_evidence(vectors, a: np.ndarray, b: np.ndarray) -> list[dict]:
    """Per row pair (a[k], b[k]) of L2-normalised `vectors`: cosine, and each one's rank among the
    other's neighbours (1 + the number of other images more similar to it than its partner; ties count
    for the partner). vectors: an array, or the EmbeddingChunks a cluster holds (the same by its tasks,
    simbench.distributed.cnn)."""
    if isinstance(vectors, EmbeddingChunks):
        ranks = neighbour_ranks(vectors, np.concatenate([a, b]), np.concatenate([b, a]))
        return _cnn_records(chunk_pair_cosines(vectors, a, b), ranks[: len(a)], ranks[len(a) :])
    v = np.asarray(vectors, np.float32)
    cos = np.einsum("ij,ij->i", v[a], v[b]).astype(np.float64)
    rank_a, rank_b = np.zeros(len(a), np.int64), np.zeros(len(a), np.int64)
    step = max(1, BLOCK_SIMILARITIES // max(len(v), 1))
    for rows, partner, rank in ((a, b, rank_a), (b, a, rank_b)):
        for s in range(0, len(rows), step):
            block = rows[s:s + step]
            sims = v[block] @ v.T
            sims[np.arange(len(block)), block] = -np.inf  # an image is not its own neighbour
            mine = sims[np.arange(len(block)), partner[s:s + step]]
            rank[s:s + step] = 1 + np.count_nonzero(sims > mine[:, None], axis=1)
    return _cnn_records(cos, rank_a, rank_b)


def window_records(feats, a: np.ndarray, b: np.ndarray) -> list[dict | None]:
    """`window_evidence` of row pairs of Embeddings, or of the EmbeddingChunks a cluster holds (only the
    pairs' rows fetched); None per pair without region views."""
    if isinstance(feats, EmbeddingChunks):
        if feats.windows is None:
            return [None] * len(a)
        rows = np.unique(np.concatenate([a, b]))
        return window_evidence(feats.take(rows), feats.take(rows, windows=True), np.searchsorted(rows, a),
                               np.searchsorted(rows, b))
    regions = getattr(feats, "regions", None)
    return window_evidence(feats.vectors, regions, a, b) if regions is not None else [None] * len(a)


def window_evidence(vectors: np.ndarray, regions: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[dict]:
    """Per row pair: the best cosine of either image's vector with a region view of the other
    (Embeddings.regions), whose window it is ("a" or "b") and which (0-based, along the long side)."""
    a_in_b, b_in_a = window_cosines(np.asarray(vectors, np.float32), np.asarray(regions, np.float32), a, b)
    out = []
    for x, y in zip(a_in_b, b_in_a):
        side, sims = ("b", x) if x.max() >= y.max() else ("a", y)
        out.append({"cosine": round(float(sims.max()), 4), "of": side, "index": int(sims.argmax()),
                    "count": len(sims)})
    return out


def _cnn_records(cos: np.ndarray, rank_a: np.ndarray, rank_b: np.ndarray) -> list[dict]:
    return [{"cosine": round(float(c), 4), "rank_a": int(x), "rank_b": int(y)}
            for c, x, y in zip(cos, rank_a, rank_b)]


# ---------------------------------------------------------------------------------------------------
# Linked pairs


def linked_chains(pairs: FusedPairs, wanted: list[tuple[int, int]], floor: float) -> list[list]:
    """For each item pair (x, y) in `wanted`, the direct pairs along the maximum-spanning-forest path from
    x to y, [[x, z, score, method], ...] ([] when the forest does not join them).

    The forest is built as cascade.link builds it: direct pairs (method other than "linked") scoring at
    least `floor`, best first. A direct pair that a chain outscored is "linked" in `pairs`, but it never
    joined the tree either: its ends were joined through stronger pairs before it came up."""
    direct = np.flatnonzero(pairs.method != LINKED)
    n_items = int(max(pairs.a.max(initial=-1), pairs.b.max(initial=-1))) + 1
    tree: dict[int, list[tuple[int, int]]] = {}
    for j, _, _ in spanning_merges(pairs.a[direct], pairs.b[direct], pairs.score[direct], n_items, floor):
        k = int(direct[j])
        x, y = int(pairs.a[k]), int(pairs.b[k])
        tree.setdefault(x, []).append((y, k))
        tree.setdefault(y, []).append((x, k))
    return [_tree_path(tree, pairs, x, y) for x, y in wanted]


def _tree_path(tree: dict, pairs: FusedPairs, x: int, y: int) -> list:
    came = {x: None}
    todo = deque([x])
    while todo and y not in came:
        z = todo.popleft()
        for w, k in tree.get(z, ()):
            if w not in came:
                came[w] = (z, k)
                todo.append(w)
    if y not in came:
        return []
    chain, z = [], y
    while came[z] is not None:
        previous, k = came[z]
        chain.append([previous, z, round(float(pairs.score[k]), 6), str(pairs.method[k])])
        z = previous
    return chain[::-1]


# ---------------------------------------------------------------------------------------------------
# Storage


def to_json(evidence: Evidence) -> str:
    """The records as one compact JSON text: [[a, b, record], ...]."""
    return json.dumps([[a, b, record] for (a, b), record in sorted(evidence.items())], separators=(",", ":"))


def from_json(text: str) -> Evidence:
    return {(int(a), int(b)): record for a, b, record in json.loads(text)}
