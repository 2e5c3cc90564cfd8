"""Performance-regression check: simbench's hot paths against a reference timed in the same run.

    python benchmarks/perf_check.py [--repeats 5] [--only NAME ...] [--json .benchmarks/perf_check.json]
    python benchmarks/perf_check.py --suggest-floors      # print floors at 45% of today's ratios

The machines are shared and noisy, so nothing here is a time: each check times simbench's implementation
and a reference on the same data, interleaved round by round (the order alternating), and keeps the
ratio reference_time / simbench_time of every round. The check passes when the median ratio is at least
the floor stored in benchmarks/perf_floors.json. Floors sit well below the typical ratio (about 45%), so a
loaded machine passes and a real regression (simbench's path becoming a few times slower) fails.
Each check also asserts that both sides give the same answer, so a "fast" path that does nothing fails.

Checks:
  ahash_vs_imagehash  batched average hash (backend="fast", one process) vs ImageHash per image, on 40
                      640x480 JPEGs of real photos
  exact_vs_faiss      ExactMatcher.self_join vs faiss IndexBinaryFlat, 20k random 64-bit codes, radius 8
  lsh_vs_exact        MultiIndexHashMatcher (calibrated) vs ExactMatcher, 30k structured 512-bit codes
                      (biased bits, a fifth near copies), radius 31

Exit status 1 when a check is below its floor (the CI signal); tests/test_perf_regression.py runs the same
checks under pytest-benchmark, whose --benchmark-json keeps the timings for trends.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, timed  # noqa: E402

FLOORS = Path(__file__).with_name("perf_floors.json")
#: A suggested floor is this fraction of the measured ratio: room for a loaded machine, not for a regression.
FLOOR_FRACTION = 0.45


# ------------------------------------------------------------------------------------------------- checks


@dataclass
class Check:
    """simbench's implementation (`fast`) against a `reference`, both called on what `setup` returns."""

    name: str
    description: str
    setup: Callable[[Path], Any]
    fast: Callable[[Any], Any]
    reference: Callable[[Any], Any]
    agree: Callable[[Any, Any], None]  # raises AssertionError when the two results differ


def _photos_jpegs(folder: Path, n: int = 40, size=(640, 480)) -> list[Path]:
    """n small JPEGs cut from scikit-image's sample photographs (each with its own crop and flip)."""
    import skimage.data
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    bases = []
    for name in ("astronaut", "coffee", "rocket", "chelsea", "camera", "moon", "coins", "brick", "cat"):
        try:
            bases.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        except Exception:  # a sample that would need a download: skip it
            continue
    paths = []
    for i in range(n):
        im = bases[i % len(bases)]
        w, h = im.size
        x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        im = im.crop((x, y, x + 3 * w // 4, y + 3 * h // 4)).resize(size)
        if i % 2:
            im = ImageOps.mirror(im)
        path = folder / f"img_{i:03d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def _hash_setup(folder: Path):
    return _photos_jpegs(folder)


def _ahash(backend: str):
    from simbench.features.hashes import HashExtractor

    extractor = HashExtractor("ahash", backend=backend, workers=1)
    return lambda paths: extractor.extract(paths).features.words


def _hash_agree(fast, ref) -> None:
    # the fast path decodes JPEGs at reduced size: codes agree with ImageHash to within a bit or two
    assert fast.shape == ref.shape, (fast.shape, ref.shape)
    diff = np.unpackbits((fast ^ ref).view(np.uint8)).reshape(len(fast), -1).sum(axis=1)
    assert diff.mean() <= 4, f"fast ahash differs from ImageHash by {diff.mean():.1f} bits on average"


def _codes_setup(_folder: Path, n: int = 20_000, planted: int = 500):
    """Random 64-bit codes, with `planted` near copies (<= 6 bits flipped) so there are pairs to find."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 1), dtype=np.uint64, endpoint=True)
    src = rng.choice(n, planted, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), planted, replace=False)
    for s, d in zip(src, dst):
        flips = rng.choice(64, int(rng.integers(0, 7)), replace=False)
        codes[d, 0] = codes[s, 0] ^ np.uint64(sum(1 << int(b) for b in flips))
    return codes


def _structured_setup(_folder: Path, n: int = 30_000, bits: int = 512, copies: float = 0.2):
    """512-bit codes like binary keypoint descriptors: every bit with its own bias (as BRISK's comparisons
    have), and a fifth of the rows near copies of others (3% of the bits flipped, ~15 of 512)."""
    from simbench.types import pack_bits

    rng = np.random.default_rng(2)
    bias = rng.beta(4, 4, size=bits)  # per-bit probability of a 1
    n_src = int(n * (1 - copies))
    src = rng.random((n_src, bits)) < bias
    near = src[rng.integers(0, n_src, n - n_src)] ^ (rng.random((n - n_src, bits)) < 0.03)
    return pack_bits(np.concatenate([src, near]))


def _exact(radius: int):
    from simbench.match.exact import ExactMatcher

    m = ExactMatcher(threads=0)
    return lambda codes: m.self_join(codes, radius)


def _faiss(radius: int):
    from simbench.match.faiss_peer import FaissMatcher

    m = FaissMatcher(threads=0)
    return lambda codes: m.self_join(codes, radius)


def _lsh(radius: int):
    from simbench.match.lsh import MultiIndexHashMatcher

    m = MultiIndexHashMatcher(pieces=0, permutation="calibrated")
    return lambda codes: m.self_join(codes, radius)


def _pairs_agree(fast, ref) -> None:
    f, r = fast.sorted(), ref.sorted()
    assert len(f) == len(r), f"{len(f)} pairs against {len(r)}"
    assert np.array_equal(f.a, r.a) and np.array_equal(f.b, r.b), "different pairs"
    assert np.array_equal(f.dist.astype(np.int64), r.dist.astype(np.int64)), "different distances"


CHECKS: dict[str, Check] = {
    c.name: c for c in (
        Check("ahash_vs_imagehash", "batched ahash (1 process) vs ImageHash ahash, 40 JPEGs 640x480",
              _hash_setup, lambda p: _ahash("fast")(p), lambda p: _ahash("imagehash")(p), _hash_agree),
        Check("exact_vs_faiss", "ExactMatcher vs faiss IndexBinaryFlat self-join, 20k x 64 bits, radius 8",
              _codes_setup, lambda c: _exact(8)(c), lambda c: _faiss(8)(c), _pairs_agree),
        Check("lsh_vs_exact", "MultiIndexHashMatcher vs ExactMatcher self-join, 30k x 512 bits, radius 31",
              _structured_setup, lambda c: _lsh(31)(c), lambda c: _exact(31)(c), _pairs_agree),
    )
}


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    name: str
    description: str
    ratio: float  # median over rounds of reference_s / fast_s
    ratios: list[float]
    fast_s: list[float]
    reference_s: list[float]
    floor: float | None = None
    passed: bool | None = None
    extra: dict = field(default_factory=dict)


def measure(check: Check, repeats: int = 5, data: Any = None,
            fast: Callable | None = None, reference: Callable | None = None) -> Measurement:
    """Ratio reference/fast of `repeats` interleaved rounds, after one untimed warm-up of each side
    (numba compilation, imports, file cache) that also checks they agree.

    data: what check.setup made (None: made here, in a temporary folder); fast / reference replace the
    check's callables (the test of the check itself slows one down on purpose).
    """
    if data is None:
        with tempfile.TemporaryDirectory(prefix="simbench-perf-") as tmp:
            return measure(check, repeats, check.setup(Path(tmp)), fast, reference)
    fast = fast or check.fast
    reference = reference or check.reference
    check.agree(fast(data), reference(data))
    t_fast, t_ref = [], []
    for r in range(max(1, int(repeats))):
        # alternate which side goes first, so a drift in machine load hits both alike
        order = ((fast, t_fast), (reference, t_ref)) if r % 2 == 0 else ((reference, t_ref), (fast, t_fast))
        for fn, times in order:
            times.append(timed(fn, data)[0])
    ratios = [ref / max(f, 1e-9) for f, ref in zip(t_fast, t_ref)]
    return Measurement(check.name, check.description, statistics.median(ratios), ratios, t_fast, t_ref)


def load_floors(path: Path = FLOORS) -> dict[str, float]:
    data = json.loads(Path(path).read_text())
    return {k: float(v["floor"]) for k, v in data["floors"].items()}


def judge(m: Measurement, floors: dict[str, float]) -> Measurement:
    m.floor = floors.get(m.name)
    m.passed = None if m.floor is None else m.ratio >= m.floor
    return m


def run_checks(names=None, repeats: int = 5, floors: dict[str, float] | None = None) -> list[Measurement]:
    floors = load_floors() if floors is None else floors
    return [judge(measure(CHECKS[n], repeats), floors) for n in (names or list(CHECKS))]


def table(results: list[Measurement]) -> str:
    lines = [f"{'check':<20} {'ratio':>8} {'floor':>7}  {'status':<6} rounds (reference/simbench)"]
    for m in results:
        status = "-" if m.passed is None else ("ok" if m.passed else "FAIL")
        floor = "-" if m.floor is None else f"{m.floor:.2f}"
        rounds = " ".join(f"{r:.2f}" for r in m.ratios)
        lines.append(f"{m.name:<20} {m.ratio:>8.2f} {floor:>7}  {status:<6} {rounds}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per check (median ratio)")
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run only these checks")
    parser.add_argument("--floors", type=Path, default=FLOORS, help="stored floors (JSON)")
    parser.add_argument("--json", type=Path, help="write the measurements here (for trends)")
    parser.add_argument("--suggest-floors", action="store_true",
                        help=f"print floors at {FLOOR_FRACTION:.0%}% of the measured ratios instead of judging")  # %% for argparse
    args = parser.parse_args(argv)
    results = run_checks(args.only, args.repeats, load_floors(args.floors))
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "repeats": args.repeats,
                                         "checks": [asdict(m) for m in results]}, indent=2))
    if args.suggest_floors:
        print(json.dumps({m.name: round(FLOOR_FRACTION * m.ratio, 2) for m in results}, indent=2))
        return 0
    failed = [m.name for m in results if m.passed is False]
    if failed:
        print(f"\nperformance regression: {', '.join(failed)} below the stored floor ({args.floors})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
