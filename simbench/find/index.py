"""The `--index DIR` store: what each source file gave (its images, their features), keyed by content.

Keys are the SHA-256 of a file's bytes, so a later run over the same collection plus new files renders
and extracts only the new or changed files, wherever the unchanged ones have moved. Layout:

    DIR/VERSION                                   format version of this layout
    DIR/hashes.json                               path -> [size, mtime_ns, sha256]: unchanged files not reread
    DIR/<section>/<params key>/<shard id>.npz     the records of one extraction batch (simbench.cache.dumps)
    DIR/<section>/<params key>/<shard id>.json    its manifest: the digests it holds, its size and SHA-256

A section is "sources" (the images found in the file, with provenance and thumbnails) or one feature
kind ("keypoints-brisk", "cnn-efficientnet_lite0", ...); the params key hashes everything that changes
the section's content (extractor parameters, PDF rendering options).

Nothing in the index is pickled: shards are .npz archives read with allow_pickle=False, whose object
structure is JSON that names only allowed dataclasses, and each record is checked for the shape its
section expects before use. Opening an index someone else made can give wrong features, never run code.

Durability: a shard is written (temporary file, then rename), then its manifest the same way; the
manifest is the commit, so a run killed at any point leaves whole shards, and loses at most the batch
it was extracting. A shard that is missing, truncated, forged or malformed makes each of its records
"unusable" with a reason (the pipeline logs it and reads the file again); later shards win over earlier
ones for the same digest. Records of files no longer in the collection are kept; delete DIR to start
afresh.

Without a folder (no --index) the same store lives in memory for one run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simbench import cache
from simbench.types import BinaryCodes, Embeddings, KeypointSets

log = logging.getLogger("simbench")

#: Bump when the record layout changes: an index of another version is refused with a clear message.
#: (Version 1 held pickles; it is never read.)
VERSION = 2

#: Images per extraction batch, so per shard: what a killed run can lose, against the extractor's cost per
#: call (a forward pass of a few images, an index shard per stage) and the number of files in the index.
BATCH_IMAGES = 512

#: Per-keypoint arrays of KeypointSets (and its subclasses' extra per-keypoint flags).
PER_KEYPOINT = ("descriptors", "points", "sizes", "angles", "responses", "mirrored")

#: The KeypointSets classes a record may name (records hold the name, never the class).
KEYPOINT_TYPES = {cls.__name__: cls for cls in (KeypointSets,)}

SOURCES_KIND = "sources"
_SHARD_FORMAT = "simbench-index-shard"
_SHARD_ID = re.compile(r"^[0-9]{20}-[0-9a-f]{12}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
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


def shard_groups(counts: Sequence[int], size: int = BATCH_IMAGES) -> list[list[int]]:
    """Consecutive positions grouped so that each group holds at most `size` images (a file with more
    images is a group of its own; files without images join the group at hand)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for k, n in enumerate(counts):
        if current and total + n > size:
            groups.append(current)
            current, total = [], 0
        current.append(k)
        total += n
    if current:
        groups.append(current)
    return groups


class FeatureStore:
    """Records per (section, params key, content hash); on disk under `root`, or in memory when None.

    `kind` arguments say what a section's records must look like: "sources" (a SourceRecord), or the
    feature kind "binary", "keypoints" or "embedding" (a list, per image, of a dict of arrays or a reason).
    """

    def __init__(self, root: str | Path | None = None, shard_tag: str | None = None):
        """shard_tag: 12 hex digits that end the ids of the shards this store writes (else random ones), so
        that a task tried again finds what it stored before (`own_manifests`)."""
        if shard_tag is not None and not re.fullmatch(r"[0-9a-f]{12}", shard_tag):
            raise ValueError(f"a shard tag is 12 hex digits, not {shard_tag!r}")
        self.root = Path(root).expanduser() if root else None
        self.shard_tag = shard_tag
        self._memory: dict[tuple[str, str, str], Any] = {}
        self._hashes: dict[str, tuple[int, int, str]] | None = None  # read on first use (tasks use none)
        # (section, pkey) -> digest -> manifests holding it, newest first
        self._manifests: dict[tuple[str, str], dict[str, list[dict]]] = {}
        self._verdicts: dict[Path, str | None] = {}  # shard -> None (usable) or why not
        if self.root is not None:
            self._open_root()

    def _open_root(self) -> None:
        """Create the folder, or check that it is an index of this version."""
        self.root.mkdir(parents=True, exist_ok=True)
        version_file = self.root / "VERSION"
        if version_file.exists():
            found = version_file.read_text(errors="replace").strip()
            if found != str(VERSION):
                raise ValueError(f"{self.root} is a simbench index of version {found[:20]!r}, this simbench "
                                 f"writes version {VERSION}: use another --index folder or delete this one")
        else:
            cache.atomic_write_bytes(version_file, f"{VERSION}\n".encode())

    # -- content hashes ----------------------------------------------------------------------------

    @staticmethod
    def _read_hashes(path: Path) -> dict[str, tuple[int, int, str]]:
        """The saved path -> (size, mtime_ns, sha256) table; malformed entries are dropped (those files
        are hashed again), a malformed file is ignored with a warning."""
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s (files will be hashed again): %s", path, exc)
            return {}
        if not isinstance(table, dict):
            log.warning("ignoring %s (files will be hashed again): not a JSON object", path)
            return {}
        good = {k: (v[0], v[1], v[2]) for k, v in table.items()
                if isinstance(v, list) and len(v) == 3 and type(v[0]) is int and type(v[1]) is int
                and isinstance(v[2], str) and _DIGEST.match(v[2])}
        if len(good) < len(table):
            log.warning("%s: %d malformed entries ignored (those files are hashed again)", path,
                        len(table) - len(good))
        return good

    def content_hash(self, path: str | Path) -> str:
        """SHA-256 of a file; an unchanged file (same size and modification time) is not read again."""
        st = os.stat(path)
        key = os.path.abspath(path)
        if self._hashes is None:
            self._hashes = self._read_hashes(self.root / "hashes.json") if self.root is not None else {}
        known = self._hashes.get(key)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        digest = file_sha256(path)
        self._hashes[key] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def save_hashes(self) -> None:
        if self.root is not None and self._hashes is not None:  # (None: not read, so nothing new)
            # Names that are not valid UTF-8 arrive as surrogate escapes; JSON's \u escapes keep them.
            blob = json.dumps({k: list(v) for k, v in self._hashes.items()}, ensure_ascii=True)
            cache.atomic_write_bytes(self.root / "hashes.json", blob.encode())

    # -- records -----------------------------------------------------------------------------------

    def check(self, section: str, pkey: str, digests: Sequence[str], kind: str) -> dict[str, str | None]:
        """For each digest the index holds a record of: None when the record is usable, else why not.
        Digests without any record are left out. Every shard concerned is read and checked once."""
        if self.root is None:
            return {d: None for d in digests if (section, pkey, d) in self._memory}
        out = {}
        for digest in dict.fromkeys(digests):
            holders = self._holders(section, pkey).get(digest)
            if holders:
                reasons = []
                for manifest in holders:  # newest first; the first usable one serves
                    reasons.append(self._verdict(section, pkey, manifest, kind))
                    if reasons[-1] is None:
                        break
                out[digest] = reasons[-1] if reasons[-1] is None else reasons[0]
        return out

    def get_many(self, section: str, pkey: str, digests: Sequence[str], kind: str) -> dict[str, Any]:
        """The usable records of these digests (each shard read once); absent or unusable ones left out."""
        if self.root is None:
            return {d: self._memory[(section, pkey, d)] for d in digests if (section, pkey, d) in self._memory}
        wanted: dict[str, tuple[dict, list[str]]] = {}  # shard -> (its manifest, digests to take from it)
        read: dict[str, tuple[dict, str | None]] = {}  # shards read for their verdict here: not read twice
        for digest in dict.fromkeys(digests):
            for manifest in self._holders(section, pkey).get(digest, []):
                if self._verdict(section, pkey, manifest, kind, read) is None:
                    wanted.setdefault(manifest["shard"], (manifest, []))[1].append(digest)
                    break
        out = {}
        for shard, (manifest, names) in wanted.items():
            records, reason = read.pop(shard, None) or self._read_shard(section, pkey, manifest, kind)
            if reason is not None:  # changed on disk since it was checked
                log.warning("index shard %s became unusable: %s", self._dir(section, pkey) / shard, reason)
                continue
            out.update((d, records[d]) for d in names)
        return out

    def get(self, section: str, pkey: str, digest: str, kind: str) -> Any | None:
        """The record, or None when absent or unusable."""
        return self.get_many(section, pkey, [digest], kind).get(digest)

    def has(self, section: str, pkey: str, digest: str, kind: str) -> bool:
        return self.check(section, pkey, [digest], kind).get(digest, "absent") is None

    def put(self, section: str, pkey: str, digest: str, record: Any) -> None:
        self.put_batch(section, pkey, {digest: record})

    def put_batch(self, section: str, pkey: str, records: dict[str, Any]) -> None:
        """Store the records of one batch: on disk, one shard and then its manifest, each atomically."""
        if self.root is None:
            self._memory.update(((section, pkey, d), r) for d, r in records.items())
            return
        if not records:
            return
        folder = self._dir(section, pkey)
        shard_id = f"{time.time_ns():020d}-{self.shard_tag or secrets.token_hex(6)}"  # sorts by time: newer win
        data = cache.dumps(records)
        cache.atomic_write_bytes(folder / f"{shard_id}.npz", data)
        manifest = {"format": _SHARD_FORMAT, "version": VERSION, "shard": f"{shard_id}.npz", "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "digests": list(records)}
        cache.atomic_write_bytes(folder / f"{shard_id}.json", json.dumps(manifest).encode())
        self._verdicts[folder / manifest["shard"]] = None
        holders = self._holders(section, pkey)
        for digest in records:
            holders.setdefault(digest, []).insert(0, manifest)

    def reload(self) -> None:
        """Read the manifests again on next use: shards other processes (Dask workers) wrote become visible."""
        self._manifests.clear()

    def manifests_of(self, section: str, pkey: str, digests: Sequence[str]) -> list[dict]:
        """The manifests that list any of these digests, newest first: all that reading their records needs
        (a task given them by `limit_to` opens no other manifest)."""
        holders = self._holders(section, pkey)
        found = {m["shard"]: m for d in dict.fromkeys(digests) for m in holders.get(d, [])}
        return sorted(found.values(), key=lambda m: m["shard"], reverse=True)  # shard ids sort by time

    def own_manifests(self, section: str, pkey: str) -> list[dict]:
        """The manifests of the shards that stores with this one's shard_tag wrote, newest first (only their
        names are looked for in the folder; no other manifest is read)."""
        folder = self._dir(section, pkey)
        if self.shard_tag is None or not folder.is_dir():
            return []
        found = [_read_manifest(path) for path in sorted(folder.glob(f"*-{self.shard_tag}.json"), reverse=True)]
        return [manifest for manifest, reason in found if reason is None]

    def limit_to(self, section: str, pkey: str, manifests: Sequence[dict]) -> FeatureStore:
        """Look records of (section, pkey) up in these manifests only (`manifests_of`, newest first, as
        read and checked by the process that gives them): the section's folder is not listed."""
        self._manifests[(section, pkey)] = _holders_of(manifests)
        return self

    # -- shards ------------------------------------------------------------------------------------

    def _dir(self, section: str, pkey: str) -> Path:
        return self.root / section / pkey

    def _holders(self, section: str, pkey: str) -> dict[str, list[dict]]:
        """digest -> manifests that list it, newest first (manifests read once per run)."""
        key = (section, pkey)
        if key not in self._manifests:
            folder = self._dir(section, pkey)
            paths = sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []
            manifests = []
            for path in paths:
                manifest, reason = _read_manifest(path)
                if reason is not None:
                    log.warning("ignoring index manifest %s (its files are read again): %s", path, reason)
                    continue
                manifests.append(manifest)
            holders = _holders_of(manifests)
            orphans = {p.stem for p in folder.glob("*.npz")} - {p.stem for p in paths} if folder.is_dir() else set()
            if orphans:
                log.info("%s: %d shards without a manifest ignored (a batch an interrupted run did not finish)",
                         folder, len(orphans))
            self._manifests[key] = holders
        return self._manifests[key]

    def _verdict(self, section: str, pkey: str, manifest: dict, kind: str, read: dict | None = None) -> str | None:
        """None when the shard is usable, else why not; read: gets the shard's (records, reason) when it
        is read here."""
        path = self._dir(section, pkey) / manifest["shard"]
        if path not in self._verdicts:
            loaded = self._read_shard(section, pkey, manifest, kind)
            self._verdicts[path] = loaded[1]
            if read is not None:
                read[manifest["shard"]] = loaded
        return self._verdicts[path]

    def _read_shard(self, section: str, pkey: str, manifest: dict, kind: str) -> tuple[dict, str | None]:
        """(records, None), or ({}, why the shard cannot be used)."""
        path = self._dir(section, pkey) / manifest["shard"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            return {}, f"shard {path.name} cannot be read ({exc.strerror or exc})"
        if len(data) != manifest["bytes"]:
            return {}, f"shard {path.name} is truncated or altered ({len(data)} bytes, {manifest['bytes']} written)"
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            return {}, f"shard {path.name} does not match its manifest (SHA-256 differs)"
        try:
            records = cache.loads(data, record_types())
        except cache.UnsafeEntry as exc:
            return {}, f"shard {path.name}: {exc}"
        if not isinstance(records, dict) or set(records) != set(manifest["digests"]):
            return {}, f"shard {path.name} does not hold the records its manifest lists"
        for digest, record in records.items():
            problem = record_problem(record, kind)
            if problem:
                return {}, f"shard {path.name}, record {digest[:12]}: {problem}"
        return records, None


def _holders_of(manifests: Sequence[dict]) -> dict[str, list[dict]]:
    """digest -> the manifests (newest first, as given) that list it."""
    holders: dict[str, list[dict]] = {}
    for manifest in manifests:
        for digest in manifest["digests"]:
            holders.setdefault(digest, []).append(manifest)
    return holders


def _read_manifest(path: Path) -> tuple[dict, str | None]:
    try:
        m = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return {}, f"unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(m, dict) or m.get("format") != _SHARD_FORMAT or m.get("version") != VERSION:
        return {}, f"not a version {VERSION} {_SHARD_FORMAT} manifest"
    shard = m.get("shard")
    # The shard must be the sibling of the same id: a manifest never points elsewhere on the disk.
    if shard != f"{path.stem}.npz" or not _SHARD_ID.match(path.stem):
        return {}, f"names shard {str(shard)[:80]!r}, expected {path.stem}.npz"
    if type(m.get("bytes")) is not int or not (isinstance(m.get("sha256"), str) and _DIGEST.match(m["sha256"])):
        return {}, "size or SHA-256 missing"
    digests = m.get("digests")
    if not (isinstance(digests, list) and all(isinstance(d, str) and _DIGEST.match(d) for d in digests)):
        return {}, "bad digest list"
    return m, None


def record_types() -> list[type]:
    """The dataclasses index records may hold."""
    from simbench.find.sources import SourceRecord

    return [SourceRecord]


def record_problem(record: Any, kind: str) -> str | None:
    """Why a record read from an index cannot be used as one of `kind`, or None."""
    if kind == SOURCES_KIND:
        return _sources_problem(record)
    if not isinstance(record, list):
        return f"a {type(record).__name__}, not a list of per-image features"
    for k, entry in enumerate(record):
        if isinstance(entry, str):
            continue
        problem = _feature_problem(entry, kind) if isinstance(entry, dict) else f"a {type(entry).__name__}"
        if problem:
            return f"image {k}: {problem}"
    return None


def _sources_problem(record: Any) -> str | None:
    from simbench.find.sources import SourceRecord

    if not isinstance(record, SourceRecord):
        return f"a {type(record).__name__}, not a SourceRecord"
    if not (isinstance(record.kind, str) and isinstance(record.images, list) and isinstance(record.skipped, list)
            and isinstance(record.files, dict)):
        return "malformed SourceRecord"
    for image in record.images:
        if not (isinstance(image, dict) and isinstance(image.get("id"), str) and isinstance(image.get("suffix"), str)
                and isinstance(image.get("digest"), str) and isinstance(image.get("thumb"), bytes)
                and (image.get("page") is None or type(image.get("page")) is int)
                and (image.get("bbox") is None or isinstance(image.get("bbox"), str))):
            return "malformed image entry"
    if not all(isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, str) for v in s) for s in record.skipped):
        return "malformed skipped entry"
    return None


#: The keys a per-image feature record of each kind may have (see _one).
_FEATURE_KEYS = {"binary": {"words", "bits"}, "embedding": {"vector", "regions"},
                 "keypoints": {*PER_KEYPOINT, "image_size", "_type", "binary"}}


def _feature_problem(entry: dict, kind: str) -> str | None:
    if kind not in _FEATURE_KEYS:
        return f"unknown feature kind {kind!r}"
    if not set(entry) <= _FEATURE_KEYS[kind]:
        return f"unexpected fields {sorted(set(entry) - _FEATURE_KEYS[kind])[:5]}"

    def array(name, ndim, kinds):
        a = entry.get(name)
        return isinstance(a, np.ndarray) and a.ndim == ndim and a.dtype.kind in kinds

    if kind == "binary":
        bits = entry.get("bits")
        ok = (isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and bits > 0 and array("words", 1, "u")
              and entry["words"].dtype == np.uint64 and len(entry["words"]) == (bits + 63) // 64)
        return None if ok else "not a binary code"
    if kind == "embedding":
        if not array("vector", 1, "f"):
            return "not an embedding"
        if "regions" in entry and not (array("regions", 2, "f") and entry["regions"].shape[1:] == entry["vector"].shape):
            return "malformed region views"
        return None
    if kind == "keypoints":
        if entry.get("_type") not in KEYPOINT_TYPES or not isinstance(entry.get("binary"), (bool, np.bool_)):
            return "unknown keypoint type"
        if not (array("descriptors", 2, "uf") and array("points", 2, "f") and entry["points"].shape[1] == 2
                and array("image_size", 1, "iu") and len(entry["image_size"]) == 2):
            return "malformed keypoints"
        m = len(entry["descriptors"])
        for name in PER_KEYPOINT:
            if name in entry and not (isinstance(entry[name], np.ndarray) and len(entry[name]) == m):
                return f"{name} does not have one row per keypoint"
        if any(name not in entry for name in ("sizes", "angles", "responses")):
            return "malformed keypoints"
    return None


def consistent(records: list[dict | None]) -> list[str | None]:
    """Per record: None, or why it cannot be joined with the others (a shape or type most records do not
    share: a record from a forged index must not break the join)."""
    return consistent_signatures([None if r is None else _signature(r) for r in records])


def consistent_signatures(signatures: list[tuple | None]) -> list[str | None]:
    """`consistent` given each record's `_signature` (None: no record), so that the records can stay in
    other processes (simbench.distributed.keypoints)."""
    counts = Counter(s for s in signatures if s is not None)
    if len(counts) <= 1:
        return [None] * len(signatures)
    common = counts.most_common(1)[0][0]
    return [None if s is None or s == common else "index record does not match the others (shape or type)"
            for s in signatures]


def _signature(record: dict) -> tuple:
    out = []
    for name, value in sorted(record.items()):
        if isinstance(value, np.ndarray):
            shape = value.shape[1:] if name in PER_KEYPOINT else value.shape
            out.append((name, value.dtype.str, shape))
        else:
            out.append((name, value))
    return tuple(out)


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
        if type(features).__name__ not in KEYPOINT_TYPES:
            raise TypeError(f"add {type(features).__name__} to KEYPOINT_TYPES to store it in the index")
        s, e = int(features.offsets[r]), int(features.offsets[r + 1])
        one = {name: np.array(getattr(features, name)[s:e]) for name in PER_KEYPOINT
               if getattr(features, name, None) is not None}
        one["image_size"] = np.array(features.image_sizes[r])
        one["_type"] = type(features).__name__  # a name, resolved through KEYPOINT_TYPES
        one["binary"] = features.binary
        return one
    if isinstance(features, Embeddings):
        one = {"vector": np.array(features.vectors[r])}
        if features.regions is not None:
            one["regions"] = np.array(features.regions[r])
        return one
    if isinstance(features, BinaryCodes):
        return {"words": np.array(features.words[r]), "bits": features.bits}
    raise TypeError(f"cannot store features of type {type(features).__name__}")


def join_entries(entries: Sequence[dict | str], kind: str) -> tuple[Any, np.ndarray, dict[int, str]]:
    """Per-image index entries (a dict of feature arrays, or a reason string) as (their features joined, the
    positions in `entries` that have them, {position: reason} for the others: a reason entry, or a record that
    does not match the others' shape)."""
    records = [None if isinstance(e, str) else e for e in entries]
    reasons = {k: e for k, e in enumerate(entries) if isinstance(e, str)}
    for k, problem in enumerate(consistent(records)):
        if problem:
            reasons[k], records[k] = problem, None
    features, rows = join_features(records, kind)
    return features, rows, reasons


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
        regions = np.stack([r["regions"] for r in present]) if present and "regions" in present[0] else None
        return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32),
                          None if regions is None else np.ascontiguousarray(regions, dtype=np.float32)), rows
    bits = present[0]["bits"] if present else 64
    words = np.stack([r["words"] for r in present]) if present else np.empty((0, (bits + 63) // 64), np.uint64)
    return BinaryCodes(words, bits), rows


def _join_keypoints(present: list[dict]) -> KeypointSets:
    cls = KEYPOINT_TYPES[present[0]["_type"]] if present else KeypointSets
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
