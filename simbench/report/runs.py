"""Loading runs: every result.json under run and multirun folders, and the scored pairs beside it."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger("simbench.report")

#: Config keys that never change what a run measures (paths, progress bars), left out of the identity.
VOLATILE = ("cache_dir", "progress", "cache_features", "save_pairs")


@dataclass
class Run:
    """One run directory: its result.json, and where its scored pairs are."""

    dir: Path
    result: dict
    mtime: float
    config: dict = field(default_factory=dict)  # flattened, volatile keys dropped

    @property
    def pairs_path(self) -> Path:
        return self.dir / "pairs.npz"

    @property
    def env(self) -> dict:
        return self.result.get("env") or {}


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every result.json under the given run or multirun directories (recursive), or given directly."""
    found = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "result.json":
            found.append(p)
        elif p.is_dir():
            found.extend(q for q in p.rglob("result.json") if ".submitit" not in q.parts)
        else:
            raise FileNotFoundError(f"{p}: not a run directory or result.json")
    return sorted(set(found))


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b.c": value}; lists become JSON text so that they compare and hash."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def _identity(flat: dict) -> dict:
    return {k: v for k, v in flat.items()
            if not k.startswith("hydra.") and k.rsplit(".", 1)[-1] not in VOLATILE}


def upgrade(result: dict) -> dict:
    """Rename the one throughput of result.json files older than the units split, in place.

    Their timing.comparisons_per_s counted descriptor distances for keypoint methods (config.method
    `..KeypointMethod`) and image pairs for every other method. A keypoint run's image pairs/s is then
    dataset.n_images choose 2 over timing.match_s.
    """
    timing = result.get("timing") or {}
    if "comparisons_per_s" not in timing or "image_pairs_per_s" in timing:
        return result
    old = timing.pop("comparisons_per_s")
    target = ((result.get("config") or {}).get("method") or {}).get("_target_") or ""
    if target.endswith("KeypointMethod"):
        n = (result.get("dataset") or {}).get("n_images") or 0
        match_s = timing.get("match_s")
        timing["image_pairs_per_s"] = n * (n - 1) / 2 / match_s if match_s else None
        timing["descriptor_comparisons_per_s"] = old
    else:
        timing["image_pairs_per_s"] = old
        timing["descriptor_comparisons_per_s"] = None
    return result


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Read every result.json found under `paths` (see find_results); unreadable ones are skipped."""
    runs = []
    for path in find_results(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        upgrade(result)
        flat = _identity(flatten(result.get("config") or {}))
        runs.append(Run(path.parent, result, path.stat().st_mtime, flat))
    return runs



def load_pairs(run: Run):
    """(ScoredPairs, truth) from pairs.npz, or None when the run stored none."""
    from simbench.types import ScoredPairs

    if not run.pairs_path.exists():
        return None
    with np.load(run.pairs_path, allow_pickle=False) as z:
        pairs = ScoredPairs(z["a"].astype(np.int64), z["b"].astype(np.int64), z["score"].astype(np.float64))
        truth = z["truth"].astype(np.int64).reshape(-1, 2)
    return pairs, truth
