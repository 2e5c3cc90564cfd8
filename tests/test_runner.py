"""The Hydra runner end to end on a tiny synthetic set: result.json contract, sweeps, caching."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["dataset.n_references=3", "dataset.n_distractors=4", "progress=false"]


def simbench(*args, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SIMBENCH_CACHE=str(cache), HYDRA_FULL_ERROR="1")
    proc = subprocess.run([sys.executable, "-m", "simbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def check_result(result: dict) -> None:
    assert set(result) >= {"name", "config", "dataset", "metrics", "timing", "memory", "env", "skipped"}
    assert result["dataset"]["n_images"] == 3 + 3 * 12 + 4
    assert result["dataset"]["n_true_pairs"] == 3 * (13 * 12 // 2)
    m = result["metrics"]
    for key in ("uap", "recall_at_p90", "threshold_at_p90", "precision", "recall", "f1", "threshold"):
        assert key in m
    assert 0.0 <= m["uap"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
    assert set(m["per_transform_recall"]) >= {"crop", "hflip", "jpeg_quality", "rotate90"}
    t = result["timing"]
    assert t["extract_s"] > 0 and t["images_per_s"] > 0 and t["match_s"] >= 0
    assert result["memory"]["peak_rss_mb"] > 10
    env = result["env"]
    assert env["device"] == "cpu" and env["fallback"] is False and env["cpu"] and "numpy" in env["versions"]


def test_single_run_writes_the_result_contract(tmp_path):
    # One value per group is a single run: it writes into hydra.run.dir, not a sweep folder.
    proc = simbench("hash=dhash", *TINY, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, cache=tmp_path / "c")
    assert not (tmp_path / "multirun").exists()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    check_result(result)
    assert result["name"] == "hash-dhash-exact"
    assert result["config"]["method"]["extractor"]["algorithm"] == "dhash"
    assert "µAP" in proc.stdout and "hash-dhash-exact" in proc.stdout
    assert (tmp_path / "run" / "pairs.npz").exists()


def test_a_verifying_keypoint_run_records_its_counts_but_not_its_correspondences(tmp_path):
    """KeypointMethod hands its verified pairs' correspondences on (for find's evidence); result.json keeps
    the method's plain numbers only."""
    simbench("method=keypoints", "method.verify=true", *TINY, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
             cache=tmp_path / "c")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    check_result(result)
    stats = result["method_stats"]
    assert stats["verified"] > 0 and stats["descriptor_pairs"] > 0 and "correspondences" not in stats


def test_sweep_runs_every_combination_and_matchers_agree(tmp_path):
    proc = simbench("-m", "hash=ahash,phash", "matcher=exact,faiss,lsh", *TINY, f"hydra.sweep.dir={tmp_path}/s",
                    cwd=tmp_path, cache=tmp_path / "c")
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "s").glob("*/result.json"))]
    assert sorted(r["name"] for r in results) == sorted(
        f"hash-{h}-{m}" for h in ("ahash", "phash") for m in ("exact", "faiss", "lsh"))
    for r in results:
        check_result(r)
    # Same features, exact matchers: identical metrics whatever the matcher.
    by_hash = {}
    for r in results:
        by_hash.setdefault(r["config"]["method"]["extractor"]["algorithm"], []).append(r["metrics"]["uap"])
    for uaps in by_hash.values():
        assert max(uaps) == pytest.approx(min(uaps))
    # Features were extracted once per hash and then read from the cache.
    assert sum(not r["timing"]["extract_cached"] for r in results) == 2
    assert "6 runs" in proc.stdout  # the summary table of the sweep


def test_gpu_matcher_without_gpu_is_labelled_fallback(tmp_path):
    simbench("hash=ahash", "matcher=gpu", *TINY, f"hydra.run.dir={tmp_path}/r", cwd=tmp_path, cache=tmp_path / "c")
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        has_gpu = False
    if has_gpu:
        assert result["env"]["device"] == "cuda:0" and result["env"]["fallback"] is False
    else:
        assert result["env"]["device"] == "cpu" and result["env"]["fallback"] is True


def test_bad_files_in_a_folder_are_skipped_with_reasons(tmp_path, photos):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "g1").mkdir(parents=True)
    (root / "g2").mkdir()
    Image.fromarray(photos["astronaut"]).save(root / "g1" / "a.jpg")
    Image.fromarray(photos["astronaut"]).resize((256, 256)).save(root / "g1" / "b.png")
    Image.fromarray(photos["coffee"]).save(root / "g2" / "c.jpg")
    (root / "g2" / "empty.jpg").write_bytes(b"")
    (root / "g2" / "notes.txt").write_text("not an image")
    (root / "g2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    simbench("hash=phash", "dataset=folder", f"dataset.root={root}", "progress=false",
             f"hydra.run.dir={tmp_path}/r", cwd=tmp_path, cache=tmp_path / "c")
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"empty.jpg", "notes.txt", "broken.png"}
    assert all(reasons.values())
    # g2 lists c.jpg, empty.jpg and broken.png as one group: 1 + 3 true pairs, of which only g1's has two
    # readable images; the others cannot be found by any method and are left out of the metrics.
    assert result["dataset"]["n_true_pairs"] == 4
    assert result["dataset"]["n_true_pairs_evaluated"] == 1
    assert result["metrics"]["recall"] == 1.0
