"""A reviewer's decisions.csv applied on a re-run (`simbench find --decisions`), and used as truth.

The collection: two photos, each whole and cut into its left and right halves (pictures that share no
content); the keypoint stage pairs each half with its whole picture, and linking joins the two halves
through it (left ~ whole ~ right): the chain a not_duplicate decision must break.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simbench.cli import find_main
from simbench.find.cascade import FusedPairs
from simbench.find.decisions import (DECISION, DecisionsError, match_decisions, read_decisions)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def by_names(rows: list[dict]) -> dict[frozenset, dict]:
    return {frozenset((Path(r["a"]).name, Path(r["b"]).name)): r for r in rows}


@pytest.fixture(scope="module")
def halves(tmp_path_factory, photos):
    """The collection (folder `chain` under the root) and the pairs of a run without decisions."""
    root = tmp_path_factory.mktemp("decisions")
    folder = root / "chain"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        image = photos[name]
        half = image.shape[1] // 2
        Image.fromarray(image).save(folder / f"{name}.png")
        Image.fromarray(image[:, :half]).save(folder / f"{name}-left.png")
        Image.fromarray(image[:, half:]).save(folder / f"{name}-right.png")
    for name in ("rocket", "camera"):  # unrelated pictures: no stage pairs them
        Image.fromarray(photos[name]).save(folder / f"{name}.png")
    out = root / "before"
    assert find_main([str(folder), "--out", str(out), "--method", "keypoints", "-q"]) == 0
    return root, folder, by_names(read_csv(out / "pairs.csv"))


def test_the_collection_has_the_chains(halves):
    _, _, before = halves
    for name in ("astronaut", "coffee"):
        assert before[frozenset((f"{name}-left.png", f"{name}.png"))]["method"] == "keypoints"
        assert before[frozenset((f"{name}-right.png", f"{name}.png"))]["method"] == "keypoints"
        assert before[frozenset((f"{name}-left.png", f"{name}-right.png"))]["method"] == "linked"
    assert frozenset(("rocket.png", "camera.png")) not in before
    # The decision below raises a pair that the run scores under 1 (the keypoints found it; not as "decision").
    assert float(before[frozenset(("astronaut-right.png", "astronaut.png"))]["score"]) < 1.0


def test_decisions_applied_on_a_rerun(halves, capsys):
    root, folder, before = halves
    f = str(folder)
    decisions = write_csv(root / "decisions.csv", ("a", "b", "decision", "note"), [
        (f"{f}/coffee.png", f"{f}/coffee-right.png", "not_duplicate", "the chain through coffee.png breaks"),
        (f"{f}/astronaut-right.png", f"{f}/astronaut.png", "duplicate", "found, now confirmed"),
        ("chain/rocket.png", "chain/camera.png", "Duplicate", "relative to the CSV's folder; found by nobody"),
        (f"{f}/astronaut-left.png", f"{f}/astronaut-right.png", "not_duplicate", "only ever a linked pair"),
        (f"{f}/gone.png", f"{f}/coffee.png", "duplicate", "stale: no such image any more"),
        (f"{f}/coffee.png", f"{f}/astronaut.png", "maybe", "an unknown word: skipped"),
    ])
    out = root / "after"
    capsys.readouterr()
    assert find_main([f, "--out", str(out), "--method", "keypoints", "-q", "--decisions", str(decisions)]) == 0
    printed = capsys.readouterr().out
    after = by_names(read_csv(out / "pairs.csv"))

    # Not duplicates: hidden, and the chain they were part of no longer links.
    assert frozenset(("coffee.png", "coffee-right.png")) not in after
    assert frozenset(("coffee-left.png", "coffee-right.png")) not in after  # was linked through coffee.png
    assert frozenset(("astronaut-left.png", "astronaut-right.png")) not in after  # linked, then hidden
    # Duplicates: kept at score 1, method "decision", whether found by a stage or not at all.
    for pair in (("astronaut-right.png", "astronaut.png"), ("rocket.png", "camera.png")):
        row = after[frozenset(pair)]
        assert (row["score"], row["method"], row["calibrated"]) == ("1.000000", DECISION, "yes")
    # Every other pair is as it was.
    untouched = set(before) - {frozenset(p) for p in [("coffee.png", "coffee-right.png"),
                                                      ("coffee-left.png", "coffee-right.png"),
                                                      ("astronaut-left.png", "astronaut-right.png"),
                                                      ("astronaut-right.png", "astronaut.png")]}
    assert untouched and all(after[k] == before[k] for k in untouched)
    assert set(after) == untouched | {frozenset(("astronaut-right.png", "astronaut.png")),
                                      frozenset(("rocket.png", "camera.png"))}

    groups = json.loads((out / "groups.json").read_text())["groups"]
    members = [sorted(Path(m["path"]).name for m in g["members"]) for g in groups]
    assert ["camera.png", "rocket.png"] in members
    assert not any("coffee-right.png" in g for g in members)

    said = json.loads((out / "decisions.json").read_text())
    assert (said["applied"], said["duplicate"], said["not_duplicate"]) == (4, 2, 2)
    assert (said["hidden"], said["added"]) == (2, 1)
    assert [(Path(s["a"]).name, s["line"]) for s in said["stale"]] == [("gone.png", 6)]
    assert [s["line"] for s in said["skipped"]] == [7] and "unknown decision 'maybe'" in said["skipped"][0]["reason"]
    assert "4 applied" in printed and "1 stale" in printed and "gone.png" in printed and "line 7" in printed
    # The review page carries the same counts, and names the method of a confirmed pair.
    page = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>',
                                (out / "report.html").read_text(), re.S)[1])
    assert page["decisions"] == said
    names = [Path(item["d"]).name for item in page["items"]]
    confirmed = [p for p in page["pairs"] if {names[p[0]], names[p[1]]} == {"rocket.png", "camera.png"}]
    assert [page["methods"][p[3]] for p in confirmed] == [DECISION]

    # A later run without decisions leaves no decisions.json of the earlier one behind.
    assert find_main([f, "--out", str(out), "--method", "keypoints", "-q"]) == 0
    assert not (out / "decisions.json").exists()
    assert by_names(read_csv(out / "pairs.csv")) == before


def test_decisions_as_truth(halves):
    """--truth decisions.csv: only the pairs the review lists are labelled."""
    root, folder, _ = halves
    f = str(folder)
    decisions = write_csv(root / "truth-decisions.csv", ("a", "b", "decision"), [
        (f"{f}/coffee.png", f"{f}/coffee-left.png", "duplicate"),
        (f"{f}/coffee.png", f"{f}/coffee-right.png", "duplicate"),
        (f"{f}/astronaut-left.png", f"{f}/astronaut.png", "not_duplicate"),
    ])
    out = root / "scored"
    assert find_main([f, "--out", str(out), "--method", "keypoints", "-q", "--truth", str(decisions)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # 3 labelled pairs found, 2 of them true: every other found pair (4 more) counts neither way.
    assert metrics["true_pairs"] == 2 and metrics["unmatched_truth_rows"] == 0
    from simbench.find.outputs import read_evidence
    from simbench.find.truth import read_truth, score_run
    from simbench.types import ScoredPairs

    items, _, _ = read_evidence(out / "evidence.npz")
    truth = read_truth(decisions, items)
    assert not truth.complete and len(truth.pairs) == 2 and len(truth.negatives) == 1
    position = {Path(d).name: k for k, d in enumerate(items)}
    rows = read_csv(out / "pairs.csv")
    assert len(rows) == 6
    found = ScoredPairs(np.array([position[Path(r["a"]).name] for r in rows]),
                        np.array([position[Path(r["b"]).name] for r in rows]),
                        np.array([float(r["score"]) for r in rows]))
    m = score_run(found, truth, 0.0)  # every found pair called a duplicate
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert m["counts"] == {"called": 3, "true_called": 2, "true_pairs": 2}
    # The same two true pairs as a complete truth.csv: every other found pair is a false one.
    complete = write_csv(root / "truth.csv", ("a", "b"), [(f"{f}/coffee.png", f"{f}/coffee-left.png"),
                                                         (f"{f}/coffee.png", f"{f}/coffee-right.png")])
    m = score_run(found, read_truth(complete, items), 0.0)
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 6), 1.0)


def test_calibrate_on_decisions_uses_the_listed_pairs_only(tmp_path):
    from simbench.find.calibration import fit_from_runs
    from simbench.find.items import Item
    from simbench.find.outputs import write_evidence
    from simbench.types import ScoredPairs

    items = [Item(None, f"/photos/{k}.jpg", f"/photos/{k}.jpg", None, None, str(k), b"", f"{k}:0")
             for k in range(12)]
    a, b = np.arange(0, 12, 2), np.arange(1, 12, 2)  # 6 pairs: (0, 1), (2, 3), ...
    raw = {"hash": ScoredPairs(a, b, np.linspace(0.1, 0.9, 6))}
    write_evidence(tmp_path / "evidence.npz", raw, items, {"hash": {"stage": "hash", "signal": "score"}})
    labelled = [(0, 1, "not_duplicate"), (4, 5, "duplicate"), (6, 7, "not_duplicate"), (8, 9, "duplicate"),
                (10, 11, "duplicate")]
    decisions = write_csv(tmp_path / "decisions.csv", ("a", "b", "decision"),
                          [(f"/photos/{x}.jpg", f"/photos/{y}.jpg", d) for x, y, d in labelled])
    (table,) = fit_from_runs([(tmp_path, decisions)])
    assert (table.pairs, table.true) == (5, 3)  # pair (2, 3) is not labelled: left out
    truth = write_csv(tmp_path / "truth.csv", ("a", "b"), [(f"/photos/{x}.jpg", f"/photos/{y}.jpg")
                                                          for x, y, d in labelled if d == "duplicate"])
    (table,) = fit_from_runs([(tmp_path, truth)])
    assert (table.pairs, table.true) == (6, 3)  # truth.csv: every pair not listed is a false one


# ---------------------------------------------------------------------------------------------------
# Bad files and rows


def test_unusable_files_stop_the_run_with_a_reason(tmp_path, halves, capsys):
    _, folder, _ = halves
    files = {
        "no-decision-column.csv": "a,b,verdict\nx.png,y.png,duplicate\n",
        "empty.csv": "",
        "binary.csv": b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00garbage",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out = tmp_path / f"out-{name}"
        code = find_main([str(folder), "--out", str(out), "--method", "keypoints", "-q", "--decisions", str(path)])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith("simbench find: ") and name in err and "Traceback" not in err, err
        assert not (out / "pairs.csv").exists()  # stopped before reading any image
    assert "needs columns a,b,decision" in str(pytest.raises(DecisionsError, read_decisions,
                                                             tmp_path / "no-decision-column.csv").value)
    with pytest.raises(SystemExit) as exit_info:
        find_main([str(folder), "--out", str(tmp_path / "x"), "--decisions", str(tmp_path / "missing.csv")])
    assert exit_info.value.code == 2 and "--decisions: no such file" in capsys.readouterr().err


def test_bad_rows_are_skipped_with_their_reason(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_text("\ufeffA, B ,Decision\n"  # a spreadsheet's byte-order mark, upper case, spaces
                    "x.png,y.png, Not Duplicate \n"
                    "x.png,z.png,dupe\n"
                    ",z.png,duplicate\n"
                    "y.png,x.png,duplicate\n"  # contradicts line 2 (the same pair)
                    "z.png,./z.png,duplicate\n"  # one image twice
                    "y.png,z.png,not-duplicate\n"
                    "y.png,z.png,not_duplicate\n"  # the same decision again: counted once
                    "x.png\n"  # too few cells
                    "w.png,x.png,duplicate\n")  # w.png is not in the run: stale
    parsed = read_decisions(path)
    displays = [str(tmp_path / n) for n in ("x.png", "y.png", "z.png")]
    decided = match_decisions(parsed, displays)
    reasons = dict(decided.problems)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 9]
    assert "unknown decision 'dupe'" in reasons[3] and "empty" in reasons[4] and "empty" in reasons[9]
    assert "contradicts" in reasons[2] and "lines 2, 5" in reasons[5]
    assert "same image" in reasons[6]
    assert decided.duplicate.tolist() == [] and decided.not_duplicate.tolist() == [[1, 2]]
    assert [(r.line, r.a) for r in decided.stale] == [(10, "w.png")]
    assert decided.applied == 1


# ---------------------------------------------------------------------------------------------------
# Decisions.apply against a plain implementation


def plain_apply(pairs: FusedPairs, duplicate, not_duplicate) -> dict:
    out = {}
    for k in range(len(pairs)):
        key = (int(pairs.a[k]), int(pairs.b[k]))
        out[key] = (float(pairs.score[k]), str(pairs.method[k]), tuple(float(v[k]) for v in pairs.per_stage.values()))
    for key in map(tuple, not_duplicate.tolist()):
        out.pop(key, None)
    for key in map(tuple, duplicate.tolist()):
        stages = out[key][2] if key in out else (0.0,) * len(pairs.per_stage)
        out[key] = (1.0, DECISION, stages)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_apply_matches_a_plain_implementation(seed):
    from simbench.find.decisions import Decisions

    rng = np.random.default_rng(seed)
    n = 30
    keys = np.unique(rng.integers(0, n * n, 120))
    a, b = keys // n, keys % n
    keep = a < b
    a, b = a[keep], b[keep]
    pairs = FusedPairs(a, b, rng.random(len(a)), rng.choice(np.array(["keypoints", "cnn"], object), len(a)),
                       {"keypoints": rng.random(len(a)), "cnn": rng.random(len(a))}, rng.random(len(a)) > 0.3)

    def some(count):  # half of them pairs the run found, half perhaps not
        x = rng.integers(0, n, (count, 2))
        x = x[x[:, 0] != x[:, 1]]
        found = np.stack([a, b], 1)[rng.integers(0, len(a), count)]
        return np.unique(np.concatenate([np.sort(x, 1), found]), axis=0)

    duplicate, not_duplicate = some(8), some(8)
    both = (duplicate[:, None] == not_duplicate[None]).all(-1)
    duplicate = duplicate[~both.any(1)]  # a pair has one decision (match_decisions drops contradictions)
    decided = Decisions("d.csv", duplicate, not_duplicate, [], [])
    got = decided.apply(pairs, n)
    keys = got.a * n + got.b
    assert (np.diff(keys) > 0).all()  # still sorted by key, as linking needs
    table = {(int(x), int(y)): (float(s), str(m), tuple(float(v[k]) for v in got.per_stage.values()))
             for k, (x, y, s, m) in enumerate(zip(got.a, got.b, got.score, got.method))}
    assert table == plain_apply(pairs, duplicate, not_duplicate)
    assert got.calibrated[got.method == DECISION].all()
    found = set(zip(a.tolist(), b.tolist()))
    assert decided.hidden == sum(tuple(p) in found for p in not_duplicate.tolist())
    assert decided.added == sum(tuple(p) not in found for p in duplicate.tolist())


def test_the_review_page_says_what_the_decisions_did(halves, tmp_path):
    """In Chromium: the page of a run with decisions states the counts and the stale rows."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    root, folder, _ = halves
    decisions = write_csv(tmp_path / "decisions.csv", ("a", "b", "decision"), [
        (f"{folder}/coffee.png", f"{folder}/coffee-right.png", "not_duplicate"),
        (f"{folder}/gone.png", f"{folder}/coffee.png", "duplicate")])
    out = tmp_path / "out"
    args = [str(folder), "--out", str(out), "--method", "keypoints", "-q", "--decisions", str(decisions)]
    assert find_main(args) == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").as_uri())
            page.wait_for_selector("#status:not(:empty)")
            stats = page.inner_text("#stats")
        finally:
            browser.close()
    assert not errors
    assert "decisions applied: 1 (1 pairs hidden), 1 stale" in stats and "gone.png" in stats, stats


def test_metrics_json_writes_nan_as_null_at_any_depth():
    import json
    import math

    from simbench.find.pipeline import _nan_as_null

    metrics = {"uap": math.nan, "intervals": {"uap": [math.nan, 0.5], "recall": (0.1, math.nan)}, "n": 3,
               "per_label_found_at_p90": {"crop": [1, 2]}}
    text = json.dumps(_nan_as_null(metrics), allow_nan=False)  # strict JSON: raises on any NaN left
    assert json.loads(text) == {"uap": None, "intervals": {"uap": [None, 0.5], "recall": [0.1, None]}, "n": 3,
                                "per_label_found_at_p90": {"crop": [1, 2]}}
