"""Shapes of the cascade's fusion, compared on the TUNING collections only (results/find.md, "What still fails").

    python benchmarks/fusion_variants.py [--work DIR]

Collects every candidate pair of the tuning collections (`bench_find.tuning_collections`: devset tune photo
and line art, the school-style and plain yearbooks) with both stages' raw signals, exactly as
`bench_find.py calibrate` fits the shipped fusion, then fits each variant the same way (calibration.fit_logistic,
every collection weighted alike) and prints micro-AP, recall at P0.9, the best recall at P0.95 with its
threshold, and precision / recall at 0.95 per collection. Rules over the stage tables need no fit.
The report split is never read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_find  # noqa: E402

from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.evaluate import micro_ap, recall_at_precision  # noqa: E402
from simbench.find import cascade  # noqa: E402
from simbench.find.calibration import fit_logistic  # noqa: E402


def fusion_pairs(work: Path) -> tuple[list, list]:
    """Per tuning collection: (tag, keypoint evidence, keypoints found, cnn score, is_true, its true pairs)."""
    cfg = cascade.make_config("cascade")
    stages = cascade.build_stages(cfg, quiet=True)
    out = []
    for collection in bench_find.tuning_collections(work, progress=False):
        c_cfg = cascade.make_config("cascade", list(collection.overrides))  # a devset half: its own whitening
        c_stages = cascade.build_stages(c_cfg, calibrations={}, quiet=True) if collection.overrides else stages
        values, found, y = bench_find.fusion_signals(collection, c_stages, c_cfg, work, progress=False)
        out.append((collection.tag, values["keypoints"], found["keypoints"], values["cnn"], y, collection.n_true))
    return out, stages


def features(kp, found, cnn, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """Design columns (intercept first) and lower bounds of their weights (monotone where >= 0)."""
    f = found.astype(np.float64)
    lk = np.log1p(np.maximum(kp, 0.0))
    cols = {"found": (f, 0.0), "log1p": (f * lk, 0.01), "cnn": (cnn, 0.01)}
    if variant == "log":
        cols["log1p"] = (f * (np.log(np.maximum(kp, 1e-3)) - np.log(1e-3)), 0.01)
    elif variant.startswith("hinge"):
        for knot in (0.5, 1.0, 1.5, 2.0, 3.0):
            cols[f"min{knot}"] = (f * np.minimum(lk, knot), 0.0)
    elif variant == "quadratic":
        cols["log1p^2"] = (f * lk ** 2, -np.inf)  # free sign: may bend down (not monotone)
    x = np.stack([np.ones(len(f))] + [c for c, _ in cols.values()], axis=1)
    return x, np.array([-np.inf] + [lo for _, lo in cols.values()])


def row(name: str, tag: str, score, y, n_true) -> str:
    ap = micro_ap(score, y, n_true)
    r90, _ = recall_at_precision(score, y, n_true, 0.9)
    r95, t95 = recall_at_precision(score, y, n_true, 0.95)
    kept = score >= 0.95
    precision = y[kept].mean() if kept.any() else 1.0
    return (f"| {name} | {tag} | {ap:.3f} | {r90:.3f} | {r95:.3f} ({t95:.3f}) | {precision:.3f} | "
            f"{y[kept].sum() / n_true:.3f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(default_cache_dir() / "bench_find"))
    args = parser.parse_args(argv)
    data, stages = fusion_pairs(Path(args.work).expanduser())
    tables = {s.name: s.calibration for s in stages}
    print("| variant | collection | micro-AP | recall @ P0.9 | best recall @ P0.95 (threshold) | precision @ 0.95 "
          "| recall @ 0.95 |\n|---|---|---|---|---|---|---|")
    for variant in ("log1p (shipped)", "log", "hinge", "quadratic"):
        parts = [features(kp, f, c, variant) for _, kp, f, c, _, _ in data]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([d[4] for d in data]).astype(np.float64)
        w = np.concatenate([np.full(len(d[4]), 1.0 / len(d[4])) for d in data])
        b = fit_logistic(x, y, parts[0][1], sample_weight=w)
        for (tag, *_, yc, n_true), (xc, _) in zip(data, parts):
            print(row(variant, tag, 1.0 / (1.0 + np.exp(-(xc @ b))), yc, n_true))
    for rule in ("max", "noisy_or"):
        for tag, kp, f, c, yc, n_true in data:
            p_kp = np.where(f, tables["keypoints"](kp), 0.0)
            p_cnn = tables["cnn"](c)
            score = np.maximum(p_kp, p_cnn) if rule == "max" else 1 - (1 - p_kp) * (1 - p_cnn)
            print(row(f"{rule} of the stage tables", tag, score, yc, n_true))


if __name__ == "__main__":
    main()
