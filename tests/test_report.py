"""`simbench report`: tables and plots from stored runs (result.json + pairs.npz), nothing re-run.

Most tests write runs by hand (real metrics from simbench.evaluate on made-up scored pairs), so every
number in a table can be checked against its source; one test runs a tiny preset sweep end to end.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simbench import report
from simbench.evaluate import evaluate
from simbench.types import ScoredPairs

ROOT = Path(__file__).resolve().parent.parent
TRANSFORMS = ["crop", "hflip", "rotate90"]


def dataset(n_groups: int = 8):
    """Groups of a reference and one copy per transform, plus distractors: (truth, labels)."""
    labels, truth = [], []
    for g in range(n_groups):
        ref = len(labels)
        labels.append("reference")
        for t in TRANSFORMS:
            truth.append((ref, len(labels)))
            labels.append(t)
    labels += ["distractor"] * 6
    return np.array(truth, dtype=np.int64), labels


def scored_pairs(truth, n_images: int, noise: float, seed: int, miss: str | None = None) -> ScoredPairs:
    """All pairs scored: true pairs high, others low, plus noise; `miss` makes one transform's pairs low."""
    rng = np.random.default_rng(seed)
    a, b = np.triu_indices(n_images, 1)
    true = set(map(tuple, truth))
    is_true = np.array([(x, y) in true for x, y in zip(a, b)])
    score = np.where(is_true, 0.9, 0.3) + rng.normal(0, noise, len(a))
    if miss is not None:
        _, labels = dataset()
        lab = np.array(labels)
        score[is_true & ((lab[a] == miss) | (lab[b] == miss))] = 0.2
    return ScoredPairs(a.astype(np.int64), b.astype(np.int64), np.clip(score, 0, 1))


def write_run(run_dir: Path, name: str, *, noise=0.1, seed=0, miss=None, device="cpu", fallback=False,
              images_per_s=100.0, image_pairs_per_s=1e6, descriptor_comparisons_per_s=None, threshold=0.6,
              matcher="exact", hash_="phash", method="simbench.methods.hashes.HashMethod", gpu=None,
              peak_gpu_mb=None, extra_config=None, save_pairs=True) -> dict:
    """A run directory as the runner writes it: result.json (the contract) and pairs.npz."""
    truth, labels = dataset()
    n = len(labels)
    pairs = scored_pairs(truth, n, noise, seed, miss)
    metrics = evaluate(pairs, truth, labels, threshold)
    config = {"dataset": {"_target_": "simbench.data.synthetic.SyntheticDataset", "n_references": 8,
                          "cache_dir": f"/somewhere/{seed}"},
              "method": {"_target_": method, "threshold": threshold,
                         "extractor": {"algorithm": hash_}, "matcher": {"_target_": matcher}},
              "hash": {"algorithm": hash_}, "matcher": {"_target_": matcher}, "name": name,
              "cache_dir": f"/somewhere/{seed}", "progress": False, **(extra_config or {})}
    result = {
        "name": name, "config": config,
        "dataset": {"name": "synthetic", "n_images": n, "n_true_pairs": len(truth)},
        "metrics": metrics,
        "timing": {"extract_s": n / images_per_s, "match_s": n * (n - 1) / 2 / image_pairs_per_s, "total_s": 1.0,
                   "images_per_s": images_per_s, "image_pairs_per_s": image_pairs_per_s,
                   "descriptor_comparisons_per_s": descriptor_comparisons_per_s},
        "memory": {"peak_rss_mb": 300.0, "peak_gpu_mb": peak_gpu_mb},
        "env": {"device": device, "fallback": fallback, "cpu": "Test CPU", "gpu": gpu, "versions": {},
                "git": "abc"},
        "skipped": [],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(result))
    if save_pairs:
        np.savez_compressed(run_dir / "pairs.npz", a=pairs.a, b=pairs.b, score=pairs.score, truth=truth,
                            labels=np.array(labels, dtype=str))
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def sweep(tmp_path):
    """A multirun folder of three configurations, a single run elsewhere, and submitit's bookkeeping."""
    root = tmp_path / "multirun"
    results = {
        "hash-phash-exact": write_run(root / "0", "hash-phash-exact", noise=0.05, images_per_s=200.0),
        "hash-ahash-exact": write_run(root / "1", "hash-ahash-exact", noise=0.2, seed=1, hash_="ahash",
                                      miss="rotate90", images_per_s=400.0, image_pairs_per_s=2e6),
        "hash-dhash-exact": write_run(root / "2", "hash-dhash-exact", noise=0.3, seed=2, hash_="dhash",
                                      images_per_s=50.0),
    }
    (root / ".submitit" / "123").mkdir(parents=True)
    (root / ".submitit" / "123" / "result.json").write_text("not a run")  # never read
    return root, results


def test_report_writes_every_table_and_plot(sweep, tmp_path):
    root, results = sweep
    out = tmp_path / "report"
    written = report.report([root], out, n_boot=100)
    names = {p.name for v in written.values() for p in v}
    assert {"summary.md", "summary.tex", "summary.csv", "transform_recall.csv", "transform_recall_at_p90.csv",
            "transform_recall.md", "README.md"} <= names
    for stem in ("pr_curves", "accuracy_vs_images_per_s", "accuracy_vs_image_pairs_per_s", "transform_recall",
                 "transform_recall_at_p90"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert "cpu_vs_gpu.md" not in names  # no GPU run, no such table
    assert "accuracy_vs_descriptor_comparisons_per_s.png" not in names  # no keypoint run, no such axis
    for p in (q for v in written.values() for q in v):
        assert p.exists() and p.stat().st_size > 0

    rows = {r["configuration"]: r for r in read_csv(out / "summary.csv")}
    assert set(rows) == set(results)
    for name, res in results.items():
        row = rows[name]
        m = res["metrics"]
        for key in ("uap", "recall_at_p90", "precision", "recall", "f1"):
            assert float(row[key]) == pytest.approx(m[key])
        assert float(row["images_per_s"]) == res["timing"]["images_per_s"]
        assert row["device"] == "cpu" and row["runs"] == "1" and float(row["peak_rss_mb"]) == 300.0
        # bootstrap intervals from pairs.npz: ordered, inside [0, 1], around the estimate
        for key in ("uap", "recall_at_p90"):
            lo, hi, value = float(row[f"{key}_lo"]), float(row[f"{key}_hi"]), float(row[key])
            assert 0.0 <= lo <= value <= hi <= 1.0
    # noisier scores, lower micro-AP
    assert float(rows["hash-phash-exact"]["uap"]) > float(rows["hash-dhash-exact"]["uap"])


def test_markdown_and_latex_tables(sweep, tmp_path):
    root, results = sweep
    report.report([root], tmp_path / "r", n_boot=50, formats=["png"])
    md = (tmp_path / "r" / "summary.md").read_text().splitlines()
    assert md[0].startswith("| configuration | µAP (95% CI) | R@P90 (95% CI) | P | R | F1 | img/s | pairs/s | device")
    assert "peak RSS MB" in md[0] and "peak GPU MB" not in md[0]  # no GPU memory anywhere: no column
    assert len(md) == 2 + len(results)
    phash = next(line for line in md if line.startswith("| hash-phash-exact"))
    uap = results["hash-phash-exact"]["metrics"]["uap"]
    assert f"**{uap:.3f} [" in phash  # the best micro-AP is bold, with its interval
    ahash = next(line for line in md if line.startswith("| hash-ahash-exact"))
    assert "**400**" in ahash and "**2M**" in ahash  # fastest extraction and matching

    tex = (tmp_path / "r" / "summary.tex").read_text()
    for word in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrrrrrlr}", r"\label{tab:simbench}"):
        assert word in tex
    assert r"hash-phash-exact & \textbf{" in tex and r"{\scriptsize [" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(results) and all(line.count("&") == 9 and line.endswith(r"\\") for line in body)
    assert report.latex_escape("a_b & 5% #1") == r"a\_b \& 5\% \#1"


KEYPOINTS = "simbench.methods.keypoints.KeypointMethod"


def test_image_pairs_and_descriptor_comparisons_never_share_a_column_or_axis(tmp_path):
    write_run(tmp_path / "0", "hash-phash-exact", image_pairs_per_s=3e6)
    write_run(tmp_path / "1", "keypoints-brisk-lsh", method=KEYPOINTS, image_pairs_per_s=2e4,
              descriptor_comparisons_per_s=5e8)
    written = report.report([tmp_path], tmp_path / "r", n_boot=0, formats=["png"])
    names = {p.name for p in written["plots"]}
    assert {"accuracy_vs_image_pairs_per_s.png", "accuracy_vs_descriptor_comparisons_per_s.png"} <= names
    rows = {r["configuration"]: r for r in read_csv(tmp_path / "r" / "summary.csv")}
    assert float(rows["hash-phash-exact"]["image_pairs_per_s"]) == 3e6
    assert rows["hash-phash-exact"]["descriptor_comparisons_per_s"] == ""  # not a keypoint method
    assert float(rows["keypoints-brisk-lsh"]["image_pairs_per_s"]) == pytest.approx(2e4)
    assert float(rows["keypoints-brisk-lsh"]["descriptor_comparisons_per_s"]) == 5e8
    assert "| pairs/s | desc. cmp/s |" in (tmp_path / "r" / "summary.md").read_text()


def test_a_re_made_folder_drops_outputs_the_report_no_longer_writes(tmp_path):
    write_run(tmp_path / "runs" / "0", "hash-phash-exact")
    out = tmp_path / "r"
    out.mkdir()
    stale = ["accuracy_vs_comparisons_per_s.png", "accuracy_vs_comparisons_per_s.svg", "cpu_vs_gpu.md",
             "accuracy_vs_descriptor_comparisons_per_s.png", "pr_curves.svg"]
    for name in [*stale, "notes.md"]:
        (out / name).write_text("old")
    written = report.report([tmp_path / "runs"], out, n_boot=0, formats=["png"])
    assert not any((out / name).exists() for name in stale)
    assert (out / "notes.md").exists()  # not the report's: kept
    assert {p.name for p in out.iterdir()} == {p.name for v in written.values() for p in v} | {"notes.md"}


def test_old_result_files_map_comparisons_per_s_by_method(tmp_path):
    """Before the split, timing.comparisons_per_s was descriptor distances for keypoint methods and image
    pairs for the others."""
    old = {"hash-phash-exact": write_run(tmp_path / "0", "hash-phash-exact"),
           "keypoints-brisk-lsh": write_run(tmp_path / "1", "keypoints-brisk-lsh", method=KEYPOINTS)}
    for i, (result, per_s) in enumerate(zip(old.values(), (4e6, 7e8))):
        timing = result["timing"]
        del timing["image_pairs_per_s"], timing["descriptor_comparisons_per_s"]
        timing.update(comparisons_per_s=per_s, match_s=0.5)
        (tmp_path / str(i) / "result.json").write_text(json.dumps(result))
    rows = {r["configuration"]: r for r in report.summarise(report.load_runs([tmp_path]), n_boot=0)}
    assert rows["hash-phash-exact"]["image_pairs_per_s"] == 4e6
    assert rows["hash-phash-exact"]["descriptor_comparisons_per_s"] is None
    n = old["keypoints-brisk-lsh"]["dataset"]["n_images"]
    assert rows["keypoints-brisk-lsh"]["descriptor_comparisons_per_s"] == 7e8
    assert rows["keypoints-brisk-lsh"]["image_pairs_per_s"] == pytest.approx(n * (n - 1) / 2 / 0.5)


def test_runs_are_found_recursively_and_repeats_merge(tmp_path):
    write_run(tmp_path / "sweeps" / "a" / "0", "hash-phash-exact", images_per_s=100.0)
    write_run(tmp_path / "sweeps" / "b" / "0", "hash-phash-exact", images_per_s=300.0)  # the same config again
    write_run(tmp_path / "sweeps" / "b" / "1", "hash-phash-exact", images_per_s=200.0)
    write_run(tmp_path / "single", "hash-dhash-exact", hash_="dhash")
    found = report.find_results([tmp_path / "sweeps", tmp_path / "single" / "result.json"])
    assert len(found) == 4
    rows = report.summarise(report.load_runs([tmp_path / "sweeps", tmp_path / "single"]), n_boot=0)
    by = {r["configuration"]: r for r in rows}
    assert set(by) == {"hash-phash-exact", "hash-dhash-exact"}
    assert by["hash-phash-exact"]["runs"] == 3
    assert by["hash-phash-exact"]["images_per_s"] == 200.0  # the median of 100, 300, 200
    assert by["hash-phash-exact"]["uap_lo"] is None  # n_boot=0: no intervals


def test_configurations_sharing_a_name_are_told_apart(tmp_path):
    write_run(tmp_path / "0", "hash-phash-exact", threshold=0.6)
    write_run(tmp_path / "1", "hash-phash-exact", threshold=0.8)
    labels = sorted(r["configuration"] for r in report.summarise(report.load_runs([tmp_path]), n_boot=0))
    assert labels == ["hash-phash-exact [method.threshold=0.6]", "hash-phash-exact [method.threshold=0.8]"]


def test_cpu_versus_gpu_table(tmp_path):
    root = tmp_path / "m"
    write_run(root / "0", "hash-phash-exact", image_pairs_per_s=2e9)
    write_run(root / "1", "hash-phash-faiss", matcher="faiss", image_pairs_per_s=1e9)
    write_run(root / "2", "hash-phash-gpu", matcher="gpu", device="cuda:0", gpu="NVIDIA H100",
              image_pairs_per_s=1e11, peak_gpu_mb=900.0)
    write_run(root / "3", "hash-dhash-gpu", matcher="gpu", hash_="dhash", fallback=True)  # fell back: no GPU row
    write_run(root / "4", "hash-dhash-exact", hash_="dhash")  # no GPU partner
    written = report.report([root], tmp_path / "r", n_boot=0, formats=["png"])
    assert tmp_path / "r" / "cpu_vs_gpu.tex" in written["tables"]
    rows = read_csv(tmp_path / "r" / "cpu_vs_gpu.csv")
    assert sorted(r["cpu_configuration"] for r in rows) == ["hash-phash-exact", "hash-phash-faiss"]
    assert all(r["gpu_configuration"] == "hash-phash-gpu" and r["gpu"] == "NVIDIA H100" for r in rows)
    speedup = {r["cpu_configuration"]: float(r["image_pairs_speedup"]) for r in rows}
    assert speedup == {"hash-phash-exact": pytest.approx(50.0), "hash-phash-faiss": pytest.approx(100.0)}
    md = (tmp_path / "r" / "cpu_vs_gpu.md").read_text()
    assert "50×" in md and "100×" in md
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "peak GPU MB" in summary and "cpu (fallback)" in summary and "cuda:0" in summary
    assert "## CPU against GPU" in (tmp_path / "r" / "README.md").read_text()


def test_transform_heatmap_data_and_runs_without_pairs(tmp_path):
    write_run(tmp_path / "0", "hash-phash-exact", noise=0.01)
    write_run(tmp_path / "1", "hash-ahash-exact", noise=0.01, hash_="ahash", miss="hflip", save_pairs=False)
    report.report([tmp_path], tmp_path / "r", n_boot=20, formats=["svg"])
    grid = {r["configuration"]: r for r in read_csv(tmp_path / "r" / "transform_recall.csv")}
    assert float(grid["hash-phash-exact"]["hflip"]) == 1.0
    assert float(grid["hash-ahash-exact"]["hflip"]) == 0.0 and float(grid["hash-ahash-exact"]["crop"]) == 1.0
    rows = {r["configuration"]: r for r in read_csv(tmp_path / "r" / "summary.csv")}
    assert rows["hash-ahash-exact"]["uap_lo"] == ""  # no pairs.npz: metrics without intervals
    svg = (tmp_path / "r" / "pr_curves.svg").read_text()
    assert "hash-phash-exact" in svg and "hash-ahash-exact" not in svg  # a curve needs the stored pairs


def test_transform_recall_at_the_method_threshold_and_at_precision_0_9(tmp_path):
    # A threshold far below the scores of false pairs: everything is called, so recall per transform at
    # that threshold is 1 everywhere, while at precision 0.9 the missed transform shows.
    write_run(tmp_path / "0", "hash-ahash-exact", noise=0.01, hash_="ahash", miss="hflip", threshold=0.1)
    report.report([tmp_path], tmp_path / "r", n_boot=0, formats=["svg"])
    at_threshold = read_csv(tmp_path / "r" / "transform_recall.csv")[0]
    at_p90 = read_csv(tmp_path / "r" / "transform_recall_at_p90.csv")[0]
    assert float(at_threshold["hflip"]) == 1.0 and float(at_threshold["crop"]) == 1.0
    assert float(at_p90["hflip"]) == 0.0 and float(at_p90["crop"]) == 1.0
    md = (tmp_path / "r" / "transform_recall.md").read_text()
    assert "at precision 0.9" in md and "at each method's threshold" in md
    assert "| configuration | µAP | R@P90 | P | crop | hflip | rotate90 |" in md
    assert "## Recall per transform" in (tmp_path / "r" / "README.md").read_text()
    assert (tmp_path / "r" / "transform_recall_at_p90.svg").exists()


def test_pareto_front_as_ann_benchmarks():
    x = [0.9, 0.8, 0.5, 0.7, 0.95, None]
    y = [10, 100, 1000, 50, 1, 5]
    # (0.7, 50) is beaten by (0.8, 100); the point with no x is left out
    assert report.pareto_front(x, y) == [2, 1, 0, 4]
    assert report.pareto_front([], []) == []
    # the same accuracy but for the last bits of a float (exact matchers): a tie, the faster one wins
    assert report.pareto_front([0.57140001, 0.5714, 0.3], [5e5, 6e6, 1e8]) == [2, 1]


def test_cli(sweep, tmp_path, monkeypatch, capsys):
    """`simbench report` through the dispatcher in simbench.cli (in process: no interpreter start-up)."""
    from simbench import cli

    root, _ = sweep
    monkeypatch.setattr(sys, "argv", ["simbench", "report", str(root), "--out", str(tmp_path / "o"),
                                      "--n-boot", "20", "--formats", "png"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    assert "files in" in capsys.readouterr().out and (tmp_path / "o" / "pr_curves.png").exists()
    assert not (tmp_path / "o" / "pr_curves.svg").exists()
    assert "simbench report" in (tmp_path / "o" / "README.md").read_text()
    monkeypatch.setattr(sys, "argv", ["simbench", "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 2 and "not a run directory" in capsys.readouterr().err


def test_a_preset_sweep_writes_its_report(tmp_path):
    """One command: a (tiny) experiment preset sweeps, here two jobs at once through the joblib launcher
    preset (conf/hydra/launcher/local_parallel.yaml), then its callback writes tables and plots."""
    env = dict(os.environ, SIMBENCH_CACHE=str(tmp_path / "cache"), HYDRA_FULL_ERROR="1", MPLBACKEND="Agg")
    out = tmp_path / "results" / "hash_families"
    proc = subprocess.run(
        [sys.executable, "-m", "simbench", "+experiment=hash_families", "+experiment/runs=hash_ahash,hash_dhash",
         "hydra/launcher=local_parallel", "dataset.n_references=3", "dataset.n_distractors=4", "progress=false",
         f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.callbacks.report.out={out}",
         "hydra.callbacks.report.n_boot=50", "hydra.callbacks.report.formats=[png]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["configuration"]: r for r in read_csv(out / "summary.csv")}
    assert set(rows) == {"hash-ahash-exact", "hash-dhash-exact"}
    for r in rows.values():
        assert float(r["uap_lo"]) <= float(r["uap"]) <= float(r["uap_hi"])
    assert (out / "pr_curves.png").exists() and (out / "transform_recall.png").exists()
    readme = (out / "README.md").read_text()
    assert "+experiment=hash_families" in readme and "43 images" in readme
