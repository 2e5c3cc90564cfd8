"""The keypoint stage on a cluster with no step holding all descriptors (issue 13, item 4), equal to
KeypointMethod.score_pairs bit for bit.

The client keeps per-image tables only (descriptor offsets, image sizes); the descriptors stay on the
workers from start to end:

1. ``load_keypoints``: tasks read chunks of consecutive images from the --index shards (find's
   pipeline.load_features, per chunk; each task opens only the shards its images are in, named by the
   manifests the client gives it); the client gathers one small summary per image (why it is left
   out, or its row count) and the chunks stay on the workers (``KeypointChunks``). ``read_keypoints`` does
   the same for the runner, whose extraction tasks write a store of their own (simbench.run.
   features_on_workers); both through ``read_chunks``, the CNN stage's reader too. ``scatter_keypoints``
   makes the same chunks from features in memory (tests): scattered data cannot be computed again if its
   worker dies.
2. The multi-index self-join of match.py, on the chunks' words; each join task keeps only its descriptor
   pairs between different images (``between_images``). Once their number is known, each join's output
   is split by image pair into partitions sized to the task budget, and each partition (all descriptor
   pairs of its image pairs) gives its image pairs' bag counts (``bag_counts``: distinct matched features
   per side need all of a pair's descriptor pairs, which one partition has).
3. Shared content: a descriptor's df (distinct other images it matches) is the number of distinct
   (row, other image) keys; each key belongs to one image pair, hence to one partition, so the
   partitions' counts per row add up to df, summed per chunk of rows.
4. The candidates for verification are the best max_pairs_verified eligible pairs: every partition
   sends its best that many (bag, pair key), the client finds the cut, every partition takes its pairs
   above it. They are verified in batches: a batch gets its pairs' descriptor pairs from their partition
   and the working-scale points and df of its images' rows from the chunks holding them (rows keep
   their order, so ties break alike), and scores its pairs (KeypointMethod.score_verified). Only the
   passing pairs' values come back, sorted as in one process (best bag score first).

Without verification, the bag scores of all image pairs are the result, and come back as they are.
Float descriptors (SIFT: a ratio test per image pair) and matchers without a bucket join (gpu, faiss,
multi-probe layouts) are matched in the client after gathering the chunks; a warning says so.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import operator
import time
from dataclasses import dataclass

import numpy as np

from simbench.distributed.match import (MIN_BATCH_MATCHES, _batches, _join, _split, _threads, _token, join_sizes,
                                        task_budget)
from simbench.find.index import PER_KEYPOINT, FeatureStore, _signature, consistent_signatures, join_features
from simbench.match.exact import ExactMatcher
from simbench.match.lsh import MultiIndexHashMatcher, piece_masks
from simbench.methods.keypoints import (_mirror_flags, _working_scale_points, bag_counts, bag_score,
                                        between_images, burstiness_weights, relative_points, unique_counts,
                                        unique_values, verify_correspondences)
from simbench.types import KeypointSets, ScoredPairs, bytes_to_words

log = logging.getLogger("simbench")

#: Bytes a loading task holds per descriptor row (the records, the joined chunk and its words).
LOAD_ROW_BYTES = 512
#: Bytes a partition task holds per descriptor pair (five int64 columns, and bag_counts' sorted keys).
PAIR_BYTES = 160
#: Rows calibrated_permutation samples (simbench.match.lsh; the plan from a sample must see the same rows).
CALIBRATION_SAMPLE = 4096


# ---------------------------------------------------------------------------------------------------------
# Keypoints held by the workers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class KeypointChunks:
    """A KeypointSets of N images held by the workers, in chunks of consecutive images.

    futures[c] holds images first[c]..first[c+1]-1; offsets (N + 1) and image_sizes (N, 2) are the
    per-image tables the client keeps. What the stage's features are in `find` on a cluster.
    """

    client: object
    futures: list
    first: np.ndarray
    offsets: np.ndarray
    image_sizes: np.ndarray
    binary: bool

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def row_bounds(self) -> np.ndarray:
        """First descriptor row of each chunk, and the total (chunks + 1)."""
        return self.offsets[self.first]

    def chunk_of(self, images: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.first, images, "right") - 1

    def take(self, images) -> KeypointSets:
        """The features of these images (sorted, distinct), fetched from the workers holding them."""
        images = unique_values(np.asarray(images, np.int64))
        chunk = self.chunk_of(images)
        parts = [self.client.submit(take_images, self.futures[c], images[chunk == c] - self.first[c])
                 for c in np.unique(chunk).tolist()]
        return concat_keypoints(self.client.gather(parts))

    def gather(self) -> KeypointSets:
        """All the features in this process (for what has no task form)."""
        return concat_keypoints(self.client.gather(self.futures))


def take_images(features: KeypointSets, images: np.ndarray) -> KeypointSets:
    """The images `images` (ascending positions) of `features`, their rows in order."""
    images = np.asarray(images, np.int64)
    lo, hi = features.offsets[images], features.offsets[images + 1]
    rows = np.repeat(lo - np.cumsum(hi - lo) + (hi - lo), hi - lo) + np.arange(int((hi - lo).sum()))
    return _with_rows(features, rows, np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64),
                      features.image_sizes[images])


def concat_keypoints(parts: list[KeypointSets]) -> KeypointSets:
    """One KeypointSets of the parts' images, in order."""
    if not parts:
        return join_features([], "keypoints")[0]
    if len(parts) == 1:
        return parts[0]
    counts = np.concatenate([np.diff(p.offsets) for p in parts])
    fields = {}
    for f in dataclasses.fields(parts[0]):
        value = getattr(parts[0], f.name)
        if f.name in PER_KEYPOINT and value is not None:
            fields[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
    return dataclasses.replace(parts[0], **fields, offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                               image_sizes=np.concatenate([p.image_sizes for p in parts]))


def _with_rows(features: KeypointSets, rows: np.ndarray, offsets: np.ndarray, image_sizes: np.ndarray):
    fields = {name: getattr(features, name)[rows] for name in PER_KEYPOINT
              if getattr(features, name, None) is not None}
    return dataclasses.replace(features, **fields, offsets=offsets, image_sizes=image_sizes)


def scatter_keypoints(client, features: KeypointSets, chunk_rows: int | None = None) -> KeypointChunks:
    """Features in this process sent to the workers in chunks of whole images, of about chunk_rows rows
    (None: as many as a quarter of the task budget holds)."""
    n = len(features)
    per_row = max(1, features.descriptors[:1].nbytes) + 64
    budget_rows = int(chunk_rows or max(1, task_budget(client) // (4 * per_row)))
    first = [0]
    while first[-1] < n:  # whole images, at least one per chunk
        end = int(np.searchsorted(features.offsets, features.offsets[first[-1]] + budget_rows, "right")) - 1
        first.append(min(n, max(end, first[-1] + 1)))
    chunks = [take_images(features, np.arange(s, e)) for s, e in zip(first[:-1], first[1:])]
    futures = client.scatter(chunks, broadcast=False, hash=False) if chunks else []
    return KeypointChunks(client, futures, np.array(first, np.int64), np.asarray(features.offsets, np.int64),
                          np.asarray(features.image_sizes, np.int64).reshape(-1, 2), bool(features.binary))


def _read_records(root: str, section: str, pkey: str, kind: str, manifests: list[dict], digests: list[str],
                  local: list[int], excluded: dict[int, str]) -> list:
    """pipeline.load_features' records of a run of items, read here from the index shards that the
    manifests given (FeatureStore.manifests_of those items) name: per item its features (a dict of
    arrays) or why it has none."""
    per_source = FeatureStore(root).limit_to(section, pkey, manifests).get_many(section, pkey, digests, kind)
    records = []
    for k, (digest, position) in enumerate(zip(digests, local)):
        entries = per_source.get(digest, [])
        entry = entries[position] if position < len(entries) else "features missing from the index"
        records.append(excluded.get(k, entry))
    return records


def _summaries(records: list) -> list:
    """Per record: its reason (a string), or (signature, rows, image size, binary)."""
    return [r if isinstance(r, str) else (_signature(r), len(r["descriptors"]), np.asarray(r["image_size"]),
                                          bool(r["binary"])) for r in records]


def _join_records(records: list, keep: list[int]) -> KeypointSets:
    return join_features([records[k] for k in keep], "keypoints")[0]


def load_keypoints(client, stage, items, source_digests, store: FeatureStore, exclude: dict[int, str] | None,
                   feature_key: str):
    """pipeline.load_features for a keypoint stage on a cluster: (KeypointChunks, rows, reasons), the same
    rows and reasons, the chunks read by the workers from the store (a folder they all see)."""
    from simbench.find.pipeline import local_positions  # (pipeline imports this module)

    return read_keypoints(client, store, stage.section, feature_key, source_digests, local_positions(items),
                          exclude, rows_per_image(stage.extractor))


def rows_per_image(extractor) -> int:
    """Descriptor rows per image at most, from the extractor's settings (the counts are known only once read)."""
    return int(getattr(extractor, "max_features", 1000)) * (2 if getattr(extractor, "mirror", False) else 1)


def read_keypoints(client, store: FeatureStore, section: str, pkey: str, digests, local: list[int],
                   exclude: dict[int, str] | None, max_rows: int):
    """(KeypointChunks, rows, reasons) of items whose features the store holds: item k is entry local[k]
    of the record of digests[k] (a list per source file); rows: the items with features; reasons: why
    the others have none (exclude: {item: reason} of items to leave out). Tasks read chunks of about
    the task budget's items (max_rows each at most); the chunks stay on the workers."""
    per_task = max(1, task_budget(client) // (LOAD_ROW_BYTES * max(max_rows, 1)))
    futures, first, kept, reasons, summaries = read_chunks(client, store, section, pkey, "keypoints", digests, local,
                                                           exclude, per_task, _summaries, _join_records, "kp")
    counts = np.array([summaries[k][1] for k in kept], np.int64)
    sizes = np.array([summaries[k][2] for k in kept], np.int64).reshape(-1, 2)
    binary = bool(summaries[kept[0]][3]) if len(kept) else True
    chunks = KeypointChunks(client, futures, first, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), sizes,
                            binary)
    return chunks, kept, reasons


def read_chunks(client, store: FeatureStore, section: str, pkey: str, kind: str, digests, local: list[int],
                exclude: dict[int, str] | None, per_task: int, summarise, join, prefix: str):
    """The reading of read_keypoints and cnn.read_embeddings: tasks read runs of per_task items from the
    store, each only its items' shards; the client gathers one summary per item (summarise: per record
    its reason, or a tuple that starts with its signature), and the kept items' records are joined on
    the workers (join) into chunks of consecutive kept items, which stay there.
    Returns (the chunks' futures, each chunk's first kept item and their number, kept items, reasons,
    summaries)."""
    exclude = exclude or {}
    n = len(digests)
    starts = list(range(0, n, per_task))
    tok = _token()
    records = []
    for s in starts:
        mine = list(digests[s : s + per_task])
        # A task opens only the shards of its own items: the client lists and reads the manifests once.
        manifests = store.manifests_of(section, pkey, mine)
        records.append(client.submit(_read_records, str(store.root), section, pkey, kind, manifests, mine,
                                     local[s : s + per_task],
                                     {k - s: why for k, why in exclude.items() if s <= k < s + per_task},
                                     key=f"{prefix}-read-{s}-{tok}", retries=2))
    summaries = [x for part in client.gather([client.submit(summarise, r) for r in records]) for x in part]
    reasons = {k: x for k, x in enumerate(summaries) if isinstance(x, str)}
    signatures = [None if isinstance(x, str) else x[0] for x in summaries]
    for k, problem in enumerate(consistent_signatures(signatures)):
        if problem:
            reasons[k] = problem
    kept = np.array([k for k in range(n) if k not in reasons], np.int64)
    futures, first = [], [0]
    for s, future in zip(starts, records):
        mine = kept[(kept >= s) & (kept < s + per_task)]
        if len(mine):
            futures.append(client.submit(join, future, (mine - s).tolist(), key=f"{prefix}-join-{s}-{tok}"))
            first.append(first[-1] + len(mine))
    return futures, np.array(first, np.int64), kept, reasons, summaries


# ---------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------


class _Owners:
    """owners[rows] from the per-image offsets (the image of every row would be an array of all rows)."""

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets

    def __getitem__(self, rows):
        return np.searchsorted(self.offsets, rows, "right") - 1


def _row_counts(features: KeypointSets) -> np.ndarray:
    return np.diff(features.offsets)


def _offsets(*counts) -> np.ndarray:
    return np.cumsum(np.concatenate([np.zeros(1, np.int64), *counts])).astype(np.int64)


def offsets_on_workers(client, chunks: KeypointChunks, tok: str):
    """A future of chunks.offsets computed from the chunks, not scattered: a task's result can be
    computed again when the worker holding it dies, scattered data cannot (and dask's active memory
    manager keeps one copy of broadcast data)."""
    counts = [client.submit(_row_counts, f, key=f"kp-rowcounts-{c}-{tok}") for c, f in enumerate(chunks.futures)]
    return client.submit(_offsets, *counts, key=f"kp-offsets-{tok}")


def _words(features: KeypointSets) -> np.ndarray:
    return bytes_to_words(features.descriptors)


def _rows_of(words: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return words[rows]


def plan_from_sample(client, matcher: MultiIndexHashMatcher, words: list, bounds: np.ndarray, radius: int):
    """matcher.plan(all words, radius) from the rows its calibration samples only: the same rows in the
    same order give the same bit statistics, hence the same permutation."""
    n = int(bounds[-1])
    take = np.arange(n)
    if matcher.permutation == "calibrated" and n > CALIBRATION_SAMPLE:
        take = np.sort(np.random.default_rng(matcher.seed).choice(n, size=CALIBRATION_SAMPLE, replace=False))
    elif matcher.permutation != "calibrated":
        take = take[:1]  # the data does not matter: one row gives the layout its width
    chunk = np.searchsorted(bounds, take, "right") - 1
    parts = [client.submit(_rows_of, words[c], take[chunk == c] - bounds[c]) for c in np.unique(chunk).tolist()]
    return matcher.plan(np.concatenate(client.gather(parts)), radius)


def _join_between(bits, earlier, radius, n_keys, offsets, *parts) -> dict:
    """One partition's bucket join (match._join), kept as descriptor pairs between different images."""
    pairs, compared = _join(bits, earlier, radius, n_keys, *parts)
    matches = between_images(pairs, _Owners(offsets))
    return {"ra": matches["ra"], "rb": matches["rb"], "dist": matches["dist"], "compared": compared}


def _size(matches: dict) -> tuple[int, int]:
    return len(matches["ra"]), int(matches["compared"])


def pair_partition(ia: np.ndarray, ib: np.ndarray, n_images: int, partitions: int) -> np.ndarray:
    """Partition of each image pair (Fibonacci hashing of the pair key, so neighbouring images spread)."""
    key = (ia.astype(np.uint64) * np.uint64(n_images) + ib.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
    return ((key >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64)


def _split_pairs(matches: dict, offsets: np.ndarray, partitions: int) -> list:
    owners = _Owners(offsets)
    ra, rb, dist = matches["ra"], matches["rb"], matches["dist"]
    part = pair_partition(owners[ra], owners[rb], len(offsets) - 1, partitions)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    return [(ra[order[lo:hi]], rb[order[lo:hi]], dist[order[lo:hi]]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _pair_counts(offsets: np.ndarray, method, *parts) -> dict:
    """One image-pair partition: all descriptor pairs of its image pairs, their bag counts and scores."""
    owners = _Owners(offsets)
    parts = parts or [(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32))]  # < 2 descriptors
    ra = np.concatenate([p[0] for p in parts]).astype(np.int64)
    rb = np.concatenate([p[1] for p in parts]).astype(np.int64)
    dist = np.concatenate([p[2] for p in parts])
    matches = {"ra": ra, "rb": rb, "dist": dist, "ia": owners[ra], "ib": owners[rb]}
    counts = bag_counts(matches, owners, np.diff(offsets))
    bag = bag_score(counts["matched_a"], counts["matched_b"], counts["n_a"], counts["n_b"], method.score)
    # The owners follow from the rows: kept as rows and distances only (this stays in worker memory).
    return {"matches": {k: matches[k] for k in ("ra", "rb", "dist")}, "counts": counts, "bag": bag}


def _matches(part: dict, offsets: np.ndarray) -> dict:
    """A partition's descriptor pairs with their images (as between_images gives them)."""
    owners, m = _Owners(offsets), part["matches"]
    return {**m, "ia": owners[m["ra"]], "ib": owners[m["rb"]]}


def _counts_of(part: dict) -> tuple[dict, np.ndarray]:
    return part["counts"], part["bag"]


def _best_eligible(part: dict, method, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The partition's best max_pairs_verified eligible pairs: (bag scores, pair keys)."""
    counts, bag = part["counts"], part["bag"]
    sel = np.flatnonzero(method.eligible(counts, bag))
    key = counts["a"][sel] * n_images + counts["b"][sel]
    best = np.lexsort((key, -bag[sel]))[: method.max_pairs_verified]
    return bag[sel][best], key[best]


def _candidates(part: dict, method, n_images: int, cut_bag: float, cut_key: int) -> dict:
    """The partition's eligible pairs at or above the cut (bag score down, pair key up)."""
    counts, bag = part["counts"], part["bag"]
    key = counts["a"] * n_images + counts["b"]
    sel = method.eligible(counts, bag) & ((bag > cut_bag) | ((bag == cut_bag) & (key <= cut_key)))
    return {"bag": bag[sel], **{k: v[sel] for k, v in counts.items()}}


def _degrees(part: dict, offsets: np.ndarray, bounds: np.ndarray) -> list:
    """Per chunk of rows: (rows, count) of this partition's distinct (row, other image) keys."""
    m, n = _matches(part, offsets), np.int64(max(len(offsets) - 1, 1))
    keys = unique_values(np.concatenate([m["ra"] * n + m["ib"], m["rb"] * n + m["ia"]]))
    rows, counts = unique_counts(keys // n)
    cut = np.searchsorted(rows, bounds)
    return [(rows[lo:hi], counts[lo:hi]) for lo, hi in zip(cut[:-1], cut[1:])]


def _degree_chunk(first: int, size: int, *parts) -> np.ndarray:
    """df of a chunk's rows: the partitions' counts summed (image_frequency over all descriptor pairs)."""
    df = np.zeros(size, np.int64)
    for rows, counts in parts:
        df[rows - first] += counts
    return df


def _take_matches(part: dict, keys: np.ndarray, offsets: np.ndarray) -> dict:
    m = _matches(part, offsets)
    sel = np.isin(m["ia"] * (len(offsets) - 1) + m["ib"], keys)
    return {k: v[sel] for k, v in m.items()}


def _image_rows(features: KeypointSets, df: np.ndarray, images: np.ndarray, max_size) -> tuple:
    """Working-scale points, mirror flags, df, row counts and relative points of these images' rows (images:
    positions in the chunk)."""
    sub = take_images(features, images)
    lo, hi = features.offsets[images], features.offsets[images + 1]
    rows = np.repeat(lo - np.cumsum(hi - lo) + (hi - lo), hi - lo) + np.arange(int((hi - lo).sum()))
    return (_working_scale_points(sub, max_size), _mirror_flags(sub), df[rows], np.diff(sub.offsets),
            relative_points(sub))


def _verify_batch(method, n_images, images, image_offsets, candidates, matches, *pieces) -> dict:
    """Verify and score one batch of candidate pairs (KeypointMethod._verified on just its rows)."""
    points = np.concatenate([p[0] for p in pieces]) if pieces else np.empty((0, 2), np.float32)
    mirrored = None if not pieces or pieces[0][1] is None else np.concatenate([p[1] for p in pieces])
    df = np.concatenate([p[2] for p in pieces]) if pieces else np.empty(0, np.int64)
    counts = np.concatenate([p[3] for p in pieces]) if pieces else np.empty(0, np.int64)
    relative = np.concatenate([p[4] for p in pieces]) if pieces else np.empty((0, 2))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def local(rows, owners):  # global row -> row of this batch (order kept: images ascending)
        at = np.searchsorted(images, owners)
        return offsets[at] + rows - image_offsets[at]

    sub = {"ra": local(matches["ra"], matches["ia"]), "rb": local(matches["rb"], matches["ib"]),
           "dist": matches["dist"], "ia": matches["ia"], "ib": matches["ib"]}
    a, b = candidates["a"], candidates["b"]
    ver = verify_correspondences(points, mirrored, n_images, sub, a, b, method.transform, method.ransac_threshold)
    kept, fields = method.score_verified(ver, np.searchsorted(images, a), np.searchsorted(images, b),
                                         candidates["n_a"], candidates["n_b"],
                                         burstiness_weights(df, method.burstiness), points, offsets, relative)
    return {**{k: v[kept] for k, v in candidates.items()}, **fields}


def _task_join(matcher):
    """The multi-index matcher the task join runs (exact matchers give the same pairs), or None."""
    if isinstance(matcher, MultiIndexHashMatcher):
        return matcher
    if isinstance(matcher, ExactMatcher):
        return MultiIndexHashMatcher()
    return None


def score_chunks(client, method, chunks: KeypointChunks, stats: dict | None = None) -> ScoredPairs:
    """method.score_pairs(chunks.gather()) with every step as tasks (module docstring): the same
    ScoredPairs (only the *_s timings differ). stats, when given, gets the sizes used."""
    matcher = _task_join(method.matcher)
    radius = method.distance_threshold
    if not chunks.binary or matcher is None or radius < 0:
        log.warning("keypoints: %s descriptors are matched in this process (no task form): all of them are "
                    "gathered here", "float" if not chunks.binary else f"{type(method.matcher).__name__}")
        return method.score_pairs(chunks.gather())
    started = time.perf_counter()
    n_images, m = len(chunks), chunks.n_rows
    bounds = chunks.row_bounds()
    tok = _token()
    offsets = offsets_on_workers(client, chunks, tok)
    words = [client.submit(_words, f, key=f"kp-words-{c}-{tok}") for c, f in enumerate(chunks.futures)]
    joined, compared = [], 0
    if m >= 2:
        layout, perm = plan_from_sample(client, matcher, words, bounds, radius)
        if not layout.joins_by_buckets:
            log.warning("keypoints: radius %d has no bucket join: descriptors matched in this process", radius)
            return method.score_pairs(chunks.gather())
        joined = self_join_between(client, words, bounds, layout, perm, radius, offsets, tok, stats)
    del words
    sizes = client.gather([client.submit(_size, j, key=f"kp-size-{i}-{tok}") for i, j in enumerate(joined)])
    n_pairs_total = sum(s for s, _ in sizes)
    compared = sum(c for _, c in sizes)
    partitions = max(2 * _threads(client), math.ceil(n_pairs_total * PAIR_BYTES / task_budget(client)))
    splits = [client.submit(_split_pairs, j, offsets, partitions, key=f"kp-split-{i}-{tok}")
              for i, j in enumerate(joined)]
    del joined
    parts = [client.submit(_pair_counts, offsets, method,
                           *[client.submit(operator.getitem, s, q, key=f"kp-take-{i}-{q}-{tok}")
                             for i, s in enumerate(splits)], key=f"kp-pairs-{q}-{tok}")
             for q in range(partitions)]
    del splits
    paired = time.perf_counter()
    extra = {"descriptors": m, "comparisons": m * (m - 1) // 2, "descriptor_pairs": n_pairs_total,
             "descriptor_pairs_s": paired - started}
    if stats is not None:
        stats.update(chunks=len(chunks.futures), pair_partitions=partitions, compared=compared)
    if not method.verify:
        counts, bag = _merge_counts(client.gather([client.submit(_counts_of, p, key=f"kp-counts-{q}-{tok}")
                                                   for q, p in enumerate(parts)]))
        extra.update(bags_s=time.perf_counter() - paired, **{k: v for k, v in counts.items() if k not in ("a", "b")})
        return ScoredPairs(counts["a"], counts["b"], bag, extra=extra)
    best = client.gather([client.submit(_best_eligible, p, method, n_images, key=f"kp-best-{q}-{tok}")
                          for q, p in enumerate(parts)])
    bags = np.concatenate([b for b, _ in best])
    keys = np.concatenate([k for _, k in best])
    chosen = np.lexsort((keys, -bags))[: method.max_pairs_verified]
    cut = (float(bags[chosen[-1]]), int(keys[chosen[-1]])) if len(chosen) else (np.inf, -1)
    del best, bags, keys
    extra["bags_s"] = time.perf_counter() - paired
    verifying = time.perf_counter()
    found = _verify(client, method, chunks, parts, cut, bounds, offsets, tok, stats)
    order = np.lexsort((found["a"] * n_images + found["b"], -found["bag"]))
    found = {k: v[order] for k, v in found.items()}
    out = dict(extra)
    for k in ("n_matches", "matched_a", "matched_b", "n_a", "n_b"):
        out[k] = found[k]
    out.update(bag_score=found["bag"], **{k: found[k] for k in ("inliers", "flipped", "evidence")},
               **{k: found[k] for k in found if k not in _NOT_STATS}, verified=len(chosen),
               verify_s=time.perf_counter() - verifying)
    return ScoredPairs(found["a"], found["b"], found["score"], extra=out)


_NOT_STATS = {"a", "b", "bag", "score", "n_matches", "matched_a", "matched_b", "n_a", "n_b", "inliers", "flipped",
              "evidence"}


def self_join_between(client, words: list, bounds: np.ndarray, layout, perm, radius: int, offsets, tok,
                      stats: dict | None = None) -> list:
    """match.self_join's pieces x key partitions on word chunks held by the workers; every join's
    descriptor pairs between images stay there (futures)."""
    n, n_words = int(bounds[-1]), len(perm) // 64
    _, partitions, window = join_sizes(client, n, n_words)
    if stats is not None:
        stats.update(pieces=layout.pieces, partitions=partitions, window=window,
                     chunk_rows=int(np.diff(bounds).max()))
    masks = piece_masks(perm, layout, n_words)
    joined = []
    for first in range(0, layout.pieces, window):  # a window of pieces at a time bounds the shuffle
        futures = []
        for p in range(first, min(first + window, layout.pieces)):
            bits = perm[layout.starts[p] : layout.starts[p] + layout.widths[p]].astype(np.int64)
            splits = [client.submit(_split, w, int(s), bits, partitions, key=f"kp-mih-split-{p}-{c}-{tok}")
                      for c, (w, s) in enumerate(zip(words, bounds[:-1]))]
            for q in range(partitions):
                parts = [client.submit(operator.getitem, sp, q, key=f"kp-mih-part-{p}-{c}-{q}-{tok}")
                         for c, sp in enumerate(splits)]
                futures.append(client.submit(_join_between, bits, masks[:p], radius, 1 << int(layout.widths[p]),
                                             offsets, *parts, key=f"kp-mih-join-{p}-{q}-{tok}"))
        from distributed import wait

        wait(futures)  # the window's shuffled rows are released before the next window's
        joined += futures
    return joined


def _merge_counts(parts: list) -> tuple[dict, np.ndarray]:
    """The partitions' bag counts as one table in pair-key order (as bag_counts gives it)."""
    counts = {k: np.concatenate([c[k] for c, _ in parts]) for k in parts[0][0]}
    bag = np.concatenate([b for _, b in parts])
    order = np.lexsort((counts["b"], counts["a"]))
    return {k: v[order] for k, v in counts.items()}, bag[order]


def _verify(client, method, chunks: KeypointChunks, parts: list, cut, bounds, offsets, tok, stats) -> dict:
    """The candidates above the cut verified in batches of about the task budget's matches; the passing
    pairs' fields, unsorted."""
    n_images = len(chunks)
    degree_parts = [client.submit(_degrees, p, offsets, bounds, key=f"kp-df-{q}-{tok}") for q, p in enumerate(parts)]
    degrees = [client.submit(_degree_chunk, int(bounds[c]), int(bounds[c + 1] - bounds[c]),
                             *[client.submit(operator.getitem, d, c, key=f"kp-dfp-{q}-{c}-{tok}")
                               for q, d in enumerate(degree_parts)], key=f"kp-dfc-{c}-{tok}")
               for c in range(len(chunks.futures))]
    del degree_parts
    candidates = client.gather([client.submit(_candidates, p, method, n_images, *cut, key=f"kp-cand-{q}-{tok}")
                                for q, p in enumerate(parts)])
    total = sum(int(c["n_matches"].sum()) for c in candidates)
    # ~100 bytes per match in a task (arrays, points, correspondences); about four batches per thread
    per_batch = min(task_budget(client) // 100, max(MIN_BATCH_MATCHES, total // (4 * _threads(client)) + 1))
    max_size = getattr(method.extractor, "max_size", None)
    futures, n_batches = [], 0
    for q, (part, cand) in enumerate(zip(parts, candidates)):
        for k0, k1 in (_batches(cand["n_matches"], per_batch) if len(cand["a"]) else []):
            batch = {k: v[k0:k1] for k, v in cand.items()}
            images = unique_values(np.concatenate([batch["a"], batch["b"]]))
            chunk = chunks.chunk_of(images)
            pieces = [client.submit(_image_rows, chunks.futures[c], degrees[c], images[chunk == c] - chunks.first[c],
                                    max_size, key=f"kp-rows-{q}-{k0}-{c}-{tok}") for c in np.unique(chunk).tolist()]
            matches = client.submit(_take_matches, part, batch["a"] * n_images + batch["b"], offsets,
                                    key=f"kp-matches-{q}-{k0}-{tok}")
            futures.append(client.submit(_verify_batch, method, n_images, images, chunks.offsets[images], batch,
                                         matches, *pieces, key=f"kp-ransac-{q}-{k0}-{tok}"))
            n_batches += 1
    if stats is not None:
        stats.update(batches=n_batches)
    found = client.gather(futures)
    if not found:  # no candidate: the fields of an empty batch
        empty = {k: v[:0] for k, v in candidates[0].items()}
        found = [_verify_batch(method, n_images, np.empty(0, np.int64), np.empty(0, np.int64), empty,
                               {"ra": empty["a"], "rb": empty["a"], "dist": empty["a"], "ia": empty["a"],
                                "ib": empty["a"]})]
    return {k: np.concatenate([f[k] for f in found]) for k in found[0]}


def local_keypoints(stage_features: tuple, items: np.ndarray) -> tuple:
    """(KeypointChunks, rows, reasons) -> (KeypointSets, rows, reasons) of just these items (those with
    features), fetched from the workers: what per-pair evidence of a few pairs needs."""
    chunks, rows, reasons = stage_features
    wanted = np.flatnonzero(np.isin(rows, items))
    return (chunks.take(wanted) if len(wanted) else join_features([], "keypoints")[0]), rows[wanted], reasons
