"""The school frame on the tuning split's yearbooks, and what cutting it off (simbench.data.images.framed_box,
the extractors' trim_frame) changes, and what the keypoints' min_coverage keeps: the diagnosis behind runs (23)
to (26) of results/find.md. Tuning split only.

    python benchmarks/frame_probe.py [--work DIR] [--layouts 0,1]

For each tuning yearbook (the photos of the devset's tuning split, built as `bench_find.py yearbook-tune` builds
seed 0 and `calibrate` seed 1; --layouts: other build_yearbook seeds), its placements rendered as find renders them:
- on how many placements framed_box finds the frame (and on how many of the tuning devset's pictures);
- the CNN alone (find's extractor, plain cosine of vectors centred on their mean, no whitening, normalisation
  or fusion), micro-AP over all pairs: as rendered, cut by framed_box, cut where the generator drew the frame
  (FRAME_PT + 2 pt in from every side), and that with the crest painted out too (inpainted where it was drawn);
  turned upright where a placement is turned on the page (simbench.data.images.upright; run 26), and that cut
  by framed_box; in grey with its histogram equalised (simbench.features.cnn.grey_equalised), and that view's
  vector averaged with the rendering's (run 42);
- find's keypoint stage on its own (no calibration), without and with trim_frame, at runs (23) and (24)'s
  min_coverage 0.02: the share of the framed placements' keypoints on the frame or within 15 px of it, and
  the true and false pairs it verifies; without trim_frame, that share among the flat photos' placements and
  among the others, and how many of the false pairs join two flat photos (run 29);
- the same stage (no trim) with min_coverage 0.02, 0.01 and 0.005: the true and false pairs it keeps
  (run 25).
And the CNN alone on the tuning devset's photographs and line art, as they are, grey and equalised, and the two
averaged: what such a view would cost where no frame is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import TUNE, dev_set, matrix_metrics, school_yearbook  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.features.cnn import grey_equalised  # noqa: E402

NEAR_FRAME_PX = 15


def rendered_yearbook(work: Path, seed: int):
    """(placements, rendered files, the placement each file shows) of the tuning yearbook with this seed."""
    from simbench.find.pdf import PdfOptions, extract_pdf
    from simbench.find.yearbook import match_placement

    pdfs = work / f"yearbook-{seed}"
    placements = school_yearbook(pdfs, TUNE, seed, False)
    files, shown = [], []
    for pdf in sorted(pdfs.glob("*.pdf")):
        for placed in extract_pdf(pdf, work / f"render-{seed}-{pdf.stem}", PdfOptions())[0]:
            k = match_placement(placements, str(pdf), placed.page, placed.bbox)
            if k is not None:
                files.append(Path(placed.image_path))
                shown.append(k)
    return placements, files, shown


def cut_views(placements, files: list[Path], shown: list[int], out: Path) -> dict[str, list[Path]]:
    """The rendered files, and five cuts of each: {"as rendered", "framed_box", "generator's frame",
    "generator's frame and crest", "upright", "upright, then framed_box"} (upright: simbench.data.images.upright,
    a placement turned on the page turned back, as the CNN extractor's upright option does)."""
    import cv2
    from PIL import Image

    from simbench.data.images import framed_box, upright
    from simbench.find.yearbook import FRAME_PT

    out.mkdir(parents=True, exist_ok=True)
    views = {"as rendered": files, "framed_box": [], "generator's frame": [], "generator's frame and crest": [],
             "upright": [], "upright, then framed_box": [], "grey, equalised": []}
    for i, (path, k) in enumerate(zip(files, shown)):
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        x0, y0, x1, y1 = framed_box(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        px_per_pt = w / (placements[k].rect[2] - placements[k].rect[0])
        crest = np.zeros((h, w), np.uint8)
        cx0, cy0, cx1, cy1 = crest_box(placements[k], w, h)
        crest[cy0:cy1, cx0:cx1] = 255
        c = int(round((FRAME_PT + 2) * px_per_pt))
        turned_back = np.asarray(upright(Image.fromarray(image)))
        u0, v0, u1, v1 = framed_box(cv2.cvtColor(turned_back, cv2.COLOR_RGB2GRAY))
        for name, pixels in (("framed_box", image[y0:y1, x0:x1]), ("generator's frame", image[c:h - c, c:w - c]),
                             ("generator's frame and crest",
                              cv2.inpaint(image, crest, 5, cv2.INPAINT_TELEA)[c:h - c, c:w - c]),
                             ("upright", turned_back), ("upright, then framed_box", turned_back[v0:v1, u0:u1]),
                             ("grey, equalised", np.asarray(grey_equalised(Image.fromarray(image))))):
            views[name].append(out / f"{len(views[name])}-{name.replace(' ', '_').replace(',', '')}.png")
            Image.fromarray(np.ascontiguousarray(pixels)).save(views[name][-1])
    return views


def crest_box(placement, w: int, h: int) -> tuple[int, int, int, int]:
    """Where decoration() stamps the crest in a w x h rendering of the placement, 2 px wider on every side
    (x0, y0, x1, y1; turned placements: roughly)."""
    from simbench.find.yearbook import LOGO_INSET_PT, LOGO_WIDTH

    px_per_pt = w / (placement.rect[2] - placement.rect[0])
    side, inset = LOGO_WIDTH * w, LOGO_INSET_PT * px_per_pt
    x0, y0 = max(0, int(w - inset - side) - 2), max(0, int(h - inset - side) - 2)
    return x0, y0, int(w - inset) + 2, int(h - inset) + 2


def cnn_vectors(files: list[Path]) -> np.ndarray:
    """find's CNN extractor's vectors of the files (L2-normalised), in order."""
    from simbench.find import cascade

    stage, = cascade.build_stages(cascade.make_config("cnn"), calibrations={}, quiet=True)
    extracted = stage.extractor.extract(files)
    if list(extracted.rows) != list(range(len(files))):
        raise RuntimeError("the CNN extractor skipped some of the probe's files")
    return np.asarray(extracted.features.vectors, np.float64)


def centred_micro_ap(vectors: np.ndarray, truth: np.ndarray) -> float:
    """Micro-AP over all pairs of the plain cosine of the vectors centred on their mean."""
    centred = vectors - vectors.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    return matrix_metrics(centred @ centred.T, truth)["uap"]


def averaged(*vectors: np.ndarray) -> np.ndarray:
    """Each row's vectors averaged, as the extractor averages its views (then L2-normalised)."""
    mean = np.mean([v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors], axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def devset_grey_equalised(work: Path) -> None:
    """The CNN alone on the tuning devset's photographs and line art: as they are, grey and equalised, averaged."""
    from PIL import Image

    for part in ("photo", "lineart"):
        ds = dev_set(TUNE, part, False)
        out = work / f"devset-{part}-grey-equalised"
        out.mkdir(parents=True, exist_ok=True)
        grey = []
        for k, path in enumerate(ds.paths):
            grey.append(out / f"{k}.png")
            with Image.open(path) as image:
                grey_equalised(image.convert("RGB")).save(grey[-1])
        plain, equalised = cnn_vectors(list(ds.paths)), cnn_vectors(grey)
        print(f"tuning devset {part}: CNN alone, centred cosine, micro-AP as they are "
              f"{centred_micro_ap(plain, ds.truth):.3f}, grey, equalised {centred_micro_ap(equalised, ds.truth):.3f}, "
              f"the two averaged {centred_micro_ap(averaged(plain, equalised), ds.truth):.3f}")


#: Runs (23) and (24) were made with this covered share as the keypoints' floor; run (25) lowered it.
RUN_24_MIN_COVERAGE = 0.02
MIN_COVERAGES = (0.02, 0.01, 0.005)


def keypoint_stage(trim: bool, min_coverage: float):
    """find's keypoint stage, without calibration, with these trim_frame and min_coverage."""
    from simbench.find import cascade

    cfg = cascade.make_config("keypoints", [f"keypoints.extractor.trim_frame={str(trim).lower()}",
                                            f"keypoints.method.min_coverage={min_coverage}"])
    return cascade.build_stages(cfg, calibrations={}, quiet=True)[0]


def near_frame_share(files: list[Path], features, among: list[bool] | None = None) -> float:
    """The share of the framed placements' keypoints on the frame framed_box finds or within NEAR_FRAME_PX
    (among: only the files marked True)."""
    from PIL import Image

    from simbench.data.images import framed_box

    near, framed = 0, 0
    for i, path in enumerate(files):
        if among is not None and not among[i]:
            continue
        x0, y0, x1, y1 = framed_box(np.asarray(Image.open(path).convert("L")))
        if x0 == 0:
            continue
        x, y = features.points[features.offsets[i]:features.offsets[i + 1]].T
        near += int((np.minimum.reduce([x - x0, y - y0, x1 - 1 - x, y1 - 1 - y]) < NEAR_FRAME_PX).sum())
        framed += int(features.offsets[i + 1] - features.offsets[i])
    return near / max(framed, 1)


def verified(method, features, truth: np.ndarray) -> dict:
    """How many true pairs the keypoint method verifies, and which false ones."""
    pairs = method.score_pairs(features)
    found = {(min(a, b), max(a, b)) for a, b in zip(pairs.a.tolist(), pairs.b.tolist())}
    true = {tuple(p) for p in truth.tolist()}
    return {"true": len(found & true), "false": len(found - true), "false_pairs": found - true}


def crest_share(features, boxes: list[tuple], among: list[bool]) -> float:
    """The share of the keypoints of the pictures marked in `among` that lie in their crest's box (boxes[i]:
    picture i's, `crest_box`)."""
    on, total = 0, 0
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if among[i]:
            x, y = features.points[features.offsets[i]:features.offsets[i + 1]].T
            on += int(((x >= x0) & (x < x1) & (y >= y0) & (y < y1)).sum())
            total += len(x)
    return on / max(total, 1)


def turned_on_page(path: Path) -> bool:
    """Whether `upright` turns the picture back (it returns any other picture itself)."""
    from PIL import Image

    from simbench.data.images import upright

    image = Image.open(path).convert("RGB")
    return upright(image) is not image


def main(argv=None) -> None:
    from PIL import Image

    from simbench.data.images import framed_box
    from simbench.find.yearbook import true_pairs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(default_cache_dir() / "frame_probe"))
    parser.add_argument("--layouts", default="0,1", help="comma-separated build_yearbook seeds (bench_find.py "
                                                         "yearbook-tune --layouts)")
    args = parser.parse_args(argv)
    work = Path(args.work).expanduser()
    devset = [p for part in ("photo", "lineart") for p in sorted((dev_set(TUNE, part, False).root / "images").iterdir())]
    framed = sum(framed_box(np.asarray(Image.open(p).convert("L")))[0] > 0 for p in devset)
    turned = [p.name for p in devset if turned_on_page(p)]
    print(f"tuning devset pictures (photo and line art): a frame found on {framed} of {len(devset)}; "
          f"turned upright: {len(turned)} ({', '.join(sorted({n.split('_', 2)[-1].split('.')[0] for n in turned}))})")
    devset_grey_equalised(work)
    for seed in (int(x) for x in args.layouts.split(",")):
        placements, files, shown = rendered_yearbook(work, seed)
        index = {k: i for i, k in enumerate(shown)}
        truth = np.array(sorted((min(index[a], index[b]), max(index[a], index[b])) for a, b in true_pairs(placements)
                                if a in index and b in index)).reshape(-1, 2)
        views = cut_views(placements, files, shown, work / f"cut-{seed}")
        found = sum(framed_box(np.asarray(Image.open(p).convert("L")))[0] > 0 for p in files)
        turned = sum(turned_on_page(p) for p in files)
        print(f"\ntuning yearbook seed {seed}: {len(files)} placements, {len(truth)} true pairs; "
              f"framed_box finds the frame on {found}; upright turns {turned} back")
        vectors = {name: cnn_vectors(paths) for name, paths in views.items()}
        vectors["as rendered and grey, equalised, averaged"] = averaged(vectors["as rendered"],
                                                                        vectors["grey, equalised"])
        for name, v in vectors.items():
            print(f"  CNN alone, centred cosine, {name}: micro-AP {centred_micro_ap(v, truth):.3f}")
        features = {}  # per trim_frame, extracted once (the floors below score the untrimmed ones)
        for trim in (False, True):
            stage = keypoint_stage(trim, RUN_24_MIN_COVERAGE)
            features[trim] = stage.extractor.extract(files).features
            got = verified(stage.method, features[trim], truth)
            print(f"  keypoint stage, trim_frame={trim}: {near_frame_share(files, features[trim]):.0%} of the framed "
                  f"placements' keypoints on the frame or within {NEAR_FRAME_PX} px of it; verified {got['true']} "
                  f"true pairs, {got['false']} false")
            if not trim:
                flat = [placements[k].flat for k in shown]
                other = [not f for f in flat]
                boxes = [crest_box(placements[k], *Image.open(path).size) for path, k in zip(files, shown)]
                kp = features[trim]
                print(f"    near the frame: of the flat photos' placements {near_frame_share(files, kp, flat):.0%}, "
                      f"of the others {near_frame_share(files, kp, other):.0%}; on the crest: "
                      f"{crest_share(kp, boxes, flat):.0%} and {crest_share(kp, boxes, other):.0%}; false pairs "
                      f"verified with a flat photo on both sides: "
                      f"{sum(flat[a] and flat[b] for a, b in got['false_pairs'])}")
        for floor in MIN_COVERAGES:
            got = verified(keypoint_stage(False, floor).method, features[False], truth)
            print(f"  keypoint stage, min_coverage={floor}: keeps {got['true']} true pairs, {got['false']} false")


if __name__ == "__main__":
    main()
