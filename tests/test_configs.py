"""Every config file composes and instantiates (lightning-hydra-template's check)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from simbench.run import CONFIG_DIR

GROUPS = ["hash", "detector", "matcher", "dataset", "method"]


def config_files():
    for group in GROUPS:
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize("group,choice", list(config_files()))
def test_every_config_instantiates(group, choice, tmp_path):
    overrides = [f"{group}={choice}", f"cache_dir={tmp_path}"]
    if (group, choice) == ("dataset", "folder"):
        overrides.append(f"dataset.root={tmp_path}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=False)
    node = cfg.method if group == "method" else cfg[group]
    obj = instantiate(node)
    assert obj is not None
    target = node["_target_"].rsplit(".", 1)[1]
    assert type(obj).__name__ == target


def test_hash_configs_cover_the_family():
    names = {p.stem for p in (Path(CONFIG_DIR) / "hash").glob("*.yaml")}
    assert {"ahash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash_haar", "whash_db4",
            "colorhash", "crop_resistant"} <= names


def test_a_component_override_selects_its_method():
    from simbench.cli import implied_method

    assert implied_method(["matcher=lsh", "backbone=resnet50"]) == ["matcher=lsh", "backbone=resnet50", "method=cnn"]
    assert implied_method(["-m", "detector=brisk,orb"])[-1] == "method=keypoints"
    assert implied_method(["method=hash", "backbone=resnet50"]) == ["method=hash", "backbone=resnet50"]
    assert implied_method(["backbone=resnet50", "detector=orb"]) == ["backbone=resnet50", "detector=orb"]
    assert implied_method(["hash=phash"]) == ["hash=phash"]


def test_every_experiment_preset_composes(tmp_path):
    presets = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
    assert {"hash_families", "matchers", "backbones", "keypoints", "paper"} <= set(presets)
    for preset in presets:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
        assert cfg.hydra.mode is not None
