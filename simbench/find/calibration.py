"""Calibration: each stage's raw signal -> an estimated precision, so one threshold means the same for all.

A table is fitted on labelled pairs (isotonic regression of "is a true pair" on the raw signal,
Zadrozny & Elkan 2002) and is keyed by every setting that changes the raw signal (`signal_settings`):
a stage whose settings match no table is *uncalibrated*, and says so in pairs.csv and the report
instead of borrowing a table that means something else.

The map is strictly increasing everywhere (no plateaus): between knots it is linear through strictly
increasing precisions, and beyond the outer knots it keeps falling towards 0 and rising towards 1,
so two pairs get equal scores only when their raw evidence is equal.

Tables ship in `calibration.json` (made by `python benchmarks/bench_find.py calibrate --seeds 1,2` on the tuning
split of the development set and its rebuilds); `simbench calibrate RUN_DIR truth.csv` fits a user's own.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

log = logging.getLogger("simbench")

#: The shipped tables (package data of simbench.find).
CALIBRATION_FILE = Path(str(resources.files("simbench.find") / "calibration.json"))

#: Settings that change how fast or where a stage runs, never its raw signal: left out of the key.
#: (onnx and torch embeddings agree within the tolerance stated in results/cnn.md.)
NOT_SIGNAL = frozenset({"workers", "batch_size", "device", "strict_device", "threads", "runtime",
                        "extract_device", "extract_fallback", "match_device", "match_fallback", "matcher",
                        "lsh_bits", "lsh_recall", "max_pairs_verified", "progress", "half", "channels_last"})

#: The smallest step between knot precisions: keeps the map strictly increasing.
STEP = 1e-6


def signal_settings(stage_name: str, extractor, method, signal: str) -> dict:
    """What a calibration table must match: the extractor and method settings that change the signal."""
    def clean(params: dict) -> dict:
        out = {}
        for k, v in sorted(params.items()):
            if k in NOT_SIGNAL:
                continue
            if k == "weights" and isinstance(v, dict):  # the same weights file on any machine
                v = {"source": v.get("source"), "size": v.get("size")}
            out[k] = v
        return out

    return {"stage": stage_name, "extractor": extractor.name, "extractor_params": clean(extractor.params()),
            "method_params": clean(method.params()), "signal": signal}


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Calibration:
    """raw -> estimated precision through knots (raw, precision), both strictly increasing.

    Below the first knot the precision falls towards 0, above the last it rises towards 1, hyperbolically
    over `tail` raw units (slow enough never to reach 0 or 1 in floating point), so the map is strictly
    increasing on the whole line.
    """

    raw: np.ndarray
    precision: np.ndarray
    signal: str = "score"
    settings: dict = field(default_factory=dict)
    note: str = ""
    pairs: int = 0
    true: int = 0

    def __post_init__(self):
        self.raw = np.asarray(self.raw, np.float64)
        self.precision = strictly_increasing(np.clip(np.asarray(self.precision, np.float64), STEP, 1 - STEP))

    @property
    def key(self) -> str:
        return settings_key(self.settings)

    @property
    def tail(self) -> float:
        span = float(self.raw[-1] - self.raw[0])
        return span if span > 0 else max(abs(float(self.raw[0])), 1.0)

    def __call__(self, raw) -> np.ndarray:
        x = np.atleast_1d(np.asarray(raw, np.float64))
        p = np.interp(x, self.raw, self.precision)
        low, high = x < self.raw[0], x > self.raw[-1]
        p[low] = self.precision[0] / (1.0 + (self.raw[0] - x[low]) / self.tail)
        p[high] = 1.0 - (1.0 - self.precision[-1]) / (1.0 + (x[high] - self.raw[-1]) / self.tail)
        return p

    def to_json(self) -> dict:
        return {"key": self.key, "signal": self.signal, "settings": self.settings, "note": self.note,
                "pairs": self.pairs, "true": self.true,
                "raw": [float(f"{v:.7g}") for v in self.raw], "precision": [round(float(v), 6) for v in self.precision]}

    @classmethod
    def from_json(cls, t: dict) -> "Calibration":
        return cls(np.asarray(t["raw"]), np.asarray(t["precision"]), t.get("signal", "score"),
                   t.get("settings", {}), t.get("note", ""), int(t.get("pairs", 0)), int(t.get("true", 0)))


def strictly_increasing(p: np.ndarray) -> np.ndarray:
    """p made strictly increasing by the smallest steps (a running maximum plus STEP)."""
    out = np.array(p, np.float64)
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + STEP)
    return out


def load_calibrations(path: str | Path = CALIBRATION_FILE) -> dict[str, Calibration]:
    """Tables by settings key; {} when the file is absent."""
    tables = [Calibration.from_json(t) for t in _read(path).get("tables", [])]
    return {t.key: t for t in tables}


def load_fusions(path: str | Path = CALIBRATION_FILE) -> list["Fusion"]:
    """The fusion models of a calibration file ([] when absent)."""
    return [Fusion.from_json(t) for t in _read(path).get("fusions", [])]


def _read(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        if Path(path) == CALIBRATION_FILE:  # never run silently uncalibrated for want of the shipped file
            raise FileNotFoundError(f"the calibration tables that ship with simbench are missing: {path} "
                                    "(a broken install? reinstall simbench)") from None
        return {}


def rekeyed(tables: dict[str, Calibration], fusions: list["Fusion"],
            settings: dict[str, dict]) -> tuple[list[Calibration], list["Fusion"]]:
    """The tables and fusions of the settings keys that `settings` maps (settings key -> the stage settings
    to key them by instead), keyed by those; the others left out. For runs under settings a table stands in
    for: a tuning half run with its own copy whitening (which `calibrate` fitted the tables on), a test's
    CNN stage without region views."""
    moved = [Calibration(t.raw, t.precision, t.signal, settings[k], t.note, t.pairs, t.true)
             for k, t in tables.items() if k in settings]
    fitted = [Fusion(f.stages, [settings_key(settings[k]) for k in f.keys], f.intercept, f.found_weight, f.weight,
                     f.transform, f.note) for f in fusions if all(k in settings for k in f.keys)]
    return moved, fitted


def save_calibrations(tables: list[Calibration], path: str | Path, about: str,
                      fusions: list["Fusion"] = ()) -> None:
    from simbench.cache import atomic_write_bytes

    doc = {"about": about, "tables": [t.to_json() for t in tables], "fusions": [f.to_json() for f in fusions]}
    atomic_write_bytes(Path(path), (json.dumps(doc, indent=1) + "\n").encode())


def fit_calibration(raw: np.ndarray, is_true: np.ndarray, signal: str = "score", settings: dict | None = None,
                    max_knots: int = 48, min_block: int = 10, note: str = "") -> Calibration:
    """Monotone raw -> precision table from labelled pairs: isotonic regression (pool-adjacent-violators)
    of is_true on raw, over blocks of at least `min_block` pairs, each block's precision Laplace-smoothed
    ((tp + 1) / (n + 2), so a few hundred pairs never claim certainty) and pooled again where smoothing
    broke the order; knots at the blocks' median raw values (at most max_knots)."""
    raw = np.asarray(raw, np.float64)
    y = np.asarray(is_true, np.float64)
    if len(raw) == 0:
        raise ValueError("no pairs to calibrate on")
    order = np.argsort(raw, kind="stable")
    raw, y = raw[order], y[order]
    # Runs of min_block pairs to start from (equal raw values never split).
    starts = [0]
    for k in range(1, len(raw)):
        if k - starts[-1] >= min_block and raw[k] != raw[k - 1]:
            starts.append(k)
    bounds = list(zip(starts, starts[1:] + [len(raw)]))
    tp = np.array([y[s:e].sum() for s, e in bounds])
    n = np.array([e - s for s, e in bounds], np.float64)
    blocks = pava_blocks(tp, n)
    # Smoothing favours big blocks; pool again wherever it reversed the order.
    tp_b = np.array([tp[f:l + 1].sum() for f, l in blocks])
    n_b = np.array([n[f:l + 1].sum() for f, l in blocks])
    merged = pava_blocks(tp_b + 1.0, n_b + 2.0)
    centres, precision = [], []
    for first, last in merged:
        s, e = bounds[blocks[first][0]][0], bounds[blocks[last][1]][1]
        centres.append(float(np.median(raw[s:e])))
        precision.append((float(y[s:e].sum()) + 1.0) / (e - s + 2.0))
    centres, precision = np.array(centres), np.array(precision)
    if len(centres) > max_knots:
        keep = np.unique(np.linspace(0, len(centres) - 1, max_knots).round().astype(int))
        centres, precision = centres[keep], precision[keep]
    # Block medians can tie when a block is one repeated value; nudge them apart.
    centres = centres + np.arange(len(centres)) * 1e-9
    centres = np.maximum.accumulate(centres)
    return Calibration(centres, precision, signal, settings or {}, note, int(len(raw)), int(y.sum()))


def pava_blocks(tp: np.ndarray, n: np.ndarray) -> list[tuple[int, int]]:
    """Pool-adjacent-violators over bins (tp, n): runs of bins [first, last] with increasing means."""
    out: list = []  # [mean, tp, weight, first, last]
    for k, (t, w) in enumerate(zip(tp, n)):
        out.append([t / w, t, w, k, k])
        # >= also pools equal means: fewer, larger blocks, and strictly increasing means.
        while len(out) > 1 and out[-2][0] >= out[-1][0]:
            _, t2, w2, _, l2 = out.pop()
            _, t1, w1, f1, _ = out.pop()
            out.append([(t1 + t2) / (w1 + w2), t1 + t2, w1 + w2, f1, l2])
    return [(f, l) for *_, f, l in out]


def uncalibrated_score(raw: np.ndarray, signal: str) -> np.ndarray:
    """The stand-in when no table matches: strictly increasing and in [0, 1), marked "uncalibrated"
    in every output because it estimates nothing (scores clipped; counts n as n / (n + 10))."""
    raw = np.asarray(raw, np.float64)
    if signal == "score":
        return np.clip(raw, 0.0, 1.0)
    return np.maximum(raw, 0.0) / (np.maximum(raw, 0.0) + 10.0)


def fit_from_runs(runs: list[tuple[str | Path, str | Path]], min_pairs: int = 5) -> list[Calibration]:
    """One table per stage from `simbench find` runs and their truth.csv files: [(run dir or its
    pairs.csv, truth.csv)]. Stages with the same settings pool their pairs across runs."""
    from simbench.find.outputs import read_evidence
    from simbench.find.truth import read_truth
    from simbench.evaluate import label_pairs
    from simbench.types import ScoredPairs

    pooled: dict[str, dict] = {}
    for run, truth_csv in runs:
        run = Path(run)
        evidence = (run.parent if run.is_file() else run) / "evidence.npz"
        if not evidence.is_file():
            raise FileNotFoundError(f"{evidence} not found: give the --out folder of a `simbench find` run")
        items, raw, settings = read_evidence(evidence)
        truth = read_truth(truth_csv, items)
        if truth.unmatched:
            log.warning("%s: %d truth rows name images that run did not see", truth_csv, len(truth.unmatched))
        for stage, found in raw.items():
            entry = pooled.setdefault(settings_key(settings[stage]), {"settings": settings[stage], "raw": [], "y": []})
            found = truth.labelled_pairs(found)  # all (truth.csv), or those a review labelled (decisions.csv)
            entry["raw"].append(found.score)
            entry["y"].append(label_pairs(ScoredPairs(found.a, found.b, found.score), truth.pairs))
    tables = []
    for entry in pooled.values():
        raw, y = np.concatenate(entry["raw"]), np.concatenate(entry["y"])
        name = entry["settings"]["stage"]
        if len(raw) < min_pairs:
            log.warning("%s: %d labelled pairs are too few to fit a table; skipped", name, len(raw))
            continue
        if y.all() or not y.any():
            log.warning("%s: all %d pairs are %s: the table cannot tell good evidence from bad; label a "
                        "collection with both kinds", name, len(raw), "true" if y.all() else "false")
        tables.append(fit_calibration(raw, y, entry["settings"]["signal"], entry["settings"],
                                      note=f"fitted by simbench calibrate on {len(runs)} run(s)"))
    return tables


# ---------------------------------------------------------------------------------------------------
# Fusion: the stages' calibrated scores of a pair -> one estimated precision


#: The smallest weight of a stage's evidence in the fusion: keeps the fused score strictly increasing in it.
MIN_WEIGHT = 0.01


@dataclass
class Fusion:
    """A logistic model over the stages' raw signals of a pair (fitted on labelled pairs):

        z = intercept + sum over stages s of  found_weight[s] * found_s
                      + sum over inputs i of    weight[i] * found_stage(i) * x_i
        fused = 1 / (1 + exp(-z))

    found_s: whether stage s scored the pair (a stage that scores any pair asked, like the CNN, always
    does); inputs: each stage's raw signal (named as the stage; log(1 + x) for counts, the keypoint
    evidence) and its extra signals ("stage/field", e.g. "keypoints/distinctiveness": how much of the
    inliers' weight survives the burstiness discount). Every weight is >= 0 (the input weights >=
    MIN_WEIGHT), so the fused score is strictly increasing in each piece of evidence;
    the stages can still disagree: a pair the keypoints verify but whose pictures the CNN finds no
    closer than their background is less likely a copy than one both agree on (a shared frame or
    template rather than the same picture). As a logistic fit it is itself a calibration (Platt 1999).
    keys: the settings keys of the stage tables fitted with it, in stage order. weight and transform are
    keyed by input.
    """

    stages: list[str]
    keys: list[str]
    intercept: float
    found_weight: dict[str, float]
    weight: dict[str, float]
    transform: dict[str, str]
    note: str = ""

    def __call__(self, raw: dict[str, np.ndarray], found: dict[str, np.ndarray]) -> np.ndarray:
        z = np.full(len(next(iter(raw.values()))), self.intercept)
        for s in self.stages:
            z += self.found_weight[s] * found[s]
        for name, w in self.weight.items():
            z += w * found[input_stage(name)] * fusion_feature(raw[name], self.transform[name])
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"stages": self.stages, "keys": self.keys, "intercept": self.intercept,
                "found_weight": self.found_weight, "weight": self.weight, "transform": self.transform,
                "note": self.note}

    @classmethod
    def from_json(cls, t: dict) -> "Fusion":
        return cls(list(t["stages"]), list(t["keys"]), float(t["intercept"]), dict(t["found_weight"]),
                   dict(t["weight"]), dict(t["transform"]), t.get("note", ""))


def input_stage(name: str) -> str:
    """The stage a fusion input belongs to: "keypoints/distinctiveness" -> "keypoints"."""
    return name.split("/", 1)[0]


#: How the fusion may read an input: as it is, counts on a log scale, and a correlation by its nearness to 1 on a log
#: scale (-log(1 - x), 0 at or below 0): the align stage's, whose copies and look-alikes differ in the last hundredths.
FUSION_TRANSFORMS = ("identity", "log1p", "neg_log1m")
#: neg_log1m's cap: a correlation of 1 reads as 1 - this.
NEAR_ONE = 1e-4


def fusion_feature(raw: np.ndarray, transform: str) -> np.ndarray:
    raw = np.nan_to_num(np.asarray(raw, np.float64))
    if transform == "log1p":
        return np.log1p(np.maximum(raw, 0.0))
    if transform == "neg_log1m":
        return -np.log1p(-np.clip(raw, 0.0, 1.0 - NEAR_ONE))
    if transform != "identity":
        raise ValueError(f"no fusion transform {transform!r} (transforms: {', '.join(FUSION_TRANSFORMS)})")
    return raw


def fit_logistic(x: np.ndarray, is_true: np.ndarray, lower: np.ndarray, ridge: float = 1e-2,
                 sample_weight: np.ndarray | None = None, offset: np.ndarray | float = 0.0) -> np.ndarray:
    """Weights w of P(true) = 1 / (1 + exp(-(x @ w + offset))) by maximum likelihood with a little ridge, each
    kept at or above its bound in `lower` (-inf: free): projected Newton steps, halved until the likelihood
    improves. sample_weight: per row (rescaled to sum to the number of rows); offset: per row, what weights
    not fitted here already add."""
    y = np.asarray(is_true, np.float64)
    sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64) * len(y) / np.sum(sample_weight)

    def objective(w):
        z = x @ w + offset
        return float(np.sum(sw * (y * z - np.logaddexp(0.0, z))) - ridge / 2 * w @ w)

    w = np.where(np.isfinite(lower), lower, 0.0)
    current = objective(w)
    for _ in range(200):
        q = 1.0 / (1.0 + np.exp(-(x @ w + offset)))
        gradient = x.T @ (sw * (y - q)) - ridge * w
        hessian = (x * (sw * q * (1 - q))[:, None]).T @ x + ridge * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        for _ in range(30):
            candidate = np.maximum(w + step, lower)
            value = objective(candidate)
            if value >= current:
                break
            step /= 2
        if value < current or np.max(np.abs(candidate - w)) < 1e-10:
            break
        w, current = candidate, value
    return w


def fit_fusion(stages: list[str], keys: list[str], transform: dict[str, str], raw: dict[str, np.ndarray],
               found: dict[str, np.ndarray], is_true: np.ndarray, ridge: float = 1e-2, note: str = "",
               sample_weight: np.ndarray | None = None, found_weights: bool = True,
               kept: Fusion | None = None, keep: tuple[str, ...] = ()) -> Fusion:
    """The logistic fusion of the stages' raw signals (`fit_logistic`; every weight >= 0, input weights
    >= MIN_WEIGHT, so the score is increasing in each piece of evidence). A stage that
    found every pair (one that scores any pair) gets no found weight: it would only copy the intercept.
    found_weights=False fits none at all: a pair then gains only what its evidence is worth, not a step for
    having been found (a step the tuning collections can teach where a stage's pairs are seldom false).
    transform and raw: keyed by input (a stage's name for its signal, "stage/field" for its extra signals);
    found: keyed by stage. sample_weight: per pair (e.g. so that every tuning collection counts alike,
    however many pairs). keep: stages whose found weight and input weights are taken from `kept` (a fusion
    fitted before, on the same inputs) instead of fitted: only the other stages' weights and the intercept are
    fitted, given what the kept ones add (e.g. a stage whose signal changed refitted, the others as they were).
    "intercept" in keep holds `kept`'s intercept too (a stage added whose weight alone is fitted: the pairs it did
    not find score as before)."""
    hold_intercept = "intercept" in keep
    missing = [s for s in keep if kept is None or (s != "intercept" and s not in kept.stages)]
    if missing:
        raise ValueError(f"cannot keep the fusion weights of {missing}: no fitted fusion with those stages given")
    columns, lower, slots = ([], [], []) if hold_intercept else ([np.ones(len(is_true))], [-np.inf], [])
    offset = np.full(len(is_true), kept.intercept if hold_intercept else 0.0)
    found_weight, weight = {s: 0.0 for s in stages}, {}
    for s in stages:
        f = found[s].astype(np.float64)
        if s in keep:
            found_weight[s] = kept.found_weight[s]
            offset += kept.found_weight[s] * f
            for name in (i for i in transform if input_stage(i) == s):
                if kept.transform.get(name) != transform[name]:
                    raise ValueError(f"cannot keep the fusion weight of {name}: fitted on {kept.transform.get(name)}, "
                                     f"now {transform[name]}")
                weight[name] = kept.weight[name]
                offset += kept.weight[name] * f * fusion_feature(raw[name], transform[name])
            continue
        if found_weights and not f.all():
            slots.append((s, "found", len(columns)))
            columns.append(f)
            lower.append(0.0)
        for name in (i for i in transform if input_stage(i) == s):
            slots.append((name, "signal", len(columns)))
            columns.append(f * fusion_feature(raw[name], transform[name]))
            lower.append(MIN_WEIGHT)
    if not columns:
        raise ValueError(f"nothing left to fit: every stage of {stages} and the intercept kept")
    w = fit_logistic(np.stack(columns, axis=1), is_true, np.array(lower), ridge, sample_weight, offset)
    for name, kind, k in slots:
        (found_weight if kind == "found" else weight)[name] = float(w[k])
    intercept = kept.intercept if hold_intercept else float(w[0])
    return Fusion(list(stages), list(keys), intercept, found_weight, weight, dict(transform), note)
