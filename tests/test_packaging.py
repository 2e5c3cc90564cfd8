"""The wheel works outside the checkout: built, installed into a fresh virtual environment (no network:
dependencies come from this environment's site-packages), and run from an empty folder, so that configs,
CUDA sources and calibration tables are found as package data, never next to the checkout."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: What the build reads (copied, so that no stale build/ of the checkout reaches the wheel).
BUILD_INPUTS = ["pyproject.toml", "setup.py", "README.md", "simbench", "conf", "kernels"]
#: Package data the installed code needs.
DATA = ["simbench/conf/config.yaml", "simbench/conf/find.yaml", "simbench/conf/detector/brisk.yaml",
        "simbench/kernels/hamming.cu", "simbench/find/calibration.json", "simbench/methods/cnn_whitening.npz"]

pytestmark = pytest.mark.slow


def run(*cmd, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding the wheel, an empty working folder, its environment variables)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work / "dist", ".",
        cwd=src)
    wheel = next((work / "dist").glob("simbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [d for d in DATA if d not in names], f"package data missing from {wheel.name}"
    assert not [n for n in names if n.startswith(("conf/", "kernels/", "tests/"))]

    env_dir = work / "venv"  # outside the checkout; this environment's packages, not its simbench
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "-q", wheel, cwd=work)
    cwd = work / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIMBENCH_KERNELS")}
    env.update(SIMBENCH_CACHE=str(work / "cache"), PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")
    # The venv's copy wins over this checkout's editable install (whose finder comes after the venv's path).
    where = run(python, "-c", "import simbench, sys; print(simbench.__file__); print(sys.path)", cwd=cwd, env=env)
    assert Path(where.stdout.splitlines()[0]).is_relative_to(env_dir), where.stdout
    assert str(ROOT) not in where.stdout.splitlines()[1]
    return python, cwd, env


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos):
    """Three photos, each with a resized copy, one folder per duplicate group (the folder dataset's truth)."""
    root = tmp_path_factory.mktemp("images")
    for name in ("astronaut", "coffee", "rocket"):
        (root / name).mkdir()
        img = Image.fromarray(photos[name])
        img.save(root / name / "a.jpg", quality=90)
        img.resize((img.width * 3 // 5, img.height * 3 // 5)).save(root / name / "b.jpg", quality=80)
    return root


def test_installed_package_data_is_the_wheels(installed):
    python, cwd, env = installed
    out = run(python, "-c", "from simbench.run import CONFIG_DIR; from simbench.match import gpu; "
                            "from simbench.find.calibration import CALIBRATION_FILE, load_calibrations; "
                            "print(CONFIG_DIR, gpu.KERNEL_FILE, CALIBRATION_FILE, len(gpu.kernel_source()), "
                            "len(load_calibrations()))", cwd=cwd, env=env).stdout.split()
    prefix = str(Path(python).parent.parent)
    assert all(p.startswith(prefix) for p in out[:3]), out
    from simbench.find.calibration import load_calibrations

    assert int(out[3]) > 0 and int(out[4]) == len(load_calibrations()) > 0


def test_runner_runs_a_single_hash_from_anywhere(installed, images):
    python, cwd, env = installed
    run_dir = cwd / "phash-run"
    run(python, "-m", "simbench", "hash=phash", "dataset=folder", f"dataset.root={images}", "progress=false",
        f"hydra.run.dir={run_dir}", cwd=cwd, env=env)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["dataset"]["n_images"] == 6 and result["dataset"]["n_true_pairs"] == 3
    assert result["metrics"]["recall"] > 0


def test_gpu_matcher_falls_back_to_the_cpu_and_says_so(installed, images):
    python, cwd, env = installed
    run_dir = cwd / "gpu-run"
    done = run(python, "-m", "simbench", "hash=phash", "matcher=gpu", "dataset=folder", f"dataset.root={images}",
               "progress=false", f"hydra.run.dir={run_dir}", cwd=cwd, env=env)
    result = json.loads((run_dir / "result.json").read_text())
    from simbench.match.gpu import cuda_device_status

    has_gpu = cuda_device_status()[0]
    assert result["env"]["fallback"] is (not has_gpu)
    assert has_gpu or "env.fallback = true" in done.stdout


def test_find_uses_the_shipped_calibration(installed, images):
    python, cwd, env = installed
    out = cwd / "review"
    done = run(Path(python).parent / "simbench", "find", images, "--out", out, "--method", "keypoints", "-q",
               cwd=cwd, env=env)
    with open(out / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Calibrated exactly when the checkout's own stage is (the shipped table was found).
    from simbench.find import cascade

    calibrated = cascade.build_stages(cascade.make_config("keypoints"), quiet=True)[0].is_calibrated
    assert ("no calibration table" in done.stderr) is not calibrated, done.stderr
    assert {r["calibrated"] for r in rows} == {"yes" if calibrated else "no"}
    found = {frozenset((Path(r["a"]).parent.name, Path(r["b"]).parent.name)) for r in rows
             if float(r["score"]) >= 0.5}
    assert {frozenset((n, n)) for n in ("astronaut", "coffee", "rocket")} <= found
    assert (out / "report.html").is_file()
