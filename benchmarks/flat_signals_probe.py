"""Would more signals tell a flat photo's pairs from pairs of different photos? The tuning split only.

    python benchmarks/flat_signals_probe.py --layouts 290,291,... [key=value ...]
    python benchmarks/flat_signals_probe.py --devset [key=value ...]     # the same reading of the tuning devset

For each tuning school yearbook (build_yearbook seeds --layouts), `simbench find` as configured (default and the
overrides given); then every pair the CNN scores among each picture's PROPOSALS best (what the blobs stage is
given) is read with:

- its mutual rank: the worse of the two pictures' ranks of each other among their CNN pairs (0: each is the
  other's best), the rank signal results/find.md named as the next candidate after run (60);
- its refined alignment: the align stage's signal (simbench.methods.align: the search below, cheaper, then refined
  by ECC; added after run (60), results/find.md "Runs (61) and (62)");
- its refined alignment on the overlap: the same, ECC given only the part of one picture that the search lays over
  the other (align.refine's overlap_template), one way round as the stage runs and the better of both ways round
  (added after run (62), results/find.md "After run (62)");
- its alignment correlations: the report thumbnails at SIDE pixels, their edges (align.BORDER of each side: a
  yearbook's frame) left out, one resized over SCALES relative to the other and turned by each quarter turn, the best
  normalised cross-correlation over every shift where they overlap by MIN_OVERLAP of the smaller (masked NCC in the
  Fourier domain, Padfield 2012), of their grey levels and of their colours: does some placement of one picture over
  the other agree, which a flat copy keeps where keypoints and blobs find nothing (and a recoloured one in grey).

Printed, pooled over the layouts: at floors of each signal (and of the rank with each correlation), the true pairs
that find scores below its threshold (the ones a new signal would have to add), by kind
(simbench.find.yearbook.pair_kind), all true pairs there (what a table of the signal would count as well), and the
pairs of different photos (those it would add too). With --devset, the same of the tuning devset's photographs and
line art (its halves and seed-1 rebuilds, run as `bench_find.py tune` runs them): would a signal add false pairs
there?
A probe (results/find.md, "After run (60)"), not a setting of find.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.blobs_probe import kind_of  # noqa: E402
from benchmarks.bench_find import TUNE, item_placements, school_yearbook  # noqa: E402
from simbench.data.synthetic import default_cache_dir  # noqa: E402
from simbench.methods import align  # noqa: E402

PROPOSALS = 5
SIDE = 48  # thumbnail pixels the correlation is taken at: a flat photo has no finer detail
MIN_OVERLAP = 0.4
SCALES = np.geomspace(0.4, 2.5, 17)
RANK_FLOORS = (0, 1, 2, 4)
NCC_FLOORS = (0.8, 0.9, 0.95, 0.98)


def thumbnail(thumb: bytes, side: int, colour: bool) -> np.ndarray:
    """The report thumbnail at `side` pixels on its long side, (h, w, channels): RGB, or grey."""
    image = np.asarray(Image.open(io.BytesIO(thumb)).convert("RGB" if colour else "L"), np.float64)
    return resized(image.reshape(*image.shape[:2], -1), side / max(image.shape[:2]))


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    out = cv2.resize(np.ascontiguousarray(image), (max(6, round(w * factor)), max(6, round(h * factor))),
                     interpolation=cv2.INTER_AREA)
    return out.reshape(*out.shape[:2], -1)


def inner_mask(shape: tuple[int, int]) -> np.ndarray:
    """The align stage's mask (simbench.methods.align: BORDER of each side left out), as floats."""
    return align.inner_mask(shape).astype(np.float64)


def _correlate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum over p of x(p) y(p - shift), for every shift."""
    return fftconvolve(x, y[::-1, ::-1], mode="full")


def masked_ncc(f: np.ndarray, mf: np.ndarray, g: np.ndarray, mg: np.ndarray, min_overlap: float) -> float:
    """The best normalised cross-correlation of images f and g, (h, w, channels), over the shifts where their
    masks (h, w) overlap by at least min_overlap of the smaller mask (Padfield 2012); -1 where none does. Each
    channel is centred on its own over the overlap, and the channels' products and variances summed."""
    overlap = _correlate(mf, mg)
    n = np.maximum(overlap, 1)
    num = var_f = var_g = 0.0
    for c in range(f.shape[2]):
        fc, gc = f[..., c] * mf, g[..., c] * mg
        sf, sg = _correlate(fc, mg), _correlate(mf, gc)
        num = num + _correlate(fc, gc) - sf * sg / n
        var_f = var_f + np.maximum(_correlate(fc * fc, mg) - sf ** 2 / n, 1e-9)
        var_g = var_g + np.maximum(_correlate(mf, gc * gc) - sg ** 2 / n, 1e-9)
    ncc = np.where(overlap >= min_overlap * min(mf.sum(), mg.sum()), num / np.sqrt(var_f * var_g), -1.0)
    return float(ncc.max())


def alignment_correlation(thumb_a: bytes, thumb_b: bytes, colour: bool = False) -> float:
    """The best masked NCC of a's thumbnail and b's (grey, or in colour), b turned by a quarter turn and scaled by
    each of SCALES."""
    f = thumbnail(thumb_a, SIDE, colour)
    mf = inner_mask(f.shape[:2])
    big = thumbnail(thumb_b, 3 * SIDE, colour)
    best = -1.0
    for turns in range(4):
        turned = np.rot90(big, turns)
        for s in SCALES:
            g = resized(turned, SIDE / max(turned.shape[:2]) * s)
            best = max(best, masked_ncc(f, mf, g, inner_mask(g.shape[:2]), MIN_OVERLAP))
    return best


def ranks(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (a, b): the rank of b among a's pairs and of a among b's (pipeline.partner_ranks: as
    best_pairs_per_item ranks the CNN's proposals)."""
    from simbench.find.pipeline import partner_ranks

    x, y, rank = partner_ranks(a, b, score)
    n = np.int64(max(x.max(initial=0), y.max(initial=0)) + 1)
    keys = x * n + y
    order = np.argsort(keys)

    def rank_of(p, q):  # q's rank among p's partners
        return rank[order[np.searchsorted(keys[order], np.asarray(p, np.int64) * n + q)]]

    return rank_of(a, b), rank_of(b, a)


def proposal_rows(result, label: Callable[[int, int], str]) -> list[tuple]:
    """(label(i, j), find's score, mutual rank, grey and colour alignment correlations) of each pair (i, j) the CNN
    scores among some picture's PROPOSALS best in a find result."""
    n = np.int64(len(result.items))
    pairs = result.pairs
    found = dict(zip((np.minimum(pairs.a, pairs.b) * n + np.maximum(pairs.a, pairs.b)).tolist(), pairs.score.tolist()))
    cnn = result.raw["cnn"]
    a, b = cnn.a.astype(np.int64), cnn.b.astype(np.int64)
    rank_ab, rank_ba = ranks(a, b, cnn.score)
    thumbs = [item.thumb for item in result.items]
    out = []
    for i, j, r, q in zip(a.tolist(), b.tolist(), rank_ab.tolist(), rank_ba.tolist()):
        if min(r, q) < PROPOSALS:
            on_overlap = refined_alignment(thumbs[i], thumbs[j], overlap_template=True)
            out.append((label(i, j), found.get(min(i, j) * n + max(i, j), 0.0), max(r, q),
                        alignment_correlation(thumbs[i], thumbs[j]),
                        alignment_correlation(thumbs[i], thumbs[j], colour=True), refined_alignment(thumbs[i], thumbs[j]),
                        on_overlap, max(on_overlap, refined_alignment(thumbs[j], thumbs[i], overlap_template=True))))
    return out


def refined_alignment(thumb_a: bytes, thumb_b: bytes, overlap_template: bool = False) -> float:
    """The align stage's signal (simbench.methods.align.align_pair: the search refined by ECC; overlap_template: see
    align.refine), -1 where the pair does not align."""
    from simbench.find.items import grey_thumbnail
    from simbench.methods.align import align_pair

    found = align_pair(grey_thumbnail(thumb_a), grey_thumbnail(thumb_b), overlap_template)
    return -1.0 if found is None else found.correlation


def yearbook_rows(layout: int, overrides: list[str], work: Path) -> list[tuple]:
    """proposal_rows of one tuning yearbook, labelled by kind of true pair or "different photos"."""
    from simbench.find import cascade
    from simbench.find.pipeline import find

    pdfs = work / f"layout{layout}"
    shutil.rmtree(pdfs, ignore_errors=True)
    placements = school_yearbook(pdfs, TUNE, layout, False)
    cfg = cascade.make_config(None, overrides)
    result = find([pdfs], work / f"out-{layout}", cfg, index=work / f"index-{layout}", progress=False, write=False)
    where = item_placements(placements, result.items)
    return proposal_rows(result, lambda i, j: kind_of(placements, where[i], where[j]))


def devset_rows(overrides: list[str], work: Path) -> dict[str, list[tuple]]:
    """proposal_rows of the tuning devset's halves and seed-1 rebuilds, run as `bench_find.py tune` runs them,
    labelled "copies" or "different pictures", pooled by part (photo, lineart)."""
    from benchmarks.bench_find import dataset_index, tables_for_half, tuning_halves
    from simbench.find import cascade
    from simbench.find.pipeline import find

    out = {}
    for ds, extra in tuning_halves(work, overrides, False, seeds=(1,)):
        extra = [*extra, f"calibration={tables_for_half(work, ds.name, overrides, extra)}"]
        cfg = cascade.make_config(None, [*overrides, *extra])
        result = find([ds.root / "images"], work / f"out-{ds.name}", cfg, index=work / f"index-{ds.name}",
                      progress=False, write=False)
        rows = dataset_index(result.items, ds)
        truth = {tuple(sorted(t)) for t in np.asarray(ds.truth).tolist()}
        part = "lineart" if "lineart" in ds.name else "photo"
        out.setdefault(part, []).extend(proposal_rows(result, lambda i, j: "copies" if tuple(sorted(
            (int(rows[i]), int(rows[j])))) in truth else "different pictures"))
    return out


def table(rows: list, kinds: tuple[str, ...], false: str, threshold: float) -> str:
    """Markdown: at each floor, the true pairs scored below the threshold by kind, all true pairs, then the false
    pairs (all, and those below the threshold)."""
    kind = np.array([r[0] for r in rows], dtype=object)
    score, rank, grey, colour, refined, on_overlap, both_ways = (np.array([r[k] for r in rows]) for k in range(1, 8))
    missed, true = score < threshold, kind != false
    out = ["| signal | " + " | ".join(f"lost: {k}" for k in kinds) + f" | true pairs | {false} | of them below the "
           "threshold |", "|---" * (len(kinds) + 4) + "|"]
    floors = [("(every pair)", np.ones(len(rows), bool))]
    floors += [(f"mutual rank <= {f}", rank <= f) for f in RANK_FLOORS]
    floors += [(f"grey alignment >= {f:g}", grey >= f) for f in NCC_FLOORS]
    floors += [(f"mutual rank <= 1 and grey alignment >= {f:g}", (rank <= 1) & (grey >= f)) for f in NCC_FLOORS[1:3]]
    floors += [(f"colour alignment >= {f:g}", colour >= f) for f in NCC_FLOORS]
    floors += [(f"mutual rank <= 1 and colour alignment >= {f:g}", (rank <= 1) & (colour >= f))
               for f in NCC_FLOORS[1:3]]
    floors += [(f"refined alignment (align stage) >= {f:g}", refined >= f) for f in NCC_FLOORS]
    floors += [(f"refined alignment on the overlap >= {f:g}", on_overlap >= f) for f in NCC_FLOORS]
    floors += [(f"refined alignment on the overlap, both ways >= {f:g}", both_ways >= f) for f in NCC_FLOORS]
    for name, kept in floors:
        counts = [int((kept & missed & (kind == k)).sum()) for k in kinds]
        counts += [int((kept & true).sum()), int((kept & ~true).sum()), int((kept & ~true & missed).sum())]
        out.append(f"| {name} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    from simbench.find import cascade
    from simbench.find.yearbook import PAIR_KINDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value find settings")
    parser.add_argument("--layouts", help="tuning yearbooks: comma-separated build_yearbook seeds")
    parser.add_argument("--devset", action="store_true", help="the tuning devset's halves and seed-1 rebuilds instead")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "flat_signals_probe")
    args = parser.parse_args(argv)
    if bool(args.layouts) == args.devset:
        parser.error("give --layouts or --devset")
    overrides = list(args.overrides)
    threshold = float(cascade.make_config(None, overrides).threshold)
    settings = " ".join(overrides) or "default"
    print(f"pairs among each picture's {PROPOSALS} best CNN pairs; settings {settings}; at each floor of a signal, the "
          f"true pairs find scores below {threshold:g}, all true pairs, then the false pairs (all, and those below "
          f"{threshold:g})")
    if args.layouts:
        rows = [row for layout in args.layouts.split(",") for row in yearbook_rows(int(layout), overrides, args.work)]
        print(f"tuning yearbooks {args.layouts} pooled")
        print(table(rows, PAIR_KINDS, "different photos", threshold))
        return
    for part, rows in devset_rows(overrides, args.work).items():
        print(f"tuning devset, {part}: its two halves and their seed-1 rebuilds pooled")
        print(table(rows, ("copies",), "different pictures", threshold))


if __name__ == "__main__":
    main()
