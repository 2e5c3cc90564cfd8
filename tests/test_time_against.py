"""benchmarks/time_against.py's parts: the worktree of the older commit (its conf/ and kernels/ where its package
looks) and the seconds read from bench_find's output. The timed runs themselves are the benchmark's, not a test's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.time_against import seconds_of, worktree  # noqa: E402


def test_seconds_of_reads_the_cascade_line():
    output = ("# x86_64, 2 CPUs usable, python 3.11.7; overrides []\n"
              "method=cascade  images=2000  seconds=131.062  images_per_s=15.260  rerun_seconds=11.939  cpus=2\n")
    assert seconds_of(output) == 131.062
    with pytest.raises(RuntimeError, match="no 'method=cascade"):
        seconds_of("method=cnn  images=2000  seconds=12.0\n")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_worktree_checks_out_the_commit_with_its_conf_and_kernels_in_the_package(tmp_path):
    repo = tmp_path / "repo"
    for path, text in (("conf/find.yaml", "old"), ("kernels/k.cu", "k"), ("simbench/__init__.py", "")):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "old")
    old = _git(repo, "rev-parse", "--short", "HEAD")
    (repo / "conf/find.yaml").write_text("new")
    _git(repo, "commit", "-q", "-am", "new")

    root = worktree(old, tmp_path / "work", repo)
    assert root == tmp_path / "work" / f"worktree-{old}"
    assert (root / "simbench" / "conf" / "find.yaml").read_text() == "old"  # the commit's, through the link
    assert (root / "simbench" / "kernels" / "k.cu").read_text() == "k"
    assert (repo / "conf/find.yaml").read_text() == "new"  # the checkout itself untouched
    assert worktree(old, tmp_path / "work", repo) == root  # made once, then reused
