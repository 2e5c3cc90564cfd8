"""Ground truth for `simbench find`: a truth.csv of duplicate pairs, matched to a run's images.

truth.csv has columns a,b (the two images, paths as you know them: absolute, relative to the CSV's
folder, or relative to the working directory; PDF images as `book.pdf#page=3&image=2`) and optionally
label (the kind of edit that made the copy, for recall per edit). Pairs not listed are not duplicates,
ISC2021's convention. Used by `simbench find --truth` (score a run) and `simbench calibrate` (fit tables).

A reviewer's decisions.csv (columns a,b,decision; simbench.find.decisions) serves as truth too: its
`duplicate` rows are the true pairs, its `not_duplicate` rows known negatives, and as a review covers
only some pairs, only the pairs it lists are labelled (a pair it does not list counts neither way).
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from simbench.evaluate import bootstrap_ci, dedupe_pairs, evaluate, label_pairs, wilson_interval
from simbench.types import ScoredPairs

log = logging.getLogger("simbench")


@dataclass
class Truth:
    """True pairs as item positions (a < b), each with its label ("" when none), and the truth.csv rows
    whose images are not among the run's (listed so that a typo is not silently a miss).

    complete: every pair not listed is not a duplicate (truth.csv); False for a decisions.csv, whose
    known negatives are `negatives` and whose other pairs are unlabelled."""

    pairs: np.ndarray  # (P, 2) int64
    labels: list[str]
    unmatched: list[tuple[str, str]]
    negatives: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    complete: bool = True

    def labelled_pairs(self, found: ScoredPairs) -> ScoredPairs:
        """The pairs of `found` this truth labels: all of them when it is complete."""
        if self.complete:
            return found
        keep = label_pairs(found, np.concatenate([self.pairs, self.negatives]))  # order-insensitive
        return ScoredPairs(np.asarray(found.a)[keep], np.asarray(found.b)[keep], np.asarray(found.score)[keep])


def normalise(path: str, base: Path | None = None) -> str:
    """An absolute, normalised form of a path (the part after '#' of a PDF image kept as is)."""
    file, sep, fragment = str(path).partition("#")
    p = Path(file).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return os.path.normpath(str(p)) + sep + fragment


class ItemNames:
    """A run's images by name: a path as the user gives it (absolute, relative to a CSV's folder or to
    the working directory) -> the image's position, matched on normalised display paths."""

    def __init__(self, displays: Sequence[str]):
        self.by_name = {normalise(d): k for k, d in enumerate(displays)}

    def position(self, name: str, base: Path) -> int | None:
        for candidate in (normalise(name, base), normalise(name)):
            if candidate in self.by_name:
                return self.by_name[candidate]
        return None


def read_truth(path: str | Path, displays: Sequence[str]) -> Truth:
    """truth.csv (or a decisions.csv) matched to the run's images (their display paths, as pairs.csv
    writes them)."""
    path = Path(path)
    if is_decisions(path):
        return decisions_truth(path, displays)
    names = ItemNames(displays)
    pairs, labels, unmatched = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"a", "b"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns a,b (found {reader.fieldnames})")
        for row in reader:
            ka, kb = (names.position(row[c], path.parent) for c in ("a", "b"))
            if ka is None or kb is None or ka == kb:
                unmatched.append((row["a"], row["b"]))
                continue
            pairs.append((min(ka, kb), max(ka, kb)))
            labels.append(str(row.get("label") or ""))
    arr = np.array(pairs, np.int64).reshape(-1, 2)
    # One label per distinct pair (the first given).
    _, first = np.unique(arr, axis=0, return_index=True)
    first = np.sort(first)
    return Truth(arr[first], [labels[k] for k in first], unmatched)


def is_decisions(path: Path) -> bool:
    """Whether a CSV's header has a decision column (a reviewer's decisions.csv)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False  # read_truth says what is wrong with it
    return "decision" in (c.strip().lower() for c in header)


def decisions_truth(path: Path, displays: Sequence[str]) -> Truth:
    """A decisions.csv as truth: duplicate rows are true pairs, not_duplicate rows known negatives."""
    from simbench.find.decisions import match_decisions, read_decisions

    decided = match_decisions(read_decisions(path), displays)
    if decided.problems:
        line, why = decided.problems[0]
        log.warning("%s: %d rows skipped (line %d: %s)", path, len(decided.problems), line, why)
    return Truth(decided.duplicate, [""] * len(decided.duplicate), [(r.a, r.b) for r in decided.stale],
                 decided.not_duplicate, complete=False)


def score_run(pairs: ScoredPairs, truth: Truth, threshold: float, n_images: int | None = None) -> dict:
    """micro-AP, recall at precision 0.9 and its threshold, precision/recall at `threshold` (ISC2021, as
    simbench.evaluate), recall per label at the P90 operating point and at `threshold`, and how sure each is:
    `intervals`, 95% intervals of micro-AP and recall at P0.9 (a bootstrap over groups of duplicates,
    simbench.evaluate.bootstrap_ci; n_images: the run's images, each not in a group a group of its own) and of
    precision and recall at `threshold` (Wilson's, from `counts`); per_label_found_at_p90: (found, true pairs)
    per label. A truth of a few dozen pairs measures little: the intervals say how little."""
    pairs = dedupe_pairs(truth.labelled_pairs(pairs))  # a true pair never found still counts as missed
    m = evaluate(pairs, truth.pairs, None, threshold)
    out = {k: m[k] for k in ("uap", "recall_at_p90", "threshold_at_p90", "precision", "recall", "f1", "threshold")}
    out["true_pairs"] = int(len(truth.pairs))
    out["unmatched_truth_rows"] = len(truth.unmatched)
    at_p90 = per_label_found(pairs, truth, m["threshold_at_p90"])
    out["per_label_recall_at_p90"] = {k: found / n for k, (found, n) in at_p90.items()}
    out["per_label_recall"] = per_label_recall(pairs, truth, threshold)
    out["per_label_found_at_p90"] = {k: list(v) for k, v in at_p90.items()}
    called = np.asarray(pairs.score) >= threshold
    found = int(label_pairs(ScoredPairs(pairs.a[called], pairs.b[called], pairs.score[called]), truth.pairs).sum())
    out["counts"] = {"called": int(called.sum()), "true_called": found, "true_pairs": out["true_pairs"]}
    boot = (bootstrap_ci(pairs, truth.pairs, n_images=n_images) if len(truth.pairs)
            else {"uap": (np.nan, np.nan), "recall_at_p90": (np.nan, np.nan)})
    out["intervals"] = {**{k: [float(v) for v in boot[k]] for k in ("uap", "recall_at_p90")},
                        "precision": list(wilson_interval(found, out["counts"]["called"])),
                        "recall": list(wilson_interval(found, out["true_pairs"]))}
    return out


def per_label_recall(pairs: ScoredPairs, truth: Truth, threshold: float) -> dict[str, float]:
    """Share of the true pairs of each label found with score >= threshold (a nan threshold finds none)."""
    return {name: found / n for name, (found, n) in per_label_found(pairs, truth, threshold).items()}


def per_label_found(pairs: ScoredPairs, truth: Truth, threshold: float) -> dict[str, tuple[int, int]]:
    """Per label: (true pairs of that label found with score >= threshold, true pairs of that label)."""
    if not len(truth.pairs) or not any(truth.labels):
        return {}
    called = np.asarray(pairs.score) >= threshold
    called_pairs = np.stack([np.asarray(pairs.a)[called], np.asarray(pairs.b)[called]], axis=1)
    # Which true pairs are among the called ones: label_pairs with the roles swapped.
    found = label_pairs(ScoredPairs(truth.pairs[:, 0], truth.pairs[:, 1], np.ones(len(truth.pairs))), called_pairs)
    labels = np.array(truth.labels, dtype=object)
    return {str(name): (int(found[labels == name].sum()), int((labels == name).sum()))
            for name in sorted(set(truth.labels)) if name}
