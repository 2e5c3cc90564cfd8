"""The blobs stage (conf/find.yaml `blobs`): the CNN's best pairs verified on coarse SIFT blobs. Float ratio matches
against a plain oracle and their two nearest rows against OpenCV's knnMatch, the shared-descriptor cut against a
loop, a crest on every picture that verifies unrelated pictures until the cut drops it while a real copy still
verifies, and the stage off unless it has proposals."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from simbench.features.keypoints import KeypointExtractor
from simbench.find import cascade
from simbench.match.exact import ExactMatcher
from simbench.methods.keypoints import (KeypointMethod, distance_rows, image_frequency, ratio_matches, two_nearest,
                                       without_shared)
from simbench.types import KeypointSets, ScoredPairs
from test_keypoint_proposals import _oracle_matches  # the plain loop, Hamming or L2

WIDTH = 128  # SIFT


def _float_sets(seed: int, counts=(30, 0, 25, 40, 1, 20)) -> KeypointSets:
    """Random SIFT-like descriptors with near copies of random rows planted over others (small and larger noise),
    so that some rows have one close twin in another image (the ratio test keeps them) and some two (it does not)."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    desc = rng.uniform(0, 100, (m, WIDTH)).astype(np.float32)
    for _ in range(2 * m):
        i, j = rng.integers(0, m, 2)
        desc[j] = desc[i] + rng.normal(0, rng.choice([2.0, 20.0, 60.0]), WIDTH).astype(np.float32)
    points = rng.uniform(0, 200, (m, 2)).astype(np.float32)
    zeros = np.zeros(m, np.float32)
    return KeypointSets(desc, offsets, points, zeros, zeros, zeros, np.full((len(counts), 2), 200), False)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio,max_distance", [(0.85, 1000.0), (0.8, 300.0), (0.6, 150.0)])
def test_float_ratio_matches_equal_a_python_oracle(seed, ratio, max_distance):
    f = _float_sets(seed)
    a, b = np.array([0, 0, 1, 2, 2, 3, 0]), np.array([2, 3, 2, 3, 5, 4, 5])
    got = ratio_matches(f, a, b, ratio, max_distance)
    assert all(len(v) == len(got["ra"]) for v in got.values()) and got["dist"].dtype == np.float64
    want = {(q, t, i, j) for q, t, _, i, j in _oracle_matches(f, a, b, ratio, max_distance)}
    found = set(zip(*(got[k].tolist() for k in ("ra", "rb", "ia", "ib"))))
    # float32 distances: a ratio within rounding of the cut may fall either way; none does in these sets
    assert found == want and len(want) >= 5
    rows = dict(((q, t), (i, j)) for q, t, i, j in want)
    for q, t, d in zip(got["ra"].tolist(), got["rb"].tolist(), got["dist"].tolist()):
        assert (q, t) in rows and d == pytest.approx(np.linalg.norm(f.descriptors[q].astype(np.float64)
                                                                    - f.descriptors[t]), rel=1e-4)


def _knn_oracle(query: np.ndarray, train: np.ndarray, binary: bool) -> np.ndarray:
    """(nearest, its distance, the second's) of each query row, by OpenCV's brute-force knnMatch."""
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if binary else cv2.NORM_L2)
    return np.array([(m[0].trainIdx, m[0].distance, m[1].distance) for m in matcher.knnMatch(query, train, k=2)],
                    np.float64).reshape(-1, 3)


@pytest.mark.parametrize("detector", ["sift", "brisk"])
def test_two_nearest_equals_opencv_knn_match_to_the_bit_on_real_pictures(photos, tmp_path, detector):
    from PIL import Image

    paths = []
    for name in ("astronaut", "coffee", "cat", "brick"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(photos[name]).save(paths[-1])
    paths.append(tmp_path / "astronaut-copy.jpg")  # a copy: many close rows, so the ratio test's cut is exercised
    Image.fromarray(photos["astronaut"][20:400, 40:460]).resize((300, 272)).save(paths[-1], quality=40)
    f = KeypointExtractor(detector, max_features=300, max_size=256, workers=1).extract(paths).features
    for i in range(len(paths)):
        for j in range(len(paths)):
            query = f.descriptors[f.offsets[i]:f.offsets[i + 1]]
            train = f.descriptors[f.offsets[j]:f.offsets[j + 1]]
            rows = (query, train) if f.binary else (distance_rows(query), distance_rows(train))
            got = np.c_[two_nearest(*rows, f.binary)]
            assert np.array_equal(got, _knn_oracle(query, train, f.binary)), (i, j)


def test_two_nearest_equals_opencv_knn_match_on_random_rows_with_ties():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (60, WIDTH)).astype(np.float32)
    train[10] = train[11]  # a tie for the nearest: the lower row, then the same distance second
    query = np.r_[train[[10, 4, 30]] + rng.integers(-3, 4, (3, WIDTH)), rng.integers(0, 256, (40, WIDTH))]
    query = np.clip(query, 0, 255).astype(np.float32)
    assert distance_rows(train).dtype == np.float32 and distance_rows(train + 0.5).dtype == np.float64
    got = np.c_[two_nearest(distance_rows(query), distance_rows(train), False)]
    assert np.array_equal(got, _knn_oracle(query, train, False))
    assert got[0, 0] == 10 and got[0, 1] == got[0, 2]
    bits = rng.integers(0, 256, (50, 64), dtype=np.uint8)
    assert np.array_equal(np.c_[two_nearest(bits[:20], bits[20:], True)], _knn_oracle(bits[:20], bits[20:], True))


@pytest.mark.parametrize("max_df", [1, 2, 3])
def test_without_shared_equals_a_loop(max_df):
    f = _float_sets(4)
    a, b = np.array([0, 0, 0, 2, 2, 3, 3]), np.array([2, 3, 5, 3, 5, 5, 4])
    matches = ratio_matches(f, a, b, 0.9, 1000.0)
    df = image_frequency(matches, len(f.descriptors), len(f))
    others = {}  # row -> the other images it matches (a loop over the matches)
    for q, t, i, j in zip(*(matches[k].tolist() for k in ("ra", "rb", "ia", "ib"))):
        others.setdefault(q, set()).add(j)
        others.setdefault(t, set()).add(i)
    assert max(len(v) for v in others.values()) >= 2
    got = without_shared(matches, df, max_df)
    want = {(q, t) for q, t in zip(matches["ra"].tolist(), matches["rb"].tolist())
            if len(others[q]) < max_df and len(others[t]) < max_df}
    assert set(zip(got["ra"].tolist(), got["rb"].tolist())) == want
    assert all(len(v) == len(got["ra"]) for v in got.values())


def _crested(seed: int = 0) -> KeypointSets:
    """Six pictures (200 x 200) carrying the same crest (12 blobs, the same descriptors give or take noise, at the
    same place) over 30 blobs of their own; pictures 0 and 1 also share 15 blobs of one photo (1 is a copy of 0
    moved by (5, -3) px). Pictures 2-5 are unrelated but for the crest."""
    rng = np.random.default_rng(seed)
    crest_desc = rng.uniform(0, 100, (12, WIDTH))
    crest_pts = rng.uniform(80, 120, (12, 2))  # a small crest in the middle
    photo_desc = rng.uniform(0, 100, (15, WIDTH))
    photo_pts = rng.uniform(10, 190, (15, 2))
    desc, pts, counts = [], [], []
    for k in range(6):
        own = [rng.uniform(0, 100, (30, WIDTH)), crest_desc + rng.normal(0, 1, crest_desc.shape)]
        where = [rng.uniform(0, 200, (30, 2)), crest_pts]
        if k < 2:
            own.append(photo_desc + rng.normal(0, 1, photo_desc.shape))
            where.append(photo_pts + (np.array([5.0, -3.0]) if k else 0.0))
        desc.append(np.concatenate(own))
        pts.append(np.concatenate(where))
        counts.append(len(desc[-1]))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    zeros = np.zeros(m, np.float32)
    return KeypointSets(np.concatenate(desc).astype(np.float32), offsets, np.concatenate(pts).astype(np.float32),
                        zeros, zeros, zeros, np.full((6, 2), 200), False)


def test_a_crest_on_every_proposed_picture_is_cut_and_a_copy_still_verifies():
    f = _crested()
    a, b = np.array([x for x in range(6) for y in range(x + 1, 6)]), np.array([y for x in range(6) for y in range(x + 1, 6)])
    extractor = KeypointExtractor("sift", max_size=256)

    def method(max_df):
        return KeypointMethod(extractor, ExactMatcher(), verify=True, own_pairs=False, proposals=5,
                              proposal_ratio=0.85, proposal_max_distance=1000, proposal_max_df=max_df,
                              ransac_threshold=4.0, min_inliers=8, min_coverage=0.0)

    crest = method(0).score_proposed(f, a, b)
    assert len(crest) == 15  # every pair verifies through the crest alone
    cut = method(4).score_proposed(f, a, b)
    assert list(zip(cut.a.tolist(), cut.b.tolist())) == [(0, 1)]
    assert cut.extra["inliers"][0] >= 14  # the photo's own blobs, not the crest's
    assert len(method(4).score_pairs(f)) == 0  # own_pairs=False: no pairs of its own


def test_the_blobs_stage_runs_only_with_proposals_and_is_keyed_by_them():
    off = cascade.build_stages(cascade.make_config("cascade", ["blobs.method.proposals=0"]), calibrations={},
                               quiet=True)
    on = cascade.build_stages(cascade.make_config("cascade"), calibrations={}, quiet=True)  # 5 by default
    assert [s.name for s in off] == ["keypoints", "cnn", "align", "blobs_wide"]
    assert [s.name for s in on] == ["keypoints", "cnn", "blobs", "align", "blobs_wide"]
    blobs = on[2]
    assert blobs.extractor.detector == "sift" and not blobs.extractor.binary and blobs.signal == "evidence"
    params = blobs.settings["method_params"]
    assert params["own_pairs"] is False and params["proposals"] == 5 and params["proposal_max_df"] == 4
    other = cascade.build_stages(cascade.make_config("cascade", ["blobs.method.proposals=5",
                                                                 "blobs.method.proposal_max_df=6"]),
                                 calibrations={}, quiet=True)[2]
    assert other.name == "blobs" and cascade.settings_key(other.settings) != cascade.settings_key(blobs.settings)
    keypoints = KeypointMethod(KeypointExtractor("brisk"), ExactMatcher(), verify=True)
    assert "own_pairs" not in keypoints.params() and "proposal_max_df" not in keypoints.params()
    with pytest.raises(ValueError, match="proposal_max_df"):
        KeypointMethod(KeypointExtractor("sift"), ExactMatcher(), verify=True, proposal_max_df=-1)


def test_blobs_rank_flat_copies_in_a_shared_frame_above_different_photos(tmp_path):
    """A school yearbook whose every photo is flat (blurred, its contrast lowered) and carries the school's crest
    and frame. The blobs stage, run as find runs it (the CNN proposing), verifies copies of one photo, and every
    copy's evidence is above every pair of different photos'; without the shared-descriptor cut, the crest and
    frame verify pairs of different photos as strongly as copies."""
    from simbench.find.pipeline import collect, raw_evidence
    from simbench.find.yearbook import SCHOOL_STYLE, build_yearbook, match_placement, true_pairs

    placements = build_yearbook(tmp_path / "pdfs", n_pdfs=2, n_photos=6, n_single=2, seed=3,
                                **{**SCHOOL_STYLE, "recolour": 0.0, "low_texture": 1.0})

    def blobs_pairs(max_df: int) -> tuple[np.ndarray, np.ndarray]:
        """(evidence, is a copy) of the blobs stage's pairs."""
        cfg = cascade.make_config("cascade", ["blobs.method.proposals=5", f"blobs.method.proposal_max_df={max_df}"])
        stages = [s for s in cascade.build_stages(cfg, calibrations={}, quiet=True) if s.name in ("cnn", "blobs")]
        got = collect([tmp_path / "pdfs"], stages, cfg, tmp_path / "index", tmp_path, False)
        blobs = raw_evidence(stages, got.features, False, None, got.items, True)["blobs"]
        where = [match_placement(placements, it.source, it.page, it.bbox) if it.page else None for it in got.items]
        photo = [placements[k].photo if k is not None else -1 - n for n, k in enumerate(where)]
        return blobs.score, np.array([photo[a] == photo[b] for a, b in zip(blobs.a, blobs.b)], bool)

    evidence, copy = blobs_pairs(4)
    assert copy.sum() >= len(true_pairs(placements)) // 3
    assert evidence[copy].min() > evidence[~copy].max(initial=0.0)
    evidence, copy = blobs_pairs(0)
    assert evidence[~copy].max(initial=0.0) > evidence[copy].min()


def test_a_stage_the_fusion_was_not_fitted_on_adds_by_noisy_or(monkeypatch):
    """With blobs on and only a keypoints + CNN fusion fitted, find uses that fusion and adds blobs' calibrated
    score by noisy-OR: a pair blobs did not verify keeps the fusion's score, one it verified gets
    1 - (1 - fused) (1 - blobs); a fusion fitted on all three stages wins when there is one."""
    from simbench.find.calibration import Calibration, Fusion
    from simbench.find.cascade import FusedPairs, apply_fusion

    cfg = cascade.make_config("cascade", ["blobs.method.proposals=5", "align.method.proposals=0",
                                          "blobs_wide.method.proposals=0"])
    stages = cascade.build_stages(cfg, quiet=True)
    blobs = stages[-1]
    blobs.calibration = Calibration(np.array([0.0, 10.0]), np.array([0.1, 0.9]), "evidence", blobs.settings)
    keys = [cascade.settings_key(s.settings) for s in stages]
    two = Fusion(["keypoints", "cnn"], keys[:2], -3.0, {"keypoints": 1.0, "cnn": 0.0},
                 {"keypoints": 0.5, "cnn": 4.0}, {"keypoints": "log1p", "cnn": "identity"})
    three = Fusion(["keypoints", "cnn", "blobs"], keys, -3.0, {"keypoints": 1.0, "cnn": 0.0, "blobs": 1.0},
                   {"keypoints": 0.5, "cnn": 4.0, "blobs": 0.5},
                   {"keypoints": "log1p", "cnn": "identity", "blobs": "log1p"})
    monkeypatch.setattr(cascade, "load_fusions", lambda *args: [two])
    assert cascade.fusion_model(stages, cfg) is two
    monkeypatch.setattr(cascade, "load_fusions", lambda *args: [two, three])
    assert cascade.fusion_model(stages, cfg) is three
    assert cascade.fusion_model(stages[:2], cascade.make_config("cascade")) is two

    class Cnn:  # scores any pair: the same for all three
        name, signal, scores_any_pair = "cnn", "score", True

        def score_given(self, features, a, b):
            return np.full(len(a), 0.5), np.ones(len(a), bool)

        def calibrated(self, raw):
            return raw

    class Kp:
        name, signal, scores_any_pair, extra_signals = "keypoints", "evidence", False, ()

    pairs = FusedPairs(np.array([0, 2, 4]), np.array([1, 3, 5]), np.zeros(3), np.array(["cnn"] * 3, object),
                       {"identical": np.zeros(3)})
    raw = {"keypoints": ScoredPairs(np.array([0]), np.array([1]), np.array([5.0])),
           "blobs": ScoredPairs(np.array([2]), np.array([3]), np.array([5.0]))}
    out = apply_fusion(pairs, 6, [Kp(), Cnn(), blobs], raw, {"cnn": None}, two)
    alone = two({"keypoints": np.array([5.0, 0, 0]), "cnn": np.full(3, 0.5)},
                {"keypoints": np.array([True, False, False]), "cnn": np.ones(3, bool)})
    assert out.score[0] == pytest.approx(alone[0]) and out.score[2] == pytest.approx(alone[2])
    added = blobs.calibrated(np.array([5.0]))[0]
    assert 0.1 < added < 0.9 and out.score[1] == pytest.approx(1 - (1 - alone[1]) * (1 - added))


def test_a_stage_without_pairs_of_its_own_matches_nothing_on_a_cluster_either():
    """simbench.distributed.match.score_pairs leaves a method with own_pairs=False to itself: no tasks, no
    all-pairs matching of its descriptors (the client is never touched)."""
    from simbench.distributed.match import score_pairs

    method = KeypointMethod(KeypointExtractor("sift"), ExactMatcher(), verify=True, own_pairs=False, proposals=5)
    got = score_pairs(None, method, object())
    assert len(got) == 0 and len(got.extra["evidence"]) == 0


def test_the_wide_look_reads_the_blobs_stage_features_and_is_keyed_apart():
    """blobs_wide (on by default, off without proposals) takes the blobs stage's extractor, overrides included, so
    the two share one index record; its table is keyed apart (its name, the relaxed cut and floor, skip_verified)."""
    from simbench.find.pipeline import extracting, feature_key, index_sections
    from simbench.find.pdf import PdfOptions

    default = cascade.build_stages(cascade.make_config("cascade"), quiet=True)
    assert default[-1].name == "blobs_wide" and default[-1].is_calibrated
    off = cascade.make_config("cascade", ["blobs_wide.method.proposals=0"])
    assert "blobs_wide" not in [s.name for s in cascade.build_stages(off, calibrations={}, quiet=True)]
    stages = cascade.build_stages(cascade.make_config("cascade", ["blobs.extractor.max_size=192"]),
                                  calibrations={}, quiet=True)
    by_name = {s.name: s for s in stages}
    assert [s.name for s in stages] == ["keypoints", "cnn", "blobs", "align", "blobs_wide"]
    blobs, wide = by_name["blobs"], by_name["blobs_wide"]
    assert wide.extractor.max_size == 192 and feature_key(wide) == feature_key(blobs) and wide.section == blobs.section
    assert [s.name for s in extracting(stages)] == ["keypoints", "cnn", "blobs"]
    sections = index_sections(stages, PdfOptions())
    assert len(sections) == len(set(sections)) == 4  # sources, keypoints, cnn, blobs
    params = wide.settings["method_params"]
    assert params["skip_verified"] is True and params["proposal_max_df"] == 8 and params["proposal_min_coverage"] == 0.2
    assert "skip_verified" not in blobs.settings["method_params"]
    assert cascade.settings_key(wide.settings) != cascade.settings_key(blobs.settings)


def test_the_wide_look_verifies_only_what_no_keypoint_stage_verified(tmp_path, monkeypatch):
    """On a yearbook of flat photos: the blobs are extracted once for both blob stages; the wide look is asked for
    exactly the CNN's proposals that neither the keypoints nor the blobs stage verified, and its pairs are among
    them."""
    from simbench.find.pipeline import best_pairs_per_item, collect, raw_evidence
    from simbench.find.yearbook import SCHOOL_STYLE, build_yearbook
    from simbench.evaluate import pair_keys

    build_yearbook(tmp_path / "pdfs", n_pdfs=2, n_photos=6, n_single=2, seed=3,
                   **{**SCHOOL_STYLE, "recolour": 0.0, "low_texture": 1.0})
    extracted = []
    extract = KeypointExtractor.extract
    monkeypatch.setattr(KeypointExtractor, "extract",
                        lambda self, paths, **kw: extracted.append(self.detector) or extract(self, paths, **kw))
    cfg = cascade.make_config("cascade", ["blobs_wide.method.proposals=5", "align.method.proposals=0",
                                          "keypoints.min_overlap_agreement=0",
                                          "keypoints.min_away_agreement=0"])  # raw = what it verified
    stages = cascade.build_stages(cfg, calibrations={}, quiet=True)
    got = collect([tmp_path / "pdfs"], stages, cfg, tmp_path / "index", tmp_path, False)
    assert sorted(extracted) == ["brisk", "sift"] and got.features["blobs_wide"] is got.features["blobs"]
    method, asked = stages[-1].method, []
    score_proposed = method.score_proposed
    monkeypatch.setattr(method, "score_proposed", lambda f, a, b: asked.append((a, b)) or score_proposed(f, a, b))
    raw = raw_evidence(stages, got.features, False, None, got.items, False, cfg)
    n, rows = len(got.items), got.features["blobs"][1]
    a, b = best_pairs_per_item([raw["cnn"]], 5)
    verified = np.concatenate([pair_keys(raw[s].a, raw[s].b, n) for s in ("keypoints", "blobs")])
    left = np.setdiff1d(pair_keys(a, b, n), verified)
    assert len(verified) and len(left) and len(asked) == 1
    assert np.array_equal(np.sort(pair_keys(rows[asked[0][0]], rows[asked[0][1]], n)), left)
    wide = raw["blobs_wide"]
    assert np.isin(pair_keys(wide.a, wide.b, n), left).all()


def _group_and_crest(seed: int = 0) -> KeypointSets:
    """Twelve pictures (200 x 200) of 30 blobs of their own: pictures 0-5 are copies of one drawing (its 20 blobs,
    moved by a few px), and every picture carries the same crest (12 blobs at one place)."""
    rng = np.random.default_rng(seed)
    crest_desc, crest_pts = rng.uniform(0, 100, (12, WIDTH)), rng.uniform(150, 190, (12, 2))
    drawing_desc, drawing_pts = rng.uniform(0, 100, (20, WIDTH)), rng.uniform(10, 140, (20, 2))
    desc, pts = [], []
    for k in range(12):
        own = [rng.uniform(0, 100, (30, WIDTH)), crest_desc + rng.normal(0, 1, crest_desc.shape)]
        where = [rng.uniform(0, 200, (30, 2)), crest_pts]
        if k < 6:
            own.append(drawing_desc + rng.normal(0, 1, drawing_desc.shape))
            where.append(drawing_pts + rng.uniform(-4, 4, 2))
        desc.append(np.concatenate(own))
        pts.append(np.concatenate(where))
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in desc])]).astype(np.int64)
    zeros = np.zeros(int(offsets[-1]), np.float32)
    return KeypointSets(np.concatenate(desc).astype(np.float32), offsets, np.concatenate(pts).astype(np.float32),
                        zeros, zeros, zeros, np.full((12, 2), 200), False)


def test_the_relaxed_cut_keeps_a_group_of_copies_and_still_drops_a_crest_on_many():
    """What the wide look's cut is for: six copies of a drawing share its blobs with five other pictures each, which
    the blobs stage's cut at 4 drops, so no pair of them verifies; at 8 they verify, while a crest on all twelve
    pictures (each of its blobs matched in eleven) is dropped by both, and no pair of different pictures verifies."""
    f = _group_and_crest()
    a, b = np.triu_indices(12, 1)
    extractor = KeypointExtractor("sift", max_size=256)

    def verified(max_df):
        method = KeypointMethod(extractor, ExactMatcher(), verify=True, own_pairs=False, proposals=5,
                                proposal_ratio=0.85, proposal_max_distance=1000, proposal_max_df=max_df,
                                ransac_threshold=4.0, min_inliers=8, min_coverage=0.0)
        got = method.score_proposed(f, a, b)
        return set(zip(got.a.tolist(), got.b.tolist()))

    copies = {(x, y) for x in range(6) for y in range(x + 1, 6)}
    assert len(verified(0)) == 66  # without a cut the crest verifies every pair
    assert verified(4) == set()
    assert verified(8) == copies
