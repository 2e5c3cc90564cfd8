"""Where a first `simbench find` spends its time, this checkout beside an earlier commit's code (default 64ceccb,
the code before issue #11): the issue asks what each addition costs.

    python benchmarks/time_phases.py [--commit 64ceccb] [--work DIR]

On bench_find.py throughput's 2,000 pictures, each code in a fresh process (the commit's first, in the worktree
time_against.py keeps) runs find from an empty index with the pipeline's steps wrapped in wall clocks: each stage's
extraction (over all its batches), each stage's own pairs, each look at pairs other stages propose, the overlap
agreement, the shared-frame windows, the scoring and the outputs; `other` is the rest of the run (listing and
reading the files, linking). Steps the older code lacks show "-"; steps under 0.05 s in both are left out (a
stage that proposes no pairs of its own). The CNN's own pairs are matched beside the keypoints' (threads), and
64ceccb's `score` holds its stages' matching, so the steps can add up to more than the whole. Seconds are the
machine's of that moment: compare the two columns of one table, not tables of different runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: simbench.find.pipeline's steps timed, and whether one call per stage (named by its first argument's `name`).
STEPS = {"extract_into_store": True, "stage_pairs": True, "verify_proposed": True, "agreed_over_overlap": False,
         "window_views": False, "score": False, "write_outputs": False}


def child(work: Path) -> dict:
    """In the process whose PYTHONPATH names the code to time: {step: seconds} of one find from an empty index."""
    import functools
    import shutil
    import time
    from collections import Counter

    from simbench.data.synthetic import SyntheticDataset
    from simbench.find import cascade, pipeline

    seconds: Counter = Counter()

    def clocked(name: str, per_stage: bool):
        fn = getattr(pipeline, name)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[f"{name} ({args[0].name})" if per_stage else name] += time.perf_counter() - start
        return run

    for name, per_stage in STEPS.items():
        if hasattr(pipeline, name):  # the older code has fewer steps
            setattr(pipeline, name, clocked(name, per_stage))
    ds = SyntheticDataset(n_references=150, n_distractors=50, seed=0).load(progress=False)
    shutil.rmtree(work, ignore_errors=True)
    cfg = cascade.make_config("cascade", [])
    start = time.perf_counter()
    pipeline.find([ds.root / "images"], work / "out", cfg, index=work / "index", progress=False)
    total = time.perf_counter() - start
    return {"total": total, **seconds}


def phases(root: Path, work: Path) -> dict:
    """child() of the code at `root`, in a fresh process."""
    from benchmarks.time_against import run_with_code

    out = run_with_code(root, str(Path(__file__).resolve()), "--child", "--work", str(work))
    return json.loads(out.strip().splitlines()[-1])


def table(columns: dict[str, dict]) -> str:
    """Markdown: one row per step (the whole run first, `other` last), one column per code."""
    names = list(columns)
    longest = {s: max(c.get(s, 0.0) for c in columns.values()) for c in columns.values() for s in c if s != "total"}
    steps = sorted((s for s in longest if longest[s] >= 0.05), key=lambda s: -longest[s])  # not the empty steps
    rows = [f"| step | {' | '.join(f'{n} (s)' for n in names)} |", "|---|" + "---:|" * len(names)]
    cell = lambda c, s: f"{c[s]:.1f}" if s in c else "-"  # noqa: E731
    rows.append(f"| whole run | {' | '.join(cell(columns[n], 'total') for n in names)} |")
    rows += [f"| {s} | {' | '.join(cell(columns[n], s) for n in names)} |" for s in steps]
    other = [columns[n]["total"] - sum(v for k, v in columns[n].items() if k != "total") for n in names]
    rows.append(f"| other (reading, linking; < 0 where steps overlapped) | {' | '.join(f'{o:.1f}' for o in other)} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default=None, help="the code to compare with (default: time_against.py's, 64ceccb)")
    parser.add_argument("--work", type=Path, default=None, help="the worktree's and the runs' folder (default: "
                        "time_against.py's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # imports only the timed code's simbench (PYTHONPATH), not this checkout's benchmarks
        print(json.dumps(child(args.work)))
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import cpu_model, load_average
    from benchmarks.time_against import BEFORE_ISSUE, WORK, worktree

    commit, work = args.commit or BEFORE_ISSUE, args.work or WORK
    before = worktree(commit, work)
    print(f"# {cpu_model()}, load {load_average():.1f}; {commit} in {before}, then {ROOT}", flush=True)
    columns = {commit: phases(before, work / f"phases-{commit}"), "this checkout": phases(ROOT, work / "phases-this")}
    print(table(columns))


if __name__ == "__main__":
    main()
