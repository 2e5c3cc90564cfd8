"""The find methods: stages of evidence, each calibrated to an estimated precision, fused, then linked.

The default ("cascade", chosen by the measurements in results/find.md):

1. identical: images with the same pixel data (same file bytes, or the same embedded PDF image drawn
   twice) pair up at score 1: certain, and free;
2. keypoints: BRISK descriptors of the image and of its mirror image (so flips match), spread over the
   picture, half of them found on the picture smoothed (thin strokes that a copy's rescaling moves),
   candidate pairs from multi-index hashing of the descriptors (cheap: only images sharing close
   descriptors are ever looked at), each candidate verified by a RANSAC similarity fit (Fischler & Bolles
   1981); the evidence discounts content shared by many pictures (burstiness) and matches that cover
   little of either picture (simbench.methods.keypoints). An option, off (results/find.md, runs 27 and 28):
   each image's best CNN pairs (step 3) that it did not verify, verified on correspondences of the two
   pictures matched by brute force with Lowe's ratio test (keypoints.method.proposals);
3. cnn: EfficientNet-Lite0 GeM embeddings (the picture and the picture blurred, averaged: fine detail that
   copies lose weighs less), each image's nearest neighbours, scored against the
   similarity to its 10th neighbour (ISC2021 normalisation), for what keypoints cannot see; then the "blobs"
   stage checks each image's blobs.method.proposals best CNN pairs (5; 0 turns it off) on SIFT blobs of the
   pictures at a coarse scale, a descriptor shared by many of the proposed pictures dropped before the fit (a flat
   photo's corners are mostly the crest and frame it shares; its blobs are its own); then the "align" stage lays
   the thumbnails of each image's align.method.proposals best CNN pairs (3, and unheld_proposals more for an image
   no pair holds yet; 0 turns it off) that the stages before it do not already score at align.method.skip_held_at
   (0.95) over each other (simbench.methods.align: a flat picture's copy still lines up with it); then
   "blobs_wide" looks again, on the blobs stage's own blobs, at each image's blobs_wide.method.proposals best CNN
   pairs (5; 0 turns it off) that no keypoint stage verified, with the shared-descriptor cut relaxed and a coverage
   floor (a drawing's hatching matches across a change of scale in many pictures; a crest on different photos
   covers little);
4. each stage's raw signal -> estimated precision by a strictly increasing table keyed by the stage's
   settings (simbench.find.calibration; `calibration.json`, fitted on the tuning collections by
   `python benchmarks/bench_find.py calibrate --seeds 1,2`); a stage without a matching table is "uncalibrated";
5. fusion: every pair found by any stage is also scored by the CNN, and a logistic model over both
   stages' signals, fitted with the tables, gives its score (`fusion=noisy_or` or `max` combine the
   calibrated scores instead);
6. linking: a pair not seen directly but joined through others (A~B, B~C) gets the product of the
   scores along the strongest chain (the path in the maximum spanning tree of the pairs scoring at
   least link_min_score), method "linked": never more than its weakest pair (link_score=weakest: just
   that, so it scores >= the threshold exactly when groups.json puts its two images in one group).

Alternatives (`--method`): keypoints, cnn, hash (identical + that one stage).
Every setting lives in conf/find.yaml (composed with Hydra, the runner's groups choosing each stage's
extractor and matcher) and can be overridden with key=value, e.g.
`keypoints.extractor.max_features=1000 threshold=0.8 link=false detector=orb`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from simbench.features.base import Extractor
from simbench.find import agreement
from simbench.find.calibration import (Calibration, Fusion, load_calibrations, load_fusions, settings_key,
                                       signal_settings, uncalibrated_score)
from simbench.methods.base import Method
from simbench.types import ScoredPairs

log = logging.getLogger("simbench")

IDENTICAL = "identical"
LINKED = "linked"

#: Which stages each --method runs (the identical stage always runs). "blobs", "align" and "blobs_wide" run only
#: when they have proposals to verify (their method.proposals > 0): they find no pairs of their own.
METHODS = {
    "cascade": ("keypoints", "cnn", "blobs", "align", "blobs_wide"),
    "keypoints": ("keypoints",),
    "cnn": ("cnn",),
    "hash": ("hash",),
}

#: The runner's component groups, and the stage settings each chooses in find (conf/find.yaml's defaults):
#: detector=orb is the keypoints stage's detector, matcher=exact every stage's matcher.
GROUP_PACKAGES = {"detector": ("keypoints.extractor",), "backbone": ("cnn.extractor",),
                  "hash": ("hash.extractor",), "matcher": ("keypoints.matcher", "cnn.matcher", "hash.matcher")}


def make_config(method: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The settings of `simbench find`: conf/find.yaml composed by Hydra with `key=value` overrides (and
    --method, which wins over method=...; with neither, the default method if this install can run it)."""
    from hydra import compose, initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException

    from simbench import CONFIG_MODULE
    from simbench.find.pdf import PdfOptions

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    pairs = [o.split("=", 1) for o in overrides]
    method = method or next((v for k, v in reversed(pairs) if k == "method"), None)  # not a Hydra group here
    hydra_overrides = []
    for key, value in pairs:
        if key in GROUP_PACKAGES:  # a group of the runner: the stage settings it chooses here
            hydra_overrides += [f"{key}@{package}={value}" for package in GROUP_PACKAGES[key]]
        elif key != "method":
            hydra_overrides.append(f"{key}={value}")
    pdf = OmegaConf.structured(PdfOptions)  # find.yaml's pdf node: the dataclass's fields and defaults
    OmegaConf.set_readonly(pdf, False)
    ConfigStore.instance().store(name="find_pdf", node=pdf)
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose("find", overrides=hydra_overrides)
    except HydraException as exc:
        raise ValueError(setting_error(exc)) from None
    OmegaConf.set_struct(cfg, False)  # a plain config, as callers know it
    cfg.method = method or runnable_default(cfg)
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; choose one of {', '.join(FUSIONS)}")
    if cfg.link_score not in LINK_SCORES:  # before any work, not when linking comes
        raise ValueError(f"unknown link_score {cfg.link_score!r}; choose one of {', '.join(LINK_SCORES)}")
    return cfg


def setting_error(exc: Exception) -> str:
    """Hydra's composition error, said in find's words."""
    unknown = re.search(r"Could not override '([^']+)'", str(exc))
    if unknown:
        return f"unknown setting {unknown[1]!r} (every setting is in conf/find.yaml; see simbench find --help)"
    said = str(exc).split("\nConfig search path")[0].strip()  # the options, not where Hydra looked
    return f"{said} ({str(exc.__cause__).splitlines()[0]})" if exc.__cause__ else said


# ---------------------------------------------------------------------------------------------------
# Stages


@dataclass
class Stage:
    """One kind of evidence: an extractor (features kept in the index), a method scoring pairs of its
    features, and the calibration of its raw signal (None: no table matches its settings)."""

    name: str
    extractor: Extractor
    method: Method
    signal: str = "score"
    calibration: Calibration | None = None
    extra_signals: tuple[str, ...] = ()  # more per-pair fields of its method's output the fusion reads
    # Keypoint stages: pairs whose pictures, laid over each other, agree less than this over their whole
    # overlap are dropped (simbench.find.agreement.overlap_agreement); 0: none. overlap_border: the band
    # along each picture's edges left out of that overlap (shares of its width and height).
    min_overlap_agreement: float = 0.0
    overlap_border: float = 0.0
    # Keypoint stages: pairs whose pictures agree less than this away from their matches are dropped next
    # (simbench.find.agreement.away_agreement, a correlation in [-1, 1]); 0: none.
    min_away_agreement: float = 0.0
    # A stage of proposals only: its features extracted while matching, for the pictures of the pairs it verifies
    # (simbench.find.on_demand), not for every picture as the files are read.
    on_demand: bool = False

    @property
    def indexed(self) -> bool:
        """Whether its features are kept in the index (thumbnails are the items' own)."""
        return self.extractor.kind != "thumbnails"

    @property
    def section(self) -> str:
        """The index section of its features."""
        return self.extractor.name

    @property
    def settings(self) -> dict:
        """What its calibration table is keyed by (the overlap floor and its border only when on: older tables
        stay)."""
        settings = signal_settings(self.name, self.extractor, self.method, self.signal)
        if self.min_overlap_agreement:
            settings["min_overlap_agreement"] = self.min_overlap_agreement
            if self.overlap_border:
                settings["overlap_border"] = self.overlap_border
        if self.min_away_agreement:
            settings["min_away_agreement"] = self.min_away_agreement
        return settings

    @property
    def is_calibrated(self) -> bool:
        return self.calibration is not None

    def raw_signal(self, pairs: ScoredPairs) -> np.ndarray:
        if self.signal == "score":
            return np.asarray(pairs.score, np.float64)
        return np.asarray(pairs.extra[self.signal], np.float64)

    @property
    def reads_agreement(self) -> bool:
        """Whether it reads the fields of simbench.find.agreement (laid-over thumbnails: find adds them)."""
        return bool({self.signal, *self.extra_signals} & set(agreement.FIELDS))

    @property
    def scores_any_pair(self) -> bool:
        """Whether the stage can score pairs it did not find itself (the CNN: a dot product)."""
        return self.signal == "score" and hasattr(self.method, "score_given")

    @property
    def fusion_transform(self) -> str:
        """How the fusion model reads the raw signal (calibration.FUSION_TRANSFORMS): as the method says (the align
        stage's correlation), else counts on a log scale, scores as they are."""
        return getattr(self.method, "fusion_transform", "identity" if self.signal == "score" else "log1p")

    @property
    def fusion_inputs(self) -> dict[str, str]:
        """What the fusion model may read of this stage, name -> transform: the raw signal (named as the
        stage) and each extra signal ("stage/field", fields in [0, 1] read as they are)."""
        return {self.name: self.fusion_transform, **{f"{self.name}/{e}": "identity" for e in self.extra_signals}}

    def raw_pairs(self, found: ScoredPairs) -> ScoredPairs:
        """Its pairs with the raw signal as the score and the extra signals kept (what fusion reads), and what
        the evidence shows: its method's evidence_fields (a keypoint method's correspondences, ...)."""
        missing = [e for e in self.extra_signals if e not in found.extra and len(found)]
        if missing:
            fields = sorted(k for k, v in found.extra.items() if np.ndim(v) == 1 and len(v) == len(found))
            raise ValueError(f"{self.name}.extra_signals: {missing} not per-pair fields of its method ({fields})")
        extra = {e: np.asarray(found.extra.get(e, np.zeros(len(found))), np.float64) for e in self.extra_signals}
        for key in getattr(self.method, "evidence_fields", ()):
            if key in found.extra:
                extra[key] = found.extra[key]
        return ScoredPairs(found.a, found.b, self.raw_signal(found), extra=extra)

    def score_given(self, stage_features, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw signal of item pairs (a, b), and which of them it could score (both have features)."""
        feats, rows, _ = stage_features
        position = np.full(int(max(a.max(initial=-1), b.max(initial=-1), rows.max(initial=-1))) + 1, -1)
        position[rows] = np.arange(len(rows))
        ok = (position[a] >= 0) & (position[b] >= 0)
        raw = np.zeros(len(a))
        if ok.any():
            raw[ok] = self.method.score_given(feats, position[a[ok]], position[b[ok]])
        return raw, ok

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        """Estimated precision per raw signal value; without a table a monotone stand-in (the outputs
        then say "uncalibrated")."""
        if self.calibration is not None:
            return self.calibration(raw)
        return uncalibrated_score(raw, self.signal)


def unavailable(extractor: Extractor) -> str | None:
    """Why an extractor cannot run on this machine (a missing package or weights file), or None."""
    if getattr(extractor, "kind", None) != "embedding":
        return None
    try:
        import torch  # noqa: F401

        from simbench.features.cnn import resolve_weights

        resolve_weights(extractor.backbone, extractor.weights)
        if extractor.backbone == "efficientnet_lite0":
            import efficientnet_lite_pytorch  # noqa: F401
    except (ImportError, FileNotFoundError) as exc:
        return str(exc)
    return None


def runnable_default(cfg: DictConfig) -> str:
    """The default method, or keypoints (announced) when the default's CNN stage cannot run here."""
    if "cnn" not in METHODS.get(cfg.method, ()):
        return cfg.method
    import importlib.util

    from hydra.utils import instantiate

    why = "no torch" if importlib.util.find_spec("torch") is None else unavailable(instantiate(cfg.cnn.extractor))
    if why is None:
        return cfg.method
    log.warning("cnn stage unavailable (%s): using method=keypoints (pip install 'simbench[cnn]' for the "
                "default method, %s)", why, cfg.method)
    return "keypoints"


def build_stages(cfg: DictConfig, calibrations: dict[str, Calibration] | None = None,
                 quiet: bool = False) -> list[Stage]:
    """The stages of cfg.method, instantiated (Hydra `_target_`s), each with the calibration table whose
    settings it matches (tables from `calibrations`, else the shipped ones, else cfg.calibration's file)."""
    from hydra.utils import instantiate

    if calibrations is None:
        calibrations = load_calibrations()
        if cfg.get("calibration"):
            calibrations.update(load_calibrations(str(cfg.calibration)))
    stages = []
    for name in METHODS[cfg.method]:
        part = cfg[name]
        if not part.method.get("own_pairs", True) and not part.method.get("proposals", 0):
            continue  # a stage that only verifies proposals, with none asked for
        extractor = instantiate(part.extractor)
        missing = unavailable(extractor)
        if missing:  # never a stage quietly dropped (a default method that cannot run: runnable_default)
            raise RuntimeError(f"method {cfg.method}: its {name} stage cannot run: {missing}")
        method = instantiate(part.method, extractor=extractor, matcher=instantiate(part.matcher))
        stage = Stage(name, extractor, method, str(part.get("signal", "score")),
                      extra_signals=tuple(str(e) for e in part.get("extra_signals", ())),
                      min_overlap_agreement=float(part.get("min_overlap_agreement", 0.0)),
                      overlap_border=float(part.get("overlap_border", 0.0)),
                      min_away_agreement=float(part.get("min_away_agreement", 0.0)),
                      on_demand=bool(part.get("on_demand", False)))
        if stage.on_demand and (extractor.kind != "keypoints" or part.method.get("own_pairs", True)):
            raise ValueError(f"{name}.on_demand: only a keypoint stage that verifies proposals alone (own_pairs: "
                             "false) can extract its features while matching")
        if not 0.0 <= stage.overlap_border < 0.5:
            raise ValueError(f"{name}.overlap_border must be in [0, 0.5), not {stage.overlap_border}")
        for gate in ("min_overlap_agreement", "min_away_agreement"):
            if getattr(stage, gate) and extractor.kind != "keypoints":
                raise ValueError(f"{name}.{gate}: only a keypoint stage has the inliers' map it needs")
        if not -1.0 <= stage.min_away_agreement < 1.0:
            raise ValueError(f"{name}.min_away_agreement must be in [-1, 1), not {stage.min_away_agreement}")
        stage.calibration = calibrations.get(settings_key(stage.settings))
        if stage.calibration is None and not quiet:
            log.warning("%s: no calibration table for these settings, so its scores are uncalibrated "
                        "(ranked, but not estimates of precision; `simbench calibrate` fits one)", name)
        stages.append(stage)
    return stages


# ---------------------------------------------------------------------------------------------------
# Fusion


@dataclass
class FusedPairs:
    """Pairs of items (a < b) with the fused score, the stage that gave it, and every stage's score.

    per_stage: stage name -> calibrated score per pair (0 where that stage did not find the pair).
    calibrated: whether the pair's score is an estimate of precision (False when the stage that gave it,
        or for a linked pair any stage, has no calibration table for its settings); None = all are.
    """

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    method: np.ndarray  # str per pair
    per_stage: dict[str, np.ndarray] = field(default_factory=dict)
    calibrated: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> "FusedPairs":
        return FusedPairs(self.a[rows], self.b[rows], self.score[rows], self.method[rows],
                          {k: v[rows] for k, v in self.per_stage.items()},
                          None if self.calibrated is None else self.calibrated[rows])

    def __len__(self) -> int:
        return len(self.a)

    def as_scored(self) -> ScoredPairs:
        return ScoredPairs(self.a, self.b, self.score)


def identical_pairs(digests: Sequence[str], max_clique: int = 100) -> ScoredPairs:
    """Pairs of items with the same pixel data, score 1. A larger set of copies is joined as a star
    (first copy with each other), which linking completes."""
    by_digest: dict[str, list[int]] = {}
    for k, d in enumerate(digests):
        by_digest.setdefault(d, []).append(k)
    a, b = [], []
    for members in by_digest.values():
        if len(members) < 2:
            continue
        if len(members) <= max_clique:
            for x in range(len(members)):
                a += [members[x]] * (len(members) - x - 1)
                b += members[x + 1:]
        else:
            a += [members[0]] * (len(members) - 1)
            b += members[1:]
    return ScoredPairs(np.array(a, np.int64), np.array(b, np.int64), np.ones(len(a)))


FUSIONS = ("max", "noisy_or", "model")


def fuse(n_items: int, evidence: dict[str, ScoredPairs], rule: str = "max") -> FusedPairs:
    """One row per pair found by any stage, method = the stage with the best calibrated score, and
    score = that best score ("max"), or 1 - prod(1 - p_stage) ("noisy_or": agreeing stages add up, as
    independent pieces of evidence would; a pair seen by one stage keeps that stage's score).

    evidence: stage name -> pairs in item indices with calibrated scores (in [0, 1]).
    """
    if rule not in FUSIONS[:2]:
        raise ValueError(f"fuse() combines by {FUSIONS[:2]}, got {rule!r}")
    names = list(evidence)
    keys = [_keys(p.a, p.b, n_items) for p in evidence.values()]
    all_keys = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
    table = np.zeros((len(names), len(all_keys)))
    for s, (key, pairs) in enumerate(zip(keys, evidence.values())):
        np.maximum.at(table[s], np.searchsorted(all_keys, key), np.asarray(pairs.score, np.float64))
    best = table.argmax(axis=0) if len(names) else np.zeros(0, np.int64)
    score = table.max(axis=0) if len(names) else np.zeros(0)
    if rule == "noisy_or" and len(names):
        score = np.maximum(score, 1.0 - np.prod(1.0 - table, axis=0))  # max: rounding never lowers it
    a, b = all_keys // n_items, all_keys % n_items
    method = np.array(names, dtype=object)[best] if len(names) else np.empty(0, object)
    return FusedPairs(a, b, score, method, {name: table[s] for s, name in enumerate(names)})


def fusion_model(stages: list[Stage], cfg: DictConfig) -> Fusion | None:
    """The fitted fusion for these stages and calibration tables (cfg.fusion "model"), or None: one fitted on
    all of them, else one fitted on two or more of them, the most (`apply_fusion` adds the others' calibrated
    scores by noisy-OR: a stage fitted alone, such as blobs, is added to the shipped fusion of the rest)."""
    if str(cfg.fusion) != "model" or len(stages) < 2 or not all(s.is_calibrated for s in stages):
        return None
    fusions = load_fusions()
    if cfg.get("calibration"):
        fusions = load_fusions(str(cfg.calibration)) + fusions
    names = [s.name for s in stages]
    for model in sorted(fusions, key=lambda f: -len(f.stages)):  # stable: a file's own fusions first
        fitted_on = [s for s in stages if s.name in model.stages]
        keys = [settings_key(s.settings) for s in fitted_on]
        inputs = {name for s in fitted_on for name in s.fusion_inputs}
        if len(fitted_on) < 2 or model.stages != [s.name for s in fitted_on] or model.keys != keys:
            continue
        if set(model.weight) <= inputs:
            if len(fitted_on) < len(stages):
                log.info("the fitted fusion of %s; %s added by noisy-OR", ", ".join(model.stages),
                         ", ".join(n for n in names if n not in model.stages))
            unread = sorted(inputs - set(model.weight))
            if unread:  # an extra signal asked for, but this fusion was fitted without it
                log.warning("the fitted fusion does not read %s (fit one that does: benchmarks/bench_find.py "
                            "calibrate --out FILE with these settings, then calibration=FILE)", ", ".join(unread))
            return model
    log.warning("no fitted fusion for these stages and settings: their scores combine by noisy-OR")
    return None


def stage_signals(a: np.ndarray, b: np.ndarray, n_items: int, stages: list[Stage], raw: dict[str, ScoredPairs],
                  features: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each fusion input's raw value for the item pairs (a, b), sorted by pair key ({input: array}, inputs
    as Stage.fusion_inputs names them), and whether each stage scored each pair ({stage: array}): stages
    that can score any pair score them all, the others give their own pairs' values (0 elsewhere).
    What the fusion model reads, in `find` and when it is fitted."""
    values, found = {}, {}
    keys = _keys(a, b, n_items)
    for stage in stages:
        if stage.scores_any_pair:
            values[stage.name], found[stage.name] = stage.score_given(features[stage.name], a, b)
            continue
        own = raw[stage.name]
        at = np.searchsorted(keys, _keys(own.a, own.b, n_items))
        for name, value in [(stage.name, own.score)] + [(f"{stage.name}/{e}", own.extra[e])
                                                         for e in stage.extra_signals]:
            values[name] = np.zeros(len(a))
            np.maximum.at(values[name], at, np.asarray(value, np.float64))
        found[stage.name] = np.zeros(len(a), bool)
        found[stage.name][at] = True
    return values, found


def apply_fusion(pairs: FusedPairs, n_items: int, stages: list[Stage], raw: dict[str, ScoredPairs],
                 features: dict, model: Fusion) -> FusedPairs:
    """Every pair (fuse()'s, in key order) rescored by the fusion model from the stages' raw signals, and by
    noisy-OR with the calibrated score of each stage the model was not fitted on. Identical image data stays at 1."""
    values, found = stage_signals(pairs.a, pairs.b, n_items, stages, raw, features)
    for stage in stages:
        if stage.scores_any_pair:
            pairs.per_stage[stage.name] = np.where(found[stage.name], stage.calibrated(values[stage.name]), 0.0)
    score = model(values, found) if len(pairs) else np.zeros(0)
    for stage in stages:
        if stage.name not in model.stages:
            added = np.where(found[stage.name], stage.calibrated(values[stage.name]), 0.0)
            score = np.maximum(score, 1.0 - (1.0 - score) * (1.0 - added))  # max: rounding never lowers it
    identical = pairs.per_stage.get(IDENTICAL, np.zeros(len(pairs))) > 0
    pairs.score = np.where(identical, 1.0, score)
    return pairs


def _keys(a, b, n: int) -> np.ndarray:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.minimum(a, b) * np.int64(n) + np.maximum(a, b)


# ---------------------------------------------------------------------------------------------------
# Linking


#: How a chain of pairs scores the pair it joins (`link_score`).
LINK_SCORES = ("product", "weakest")


def link(pairs: FusedPairs, n_items: int, floor: float, max_group: int, rule: str = "product",
         weigh: Callable[[ScoredPairs], ScoredPairs] | None = None) -> FusedPairs:
    """Add the pairs joined through others, scored along the maximum-spanning-tree path.

    Kruskal's algorithm over the pairs, best first (only those scoring >= floor): when two groups merge
    through the pair (x, y) of score s, each cross pair (i, j) gets P(i, x) * s * P(y, j) (rule "product"),
    P being the product of scores along the tree inside a group (P(i, i) = 1), or the least of P(i, x), s
    and P(y, j) (rule "weakest", P the weakest score along the path: the score at which i and j fall into
    one group of groups.json). A pair found directly keeps the better of its own score and the linked
    one, after `weigh` (if given) has rescored the linked pairs (`own_evidence_weigher`). Groups past
    max_group members stop producing linked pairs.
    """
    if rule not in LINK_SCORES:
        raise ValueError(f"link_score must be one of {LINK_SCORES}, not {rule!r}")
    members: dict[int, np.ndarray] = {}
    paths: dict[int, np.ndarray | None] = {}  # root -> chain scores along the tree (P), or None when too big
    new_a, new_b, new_s = [], [], []
    for k, rx, ry in spanning_merges(pairs.a, pairs.b, pairs.score, n_items, floor):
        x, y = int(pairs.a[k]), int(pairs.b[k])
        mx, my = members.get(rx, np.array([x])), members.get(ry, np.array([y]))
        px, py = paths.get(rx, np.ones((1, 1))), paths.get(ry, np.ones((1, 1)))
        merged = np.concatenate([mx, my])
        if px is None or py is None or len(merged) > max_group:
            block = None
        else:
            ix, iy = int(np.flatnonzero(mx == x)[0]), int(np.flatnonzero(my == y)[0])
            if rule == "product":
                cross = float(pairs.score[k]) * np.outer(px[:, ix], py[iy, :])
            else:
                cross = np.minimum(float(pairs.score[k]), np.minimum.outer(px[:, ix], py[iy, :]))
            new_a.append(np.repeat(mx, len(my)))
            new_b.append(np.tile(my, len(mx)))
            new_s.append(cross.ravel())
            block = np.block([[px, cross], [cross.T, py]])
        members[rx], paths[rx] = merged, block
        members.pop(ry, None)
        paths.pop(ry, None)
    if not new_a:
        return pairs
    linked = ScoredPairs(np.concatenate(new_a), np.concatenate(new_b), np.concatenate(new_s))
    return _merge_linked(pairs, weigh(linked) if weigh is not None else linked, n_items)


def own_evidence_weigher(stages: Sequence[Stage], features: dict) -> Callable[[ScoredPairs], ScoredPairs] | None:
    """For `link`: each linked pair's odds times the likelihood ratio of what the CNN says of that pair itself,
    when that is below 1. A chain can lose confidence to its two ends' own evidence, never gain it (linking never
    adds confidence that the evidence lacks): one false pair between two groups links pictures that the CNN
    sees as different. The ratio is odds(c) / odds(share): c the CNN table's precision for the pair's own
    raw signal, share the true pairs' share of the pairs the table was fitted on. A pair the CNN cannot score
    (an image without features) keeps its chain's score. None without a calibrated CNN stage."""
    cnn = next((s for s in stages if s.scores_any_pair and s.is_calibrated and s.calibration.pairs), None)
    if cnn is None or cnn.name not in features:
        return None
    prior = _odds(cnn.calibration.true / cnn.calibration.pairs)

    def weigh(linked: ScoredPairs) -> ScoredPairs:
        raw, ok = cnn.score_given(features[cnn.name], linked.a, linked.b)
        ratio = np.where(ok, np.minimum(_odds(cnn.calibrated(raw)) / prior, 1.0), 1.0)
        odds = _odds(linked.score) * ratio
        # Where the ratio lowers nothing the chain's score stays as it is: the odds' round trip could move it by a
        # rounding step, up as well as down, and decide by that whether a direct pair is "linked".
        return ScoredPairs(linked.a, linked.b, np.where(ratio < 1.0, odds / (1.0 + odds), linked.score))

    return weigh


def _odds(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0 - 1e-12)
    return p / (1.0 - p)


def spanning_merges(a: np.ndarray, b: np.ndarray, score: np.ndarray, n_items: int, floor: float):
    """Kruskal's maximum spanning forest over the pairs scoring >= floor, best first (ties in order):
    yields (k, rx, ry) for each pair k that joins two trees, rx the root they keep and ry the one merged
    into it. What `link` scores along and simbench.find.evidence draws chains from."""
    order = np.argsort(-score, kind="stable")
    order = order[score[order] >= floor]
    parent = np.arange(n_items)
    for k in order.tolist():
        rx, ry = _root(parent, int(a[k])), _root(parent, int(b[k]))
        if rx != ry:
            parent[ry] = rx
            yield k, rx, ry


def _root(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


def _merge_linked(pairs: FusedPairs, linked: ScoredPairs, n_items: int) -> FusedPairs:
    """Direct pairs, plus linked pairs that are new or score better than directly."""
    direct = _keys(pairs.a, pairs.b, n_items)
    lk = _keys(linked.a, linked.b, n_items)
    pos = np.searchsorted(direct, lk)  # fuse() returns pairs sorted by key
    pos_c = np.minimum(pos, max(len(direct) - 1, 0))
    found = (len(direct) > 0) & (direct[pos_c] == lk) if len(direct) else np.zeros(len(lk), bool)
    score, method = pairs.score.copy(), pairs.method.copy()
    better = found & (linked.score > score[pos_c])
    score[pos_c[better]] = linked.score[better]
    method[pos_c[better]] = LINKED
    new = ~found
    keys = np.concatenate([direct, lk[new]])
    order = np.argsort(keys, kind="stable")
    per_stage = {name: np.concatenate([v, np.zeros(int(new.sum()))])[order] for name, v in pairs.per_stage.items()}
    return FusedPairs(np.concatenate([pairs.a, np.minimum(linked.a, linked.b)[new]])[order],
                      np.concatenate([pairs.b, np.maximum(linked.a, linked.b)[new]])[order],
                      np.concatenate([score, linked.score[new]])[order],
                      np.concatenate([method, np.full(int(new.sum()), LINKED, dtype=object)])[order],
                      per_stage)
