"""bench_find's yearbook scores pooled over layouts, against counts by hand."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import (_yearbook_row, best_recall, by_kind_text, interval_text,  # noqa: E402
                                   labelled_pairs, pooled_yearbook_scores, recall_by_kind, scores_at_text)
from simbench.evaluate import wilson_interval  # noqa: E402
from simbench.find.yearbook import Placement, pair_kind, pair_turn, score_found_pairs  # noqa: E402


def _book(name: str, photos: list[int]) -> list[Placement]:
    """One placement per page, 100 x 100 points."""
    return [Placement(f"{name}.pdf", page, (0, 0, 100, 100), photo, "crop") for page, photo in enumerate(photos, 1)]


def _row(book: list[Placement], i: int, j: int, score: float) -> dict:
    return {"method": "keypoints", "a_source": book[i].pdf, "a_page": book[i].page, "a_bbox": "0 0 100 100",
            "b_source": book[j].pdf, "b_page": book[j].page, "b_bbox": "0 0 100 100", "score": score}


def test_pooled_counts_and_best_recall():
    a = _book("a", [0, 0, 1, 1])         # true pairs (0,1), (2,3)
    b = _book("b", [0, 0, 0, 1])         # true pairs (0,1), (0,2), (1,2)
    scored = [(a, [_row(a, 0, 1, 0.99), _row(a, 1, 2, 0.97), _row(a, 2, 3, 0.60)]),
              (b, [_row(b, 0, 1, 0.98), _row(b, 1, 0, 0.97), _row(b, 0, 2, 0.96), _row(b, 2, 3, 0.50),
                   _row(b, 1, 2, 0.40)])]
    books = [labelled_pairs(placements, found) for placements, found in scored]
    for (placements, found), book in zip(scored, books):  # one yearbook: what score_found_pairs counts
        for t in (0.3, 0.5, 0.96, 0.975, 1.0):
            one = score_found_pairs(placements, found, t)
            del one["missed"]
            assert pooled_yearbook_scores([book], t) == one
    at = pooled_yearbook_scores(books, 0.95)
    assert (at["found"], at["false"], at["true_pairs"]) == (3, 1, 5)
    assert math.isclose(at["precision"], 3 / 4) and math.isclose(at["recall"], 3 / 5)
    assert pooled_yearbook_scores(books[:1], 0.95)["recall"] == 0.5
    # precision >= 0.95 holds down to 0.98 only (0.97 is false): 2 of 5
    assert best_recall(books, 0.95) == {"recall": 2 / 5, "threshold": 0.98}
    # precision >= 0.6 first reached at the lowest score: 5 true, 2 false
    assert best_recall(books, 0.6) == {"recall": 1.0, "threshold": 0.40}


def test_scores_at_other_thresholds_are_the_pooled_counts_there():
    a = _book("a", [0, 0, 1, 1])         # true pairs (0,1), (2,3)
    b = _book("b", [0, 1, 2, 2])         # true pair (2,3)
    books = [labelled_pairs(a, [_row(a, 0, 1, 0.99), _row(a, 1, 2, 0.93), _row(a, 2, 3, 0.91)]),
             labelled_pairs(b, [_row(b, 0, 1, 0.96), _row(b, 2, 3, 0.92)])]
    # by hand: at 0.95 one true of three found, one false (b's 0-1); at 0.92 two true, two false; at 0.9 all three
    assert scores_at_text(books, (0.95, 0.92, 0.9)) == ("0.95: 0.500 / 0.333 (1), 0.92: 0.500 / 0.667 (2), "
                                                         "0.9: 0.600 / 1.000 (2)")
    assert scores_at_text(books, ()) == ""


def test_nothing_found_is_no_recall():
    a = _book("a", [0, 0])
    assert best_recall([labelled_pairs(a, [])], 0.95)["recall"] == 0.0
    assert pooled_yearbook_scores([labelled_pairs(a, [])], 0.95) == {"precision": 1.0, "recall": 0.0, "true_pairs": 1,
                                                        "found": 0, "false": 0, "left_out": 0}


def test_pair_kind_takes_the_first_that_applies():
    crop = Placement("a.pdf", 1, (0, 0, 1, 1), 0, "crop")
    turned = Placement("a.pdf", 2, (0, 0, 1, 1), 0, "rotate_small+clip")
    sepia = Placement("a.pdf", 3, (0, 0, 1, 1), 0, "rotate90", colour="sepia")
    flat = Placement("a.pdf", 4, (0, 0, 1, 1), 0, "crop", flat=True)
    assert [pair_kind(crop, flat), pair_kind(turned, sepia), pair_kind(crop, turned), pair_kind(crop, sepia)] == [
        "flat", "recoloured", "turned", "recoloured"]
    assert pair_kind(crop, Placement("a.pdf", 5, (0, 0, 1, 1), 0, "rotate90+clip")) == "plain"
    assert pair_kind(sepia, Placement("a.pdf", 6, (0, 0, 1, 1), 0, "crop", colour="sepia")) == "plain"


def test_recall_by_kind_counts_each_true_pair_once_per_yearbook():
    a = [Placement("a.pdf", 1, (0, 0, 100, 100), 0, "crop"), Placement("a.pdf", 2, (0, 0, 100, 100), 0, "crop"),
         Placement("a.pdf", 3, (0, 0, 100, 100), 1, "crop", flat=True),
         Placement("a.pdf", 4, (0, 0, 100, 100), 1, "crop", flat=True),
         Placement("a.pdf", 5, (0, 0, 100, 100), 0, "rotate_small")]
    # true pairs: (0,1) plain, (0,4) and (1,4) turned, (2,3) flat
    found = [_row(a, 0, 1, 0.99), _row(a, 1, 0, 0.98), _row(a, 0, 4, 0.97), _row(a, 1, 4, 0.50), _row(a, 2, 3, 0.96),
             _row(a, 0, 2, 0.99)]
    book = labelled_pairs(a, found)
    assert recall_by_kind([book], 0.95) == {"flat": (1, 1), "turned": (1, 2), "plain": (1, 1)}
    assert recall_by_kind([book, book], 0.965) == {"flat": (0, 2), "turned": (2, 4), "plain": (2, 2)}
    assert by_kind_text(recall_by_kind([book], 0.6)) == "flat 1/1, turned 1/2, plain 1/1"
    # the same pairs by how they are turned: (0,1) and (2,3) upright, (0,4) and (1,4) a few degrees
    assert recall_by_kind([book], 0.95, "turns") == {"upright": (2, 2), "few degrees": (1, 2)}
    assert recall_by_kind([book], 0.95, "turns", only="flat") == {"upright": (1, 1)}
    assert recall_by_kind([book], 0.965, "turns", only="turned") == {"few degrees": (1, 2)}


def test_pair_turn_names_the_larger_turn():
    crop = Placement("a.pdf", 1, (0, 0, 1, 1), 0, "crop")
    quarter = Placement("a.pdf", 2, (0, 0, 1, 1), 0, "rotate90+clip")
    small = Placement("a.pdf", 3, (0, 0, 1, 1), 0, "rotate_small")
    assert [pair_turn(crop, crop), pair_turn(crop, quarter), pair_turn(quarter, small), pair_turn(small, crop)] == [
        "upright", "right angle", "few degrees", "few degrees"]


def test_pair_table_lists_every_true_pair_and_the_best_false_ones():
    from benchmarks.yearbook_pairs import pair_table

    a = _book("a", [0, 0, 0, 1])  # true pairs (0,1), (0,2), (1,2)
    found = [_row(a, 0, 1, 0.99), _row(a, 1, 0, 0.50), _row(a, 2, 3, 0.90), _row(a, 1, 3, 0.30)]
    lines = pair_table(a, found, n_false=1).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in lines] == [["| true (0, 1)", "0.990"], ["| true (0, 2)", "-"],
                                                         ["| true (1, 2)", "-"], ["| false (2, 3)", "0.900"]]
    assert "3: photo 1, crop, original" in lines[-1]
    # Each pair's own evidence: the true pair's from its best row, "-" where there is none.
    evidence = [{"cnn": {"score": 0.8, "cosine": 0.9}, "keypoints": {"inliers": 7, "flipped": True}},
                {"cnn": {"score": 0.1, "cosine": 0.3}}, {}, {"cnn": {"score": 0.3, "cosine": 0.5}}]
    lines = pair_table(a, found, n_false=1, evidence=evidence).splitlines()[2:]
    assert [line.split(" | ")[-2:] for line in lines] == [["7 inliers, mirrored", "0.800, cosine 0.90 |"],
                                                          ["-", "- |"], ["-", "- |"], ["-", "- |"]]


def test_pair_evidence_reads_each_rows_pair_from_the_runs_evidence(tmp_path):
    from types import SimpleNamespace

    from benchmarks.yearbook_pairs import pair_evidence
    from simbench.find.outputs import write_evidence

    found = [{"a": "x", "b": "y"}, {"a": "z", "b": "x"}, {"a": "y", "b": "z"}, {"a": "x", "b": "w"}]
    assert pair_evidence(tmp_path, found) == [{}] * 4  # no evidence.npz
    cnn, keypoints = {"cnn": {"cosine": 0.9, "score": 0.75}}, {"keypoints": {"inliers": 9}}
    items = [SimpleNamespace(display=name) for name in "xyz"]
    write_evidence(tmp_path / "evidence.npz", {}, items, {}, {(0, 1): cnn, (0, 2): keypoints})
    # (x, y) and (z, x) either way round; (y, z): no evidence; w: no item of the run.
    assert pair_evidence(tmp_path, found) == [cnn, keypoints, {}, {}]


def test_cnn_only_counts_reads_the_pairs_own_cnn_score():
    from benchmarks.yearbook_pairs import cnn_only_counts

    a = _book("a", [0, 0, 1, 2])  # true pair (0,1)
    found = [dict(_row(a, 0, 1, 0.5), method="cnn"), dict(_row(a, 2, 3, 0.4), method="cnn"),
             dict(_row(a, 1, 2, 0.3), method="cnn"), dict(_row(a, 0, 3, 0.9), method="keypoints")]
    evidence = [{"cnn": {"score": 0.85}}, {"cnn": {"score": 0.8}}, {"cnn": {"score": 0.79}}, {"cnn": {"score": 0.99}}]
    # (0,1) true and (2,3) false at >= 0.8; (1,2) below it; (0,3) not the CNN's alone.
    assert cnn_only_counts(a, found, evidence) == (1, 1)
    assert cnn_only_counts(a, found, evidence, at=0.9) == (0, 0)
    assert cnn_only_counts(a, found, [{}] * 4) == (0, 0)  # no evidence: nothing to count


def test_false_pairs_by_stage_counts_by_method_with_each_stages_own_signal(tmp_path):
    from types import SimpleNamespace

    from benchmarks.yearbook_pairs import false_pairs_by_stage
    from simbench.find.outputs import write_evidence
    from simbench.types import ScoredPairs

    a = _book("a", [0, 0, 1, 2])  # true pair (0,1)
    names = [f"a.pdf#page={k}" for k in range(1, 5)]
    found = [dict(_row(a, 0, 1, 0.99), method="keypoints"), dict(_row(a, 2, 3, 0.98), method="blobs"),
             dict(_row(a, 1, 3, 0.97), method="linked"), dict(_row(a, 0, 2, 0.50), method="cnn")]
    for row, (i, j) in zip(found, [(0, 1), (2, 3), (1, 3), (0, 2)]):
        row.update(a=names[i], b=names[j])
    raw = {"blobs": ScoredPairs(np.array([2]), np.array([3]), np.array([4.5])),
           "cnn": ScoredPairs(np.array([2, 1]), np.array([3, 3]), np.array([0.6, 0.55]))}
    write_evidence(tmp_path / "evidence.npz", raw, [SimpleNamespace(display=n) for n in names],
                   {"blobs": {}, "cnn": {}})
    text = false_pairs_by_stage(a, found, tmp_path).splitlines()
    # the true pair and the one below 0.95 are not counted
    assert text[0] == "false pairs scoring >= 0.95: 2 (blobs 1, linked 1)"
    assert text[1:] == ["  0.9800 blobs: {'blobs': 4.5, 'cnn': 0.6}", "  0.9700 linked: {'cnn': 0.55}"]


def test_blobs_probe_kinds_pairs_of_one_photo_and_calls_the_rest_different():
    from benchmarks.blobs_probe import kind_of

    book = [Placement("a.pdf", 1, (0, 0, 1, 1), 0, "crop"), Placement("a.pdf", 2, (0, 0, 1, 1), 0, "crop", flat=True),
            Placement("a.pdf", 3, (0, 0, 1, 1), 1, "crop", colour="sepia"),
            Placement("a.pdf", 4, (0, 0, 1, 1), 1, "crop")]
    assert [kind_of(book, 0, 1), kind_of(book, 2, 3), kind_of(book, 0, 2), kind_of(book, 0, None),
            kind_of(book, None, None)] == ["flat", "recoloured", "different photos", "different photos",
                                           "different photos"]


def test_yearbook_row_gives_the_pooled_counts_wilson_intervals():
    a = _book("a", [0, 0, 1, 1])         # true pairs (0,1), (2,3)
    b = _book("b", [0, 0, 0, 1])         # true pairs (0,1), (0,2), (1,2)
    scored = [(a, [_row(a, 0, 1, 0.99), _row(a, 1, 2, 0.97), _row(a, 2, 3, 0.60)]),
              (b, [_row(b, 0, 1, 0.98), _row(b, 0, 2, 0.96), _row(b, 1, 2, 0.40)])]
    row = _yearbook_row("cascade", "tune", "pooled", scored, 0.95, None)
    # at 0.95: true (0,1) of a, (0,1) and (0,2) of b found, a's (1,2) false: 3 of 5 true, 3 of 4 calls
    assert (row["found"], row["false"], row["true_pairs"]) == (3, 1, 5)
    assert row["recall_interval"] == interval_text(*wilson_interval(3, 5))
    assert row["precision_interval"] == interval_text(*wilson_interval(3, 4))
    lo, hi = (float(x) for x in row["recall_interval"].split("-"))
    assert lo < 3 / 5 < hi


def test_yearbooks_of_several_splits_pool_per_split_then_all(tmp_path, monkeypatch):
    """`yearbook --splits report,holdout2 --layouts 0,2`: a row per yearbook, a pooled row per split, then one
    over every yearbook (faked builds and runs: what is pooled, not what find finds)."""
    import csv
    from types import SimpleNamespace

    from benchmarks import bench_find

    books = {("report", 0): _book("r0", [0, 0, 1, 1]), ("report", 2): _book("r2", [0, 0, 0]),
             ("holdout2", 0): _book("h0", [0, 0]), ("holdout2", 2): _book("h2", [0, 1, 1])}
    found = {"r0": [(0, 1, 0.99), (2, 3, 0.5)], "r2": [(0, 1, 0.97), (0, 2, 0.96), (1, 2, 0.2)],
             "h0": [(0, 1, 0.99)], "h2": [(0, 1, 0.98), (1, 2, 0.3)]}
    built = []

    def fake_build(pdfs, split, layout, progress):
        built.append((split, layout))
        return books[split, layout]

    def fake_find(sources, out, cfg, index, progress):
        placements = books[next((s, l) for s, l in books if bench_find.yearbook_name(s, l) == sources[0].name)]
        out.mkdir(parents=True)
        with open(out / "pairs.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(_row(placements, 0, 1, 0.0)))
            writer.writeheader()
            writer.writerows(_row(placements, i, j, s) for i, j, s in found[placements[0].pdf.removesuffix(".pdf")])
        return SimpleNamespace(skipped=[])

    monkeypatch.setattr(bench_find, "school_yearbook", fake_build)
    monkeypatch.setattr(bench_find, "find", fake_find)
    rows = bench_find.yearbook(["cascade"], tmp_path, [], False, splits=("report", "holdout2"), layouts=(0, 2))
    assert built == [("report", 0), ("report", 2), ("holdout2", 0), ("holdout2", 2)]
    assert [(r["split"], r["layout"]) for r in rows] == [
        ("report", "0"), ("report", "2"), ("report", "pooled"), ("holdout2", "0"), ("holdout2", "2"),
        ("holdout2", "pooled"), ("report+holdout2", "pooled")]
    counts = {(r["split"], r["layout"]): (r["found"], r["false"], r["true_pairs"]) for r in rows}
    # by hand at 0.95: r0 finds (0,1) of its two true pairs; r2 two of three; h0 its one; h2's (0,1) is false and
    # (1,2) missed
    assert counts["report", "pooled"] == (3, 0, 5)
    assert counts["holdout2", "pooled"] == (1, 1, 2)
    assert counts["report+holdout2", "pooled"] == (4, 1, 7)


def test_yearbook_splits_are_checked_before_anything_is_made(tmp_path):
    import pytest

    from benchmarks import bench_find

    for argv in (["yearbook", "--splits", "report,tune"], ["yearbook-tune", "--splits", "holdout1"],
                 ["dev", "--splits", "holdout1"]):
        with pytest.raises(SystemExit):
            bench_find.main([*argv, "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


def test_content_free_placements_are_left_out_of_the_pooled_counts_unless_every_placement():
    a = [Placement("a.pdf", page, (0, 0, 100, 100), photo, "crop", detail=d)
         for page, (photo, d) in enumerate([(0, 9.0), (0, 0.4), (0, 9.0), (1, 9.0)], 1)]
    found = [_row(a, 0, 1, 0.99), _row(a, 1, 3, 0.98), _row(a, 0, 2, 0.60), _row(a, 2, 3, 0.97)]
    book = labelled_pairs(a, found)
    assert book.kept == [False, False, True, True] and book.left_out == 2  # (0,1) and (1,2) not scored
    at = pooled_yearbook_scores([book], 0.95)
    assert (at["found"], at["false"], at["true_pairs"], at["left_out"]) == (0, 1, 1, 2)
    every = pooled_yearbook_scores([labelled_pairs(a, found, every_placement=True)], 0.95)
    assert (every["found"], every["false"], every["true_pairs"], every["left_out"]) == (1, 2, 3, 0)
    row = _yearbook_row("cascade", "report", "0", [(a, found)], 0.95, 0)
    assert (row["true_pairs"], row["left_out"], row["recall"]) == (1, 2, 0.0)
