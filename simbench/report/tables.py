"""Tables in Markdown, LaTeX (booktabs) and CSV from summary rows; best values in bold."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from simbench.report.stats import RATES, TIMINGS, speedup_key

# (key, Markdown header, LaTeX header, kind)
SUMMARY_COLUMNS = [
    ("configuration", "configuration", "Configuration", "text"),
    ("uap", "µAP (95% CI)", r"$\mu$AP (95\% CI)", "metric_ci"),
    ("recall_at_p90", "R@P90 (95% CI)", r"R@P90 (95\% CI)", "metric_ci"),
    ("precision", "P", "P", "metric"),
    ("recall", "R", "R", "metric"),
    ("f1", "F1", "F1", "metric"),
    *((rate, head, head, "rate") for rate, (head, _) in RATES.items()),
    ("device", "device", "Device", "device"),
    ("peak_rss_mb", "peak RSS MB", "Peak RSS (MB)", "mb"),
    ("peak_gpu_mb", "peak GPU MB", "Peak GPU (MB)", "mb"),
]
#: Higher is better: the best value of these columns is set in bold.
BEST = ("uap", "recall_at_p90", "precision", "recall", "f1", *RATES)

CPU_GPU_COLUMNS = [
    ("cpu_configuration", "CPU run", "CPU run", "text"),
    ("gpu_configuration", "GPU run", "GPU run", "text"),
    *(column for rate, (head, _) in RATES.items() for column in (
        (f"cpu_{rate}", f"{head} CPU", f"{head} CPU", "rate"),
        (f"gpu_{rate}", f"{head} GPU", f"{head} GPU", "rate"),
        (speedup_key(rate), f"{head} ×", rf"{head} $\times$", "speedup"))),
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
              *TIMINGS,
              "device", "fallback", "peak_rss_mb", "peak_gpu_mb", "cpu", "gpu", "git", "run_dir"]


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """Raw numbers (full precision, empty = missing): the table to compute with."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow(["" if _missing(r.get(k)) else r.get(k) for k in fields])


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
