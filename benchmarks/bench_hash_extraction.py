"""Hash extraction throughput on 1280x960 JPEGs of real photos: the batched path against ImageHash.

    python benchmarks/bench_hash_extraction.py [--n 200] [--repeat 3] [--out results/hash_extraction.md]

Builds n JPEGs (quality 90) from scikit-image's sample photographs, each resized and cropped to 1280x960 with
its own crop offset, flip and brightness, in a temporary folder. Then, in the same run and interleaved round
by round (the machine is shared and noisy: compare ratios, not absolute figures):

- ImageHash phash per image on one core, as users call it: imagehash.phash(Image.open(path));
- JPEG decoding alone at 1/8 scale (PIL draft), one core: the floor of any per-image pipeline;
- HashExtractor(backend="fast") for phash, ahash, dhash and whash_haar, on 1 worker and on all cores,
  each a full extract() call (process start-up included).

Prints img/s (best round), the wall-clock ratio to ImageHash phash (within each round, median over rounds),
CPU time per image and its ratio, the agreement of the fast codes with ImageHash's, and writes it all to --out
with the CPU model, the load average and the command.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import available_cores, cpu_model, load_average  # noqa: E402
from simbench.features.hashes import HashExtractor  # noqa: E402
from simbench.types import unpack_bits  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "camera", "moon", "coins", "brick", "grass", "gravel", "cat")
FAST = ("phash", "ahash", "dhash", "whash_haar")


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct 1280x960 JPEGs (quality 90) cut from scikit-image's photos."""
    import skimage.data

    rng = np.random.default_rng(seed)
    bases = []
    for name in PHOTOS:
        try:
            bases.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        except Exception:  # a photo that needs a download: skip it
            continue
    paths = []
    for i in range(n):
        im = bases[i % len(bases)]
        # scale to cover 1280x960 with some margin, then crop at a random offset
        w, h = im.size
        s = max(1280 / w, 960 / h) * rng.uniform(1.0, 1.3)
        im = im.resize((max(1280, round(w * s)), max(960, round(h * s))), Image.Resampling.LANCZOS)
        x = int(rng.integers(0, im.size[0] - 1280 + 1))
        y = int(rng.integers(0, im.size[1] - 960 + 1))
        im = im.crop((x, y, x + 1280, y + 960))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
        path = folder / f"photo_{i:04d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def imagehash_phash(paths):
    import imagehash

    return [imagehash.phash(Image.open(p)) for p in paths]


def draft_decode(paths):
    for p in paths:
        with Image.open(p) as im:
            im.draft("RGB", (im.size[0] // 8, im.size[1] // 8))
            im.load()


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def effective_cores(cores: int, n: int = 3_000_000) -> float:
    """How many cores this run really gets: `cores` copies of a pure-Python loop at once against one alone."""
    import multiprocessing as mp

    if cores <= 1:
        return 1.0
    t0 = time.perf_counter()
    _spin(n)
    alone = time.perf_counter() - t0
    methods = mp.get_all_start_methods()
    with mp.get_context("fork" if "fork" in methods else None).Pool(cores) as pool:
        pool.map(_spin, [1000] * cores)  # start the workers first
        t0 = time.perf_counter()
        pool.map(_spin, [n] * cores, chunksize=1)
        together = time.perf_counter() - t0
    return cores * alone / together


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of 1280x960 JPEGs")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the best round")
    ap.add_argument("--out", default=str(ROOT / "results" / "hash_extraction.md"))
    ap.add_argument("--no-agreement", action="store_true", help="skip the ImageHash agreement figures")
    args = ap.parse_args(argv)
    cores = available_cores()

    with tempfile.TemporaryDirectory(prefix="simbench_hashbench_") as tmp:
        paths = make_photos(Path(tmp), args.n)
        # warm the page cache and imports once
        imagehash_phash(paths[:2])
        HashExtractor("phash", workers=1).extract(paths[:2])

        cases = [("ImageHash phash, per image (1 core)", lambda: imagehash_phash(paths)),
                 ("JPEG decode only, PIL draft 1/8 (1 core)", lambda: draft_decode(paths))]
        fast_codes = {}
        for alg in FAST:
            for workers, label in ((1, "1 worker"), (0, f"all cores ({cores})")):
                def run(alg=alg, workers=workers):
                    fast_codes[alg] = HashExtractor(alg, workers=workers).extract(paths)
                cases.append((f"simbench fast {alg}, {label}", run))
        cases.append((f"simbench phash compat=True, all cores ({cores})",
                      lambda: HashExtractor("phash", compat=True, workers=0).extract(paths)))

        load_before, cores_before = f"{load_average():.1f}", effective_cores(cores)
        wall = {label: [] for label, _ in cases}
        cpu = {label: [] for label, _ in cases}
        for _ in range(args.repeat):
            for label, fn in cases:
                c0, t0 = _cpu_seconds(), time.perf_counter()
                fn()
                wall[label].append(time.perf_counter() - t0)
                cpu[label].append(_cpu_seconds() - c0)
        load_after, cores_after = f"{load_average():.1f}", effective_cores(cores)

        agreement = {}
        if not args.no_agreement:
            for alg in FAST:
                ref = HashExtractor(alg, backend="imagehash", workers=0).extract(paths).features
                fast = fast_codes[alg].features
                hd = (unpack_bits(ref.words, ref.bits) != unpack_bits(fast.words, fast.bits)).sum(1)
                agreement[alg] = (hd.mean(), float(np.median(hd)), float(np.percentile(hd, 95)), int(hd.max()),
                                  ref.bits)

    ref = cases[0][0]
    lines = ["| work | img/s | vs ImageHash phash, wall | CPU ms / img | vs ImageHash phash, CPU |",
             "|---|---:|---:|---:|---:|"]
    for label, _ in cases:
        rate = args.n / min(wall[label])
        # the ratio within each round (measured minutes apart at most), then the median over rounds
        ratio = float(np.median(np.array(wall[ref]) / np.array(wall[label])))
        cpu_ms = 1e3 * min(cpu[label]) / args.n
        lines.append(f"| {label} | {rate:.0f} | {ratio:.2f}x | {cpu_ms:.2f} | {min(cpu[ref]) / min(cpu[label]):.2f}x |")
    table = "\n".join(lines)
    agree_lines = []
    if agreement:
        agree_lines = ["| algorithm | bits | mean Hamming | median | 95th pct | max |",
                       "|---|---:|---:|---:|---:|---:|"]
        for alg, (mean, med, p95, mx, bits) in agreement.items():
            agree_lines.append(f"| {alg} | {bits} | {mean:.2f} | {med:.0f} | {p95:.0f} | {mx} |")
    command = "python benchmarks/bench_hash_extraction.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import imagehash
    import PIL

    report = [
        "# Hash extraction throughput",
        "",
        f"{args.n} JPEGs of 1280x960 (quality 90) cut from scikit-image photos; {args.repeat} interleaved rounds; "
        "every simbench figure is a whole `HashExtractor.extract()` call, worker start-up included.",
        "",
        f"- CPU: {cpu_model()}, {cores} cores available",
        f"- Python {platform.python_version()}, Pillow {PIL.__version__}, ImageHash {imagehash.__version__}, "
        f"numpy {np.__version__}",
        f"- command: `{command.strip()}`",
        f"- load average (1 min) before / after: {load_before} / {load_after}; cores this run really got (a "
        f"pure-Python loop on {cores} processes against one) before / after: {cores_before:.2f} / {cores_after:.2f}",
        "",
        "img/s: wall clock, best round. vs ImageHash, wall: the throughput ratio within each round, median over "
        "rounds. CPU ms / img: this process and its workers together, best round; vs ImageHash, CPU: the ratio of "
        "CPU time per image, which is what the throughput ratio becomes per free core (ImageHash uses one). "
        "The all-cores rows can only beat 1 worker by as much as the cores this run really got.",
        "",
        table,
        "",
    ]
    if agree_lines:
        report += ["Agreement of the fast codes (compat=False) with ImageHash on the same photos, in bits:", "",
                   *agree_lines, "",
                   "compat=True reproduces ImageHash bit for bit (tests/test_hashes.py).", ""]
    text = "\n".join(report)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
