"""A stage's features extracted while matching, for the pictures of the pairs it verifies (simbench.find.on_demand):
the same features, so the same pairs, as when every picture is extracted as the files are read; kept in the index
under their own key; a later run extracts only what it has not."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from simbench.features.keypoints import KeypointExtractor
from simbench.find import cascade
from simbench.find.index import FeatureStore
from simbench.find.items import Item
from simbench.find.on_demand import NOT_EXTRACTED, OnDemandFeatures
from simbench.find.pdf import PdfOptions
from simbench.find.pipeline import feature_key, find, proposed_pairs
from simbench.find.yearbook import SCHOOL_STYLE, build_yearbook
from simbench.types import ScoredPairs


def _counting(monkeypatch) -> list:
    """The pictures each KeypointExtractor.extract call is given, as (detector, number of pictures)."""
    calls = []
    extract = KeypointExtractor.extract
    monkeypatch.setattr(KeypointExtractor, "extract",
                        lambda self, paths, **kw: calls.append((self.detector, len(paths))) or extract(self, paths, **kw))
    return calls


def _pictures(folder, n: int = 4) -> list:
    """n drawings of random strokes and boxes, each its own, as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        im = Image.new("RGB", (240, 180), "white")
        draw = ImageDraw.Draw(im)
        for _ in range(40):
            x, y = rng.integers(0, 230, 2)
            draw.rectangle([int(x), int(y), int(x + rng.integers(4, 30)), int(y + rng.integers(4, 30))],
                           outline=tuple(int(v) for v in rng.integers(0, 200, 3)), width=2)
        paths.append(folder / f"p{k}.png")
        im.save(paths[-1])
    return paths


def _items(paths) -> list[Item]:
    return [Item(None, str(p), str(p), None, None, f"file:{k}", b"", f"{k:064x}:0") for k, p in enumerate(paths)]


def test_load_extracts_only_what_the_index_lacks_and_equals_extracting_them(tmp_path, monkeypatch):
    paths = _pictures(tmp_path / "pictures")
    extractor = KeypointExtractor("sift", max_features=200, max_size=160)
    items = _items(paths)
    store = FeatureStore(tmp_path / "index")
    handle = OnDemandFeatures(extractor, items, [it.key.split(":")[0] for it in items], [0] * len(items), store,
                              "keypoints-sift", "key", {3: "blank"}, PdfOptions())
    calls = _counting(monkeypatch)
    feats, rows, reasons = handle.load([2, 0, 2])
    assert rows.tolist() == [0, 2] and calls == [("sift", 2)] and set(reasons) == {3}
    oracle = extractor.extract([paths[0], paths[2]]).features
    assert np.array_equal(feats.descriptors, oracle.descriptors) and np.array_equal(feats.points, oracle.points)
    assert np.array_equal(feats.offsets, oracle.offsets)
    # Item 1 was never asked for: its file's record says so, and another run's load extracts it alone.
    again = OnDemandFeatures(extractor, items, handle.digests, handle.positions, FeatureStore(tmp_path / "index"),
                             "keypoints-sift", "key", {3: "blank"}, PdfOptions())
    assert again.store.get("keypoints-sift", "key", handle.digests[1], "keypoints") is None
    calls.clear()
    feats2, rows2, _ = again.load([0, 1, 2, 3])
    assert rows2.tolist() == [0, 1, 2] and calls == [("sift", 1)] and again.extracted == 1
    alone = extractor.extract([paths[1]]).features
    one = feats2.descriptors[feats2.offsets[1]:feats2.offsets[2]]
    assert np.array_equal(one, alone.descriptors)
    assert np.array_equal(feats2.descriptors[:feats2.offsets[1]], oracle.descriptors[:oracle.offsets[1]])
    # A picture gone since the files were read is a reason, never a crash.
    paths[3].unlink()
    gone = OnDemandFeatures(extractor, items, handle.digests, handle.positions, store, "keypoints-sift", "key2", {},
                            PdfOptions())
    _, rows3, reasons3 = gone.load([0, 3])
    assert rows3.tolist() == [0] and "gone" in reasons3[3]


def test_a_file_record_keeps_unasked_images_as_not_extracted(tmp_path):
    """A PDF-like file of three images, one asked for: its record holds three entries, two NOT_EXTRACTED."""
    paths = _pictures(tmp_path / "pictures", 1)
    items = [Item(None, f"{paths[0]}#{k}", str(paths[0]), None, None, f"d{k}", b"", f"{1:064x}:{k}") for k in range(3)]
    store = FeatureStore()
    handle = OnDemandFeatures(KeypointExtractor("sift", max_features=100, max_size=160), items, [f"{1:064x}"] * 3,
                              [0, 1, 2], store, "keypoints-sift", "key", {}, PdfOptions())
    handle.load([1])
    record = store.get("keypoints-sift", "key", f"{1:064x}", "keypoints")
    assert len(record) == 3 and record[0] == record[2] == NOT_EXTRACTED and isinstance(record[1], dict)


@pytest.mark.parametrize("floor, expected", [(None, {(0, 1), (0, 2), (1, 2)}), (0.5, {(0, 1), (1, 2)})])
def test_proposals_below_the_floor_are_not_looked_at(floor, expected):
    cfg = cascade.make_config("cascade", [f"blobs_wide.method.proposal_min_score={floor if floor else 'null'}"])
    stage = {s.name: s for s in cascade.build_stages(cfg, calibrations={}, quiet=True)}["blobs_wide"]
    cnn = ScoredPairs(np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.6, 0.4, 0.5]))
    none = ScoredPairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    a, b = proposed_pairs(stage, none, [cnn])
    assert set(zip(a.tolist(), b.tolist())) == expected
    assert ("proposal_min_score" in stage.settings["method_params"]) == (floor is not None)


def test_only_a_keypoint_stage_of_proposals_can_be_on_demand():
    for override in ("cnn.on_demand=true", "keypoints.on_demand=true"):
        with pytest.raises(Exception, match="on_demand"):
            cascade.build_stages(cascade.make_config("cascade", [f"+{override}"]), calibrations={}, quiet=True)
    stages = cascade.build_stages(cascade.make_config("cascade", ["blobs_wide.on_demand=true"]), calibrations={},
                                  quiet=True)
    by_name = {s.name: s for s in stages}
    wide, blobs = by_name["blobs_wide"], by_name["blobs"]
    # The same features as the blobs stage's, but partial records: never under the blobs stage's key.
    assert wide.on_demand and feature_key(wide) != feature_key(blobs)
    assert cascade.settings_key(wide.settings) == cascade.settings_key(
        {s.name: s for s in cascade.build_stages(cascade.make_config("cascade"), calibrations={}, quiet=True)}
        ["blobs_wide"].settings)  # on demand or not, the same raw signal: the same table


def test_on_demand_finds_the_same_pairs_in_pdfs_and_a_rerun_extracts_nothing(tmp_path, monkeypatch):
    """Yearbook PDFs (placements rendered again for the wide look) and image files: pairs.csv is the same byte for
    byte with the wide look's features extracted as files are read and on demand, and a re-run on the index
    extracts nothing."""
    build_yearbook(tmp_path / "in", n_pdfs=2, n_photos=5, n_single=2, seed=4,
                   **{**SCHOOL_STYLE, "recolour": 0.0, "low_texture": 1.0})
    _pictures(tmp_path / "in" / "drawings", 3)
    shutil.copy(tmp_path / "in" / "drawings" / "p0.png", tmp_path / "in" / "drawings" / "copy.png")
    # A floor that leaves some pictures out, and floors low enough that the wide look keeps some pairs.
    wide = ["blobs_wide.method.proposal_min_score=0.6", "blobs_wide.method.min_coverage=0",
            "blobs_wide.method.min_inliers=4"]
    plain = find([tmp_path / "in"], tmp_path / "plain", cascade.make_config("cascade", wide), progress=False)
    calls = _counting(monkeypatch)
    cfg = cascade.make_config("cascade", wide + ["blobs_wide.on_demand=true"])
    lazy = find([tmp_path / "in"], tmp_path / "lazy", cfg, index=tmp_path / "index", progress=False)
    asked = [n for d, n in calls if d == "sift"]
    assert len(asked) == 2 and 0 < asked[1] < len(lazy.items)  # blobs for all, then the wide look's pictures
    assert len(lazy.raw["blobs_wide"]) and np.array_equal(lazy.raw["blobs_wide"].score, plain.raw["blobs_wide"].score)
    assert (tmp_path / "lazy" / "pairs.csv").read_bytes() == (tmp_path / "plain" / "pairs.csv").read_bytes()
    calls.clear()
    again = find([tmp_path / "in"], tmp_path / "again", cfg, index=tmp_path / "index", progress=False)
    assert calls == [] and again.n_new_files == 0
    assert (tmp_path / "again" / "pairs.csv").read_bytes() == (tmp_path / "plain" / "pairs.csv").read_bytes()

