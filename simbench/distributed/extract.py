"""Extraction as Dask tasks over chunks of files.

find: each task reads one chunk of files (images decoded, PDF placements rendered into a scratch folder of
its own worker), extracts every stage's features and writes them to the --index store as one shard per
stage, the sources record last (simbench.find.pipeline.store_batch: the same code as in-process). A re-run
skips the files the store holds (the client checks before submitting); a task tried again (its worker
killed) finds the shards its earlier attempt wrote by their tag and returns at once when they hold its
files, reading no other manifest. The client then reads every record from the store.

runner: each task extracts one chunk of the dataset's paths and returns per-image records, joined in order
on the client (simbench.find.index.split_features / join_features); or, for keypoints and CNN embeddings,
writes them to a store the workers share, one record per path, from which the workers read them for
matching (``extract_into_store``; simbench.run.features_on_workers).

Features are per image, so they are the same whatever the chunks; extractors work in one process inside a
task (Dask workers are daemon processes, which cannot start pools, and each already has its core).
"""
from __future__ import annotations

import copy
import hashlib
import secrets
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from simbench.features.base import Extracted, Extractor
from simbench.find.index import FeatureStore, join_features, split_features
from simbench.types import Skipped

#: The reason stored for an image the extractor gave no features without skipping it (as find stores it).
NO_FEATURES = "no features"

#: Per worker process: extractors by (type, parameters), so a model is loaded once per worker, not per task.
_EXTRACTORS: dict[tuple, Extractor] = {}


def in_task(extractor: Extractor) -> Extractor:
    """This worker's extractor with these parameters, set to work in the task's own process."""
    from simbench.find.index import params_key

    key = (type(extractor).__qualname__, params_key(extractor.params()))
    if key not in _EXTRACTORS:
        extractor = copy.copy(extractor)
        if hasattr(extractor, "workers"):  # the CNN's 0 and the others' 1 both mean "in this process"
            extractor.workers = 0 if extractor.kind == "embedding" else 1
        _EXTRACTORS[key] = extractor
    return _EXTRACTORS[key]


def gather_with_progress(client, futures: list, desc: str, progress: bool, unit: str = "task") -> list:
    """Results of the futures in submission order, with a terminal progress bar as they finish; the first
    task that failed beyond its retries raises here with its own error."""
    from distributed import as_completed

    results = {}
    order = {f.key: k for k, f in enumerate(futures)}
    with tqdm(total=len(futures), desc=desc, unit=unit, disable=not progress or None) as bar:
        # On this client's loop: as_completed takes the default client's, and a future lost with its worker
        # and waited on again from another loop fails ("bound to a different event loop").
        for future in as_completed(futures, loop=client.loop):
            results[order[future.key]] = future.result()
            bar.update()
    return [results[k] for k in range(len(futures))]


# ---------------------------------------------------------------------------------------------------
# find: chunks of files -> index shards


def extract_on_cluster(cluster, files: Sequence[Path], digests: Sequence[str], stages, store: FeatureStore,
                       options, batch: int, progress: bool) -> None:
    """Read and extract `files` on the cluster into `store` (a folder every worker sees), in chunks of
    cluster.files_per_task files (default `batch`, find's index_batch: the in-process shard size)."""
    from simbench.find.cascade import Stage

    if not files:
        return
    if store.root is None:
        raise ValueError("extraction on a cluster needs an on-disk store (workers write its shards)")
    size = cluster.files_per_task or batch
    # Stages without their matchers: only what extraction needs travels to the workers.
    shipped = [Stage(s.name, s.extractor, None, s.signal) for s in stages if not s.on_demand]
    futures = [cluster.client.submit(extract_chunk, [str(f) for f in files[s:s + size]], list(digests[s:s + size]),
                                     shipped, str(store.root), options, secrets.token_hex(6), pure=False,
                                     retries=cluster.retries)
               for s in range(0, len(files), size)]
    if progress:
        print(f"extracting {len(files)} files in {len(futures)} Dask tasks", flush=True)
    gather_with_progress(cluster.client, futures, "extracting (dask)", progress)
    store.reload()


def extract_chunk(files: list[str], digests: list[str], stages, root: str, options, tag: str) -> int:
    """Task: one chunk of files into the store, its shards tagged `tag` (one per task, the same in every
    attempt); returns its number of images (0 when an earlier attempt stored them)."""
    from simbench.find.pipeline import index_sections, sources_key, store_batch
    from simbench.find.sources import read_sources

    store = FeatureStore(root, shard_tag=tag)
    sections = index_sections(stages, options)
    # The client submits only files it found unstored: what may hold them now is an earlier attempt of this task.
    for section, pkey, _ in sections:
        store.limit_to(section, pkey, store.own_manifests(section, pkey))
    status = [store.check(section, pkey, digests, kind) for section, pkey, kind in sections]  # once per section
    if all(found.get(d, "absent") is None for found in status for d in digests):
        return 0
    stages = [copy.copy(s) for s in stages]
    for s in stages:
        s.extractor = in_task(s.extractor)
    with tempfile.TemporaryDirectory(prefix="simbench-task-") as work:  # PDF renderings, gone after the task
        records = read_sources([Path(f) for f in files], digests, Path(work), options, workers=1)
        store_batch(records, digests, stages, store, sources_key(options), progress=False)
    return sum(len(r.images) for r in records)


# ---------------------------------------------------------------------------------------------------
# runner: chunks of paths -> feature rows


def extract_paths(cluster, extractor: Extractor, paths: Sequence[Path], progress: bool,
                  chunk: int = 256) -> Extracted:
    """extractor.extract(paths) as Dask tasks of `chunk` paths (cluster.files_per_task when set)."""
    size = cluster.files_per_task or chunk
    futures = [cluster.client.submit(extract_rows, extractor, [str(p) for p in paths[s:s + size]], pure=False,
                                     retries=cluster.retries)
               for s in range(0, len(paths), size)]
    parts = gather_with_progress(cluster.client, futures, "extracting (dask)", progress)
    records = [r for part, _ in parts for r in part]
    features, rows = join_features(records, extractor.kind)
    return Extracted(features, np.asarray(rows, np.int64), [s for _, skipped in parts for s in skipped])


def extract_rows(extractor: Extractor, paths: list[str]) -> tuple[list, list]:
    """Task: (per path its features as one small record, or None; the skipped entries)."""
    extracted = in_task(extractor).extract([Path(p) for p in paths])
    return split_features(extracted.features, extracted.rows, len(paths)), extracted.skipped


def path_keys(paths: Sequence[Path]) -> list[str]:
    """A key per input position for a runner's store (position and path: the same path twice is two inputs)."""
    return [hashlib.sha256(f"{k}\n{p}".encode("utf-8", "surrogateescape")).hexdigest() for k, p in enumerate(paths)]


def extract_into_store(cluster, extractor: Extractor, paths: Sequence[Path], keys: list[str], store: FeatureStore,
                       section: str, pkey: str, progress: bool, chunk: int = 256) -> list:
    """extractor.extract(paths) as Dask tasks of `chunk` paths (cluster.files_per_task when set), each
    writing its chunk to `store` (a folder the workers share) as one shard: per path (keys[k]) a list of
    one entry, its features or why it has none. Returns the skipped inputs, in order; the features stay
    in the store. A task tried again finds the shard its earlier attempt stored by its tag, as in find."""
    if store.root is None:
        raise ValueError("extraction into a store on a cluster needs an on-disk store (workers write its shards)")
    size = cluster.files_per_task or chunk
    futures = [cluster.client.submit(store_rows, extractor, [str(p) for p in paths[s:s + size]], keys[s:s + size],
                                     str(store.root), section, pkey, secrets.token_hex(6), pure=False,
                                     retries=cluster.retries)
               for s in range(0, len(paths), size)]
    parts = gather_with_progress(cluster.client, futures, "extracting (dask)", progress)
    store.reload()
    return [s for skipped in parts for s in skipped]


def store_rows(extractor: Extractor, paths: list[str], keys: list[str], root: str, section: str, pkey: str,
               tag: str) -> list[Skipped]:
    """Task: one chunk of paths extracted into the store (as pipeline.extract_into_store does for find's
    files), its shard tagged `tag` (the same in every attempt); returns its skipped inputs (when an
    earlier attempt stored the chunk: the paths stored with a reason other than NO_FEATURES)."""
    store = FeatureStore(root, shard_tag=tag)
    store.limit_to(section, pkey, store.own_manifests(section, pkey))
    stored = store.get_many(section, pkey, keys, extractor.kind)
    if len(stored) == len(set(keys)):
        entries = [stored[key][0] for key in keys]
        return [Skipped(p, e) for p, e in zip(paths, entries) if isinstance(e, str) and e != NO_FEATURES]
    extracted = in_task(extractor).extract([Path(p) for p in paths])
    reasons = {s.path: s.reason for s in extracted.skipped}
    per_path = split_features(extracted.features, extracted.rows, len(paths))
    store.put_batch(section, pkey, {key: [f if f is not None else reasons.get(p, NO_FEATURES)]
                                    for key, f, p in zip(keys, per_path, paths)})
    return extracted.skipped
