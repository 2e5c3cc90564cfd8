"""`simbench report RUN_DIR... --out DIR`: every table and plot of the runs into one folder."""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from simbench.report.plots import plot_accuracy_vs_throughput, plot_pr_curves, plot_transform_heatmap
from simbench.report.runs import load_runs
from simbench.report.stats import CI_LEVEL, RATES, cpu_gpu_rows, summarise
from simbench.report.tables import (CPU_GPU_COLUMNS, CSV_FIELDS, SUMMARY_COLUMNS, TRANSFORM_RECALLS, latex_table,
                                    markdown_table, transform_markdown, transform_matrix, write_csv)


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
    if pairs:
        (out / "cpu_vs_gpu.md").write_text(markdown_table(pairs, CPU_GPU_COLUMNS))
        (out / "cpu_vs_gpu.tex").write_text(latex_table(
            pairs, CPU_GPU_COLUMNS, label="tab:simbench-cpu-gpu",
            caption="The same configurations on CPU and GPU: throughput and speed-up."))
        write_csv(out / "cpu_vs_gpu.csv", pairs, [c[0] for c in CPU_GPU_COLUMNS])
        written["tables"] += [out / "cpu_vs_gpu.md", out / "cpu_vs_gpu.tex", out / "cpu_vs_gpu.csv"]

    written["plots"] += plot_pr_curves(rows, out, formats)
    for rate in RATES:
        written["plots"] += plot_accuracy_vs_throughput(rows, out, formats, rate)
    for key in TRANSFORM_RECALLS:
        written["plots"] += plot_transform_heatmap(rows, out, formats, key)

    _write_index(out, rows, pairs, written, paths, n_boot, seed, command)
    written["tables"].append(out / "README.md")
    _remove_stale(out, written)
    return written


#: Names of what report() writes now or wrote in earlier versions (accuracy_vs_comparisons_per_s.*).
GENERATED = ("summary.*", "cpu_vs_gpu.*", "transform_recall*.*", "pr_curves*.*", "accuracy_vs_*.*")


def _remove_stale(out: Path, written: dict[str, list[Path]]) -> None:
    """Delete report outputs in `out` that this call did not write (old names, tables or plots whose runs
    are gone, other formats), so a re-made folder holds only what its runs produce."""
    keep = {p.name for v in written.values() for p in v}
    for pattern in GENERATED:
        for path in out.glob(pattern):
            if path.is_file() and path.name not in keep:
                path.unlink()


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
              "method's threshold. img/s: feature extraction; pairs/s: image pairs compared per second by the "
              "matcher; desc. cmp/s (keypoint methods): descriptor distances computed per second by the "
              "matcher (medians over repeated runs of a configuration).", "",
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
