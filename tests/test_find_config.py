"""How `simbench find` and the runner take their settings: find's composed from conf/find.yaml and the
runner's groups by Hydra, a default method this install can run, and a chosen hash is one run in
hydra.run.dir."""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from simbench.cli import find_main, single_run
from simbench.find import cascade
from simbench.find.pdf import PdfOptions
from simbench.run import CONFIG_DIR


def runner_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def test_runner_groups_choose_the_stages_settings():
    groups = ["detector=orb", "backbone=resnet50", "matcher=exact"]
    cfg, runner = cascade.make_config("cascade", groups), runner_config(groups)
    # find's changes: spread, half the budget on the smoothed picture (equalised, clip limit 3) at full size
    assert cfg.keypoints.extractor == {**runner.detector, "spread": "grid", "coarse_share": 0.5, "coarse_sigma": 2.0,
                                      "coarse_scale": 1.0, "trim_frame": False, "equalise": "coarse",
                                      "equalise_clip": 3.0}
    # find's changes: 192 x 192 input, int8, GeM, the blurred view (cut from the inner box), the region views
    assert cfg.cnn.extractor == {**runner.backbone, "image_size": 192, "runtime": "onnx-int8", "pooling": "gem",
                                 "blurred_view": 1.5, "blurred_inset": 0.08, "regions": 3, "region_size": 0.6,
                                 "trim_frame": False, "upright": False, "grey_view": False}
    assert cfg.keypoints.matcher == cfg.cnn.matcher == cfg.hash.matcher == runner.matcher
    stage, = cascade.build_stages(cascade.make_config("keypoints", groups), calibrations={}, quiet=True)
    assert stage.settings["extractor_params"]["detector"] == "orb"
    assert type(stage.method.matcher).__name__ == "ExactMatcher"
    one = cascade.make_config("cascade", ["matcher@cnn.matcher=lsh", "hash=dhash"])  # one stage's matcher
    assert one.cnn.matcher == one.keypoints.matcher == runner_config(["matcher=lsh"]).matcher
    assert one.hash.matcher == runner.matcher and one.hash.extractor.algorithm == "dhash"


def test_overrides_and_method_keep_their_meaning():
    cfg = cascade.make_config(overrides=["threshold=0.9", "keypoints.extractor.max_features=1000", "link=false",
                                         "pdf.min_side_px=64", "fusion=noisy_or", "method=hash"])
    assert (cfg.threshold, cfg.keypoints.extractor.max_features, cfg.link) == (0.9, 1000, False)
    assert cfg.fusion == "noisy_or"
    assert PdfOptions(**cfg.pdf) == dataclasses.replace(PdfOptions(), min_side_px=64)
    assert cfg.method == "hash" and cascade.make_config("cnn", ["method=hash"]).method == "cnn"  # --method wins


def test_defaults_are_the_calibrated_settings():
    """The composed defaults give the settings keys of the shipped tables, and the fitted fusion."""
    cfg = cascade.make_config("cascade")
    assert (cfg.threshold, cfg.min_score, cfg.link, cfg.link_min_score, cfg.link_score) == (0.93, 0.01, True, 0.5, "product")
    assert PdfOptions(**cfg.pdf) == PdfOptions()  # the PDF options' one home
    stages = cascade.build_stages(cfg, quiet=True)
    assert [s.name for s in stages] == ["keypoints", "cnn", "blobs", "align", "blobs_wide"]
    assert all(s.is_calibrated for s in stages)
    assert cascade.fusion_model(stages, cfg) is not None


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_the_cnn_in_float32_is_calibrated_too(runtime):
    """The CNN in float32 (runtime onnx, or torch as on a GPU) has its own shipped table, copy whitening and fusion
    (those of before the int8 default): not int8's, and not uncalibrated."""
    cfg = cascade.make_config("cascade", [f"cnn.extractor.runtime={runtime}"])
    stages = cascade.build_stages(cfg, quiet=True)
    cnn = next(s for s in stages if s.name == "cnn")
    default = next(s for s in cascade.build_stages(cascade.make_config("cascade"), quiet=True) if s.name == "cnn")
    assert all(s.is_calibrated for s in stages)
    assert cnn.calibration.key != default.calibration.key
    assert cnn.method.copy_whitening.digest != default.method.copy_whitening.digest
    model = cascade.fusion_model(stages, cfg)
    assert model is not None and cnn.calibration.key in model.keys


def test_a_default_find_run_is_calibrated(tmp_path, photos):
    for name in ("astronaut", "coffee"):
        img = Image.fromarray(photos[name])
        img.save(tmp_path / f"{name}.jpg")
        img.resize((img.width // 2, img.height // 2)).save(tmp_path / f"{name}-small.jpg")
    assert find_main([str(tmp_path), "--out", str(tmp_path / "out"), "-q"]) == 0
    with open(tmp_path / "out" / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["calibrated"] for r in rows} == {"yes"}


@pytest.mark.parametrize("bad,said", [("keypoints.extractor.max_featurs=9", "unknown setting 'keypoints.extractor."),
                                      ("nope=1", "unknown setting 'nope'"), ("detector=nope", "Available options"),
                                      ("pdf.min_side_px=big", "could not be converted"),
                                      ("fusion=mean", "unknown fusion")])
def test_a_bad_setting_says_which(bad, said, capsys):
    with pytest.raises(SystemExit):
        find_main(["photos/", "--out", "out", bad])
    assert said in capsys.readouterr().err


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
    assert single_run(["hash=phash", "--cfg", "job"]) == ["hash=phash", "hydra.mode=RUN", "--cfg", "job"]
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
