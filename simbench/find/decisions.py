"""A reviewer's decisions (decisions.csv): pairs confirmed duplicate or not, applied when find runs again.

decisions.csv has columns a,b,decision (other columns are ignored): a and b name two images as pairs.csv
does (paths as found, or absolute, or relative to the CSV's folder; a PDF image as
`book.pdf#page=3&image=2`), decision is `duplicate` or `not_duplicate`. The review page downloads it.

Applied by `simbench find --decisions` (and simbench.find(..., decisions=...)):
- a pair confirmed not a duplicate is dropped before linking: it is in no output, it never joins two
  groups, and linking does not bring it back through other pairs;
- a pair confirmed a duplicate gets score 1 and method "decision" whatever the stages scored (their
  per-stage scores are kept): a reviewer's word is certain, so it counts at every threshold;
- rows naming an image the run did not see are stale: listed, not applied; unusable rows (an unknown
  decision word, an empty name, one image twice, two rows that contradict each other) are skipped with
  the reason. The run writes DIR/decisions.json and prints the counts.
The same file is ground truth for `simbench calibrate` and `--truth` (simbench.find.truth).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

DUPLICATE, NOT_DUPLICATE = "duplicate", "not_duplicate"
#: The method (pairs.csv) of a pair a reviewer confirmed as a duplicate.
DECISION = "decision"
COLUMNS = ("a", "b", "decision")


class DecisionsError(ValueError):
    """A decisions file that cannot be used at all (missing, not a CSV, lacking a column)."""


@dataclass(frozen=True)
class DecisionRow:
    line: int  # in the file, the header being line 1
    a: str
    b: str
    decision: str


@dataclass
class DecisionFile:
    """The usable rows of a decisions.csv, and (line, reason) for every row that is not."""

    path: Path
    rows: list[DecisionRow]
    problems: list[tuple[int, str]]


def read_decisions(path: str | Path) -> DecisionFile:
    """Parse a decisions.csv (before any run: a file that cannot be used stops the run at once)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            text = f.read()
    except FileNotFoundError:
        raise DecisionsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DecisionsError(f"{path}: cannot read it as a CSV text file ({exc})") from None
    try:
        return _parse(path, csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:  # a NUL byte, an unterminated quote at the end...
        raise DecisionsError(f"{path}: not a readable CSV file ({exc})") from None


def _parse(path: Path, reader: csv.DictReader) -> DecisionFile:
    header = [str(c).strip().lower() for c in reader.fieldnames or []]
    if not set(COLUMNS) <= set(header):
        raise DecisionsError(f"{path}: needs columns {','.join(COLUMNS)} (found {','.join(header) or 'none'})")
    reader.fieldnames = header
    rows, problems = [], []
    for row in reader:
        line = reader.line_num
        a, b = (str(row.get(c) or "").strip() for c in "ab")
        word = str(row.get("decision") or "").strip().lower().replace(" ", "_").replace("-", "_")
        if not a or not b:
            problems.append((line, "an image name is empty"))
        elif word not in (DUPLICATE, NOT_DUPLICATE):
            problems.append((line, f"unknown decision {row.get('decision')!r} (use {DUPLICATE} or {NOT_DUPLICATE})"))
        else:
            rows.append(DecisionRow(line, a, b, word))
    return DecisionFile(path, rows, problems)


@dataclass
class Decisions:
    """A decisions file matched to a run's images (positions in its items, a < b).

    duplicate, not_duplicate: (P, 2) pairs; stale: rows naming an image the run did not see;
    problems: (line, reason) of rows not used. hidden / added: set by `apply` (pairs the run had found
    that are now hidden; confirmed pairs the stages had not found).
    """

    path: str
    duplicate: np.ndarray
    not_duplicate: np.ndarray
    stale: list[DecisionRow]
    problems: list[tuple[int, str]]
    hidden: int = 0
    added: int = 0
    _hidden_keys: set = field(default_factory=set, repr=False)

    @property
    def applied(self) -> int:
        return len(self.duplicate) + len(self.not_duplicate)

    def apply(self, pairs, n_items: int):
        """FusedPairs with the not-duplicates dropped and the duplicates at score 1, method "decision"."""
        from simbench.find.cascade import FusedPairs, _keys

        pairs = self.hide(pairs, n_items)
        keys = _keys(pairs.a, pairs.b, n_items)
        confirmed = np.unique(_keys(self.duplicate[:, 0], self.duplicate[:, 1], n_items))
        at = np.searchsorted(keys, confirmed)  # fused pairs are sorted by key
        found = (at < len(keys)) & (keys[np.minimum(at, max(len(keys) - 1, 0))] == confirmed) if len(keys) else \
            np.zeros(len(confirmed), bool)
        score, method = pairs.score.copy(), pairs.method.copy()
        score[at[found]] = 1.0
        method[at[found]] = DECISION
        new = confirmed[~found]
        self.added = len(new)
        all_keys = np.concatenate([keys, new])
        order = np.argsort(all_keys, kind="stable")
        extend = np.zeros(len(new))
        calibrated = None
        if pairs.calibrated is not None:  # a reviewer's word is no estimate to calibrate
            calibrated = np.concatenate([pairs.calibrated, np.ones(len(new), bool)])
            calibrated[at[found]] = True
        return FusedPairs((all_keys // n_items)[order], (all_keys % n_items)[order],
                          np.concatenate([score, np.ones(len(new))])[order],
                          np.concatenate([method, np.full(len(new), DECISION, dtype=object)])[order],
                          {name: np.concatenate([v, extend])[order] for name, v in pairs.per_stage.items()},
                          None if calibrated is None else calibrated[order])

    def hide(self, pairs, n_items: int):
        """FusedPairs without the pairs confirmed not duplicates (counted once each in `hidden`)."""
        from simbench.find.cascade import _keys

        keys = _keys(pairs.a, pairs.b, n_items)
        rejected = _keys(self.not_duplicate[:, 0], self.not_duplicate[:, 1], n_items)
        drop = np.isin(keys, rejected)
        self._hidden_keys.update(keys[drop].tolist())
        self.hidden = len(self._hidden_keys)
        return pairs.subset(np.flatnonzero(~drop)) if drop.any() else pairs

    def summary(self) -> str:
        """One line for the terminal; stale rows and skipped rows listed (the first few) below it."""
        lines = [f"decisions {self.path}: {self.applied} applied ({len(self.duplicate)} duplicate, {self.added} "
                 f"of them not found by any stage; {len(self.not_duplicate)} not duplicate, {self.hidden} found "
                 f"pairs hidden), {len(self.stale)} stale (naming no image of this run), {len(self.problems)} "
                 f"rows skipped"]
        lines += [f"  stale, line {r.line}: {r.a} , {r.b} ({r.decision})" for r in self.stale[:10]]
        lines += [f"  skipped, line {line}: {why}" for line, why in self.problems[:10]]
        more = max(len(self.stale) - 10, 0) + max(len(self.problems) - 10, 0)
        if more:
            lines.append(f"  ... and {more} more in decisions.json")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """What decisions.json holds (and the report's data)."""
        return {"file": self.path, "applied": self.applied, "duplicate": len(self.duplicate),
                "not_duplicate": len(self.not_duplicate), "hidden": self.hidden, "added": self.added,
                "stale": [{"line": r.line, "a": r.a, "b": r.b, "decision": r.decision} for r in self.stale],
                "skipped": [{"line": line, "reason": why} for line, why in self.problems]}


def match_decisions(parsed: DecisionFile, displays: Sequence[str]) -> Decisions:
    """The rows of a parsed decisions.csv as pairs of the run's images (display paths, as in pairs.csv).

    A pair named twice with the same decision counts once; with both decisions, neither is applied."""
    from simbench.find.truth import ItemNames

    names = ItemNames(displays)
    by_pair: dict[tuple[int, int], list[DecisionRow]] = {}
    stale, problems = [], list(parsed.problems)
    for row in parsed.rows:
        ka, kb = names.position(row.a, parsed.path.parent), names.position(row.b, parsed.path.parent)
        if ka is None or kb is None:
            stale.append(row)
        elif ka == kb:
            problems.append((row.line, "both names are the same image"))
        else:
            by_pair.setdefault((min(ka, kb), max(ka, kb)), []).append(row)
    chosen: dict[str, list] = {DUPLICATE: [], NOT_DUPLICATE: []}
    for pair, rows in by_pair.items():
        words = {r.decision for r in rows}
        if len(words) > 1:
            lines = ", ".join(str(r.line) for r in rows)
            problems += [(r.line, f"contradicts another row for the same pair (lines {lines}): neither applied")
                         for r in rows]
        else:
            chosen[words.pop()].append(pair)
    problems.sort()

    def array(pairs):
        return np.array(sorted(pairs), np.int64).reshape(-1, 2)

    return Decisions(str(parsed.path), array(chosen[DUPLICATE]), array(chosen[NOT_DUPLICATE]), stale, problems)


def write_decisions_json(path: Path, decided: Decisions | None) -> None:
    """DIR/decisions.json: what a run's decisions did (Decisions.to_json); removed for a run without
    decisions, so that an earlier run's file never describes this one."""
    import json

    from simbench.cache import atomic_write_bytes

    if decided is None:
        Path(path).unlink(missing_ok=True)
        return
    atomic_write_bytes(Path(path), (json.dumps(decided.to_json(), indent=1) + "\n").encode())
