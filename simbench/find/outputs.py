"""What `simbench find` writes: pairs.csv, groups.json, skipped.csv (report.html is in report.py).

pairs.csv (DESIGN.md): a,b,score, then a_source,a_page,a_bbox,b_source,b_page,b_bbox (empty for images
that are files of their own), then method (the stage whose evidence gave the score: identical,
keypoints, cnn, hash or linked; decision: a duplicate confirmed by a reviewer's --decisions, score 1),
then calibrated ("yes", or "no" when no calibration table covers the
settings that gave the score: ranked, but not an estimate of precision). Best score first.
evidence.npz: every stage's pairs with their raw signals (what `simbench calibrate` fits tables on), and
why the best pairs pair (simbench.find.evidence: matched points, regions, CNN ranks, linked chains).
Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from simbench.cache import atomic_write_bytes
from simbench.find import evidence
from simbench.find.cascade import FusedPairs
from simbench.find.items import Item
from simbench.types import ScoredPairs, Skipped

PAIR_COLUMNS = ("a", "b", "score", "a_source", "a_page", "a_bbox", "b_source", "b_page", "b_bbox", "method",
                "calibrated")


def write_pairs_csv(path: Path, pairs: FusedPairs, items: Sequence[Item]) -> None:
    """All pairs, best score first (ties in input order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PAIR_COLUMNS)
    calibrated = pairs.calibrated if pairs.calibrated is not None else np.ones(len(pairs), bool)
    for k in score_order(pairs):
        a, b = items[pairs.a[k]], items[pairs.b[k]]
        writer.writerow([a.display, b.display, f"{pairs.score[k]:.6f}", *_provenance(a), *_provenance(b),
                         pairs.method[k], "yes" if calibrated[k] else "no"])
    atomic_write_bytes(path, buffer.getvalue().encode())


def write_evidence(path: Path, raw: dict[str, ScoredPairs], items: Sequence[Item], settings: dict,
                   pair_evidence: dict | None = None) -> None:
    """evidence.npz: per stage `<stage>.a`, `<stage>.b` (item positions), `<stage>.raw` (raw signal);
    `items` (display paths), `settings` (JSON: stage -> the settings its calibration is keyed by) and
    `pair_evidence` (JSON, simbench.find.evidence.to_json: the records of the best pairs).
    Plain arrays only, so reading it never runs code (np.load(..., allow_pickle=False))."""
    arrays = {"items": np.array([item.display for item in items], dtype=str),
              "settings": np.array(json.dumps(settings, sort_keys=True, default=str)),
              "pair_evidence": np.array(evidence.to_json(pair_evidence or {}))}
    for name, found in raw.items():
        arrays[f"{name}.a"] = np.asarray(found.a, np.int64)
        arrays[f"{name}.b"] = np.asarray(found.b, np.int64)
        arrays[f"{name}.raw"] = np.asarray(found.score, np.float64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_evidence(path: Path) -> tuple[list[str], dict[str, ScoredPairs], dict]:
    """(item display paths, stage -> raw pairs, stage -> settings) from an evidence.npz."""
    with np.load(path, allow_pickle=False) as z:
        items = [str(x) for x in z["items"]]
        settings = json.loads(str(z["settings"]))
        raw = {name: ScoredPairs(z[f"{name}.a"], z[f"{name}.b"], z[f"{name}.raw"]) for name in settings}
    return items, raw, settings


def read_pair_evidence(path: Path) -> dict:
    """{(a, b): record} stored in an evidence.npz (empty for files written before it was stored)."""
    with np.load(path, allow_pickle=False) as z:
        return evidence.from_json(str(z["pair_evidence"])) if "pair_evidence" in z.files else {}


def _provenance(item: Item) -> list:
    """source, page, bbox for a PDF image; three empty cells for an image file."""
    if item.page is None:
        return ["", "", ""]
    return [item.source, item.page, item.bbox]


def score_order(pairs: FusedPairs) -> np.ndarray:
    return np.lexsort((pairs.b, pairs.a, -pairs.score))


def write_skipped_csv(path: Path, skipped: Sequence[Skipped]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("file", "reason"))
    for s in skipped:
        writer.writerow((s.path, s.reason))
    atomic_write_bytes(path, buffer.getvalue().encode())


# ---------------------------------------------------------------------------------------------------
# Groups


def union_find_groups(n: int, a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components with at least two members, each sorted, from pairs (a[k], b[k])."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees flat
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(root(x), []).append(x)
    return [g for g in groups.values() if len(g) > 1]


def duplicate_groups(pairs: FusedPairs, n_items: int, threshold: float) -> list[dict]:
    """Groups of items joined by pairs scoring >= threshold, best group first.

    Each: members (item indices), best (its best pair score), pairs (rows of `pairs` inside it).
    """
    keep = np.flatnonzero(pairs.score >= threshold)
    groups = union_find_groups(n_items, pairs.a[keep], pairs.b[keep])
    group_of = np.full(n_items, -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    rows: list[list[int]] = [[] for _ in groups]
    for k in keep[np.argsort(-pairs.score[keep], kind="stable")]:
        rows[group_of[pairs.a[k]]].append(int(k))
    out = [{"members": m, "best": float(pairs.score[r[0]]), "pairs": r} for m, r in zip(groups, rows)]
    out.sort(key=lambda g: (-g["best"], -len(g["members"]), g["members"][0]))
    return out


def write_groups_json(path: Path, groups: list[dict], pairs: FusedPairs, items: Sequence[Item],
                      threshold: float, method: str) -> None:
    """groups.json: {threshold, method, n_groups, groups: [{id, size, best_score, members, pairs}]}.

    members: path, source, page, bbox of each image; pairs: a, b (positions in members), score, method.
    """
    out = []
    for gid, g in enumerate(groups, start=1):
        position = {m: k for k, m in enumerate(g["members"])}
        members = [{"path": items[m].display, "source": items[m].source, "page": items[m].page,
                    "bbox": items[m].bbox} for m in g["members"]]
        group_pairs = [{"a": position[int(pairs.a[k])], "b": position[int(pairs.b[k])],
                        "score": round(float(pairs.score[k]), 6), "method": str(pairs.method[k]),
                        "calibrated": bool(pairs.calibrated is None or pairs.calibrated[k])}
                       for k in g["pairs"]]
        out.append({"id": gid, "size": len(members), "best_score": round(g["best"], 6), "members": members,
                    "pairs": group_pairs})
    doc = {"threshold": threshold, "method": method, "n_groups": len(out), "groups": out}
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
