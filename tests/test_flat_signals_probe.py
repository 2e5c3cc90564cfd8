"""flat_signals_probe's pieces against plain implementations: the masked NCC over every shift, the ranks, the
table's counts, and the alignment correlation of a crop and of an unrelated photo."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.flat_signals_probe import alignment_correlation, masked_ncc, ranks, table  # noqa: E402


def _ncc_by_loops(f, mf, g, mg, min_overlap):
    """Every shift of g over f: the pixels both masks cover, each channel less its mean there, all channels as one
    vector; the cosine of the two vectors."""
    best = -1.0
    need = min_overlap * min(mf.sum(), mg.sum())
    for dy in range(-g.shape[0] + 1, f.shape[0]):
        for dx in range(-g.shape[1] + 1, f.shape[1]):
            fs, gs = [], []
            for y in range(max(0, dy), min(f.shape[0], dy + g.shape[0])):
                for x in range(max(0, dx), min(f.shape[1], dx + g.shape[1])):
                    if mf[y, x] and mg[y - dy, x - dx]:
                        fs.append(f[y, x])
                        gs.append(g[y - dy, x - dx])
            if len(fs) >= need and len(fs) > 1:
                fs, gs = np.array(fs), np.array(gs)
                u, v = (fs - fs.mean(axis=0)).ravel(), (gs - gs.mean(axis=0)).ravel()
                best = max(best, float(u @ v / np.sqrt((u @ u) * (v @ v))))
    return best


@pytest.mark.parametrize("seed, channels", [(0, 1), (1, 1), (2, 3), (3, 3)])
def test_masked_ncc_equals_the_correlation_over_every_shift(seed, channels):
    rng = np.random.default_rng(seed)
    f, g = rng.random((9, 7, channels)), rng.random((6, 8, channels))
    mf, mg = (rng.random(f.shape[:2]) > 0.2).astype(float), (rng.random(g.shape[:2]) > 0.2).astype(float)
    assert masked_ncc(f, mf, g, mg, 0.4) == pytest.approx(_ncc_by_loops(f, mf, g, mg, 0.4), abs=1e-6)


def test_a_shifted_window_correlates_exactly():
    f = np.random.default_rng(3).random((12, 12, 3))
    window = 2 * f[3:10, 2:11] + np.array([5, 1, 3])  # each channel scaled alike, offset on its own
    assert masked_ncc(f, np.ones(f.shape[:2]), window, np.ones((7, 9)), 0.4) == pytest.approx(1.0)


def test_ranks_equal_a_plain_count():
    rng = np.random.default_rng(4)
    keys = {(i, j) for i, j in rng.integers(0, 12, (60, 2)).tolist() if i < j}
    a, b = (np.array(x) for x in zip(*sorted(keys)))
    score = rng.integers(0, 5, len(a)).astype(float)  # ties: to the lower other item

    def rank(x, y):
        mine = [(-s, (j if i == x else i)) for i, j, s in zip(a.tolist(), b.tolist(), score.tolist()) if x in (i, j)]
        return sorted(mine).index(next(m for m in mine if m[1] == y))

    got = ranks(a, b, score)
    assert got[0].tolist() == [rank(i, j) for i, j in zip(a.tolist(), b.tolist())]
    assert got[1].tolist() == [rank(j, i) for i, j in zip(a.tolist(), b.tolist())]


def test_table_counts_lost_true_pairs_by_kind_all_true_pairs_and_false_ones():
    # (kind, find's score, mutual rank, grey, colour, refined, refined on the overlap, the same both ways): a lost flat
    # pair, a pair of different photos, a found pair
    rows = [("flat", 0.3, 0, 0.96, 0.99, 0.97, 0.98, 0.99), ("different photos", 0.2, 1, 0.97, 0.5, -1.0, 0.91, 0.91),
            ("plain", 0.99, 3, 0.5, 0.5, 0.99, -1.0, 0.96)]
    lines = table(rows, ("flat", "plain"), "different photos", 0.95).splitlines()
    assert lines[0] == ("| signal | lost: flat | lost: plain | true pairs | different photos | of them below the "
                        "threshold |")
    assert "| (every pair) | 1 | 0 | 2 | 1 | 1 |" in lines
    assert "| mutual rank <= 0 | 1 | 0 | 1 | 0 | 0 |" in lines
    assert "| grey alignment >= 0.95 | 1 | 0 | 1 | 1 | 1 |" in lines
    assert "| colour alignment >= 0.9 | 1 | 0 | 1 | 0 | 0 |" in lines
    assert "| refined alignment (align stage) >= 0.95 | 1 | 0 | 2 | 0 | 0 |" in lines
    assert "| refined alignment (align stage) >= 0.98 | 0 | 0 | 1 | 0 | 0 |" in lines
    assert "| refined alignment on the overlap >= 0.9 | 1 | 0 | 1 | 1 | 1 |" in lines
    assert "| refined alignment on the overlap, both ways >= 0.95 | 1 | 0 | 2 | 0 | 0 |" in lines
    assert "| mutual rank <= 1 and grey alignment >= 0.98 | 0 | 0 | 0 | 0 | 0 |" not in lines  # floors 0.9, 0.95 only


def _thumb(image: Image.Image) -> bytes:
    image = image.copy()
    image.thumbnail((160, 160))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("colour", [False, True])
def test_a_turned_crop_aligns_with_its_photo_better_than_another_photo(photos, colour):
    whole = Image.fromarray(photos["astronaut"])
    crop = whole.crop((60, 40, 420, 400)).rotate(90, expand=True)
    same = alignment_correlation(_thumb(whole), _thumb(crop), colour)
    other = alignment_correlation(_thumb(whole), _thumb(Image.fromarray(photos["coffee"])), colour)
    assert same > 0.9 and same > other + 0.1, (same, other)
