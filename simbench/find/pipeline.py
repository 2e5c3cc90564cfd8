"""`simbench find` from start to end: sources -> features (index) -> stages -> fused pairs -> outputs.

Steps, one function each:
1. `list_and_hash`: the image and PDF files, with their content hashes;
2. `read_new_sources`: files whose images and features are not all in the index are read (PDF
   placements rendered into a work folder), and their features extracted, stage by stage, into the index;
3. `load_features`: every item's features from the index, joined per stage;
4. `score`: each stage's pairs, calibrated; the identical-data pairs; fused; linked;
5. `write_outputs`: pairs.csv, groups.json, skipped.csv, report.html, and a summary line.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from simbench.data.images import UnreadableImage, open_image
from simbench.distributed.cluster import ClusterSession
from simbench.distributed.cnn import EmbeddingChunks
from simbench.evaluate import pair_keys
from simbench.features.thumbnails import Thumbnails
from simbench.find import agreement, blank, cascade, evidence, frames, outputs, report
from simbench.find.cascade import FusedPairs, Stage
from simbench.find.decisions import Decisions, match_decisions, read_decisions, write_decisions_json
from simbench.find.index import (BATCH_IMAGES, SOURCES_KIND, FeatureStore, join_entries, params_key,
                                 shard_groups, split_features)
from simbench.find.items import THUMB_SIDE, Item
from simbench.find.on_demand import OnDemandFeatures
from simbench.find.pdf import PdfOptions
from simbench.find.sources import SourceRecord, is_pdf, list_sources, read_sources, to_items
from simbench.threads import thread_map
from simbench.types import Embeddings, ScoredPairs, Skipped

log = logging.getLogger("simbench")

SOURCES = "sources"


@dataclass
class FindResult:
    """What a run found (also what the summary line reports)."""

    items: list[Item]
    pairs: FusedPairs
    groups: list[dict]
    skipped: list[Skipped]
    n_files: int
    n_pdfs: int
    n_new_files: int
    timing: dict = field(default_factory=dict)
    raw: dict[str, ScoredPairs] = field(default_factory=dict)  # stage -> pairs with raw signals
    n_blank: int = 0  # blank images (listed in skipped, never paired)
    evidence: dict = field(default_factory=dict)  # (a, b) -> why they pair (simbench.find.evidence)
    decisions: Decisions | None = None  # a reviewer's decisions, as applied (simbench.find.decisions)
    config: DictConfig | None = None  # the settings it ran with
    stages: list[Stage] = field(default_factory=list)

    def summary(self, out_dir: Path | None = None, threshold: float | None = None) -> str:
        where = f" -> {out_dir}" if out_dir else ""
        at = f" at threshold {threshold:g}" if threshold is not None else ""
        blanks = f" ({self.n_blank} of them blank images, not compared)" if self.n_blank else ""
        return (f"{self.n_files} files read ({self.n_pdfs} PDFs, {self.n_files - self.n_pdfs} image files; "
                f"{self.n_new_files} new to the index), {len(self.items)} images found, {len(self.skipped)} "
                f"skipped{blanks}, {len(self.pairs)} pairs, {len(self.groups)} duplicate groups{at}{where}")


def find(inputs: Sequence[str | Path], out_dir: str | Path, cfg: DictConfig | None = None,
         index: str | Path | None = None, progress: bool = True, decisions: str | Path | None = None,
         write: bool = True) -> FindResult:
    """Run `simbench find` and (write) DIR/pairs.csv, groups.json, skipped.csv, report.html; out_dir also
    holds the run's temporary renderings. decisions: a reviewer's decisions.csv to apply."""
    cfg = cfg if cfg is not None else cascade.make_config()
    reviewed = read_decisions(decisions) if decisions is not None else None  # a bad file stops the run now
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = cascade.build_stages(cfg)
    with ClusterSession(cfg.get("cluster"), progress, auto=True) as cluster:  # Dask, when chosen or large
        collected = collect(inputs, stages, cfg, index, out_dir, progress, cluster)
        t = time.perf_counter()
        raw = raw_evidence(stages, collected.features, progress, cluster.client, collected.items,
                           bool(cfg.drop_shared_frames), cfg)
        decided = match_decisions(reviewed, [item.display for item in collected.items]) if reviewed else None
        pairs = score(collected.items, stages, raw, cfg, collected.features, collected.blank, decided)
        groups = outputs.duplicate_groups(pairs, len(collected.items), float(cfg.threshold))
        t_evidence = time.perf_counter()
        # Before the cluster closes: keypoints its workers hold are fetched for the pairs shown (the CNN's
        # evidence is computed by its tasks).
        why = evidence.pair_evidence(pairs, stages, shown_features(collected.features, pairs),
                                     float(cfg.link_min_score) if cfg.link else None, raw=raw)
    # Read: a keypoint stage's correspondences hold on to all its features, which the result need not keep.
    raw = {name: ScoredPairs(p.a, p.b, p.score, {k: v for k, v in p.extra.items() if k != "correspondences"})
           for name, p in raw.items()}
    timing = {**collected.timing, "match_s": t_evidence - t, "evidence_s": time.perf_counter() - t_evidence,
              "total_s": time.perf_counter() - t0}
    result = FindResult(collected.items, pairs, groups, collected.skipped, collected.n_files, collected.n_pdfs,
                        collected.n_new, timing, raw, len(collected.blank), why, decided, cfg, stages)
    if write:
        write_outputs(out_dir, result, cfg, stages)
    return result


@dataclass
class Collected:
    """Every image of the inputs with the features of every stage (see load_features)."""

    items: list[Item]
    skipped: list[Skipped]
    features: dict
    n_files: int
    n_pdfs: int
    n_new: int
    timing: dict
    blank: dict[int, str] = field(default_factory=dict)  # item index -> reason (simbench.find.blank)


def collect(inputs, stages: list[Stage], cfg: DictConfig, index, work_parent: Path, progress: bool,
            cluster: ClusterSession | None = None) -> Collected:
    """Steps 1-3: list and hash the files, read and extract what the index lacks, load all features.

    cluster: started here once the number of files is known; with a Dask client, extraction runs as its tasks."""
    t0 = time.perf_counter()
    store = FeatureStore(index)
    options = PdfOptions(**OmegaConf.to_container(cfg.pdf))
    files, digests, skipped = list_and_hash(inputs, store, progress)
    if cluster is not None and cluster.start(len(files)) is None:
        cluster = None
    if cluster is not None and store.root is None:  # workers write the shards: a folder they all see
        store = FeatureStore(cluster.scratch_dir(work_parent, ".index-"))
    store.save_hashes()  # now, so that a run killed while extracting need not hash again
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=work_parent))
    try:
        records, n_new = read_new_sources(files, digests, stages, store, options, work, int(cfg.workers), progress,
                                          int(cfg.index_batch), cluster)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # renderings are not needed once features are stored
    store.save_hashes()
    items, lost = to_items(files, digests, records)
    blanks = blank.find_blanks(items)  # kept out of every stage: they would all match each other
    features, loaded = {}, {}  # stages with the same features share one load, as one index record
    for stage in stages:
        key = features_of(stage) if stage.indexed else stage.name
        if stage.on_demand:
            features[stage.name] = OnDemandFeatures(stage.extractor, items, digests_of(items), local_positions(items),
                                                    store, stage.section, feature_key(stage), blanks, options,
                                                    progress)
            continue
        if key not in loaded:
            loaded[key] = stage_features(stage, items, digests_of(items), store, blanks, cluster)
        features[stage.name] = loaded[key]
    skipped += lost + [Skipped(items[k].display, reason) for k, reason in blanks.items()]
    skipped += unusable(items, {s.name: features[s.name] for s in stages if not s.on_demand}, set(blanks))
    timing = {"read_extract_s": time.perf_counter() - t0}
    return Collected(items, skipped, features, len(files), sum(map(is_pdf, files)), n_new, timing, blanks)


# ---------------------------------------------------------------------------------------------------
# 1-2. Sources and features


def list_and_hash(inputs, store: FeatureStore, progress: bool) -> tuple[list[Path], list[str], list[Skipped]]:
    """Files to read with their SHA-256 (unreadable files are skipped here)."""
    listed, skipped = list_sources(inputs, progress)
    files, digests = [], []
    for path in tqdm(listed, desc="hashing files", unit="file", disable=not progress or None):
        try:
            digests.append(store.content_hash(path))
            files.append(path)
        except OSError as exc:
            skipped.append(Skipped(str(path), f"cannot read file ({exc.strerror or exc})"))
    return files, digests, skipped


def sources_key(options: PdfOptions) -> str:
    # upright_below only when on: indexes built before it keep their key.
    return params_key({"sources": {k: v for k, v in vars(options).items() if k != "upright_below" or v}})


def feature_key(stage: Stage) -> str:
    # An on-demand stage's records hold only what was asked for: never one key with whole ones.
    return params_key({"extractor": stage.extractor.name, "params": stage.extractor.params(),
                       **({"on_demand": True} if stage.on_demand else {})})


def index_sections(stages: list[Stage], options: PdfOptions) -> list[tuple[str, str, str]]:
    """(section, params key, kind) of each record a file needs in the index: its sources, then each stage's."""
    return [(SOURCES, sources_key(options), SOURCES_KIND)] + [(s.section, feature_key(s), s.extractor.kind)
                                                               for s in extracting(stages)]


def features_of(stage: Stage) -> tuple[str, str]:
    """What identifies a stage's features in the index (blobs_wide's are the blobs stage's: the same extractor with
    the same settings)."""
    return stage.section, feature_key(stage)


def extracting(stages: list[Stage]) -> list[Stage]:
    """The stages whose features are extracted into the index as files are read: the first of each
    `features_of` (an on-demand stage's are extracted while matching, simbench.find.on_demand)."""
    first = {}
    for s in stages:
        if s.indexed and not s.on_demand:
            first.setdefault(features_of(s), s)
    return list(first.values())


def read_new_sources(files, digests, stages: list[Stage], store: FeatureStore, options: PdfOptions,
                     work: Path, workers: int, progress: bool,
                     batch: int = BATCH_IMAGES, cluster=None) -> tuple[list[SourceRecord], int]:
    """Every file's SourceRecord: from the index when it holds the file's images and all their features,
    else read now (and its features extracted and stored, `batch` images at a time: one index shard per
    stage and batch, so a killed run keeps every finished batch). Returns (records, number read now).

    cluster: a started simbench.distributed.cluster.ClusterSession: Dask tasks read and extract chunks of
    files into the (on-disk) store, and every record is then read from it."""
    skey = sources_key(options)
    sections = index_sections(stages, options)
    found = [store.check(section, pkey, digests, kind) for section, pkey, kind in sections]
    complete = []
    for k, d in enumerate(digests):
        unusable = [f"{section}: {status[d]}" for (section, _, _), status in zip(sections, found) if status.get(d)]
        if unusable:
            log.warning("%s: its index record cannot be used, reading the file again (%s)", files[k],
                        "; ".join(unusable))
        complete.append(all(d in status and status[d] is None for status in found))
    todo = [k for k, done in enumerate(complete) if not done]
    if cluster is not None:
        from simbench.distributed.extract import extract_on_cluster

        extract_on_cluster(cluster, [files[k] for k in todo], [digests[k] for k in todo], stages, store, options,
                           batch, progress)
        fresh = []
    else:
        fresh = read_sources([files[k] for k in todo], [digests[k] for k in todo], work, options, workers,
                             progress)
    for group in shard_groups([len(record.images) for record in fresh], batch):
        store_batch([fresh[i] for i in group], [digests[todo[i]] for i in group], stages, store, skey, progress)
    fresh_by_position = dict(zip(todo, fresh))
    stored = store.get_many(SOURCES, skey, [d for k, d in enumerate(digests) if k not in fresh_by_position],
                            SOURCES_KIND)
    records = [fresh_by_position.get(k) or stored.get(digest) or SourceRecord("missing")
               for k, digest in enumerate(digests)]
    return records, len(todo)


def store_batch(records: list[SourceRecord], digests: list[str], stages: list[Stage], store: FeatureStore,
                skey: str, progress: bool) -> None:
    """One batch of read files into the index: each stage's features, then the files' sources records."""
    for stage in extracting(stages):
        extract_into_store(stage, records, digests, store, progress)
    # Last: a file counts as indexed only once its sources record is there too.
    store.put_batch(SOURCES, skey, {d: record.for_index() for d, record in zip(digests, records)})


def extract_into_store(stage: Stage, records: list[SourceRecord], digests: list[str], store: FeatureStore,
                       progress: bool) -> None:
    """Extract one stage's features of every image of the new records; one index record per file.

    A file's record is a list aligned with its images: a dict of feature arrays, or a reason string
    when the extractor could not use the image.
    """
    paths, owner = [], []
    for r, record in enumerate(records):
        for image in record.images:
            paths.append(Path(record.files[image["id"]]))
            owner.append(r)
    if paths:
        if progress:
            print(f"{stage.name}: extracting features of {len(paths)} new images", flush=True)
        extracted = stage.extractor.extract(paths, progress=progress)
        per_image = split_features(extracted.features, extracted.rows, len(paths))
        reasons = {s.path: s.reason for s in extracted.skipped}
        per_image = [f if f is not None else reasons.get(str(p), "no features") for f, p in zip(per_image, paths)]
    else:
        per_image = []
    cursor, batch = 0, {}
    for record, digest in zip(records, digests):
        n = len(record.images)
        batch[digest] = per_image[cursor:cursor + n]
        cursor += n
    store.put_batch(stage.section, feature_key(stage), batch)


def digests_of(items: list[Item]) -> list[str]:
    return [item.key.split(":", 1)[0] for item in items]


def load_features(stage: Stage, items: list[Item], source_digests: list[str], store: FeatureStore,
                  exclude: dict[int, str] | None = None):
    """(features of every item that has some, their item indices, {item: reason} for the others).

    exclude: {item: reason} of items left out (blank images) as if they had no features."""
    exclude = exclude or {}
    per_source = store.get_many(stage.section, feature_key(stage), source_digests, stage.extractor.kind)
    entries = []
    for k, (digest, local) in enumerate(zip(source_digests, local_positions(items))):
        stored = per_source.get(digest, [])
        entries.append(exclude.get(k, stored[local] if local < len(stored) else "features missing from the index"))
    return join_entries(entries, stage.extractor.kind)


def stage_features(stage: Stage, items: list[Item], source_digests: list[str], store: FeatureStore,
                   exclude: dict[int, str], cluster: ClusterSession | None):
    """load_features; on a cluster a keypoint or CNN stage's chunks are read and kept by the workers
    instead (simbench.distributed.keypoints, .cnn: no process holds all descriptors or embeddings). A stage
    of thumbnails (align) takes the items' own (simbench.features.thumbnails: decoded when compared)."""
    if stage.extractor.kind == "thumbnails":
        if getattr(stage.extractor, "side", THUMB_SIDE) != THUMB_SIDE:
            raise ValueError(f"{stage.name}.extractor.side: find compares the report thumbnails, {THUMB_SIDE} px")
        rows = np.array([k for k in range(len(items)) if k not in exclude], np.int64)
        return Thumbnails([items[k].thumb for k in rows.tolist()]), rows, dict(exclude)
    if cluster is not None and stage.extractor.kind == "keypoints":
        from simbench.distributed.keypoints import load_keypoints

        return load_keypoints(cluster.client, stage, items, source_digests, store, exclude, feature_key(stage))
    if cluster is not None and stage.extractor.kind == "embedding":
        from simbench.distributed.cnn import load_embeddings

        return load_embeddings(cluster.client, stage, items, source_digests, store, exclude, feature_key(stage))
    return load_features(stage, items, source_digests, store, exclude)


def shown_features(features: dict, pairs: FusedPairs) -> dict:
    """features, with keypoints that a cluster holds replaced by those of the items evidence shows."""
    from simbench.distributed.keypoints import KeypointChunks, local_keypoints

    best = evidence.shown(pairs)
    items = np.concatenate([pairs.a[best], pairs.b[best]])
    return {name: local_keypoints(f, items) if isinstance(f[0], KeypointChunks) else f for name, f in features.items()}


def local_positions(items: list[Item]) -> list[int]:
    """Each item's position among the images of its own source file (a file's items are contiguous)."""
    out, previous, count = [], None, 0
    for item in items:
        count = count + 1 if item.source == previous else 0
        previous = item.source
        out.append(count)
    return out


def unusable(items: list[Item], features: dict, listed: set[int] = frozenset()) -> list[Skipped]:
    """Items that no stage could extract features from (listed in skipped.csv; they match nothing),
    except those already `listed` there for another reason."""
    if not features:
        return []
    failed = set.intersection(*(set(reasons) for _, _, reasons in features.values())) - set(listed)
    out = []
    for k in sorted(failed):
        why = "; ".join(f"{name}: {features[name][2][k]}" for name in features)
        out.append(Skipped(items[k].display, f"no features ({why})"))
    return out


# ---------------------------------------------------------------------------------------------------
# 4. Scoring


def raw_evidence(stages: list[Stage], features: dict, progress: bool, client=None, items: list[Item] | None = None,
                 drop_frames: bool = True, cfg: DictConfig | None = None) -> dict[str, ScoredPairs]:
    """Each stage's pairs in item indices with its raw signal as the score (what calibration maps);
    with a Dask client, matched through simbench.distributed.match_stage. A keypoint stage with proposals
    also verifies the pairs that the stages scoring any pair (the CNN) rank best (`with_proposed`).

    items: the run's items. Their thumbnails give a keypoint stage that reads them its pairs' `agreement`
    and `agreed_evidence` (simbench.find.agreement), and with min_overlap_agreement or min_away_agreement drop
    its pairs whose pictures do not agree over their overlap, or away from their matches (`agreed_over_overlap`).
    With drop_frames (cfg.drop_shared_frames) they also drop pairs of different pictures in a shared frame
    (simbench.find.frames) and compare each such picture by what its frame holds: the CNN stage's embedding
    of it is replaced, in `features`, by that of its window (`window_views`), and the stage matched again.

    cfg: the run's settings, for a verifying stage that skips the pairs the stages before it already hold
    (align's skip_held_at, `held_pairs`).

    An on-demand stage's features (simbench.find.on_demand) are extracted here, for the items of the pairs it
    verifies, and replace its handle in `features` (what its evidence is drawn from)."""
    # The stages match at the same time, one thread each (not on a cluster: its tasks share the workers): a
    # keypoint stage's verification runs on one core, and the CNN's scoring fits beside it. Each stage's
    # pairs depend on its own features alone.
    matched = thread_map(lambda stage: stage_pairs(stage, features[stage.name], progress, client), stages,
                         1 if client is not None else len(stages))
    found = {stage.name: pairs for stage, pairs in zip(stages, matched)}
    agreed = {}  # a stage's pairs less those its agreement gates drop (`agreed_over_overlap`), once computed

    def kept(stage: Stage) -> ScoredPairs:
        if stage.name not in agreed:
            pairs = found[stage.name]
            agreed[stage.name] = agreed_over_overlap(stage, pairs, items) if items is not None else pairs
        return agreed[stage.name]

    raws = {}  # a stage's raw pairs (what calibration maps), once computed

    def raw_of(stage: Stage) -> ScoredPairs:
        if stage.name not in raws:
            pairs = kept(stage)
            if items is not None and stage.reads_agreement:
                pairs = agreement.with_agreement(pairs, items)
            raws[stage.name] = stage.raw_pairs(pairs)
        return raws[stage.name]

    # What the CNN ranks best: stages that score any pair (other stages' scales differ).
    for k, stage in enumerate(stages):
        others = [found[other.name] for other in stages if other is not stage and other.scores_any_pair]
        if not (getattr(stage.method, "proposals", 0) and others):
            continue  # nothing to verify: what it would skip need not be worked out either
        keypoint_stages = [other for other in stages[:k] if other.extractor.kind == "keypoints"]
        verified = []
        if getattr(stage.method, "skip_verified", False):
            held_at = getattr(stage.method, "skip_held_at", None)
            verified = ([held_pairs(stages[:k], {s.name: raw_of(s) for s in stages[:k]}, features, items, cfg,
                                    held_at)] if held_at is not None else
                        [verified_pairs(other, found[other.name], kept, getattr(stage.method, "skip_verified_at", None))
                         for other in keypoint_stages])
        # align's also_found: the keypoint stages' pairs, those held among them skipped as verified
        also = [found[other.name] for other in keypoint_stages] if getattr(stage.method, "also_found", False) else []
        a, b = proposed_pairs(stage, found[stage.name], others, verified, also)
        if isinstance(features[stage.name], OnDemandFeatures):  # now its features, of these pairs' items only
            features[stage.name] = features[stage.name].load(np.r_[a, b])
        found[stage.name] = one_sided_dropped(
            stage, verify_proposed(stage, features[stage.name], found[stage.name], a, b, progress), others)
        agreed.pop(stage.name, None)
        raws.pop(stage.name, None)
    for stage in stages:  # an on-demand stage that was asked about nothing has no features
        if isinstance(features[stage.name], OnDemandFeatures):
            features[stage.name] = features[stage.name].load([])
    out = {stage.name: raw_of(stage) for stage in stages}
    if items is None or not drop_frames:
        return out
    shared = frames.SharedFrames(items)
    out = frames.drop_shared_frames(out, shared)
    for stage in stages:
        if stage.extractor.kind == "embedding" and window_views(stage, features, items, shared.windows()):
            out[stage.name] = stage.raw_pairs(stage_pairs(stage, features[stage.name], progress, client))
            out = frames.drop_shared_frames(out, shared)
    return out


def verified_pairs(stage: Stage, found: ScoredPairs, kept: Callable[[Stage], ScoredPairs],
                   at: float | None) -> ScoredPairs:
    """What a keypoint stage verified, for a stage that skips such pairs (align's skip_verified): every pair it found
    (at None), or only those it keeps past its overlap agreement with a calibrated score of at least `at` (a pair
    verified only by a few matches, or by a stamped logo that the agreement drops, still needs a look). An
    uncalibrated stage's pairs all count as verified, as before, and the log says so."""
    if at is None:
        return found
    if not stage.is_calibrated:
        log.warning("%s is not calibrated: every pair it found counts as verified (skip_verified_at unused)",
                    stage.name)
        return found
    pairs = kept(stage)
    return pairs.subset(stage.calibrated(stage.raw_signal(pairs)) >= at)


def held_pairs(stages: list[Stage], raw: dict[str, ScoredPairs], features: dict, items: list[Item] | None,
               cfg: DictConfig | None, at: float) -> ScoredPairs:
    """The pairs that `stages` alone (their raw pairs `raw`) already score at `at` or more, as find scores them
    (`score`: their tables and fusion), not linked and before the shared-frame rule: what a verifying stage with
    skip_held_at need not look at (align's: a pair the keypoints verify but the CNN doubts, a recoloured copy, is
    looked at; one the cascade already holds is not)."""
    if cfg is None or items is None:
        raise ValueError("skip_held_at needs the run's items and settings (raw_evidence's items and cfg)")
    fused = score(items, stages, raw, OmegaConf.merge(cfg, {"link": False}), features)
    return fused.subset(np.flatnonzero(fused.score >= at)).as_scored()


def agreed_over_overlap(stage: Stage, found: ScoredPairs, items: list[Item]) -> ScoredPairs:
    """A keypoint stage's pairs less those whose pictures agree less than its min_overlap_agreement over
    their whole overlap, less its overlap_border (simbench.find.agreement.overlap_agreement), and then less
    than its min_away_agreement away from their matches (agreement.away_agreement): content stamped on
    different pictures (a crest, a logo, a frame) that their keypoints match. Each gate is off at 0; pairs
    that a gate cannot judge (a thumbnail that does not decode, too little left to compare) are kept."""
    if stage.min_overlap_agreement:
        overlap = agreement.overlap_agreement(found, items, stage.overlap_border)
        found = _gated(stage, found, overlap, stage.min_overlap_agreement, "over their overlap")
    if stage.min_away_agreement:
        away = agreement.away_agreement(found, items)
        found = _gated(stage, found, away, stage.min_away_agreement, "away from their matches")
    return found


def _gated(stage: Stage, found: ScoredPairs, agreed: np.ndarray, floor: float, where: str) -> ScoredPairs:
    """`found` less the pairs whose agreement is below `floor` (NaN: kept), logged."""
    keep = ~(agreed < floor)  # NaN: cannot tell, kept
    log.info("%s: %d of %d pairs dropped: their pictures agree less than %g %s", stage.name, int((~keep).sum()),
             len(found), floor, where)
    return found.subset(np.flatnonzero(keep))


def best_pairs_per_item(found: list[ScoredPairs], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The item pairs (a < b, ascending) among some item's k best in `found` (by score; ties to the lower
    other item)."""
    a, b, rank = ranked_partners(found)
    n = np.int64(a.max(initial=0) + 1)
    keys = np.unique(pair_keys(a[rank < k], b[rank < k], n))
    return keys // n, keys % n


def ranked_partners(pairs: Sequence[ScoredPairs]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`partner_ranks` of all the pair lists together."""
    return partner_ranks(np.concatenate([p.a for p in pairs] + [np.empty(0)]),
                         np.concatenate([p.b for p in pairs] + [np.empty(0)]),
                         np.concatenate([p.score for p in pairs] + [np.empty(0)]))


def partner_ranks(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every scored pair in both directions, (x, y, rank): y's rank among x's partners by score (0: the best; ties to
    the lower y), sorted by x, then rank."""
    x, y = np.r_[a, b].astype(np.int64), np.r_[b, a].astype(np.int64)
    order = np.lexsort((y, -np.r_[score, score], x))
    x, y = x[order], y[order]
    return x, y, _places_in_runs(x)


def mutual_ranks(a: np.ndarray, b: np.ndarray, others: Sequence[ScoredPairs]) -> np.ndarray:
    """Per pair (a[k], b[k]): the worse of the two ranks its items give each other among their partners by the other
    stages (`partner_ranks`; 0: each is the other's best). A side that does not score the pair ranks it past all of
    its partners."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    x, y, rank = ranked_partners(others)
    n = np.int64(1 + max(x.max(initial=0), a.max(initial=0), b.max(initial=0)))
    keys = x * n + y  # directed: y as x's partner
    order = np.lexsort((rank, keys))  # a pair two stages score: its better rank first
    keys, rank = keys[order], rank[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.empty(0, bool)
    keys, rank = keys[first], rank[first]
    unscored = np.int64(len(x) + 1)

    def rank_of(u, v):  # v's rank as u's partner
        if not len(keys):
            return np.full(len(u), unscored)
        wanted = u * n + v
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(keys[at] == wanted, rank[at], unscored)

    return np.maximum(rank_of(a, b), rank_of(b, a))


def one_sided_dropped(stage: Stage, pairs: ScoredPairs, others: Sequence[ScoredPairs]) -> ScoredPairs:
    """`pairs` (a verifying stage's, raw scores) less those whose items do not both rank each other among their
    stage.method.proposals best by the other stages (`mutual_ranks`) and that score below the method's
    one_sided_min_correlation (None: none dropped): a pair only one side's best partners include is more often two
    different pictures that merely line up (a flat photo's look-alikes), so it must align better to count."""
    floor = getattr(stage.method, "one_sided_min_correlation", None)
    if floor is None or not len(pairs):
        return pairs
    mutual = mutual_ranks(pairs.a, pairs.b, others) < stage.method.proposals
    return pairs.subset(np.flatnonzero(mutual | (pairs.score >= floor)))


def _places_in_runs(x: np.ndarray) -> np.ndarray:
    """Each entry's place (0, 1, ...) within its run of equal values of the sorted x."""
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]]) if len(x) else np.empty(0, np.int64)
    return np.arange(len(x)) - np.repeat(starts, np.diff(np.r_[starts, len(x)]))


def with_proposed(stage: Stage, stage_features, found: ScoredPairs, others: list[ScoredPairs],
                  progress: bool = False, verified: list[ScoredPairs] = (),
                  also: Sequence[ScoredPairs] = ()) -> ScoredPairs:
    """`found` (a verifying stage's own pairs, in item indices) and, after them, the pairs `proposed_pairs` names,
    as its method's `score_proposed` verifies them (`verify_proposed`)."""
    a, b = proposed_pairs(stage, found, others, verified, also)
    return verify_proposed(stage, stage_features, found, a, b, progress)


def proposed_pairs(stage: Stage, found: ScoredPairs, others: list[ScoredPairs], verified: Sequence[ScoredPairs] = (),
                   also: Sequence[ScoredPairs] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The item pairs (a < b) among each item's stage.method.proposals best by the other stages (those they score at
    least its proposal_min_score, where set), and those of `also`, that it did not find (nor any of `verified`).
    With the method's proposal_depth deeper than proposals: each item's proposals best that are neither found nor
    verified, among its proposal_depth best (an item whose best pairs are already held gets its next ones looked at).
    With the method's unheld_proposals: an item in none of the found or verified pairs gets that many more (proposals
    and proposal_depth alike): nothing holds it yet, so its copies, if any, are still to be found."""
    floor = getattr(stage.method, "proposal_min_score", None)
    if floor is not None:
        others = [p.subset(np.flatnonzero(p.score >= floor)) for p in others]
    done = [found, *verified]
    n = np.int64(1 + max([0, *(max(p.a.max(initial=0), p.b.max(initial=0)) for p in [*others, *done, *also])]))
    proposals = stage.method.proposals
    deeper = max(proposals, getattr(stage.method, "proposal_depth", 0) or 0)
    more = np.zeros(n, np.int64)  # the unheld items' extra looks
    more[np.setdiff1d(np.arange(n), np.concatenate([np.r_[p.a, p.b] for p in done]))] = (
        getattr(stage.method, "unheld_proposals", 0) or 0)
    k, depth = proposals + more, deeper + more  # per item
    done_keys = np.concatenate([pair_keys(p.a, p.b, n) for p in done])
    x, y, rank = ranked_partners(others)
    ranked = rank < depth[x]
    x, y = x[ranked], y[ranked]
    if deeper > proposals:  # the k best of each item's open pairs (x stays sorted, its partners in rank order)
        open_ = ~np.isin(pair_keys(np.minimum(x, y), np.maximum(x, y), n), done_keys)
        x, y = x[open_], y[open_]
        keep = _places_in_runs(x) < k[x]
        x, y = x[keep], y[keep]
    a = np.concatenate([np.minimum(x, y), *(p.a for p in also)]).astype(np.int64)
    b = np.concatenate([np.maximum(x, y), *(p.b for p in also)]).astype(np.int64)
    keys = np.unique(pair_keys(a, b, n))  # both items' lists and also's pairs may repeat a pair
    keys = keys[~np.isin(keys, done_keys)]
    return keys // n, keys % n


def verify_proposed(stage: Stage, stage_features, found: ScoredPairs, a: np.ndarray, b: np.ndarray,
                    progress: bool = False) -> ScoredPairs:
    """`found` and, after them, the item pairs (a, b) that verify. Per-pair fields: those both kinds have, and
    `proposed` (True for the latter). On a cluster the proposed pairs' keypoints are fetched from the workers (a few
    pairs per image)."""
    from simbench.distributed.keypoints import KeypointChunks, local_keypoints

    feats, rows, _ = stage_features
    if isinstance(feats, KeypointChunks):  # the workers' chunks
        feats, rows, _ = local_keypoints(stage_features, np.unique(np.r_[a, b]))
    n = int(max(a.max(initial=-1), b.max(initial=-1), rows.max(initial=-1))) + 1
    position = np.full(n, -1)
    position[rows] = np.arange(len(rows))
    ok = (position[a] >= 0) & (position[b] >= 0)
    if progress:
        print(f"{stage.name}: verifying {int(ok.sum())} pairs the other stages propose", flush=True)
    started = time.perf_counter()
    pa, pb = position[a[ok]], position[b[ok]]
    proposed = in_items(stage.method.score_proposed(feats, np.minimum(pa, pb), np.maximum(pa, pb)), rows)
    own_fields, proposed_fields = found.per_pair_fields(), proposed.per_pair_fields()
    shared = own_fields & proposed_fields if len(found) else proposed_fields  # no pairs: no fields to match
    extra = {k: v for k, v in found.extra.items() if k not in own_fields}  # run-wide values
    for k in shared:
        column = np.asarray(proposed.extra[k])
        own = np.asarray(found.extra[k]) if len(found) else column[:0]
        extra[k] = np.concatenate([own, column])
    extra.update(proposed=np.r_[np.zeros(len(found), bool), np.ones(len(proposed), bool)],
                 proposed_pairs=int(ok.sum()), proposed_s=time.perf_counter() - started)
    return ScoredPairs(np.r_[found.a, proposed.a].astype(np.int64), np.r_[found.b, proposed.b].astype(np.int64),
                       np.r_[found.score, proposed.score], extra)


def window_views(stage: Stage, features: dict, items: list[Item], windows: dict) -> bool:
    """Replace, in features[stage.name], the embedding of every image file in a shared frame by that of the
    window it shows (`SharedFrames.windows`; cropped from the file, embedded by the stage's extractor).
    Whether any was replaced. Not for PDF placements (their renderings are gone by now: logged). On a
    cluster the windows are embedded here and sent to the workers holding those rows."""
    if not windows:
        return False
    feats, rows, reasons = features[stage.name]
    position = {int(k): i for i, k in enumerate(rows)}
    files = [k for k in sorted(windows) if k in position and not is_pdf(items[k].source)]
    if len(files) < len(windows):
        log.info("%s: %d pictures in shared frames from PDFs or without features are compared whole",
                 stage.name, len(windows) - len(files))
    with tempfile.TemporaryDirectory(prefix="simbench-windows-") as tmp:
        crops = []
        for k in files:
            try:
                image = open_image(items[k].source)
            except UnreadableImage:
                continue
            top, left, bottom, right = windows[k]
            w, h = image.size
            path = Path(tmp) / f"{k}.png"
            image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h))).save(path)
            crops.append((k, path))
        if not crops:
            return False
        got = stage.extractor.extract([p for _, p in crops], progress=False)
    if not len(got.rows):
        return False
    at = np.array([position[crops[row][0]] for row in np.asarray(got.rows).tolist()], np.int64)
    # The window's region views too: the frame is no part of the picture.
    if isinstance(feats, EmbeddingChunks):
        feats = feats.with_rows(at, got.features.vectors, got.features.regions)
    else:
        vectors = np.array(feats.vectors, copy=True)
        regions = None if feats.regions is None else np.array(feats.regions, copy=True)
        vectors[at] = got.features.vectors
        if regions is not None:
            regions[at] = got.features.regions
        feats = Embeddings(vectors, regions)
    features[stage.name] = (feats, rows, reasons)
    log.info("%s: %d pictures in shared frames compared by their windows", stage.name, len(got.rows))
    return True


def score(items: list[Item], stages: list[Stage], raw: dict[str, ScoredPairs], cfg: DictConfig,
          features: dict | None = None, blanks: dict[int, str] | None = None,
          decisions: Decisions | None = None) -> FusedPairs:
    """Identical-data pairs, each stage's calibrated pairs, fused, a reviewer's decisions applied,
    optionally linked, >= min_score.

    blanks: items never paired, not even as identical data (their features are already left out).
    decisions: confirmed non-duplicates dropped before linking (so they link nothing, and a linked pair
    that is one is dropped too), confirmed duplicates at score 1 (simbench.find.decisions).

    fusion "model": the fitted Fusion for these stages (cascade.fusion_model), every pair also scored by
    the stages that can score any pair (the CNN); without one, and for "noisy_or" or "max", that rule."""
    n = len(items)
    blanks = blanks or {}
    digests = [f"blank:{k}" if k in blanks else item.digest for k, item in enumerate(items)]  # unique: unpaired
    evidence = {cascade.IDENTICAL: cascade.identical_pairs(digests)}
    for stage in stages:
        found = raw[stage.name]
        evidence[stage.name] = ScoredPairs(found.a, found.b, stage.calibrated(found.score))
    model = cascade.fusion_model(stages, cfg)
    fused = cascade.fuse(n, evidence, "noisy_or" if str(cfg.fusion) == "model" else str(cfg.fusion))
    if model is not None and features is not None:
        fused = cascade.apply_fusion(fused, n, stages, raw, features, model)
    if decisions is not None:
        fused = decisions.apply(fused, n)
    if cfg.link:
        weigh = None
        if cfg.get("link_own_evidence"):
            weigh = cascade.own_evidence_weigher(stages, features or {})
            if weigh is None:
                log.info("link_own_evidence: no calibrated CNN stage with features, so chains keep their scores")
        fused = cascade.link(fused, n, float(cfg.link_min_score), int(cfg.max_linked_group), str(cfg.link_score),
                             weigh)
        fused = decisions.hide(fused, n) if decisions is not None else fused
    uncalibrated = [stage.name for stage in stages if not stage.is_calibrated]
    fused.calibrated = ~np.isin(fused.method.astype(str), uncalibrated)
    if uncalibrated:
        fused.calibrated &= fused.method != cascade.LINKED
    return fused.subset(np.flatnonzero(fused.score >= float(cfg.min_score)))


def stage_pairs(stage: Stage, stage_features, progress: bool = False, client=None) -> ScoredPairs:
    """One stage's raw pairs (scores and extras as its method gives them), in item indices."""
    # An on-demand stage verifies proposals only: its pairs come later (raw_evidence).
    if isinstance(stage_features, OnDemandFeatures) or len(stage_features[1]) < 2:
        return ScoredPairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0),
                           {stage.signal: np.empty(0)} if stage.signal != "score" else {})
    feats, rows, _ = stage_features
    if progress and getattr(stage.method, "own_pairs", True):  # blobs: only the pairs proposed to it, later
        print(f"{stage.name}: matching {len(rows)} images", flush=True)
    stage.method.matcher.progress = progress
    if client is not None:
        from simbench.distributed import match_stage

        found = match_stage(client, stage.method, feats, progress)
    else:
        found = stage.method.score_pairs(feats)
    return in_items(found, rows)


def in_items(found: ScoredPairs, rows: np.ndarray) -> ScoredPairs:
    """A method's pairs of feature rows as pairs of the items `rows` names (a < b)."""
    a, b = rows[found.a], rows[found.b]
    extra = found.extra
    if "alignment" in extra:  # a's picture -> b's: inverted where the items come the other way round
        extra = {**extra, **agreement.aligned_as_ordered(extra["alignment"], extra["inlier_box"], a > b,
                                                         extra.get("inlier_points"))}
    return ScoredPairs(np.minimum(a, b), np.maximum(a, b), found.score, extra)


# ---------------------------------------------------------------------------------------------------
# 5. Outputs


def write_outputs(out_dir: Path, result: FindResult, cfg: DictConfig, stages: list[Stage]) -> None:
    outputs.write_pairs_csv(out_dir / "pairs.csv", result.pairs, result.items)
    outputs.write_groups_json(out_dir / "groups.json", result.groups, result.pairs, result.items,
                              float(cfg.threshold), str(cfg.method))
    outputs.write_skipped_csv(out_dir / "skipped.csv", result.skipped)
    write_decisions_json(out_dir / "decisions.json", result.decisions)
    outputs.write_evidence(out_dir / "evidence.npz", result.raw, result.items,
                           {stage.name: stage.settings for stage in stages}, result.evidence)
    report.write_report(out_dir / "report.html", result, cfg, stages)


def _nan_as_null(value):
    """value with every NaN float (nested in dicts and lists too) as None: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _nan_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_null(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def score_against(result: FindResult, truth_csv: str | Path, out_dir: Path, threshold: float) -> dict:
    """Metrics of a run against a truth.csv (simbench.find.truth), also written to out_dir/metrics.json."""
    import json

    from simbench.cache import atomic_write_bytes
    from simbench.find.truth import read_truth, score_run

    truth = read_truth(truth_csv, [item.display for item in result.items])
    metrics = score_run(result.pairs.as_scored(), truth, threshold, len(result.items))
    atomic_write_bytes(out_dir / "metrics.json", (json.dumps(_nan_as_null(metrics), indent=1) + "\n").encode())
    return metrics
