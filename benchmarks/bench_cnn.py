"""CNN embedding benchmarks (issue 4): torch eager vs the ONNX Runtime fast path, throughput per backbone,
pipeline vs bare forward, accuracy on the synthetic set, and random-hyperplane LSH vs exact cosine on 100k
embeddings. Prints Markdown tables.

    python benchmarks/bench_cnn.py                       # everything (~15 min on 2 quiet cores, 45 busy)
    python benchmarks/bench_cnn.py --write results/cnn.md
    python benchmarks/bench_cnn.py --sections runtime    # torch eager vs onnx, 200 real photos (~3 min)
    python benchmarks/bench_cnn.py --sections runtime --runtime-variants torch onnx onnx:batch_size=16
    python benchmarks/bench_cnn.py --sections throughput --backbones efficientnet_lite0 resnet50

Runtime comparison (section "runtime"): whole CnnExtractor.extract calls (decode in a worker process,
forward, normalisation) on ~200 different real photographs (JPEG, 1024 px long side, cut from the Plasma
wallpapers in /usr/share/wallpapers when installed and from scikit-image's photographs), EfficientNet-Lite0
with its ImageNet weights, find's default settings (batch 32, 1 decode worker) unless a variant says
otherwise. Variants run interleaved (A, B, A, B, ...), each round timing every variant once after a
warm-up, and each variant's speed is divided by torch eager's in the same round (the machine is shared:
ratios from adjacent measurements hold, absolute img/s do not). Embeddings are compared with torch
eager's (today's, bit-identical to earlier simbench versions) image by image: worst and median cosine.
The other sections use CnnExtractor's default runtime (onnx since the runtime option; the tables of those
sections in results/cnn.md dated before it are torch eager).

Method (the machines are shared and noisy, so every figure is a ratio measured side by side):
- bare forward: the model alone on a fixed float tensor batch (batch_size x 3 x 224 x 224), as many
  images as the pipeline gets; measured before and after the pipeline, and the mean is the reference;
- pipeline: CnnExtractor's loader and embed_batch on real 1280x960 JPEGs: worker processes decode
  (JPEG draft scaling), crop and resize, the main process normalises and runs the same model at the
  same batch size; steady state from the first batch's arrival, start-up (first batch decoded while the
  model waits; the worker processes started too the first time, simbench.processes) reported on its own;
- rounds: bare, pipeline, bare, pipeline, ..., bare; each pipeline round is divided by the mean of the
  bare rounds around it and the median ratio is reported with its range;
- torch.set_num_threads(2): the 2-core target machine. Decode workers share those 2 cores with the
  forward, so decoding must cost little CPU, not just run in parallel;
- weights: ImageNet where the file is on this machine (EfficientNet-Lite0 always), otherwise random
  (weights=none: the same arithmetic, so the same speed);
- LSH: clustered unit vectors (near-duplicate groups, unrelated pairs at cosine ~0.2 like real CNN
  features); recall = found / exact pairs among the first `--lsh-queries` rows; the exact self-join time
  is extrapolated from that exact range search (same blocked products, half of the N x N matrix).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_model, load_average  # noqa: E402

ALL_BACKBONES = ["efficientnet_lite0", "mobilenet_v3_small", "resnet18", "resnet34", "resnet50", "resnet101",
                 "resnet152"]
#: Images per throughput round: heavier models get fewer (their figures settle as fast).
IMAGES = {"efficientnet_lite0": 96, "mobilenet_v3_small": 128, "resnet18": 64, "resnet34": 48,
          "resnet50": 48, "resnet101": 32, "resnet152": 32}


# --------------------------------------------------------------------------------------------- inputs


def make_jpegs(folder: Path, n: int, size=(1280, 960)) -> list[Path]:
    """n camera-sized JPEGs (quality 90) cut from scikit-image's sample photographs."""
    import skimage.data
    from PIL import Image

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
    sources = [Image.fromarray(np.ascontiguousarray(getattr(skimage.data, k)()[..., :3])) for k in names]
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        s = 0.6 + 0.4 * ((i * 7919) % 97) / 96  # a different window each time, so no two files are equal
        box = (int((w - s * w) * ((i * 31) % 11) / 10), int((h - s * h) * ((i * 17) % 7) / 6))
        im = src.crop((box[0], box[1], box[0] + int(s * w), box[1] + int(s * h))).resize(size, Image.BICUBIC)
        path = folder / f"img{i:04d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def photo_jpegs(folder: Path, n: int, long_side: int = 1024, seed: int = 0) -> list[Path]:
    """n different JPEGs of real photographs, long side `long_side`: random crops (50-100 % of the largest
    crop of that aspect) at 4:3, 3:2, 16:9 or 3:4, quality 85-95, of the Plasma/Lomiri wallpapers in
    /usr/share/wallpapers (one picture per wallpaper, when installed) and scikit-image's colour photographs."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = []
    for d in sorted(Path("/usr/share/wallpapers").glob("*/contents/images")):
        files = [f for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
        if files:
            im = Image.open(max(files, key=lambda f: f.stat().st_size)).convert("RGB")
            im.thumbnail((2048, 2048), Image.Resampling.LANCZOS)  # enough pixels for any crop below
            sources.append(im)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "camera"):
        a = getattr(skimage.data, name)()
        sources.append(Image.fromarray(np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])))
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        aw, ah = [(4, 3), (3, 2), (16, 9), (3, 4)][rng.integers(4)]
        fit = min(w / aw, h / ah) * rng.uniform(0.5, 1.0)
        cw, ch = int(aw * fit), int(ah * fit)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        scale = long_side / max(cw, ch)
        im = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((round(cw * scale), round(ch * scale)),
                                                         Image.Resampling.LANCZOS)
        path = folder / f"photo{i:04d}.jpg"
        im.save(path, quality=int(rng.integers(85, 96)))
        paths.append(path)
    return paths


def weights_for(backbone: str) -> str:
    from simbench.features.cnn import expected_weights_file

    return "imagenet" if expected_weights_file(backbone).is_file() else "none"


# ----------------------------------------------------------------------------------------- throughput


def bare_forward(model, batch_size: int, n_images: int, image_size: int = 224) -> float:
    """Images per second of the model alone on a fixed random batch."""
    import torch

    x = torch.randn(batch_size, 3, image_size, image_size)
    batches = max(1, n_images // batch_size)
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        return batches * batch_size / (time.perf_counter() - start)


def pipeline(extractor, paths: list[Path]) -> tuple[float, float]:
    """(steady-state images per second, start-up seconds) of the whole extraction: the workers decode,
    the main process runs the model, as CnnExtractor.embed does.

    Start-up = creating the workers and decoding the first batch, while the model waits (paid once per
    extraction, negligible on a real dataset); the steady state is every forward from the first batch's
    arrival on, with the workers decoding the following batches meanwhile.
    """
    import torch

    from simbench.features.cnn import embed_batch

    model, n = extractor.model(), 0
    start = time.perf_counter()
    first = None
    with torch.inference_mode():
        for rows, pixels, failed in extractor.loader(paths):
            first = first or time.perf_counter()
            assert not failed
            embed_batch(model, pixels, extractor.prep, extractor.device, extractor.half,
                        extractor.channels_last, extractor.augment == "mirror")
            n += len(rows)
    end = time.perf_counter()
    assert n == len(paths)
    return n / (end - first), first - start


def measure(backbone: str, paths: list[Path], batch_size: int, workers: int, decode_size: float = 1.0,
            rounds: int = 3) -> dict:
    """Bare forward and pipeline, alternated `rounds` times on the same model and batch size.

    Each pipeline round is compared with the mean of the bare rounds on either side of it, and the median
    of those ratios is reported (with its range): load from other processes hits both sides alike.
    """
    import torch

    from simbench.features.cnn import CnnExtractor

    ext = CnnExtractor(backbone, weights=weights_for(backbone), batch_size=batch_size, workers=workers,
                       decode_size=decode_size)
    model = ext.model()
    with torch.inference_mode():
        model(torch.randn(batch_size, 3, 224, 224))  # warm-up: oneDNN picks its kernels on the first call
    bares, pipes, startups = [bare_forward(model, batch_size, len(paths))], [], []
    for _ in range(rounds):
        speed, startup = pipeline(ext, paths)
        pipes.append(speed)
        startups.append(startup)
        bares.append(bare_forward(model, batch_size, len(paths)))
    ratios = [p / ((bares[i] + bares[i + 1]) / 2) for i, p in enumerate(pipes)]
    return {"backbone": backbone, "weights": ext.weights, "batch": batch_size, "workers": workers,
            "decode_size": decode_size, "images": len(paths), "rounds": rounds, "bare": float(np.median(bares)),
            "pipeline": float(np.median(pipes)), "ratio": float(np.median(ratios)),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "startup": float(np.median(startups))}


def workers_table(backbones: list[str], paths: list[Path], batch_size: int, rounds: int) -> tuple[str, list[dict]]:
    """Decoding in 0, 1 or 2 workers, and a reduced draft size (light models are the hard case)."""
    rows = []
    for backbone in backbones:
        n = IMAGES[backbone]
        for workers, decode_size in ((0, 1.0), (1, 1.0), (2, 1.0), (1, 0.9)):
            rows.append(measure(backbone, paths[:n], batch_size, workers, decode_size, rounds))
            print(_row(rows[-1]), flush=True)
    header = ("| backbone | workers | decode_size | images x rounds | bare forward img/s | pipeline img/s | "
              "pipeline / bare (median, range) | start-up s |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['backbone']} | {r['workers']} | {r['decode_size']} | {r['images']} x {r['rounds']} | "
             f"{r['bare']:.1f} | {r['pipeline']:.1f} | {_ratio(r)} | {r['startup']:.2f} |" for r in rows]
    return "\n".join([header, *lines]), rows


def throughput_table(backbones: list[str], paths: list[Path], batch_size: int, workers: int,
                     decode_size: float, rounds: int) -> tuple[str, list[dict]]:
    rows = []
    for backbone in backbones:
        rows.append(measure(backbone, paths[: IMAGES.get(backbone, 32)], batch_size, workers, decode_size,
                            rounds))
        print(_row(rows[-1]), flush=True)
    header = ("| backbone | weights | dim | images x rounds | bare forward img/s | pipeline img/s | "
              "pipeline / bare (median, range) | start-up s |\n|---|---|---|---|---|---|---|---|")
    dims = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
            "efficientnet_lite0": 1280, "mobilenet_v3_small": 576}
    lines = [f"| {r['backbone']} | {r['weights']} | {dims[r['backbone']]} | {r['images']} x {r['rounds']} | "
             f"{r['bare']:.1f} | {r['pipeline']:.1f} | {_ratio(r)} | {r['startup']:.2f} |" for r in rows]
    return "\n".join([header, *lines]), rows


def _ratio(r: dict) -> str:
    return f"{r['ratio']:.0%} ({r['ratio_min']:.0%}-{r['ratio_max']:.0%})"


def _row(r: dict) -> str:
    return (f"  {r['backbone']:<20} workers={r['workers']} decode_size={r['decode_size']} n={r['images']}: "
            f"bare {r['bare']:.1f} img/s, pipeline {r['pipeline']:.1f} img/s ({_ratio(r)}), "
            f"start-up {r['startup']:.2f} s")


# --------------------------------------------------------------------------- runtime: torch vs onnx


def parse_variant(spec: str) -> tuple[str, dict]:
    """"onnx" or "onnx:batch_size=16,workers=0" -> (label, CnnExtractor keyword arguments). The runtime
    is the part before the colon; find's defaults (batch 32, 1 decode worker) unless overridden."""
    runtime, _, rest = spec.partition(":")
    kwargs = {"runtime": runtime, "batch_size": 32, "workers": 1}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        else:
            value = {"true": True, "false": False, "none": None}.get(value.lower(), value)
        kwargs[key] = value
    return spec, kwargs


def runtime_table(paths: list[Path], specs: list[str], rounds: int, backbone: str = "efficientnet_lite0"):
    """Interleaved whole-extraction throughput of each variant and its embeddings' cosine to torch eager.

    Each round times extract(paths) once per variant, in the order given; a variant's ratio in a round is
    its img/s over the torch-eager variant's img/s in that same round (the first variant must run torch,
    with any options, e.g. "torch:image_size=192": the others are compared with it). "first use" = building
    the model: for onnx, exporting it into an empty cache, for onnx-int8 also quantizing it (made once per
    machine and setting; later runs load the file in a fraction of a second).
    """
    from simbench.features.cnn import CnnExtractor

    variants = [parse_variant(s) for s in specs]
    if variants[0][1]["runtime"] != "torch":
        raise ValueError("the first runtime variant must run `torch` (the reference)")
    extractors, first_use = {}, {}
    saved = os.environ.get("SIMBENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="bench_cnn_cache_") as cache:
        os.environ["SIMBENCH_CACHE"] = cache  # an empty cache: first use times a fresh export
        for label, kwargs in variants:
            start = time.perf_counter()  # onnx-int8 quantizes when the extractor is made
            ext = CnnExtractor(backbone, weights=weights_for(backbone), **kwargs)
            ext.model()
            first_use[label] = time.perf_counter() - start
            ext.extract(paths[: kwargs["batch_size"]])  # warm-up: oneDNN / ORT pick their kernels
            extractors[label] = ext
    if saved is None:
        os.environ.pop("SIMBENCH_CACHE", None)
    else:
        os.environ["SIMBENCH_CACHE"] = saved
    speeds = {label: [] for label, _ in variants}
    vectors = {}
    for r in range(rounds):
        for label, _ in variants:
            start = time.perf_counter()
            out = extractors[label].extract(paths)
            speeds[label].append(len(out.rows) / (time.perf_counter() - start))
            vectors[label] = out.features.vectors
            print(f"  round {r + 1}: {label:<40} {speeds[label][-1]:6.1f} img/s  (load {load_average():.1f})",
                  flush=True)
    ref_label = variants[0][0]
    lines = ["| variant | ran as | batch | decode workers | img/s, median (range) | / torch eager, median (range) "
             "| 1 - cosine to torch eager: worst, median | max abs difference | first use s |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for label, kwargs in variants:
        ext = extractors[label]
        ratios = [a / b for a, b in zip(speeds[label], speeds[ref_label])]
        a, b = vectors[label].astype(np.float64), vectors[ref_label].astype(np.float64)
        cos = np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        ran = ext.runtime + (f" (fallback: {ext.runtime_fallback})" if ext.runtime_fallback else "")
        cos = np.minimum(cos, 1.0)  # 1 - cos >= 0: rounding can put the float64 cosine a hair above 1
        rows.append({"variant": label, "runtime": ext.runtime, "speed": float(np.median(speeds[label])),
                     "ratio": float(np.median(ratios)), "worst_cos": float(cos.min()),
                     "median_cos": float(np.median(cos))})
        lines.append(f"| {label} | {ran} | {ext.batch_size} | {ext.workers} | {np.median(speeds[label]):.1f} "
                     f"({min(speeds[label]):.1f}-{max(speeds[label]):.1f}) | {np.median(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | {1 - cos.min():.1e}, {1 - np.median(cos):.1e} | "
                     f"{np.abs(a - b).max():.1e} | {first_use[label]:.1f} |")
    note = (f"\n{len(paths)} JPEGs, {backbone} ({weights_for(backbone)} weights), {rounds} interleaved rounds; "
            f"every run embeds all {len(paths)} images.")
    return "\n".join(lines) + note, rows


# ------------------------------------------------------------------------------------------- accuracy


def accuracy_table(backbones: list[str], batch_size: int, workers: int, decode_size: float) -> str:
    """micro-AP and recall at precision 0.9 on the default synthetic set, per backbone with weights here."""
    from simbench.data.synthetic import SyntheticDataset
    from simbench.evaluate import evaluate
    from simbench.features.cnn import CnnExtractor, fit_whitening
    from simbench.match.exact import ExactMatcher
    from simbench.methods.cnn import CnnMethod
    from simbench.run import to_dataset_indices
    from simbench.types import Embeddings

    dataset = SyntheticDataset().load(progress=False)
    lines = ["| backbone | weights | variant | images | µAP | R@P90 | threshold@P90 | P@0.9 | R@0.9 | extract img/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for backbone in backbones:
        if weights_for(backbone) != "imagenet":
            continue
        for augment in (None, "mirror"):
            ext = CnnExtractor(backbone, batch_size=batch_size, workers=workers, augment=augment,
                               decode_size=decode_size)
            start = time.perf_counter()
            out = ext.extract(dataset.paths)
            speed = len(dataset.paths) / (time.perf_counter() - start)
            variants = [(augment or "plain", out.features.vectors)]
            if augment is None:  # whitening re-uses the same vectors: no second extraction
                w = fit_whitening(out.features.vectors, 256)
                variants.append(("plain + PCA whitening (dataset, 256 d)", w.apply(out.features.vectors)))
            for name, vectors in variants:
                method = CnnMethod(ext, ExactMatcher(), min_similarity=0.0, threshold=0.9)
                pairs = to_dataset_indices(method.score_pairs(Embeddings(vectors)), out.rows)
                m = evaluate(pairs, dataset.truth, dataset.labels, 0.9)
                lines.append(f"| {backbone} | imagenet | {name} | {len(dataset)} | {m['uap']:.3f} | "
                             f"{m['recall_at_p90']:.3f} | {m['threshold_at_p90']:.3f} | {m['precision']:.3f} | "
                             f"{m['recall']:.3f} | {speed:.1f} |")
                print(lines[-1], flush=True)
                per = sorted((m["per_transform_recall"] or {}).items(), key=lambda kv: -kv[1])
                notes.append(f"- {backbone} {name}, recall per transform at cosine >= 0.9: "
                             + ", ".join(f"{k} {v:.2f}" for k, v in per))
    return "\n".join(lines + [""] + notes)


# ------------------------------------------------------------------------------------------------ lsh


def clustered_embeddings(n: int, d: int, groups: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in near-duplicate groups (within-group cosine ~0.85-0.99) sharing a common direction,
    so that unrelated pairs sit at cosine ~0.2 as pooled CNN features do."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d, dtype=np.float32)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((groups, d), dtype=np.float32)
    centres = _unit(_unit(centres) + 0.5 * common)
    noise = rng.uniform(0.1, 0.5, (n, 1)).astype(np.float32)
    x = centres[rng.integers(0, groups, n)] + noise * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def lsh_table(n: int, d: int, queries: int, thresholds: list[float], bits: int) -> str:
    from simbench.match.cosine import ExactCosineMatcher, HyperplaneLshMatcher
    from simbench.match.lsh import MultiIndexHashMatcher

    x = clustered_embeddings(n, d, groups=n * 3 // 10)
    HyperplaneLshMatcher(MultiIndexHashMatcher(), bits=bits).self_join(x[:2000], max(thresholds))  # numba JIT

    # Exact pairs (a < b) with a among the first `queries` rows, at the lowest threshold (filter for others).
    start = time.perf_counter()
    exact = ExactCosineMatcher().range_search(x[:queries], x, min(thresholds))
    exact_range_s = time.perf_counter() - start
    keep = exact.a < exact.b
    exact_a, exact_b, exact_sim = exact.a[keep], exact.b[keep], exact.dist[keep]
    # A self-join computes the upper half of the N x N products: (N / queries) / 2 times this range search.
    exact_self_join_s = exact_range_s * (n / queries) / 2

    lines = ["| threshold | bits | radius | pieces | candidates | pairs found | recall vs exact | LSH s "
             "(hash / search / re-check) | exact s (extrapolated) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in thresholds:
        lsh = HyperplaneLshMatcher(MultiIndexHashMatcher(), bits=bits, target_recall=0.95)
        start = time.perf_counter()
        found = lsh.self_join(x, t)
        lsh_s = time.perf_counter() - start
        truth = set(zip(exact_a[exact_sim >= t].tolist(), exact_b[exact_sim >= t].tolist()))
        mine = found.a < queries
        got = set(zip(found.a[mine].tolist(), found.b[mine].tolist()))
        recall = len(got & truth) / max(1, len(truth))
        st = lsh.last_stats
        split = (f"{st['hash_s']:.1f} / {st['search_s']:.1f} / {st['recheck_s']:.1f}"
                 if st["mode"] == "lsh" else "exhaustive")
        lines.append(f"| {t} | {bits} | {st['radius']} | {st.get('pieces', '-')} | {st['candidates']} | "
                     f"{len(found)} | {recall:.3f} | {lsh_s:.1f} ({split}) | {exact_self_join_s:.0f} | "
                     f"{exact_self_join_s / lsh_s:.1f}x |")
        print(lines[-1], flush=True)
    note = (f"\nN = {n}, D = {d}; exact range search of {queries} queries x {n} rows took {exact_range_s:.1f} s "
            f"(extrapolated self-join: x {n / queries / 2:g}).")
    return "\n".join(lines) + note


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["runtime", "workers", "throughput", "accuracy", "lsh"])
    p.add_argument("--runtime-images", type=int, default=200, help="photos for the runtime comparison")
    p.add_argument("--runtime-rounds", type=int, default=3)
    p.add_argument("--runtime-variants", nargs="+", default=["torch", "onnx"],
                   help="runtime[:key=value,...] (CnnExtractor arguments); the first must be torch")
    p.add_argument("--backbones", nargs="+", default=ALL_BACKBONES)
    p.add_argument("--workers-backbones", nargs="+", default=["efficientnet_lite0", "mobilenet_v3_small"])
    p.add_argument("--rounds", type=int, default=3, help="pipeline rounds, each between two bare rounds")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="decode workers for the per-backbone tables")
    p.add_argument("--decode-size", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the images per measurement (busy machine: 0.5)")
    p.add_argument("--lsh-n", type=int, default=100_000)
    p.add_argument("--lsh-dim", type=int, default=512)
    p.add_argument("--lsh-queries", type=int, default=10_000)
    p.add_argument("--lsh-bits", type=int, default=256)
    p.add_argument("--lsh-thresholds", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--write", type=Path, help="also write the report (Markdown) here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    for name in IMAGES:  # whole batches, at least two
        IMAGES[name] = max(2, round(IMAGES[name] * args.scale / args.batch)) * args.batch
    started = time.perf_counter()
    load_before = load_average()
    try:
        import onnxruntime

        ort_version = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort_version = "no onnxruntime"
    out = [f"CPU: {cpu_model()} ({os.cpu_count()} cores visible), torch {torch.__version__} with "
           f"{torch.get_num_threads()} threads, {ort_version}, Python {platform.python_version()}; "
           f"{time.strftime('%Y-%m-%d')}; load average at start {load_before:.1f}"]
    with tempfile.TemporaryDirectory() as tmp:
        if "runtime" in args.sections:
            print("## runtime: torch eager vs onnx", flush=True)
            photos = photo_jpegs(Path(tmp), args.runtime_images)
            table, _ = runtime_table(photos, args.runtime_variants, args.runtime_rounds)
            out += ["", f"### Torch eager vs ONNX Runtime, whole extraction ({args.threads} threads)", "", table]
        need = max(IMAGES.get(b, 32) for b in [*args.backbones, *args.workers_backbones])
        paths = make_jpegs(Path(tmp), need) if {"workers", "throughput"} & set(args.sections) else []
        if "workers" in args.sections:
            print("## decode workers", flush=True)
            table, _ = workers_table(args.workers_backbones, paths, args.batch, args.rounds)
            out += ["", f"### Decode workers (batch {args.batch}, 1280x960 JPEGs)", "", table]
        if "throughput" in args.sections:
            print("## throughput", flush=True)
            table, _ = throughput_table(args.backbones, paths, args.batch, args.workers, args.decode_size,
                                        args.rounds)
            out += ["", f"### Throughput per backbone (batch {args.batch}, {args.workers} decode worker(s), "
                        f"decode_size {args.decode_size}, 1280x960 JPEGs)", "", table]
    if "accuracy" in args.sections:
        print("## accuracy", flush=True)
        out += ["", "### Accuracy on the synthetic set (matcher exact, all pairs ranked)", "",
                accuracy_table(args.backbones, args.batch, args.workers, args.decode_size)]
    if "lsh" in args.sections:
        print("## lsh", flush=True)
        out += ["", f"### Random-hyperplane LSH vs exact cosine, self-join of {args.lsh_n} embeddings", "",
                lsh_table(args.lsh_n, args.lsh_dim, args.lsh_queries, args.lsh_thresholds, args.lsh_bits)]
    out += ["", f"Total {time.perf_counter() - started:.0f} s; load average at end {load_average():.1f}. "
                f"Command: python benchmarks/bench_cnn.py {' '.join(sys.argv[1:])}"]
    text = "\n".join(out)
    print("\n" + text)
    if args.write:
        args.write.write_text(text + "\n")


if __name__ == "__main__":
    main()
