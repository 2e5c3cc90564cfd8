"""Issue #11's time bar: a first `simbench find` over bench_find.py throughput's 2,000 pictures, this checkout against
an earlier commit's code (default 64ceccb, the code before the issue), in alternating pairs on one machine.

    python benchmarks/time_against.py [--commit 64ceccb] [--pairs 2] [--work DIR]

The commit is checked out once into a git worktree under --work (kept for later runs), with its conf/ and kernels/
linked into its package folder, where its code looks for them when it is not installed. Then, --pairs times, that
code's own `benchmarks/bench_find.py throughput cascade --quiet` and this checkout's, each in a fresh process with
its own work folder (a fresh index: every feature extracted, every output written), the commit's first. Prints each
run, each pair's ratio (this checkout / the commit) and their median: on a shared machine a ratio of adjacent runs
holds, single timings do not. results/find.md's throughput rows against 64ceccb were measured by the same two
commands.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_model, interleaved_ratio, load_average, ratio_text  # noqa: E402

#: The code before issue #11: the time bar's reference.
BEFORE_ISSUE = "64ceccb"
#: Where the commit's worktree and the runs' folders are kept (--work).
WORK = Path.home() / ".cache" / "simbench" / "time_against"


def worktree(commit: str, work: Path, repo: Path = ROOT) -> Path:
    """A checkout of `commit` in work/worktree-COMMIT (made once), its conf/ and kernels/ linked into its package."""
    root = work / f"worktree-{commit}"
    if not root.exists():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(root), commit], check=True,
                       capture_output=True)
    for name in ("conf", "kernels"):
        link = root / "simbench" / name
        if (root / name).is_dir() and not link.exists():
            link.symlink_to(Path("..") / name)
    return root


def seconds_of(output: str) -> float:
    """The seconds of the cascade's first run in `bench_find.py throughput` output."""
    found = re.search(r"^method=cascade\s.*?\bseconds=([0-9.]+)", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no 'method=cascade ... seconds=' line in bench_find's output:\n{output[-2000:]}")
    return float(found.group(1))


def run_with_code(root: Path, script: str, *args: str) -> str:
    """The stdout of `python SCRIPT ARGS` in a fresh process run in `root` with its code first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, script, *args], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed in {root}:\n{done.stderr[-2000:]}")
    return done.stdout


def throughput_seconds(root: Path, work: Path) -> float:
    """One `bench_find.py throughput cascade --quiet` of the code at `root`, in a fresh process: its first run's
    seconds."""
    return seconds_of(run_with_code(root, "benchmarks/bench_find.py", "throughput", "cascade", "--quiet", "--work",
                                    str(work)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default=BEFORE_ISSUE, help="the code to compare with (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=2, help="alternating pairs of runs")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    before = worktree(args.commit, args.work)
    print(f"# {cpu_model()}, load {load_average():.1f}; {args.commit} in {before} against {ROOT}", flush=True)
    measured = interleaved_ratio(lambda: throughput_seconds(before, args.work / f"work-{args.commit}"),
                                 lambda: throughput_seconds(ROOT, args.work / "work-this"), args.pairs,
                                 names=(args.commit, "this checkout"))
    print(f"\n| pair | {args.commit} (s) | this checkout (s) | ratio |\n|---|---:|---:|---:|")
    for k, (a, b, r) in enumerate(zip(measured["off"], measured["on"], measured["ratios"]), 1):
        print(f"| {k} | {a:.1f} | {b:.1f} | {r:.2f}x |")
    print(f"\n{args.commit} = off, this checkout = on: {ratio_text(measured)}")


if __name__ == "__main__":
    main()
