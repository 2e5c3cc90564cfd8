"""Which reference-copy pairs of the tuning devset a detector's own matches verify, by edit family: why the line
art's partial copies are lost (results/find.md, "After run (71)").

    python benchmarks/scale_probe.py [--part lineart] [--seeds 3] [--sizes 144,256,320]

For each tuning collection (devset seed 0 and each of --seeds, whole collections: nothing here is fitted or chosen),
every (reference, copy) pair is matched on one detector's features alone, no stage's filters (no burstiness, no
shared-content cut, no coverage): BRISK as the keypoint stage extracts it (`keypoints.extractor`; nearest neighbour
within `keypoints.method.distance_threshold` bits) and SIFT as the blobs stage extracts it (`blobs.extractor`) at
each --sizes long side (Lowe's ratio 0.85). A pair counts as verified when a RANSAC similarity keeps 8 or more
matches within 2% of the picture's long side. Prints verified / pairs per family and detector.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, dev_set  # noqa: E402
from simbench.methods.keypoints import distance_rows, two_nearest  # noqa: E402

MIN_INLIERS = 8
TOLERANCE = 0.02  # of the reference's long side
RATIO = 0.85


def features(extractor, paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """[(points in original pixels, descriptors, the picture's long side in pixels)] per path, plain and mirrored rows
    alike (no points, no descriptors for a file the extractor could not read)."""
    got = extractor.extract(paths)
    sets, out = got.features, [(np.zeros((0, 2), np.float32), None, 0.0)] * len(paths)
    for k, row in enumerate(got.rows):
        s, e = sets.offsets[k], sets.offsets[k + 1]
        out[row] = (sets.points[s:e], sets.descriptors[s:e], float(max(sets.image_sizes[k])))
    return out


def matches(da: np.ndarray, db: np.ndarray, binary: bool, max_distance: int) -> list[tuple[int, int]]:
    """(i, j) pairs: each row of da with its nearest row of db (`two_nearest`, as the stages match; binary: within
    max_distance bits; float: Lowe's ratio test)."""
    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return []
    nearest, first, second = two_nearest(da, db, binary) if binary else two_nearest(
        distance_rows(da), distance_rows(db), False)
    keep = first <= max_distance if binary else first < RATIO * second
    return list(zip(np.flatnonzero(keep).tolist(), nearest[keep].tolist()))


def inliers(a, b, pairs: list[tuple[int, int]], long_side: float) -> int:
    """How many of the matches (rows of a, rows of b) a RANSAC similarity from a's points to b's keeps."""
    if len(pairs) < 3:
        return 0
    src = np.float32([a[0][i] for i, _ in pairs])
    dst = np.float32([b[0][j] for _, j in pairs])
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                          ransacReprojThreshold=TOLERANCE * long_side)
    return int(mask.sum()) if mask is not None else 0


def probe(ds, detectors: dict, distance: int) -> dict[str, Counter]:
    """{detector: Counter of family -> verified pairs}, and under "pairs" the pairs per family."""
    group_ref = {}
    for a, b in np.asarray(ds.truth):
        for r, c in ((a, b), (b, a)):
            if ds.labels[r] == "reference" and ds.labels[c] not in ("reference", "distractor"):
                group_ref[int(c)] = int(r)
    out = {"pairs": Counter(ds.labels[c] for c in group_ref)}
    for name, (extractor, binary) in detectors.items():
        feats = features(extractor, ds.paths)
        verified = Counter()
        for c, r in group_ref.items():
            found = matches(feats[c][1], feats[r][1], binary, distance)
            verified[ds.labels[c]] += inliers(feats[c], feats[r], found, feats[r][2]) >= MIN_INLIERS
        out[name] = verified
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="lineart", choices=("photo", "lineart"))
    parser.add_argument("--seeds", default="", help="comma-separated devset seeds rebuilt besides seed 0")
    parser.add_argument("--sizes", default="144,256,320", help="SIFT working long sides (px)")
    args = parser.parse_args(argv)

    from hydra.utils import instantiate

    from simbench.find import cascade

    cfg = cascade.make_config()
    detectors = {"brisk (keypoints)": (instantiate(cfg.keypoints.extractor), True)}
    for size in (int(s) for s in args.sizes.split(",") if s):
        sift = cfg.blobs.extractor.copy()
        sift.max_size = size
        detectors[f"sift {size} px (blobs)"] = (instantiate(sift), False)
    totals = {name: Counter() for name in ["pairs", *detectors]}
    for seed in [0, *(int(s) for s in args.seeds.split(",") if s)]:
        ds = dev_set(TUNE, args.part, progress=False, seed=seed)
        for name, counts in probe(ds, detectors, int(cfg.keypoints.method.distance_threshold)).items():
            totals[name] += counts
    families = sorted(totals["pairs"])
    print(f"tuning {args.part}, devset seeds {','.join(['0', *filter(None, args.seeds.split(','))])}: "
          f"reference-copy pairs verified by a detector's own matches (>= {MIN_INLIERS} RANSAC inliers)\n")
    print("| detector | " + " | ".join(families) + " | all |")
    print("|---" * (len(families) + 2) + "|")
    for name in detectors:
        got = totals[name]
        print(f"| {name} | " + " | ".join(f"{got[f]}/{totals['pairs'][f]}" for f in families)
              + f" | {sum(got.values())}/{sum(totals['pairs'].values())} |")


if __name__ == "__main__":
    main()
