"""Feature cache: extracted features are keyed by the images and the extractor's parameters.

Writes are atomic (temp file, then os.replace), so an interrupted run leaves either the old entry or
the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Sequence


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


def load(path: Path) -> Any | None:
    """The cached object, or None if absent or unreadable (a damaged entry is treated as a miss)."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception:
        return None


def save(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
