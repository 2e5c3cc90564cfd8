"""Experiment presets and sweeps beyond one process: how the presets compose (their sweep replaces the
default `hash` sweep of method/hash.yaml), the launcher presets, a real sweep through submitit's local
executor (the cluster code path), and the sbatch script the SLURM preset would submit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from simbench.run import CONFIG_DIR

CONF = Path(CONFIG_DIR)
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
RUNS = sorted(p.stem for p in (CONF / "experiment" / "runs").glob("*.yaml"))
TINY = ["dataset.n_references=3", "dataset.n_distractors=4", "progress=false"]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep_jobs(overrides) -> list[list[str]]:
    """The jobs Hydra's basic sweeper would launch for these command-line overrides."""
    cfg = _compose([o for o in overrides if "," not in o])  # compose() takes no sweeps
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()] + list(overrides)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(params), None)
    return batch


def run_names(jobs) -> set[str]:
    return {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("+experiment/runs=")}


def test_presets_exist():
    assert {"hash_families", "matchers", "backbones", "keypoints", "paper"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_replaces_the_default_sweep(preset):
    cfg = _compose([f"+experiment={preset}"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    # only the preset's own parameter: method/hash.yaml's `hash: ahash,phash,...` is gone
    assert list(cfg.hydra.sweeper.params) == ["+experiment/runs"]
    assert cfg.hydra.callbacks.report._target_ == "simbench.report.ReportCallback"
    assert "summary" in cfg.hydra.callbacks  # the runner's own callback is kept


def test_without_a_preset_the_default_hash_sweep_stays():
    assert "hash" in _compose([]).hydra.sweeper.params


def test_presets_select_their_runs():
    hashes = {"ahash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash_haar", "whash_db4", "colorhash",
              "crop_resistant"}
    assert run_names(sweep_jobs(["+experiment=hash_families"])) == {f"hash_{h}" for h in hashes}
    matchers = run_names(sweep_jobs(["+experiment=matchers"]))
    assert matchers == {"hash_phash", "cnn_efficientnet_lite0"} | {
        f"match_{f}_{m}" for f in ("phash", "cnn_efficientnet_lite0") for m in ("faiss", "lsh", "gpu")}
    assert run_names(sweep_jobs(["+experiment=backbones"])) == {r for r in RUNS if r.startswith("cnn_")}
    # keypoints against the main hashes; SIFT's all-pairs ratio test is left to the paper preset
    assert run_names(sweep_jobs(["+experiment=keypoints"])) == {
        "kp_brisk", "kp_orb", "kp_akaze", "kp_brisk_verified", "kp_brisk_no_mirror", "kp_brisk_opencv"} | {
        f"hash_{h}" for h in ("ahash", "phash", "dhash", "whash_haar", "colorhash", "crop_resistant")}
    # the paper preset runs every configuration, once
    paper = sweep_jobs(["+experiment=paper"])
    assert run_names(paper) == set(RUNS) and len(paper) == len(RUNS)
    # a command-line choice of runs replaces the preset's (how the tests keep sweeps tiny)
    assert run_names(sweep_jobs(["+experiment=paper", "+experiment/runs=hash_dhash,cnn_resnet18"])) == {
        "hash_dhash", "cnn_resnet18"}


def _choices(name: str) -> dict:
    """What a runs file's name promises: method, feature choice and matcher."""
    family, rest = name.split("_", 1)
    if name == "hash_crop_resistant":  # a set of hashes per image: matched as a bag, like keypoints
        return {"method": "keypoints", "hash": "crop_resistant", "matcher": "exact"}
    if family == "hash":
        return {"method": "hash", "hash": rest, "matcher": "exact"}
    if family == "cnn":
        return {"method": "cnn", "backbone": rest, "matcher": "exact"}
    if family == "match":
        feature, matcher = rest.rsplit("_", 1)
        if feature.startswith("cnn_"):
            return {"method": "cnn", "backbone": feature[4:], "matcher": matcher}
        return {"method": "hash", "hash": feature, "matcher": matcher}
    if family == "kp":
        return {"method": "keypoints", "detector": rest.split("_")[0], "matcher": "exact" if rest == "sift" else "lsh"}
    raise AssertionError(f"unknown runs family in {name}")


@pytest.mark.parametrize("name", RUNS)
def test_every_run_of_the_paper_composes_as_named(name, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    cfg = _compose(["+experiment=paper", f"+experiment/runs={name}", f"cache_dir={tmp_path}"])
    choices = cfg.hydra.runtime.choices
    for group, option in _choices(name).items():
        assert choices[group] == option, (group, choices[group])
    HydraConfig.instance().set_config(cfg)  # the run name interpolates hydra:runtime.choices
    assert isinstance(cfg.name, str) and cfg.name  # resolves
    if choices["method"] == "cnn":  # instantiating means importing torch (seconds): tests/test_cnn.py does
        assert cfg.method.extractor._target_.endswith("CnnExtractor")
        return
    method = instantiate(cfg.method)  # no images are read
    assert method.threshold is not None


def test_launcher_presets_compose():
    slurm = _compose(["hydra/launcher=slurm", "+experiment=paper"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    for key in ("partition", "timeout_min", "gpus_per_node", "mem_gb", "cpus_per_task", "array_parallelism"):
        assert key in slurm
    assert slurm.timeout_min > 0 and slurm.mem_gb > 0
    local = _compose(["hydra/launcher=local_parallel"]).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2
    cluster_local = _compose(["hydra/launcher=cluster_local"]).hydra.launcher
    assert cluster_local._target_.endswith("submitit_launcher.LocalLauncher")


def _simbench(args, cwd: Path, env_extra=None, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, SIMBENCH_CACHE=str(cwd / "cache"), HYDRA_FULL_ERROR="1", **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "simbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_a_small_sweep_through_the_submitit_local_executor(tmp_path):
    """Two jobs, each pickled by submitit and run in its own process, results gathered from files."""
    proc = _simbench(["-m", "hash=ahash,dhash", "hydra/launcher=cluster_local", *TINY,
                      f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    results = [json.loads((tmp_path / "sweep" / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert sorted(r["name"] for r in results) == ["hash-ahash-exact", "hash-dhash-exact"]
    assert all(r["metrics"]["uap"] > 0 and r["dataset"]["n_images"] == 43 for r in results)
    logs = list((tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # one submitit job folder per configuration
    assert "2 runs" in proc.stdout


def test_the_slurm_preset_submits_its_cluster_settings(tmp_path):
    """No cluster here: fake `srun` (submitit's check for SLURM) and `sbatch` (records the script)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_RECORD"\necho "no cluster here" >&2\nexit 1\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    record = tmp_path / "job.sbatch"
    proc = _simbench(["+experiment=hash_families", "+experiment/runs=hash_ahash,hash_dhash", "hydra/launcher=slurm",
                      "hydra.launcher.partition=gpu-long", "hydra.launcher.timeout_min=45", "hydra.launcher.mem_gb=16", "hydra.launcher.gpus_per_node=2",
                      "hydra.launcher.setup=[module load cuda]", f"hydra.sweep.dir={tmp_path}/sweep", *TINY],
                     cwd=tmp_path, check=False,
                     env_extra={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_RECORD": str(record)})
    assert proc.returncode != 0 and "no cluster here" in proc.stdout + proc.stderr
    script = record.read_text()
    for line in ("#SBATCH --partition=gpu-long", "#SBATCH --time=45", "#SBATCH --mem=16GB",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --job-name=simbench",
                 "#SBATCH --array=0-1%", "module load cuda", "submitit.core._submit"):
        assert line in script, line


def test_a_preset_reports_its_sweep_with_the_command_as_typed(tmp_path):
    """The report callback writes the tables and a README whose command can be pasted back into a shell,
    even when an override holds an interpolation (it cannot be resolved once the sweep is over)."""
    out = tmp_path / "report"
    name = "name=tiny-${hydra:runtime.choices.hash}"
    _simbench(["+experiment=hash_families", "+experiment/runs=hash_ahash", name, "hash.workers=1", *TINY,
               f"hydra.sweep.dir={tmp_path}/sweep", f"hydra.callbacks.report.out={out}"], cwd=tmp_path)
    readme = (out / "README.md").read_text()
    assert "'name=tiny-${hydra:runtime.choices.hash}'" in readme
    assert "| tiny-ahash |" in (out / "summary.md").read_text()
