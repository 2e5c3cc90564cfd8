"""`simbench report RUN_DIR... --out DIR`: tables and plots from stored runs, never re-running anything.

As in ann-benchmarks, runs store raw results (result.json, and the scored pairs in pairs.npz) and
everything shown here is computed from them afterwards:

* tables in Markdown, LaTeX (booktabs) and CSV, one row per configuration: micro-AP and recall at
  precision 0.9 with 95% bootstrap intervals (duplicate groups resampled, from pairs.npz), precision,
  recall, F1 at the method's threshold, images/s, comparisons/s, device, peak memory;
* a CPU-versus-GPU table when the same configuration ran on both;
* recall per transform kind, at each method's threshold and at its precision-0.9 operating point (the same
  precision for every method): Markdown tables and CSV;
* plots: precision-recall curves, accuracy against throughput with the Pareto front, recall per
  transform as heat maps (PNG and SVG).

Runs whose configuration (and machine) is identical are one row: metrics from the newest run, timings
the median over all of them (machines are noisy), peak memory the maximum.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger("simbench.report")

__all__ = ["find_results", "load_runs", "summarise", "cpu_gpu_rows", "pareto_front", "report", "main",
           "ReportCallback"]

#: Config keys that never change what a run measures (paths, progress bars), left out of the identity.
VOLATILE = ("cache_dir", "progress", "cache_features", "save_pairs")
#: Config keys that only say where a run executes: left out when pairing CPU and GPU runs.
DEVICE_KEYS = ("device", "strict_device", "half", "channels_last")
METRICS = ("uap", "recall_at_p90", "threshold_at_p90", "precision", "recall", "f1", "threshold")
TIMINGS = ("images_per_s", "comparisons_per_s", "extract_s", "match_s", "total_s")
CI_LEVEL = 0.95


# --------------------------------------------------------------------------------------------- loading


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


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Read every result.json found under `paths` (see find_results); unreadable ones are skipped."""
    runs = []
    for path in find_results(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        flat = _identity(flatten(result.get("config") or {}))
        runs.append(Run(path.parent, result, path.stat().st_mtime, flat))
    return runs


def _key(run: Run) -> str:
    env = run.env
    machine = {"env.device": env.get("device"), "env.fallback": env.get("fallback"),
               "env.cpu": env.get("cpu"), "env.gpu": env.get("gpu")}
    return json.dumps({"name": run.result.get("name"), **run.config, **machine}, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------- summarise


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _max(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(max(v)) if v else None


def _load_pairs(run: Run):
    """(ScoredPairs, truth) from pairs.npz, or None when the run stored none."""
    from simbench.types import ScoredPairs

    if not run.pairs_path.exists():
        return None
    with np.load(run.pairs_path, allow_pickle=False) as z:
        pairs = ScoredPairs(z["a"].astype(np.int64), z["b"].astype(np.int64), z["score"].astype(np.float64))
        truth = z["truth"].astype(np.int64).reshape(-1, 2)
    return pairs, truth


def _bootstrap(run: Run, n_boot: int, seed: int) -> dict:
    """95% intervals of uAP and recall@P90 from the run's stored pairs (duplicate groups resampled)."""
    from simbench.evaluate import bootstrap_ci

    loaded = _load_pairs(run) if n_boot > 0 else None
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


# -------------------------------------------------------------------------------------- CPU vs GPU


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


def _ratio(num, den):
    return num / den if num is not None and den else None


def cpu_gpu_rows(rows: Sequence[dict]) -> list[dict]:
    """Each GPU configuration next to every CPU configuration that differs only in device and matcher.

    Runs that asked for a GPU and fell back to the CPU are in neither column.
    """
    out = []
    for g in (r for r in rows if _on_gpu(r)):
        for c in (r for r in rows if _on_cpu(r) and r["_neutral"] == g["_neutral"]):
            out.append({
                "cpu_configuration": c["configuration"], "gpu_configuration": g["configuration"],
                "cpu_images_per_s": c["images_per_s"], "gpu_images_per_s": g["images_per_s"],
                "images_speedup": _ratio(g["images_per_s"], c["images_per_s"]),
                "cpu_comparisons_per_s": c["comparisons_per_s"], "gpu_comparisons_per_s": g["comparisons_per_s"],
                "comparisons_speedup": _ratio(g["comparisons_per_s"], c["comparisons_per_s"]),
                "cpu_uap": c["uap"], "gpu_uap": g["uap"], "gpu": g["gpu"],
            })
    return out


# ---------------------------------------------------------------------------------------------- tables

# (key, Markdown header, LaTeX header, kind)
SUMMARY_COLUMNS = [
    ("configuration", "configuration", "Configuration", "text"),
    ("uap", "µAP (95% CI)", r"$\mu$AP (95\% CI)", "metric_ci"),
    ("recall_at_p90", "R@P90 (95% CI)", r"R@P90 (95\% CI)", "metric_ci"),
    ("precision", "P", "P", "metric"),
    ("recall", "R", "R", "metric"),
    ("f1", "F1", "F1", "metric"),
    ("images_per_s", "img/s", "img/s", "rate"),
    ("comparisons_per_s", "cmp/s", "cmp/s", "rate"),
    ("device", "device", "Device", "device"),
    ("peak_rss_mb", "peak RSS MB", "Peak RSS (MB)", "mb"),
    ("peak_gpu_mb", "peak GPU MB", "Peak GPU (MB)", "mb"),
]
#: Higher is better: the best value of these columns is set in bold.
BEST = ("uap", "recall_at_p90", "precision", "recall", "f1", "images_per_s", "comparisons_per_s")

CPU_GPU_COLUMNS = [
    ("cpu_configuration", "CPU run", "CPU run", "text"),
    ("gpu_configuration", "GPU run", "GPU run", "text"),
    ("cpu_images_per_s", "img/s CPU", "img/s CPU", "rate"),
    ("gpu_images_per_s", "img/s GPU", "img/s GPU", "rate"),
    ("images_speedup", "img/s ×", r"img/s $\times$", "speedup"),
    ("cpu_comparisons_per_s", "cmp/s CPU", "cmp/s CPU", "rate"),
    ("gpu_comparisons_per_s", "cmp/s GPU", "cmp/s GPU", "rate"),
    ("comparisons_speedup", "cmp/s ×", r"cmp/s $\times$", "speedup"),
    ("cpu_uap", "µAP CPU", r"$\mu$AP CPU", "metric"),
    ("gpu_uap", "µAP GPU", r"$\mu$AP GPU", "metric"),
    ("gpu", "GPU", "GPU", "text"),
]

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_rate(v) -> str:
    """Throughput with an SI suffix, three significant digits: 215, 3.03M, 1.2G."""
    if _missing(v):
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _cell(row: dict, key: str, kind: str, latex: bool) -> str:
    v = row.get(key)
    if kind == "text":
        return "-" if _missing(v) else (latex_escape(v) if latex else str(v).replace("|", "\\|"))
    if kind == "device":
        text = "-" if v is None else str(v) + (" (fallback)" if row.get("fallback") else "")
        return latex_escape(text) if latex else text
    if _missing(v):
        return "-"
    if kind == "rate":
        return fmt_rate(v)
    if kind == "speedup":
        return f"{v:.3g}" + (r"$\times$" if latex else "×")
    if kind == "mb":
        return f"{v:.0f}"
    text = f"{v:.3f}"
    if kind == "metric_ci" and not _missing(row.get(f"{key}_lo")):
        lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
        ci = f"[{lo:.2f}, {hi:.2f}]"
        return text + (r" {\scriptsize " + ci + "}" if latex else " " + ci)
    return text


def _shown(row: dict, key: str, kind: str) -> str:
    """The value as a table shows it, without interval: equal when they look equal (ties share bold)."""
    v = row.get(key)
    return fmt_rate(v) if kind == "rate" else f"{v:.3f}"


def _best(rows: Sequence[dict], columns) -> dict[str, str]:
    """The best (highest) value of each BEST column as shown, when there is a contest (>= 2 values)."""
    out = {}
    for key, _, _, kind in columns:
        have = [r for r in rows if not _missing(r.get(key))]
        if key in BEST and len(have) >= 2:
            out[key] = _shown(max(have, key=lambda r: r[key]), key, kind)
    return out


def _is_best(row: dict, key: str, kind: str, best: dict) -> bool:
    return key in best and not _missing(row.get(key)) and _shown(row, key, kind) == best[key]


def _present(rows, columns):
    """Columns with at least one value (the GPU memory column only when a GPU was used)."""
    return [c for c in columns if c[3] in ("text", "device") or any(not _missing(r.get(c[0])) for r in rows)]


def markdown_table(rows: Sequence[dict], columns) -> str:
    columns = _present(rows, columns)
    best = _best(rows, columns)
    lines = ["| " + " | ".join(c[1] for c in columns) + " |",
             "|" + "|".join(":--" if c[3] in ("text", "device") else "--:" for c in columns) + "|"]
    for r in rows:
        cells = []
        for key, _, _, kind in columns:
            text = _cell(r, key, kind, latex=False)
            cells.append(f"**{text}**" if _is_best(r, key, kind, best) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(rows: Sequence[dict], columns, caption: str = "", label: str = "") -> str:
    """A booktabs table (needs \\usepackage{booktabs}); best values in bold."""
    columns = _present(rows, columns)
    best = _best(rows, columns)
    spec = "".join("l" if c[3] in ("text", "device") else "r" for c in columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(c[2] for c in columns) + r" \\", r"\midrule"]
    for r in rows:
        cells = []
        for key, _, _, kind in columns:
            text = _cell(r, key, kind, latex=True)
            cells.append(rf"\textbf{{{text}}}" if _is_best(r, key, kind, best) else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["configuration", "name", "family", "dataset", "n_images", "n_true_pairs", "runs",
              "uap", "uap_lo", "uap_hi", "recall_at_p90", "recall_at_p90_lo", "recall_at_p90_hi",
              "threshold_at_p90", "precision", "recall", "f1", "threshold",
              "images_per_s", "comparisons_per_s", "extract_s", "match_s", "total_s",
              "device", "fallback", "peak_rss_mb", "peak_gpu_mb", "cpu", "gpu", "git", "run_dir"]


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """Raw numbers (full precision, empty = missing): the table to compute with."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow(["" if _missing(r.get(k)) else r.get(k) for k in fields])


# ----------------------------------------------------------------------------------------------- plots


def pareto_front(x: Sequence[float], y: Sequence[float], x_decimals: int = 4) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by increasing x.

    As ann-benchmarks' create_pointset: sweep from the highest x down, keeping a point when its y
    exceeds every y seen so far. x equal to `x_decimals` decimals is a tie (exact matchers give the same
    accuracy up to the last bits of a float sum), won by the higher y.
    """
    pts = [(round(xi, x_decimals), yi, i) for i, (xi, yi) in enumerate(zip(x, y))
           if not (_missing(xi) or _missing(yi))]
    pts.sort(key=lambda p: (-p[0], -p[1]))
    front, best_y = [], -math.inf
    for xi, yi, i in pts:
        if yi > best_y:
            front.append(i)
            best_y = yi
    return front[::-1]


def _figure(width=7.0, height=4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for ext in formats:
        path = out / f"{stem}.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def _styles(n: int):
    """Distinct (colour, line style) pairs for n curves."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    dashes = ["-", "--", ":", "-."]
    k = 10 if n <= 10 else 20
    return [(cmap(i % k), dashes[(i // k) % len(dashes)]) for i in range(n)]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))


def plot_pr_curves(rows: Sequence[dict], out: Path, formats: Sequence[str]) -> list[Path]:
    """Precision against recall (ISC2021's pessimistic curve) per configuration, one figure per dataset."""
    from simbench.evaluate import dedupe_pairs, label_pairs, precision_recall_curve

    written = []
    datasets = sorted({str(r["dataset"]) for r in rows})
    for dataset in datasets:
        chosen = [r for r in rows if str(r["dataset"]) == dataset and r["_pairs"] and r["uap"] is not None]
        if not chosen:
            continue
        fig = _figure(8.0, 5.0)
        ax = fig.add_subplot()
        for (colour, dash), r in zip(_styles(len(chosen)), chosen):
            with np.load(r["_pairs"], allow_pickle=False) as z:
                from simbench.types import ScoredPairs

                pairs = dedupe_pairs(ScoredPairs(z["a"], z["b"], z["score"].astype(np.float64)))
                truth = np.unique(np.sort(z["truth"].reshape(-1, 2), axis=1), axis=0)
            truth = truth[truth[:, 0] != truth[:, 1]]
            if len(truth) == 0:
                continue
            p, rec, _ = precision_recall_curve(pairs.score, label_pairs(pairs, truth), len(truth))
            if len(p) > 4000:  # a curve of millions of points draws the same with a few thousand
                keep = np.unique(np.linspace(0, len(p) - 1, 4000).astype(np.int64))
                p, rec = p[keep], rec[keep]
            ax.plot(np.r_[0.0, rec], np.r_[1.0, p], color=colour, linestyle=dash, linewidth=1.3,
                    label=f"{r['configuration']} (µAP {r['uap']:.3f})")
        ax.axhline(0.9, color="0.6", linewidth=0.8, linestyle=":")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.0), ylim=(0, 1.02),
               title=f"Precision-recall, {dataset}" if len(datasets) > 1 else "Precision-recall")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        stem = "pr_curves" if len(datasets) == 1 else f"pr_curves_{_slug(dataset)}"
        written += _save(fig, out, stem, formats)
    return written


def plot_accuracy_vs_throughput(rows: Sequence[dict], out: Path, formats: Sequence[str],
                                rate: str = "images_per_s") -> list[Path]:
    """µAP against throughput (log), ann-benchmarks style: each family's Pareto front as a line, the
    overall front dashed; configurations off every front are plain markers."""
    pts = [r for r in rows if not _missing(r.get("uap")) and not _missing(r.get(rate)) and r[rate] > 0]
    if not pts:
        return []
    fig = _figure()
    ax = fig.add_subplot()
    families = sorted({r["family"] for r in pts})
    markers = "osD^v<>pP*Xh"
    for k, (fam, (colour, _)) in enumerate(zip(families, _styles(len(families)))):
        sel = [r for r in pts if r["family"] == fam]
        x = [r["uap"] for r in sel]
        y = [r[rate] for r in sel]
        ax.scatter(x, y, color=colour, marker=markers[k % len(markers)], s=22, alpha=0.45, linewidths=0)
        front = pareto_front(x, y)
        ax.plot([x[i] for i in front], [y[i] for i in front], color=colour, marker=markers[k % len(markers)],
                markersize=5, linewidth=1.4, label=fam)
    front = pareto_front([r["uap"] for r in pts], [r[rate] for r in pts])
    ax.plot([pts[i]["uap"] for i in front], [pts[i][rate] for i in front], color="black", linestyle="--",
            linewidth=0.9, label="Pareto front")
    xs = [r["uap"] for r in pts]
    right = min(xs) + 0.7 * (max(xs) - min(xs))  # labels of points near the right edge go to their left
    on_front = set(front)
    for i, r in enumerate(pts):
        if i not in on_front and len(pts) > 40:  # too many to read: name the front only
            continue
        left = r["uap"] > right
        # front labels under their point (the front's line runs above and between them)
        ax.annotate(r["configuration"], (r["uap"], r[rate]), fontsize=6 if i in on_front else 5,
                    color="black" if i in on_front else "0.45",
                    xytext=(-3 if left else 3, -4 if i in on_front else 3), textcoords="offset points",
                    ha="right" if left else "left", va="top" if i in on_front else "bottom")
    ax.set_yscale("log")
    ax.set(xlabel="micro-AP (higher is better)",
           ylabel={"images_per_s": "images/s (extraction)",
                   "comparisons_per_s": "comparisons/s (matching)"}.get(rate, rate) + ", log scale",
           title="Accuracy against throughput")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out, f"accuracy_vs_{rate}", formats)


#: Per-transform recall as result.json has it: at each method's threshold, and at its precision-0.9 point.
TRANSFORM_RECALLS = {
    "per_transform_recall": ("transform_recall", "at each method's threshold"),
    "per_transform_recall_at_p90": ("transform_recall_at_p90",
                                    "at precision 0.9 (each method's threshold_at_p90)"),
}


def transform_matrix(rows: Sequence[dict], key: str = "per_transform_recall"
                     ) -> tuple[list[str], list[str], np.ndarray]:
    """(configurations, transforms, recall matrix with nan where a transform is absent)."""
    chosen = [r for r in rows if r.get(key)]
    transforms = sorted({t for r in chosen for t in r[key]})
    m = np.full((len(chosen), len(transforms)), np.nan)
    for i, r in enumerate(chosen):
        for j, t in enumerate(transforms):
            v = r[key].get(t)
            m[i, j] = np.nan if v is None else v
    return [r["configuration"] for r in chosen], transforms, m


def transform_markdown(rows: Sequence[dict]) -> str:
    """Markdown tables of recall per transform (one per operating point), with micro-AP and R@P90 in front
    and, at the method's threshold, the precision there (recall alone says little where precision is low)."""
    by_name = {r["configuration"]: r for r in rows}
    parts = []
    for key, (_, title) in TRANSFORM_RECALLS.items():
        names, transforms, m = transform_matrix(rows, key)
        if not names:
            continue
        at_threshold = key == "per_transform_recall"
        head = ["configuration", "µAP", "R@P90"] + (["P"] if at_threshold else []) + transforms
        lines = [f"Recall of (reference, copy) pairs per transform, {title}:", "",
                 "| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 1)]
        for name, line in zip(names, m):
            r = by_name[name]
            front = [_cell(r, "uap", "metric", False), _cell(r, "recall_at_p90", "metric", False)]
            if at_threshold:
                front.append(_cell(r, "precision", "metric", False))
            cells = ["-" if np.isnan(v) else f"{v:.2f}" for v in line]
            lines.append("| " + " | ".join([name.replace("|", "\\|"), *front, *cells]) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def plot_transform_heatmap(rows: Sequence[dict], out: Path, formats: Sequence[str],
                           key: str = "per_transform_recall") -> list[Path]:
    """Recall of (reference, copy) pairs per transform kind (rows: configurations) at each threshold."""
    names, transforms, m = transform_matrix(rows, key)
    if not names:
        return []
    fig = _figure(max(5.0, 1.0 + 0.55 * len(transforms) + 0.06 * max(map(len, names))),
                  max(2.5, 1.2 + 0.3 * len(names)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(transforms)), transforms, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    if m.size <= 800:  # values in the cells while they stay legible
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, label="recall")
    stem, title = TRANSFORM_RECALLS[key]
    ax.set_title(f"Recall per transform, {title}", fontsize=9)
    return _save(fig, out, stem, formats)


# ---------------------------------------------------------------------------------------------- report


def report(paths: Sequence[str | Path], out: str | Path, n_boot: int = 200, seed: int = 0,
           formats: Sequence[str] = ("png", "svg"), command: str | None = None) -> dict[str, list[Path]]:
    """Write every table and plot for the runs under `paths` into `out`; returns {kind: [files]}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no result.json under {', '.join(map(str, paths))}")
    rows = summarise(runs, n_boot=n_boot, seed=seed)
    written: dict[str, list[Path]] = {"tables": [], "plots": []}

    (out / "summary.md").write_text(markdown_table(rows, SUMMARY_COLUMNS))
    (out / "summary.tex").write_text(latex_table(
        rows, SUMMARY_COLUMNS, label="tab:simbench",
        caption=f"Micro-AP and recall at precision 0.9 with {CI_LEVEL:.0%} bootstrap intervals "
                f"(duplicate groups resampled, {n_boot} resamples); precision, recall and F1 at each "
                "method's threshold; extraction and matching throughput."))
    write_csv(out / "summary.csv", rows, CSV_FIELDS)
    written["tables"] += [out / "summary.md", out / "summary.tex", out / "summary.csv"]

    for key, (stem, _) in TRANSFORM_RECALLS.items():
        names, transforms, m = transform_matrix(rows, key)
        if names:
            with open(out / f"{stem}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["configuration", *transforms])
                for name, line in zip(names, m):
                    w.writerow([name, *["" if np.isnan(v) else v for v in line]])
            written["tables"].append(out / f"{stem}.csv")
    transform_md = transform_markdown(rows)
    if transform_md:
        (out / "transform_recall.md").write_text(transform_md)
        written["tables"].append(out / "transform_recall.md")

    pairs = cpu_gpu_rows(rows)
    for stale in ("cpu_vs_gpu.md", "cpu_vs_gpu.tex", "cpu_vs_gpu.csv"):
        (out / stale).unlink(missing_ok=True)  # a re-run without GPU runs must not keep an old table
    if pairs:
        (out / "cpu_vs_gpu.md").write_text(markdown_table(pairs, CPU_GPU_COLUMNS))
        (out / "cpu_vs_gpu.tex").write_text(latex_table(
            pairs, CPU_GPU_COLUMNS, label="tab:simbench-cpu-gpu",
            caption="The same configurations on CPU and GPU: throughput and speed-up."))
        write_csv(out / "cpu_vs_gpu.csv", pairs, [c[0] for c in CPU_GPU_COLUMNS])
        written["tables"] += [out / "cpu_vs_gpu.md", out / "cpu_vs_gpu.tex", out / "cpu_vs_gpu.csv"]

    written["plots"] += plot_pr_curves(rows, out, formats)
    for rate in ("images_per_s", "comparisons_per_s"):
        written["plots"] += plot_accuracy_vs_throughput(rows, out, formats, rate)
    for key in TRANSFORM_RECALLS:
        written["plots"] += plot_transform_heatmap(rows, out, formats, key)

    _write_index(out, rows, pairs, written, paths, n_boot, seed, command)
    written["tables"].append(out / "README.md")
    return written


def _write_index(out: Path, rows, pairs, written, paths, n_boot, seed, command) -> None:
    """README.md of the report: how it was made, the tables, the plots."""
    datasets = sorted({(str(r["dataset"]), r["n_images"], r["n_true_pairs"]) for r in rows})
    machines = sorted({(str(r["cpu"]), str(r["gpu"])) for r in rows})
    lines = ["# simbench report", ""]
    if command:
        lines += ["Made by", "", "```bash", command, "```", ""]
    lines += [f"From {sum(r['runs'] for r in rows)} runs ({len(rows)} configurations) under "
              + ", ".join(f"`{p}`" for p in paths) + ".",
              "Datasets: " + "; ".join(f"{d} ({n} images, {t} true pairs)" for d, n, t in datasets) + ".",
              "Machines: " + "; ".join(c + ("" if g in ("None", "") else f" + {g}") for c, g in machines) + ".",
              "",
              f"µAP and R@P90 (recall at precision 0.9) follow ISC2021; brackets: {CI_LEVEL:.0%} percentile "
              f"bootstrap intervals, {n_boot} resamples of duplicate groups (seed {seed}). P, R, F1 at each "
              "method's threshold. img/s: feature extraction; cmp/s: pairs compared per second by the matcher "
              "(medians over repeated runs of a configuration).", "",
              "## All configurations", "", markdown_table(rows, SUMMARY_COLUMNS)]
    if pairs:
        lines += ["## CPU against GPU", "", markdown_table(pairs, CPU_GPU_COLUMNS)]
    transform_md = transform_markdown(rows)
    if transform_md:
        lines += ["## Recall per transform", "", transform_md]
    pngs = [p for p in written["plots"] if p.suffix == ".png"]
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    lines += ["Tables also as LaTeX (booktabs) and CSV: " + ", ".join(
        f"`{p.name}`" for p in written["tables"] if p.suffix in (".tex", ".csv")) + "."]
    (out / "README.md").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ entry points


def main(argv: Sequence[str] | None = None) -> int:
    """`simbench report RUN_DIR... --out DIR`."""
    parser = argparse.ArgumentParser(
        prog="simbench report",
        description="Tables (Markdown, LaTeX, CSV) and plots from the result.json and pairs.npz of runs and "
                    "multiruns (searched recursively). Nothing is re-run.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or multirun directories, or result.json")
    parser.add_argument("--out", required=True, metavar="DIR", help="where tables and plots go")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--formats", default="png,svg", help="plot formats, comma separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "simbench report " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        written = report(args.runs, args.out, n_boot=args.n_boot, seed=args.seed,
                         formats=[f for f in args.formats.split(",") if f], command=command)
    except FileNotFoundError as e:
        print(f"simbench report: {e}", file=sys.stderr)
        return 2
    n = sum(len(v) for v in written.values())
    print(f"{n} files in {args.out}: " + ", ".join(p.name for v in written.values() for p in v))
    return 0


try:
    from hydra.experimental.callback import Callback
except ImportError:  # hydra is a dependency; this only keeps `simbench report` usable without it
    Callback = object


class ReportCallback(Callback):
    """Hydra callback: after a sweep, write the report of its runs (experiment presets turn it on).

    out: report directory, relative to where simbench was started; None: results/<experiment preset>
    (the preset's name is only known once the sweep runs, hence not an interpolation in the config).
    n_boot, seed, formats: as the CLI.
    """

    def __init__(self, out: str | None = None, n_boot: int = 200, seed: int = 0,
                 formats: Sequence[str] = ("png", "svg")):
        self.out = out
        self.n_boot = int(n_boot)
        self.seed = int(seed)
        self.formats = list(formats)

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        sweep_dir = str(config.hydra.sweep.dir)
        out = self.out
        if out is None:
            preset = config.hydra.runtime.choices.get("experiment") or Path(sweep_dir).name
            out = str(Path("results") / str(preset))
        # As typed: unresolved (an override may hold an interpolation such as ${hydra:runtime.choices.x},
        # which cannot resolve once the sweep is over) and quoted for a shell.
        overrides = (OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
                     if "overrides" in config.hydra else [])
        command = " ".join(["python -m simbench", *(shlex.quote(str(o)) for o in overrides)])
        written = report([sweep_dir], out, n_boot=self.n_boot, seed=self.seed, formats=self.formats,
                         command=command)
        print(f"\nreport: {sum(len(v) for v in written.values())} files in {out}")


if __name__ == "__main__":
    sys.exit(main())
