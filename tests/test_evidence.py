"""Why pairs pair (simbench.find.evidence): each record checked against a plain computation of the same thing.

- keypoints: the matches of a pair verified alone are the inliers the stage verified in the whole run;
  on a photo pasted into another at a known place, every matched point of the copy lies in that place;
- cnn: ranks against a full argsort of every cosine;
- linked: the chain's scores multiply to the linked score, and its pairs are direct ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simbench.find import cascade, evidence, outputs
from simbench.find.cascade import FusedPairs
from simbench.find.pipeline import find
from simbench.distributed.keypoints import take_images
from simbench.methods.keypoints import between_images

#: Where the pasted photo sits in the larger picture (x0, y0, x1, y1 in its pixels).
PASTED = (300, 120, 556, 376)


def pasted_collection(folder: Path, photos: dict) -> dict[str, Path]:
    """photo.jpg (a 256 px photo), pasted.jpg (that photo pasted at PASTED into another photo, 640x480),
    and an unrelated photo."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(photos["astronaut"]).resize((256, 256), Image.Resampling.LANCZOS)
    background = Image.fromarray(photos["coffee"]).resize((640, 480), Image.Resampling.LANCZOS)
    background.paste(photo, PASTED[:2])
    files = {"photo": folder / "photo.jpg", "pasted": folder / "pasted.jpg", "other": folder / "other.jpg"}
    photo.save(files["photo"], quality=92)
    background.save(files["pasted"], quality=92)
    Image.fromarray(photos["camera"]).save(files["other"], quality=92)
    return files


@pytest.fixture(scope="module")
def pasted_run(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("pasted")
    files = pasted_collection(root / "in", photos)
    cfg = cascade.make_config("keypoints", ["threshold=0.5"])
    result = find([root / "in"], root / "out", cfg, progress=False)
    return files, result, root / "out", cfg


def item_of(result, path: Path) -> int:
    return next(k for k, item in enumerate(result.items) if Path(item.display).name == path.name)


def test_matched_points_of_a_pasted_photo_lie_where_it_was_pasted(pasted_run):
    files, result, _, _ = pasted_run
    a, b = sorted((item_of(result, files["photo"]), item_of(result, files["pasted"])))
    record = result.evidence[a, b]["keypoints"]
    side = "b" if Path(result.items[b].display).name == "pasted.jpg" else "a"
    points = np.array(record[f"points_{side}"])
    assert record["inliers"] >= 20 and 10 <= len(points) <= evidence.MAX_MATCHES
    x0, y0, x1, y1 = PASTED
    inside = (points[:, 0] >= x0 - 2) & (points[:, 0] <= x1 + 2) & (points[:, 1] >= y0 - 2) & (points[:, 1] <= y1 + 2)
    assert inside.all(), points[~inside]
    bx0, by0, bx1, by1 = record[f"box_{side}"]
    assert x0 - 2 <= bx0 < bx1 <= x1 + 2 and y0 - 2 <= by0 < by1 <= y1 + 2
    assert (bx1 - bx0) * (by1 - by0) > 0.4 * (x1 - x0) * (y1 - y0)  # the region, not a corner (<= 1/4) of it
    assert record[f"size_{side}"] == [640, 480]
    # The copy's matched points are where the same content is in the photo: the paste is a translation.
    other = np.array(record["points_a" if side == "b" else "points_b"])
    assert np.abs(points - other - np.array(PASTED[:2])).max() < 3


def test_pair_evidence_is_what_the_stage_verified_in_the_run(pasted_run):
    """The oracle: the keypoint stage's own verification of the pair among all images of the run."""
    files, result, _, cfg = pasted_run
    stage = cascade.build_stages(cfg, quiet=True)[0]
    from simbench.find.pipeline import collect

    collected = collect([files["photo"].parent], [stage], cfg, None, files["photo"].parent.parent, False)
    feats, rows, _ = collected.features[stage.name]
    a, b = sorted((item_of(result, files["photo"]), item_of(result, files["pasted"])))
    ra, rb = int(np.flatnonzero(rows == a)[0]), int(np.flatnonzero(rows == b)[0])
    matches = between_images(stage.method.descriptor_pairs(feats)[0], feats.owners)
    ver = stage.method.verify_candidates(feats, matches, np.array([ra]), np.array([rb]), stage.extractor.max_size)
    expected_a, expected_b = feats.points[ver["ra"]], feats.points[ver["rb"]]
    record = evidence.keypoint_evidence(feats, ra, rb, stage.method, max_matches=10_000)
    assert record["inliers"] == int(ver["inliers"][0]) and record["flipped"] == bool(ver["flipped"][0])
    np.testing.assert_allclose(record["points_a"], expected_a, atol=0.051)
    np.testing.assert_allclose(record["points_b"], expected_b, atol=0.051)
    assert record["box_a"] == evidence._box(expected_a.astype(np.float64))
    # Subsampled: MAX_MATCHES of those very pairs.
    few = evidence.keypoint_evidence(feats, ra, rb, stage.method)
    assert len(few["points_a"]) == min(evidence.MAX_MATCHES, len(expected_a))
    full = {tuple(p + q) for p, q in zip(record["points_a"], record["points_b"])}
    assert all(tuple(p + q) in full for p, q in zip(few["points_a"], few["points_b"]))


def test_the_runs_correspondences_are_each_pair_verified_alone(pasted_run):
    """The oracle of the records read from a run (`Correspondences`): verify_candidates of each pair on its
    own, among all the run's features; a pair the run did not keep has none."""
    from simbench.find.pipeline import collect

    files, result, _, cfg = pasted_run
    stage = cascade.build_stages(cfg, quiet=True)[0]
    collected = collect([files["photo"].parent], [stage], cfg, None, files["photo"].parent.parent, False)
    feats = collected.features[stage.name][0]
    found = stage.method.score_pairs(feats)
    known = found.extra["correspondences"]
    matches = between_images(stage.method.descriptor_pairs(feats)[0], feats.owners)
    assert len(found) >= 1
    for a, b in zip(found.a.tolist(), found.b.tolist()):
        alone = stage.method.verify_candidates(feats, matches, np.array([a]), np.array([b]), stage.extractor.max_size)
        got = known.get(feats, a, b)
        assert got["inliers"][0] >= stage.method.min_inliers
        for key in ("inliers", "flipped", "ra", "rb"):
            np.testing.assert_array_equal(got[key], alone[key])
    kept = set(zip(found.a.tolist(), found.b.tolist()))
    others = [(a, b) for a in range(len(feats)) for b in range(a + 1, len(feats)) if (a, b) not in kept]
    assert others and all(known.get(feats, a, b) is None for a, b in others)
    # Rows of other features (a cluster's subset of the shown images) are not looked up.
    a, b = int(found.a[0]), int(found.b[0])
    assert known.get(take_images(feats, np.arange(len(feats))), a, b) is None


def test_keypoint_records_over_threads_are_those_of_one_thread(pasted_run, monkeypatch):
    """pair_evidence verifies the shown pairs over threads (simbench.threads): the same records as one."""
    import simbench.threads
    from simbench.find.pipeline import collect

    files, result, _, cfg = pasted_run
    stages = cascade.build_stages(cfg, quiet=True)
    collected = collect([files["photo"].parent], stages, cfg, None, files["photo"].parent.parent, False)
    got = {}
    for cores in (1, 4):
        monkeypatch.setattr(simbench.threads, "available_cores", lambda cores=cores: cores)
        got[cores] = evidence.pair_evidence(result.pairs, stages, collected.features)
    # The run's records are read from its correspondences (raw=...), these are verified again: the same.
    assert got[1] == got[4] == result.evidence and sum("keypoints" in r for r in got[1].values()) >= 1
    assert "correspondences" not in result.raw["keypoints"].extra  # read, then let go with the features


def test_evidence_is_stored_compactly_and_read_back(pasted_run):
    _, result, out, _ = pasted_run
    stored = outputs.read_pair_evidence(out / "evidence.npz")
    assert stored == {k: v for k, v in result.evidence.items()} and stored
    assert set(stored) == {(int(a), int(b)) for a, b in zip(result.pairs.a, result.pairs.b)}
    with np.load(out / "evidence.npz", allow_pickle=False) as z:  # no object arrays
        assert all(z[name].dtype != object for name in z.files)


def test_cnn_ranks_match_a_full_sort():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(60, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    a, b = rng.integers(0, 60, 40), rng.integers(0, 60, 40)
    keep = a != b
    a, b = a[keep], b[keep]
    got = evidence.cnn_evidence(v, a, b)
    sims = v @ v.T
    for k, (x, y) in enumerate(zip(a, b)):
        for me, partner, key in ((x, y, "rank_a"), (y, x, "rank_b")):
            others = [j for j in np.argsort(-sims[me], kind="stable") if j != me]
            assert got[k][key] == others.index(partner) + 1
        assert got[k]["cosine"] == pytest.approx(float(sims[x, y]), abs=1e-4)


@pytest.mark.parametrize("rule", cascade.LINK_SCORES)
def test_linked_chains_give_the_linked_score(rule):
    rng = np.random.default_rng(7)
    n = 40
    a, b = rng.integers(0, n, 120), rng.integers(0, n, 120)
    keep = a != b
    pairs = cascade.fuse(n, {"keypoints": cascade.ScoredPairs(np.minimum(a, b)[keep], np.maximum(a, b)[keep],
                                                              rng.uniform(0.6, 1.0, keep.sum()))})
    linked = cascade.link(pairs, n, floor=0.8, max_group=100, rule=rule)
    rows = np.flatnonzero(linked.method == cascade.LINKED)
    assert len(rows) > 20
    wanted = [(int(linked.a[k]), int(linked.b[k])) for k in rows]
    direct = {(int(x), int(y)): s for x, y, s, m in zip(linked.a, linked.b, linked.score, linked.method)
              if m != cascade.LINKED}
    for k, chain in zip(rows, evidence.linked_chains(linked, wanted, 0.8)):
        assert chain and chain[0][0] == linked.a[k] and chain[-1][1] == linked.b[k]
        assert all(chain[i][1] == chain[i + 1][0] for i in range(len(chain) - 1))
        assert all(min(x, y) != max(x, y) and (min(x, y), max(x, y)) in direct for x, y, _, _ in chain)
        along = [s for _, _, s, _ in chain]
        assert (np.prod(along) if rule == "product" else min(along)) == pytest.approx(linked.score[k], rel=1e-5)


def test_pairs_beyond_the_limit_get_no_record():
    pairs = FusedPairs(np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([0.5, 0.9, 0.7]),
                       np.array(["cnn"] * 3, dtype=object), {"cnn": np.array([0.5, 0.9, 0.7])})
    got = evidence.pair_evidence(pairs, [], {}, None, limit=2)
    assert set(got) == {(1, 2), (2, 3)}


def test_cnn_records_of_a_run_come_from_the_stage_features():
    """pair_evidence on a CNN stage's features (Embeddings, item rows): records for the pairs that stage
    scored, its calibrated score carried, item indices mapped to feature rows."""
    from types import SimpleNamespace

    from simbench.types import Embeddings

    rng = np.random.default_rng(1)
    v = rng.normal(size=(5, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = np.array([0, 2, 3, 5, 6])  # items 1 and 4 have no embedding
    pairs = FusedPairs(np.array([0, 1, 3]), np.array([2, 2, 6]), np.array([0.9, 0.8, 0.7]),
                       np.array(["cnn", "keypoints", "cnn"], dtype=object),
                       {"cnn": np.array([0.9, 0.0, 0.7]), "keypoints": np.array([0.0, 0.8, 0.0])})
    got = evidence.pair_evidence(pairs, [SimpleNamespace(name="cnn")], {"cnn": (Embeddings(v), rows, {})})
    assert set(got) == {(0, 2), (1, 2), (3, 6)} and got[1, 2] == {}
    assert got[0, 2]["cnn"] == {**evidence.cnn_evidence(v, np.array([0]), np.array([1]))[0], "score": 0.9}
    assert got[3, 6]["cnn"]["cosine"] == pytest.approx(float(v[2] @ v[4]), abs=1e-4)


def test_cnn_records_name_the_best_window_of_either_image():
    """With region views (Embeddings.regions): the best cosine of either image's vector with a window of the
    other, whose window and which, against a loop over every window."""
    from types import SimpleNamespace

    from simbench.types import Embeddings

    rng = np.random.default_rng(2)
    v = rng.normal(size=(4, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = rng.normal(size=(12, 8)).astype(np.float32)
    w = (w / np.linalg.norm(w, axis=1, keepdims=True)).reshape(4, 3, 8)
    w[2, 1] = v[0]  # picture 0 in window 2 of picture 2
    pairs = FusedPairs(np.array([0, 1]), np.array([2, 3]), np.array([0.9, 0.8]), np.array(["cnn"] * 2, dtype=object),
                       {"cnn": np.array([0.9, 0.8])})
    got = evidence.pair_evidence(pairs, [SimpleNamespace(name="cnn")], {"cnn": (Embeddings(v, w), np.arange(4), {})})
    assert got[0, 2]["cnn"]["window"] == {"cosine": 1.0, "of": "b", "index": 1, "count": 3}
    window = got[1, 3]["cnn"]["window"]
    best = max((float(v[x] @ w[y, r]), "b" if y == 3 else "a", r) for x, y in ((1, 3), (3, 1)) for r in range(3))
    assert (window["cosine"], window["of"], window["index"]) == (pytest.approx(best[0], abs=1e-4), best[1], best[2])
    plain = evidence.pair_evidence(pairs, [SimpleNamespace(name="cnn")], {"cnn": (Embeddings(v), np.arange(4), {})})
    assert "window" not in plain[0, 2]["cnn"]


def test_evidence_changes_no_output_but_its_own(pasted_run, tmp_path, monkeypatch):
    """pairs.csv and groups.json are byte for byte those of a run that computes no evidence."""
    files, _, out, cfg = pasted_run
    monkeypatch.setattr(evidence, "pair_evidence", lambda *args, **kwargs: {})
    find([files["photo"].parent], tmp_path / "bare", cfg, progress=False)
    for name in ("pairs.csv", "groups.json"):
        assert (tmp_path / "bare" / name).read_bytes() == (out / name).read_bytes(), name
    assert outputs.read_pair_evidence(tmp_path / "bare" / "evidence.npz") == {}


def test_report_embeds_larger_views_for_the_best_pairs_with_evidence(pasted_run, monkeypatch):
    """Images of the VIEW_PAIRS best pairs with evidence get a larger view, read again from their files."""
    import dataclasses

    from simbench.find import report

    files, result, _, cfg = pasted_run
    stages = cascade.build_stages(cfg, quiet=True)
    # A second, weaker pair with evidence: the unrelated photo and the pasted picture.
    x, y = sorted((item_of(result, files["other"]), item_of(result, files["pasted"])))
    p = result.pairs
    weaker = FusedPairs(np.r_[p.a, x], np.r_[p.b, y], np.r_[p.score, 0.02], np.r_[p.method, np.array(["keypoints"], object)],
                        {k: np.r_[v, 0.02 if k == "keypoints" else 0.0] for k, v in p.per_stage.items()},
                        None if p.calibrated is None else np.r_[p.calibrated, True])
    two = dataclasses.replace(result, pairs=weaker, evidence={**result.evidence, (x, y): {"cnn": {}}})
    data = report.report_data(two, cfg, stages)
    assert len(data["pairs"]) == 2
    best = data["pairs"][0]
    with_views = {k for k, item in enumerate(data["items"]) if "v" in item}
    assert len(with_views) == 3 and set(best[:2]) <= with_views
    assert all(len(data["items"][k]["v"]) > 2 * len(data["items"][k]["t"]) for k in with_views)
    monkeypatch.setattr(report, "VIEW_PAIRS", 1)
    data = report.report_data(two, cfg, stages)
    assert {k for k, item in enumerate(data["items"]) if "v" in item} == set(best[:2])


def test_cnn_ranks_do_not_depend_on_the_block_size(monkeypatch):
    rng = np.random.default_rng(5)
    v = rng.normal(size=(50, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    a, b = np.arange(0, 20), np.arange(20, 40)
    whole = evidence.cnn_evidence(v, a, b)
    monkeypatch.setattr(evidence, "BLOCK_SIMILARITIES", 3 * 50)  # three rows at a time
    assert evidence.cnn_evidence(v, a, b) == whole


def test_hash_records_count_the_differing_bits():
    from types import SimpleNamespace

    from simbench.types import BinaryCodes

    rng = np.random.default_rng(2)
    words = rng.integers(0, 2 ** 63, (4, 2), dtype=np.uint64)
    pairs = FusedPairs(np.array([0, 1]), np.array([3, 2]), np.array([0.9, 0.6]), np.array(["hash"] * 2, dtype=object),
                       {"hash": np.array([0.9, 0.6])})
    got = evidence.pair_evidence(pairs, [SimpleNamespace(name="hash")], {"hash": (BinaryCodes(words, 128), np.arange(4), {})})
    for (x, y), record in got.items():
        plain = sum((int(p) ^ int(q)).bit_count() for p, q in zip(words[x], words[y]))
        assert record["hash"]["distance"] == plain and record["hash"]["bits"] == 128
    assert got[0, 3]["hash"]["score"] == 0.9
