"""`simbench report RUN_DIR... --out DIR`: tables and plots from stored runs, never re-running anything.

As in ann-benchmarks, runs store raw results (result.json, and the scored pairs in pairs.npz) and
everything shown here is computed from them afterwards:

* tables in Markdown, LaTeX (booktabs) and CSV, one row per configuration: micro-AP and recall at
  precision 0.9 with 95% bootstrap intervals (duplicate groups resampled, from pairs.npz), precision,
  recall, F1 at the method's threshold, images/s, image pairs/s, descriptor comparisons/s (keypoint
  methods), device, peak memory;
* a CPU-versus-GPU table when the same configuration ran on both;
* recall per transform kind, at each method's threshold and at its precision-0.9 operating point (the same
  precision for every method): Markdown tables and CSV;
* plots: precision-recall curves, accuracy against throughput with the Pareto front, recall per
  transform as heat maps (PNG and SVG).

Runs whose configuration (and machine) is identical are one row: metrics from the newest run, timings
the median over all of them (machines are noisy), peak memory the maximum.
"""
from simbench.report.callback import ReportCallback
from simbench.report.cli import main, report
from simbench.report.plots import pareto_front
from simbench.report.runs import Run, find_results, load_runs
from simbench.report.stats import cpu_gpu_rows, summarise
from simbench.report.tables import latex_escape

__all__ = ["find_results", "load_runs", "summarise", "cpu_gpu_rows", "pareto_front", "report", "main",
           "ReportCallback", "Run", "latex_escape"]
