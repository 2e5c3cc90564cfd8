"""Which copies of a chain probe collection the align stage lays over their reference, as find runs it, with and
without its stretched look (align.method.stretch_below; runs (109) and (110) of results/find.md). Development data.

    python benchmarks/stretch_probe.py DIR [--member aspect] [--pair A B ...] [--min-overlap F] [key=value ...]

DIR: a collection benchmarks/chain_probe.py built (images/, labels.csv), e.g.
~/.cache/simbench/chain_probe/chain3-seed0-copies8. For every copy with --member among its edits (its label or its
chain's members), and for each --pair of image names given, the two report thumbnails as find makes them
(simbench.find.sources.read_image) are aligned by align_pair with find's align options (the key=value overrides
applied), once without stretching and once as find does; per pair the correlation, the stretch kept and the overlap
(share of the smaller picture), then how many reach the stage's min_correlation each way. --min-overlap: the
stretched look's STRETCH_MIN_OVERLAP for this probe (0: run (109)'s look, which had none).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def thumbnail(path: Path):
    """The grey report thumbnail find aligns (None: it does not decode)."""
    from simbench.find.items import grey_thumbnail
    from simbench.find.pdf import PdfOptions
    from simbench.find.sources import read_image

    record = read_image(str(path), "", PdfOptions())
    return grey_thumbnail(record.images[0]["thumb"]) if record.images else None


def copies_with(folder: Path, member: str) -> list[tuple[str, str]]:
    """(reference, copy) image names of the copies whose label or chain members include `member`."""
    with open(folder / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    reference = {r["source"]: Path(r["path"]).name for r in rows if r["label"] == "reference"}
    return [(reference[r["source"]], Path(r["path"]).name) for r in rows
            if r["label"] != "reference" and member in [r["label"], *r["members"].split("+")]]


def describe(found) -> str:
    if found is None:
        return "-"
    stretch = "x".join(f"{f:.2f}" for f in found.stretch)
    return f"{found.correlation:.4f} (stretch {stretch}, overlap {found.overlap:.2f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--member", default="aspect", help="the copies looked at: those with this edit")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="two image names of the folder to align as well (repeatable)")
    parser.add_argument("--min-overlap", type=float, default=None, help="STRETCH_MIN_OVERLAP for this probe")
    parser.add_argument("overrides", nargs="*", help="key=value find settings")
    args = parser.parse_args(argv)
    from simbench.find import cascade
    from simbench.methods import align
    from simbench.methods.align import align_pair

    if args.min_overlap is not None:
        align.STRETCH_MIN_OVERLAP = args.min_overlap

    stage = next(s for s in cascade.build_stages(cascade.make_config("cascade", args.overrides), calibrations={},
                                                 quiet=True) if s.name == "align")
    options, floor = stage.method.options, stage.method.min_correlation
    pairs = copies_with(args.folder, args.member) + [tuple(p) for p in args.pair]
    held = {"as it is": 0, "as find runs it": 0}
    print(f"| a | b | as it is | as find runs it (stretch_below {options['stretch_below']}) |\n|---|---|---|---|")
    for a, b in pairs:
        ga, gb = thumbnail(args.folder / "images" / a), thumbnail(args.folder / "images" / b)
        ways = {"as it is": None, "as find runs it": None}
        if ga is not None and gb is not None:
            ways = {"as it is": align_pair(ga, gb, **{**options, "stretch_below": None}),
                    "as find runs it": align_pair(ga, gb, **options)}
        for way, found in ways.items():
            held[way] += found is not None and found.correlation >= floor
        print(f"| {a} | {b} | {describe(ways['as it is'])} | {describe(ways['as find runs it'])} |")
    print(f"\n{len(pairs)} pairs aligned at {floor} or more: " + ", ".join(f"{n} {way}" for way, n in held.items()))


if __name__ == "__main__":
    main()
