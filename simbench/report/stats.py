"""One row per configuration from loaded runs: medians of repeated runs, bootstrap intervals of the
accuracy figures, and CPU runs paired with GPU runs of the same configuration."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from simbench.report.runs import Run, load_pairs

#: Config keys that only say where a run executes: left out when pairing CPU and GPU runs.
DEVICE_KEYS = ("device", "strict_device", "half", "channels_last")
METRICS = ("uap", "recall_at_p90", "threshold_at_p90", "precision", "recall", "f1", "threshold")
#: Throughputs, each in its own unit (never mixed in a column or on an axis): key -> (header, axis label).
RATES = {"images_per_s": ("img/s", "images/s (extraction)"),
         "image_pairs_per_s": ("pairs/s", "image pairs/s (matching)"),
         "descriptor_comparisons_per_s": ("desc. cmp/s", "descriptor comparisons/s (matching)")}
TIMINGS = (*RATES, "extract_s", "match_s", "total_s")
CI_LEVEL = 0.95


def _key(run: Run) -> str:
    env = run.env
    machine = {"env.device": env.get("device"), "env.fallback": env.get("fallback"),
               "env.cpu": env.get("cpu"), "env.gpu": env.get("gpu")}
    return json.dumps({"name": run.result.get("name"), **run.config, **machine}, sort_keys=True, default=str)


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _max(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(max(v)) if v else None


def _bootstrap(run: Run, n_boot: int, seed: int) -> dict:
    """95% intervals of uAP and recall@P90 from the run's stored pairs (duplicate groups resampled)."""
    from simbench.evaluate import bootstrap_ci

    loaded = load_pairs(run) if n_boot > 0 else None
    if loaded is None or not run.result.get("metrics"):
        return {}
    pairs, truth = loaded
    if len(truth) == 0:
        return {}
    n_images = (run.result.get("dataset") or {}).get("n_images")
    ci = bootstrap_ci(pairs, truth, n_boot=n_boot, seed=seed, alpha=1 - CI_LEVEL, n_images=n_images)
    return {f"{m}_{end}": ci[m][i] for m in ("uap", "recall_at_p90") for i, end in enumerate(("lo", "hi"))}


def _family(result: dict) -> str:
    """hash / cnn / keypoints ...: the run name's first word, else the method class."""
    name = result.get("name") or ""
    if "-" in name:
        return name.split("-", 1)[0]
    target = ((result.get("config") or {}).get("method") or {}).get("_target_", "")
    return target.rsplit(".", 1)[-1].replace("Method", "").lower() or "other"


def _labels(groups: list[list[Run]]) -> list[str]:
    """Run name, plus the settings that tell apart configurations sharing that name."""
    by_name: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_name.setdefault(g[-1].result.get("name") or g[-1].dir.name, []).append(i)
    labels = [""] * len(groups)
    for name, idx in by_name.items():
        if len(idx) == 1:
            labels[idx[0]] = name
            continue
        flats = []
        for i in idx:
            run = groups[i][-1]
            env = {f"env.{k}": run.env.get(k) for k in ("device", "fallback", "cpu", "gpu")}
            flats.append({**run.config, **env})
        keys = sorted({k for f in flats for k in f})
        differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        # method.extractor / method.matcher repeat the hash/backbone/matcher groups: show those instead
        plain = [k for k in differ if not k.startswith(("method.extractor.", "method.matcher."))]
        differ = plain or differ
        for n, (i, f) in enumerate(zip(idx, flats)):
            shown = ", ".join(f"{k.split('.', 1)[-1] if k.startswith('env.') else k}={f.get(k)}" for k in differ)
            labels[i] = f"{name} [{shown or n + 1}]"
    return labels


def summarise(runs: Sequence[Run], n_boot: int = 200, seed: int = 0) -> list[dict]:
    """One row per configuration (runs with the same config and machine merged), sorted by name.

    Metrics come from the newest run of a configuration and its pairs.npz (bootstrap intervals);
    throughput is the median over its runs, peak memory the maximum.
    """
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.mtime):
        groups.setdefault(_key(run), []).append(run)
    ordered = list(groups.values())
    rows = []
    for label, group in zip(_labels(ordered), ordered):
        newest = group[-1]
        res = newest.result
        metrics = res.get("metrics") or {}
        env = newest.env
        timings = [r.result.get("timing") or {} for r in group]
        memory = [r.result.get("memory") or {} for r in group]
        row = {
            "configuration": label,
            "name": res.get("name"),
            "family": _family(res),
            "dataset": (res.get("dataset") or {}).get("name"),
            "n_images": (res.get("dataset") or {}).get("n_images"),
            "n_true_pairs": (res.get("dataset") or {}).get("n_true_pairs"),
            "runs": len(group),
            **{m: metrics.get(m) for m in METRICS},
            "uap_lo": None, "uap_hi": None, "recall_at_p90_lo": None, "recall_at_p90_hi": None,
            **{t: _median(tm.get(t) for tm in timings) for t in TIMINGS},
            "device": env.get("device"),
            "fallback": env.get("fallback"),
            "peak_rss_mb": _max(m.get("peak_rss_mb") for m in memory),
            "peak_gpu_mb": _max(m.get("peak_gpu_mb") for m in memory),
            "cpu": env.get("cpu"),
            "gpu": env.get("gpu"),
            "git": env.get("git"),
            "run_dir": str(newest.dir),
        }
        row.update(_bootstrap(newest, n_boot, seed))
        row["per_transform_recall"] = dict(metrics.get("per_transform_recall") or {})
        row["per_transform_recall_at_p90"] = dict(metrics.get("per_transform_recall_at_p90") or {})
        row["_neutral"] = _device_neutral(newest)
        row["_pairs"] = str(newest.pairs_path) if newest.pairs_path.exists() else None
        rows.append(row)
    rows.sort(key=lambda r: (str(r["dataset"]), r["family"], r["configuration"]))
    return rows


def _device_neutral(run: Run) -> str:
    """The configuration with everything that picks a device removed (matcher, device flags, name)."""
    keep = {k: v for k, v in run.config.items()
            if not k.startswith(("matcher.", "method.matcher.")) and k != "name"
            and k.rsplit(".", 1)[-1] not in DEVICE_KEYS}
    return json.dumps(keep, sort_keys=True, default=str)


def _on_gpu(row: dict) -> bool:
    return str(row.get("device") or "").startswith("cuda") and not row.get("fallback")


def _on_cpu(row: dict) -> bool:
    return row.get("device") == "cpu" and not row.get("fallback")


def speedup_key(rate: str) -> str:
    """images_per_s -> images_speedup."""
    return rate.removesuffix("_per_s") + "_speedup"


def _ratio(num, den):
    return num / den if num is not None and den else None


def cpu_gpu_rows(rows: Sequence[dict]) -> list[dict]:
    """Each GPU configuration next to every CPU configuration that differs only in device and matcher.

    Runs that asked for a GPU and fell back to the CPU are in neither column.
    """
    out = []
    for g in (r for r in rows if _on_gpu(r)):
        for c in (r for r in rows if _on_cpu(r) and r["_neutral"] == g["_neutral"]):
            row = {"cpu_configuration": c["configuration"], "gpu_configuration": g["configuration"]}
            for rate in RATES:
                row.update({f"cpu_{rate}": c[rate], f"gpu_{rate}": g[rate],
                            speedup_key(rate): _ratio(g[rate], c[rate])})
            out.append({**row, "cpu_uap": c["uap"], "gpu_uap": g["uap"], "gpu": g["gpu"]})
    return out
