"""How many placements of the school yearbooks show only a plain field, and how many true pairs they touch.

    python benchmarks/yearbook_content_free.py tune 1926-1989
    python benchmarks/yearbook_content_free.py report 0,2,3,4,5

Builds each yearbook as bench_find.py yearbook / yearbook-tune does (split: tune, report, holdout1, holdout2; layouts
as A-B or a comma-separated list) into a temporary folder and counts its content-free placements
(simbench.find.yearbook.content_free), which every yearbook score leaves out with their pairs (scored_truth).
Data only: nothing is run through find.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_find import school_yearbook  # noqa: E402
from simbench.find.yearbook import scored_truth, true_pairs  # noqa: E402


def counts(books: list[list]) -> dict[str, int]:
    """Placements, content-free ones, true pairs and those left out, summed over the yearbooks' placements."""
    out = {"placements": 0, "content_free": 0, "true_pairs": 0, "left_out": 0}
    for placements in books:
        truth, left_out = scored_truth(placements)
        every = true_pairs(placements)
        out["placements"] += len(placements)
        out["content_free"] += len(left_out)
        out["true_pairs"] += len(every)
        out["left_out"] += len(every) - len(truth)
    return out


def layouts_of(text: str) -> list[int]:
    if "-" in text:
        first, last = (int(x) for x in text.split("-"))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(",")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", choices=("tune", "report", "holdout1", "holdout2"))
    parser.add_argument("layouts", help="build_yearbook seeds: A-B or a comma-separated list")
    args = parser.parse_args(argv)
    books = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in layouts_of(args.layouts):
            books.append(school_yearbook(Path(tmp) / str(layout), args.split, layout, False))
    c = counts(books)
    print(f"{args.split} layouts {args.layouts}: {c['placements']} placements, {c['content_free']} content-free; "
          f"{c['true_pairs']} true pairs, {c['left_out']} of them with a content-free placement (not scored)")


if __name__ == "__main__":
    main()
