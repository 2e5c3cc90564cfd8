"""Can a coarse local-feature match tell two placements of one flat photo from placements of different photos?
The probe after run (54) of results/find.md. Tuning split only.

    python benchmarks/flat_probe.py [--layouts 226,227,228,229] [--side 256] [--max-distance 260] [--max-df 4]

A flat yearbook photo (simbench.find.yearbook._flatten: blurred, contrast lowered) gives BRISK's corners little of its
own; most of what the keypoint stage finds on it is the school's crest and frame, which every placement carries. This
probe matches blobs instead, at a scale where the blur is small: every placement find cuts from the PDFs of the tuning
school yearbooks (build_yearbook seeds --layouts), in grey, scaled to --side pixels on its long side, equalised
(CLAHE, clip 2, 4 x 4 tiles); SIFT (Lowe 2004; 400 features, contrast threshold 0.01). What many pictures share is
dropped before any pair is matched: a descriptor whose nearest descriptor lies within --max-distance (L2) in
--max-df or more other pictures of the yearbook (burstiness, Jegou et al. 2009, as a cut). Every pair of placements is
then matched (Lowe's ratio 0.85) and fitted (RANSAC similarity, reprojection threshold side / 64 px); its inliers and
their coverage (the smaller of the two pictures' shares inside the inliers' convex hull).

Printed, pooled over the layouts: for inlier floors and coverage floors, the true pairs kept by kind
(simbench.find.yearbook.pair_kind: flat photo, recoloured, turned a few degrees, plain) and the pairs of different
photos kept; the same with no descriptor dropped. Every pair is looked at, not only those find would propose.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.frame_probe import rendered_yearbook  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402

INLIER_FLOORS = (4, 6, 8, 10)
COVERAGE_FLOORS = (0.0, 0.02, 0.05)


def coarse_features(path: str, side: int):
    """(points (F, 2), SIFT descriptors (F, 128) float32 or None, (height, width)) of a picture at `side` px."""
    import cv2

    grey = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    scale = side / max(grey.shape)
    grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(grey)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=400, contrastThreshold=0.01).detectAndCompute(grey, None)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return points, descriptors, grey.shape


def nearest_distances(features: list) -> list:
    """For each picture, (F, pictures) L2 distances from each of its descriptors to its nearest in every picture."""
    import cv2

    matcher = cv2.BFMatcher(cv2.NORM_L2)
    out = []
    for x, (_, dx, _) in enumerate(features):
        cols = []
        for y, (_, dy, _) in enumerate(features):
            if dx is None or dy is None or x == y:
                cols.append(np.full(0 if dx is None else len(dx), np.inf))
            else:
                cols.append(np.array([m.distance for m in matcher.match(dx, dy)]))
        out.append(np.stack(cols, 1) if dx is not None else None)
    return out


def without_shared(features: list, max_distance: float, max_df: int) -> list:
    """The features less each descriptor matched within max_distance in max_df or more other pictures."""
    kept = []
    for (points, desc, shape), dist in zip(features, nearest_distances(features)):
        if desc is None:
            kept.append((points, desc, shape))
            continue
        keep = (dist <= max_distance).sum(axis=1) < max_df
        kept.append((points[keep], desc[keep] if keep.any() else None, shape))
    return kept


def pair_match(fa, fb, side: int) -> tuple[int, float]:
    """(inliers, coverage) of two pictures' features: ratio-tested matches, RANSAC similarity."""
    import cv2

    (pa, da, sa), (pb, db, sb) = fa, fb
    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return 0, 0.0
    good = [m[0] for m in cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
            if len(m) == 2 and m[0].distance < 0.85 * m[1].distance]
    if len(good) < 3:
        return 0, 0.0
    src, dst = pa[[m.queryIdx for m in good]], pb[[m.trainIdx for m in good]]
    fit, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=side / 64)
    if fit is None:
        return 0, 0.0
    inliers = mask.ravel().astype(bool)
    if inliers.sum() < 3:
        return int(inliers.sum()), 0.0
    cover = [cv2.contourArea(cv2.convexHull(p[inliers])) / (s[0] * s[1]) for p, s in ((src, sa), (dst, sb))]
    return int(inliers.sum()), float(min(cover))


def layout_pairs(layout: int, work: Path, side: int, max_distance: float, max_df: int) -> dict:
    """{"shared dropped" | "all descriptors": [(kind or "different photos", inliers, coverage)]} of one layout."""
    from simbench.find.yearbook import pair_kind, true_pairs

    placements, files, shown = rendered_yearbook(work, layout)
    truth = true_pairs(placements)
    features = [coarse_features(str(f), side) for f in files]
    out = {}
    for label, feats in (("shared dropped", without_shared(features, max_distance, max_df)),
                         ("all descriptors", features)):
        rows = []
        for (x, i), (y, j) in itertools.combinations(enumerate(shown), 2):
            pair = (min(i, j), max(i, j))
            kind = pair_kind(placements[pair[0]], placements[pair[1]]) if pair in truth else "different photos"
            rows.append((kind, *pair_match(feats[x], feats[y], side)))
        out[label] = rows
    return out


def main(argv=None) -> None:
    from simbench.find.yearbook import PAIR_KINDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="226,227,228,229", help="tuning yearbooks: build_yearbook seeds")
    parser.add_argument("--side", type=int, default=256, help="long side (px) the pictures are matched at")
    parser.add_argument("--max-distance", type=float, default=260.0, help="L2 distance of a shared descriptor")
    parser.add_argument("--max-df", type=int, default=4, help="pictures a descriptor may match before it is dropped")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "flat_probe",
                        help="the yearbooks' PDFs and their rendered placements")
    args = parser.parse_args(argv)
    pooled: dict[str, list] = {}
    for layout in (int(x) for x in args.layouts.split(",")):
        for label, rows in layout_pairs(layout, args.work, args.side, args.max_distance, args.max_df).items():
            pooled.setdefault(label, []).extend(rows)
    print(f"coarse SIFT at {args.side} px; tuning yearbooks {args.layouts} pooled, every pair of placements; a shared "
          f"descriptor: within {args.max_distance:g} in >= {args.max_df} other pictures")
    kinds = (*PAIR_KINDS, "different photos")
    print("| descriptors | inliers >= | coverage >= | " + " | ".join(kinds) + " |")
    print("|---" * (3 + len(kinds)) + "|")
    for label, rows in pooled.items():
        kind = np.array([r[0] for r in rows])
        inliers, coverage = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        for floor, cover in itertools.product(INLIER_FLOORS, COVERAGE_FLOORS):
            kept = (inliers >= floor) & (coverage >= cover)
            cells = [f"{int((kept & (kind == k)).sum())} / {int((kind == k).sum())}" for k in kinds]
            print(f"| {label} | {floor} | {cover:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
