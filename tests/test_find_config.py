"""How `simbench find` and the runner take their settings: a default method this install can run, and a
chosen hash is one run in hydra.run.dir."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from simbench.cli import single_run
from simbench.find import cascade


def test_default_method_is_one_this_install_can_run(monkeypatch, caplog):
    monkeypatch.setattr(cascade, "unavailable", lambda x: "no torch" if getattr(x, "kind", "") == "embedding" else None)
    with caplog.at_level("WARNING", logger="simbench"):
        assert cascade.make_config().method == "keypoints"
    assert "cnn stage unavailable (no torch): using method=keypoints" in caplog.text
    chosen = cascade.make_config("cascade")  # asked for: never a stage quietly dropped
    assert chosen.method == "cascade"
    with pytest.raises(RuntimeError, match="cnn stage cannot run: no torch"):
        cascade.build_stages(chosen, calibrations={}, quiet=True)


def test_a_chosen_hash_is_a_single_run():
    assert single_run(["hash=phash"]) == ["hash=phash", "hydra.mode=RUN"]
    assert single_run([]) == []  # the main job: the hash families compared
    for sweep in (["hash=phash,dhash"], ["-m", "hash=phash"], ["+experiment=matchers", "hash=phash"]):
        assert single_run(sweep) == sweep


def test_single_run_honours_hydra_run_dir(tmp_path, photos):
    (tmp_path / "images").mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(photos[name]).save(tmp_path / "images" / f"{name}.png")
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "simbench", "hash=dhash", "dataset=folder",
                           f"dataset.root={tmp_path / 'images'}", f"hydra.run.dir={run_dir}", "progress=false",
                           f"cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_dir / "result.json").read_text())["dataset"]["n_images"] == 2
    assert not (tmp_path / "multirun").exists()
