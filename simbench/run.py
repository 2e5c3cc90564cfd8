"""The Hydra runner: `python -m simbench [overrides]` (add -m for sweeps).

One run: dataset -> extractor -> features (cached) -> matcher -> scored pairs -> metrics -> result.json.
"""
from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from simbench import CONFIG_MODULE, cache, environment
from simbench.data.dataset import Dataset
from simbench.distributed import match_stage
from simbench.distributed.cluster import ClusterSession
from simbench.distributed.keypoints import KeypointChunks
from simbench.evaluate import evaluate
from simbench.features.base import Extracted, Extractor
from simbench.types import KeypointSets, ScoredPairs, Skipped

CONFIG_DIR = str(resources.files(CONFIG_MODULE))  # for initialize_config_dir (tests)
log = logging.getLogger("simbench")


def extract_cached(extractor: Extractor, dataset: Dataset, cfg: DictConfig,
                   cluster: ClusterSession | None = None) -> tuple[Extracted, float, bool]:
    """Features of the dataset's images, from the cache when the same images and parameters were seen
    (else extracted here, or as Dask tasks when `cluster` has a client).

    Returns (extracted, extraction seconds as measured when they were extracted, whether cached).
    """
    key = cache.feature_key(extractor.name, extractor.params(), dataset.paths)
    if cluster is not None and getattr(extractor, "whitening", None) == "dataset":
        # Each task would fit the PCA on its own chunk: the features would depend on the chunks.
        log.warning("whitening=dataset is learnt from all the embeddings at once: extracting in this process")
        cluster = None
    if cluster is not None and extractor.kind in ("keypoints", "embedding"):
        return features_on_workers(cluster, extractor, dataset, cfg, key)
    path = Path(cfg.cache_dir) / "features" / f"{key}.npz"  # simbench.cache.dumps: no pickle
    if cfg.cache_features:
        hit = cache.load(path)
        if hit is not None:
            return hit["extracted"], hit["extract_s"], True
    start = time.perf_counter()
    if cluster is not None:
        from simbench.distributed.extract import extract_paths

        extracted = extract_paths(cluster, extractor, dataset.paths, bool(cfg.progress))
    else:
        extracted = extractor.extract(dataset.paths, progress=cfg.progress)
    extract_s = time.perf_counter() - start
    if cfg.cache_features:
        cache.save(path, {"extracted": extracted, "extract_s": extract_s})
    return extracted, extract_s, False


def features_on_workers(cluster: ClusterSession, extractor: Extractor, dataset: Dataset, cfg: DictConfig,
                        key: str) -> tuple[Extracted, float, bool]:
    """extract_cached for keypoints and CNN embeddings on a cluster: tasks extract into a store the workers
    share and the workers read the chunks back for matching (simbench.distributed.keypoints.read_keypoints,
    simbench.distributed.cnn.read_embeddings), so the features are a KeypointChunks or EmbeddingChunks and
    the client holds per-image tables only (hash codes, a few bytes an image, are matched in the client as
    extract_paths gives them). With cache_features the store is the cache (cache_dir/features/<key>.index/,
    complete once its summary.json is written); without, a scratch folder removed when the cluster closes.
    cache_dir must be on a file system the workers share."""
    from simbench.distributed.cnn import read_embeddings
    from simbench.distributed.extract import NO_FEATURES, extract_into_store, path_keys
    from simbench.distributed.keypoints import read_keypoints, rows_per_image
    from simbench.find.index import FeatureStore

    features_dir = Path(cfg.cache_dir) / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    root = features_dir / f"{key}.index" if cfg.cache_features else cluster.scratch_dir(features_dir, ".index-")
    store, keys, summary = FeatureStore(root), path_keys(dataset.paths), root / "summary.json"
    done = _stored_summary(summary) if cfg.cache_features else None
    if done is not None:
        extract_s, skipped = done
    else:
        start = time.perf_counter()
        skipped = extract_into_store(cluster, extractor, dataset.paths, keys, store, extractor.name, key,
                                     bool(cfg.progress))
        extract_s = time.perf_counter() - start
        if cfg.cache_features:
            blob = {"extract_s": extract_s, "skipped": [s.__dict__ for s in skipped]}
            cache.atomic_write_bytes(summary, json.dumps(blob).encode())
    local = [0] * len(keys)  # one record per path
    if extractor.kind == "keypoints":
        chunks, rows, reasons = read_keypoints(cluster.client, store, extractor.name, key, keys, local, None,
                                               rows_per_image(extractor))
    else:
        chunks, rows, reasons = read_embeddings(cluster.client, store, extractor.name, key, keys, local, None)
    listed = {s.path for s in skipped}
    lost = [Skipped(str(dataset.paths[k]), why) for k, why in sorted(reasons.items())
            if str(dataset.paths[k]) not in listed and why != NO_FEATURES]  # (a store damaged since)
    if lost:
        log.warning("%d images without usable features in %s (delete it to extract again), e.g. %s: %s", len(lost),
                    root, lost[0].path, lost[0].reason)
    return Extracted(chunks, rows, skipped + lost), extract_s, done is not None


def _stored_summary(path: Path) -> tuple[float, list[Skipped]] | None:
    """(extraction seconds, skipped inputs) of a complete store, or None (absent, or unusable: said)."""
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
        return float(done["extract_s"]), [Skipped(str(s["path"]), str(s["reason"])) for s in done["skipped"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unusable (%s): extracting again", path, exc)
        return None


def warm_up(method, features) -> None:
    """Compile the matcher's kernels (numba JIT, CUDA) on a tiny input first, so match_s times the search
    and not the one-off compilation."""
    warm = getattr(method.matcher, "warm_up", None)
    if warm is not None:
        warm(features)


def to_dataset_indices(pairs: ScoredPairs, rows: np.ndarray) -> ScoredPairs:
    """Feature-row pairs -> dataset image pairs with a < b."""
    a, b = rows[pairs.a], rows[pairs.b]
    return ScoredPairs(np.minimum(a, b), np.maximum(a, b), pairs.score, pairs.extra)


def json_safe(value):
    """Strict JSON: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def run_experiment(cfg: DictConfig, out_dir: Path) -> dict:
    """Run one configuration and write result.json (and pairs.npz) into out_dir. Returns the result."""
    t_start = time.perf_counter()
    environment.reset_peak_rss()
    dataset: Dataset = instantiate(cfg.dataset).load(progress=cfg.progress)
    method = instantiate(cfg.method)
    cluster = ClusterSession(cfg.get("cluster"), bool(cfg.progress))  # cluster=local|slurm|gpu: Dask
    try:
        client = cluster.start()
        extracted, extract_s, cached = extract_cached(method.extractor, dataset, cfg,
                                                      cluster if client is not None else None)

        warm_up(method, extracted.features)
        method.matcher.progress = bool(cfg.progress)
        t_match = time.perf_counter()
        scored = (method.score_pairs(extracted.features) if client is None
                  else match_stage(client, method, extracted.features, bool(cfg.progress)))
        match_s = time.perf_counter() - t_match
    finally:
        cluster.close()
    pairs = to_dataset_indices(scored, extracted.rows)

    # True pairs with an unreadable image cannot be found by any method: they are reported in `skipped`
    # and left out of the metrics (dataset.n_true_pairs_evaluated says how many remain).
    truth = dataset.truth
    if truth is not None:
        readable = np.zeros(len(dataset), bool)
        readable[extracted.rows] = True
        truth = truth[readable[truth[:, 0]] & readable[truth[:, 1]]]
    metrics = evaluate(pairs, truth, dataset.labels, method.threshold)
    n_images = len(extracted.rows)
    image_pairs = n_images * (n_images - 1) / 2
    # Two units: every method compares image pairs; keypoint methods also count descriptor distances
    # (their "comparisons"), a figure of another size that must not share a column with image pairs.
    descriptor_comparisons = (float(scored.extra["comparisons"])
                              if isinstance(extracted.features, (KeypointSets, KeypointChunks))
                              and "comparisons" in scored.extra else None)
    skipped = [s.__dict__ for s in (*dataset.skipped, *extracted.skipped)]
    result = {
        "name": cfg.get("name") or type(method).__name__,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "dataset": {"name": dataset.name, "n_images": len(dataset), "n_true_pairs": dataset.n_true_pairs,
                    "n_true_pairs_evaluated": None if truth is None else len(truth)},
        "metrics": metrics,
        "timing": {
            "extract_s": extract_s,
            "extract_cached": cached,
            "match_s": match_s,
            "total_s": time.perf_counter() - t_start,
            "images_per_s": n_images / extract_s if extract_s > 0 else None,
            "image_pairs_per_s": image_pairs / match_s if match_s > 0 else None,
            "descriptor_comparisons_per_s": (descriptor_comparisons / match_s
                                             if descriptor_comparisons is not None and match_s > 0 else None),
            "image_pairs": image_pairs,
            "descriptor_comparisons": descriptor_comparisons,
        },
        # Numbers the method reports about its own work (descriptor pairs, pairs verified, stage seconds).
        "method_stats": scored.run_wide_numbers(),
        "memory": {"peak_rss_mb": environment.peak_rss_mb(), "peak_gpu_mb": environment.peak_gpu_mb(),
                   "peak_rss_workers_mb": environment.peak_rss_children_mb()},
        "env": {
            "device": method.device,
            "fallback": method.fallback,
            "cpu": environment.cpu_model(),
            "gpu": environment.gpu_name(),
            "versions": environment.versions(),
            "git": environment.git_commit(),
        },
        "skipped": skipped,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    result = json_safe(result)
    cache.atomic_write_bytes(out_dir / "result.json", json.dumps(result, indent=2, allow_nan=False).encode())
    if cfg.get("save_pairs", True):
        with open(out_dir / "pairs.npz", "wb") as f:
            np.savez_compressed(f, a=pairs.a, b=pairs.b, score=pairs.score,
                                truth=truth if truth is not None else np.empty((0, 2), np.int64),
                                labels=np.array(dataset.labels, dtype=str))
    return result


# ---------------------------------------------------------------------------------------------- tables

COLUMNS = [("name", "run"), ("uap", "µAP"), ("recall_at_p90", "R@P90"), ("precision", "P"), ("recall", "R"),
           ("f1", "F1"), ("images_per_s", "img/s"), ("image_pairs_per_s", "pairs/s"),
           ("descriptor_comparisons_per_s", "desc. cmp/s"), ("device", "device")]


def table_row(result: dict) -> dict:
    m = result.get("metrics") or {}
    row = {"name": result["name"], **{k: m.get(k) for k in ("uap", "recall_at_p90", "precision", "recall", "f1")}}
    row["images_per_s"] = result["timing"]["images_per_s"]
    row["image_pairs_per_s"] = result["timing"]["image_pairs_per_s"]
    row["descriptor_comparisons_per_s"] = result["timing"]["descriptor_comparisons_per_s"]
    row["device"] = result["env"]["device"] + (" (fallback)" if result["env"]["fallback"] else "")
    return row


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        return f"{value:.3g}" if value >= 1000 else f"{value:.3f}"
    return str(value)


def format_table(results: list[dict]) -> str:
    rows = [table_row(r) for r in results]
    cells = [[h for _, h in COLUMNS]] + [[_fmt(r[k]) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_transforms(result: dict) -> str:
    per = (result.get("metrics") or {}).get("per_transform_recall") or {}
    if not per:
        return ""
    return "recall per transform: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))


class SummaryTable(Callback):
    """After a sweep, print one table of every job's result.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = []
        for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
            results.append(json.loads(path.read_text()))
        if len(results) > 1:
            print(f"\n{len(results)} runs in {sweep_dir}\n{format_table(results)}")


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run_experiment(cfg, out_dir)
    d = result["dataset"]
    print(f"\n{result['name']}: {d['n_images']} images of {d['name']}, {d['n_true_pairs']} true pairs, "
          f"{len(result['skipped'])} skipped -> {out_dir}/result.json")
    print(format_table([result]))
    if result["metrics"]:
        print(format_transforms(result))
    if result["env"]["fallback"]:
        print("note: the requested device was not available; this ran on the CPU (env.fallback = true)")
