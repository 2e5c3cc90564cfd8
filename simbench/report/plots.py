"""Plots from summary rows (PNG, SVG, ...): precision-recall curves, accuracy against throughput with
the Pareto front, recall per transform as heat maps."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from simbench.report.stats import RATES
from simbench.report.tables import TRANSFORM_RECALLS, _missing, transform_matrix


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
    ax.set(xlabel="micro-AP (higher is better)", ylabel=RATES[rate][1] + ", log scale",
           title="Accuracy against throughput")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out, f"accuracy_vs_{rate}", formats)


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
