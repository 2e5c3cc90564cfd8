"""The `--index DIR` store: what each source file gave (its images, their features), keyed by content.

Keys are the SHA-256 of a file's bytes, so a later run over the same collection plus new files renders
and extracts only the new or changed files, wherever the unchanged ones have moved. Layout:

    DIR/VERSION                              format version of this layout
    DIR/hashes.pkl                           path -> (size, mtime_ns, sha256): skips re-reading unchanged files
    DIR/<section>/<params key>/<ab>/<sha256>.pkl   one record per source file and section

A section is "sources" (the images found in the file, with provenance and thumbnails) or one feature
kind ("keypoints-brisk", "cnn-efficientnet_lite0", ...); the params key hashes everything that changes
the section's content (extractor parameters, PDF rendering options). Every write is atomic (temporary
file, then rename: simbench.cache.atomic_write_bytes), so an interrupted run leaves whole records only.
Records of files no longer in the collection are kept; delete DIR to start afresh.

Without a folder (no --index) the same store lives in memory for one run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simbench import cache
from simbench.types import BinaryCodes, Embeddings, KeypointSets

#: Bump when the record layout changes: older records are then ignored (re-extracted).
VERSION = 1

#: Per-keypoint arrays of KeypointSets (and its subclasses' extra per-keypoint flags).
PER_KEYPOINT = ("descriptors", "points", "sizes", "angles", "responses", "mirrored")

_CHUNK = 1 << 20


def params_key(params: dict) -> str:
    """A short stable hash of a parameter dict."""
    blob = json.dumps({"version": VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FeatureStore:
    """Records per (section, params key, content hash); on disk under `root`, or in memory when None."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else None
        self._memory: dict[tuple[str, str, str], Any] = {}
        self._hashes: dict[str, tuple[int, int, str]] = {}
        if self.root is not None:
            self._open_root()

    def _open_root(self) -> None:
        """Create the folder, or check that it is an index of this version."""
        self.root.mkdir(parents=True, exist_ok=True)
        version_file = self.root / "VERSION"
        if version_file.exists():
            found = version_file.read_text().strip()
            if found != str(VERSION):
                raise ValueError(f"{self.root} is a simbench index of version {found}, this simbench writes "
                                 f"version {VERSION}: use another --index folder or delete this one")
        else:
            cache.atomic_write_bytes(version_file, f"{VERSION}\n".encode())
        self._hashes = cache.load(self.root / "hashes.pkl") or {}

    # -- content hashes ----------------------------------------------------------------------------

    def content_hash(self, path: str | Path) -> str:
        """SHA-256 of a file; an unchanged file (same size and modification time) is not read again."""
        st = os.stat(path)
        key = os.path.abspath(path)
        known = self._hashes.get(key)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        digest = file_sha256(path)
        self._hashes[key] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def save_hashes(self) -> None:
        if self.root is not None:
            cache.save(self.root / "hashes.pkl", self._hashes)

    # -- records -----------------------------------------------------------------------------------

    def _path(self, section: str, pkey: str, digest: str) -> Path:
        return self.root / section / pkey / digest[:2] / f"{digest}.pkl"

    def get(self, section: str, pkey: str, digest: str) -> Any | None:
        """The record, or None when absent or unreadable (a damaged record counts as absent)."""
        if self.root is None:
            return self._memory.get((section, pkey, digest))
        return cache.load(self._path(section, pkey, digest))

    def has(self, section: str, pkey: str, digest: str) -> bool:
        if self.root is None:
            return (section, pkey, digest) in self._memory
        return self._path(section, pkey, digest).is_file()

    def put(self, section: str, pkey: str, digest: str, record: Any) -> None:
        if self.root is None:
            self._memory[(section, pkey, digest)] = record
        else:
            cache.atomic_write_bytes(self._path(section, pkey, digest),
                                     pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))


# ---------------------------------------------------------------------------------------------------
# Features of many images <-> one small record per image


def split_features(features, rows: np.ndarray, n: int) -> list:
    """Per input image k < n: its own slice of the features (a dict of arrays), or None if it has no row."""
    out: list = [None] * n
    for r, k in enumerate(np.asarray(rows, np.int64)):
        out[int(k)] = _one(features, r)
    return out


def _one(features, r: int) -> dict:
    if isinstance(features, KeypointSets):
        s, e = int(features.offsets[r]), int(features.offsets[r + 1])
        one = {name: np.array(getattr(features, name)[s:e]) for name in PER_KEYPOINT
               if getattr(features, name, None) is not None}
        one["image_size"] = np.array(features.image_sizes[r])
        one["_type"] = type(features)
        one["binary"] = features.binary
        return one
    if isinstance(features, Embeddings):
        return {"vector": np.array(features.vectors[r])}
    if isinstance(features, BinaryCodes):
        return {"words": np.array(features.words[r]), "bits": features.bits}
    raise TypeError(f"cannot store features of type {type(features).__name__}")


def join_features(records: Sequence[dict | None], template: str):
    """The features of the images with a record, as one object, and their positions (rows) in `records`.

    template: the feature kind ("keypoints", "embedding" or "binary"), for an empty result.
    """
    rows = np.array([k for k, r in enumerate(records) if r is not None], dtype=np.int64)
    present = [records[k] for k in rows]
    if template == "keypoints":
        return _join_keypoints(present), rows
    if template == "embedding":
        vectors = np.stack([r["vector"] for r in present]) if present else np.empty((0, 1), np.float32)
        return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32)), rows
    bits = present[0]["bits"] if present else 64
    words = np.stack([r["words"] for r in present]) if present else np.empty((0, (bits + 63) // 64), np.uint64)
    return BinaryCodes(words, bits), rows


def _join_keypoints(present: list[dict]) -> KeypointSets:
    cls = present[0]["_type"] if present else KeypointSets
    counts = [len(r["descriptors"]) for r in present]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name in PER_KEYPOINT:
        if name in names and present and name in present[0]:
            kwargs[name] = np.concatenate([r[name] for r in present])
    if not present:
        kwargs.update(descriptors=np.empty((0, 64), np.uint8), points=np.empty((0, 2), np.float32),
                      sizes=np.empty(0, np.float32), angles=np.empty(0, np.float32),
                      responses=np.empty(0, np.float32))
    sizes = np.array([r["image_size"] for r in present], dtype=np.int64).reshape(-1, 2)
    binary = present[0]["binary"] if present else True
    return cls(offsets=offsets, image_sizes=sizes, binary=binary, **kwargs)
