"""Chains of edits on pictures outside both devset splits: which of a chain's members cost find the copy?

    python benchmarks/chain_probe.py [--seed 0] [--copies 8] [--family chain3] [--work DIR] [key=value ...]

The pictures: the nature photographs of Debian's mate-backgrounds and the wallpapers of ukui-wallpapers (13 + 11),
neither of them a devset source, but both among the pictures of `bench_find.py holdout`'s build: a candidate judged
on this probe has been chosen on some of the held-out pictures, so the held-out figures after it are no longer of
pictures nothing was chosen on (results/find.md says which runs). Their .deb files are fetched with `apt-get
download` and unpacked into the work folder, not installed: installed, ukui's would land in /usr/share/backgrounds,
where the devset takes its sources.
Each picture (long side 1024, JPEG quality 90) gets `--copies` copies of `--family` (simbench.data.edits; a chain's
members drawn as the devset draws them), a quarter of them also stamped with the devset's logo, seeded by (seed,
picture, copy), so a seed's copies are the same on every machine. Truth: every pair inside a picture's group, the
reference-copy pairs labelled by the family, the copy-copy pairs `copy_pairs` (as in the devset).

Then `simbench find` (with the key=value overrides) runs on the collection and the script prints micro-AP, recall at
precision 0.9, precision and recall at the threshold, the reference-copy pairs' recall at the threshold and at
precision 0.9, and per chain member the reference-copy pairs found at the threshold and those the keypoint stage kept
(verified and past its gates, at any score). No split and no distractors: a probe for development and for judging a
candidate on copies never made before (a new --seed), not a benchmark to report.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simbench.data.devset import JPEG_QUALITY, LOGO_SHARE  # noqa: E402
from simbench.data.edits import EDITS, apply_logo, logo_params, make_copy  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402

PACKAGES = ("mate-backgrounds", "ukui-wallpapers")
#: Where each package's pictures are, inside it: mate's photographs, ukui's wallpapers (its top folder only).
PICTURES = (("usr/share/backgrounds/mate/nature", "*.jpg"), ("usr/share/backgrounds", "*"))
#: The references' long side, as the devset's (its `long_side`); their JPEG quality and the share of copies that
#: also get the logo are the devset's own (JPEG_QUALITY, LOGO_SHARE).
LONG_SIDE = 1024


def sources(work: Path) -> list[Path]:
    """The probe's pictures, unpacked from the packages' .deb files into work/sources (fetched once)."""
    unpacked = work / "sources"
    if not (unpacked / ".done").exists():
        debs = work / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not any(debs.glob("*.deb")):
            if not shutil.which("apt-get"):
                sys.exit(f"chain_probe needs apt-get to fetch {' and '.join(PACKAGES)}, or their .deb files in {debs}")
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
        shutil.rmtree(unpacked, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        (unpacked / ".done").touch()
    return [p for folder, pattern in PICTURES for p in sorted((unpacked / folder).glob(pattern)) if p.is_file()]


def build(pictures: list[Path], out: Path, family: str, copies: int, seed: int) -> None:
    """images/, labels.csv (path, label, source, members) and truth.csv (a, b, label) under out, once. members: a
    chain's members, else the family, and `logo` when stamped."""
    if (out / "truth.csv").exists():
        return
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    for i, path in enumerate(pictures):
        img = Image.open(path).convert("RGB")
        img.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
        ref = f"images/r{i:03d}_reference.jpg"
        img.save(out / ref, quality=JPEG_QUALITY)
        rows.append((ref, "reference", path.name, ""))
        group = [ref]
        for k in range(copies):
            rng = np.random.default_rng([seed, 99, i, k])
            stamp = rng.random() < LOGO_SHARE
            copy, record = make_copy(family, img, rng)
            if stamp:
                copy = apply_logo(copy, logo_params(rng))
            name = f"images/r{i:03d}_{k}_{family}.jpg"
            copy.save(out / name, quality=JPEG_QUALITY)
            members = [*record.get("members", [family]), *(["logo"] if stamp else [])]
            rows.append((name, family, path.name, "+".join(members)))
            group.append(name)
        truth += [(a, b, family if a == ref else "copy_pairs") for a, b in itertools.combinations(group, 2)]
    with open(out / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "source", "members"), *rows])
    with open(out / "truth.csv", "w", newline="") as f:  # written last: its presence means built
        csv.writer(f).writerows([("a", "b", "label"), *truth])


def member_table(out: Path, result, family: str, threshold: float) -> list[tuple[str, int, int, int]]:
    """Per chain member (and `logo`): (member, its reference-copy pairs found at the threshold, those the keypoint
    stage kept (verified and past its gates, whatever their score), all of them)."""
    position = {Path(item.display).resolve(): k for k, item in enumerate(result.items)}
    pairs = result.pairs.as_scored()
    score = {(int(a), int(b)): float(s) for a, b, s in zip(pairs.a, pairs.b, pairs.score)}
    kept = result.raw.get("keypoints")
    verified = set() if kept is None else {(int(a), int(b)) for a, b in zip(kept.a, kept.b)}
    found: dict[str, list[tuple[bool, bool]]] = {}
    with open(out / "labels.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] != family:
                continue
            copy = position[(out / row["path"]).resolve()]
            ref = position[(out / (row["path"].split("_")[0] + "_reference.jpg")).resolve()]
            pair = (min(copy, ref), max(copy, ref))
            for member in row["members"].split("+"):
                found.setdefault(member, []).append((score.get(pair, 0.0) >= threshold, pair in verified))
    return [(m, sum(h for h, _ in v), sum(k for _, k in v), len(v)) for m, v in sorted(found.items())]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=8, help="copies per picture")
    parser.add_argument("--family", default="chain3", help="the copies' edit family (simbench.data.edits)")
    parser.add_argument("--work", default=str(default_cache_dir() / "chain_probe"))
    parser.add_argument("overrides", nargs="*", help="key=value find settings")
    args = parser.parse_args(argv)
    from simbench.find import cascade
    from simbench.find.pipeline import find, score_against

    if args.family not in EDITS:
        parser.error(f"--family must be one of {sorted(EDITS)}")
    work = Path(args.work).expanduser()
    out = work / f"{args.family}-seed{args.seed}-copies{args.copies}"
    build(sources(work), out, args.family, args.copies, args.seed)
    cfg = cascade.make_config("cascade", args.overrides)
    result = find([out / "images"], work / "run", cfg, index=work / "index", progress=False)
    threshold = float(cfg.threshold)
    m = score_against(result, out / "truth.csv", work / "run", threshold)
    fam_found, fam_total = m["per_label_found_at_p90"][args.family]
    print(f"# {args.family} probe, seed {args.seed}, {args.copies} copies per picture; overrides {args.overrides}")
    print(f"{len(result.items)} images, {m['true_pairs']} true pairs: micro-AP {m['uap']:.3f}, recall at P0.9 "
          f"{m['recall_at_p90']:.3f}; at {threshold:g}: precision {m['precision']:.3f}, recall {m['recall']:.3f}")
    print(f"{args.family} (reference-copy pairs): recall at {threshold:g} {m['per_label_recall'][args.family]:.3f}, "
          f"at P0.9 {fam_found}/{fam_total}")
    print(f"\n| member | copies | found at {threshold:g} | recall | kept by the keypoint stage |")
    print("|---|---|---|---|---|")
    for member, hit, kept, n in member_table(out, result, args.family, threshold):
        print(f"| {member} | {n} | {hit} | {hit / n:.2f} | {kept} |")


if __name__ == "__main__":
    main()
