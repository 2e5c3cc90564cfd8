"""CI performance-regression checks: simbench's hot paths against references timed in the same run.

    pytest tests/test_perf_regression.py --benchmark-json=.benchmarks/perf.json   # keeps timings for trends

Each check (benchmarks/perf_check.py) compares the median ratio reference/simbench over interleaved rounds
with a floor stored in benchmarks/perf_floors.json; the ratios and floors also go into the benchmark JSON
(extra_info). The last tests show that the check does fail: on a deliberate slow-down, and on a fast path
that returns wrong answers.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_perf_check():
    spec = importlib.util.spec_from_file_location("perf_check", ROOT / "benchmarks" / "perf_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["perf_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


perf_check = _load_perf_check()
REPEATS = 5  # rounds per check: the median of 5 ratios shrugs off two disturbed rounds


def test_every_check_has_a_floor():
    floors = perf_check.load_floors()
    assert set(floors) == set(perf_check.CHECKS)
    assert all(0 < f for f in floors.values())


@pytest.mark.parametrize("name", list(perf_check.CHECKS))
def test_hot_path_keeps_its_lead_over_the_reference(name, benchmark, tmp_path):
    check = perf_check.CHECKS[name]
    data = check.setup(tmp_path)
    m = perf_check.judge(perf_check.measure(check, REPEATS, data), perf_check.load_floors())
    benchmark.extra_info.update(ratio=m.ratio, floor=m.floor, ratios=m.ratios, fast_s=m.fast_s,
                                reference_s=m.reference_s, description=m.description)
    benchmark.pedantic(check.fast, args=(data,), rounds=3, iterations=1)  # simbench's time, for trends
    assert m.passed, (f"{name}: median ratio {m.ratio:.2f} below the floor {m.floor} "
                      f"(rounds {', '.join(f'{r:.2f}' for r in m.ratios)}): a performance regression")


def test_check_fails_on_a_deliberate_slowdown(monkeypatch, tmp_path, capsys):
    """A 20x slower exact matcher (a sleep in its hot path) must turn the CI check red: 20x, because under the
    test suite's own load the ratio to faiss ran up to 4x its typical figure, which a 5x slowdown did not always
    bring under the floor."""
    from simbench.match.exact import ExactMatcher

    original = ExactMatcher.self_join

    def slowed(self, codes, radius):
        start = time.perf_counter()
        out = original(self, codes, radius)
        time.sleep(19 * (time.perf_counter() - start))
        return out

    monkeypatch.setattr(ExactMatcher, "self_join", slowed)
    out = tmp_path / "perf.json"
    rc = perf_check.main(["--only", "exact_vs_faiss", "--repeats", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "FAIL" in text and "performance regression: exact_vs_faiss" in text
    saved = json.loads(out.read_text())
    (check,) = saved["checks"]
    assert check["passed"] is False and check["ratio"] < check["floor"]
    assert len(check["ratios"]) == 3 and saved["machine"]["cpu"]


def test_check_fails_when_the_fast_path_gives_wrong_answers(monkeypatch):
    """Speed bought by dropping work is caught before any timing: both sides must agree."""
    from simbench.match.exact import ExactMatcher
    from simbench.types import Pairs

    monkeypatch.setattr(ExactMatcher, "self_join", lambda self, codes, radius: Pairs.empty())
    with pytest.raises(AssertionError, match="pairs against"):
        perf_check.measure(perf_check.CHECKS["exact_vs_faiss"], repeats=1)


def test_judge_and_table_report_pass_and_fail():
    m = perf_check.Measurement("x", "d", ratio=2.0, ratios=[1.9, 2.0, 2.1], fast_s=[1.0] * 3, reference_s=[2.0] * 3)
    assert perf_check.judge(m, {"x": 1.5}).passed is True
    assert perf_check.judge(m, {"x": 2.5}).passed is False
    assert perf_check.judge(m, {}).passed is None
    m.floor, m.passed = 2.5, False
    assert "FAIL" in perf_check.table([m])
