"""Feature cache: extracted features are keyed by the images and the extractor's parameters.

Writes are atomic (temp file, then os.replace), so an interrupted run leaves either the old entry or
the new one, never half of one.

Entries are stored without pickle (`dumps` / `loads`): a .npz archive read with allow_pickle=False, whose
member `__tree__` is JSON describing the object (dicts, lists, tuples, scalars, bytes, and dataclasses of
an explicit allowlist) and whose other members are the arrays, those sharing a name, dtype and trailing
shape concatenated into one. Loading a file someone else wrote can fail, never run code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger("simbench")


def fingerprint(paths: Sequence[Path]) -> str:
    """Identify a list of files by path, size and modification time (cheap; no file is read)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def feature_key(extractor_name: str, params: dict, paths: Sequence[Path]) -> str:
    blob = json.dumps({"extractor": extractor_name, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256((blob + fingerprint(paths)).encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, with the permissions a plain open()
    would give (mkstemp makes files private: a report or pairs.csv must stay readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load(path: Path, types: Iterable[type] | None = None) -> Any | None:
    """The cached object, or None if absent; a damaged or forged entry is a miss, with a warning."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return loads(data, types)
    except UnsafeEntry as exc:
        log.warning("ignoring cache entry %s (it will be recomputed): %s", path, exc)
        return None


def save(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), dumps(obj))


# ---------------------------------------------------------------------------------------------------
# Pickle-free serialisation


class UnsafeEntry(ValueError):
    """A stored entry that cannot be read back: damaged, truncated, forged, or of a kind not allowed."""


#: Array dtypes an entry may hold (no object, void or string arrays).
_KINDS = "biufc?"
_TREE = "__tree__"
_FORMAT = "simbench-tree/1"


def safe_types() -> dict[str, type]:
    """The dataclasses an entry may contain unless the caller names others."""
    from simbench.features.base import Extracted
    from simbench.types import BinaryCodes, Embeddings, KeypointSets, ScoredPairs, Skipped

    return {_type_name(t): t for t in (Extracted, BinaryCodes, Embeddings, KeypointSets, ScoredPairs, Skipped)}


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def dumps(obj: Any) -> bytes:
    """`obj` as the bytes of a pickle-free .npz archive (see the module docstring)."""
    tree, arrays = pack(obj)
    buf = io.BytesIO()
    np.savez(buf, **{_TREE: np.frombuffer(json.dumps(tree).encode(), np.uint8)}, **arrays)
    return buf.getvalue()


def loads(data: bytes, types: Iterable[type] | None = None) -> Any:
    """The object of `dumps`; dataclasses only of `types` (default: safe_types()). Raises UnsafeEntry."""
    allowed = safe_types() if types is None else {_type_name(t): t for t in types}
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise UnsafeEntry("not an .npz archive")
        with archive:
            if _TREE not in archive.files:
                raise UnsafeEntry(f"no {_TREE} member: not written by simbench")
            tree = json.loads(bytes(archive[_TREE]))
            arrays = {name: archive[name] for name in archive.files if name != _TREE}
    except UnsafeEntry:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        if isinstance(exc, ValueError) and "pickle" in str(exc):  # allow_pickle=False refused it
            # Said in our words: numpy's message suggests loading the file unsafely.
            raise UnsafeEntry("holds pickled or object data, which simbench never loads (it could run code)") from None
        raise UnsafeEntry(f"unreadable ({type(exc).__name__}: {exc})") from None
    return unpack(tree, arrays, allowed)


def pack(obj: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON-able tree, arrays): arrays of one name, dtype and trailing shape are concatenated."""
    pools: dict[tuple, list[np.ndarray]] = {}
    ids: dict[tuple, int] = {}
    lengths: list[int] = []

    def put(name: str, a: np.ndarray) -> list:
        if a.dtype.kind not in _KINDS or a.dtype.names is not None:
            raise TypeError(f"cannot store an array of dtype {a.dtype} ({name})")
        flat = a.reshape((1,) if a.ndim == 0 else a.shape)
        key = (name, flat.dtype.str, flat.shape[1:])
        if key not in ids:
            ids[key] = len(lengths)
            pools[key] = []
            lengths.append(0)
        i = ids[key]
        pools[key].append(flat)
        start = lengths[i]
        lengths[i] += len(flat)
        return [i, start, start + len(flat), list(a.shape)]

    def node(x: Any, name: str) -> Any:
        if x is None or isinstance(x, (bool, str)) or type(x) in (int, float):
            return x
        if isinstance(x, np.ndarray):
            return {"a": put(name, x)}
        if isinstance(x, np.generic):  # a numpy scalar stays one (not a Python number)
            return {"n": put(name, np.asarray(x))}
        if isinstance(x, (bytes, bytearray)):
            return {"b": put(name + ":bytes", np.frombuffer(bytes(x), np.uint8))[:3]}
        if isinstance(x, list):
            return [node(v, name) for v in x]
        if isinstance(x, tuple):
            return {"t": [node(v, name) for v in x]}
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                raise TypeError(f"cannot store a dict with non-string keys ({name})")
            return {"d": [[k, node(v, k)] for k, v in x.items()]}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            fields = [f.name for f in dataclasses.fields(x) if f.init]
            return {"c": [_type_name(type(x)), [[f, node(getattr(x, f), f)] for f in fields]]}
        raise TypeError(f"cannot store a {type(x).__name__} ({name})")

    root = node(obj, "root")
    arrays = {f"p{i}": np.concatenate(parts) for i, parts in enumerate(pools.values())}
    shapes = [[a.dtype.str, list(a.shape)] for a in arrays.values()]
    return {"format": _FORMAT, "pools": shapes, "root": root}, arrays


def unpack(tree: Any, arrays: dict[str, np.ndarray], allowed: dict[str, type]) -> Any:
    """The object of `pack`, checking every reference against the arrays. Raises UnsafeEntry."""
    if not isinstance(tree, dict) or tree.get("format") != _FORMAT or not isinstance(tree.get("pools"), list):
        raise UnsafeEntry(f"not a {_FORMAT} tree")
    pools = []
    for i, spec in enumerate(tree["pools"]):
        a = arrays.get(f"p{i}")
        if a is None:
            raise UnsafeEntry(f"array p{i} is missing")
        if a.dtype.kind not in _KINDS or a.dtype.names is not None or [a.dtype.str, list(a.shape)] != spec:
            raise UnsafeEntry(f"array p{i} is {a.dtype.str} {list(a.shape)}, the tree says {spec}")
        pools.append(a)

    def ref(spec, with_shape: bool) -> np.ndarray:
        n = 4 if with_shape else 3
        if not (isinstance(spec, list) and len(spec) == n and all(type(v) is int for v in spec[:3])):
            raise UnsafeEntry(f"bad array reference {spec!r}")
        pool, start, stop = spec[:3]
        if not (0 <= pool < len(pools) and 0 <= start <= stop <= len(pools[pool])):
            raise UnsafeEntry(f"array reference {spec!r} out of range")
        a = pools[pool][start:stop]
        if with_shape:
            shape = spec[3]
            if not (isinstance(shape, list) and all(type(v) is int for v in shape)):
                raise UnsafeEntry(f"bad shape {shape!r}")
            want = (1,) + a.shape[1:] if shape == [] else tuple(shape)
            if a.shape != want:
                raise UnsafeEntry(f"array of shape {a.shape} where the tree says {tuple(shape)}")
            a = a.reshape(shape)
        return a

    def node(x: Any) -> Any:
        if x is None or isinstance(x, (bool, str, int, float)):
            return x
        if isinstance(x, list):
            return [node(v) for v in x]
        if not (isinstance(x, dict) and len(x) == 1):
            raise UnsafeEntry(f"bad node {str(x)[:80]!r}")
        (tag, v), = x.items()
        if tag == "a":
            return ref(v, True)
        if tag == "n":
            return ref(v, True)[()]
        if tag == "b":
            return ref(v, False).tobytes()
        if tag == "t" and isinstance(v, list):
            return tuple(node(e) for e in v)
        if tag == "d" and isinstance(v, list):
            return {k: node(e) for k, e in _pairs(v)}
        if tag == "c" and isinstance(v, list) and len(v) == 2:
            cls = allowed.get(v[0]) if isinstance(v[0], str) else None
            if cls is None:
                raise UnsafeEntry(f"type {str(v[0])[:80]!r} is not allowed here")
            try:
                return cls(**{k: node(e) for k, e in _pairs(v[1])})
            except (TypeError, ValueError) as exc:  # missing or unknown fields, a check in __post_init__
                raise UnsafeEntry(f"bad {cls.__name__}: {exc}") from None
        raise UnsafeEntry(f"bad node {str(x)[:80]!r}")

    try:
        return node(tree.get("root"))
    except RecursionError:
        raise UnsafeEntry("tree nested too deeply") from None


def _pairs(v: Any) -> list[tuple[str, Any]]:
    if not (isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in v)):
        raise UnsafeEntry("bad key/value list")
    return [(p[0], p[1]) for p in v]
