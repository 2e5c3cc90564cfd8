"""report.html in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Skipped, with the reason, when Chromium or the playwright package is missing; CI installs both:
    apt-get install -y chromium && pip install playwright      (never `playwright install`: no downloads)
The page must work from file:// with the network off: every request it makes is checked.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                     "(pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


def open_report(browser, path: Path, bypass_csp: bool = True):
    """A page showing the report, recording every request and every console error."""
    # The page forbids eval and every fetch (its Content-Security-Policy); Playwright's polling uses eval,
    # so the harness bypasses the policy, and the requests are checked by hand instead.
    page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=bypass_csp)
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("#status:not(:empty)")
    return page, requests, errors


def group_count(page) -> int:
    return int(page.inner_text("#status").split()[0])


def wait_for_change(page, before: str) -> None:
    """Wait until the view was regrouped (the status line changes on every regrouping that matters)."""
    page.wait_for_function("before => document.querySelector('#status').textContent !== before", arg=before)


def test_report_slider_and_method_filter(browser, tmp_path, photos):
    """A real `simbench find` run; moving the threshold slider and the method filter changes the groups."""
    from simbench.cli import find_main

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "rocket", "coffee", "cat", "camera"):
        img = photos[name]
        h, w = img.shape[:2]
        Image.fromarray(img).save(folder / f"{name}.jpg", quality=90)
        Image.fromarray(img[h // 8: h * 7 // 8, w // 6: w * 5 // 6]).save(folder / f"{name}-crop.jpg", quality=80)
        Image.fromarray(np.ascontiguousarray(np.rot90(img[: h * 3 // 4]))).save(folder / f"{name}-turned.jpg")
    out = tmp_path / "out"
    # Threshold 0.8: keypoint evidence alone is calibrated below 0.95 on the tuning collections, whose
    # shared screenshot frames keep even strong keypoint pairs from certainty (results/find.md).
    assert find_main([str(folder), "--out", str(out), "--method", "keypoints", "-t", "0.8", "-q"]) == 0
    page, requests, errors = open_report(browser, out / "report.html")
    start = group_count(page)
    assert start >= 4 and page.locator(".group").count() == start
    assert page.locator(".group img").first.evaluate("img => img.complete && img.naturalWidth > 0")

    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("End")  # drag to 1.00: only certain pairs remain
    page.wait_for_function("document.querySelector('#threshold-value').textContent === '1.00'")
    at_top = group_count(page)
    page.keyboard.press("Home")  # all the way down: every pair written joins groups
    page.wait_for_function("document.querySelector('#threshold-value').textContent !== '1.00'")
    at_bottom = group_count(page)
    assert at_top < start <= at_bottom or at_top < at_bottom, (at_top, start, at_bottom)
    assert page.locator(".group").count() == at_bottom

    # Group cards are sorted by their best score.
    scores = [float(s) for s in page.locator(".group").evaluate_all("gs => gs.map(g => g.dataset.score)")]
    assert scores == sorted(scores, reverse=True)

    options = page.locator("#method option").evaluate_all("os => os.map(o => o.value)")
    assert options[0] == "all" and "keypoints" in options
    page.select_option("#method", "keypoints")
    page.wait_for_function("document.querySelector('#method').value === 'keypoints'")
    assert group_count(page) <= at_bottom
    page.select_option("#method", "all")
    slider.fill("0.5")
    page.wait_for_function("document.querySelector('#threshold-value').textContent === '0.50'")

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 20_000
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def test_report_with_500_groups_renders_lazily(browser, tmp_path):
    """500 groups: only the first page of groups is built, more as the reader scrolls; the slider stays quick."""
    from omegaconf import OmegaConf

    from simbench.find.cascade import FusedPairs
    from simbench.find.items import Item, thumbnail_jpeg
    from simbench.find.pipeline import FindResult
    from simbench.find.report import GROUPS_PER_PAGE, write_report
    from simbench.types import Skipped

    rng = np.random.default_rng(0)
    items, a, b, score, group = [], [], [], [], []
    for g in range(500):
        colour = tuple(int(c) for c in rng.integers(40, 220, 3))
        thumb = thumbnail_jpeg(Image.new("RGB", (160, 120), colour))
        first = len(items)
        for k in range(int(rng.integers(2, 4))):
            items.append(Item(None, f"/book/yearbook-{g % 3}.pdf#page={g // 3 + 1}&image={k + 1}",
                              f"/book/yearbook-{g % 3}.pdf", g // 3 + 1, "50.00 60.00 250.00 300.00", str(g), thumb, ""))
            if k:
                a.append(first)
                b.append(len(items) - 1)
                score.append(float(rng.uniform(0.3, 1.0)))
                group.append(g)
    n = len(a)

    def groups_at(t: float) -> int:
        return len({g for g, s in zip(group, score) if s >= t})

    methods = np.array(["keypoints"] * n, dtype=object)
    pairs = FusedPairs(np.array(a), np.array(b), np.array(score), methods,
                       {"identical": np.zeros(n), "keypoints": np.array(score), "cnn": np.zeros(n)})
    result = FindResult(items, pairs, [], [Skipped("/book/broken.pdf", "not a readable PDF (damaged)")], 4, 3, 4)
    cfg = OmegaConf.create({"method": "cascade", "threshold": 0.5, "min_score": 0.1})
    stages = [type("S", (), {"name": "keypoints"})(), type("S", (), {"name": "cnn"})()]
    write_report(tmp_path / "report.html", result, cfg, stages)

    # Under its own Content-Security-Policy the page works the same (and could fetch nothing).
    strict, _, strict_errors = open_report(browser, tmp_path / "report.html", bypass_csp=False)
    assert strict.locator(".group").count() == GROUPS_PER_PAGE and not strict_errors, strict_errors
    strict.close()

    page, requests, errors = open_report(browser, tmp_path / "report.html")
    total = group_count(page)
    assert total == groups_at(0.5) > 300
    assert page.locator(".group").count() == GROUPS_PER_PAGE  # lazily: one page of groups so far
    page.mouse.wheel(0, 200_000)
    page.wait_for_function(f"document.querySelectorAll('.group').length > {GROUPS_PER_PAGE}")
    page.locator("#threshold").fill("0.9")
    page.wait_for_function("document.querySelector('#threshold-value').textContent === '0.90'")
    assert group_count(page) == groups_at(0.9)
    before = page.inner_text("#status")
    page.fill("#search", "yearbook-1")
    wait_for_change(page, before)
    assert 0 < group_count(page) < groups_at(0.9)
    page.screenshot(path=str(tmp_path / "report-500.png"))
    assert "1 skipped" in page.inner_text("#skipped-section")
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


# ---------------------------------------------------------------------------------------------------
# The pair viewer: evidence drawn, decisions by keyboard, decisions.csv


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def magenta(pixels: np.ndarray) -> np.ndarray:
    """Where the viewer drew matched points (COLOURS.point, pure magenta; photos have no such pixels)."""
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    return (r > 225) & (g < 40) & (b > 225)


@pytest.fixture(scope="module")
def pasted_report(tmp_path_factory, photos):
    """A keypoints run on: a photo and a larger picture it was pasted into (test_evidence.PASTED), a photo
    and its crop, and an unrelated photo."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_evidence import pasted_collection

    from simbench.cli import find_main

    root = tmp_path_factory.mktemp("pasted-report")
    pasted_collection(root / "in", photos)
    img = photos["rocket"]
    h, w = img.shape[:2]
    Image.fromarray(img).save(root / "in" / "rocket.jpg", quality=90)
    Image.fromarray(img[h // 8: h * 7 // 8, w // 6: w * 5 // 6]).save(root / "in" / "rocket-crop.jpg", quality=85)
    assert find_main([str(root / "in"), "--out", str(root / "out"), "--method", "keypoints", "-t", "0.5", "-q"]) == 0
    return root


def group_of(page, name: str) -> int:
    """The position (0-based) of the group showing the file `name`."""
    return page.evaluate("name => view.groups.findIndex(g => [...g.members].some(m => DATA.items[m].d.endsWith('/' + name)))",
                         name)


def open_pair_by_keyboard(page, group: int) -> list[str]:
    """Focus group `group` (0-based) with j, open its first pair with Enter; the pair's (a, b)."""
    for _ in range(group + 1):
        page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#viewer').classList.contains('open') && "
                           "document.querySelector('#pair-canvas').dataset.layout")
    return page.evaluate("() => { const [p] = currentPair(); return [DATA.items[p[0]].d, DATA.items[p[1]].d]; }")


def test_pair_viewer_draws_the_matches_on_the_pasted_region(browser, pasted_report):
    """Screenshot check: every matched point drawn on the larger picture lies on the pasted region, the
    points on the photo spread over it, and the match lines are drawn between them."""
    from test_evidence import PASTED

    page, requests, errors = open_report(browser, pasted_report / "out" / "report.html")
    names = [Path(x).name for x in open_pair_by_keyboard(page, group_of(page, "pasted.jpg"))]
    assert sorted(names) == ["pasted.jpg", "photo.jpg"], names
    layout = json.loads(page.locator("#pair-canvas").get_attribute("data-layout"))
    width = page.evaluate("document.querySelector('#pair-canvas').width")
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#pair-canvas").screenshot())).convert("RGB"))
    f = shot.shape[1] / width  # CSS pixels of the canvas per canvas pixel
    pasted, photo = (layout["a"], layout["b"]) if names[0] == "pasted.jpg" else (layout["b"], layout["a"])
    ys, xs = np.nonzero(magenta(shot))
    on_pasted = (xs >= pasted["x"] * f) & (xs < (pasted["x"] + pasted["w"]) * f)
    on_photo = (xs >= photo["x"] * f) & (xs < (photo["x"] + photo["w"]) * f)
    assert on_pasted.sum() > 200 and on_photo.sum() > 200  # dozens of dots of radius 2.5 on each
    assert on_pasted.sum() + on_photo.sum() == len(xs)  # nothing drawn in the gap but lines
    # Dots on the larger picture: within the pasted region (image pixels -> canvas -> screenshot), give or
    # take a dot's radius and antialiasing.
    x0, y0, x1, y1 = PASTED
    margin = 4 * f
    left, right = (pasted["x"] + x0 * pasted["sx"]) * f - margin, (pasted["x"] + x1 * pasted["sx"]) * f + margin
    top, bottom = (pasted["y"] + y0 * pasted["sy"]) * f - margin, (pasted["y"] + y1 * pasted["sy"]) * f + margin
    px, py = xs[on_pasted], ys[on_pasted]
    outside = (px < left) | (px > right) | (py < top) | (py > bottom)
    assert not outside.any(), list(zip(px[outside], py[outside]))[:10]
    assert (px.max() - px.min()) > 0.5 * (right - left) and (py.max() - py.min()) > 0.5 * (bottom - top)
    # The photo's own dots spread over most of it (the whole photo was pasted).
    qx, qy = xs[on_photo], ys[on_photo]
    assert (qx.max() - qx.min()) > 0.5 * photo["w"] * f and (qy.max() - qy.min()) > 0.5 * photo["h"] * f
    # Lines: the gap between the two images is crossed by the match lines (cyan) and nothing else.
    gap = shot[:, int((layout["a"]["x"] + layout["a"]["w"]) * f) + 2: int(layout["b"]["x"] * f) - 2]
    cyan = (gap[..., 2].astype(int) > 150) & (gap[..., 1].astype(int) > 100) & (gap[..., 0].astype(int) < 120)
    assert cyan.any(axis=1).sum() > 20
    assert "verified match" in page.inner_text("#why")
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def test_decisions_by_keyboard_and_decisions_csv(browser, pasted_report, tmp_path):
    page, _, errors = open_report(browser, pasted_report / "out" / "report.html")
    keys = page.locator("#keys").text_content()  # the shortcuts are documented on the page
    assert all(k in keys for k in ("j", "Enter", "Shift", "Esc", "not duplicate", "decisions.csv")), keys
    pasted_group = group_of(page, "pasted.jpg")
    first = open_pair_by_keyboard(page, pasted_group)
    page.keyboard.press("d")
    assert page.inner_text("#pair-state") == "marked duplicate"
    page.keyboard.press("n")  # changed one's mind
    assert page.inner_text("#pair-state") == "marked not duplicate"
    page.keyboard.press("Escape")
    assert not page.locator("#viewer").evaluate("v => v.classList.contains('open')")
    page.keyboard.press("k" if pasted_group else "j")  # the other group, as a whole
    page.keyboard.press("Shift+D")
    other = 1 - pasted_group
    second = page.evaluate("g => view.groups[g].pairs.map(([p]) => [DATA.items[p[0]].d, DATA.items[p[1]].d])", other)
    assert "2 decisions" in page.inner_text("#decision-count")
    assert "decided 1/1" in page.locator(".group").nth(other).inner_text()
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "decisions.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "decisions.csv"
    rows = read_rows(saved)
    assert rows == [{"a": first[0], "b": first[1], "decision": "not_duplicate"},
                    *({"a": a, "b": b, "decision": "duplicate"} for a, b in second)]
    pairs = {(r["a"], r["b"]) for r in read_rows(pasted_report / "out" / "pairs.csv")}
    assert {(r["a"], r["b"]) for r in rows} <= pairs  # a and b exactly as pairs.csv writes them
    # Decisions survive reloading the page (local storage of this report).
    page.reload()
    page.wait_for_selector("#status:not(:empty)")
    assert "2 decisions" in page.inner_text("#decision-count")
    assert not errors, errors

    # Re-run with the downloaded file: the non-duplicate is hidden, the confirmed pair stays.
    from simbench.cli import find_main

    again = tmp_path / "again"
    assert find_main([str(pasted_report / "in"), "--out", str(again), "--method", "keypoints", "-t", "0.5", "-q",
                      "--decisions", str(saved)]) == 0
    found = {(r["a"], r["b"]): r for r in read_rows(again / "pairs.csv")}
    assert tuple(first) not in found and (first[1], first[0]) not in found
    assert all(found[a, b]["method"] == "decision" and float(found[a, b]["score"]) == 1 for a, b in second)
    page, _, errors = open_report(browser, again / "report.html")
    assert "decisions applied: 2" in page.inner_text("#stats")
    assert group_of(page, "pasted.jpg") == -1  # hidden
    # The page starts from the decisions it was given: a new download keeps the hidden pair's too.
    assert "2 decisions (1 duplicate, 1 not duplicate)" in page.inner_text("#decision-count")
    with page.expect_download() as download:
        page.click("#download")
    download.value.save_as(tmp_path / "decisions-2.csv")
    again_rows = read_rows(tmp_path / "decisions-2.csv")
    assert sorted(map(tuple, map(dict.values, again_rows))) == sorted(map(tuple, map(dict.values, rows)))
    assert not errors, errors


def test_pdf_pair_shows_the_pages_with_the_placements_highlighted(browser, tmp_path):
    """A photo placed on two pages: the viewer shows both pages with the placed rectangle drawn where
    pairs.csv says it is (bbox over the page size)."""
    import pymupdf

    from simbench.cli import find_main
    from simbench.find.yearbook import build_yearbook

    build_yearbook(tmp_path / "pdfs", n_pdfs=1, n_photos=1, n_single=1, seed=3)
    out = tmp_path / "out"
    assert find_main([str(tmp_path / "pdfs"), "--out", str(out), "--method", "keypoints", "-t", "0.5", "-q"]) == 0
    page, requests, errors = open_report(browser, out / "report.html")
    a, b = open_pair_by_keyboard(page, 0)
    page.wait_for_function("document.querySelectorAll('#pdf-pages canvas').length === 2")
    row = next(r for r in read_rows(out / "pairs.csv") if (r["a"], r["b"]) == (a, b))
    for k, side in enumerate("ab"):
        with pymupdf.open(row[f"{side}_source"]) as doc:
            rect = doc[int(row[f"{side}_page"]) - 1].rect
        x0, y0, x1, y1 = (float(v) for v in row[f"{side}_bbox"].split())
        expected = np.array([x0 / rect.width, y0 / rect.height, x1 / rect.width, y1 / rect.height])
        canvas = page.locator("#pdf-pages canvas").nth(k)
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
        red = (shot[..., 0] > 200) & (shot[..., 1] < 70) & (shot[..., 2] < 70)  # the highlight's outline
        ys, xs = np.nonzero(red)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / np.array([shot.shape[1], shot.shape[0]] * 2)
        assert np.abs(found - expected).max() < 0.02, (side, found, expected)
        assert f"page {row[f'{side}_page']}" in page.locator("#pdf-pages figcaption").nth(k).inner_text()
    # The placed images themselves are shown larger than their thumbnails (rendered again from the PDF).
    layout = json.loads(page.locator("#pair-canvas").get_attribute("data-layout"))
    assert max(layout["a"]["w"], layout["a"]["h"]) > 300
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def synthetic_result(n_groups: int, seed: int = 0, evidence: bool = False):
    """A FindResult of n_groups groups of 2-3 PDF images (solid-colour thumbnails), keypoint pairs; with
    `evidence`, group 0 is a chain a-b-c whose a-c pair is linked, and its pairs have CNN records."""
    from simbench.find.cascade import FusedPairs
    from simbench.find.items import Item, thumbnail_jpeg
    from simbench.find.pipeline import FindResult
    from simbench.types import Skipped

    rng = np.random.default_rng(seed)
    items, a, b, score = [], [], [], []
    for g in range(n_groups):
        colour = tuple(int(c) for c in rng.integers(40, 220, 3))
        thumb = thumbnail_jpeg(Image.new("RGB", (160, 120), colour))
        first = len(items)
        for k in range(3 if evidence and g == 0 else int(rng.integers(2, 4))):
            items.append(Item(None, f"/book/yearbook-{g % 3}.pdf#page={g // 3 + 1}&image={k + 1}",
                              f"/book/yearbook-{g % 3}.pdf", g // 3 + 1, "50.00 60.00 250.00 300.00", str(g), thumb, ""))
            if k:
                a.append(len(items) - 2 if evidence and g == 0 else first)
                b.append(len(items) - 1)
                score.append(0.99 if evidence and g == 0 else float(rng.uniform(0.3, 1.0)))
    n = len(a)
    methods = np.array(["keypoints"] * n, dtype=object)
    pairs = FusedPairs(np.array(a), np.array(b), np.array(score), methods,
                       {"identical": np.zeros(n), "keypoints": np.array(score), "cnn": np.zeros(n)})
    result = FindResult(items, pairs, [], [Skipped("/book/broken.pdf", "not a readable PDF (damaged)")], 4, 3, 4)
    if evidence:
        pairs.a, pairs.b = np.r_[pairs.a, 0], np.r_[pairs.b, 2]
        pairs.score = np.r_[pairs.score, 0.99 * 0.99]
        pairs.method = np.concatenate([pairs.method, np.array(["linked"], dtype=object)])
        pairs.per_stage = {k: np.r_[v, 0.0] for k, v in pairs.per_stage.items()}
        result.evidence = {(0, 1): {"cnn": {"cosine": 0.93, "rank_a": 1, "rank_b": 2, "score": 0.97}},
                           (1, 2): {"hash": {"distance": 3, "bits": 64, "score": 0.99}},
                           (0, 2): {"chain": [[0, 1, 0.99, "keypoints"], [1, 2, 0.99, "keypoints"]]}}
    return result


def write_synthetic(path: Path, result, **settings) -> None:
    from omegaconf import OmegaConf

    from simbench.find.report import write_report

    cfg = OmegaConf.create({"method": "cascade", "threshold": 0.5, "min_score": 0.1, **settings})
    stages = [type("S", (), {"name": "keypoints"})(), type("S", (), {"name": "cnn"})()]
    write_report(path, result, cfg, stages)


def test_linked_chain_cnn_ranks_and_hash_distance_are_shown(browser, tmp_path):
    write_synthetic(tmp_path / "report.html", synthetic_result(3, evidence=True), link_score="weakest")
    page, _, errors = open_report(browser, tmp_path / "report.html")
    page.evaluate("() => openPair(0, view.groups[0].pairs.findIndex(([p]) => METHODS[p[3]] === 'linked'))")
    page.wait_for_function("document.querySelector('#why').textContent.includes('Linked')")
    assert page.locator("#why .chain img").count() == 3  # a -> b -> c
    assert "0.990 keypoints" in page.inner_text("#why .chain")
    assert "(score = its weakest pair)" in page.inner_text("#why")  # as link_score says
    page.evaluate("() => openPair(0, view.groups[0].pairs.findIndex(([p]) => p[6] && p[6].cnn))")
    page.wait_for_function("document.querySelector('#why').textContent.includes('CNN')")
    text = page.inner_text("#why")
    assert "cosine 0.930" in text and "nearest neighbour" in text and "neighbour #2" in text
    page.evaluate("() => openPair(0, view.groups[0].pairs.findIndex(([p]) => p[6] && p[6].hash))")
    page.wait_for_function("document.querySelector('#why').textContent.includes('Hash')")
    assert "64-bit codes differ in 3 bits" in page.inner_text("#why")
    assert not errors, errors


def test_5000_groups_first_paint_and_filter(browser, tmp_path):
    """5,000 groups: the first page of groups paints, and a search regroups, within generous bounds (a
    sanity check that the page stays usable; measured figures are in results/report.md)."""
    from simbench.find.report import GROUPS_PER_PAGE

    write_synthetic(tmp_path / "report.html", synthetic_result(5000))
    page, requests, errors = open_report(browser, tmp_path / "report.html")
    assert group_count(page) > 3000
    assert page.locator(".group").count() == GROUPS_PER_PAGE
    assert page.locator(".group img[loading=lazy]").count() == page.locator(".group img").count() > 0
    page.wait_for_function("performance.getEntriesByName('groups-shown').length > 0")
    paint = page.evaluate("performance.getEntriesByName('groups-shown')[0].startTime")  # from navigation
    filtered = page.evaluate("""() => new Promise((resolve) => {
        const before = document.querySelector('#status').textContent, t0 = performance.now();
        new MutationObserver(() => { if (document.querySelector('#status').textContent !== before)
            requestAnimationFrame(() => resolve(performance.now() - t0)); })
          .observe(document.querySelector('#status'), { childList: true, characterData: true, subtree: true });
        const box = document.querySelector('#search'); box.value = 'yearbook-1'; box.dispatchEvent(new Event('input'));
    })""")
    print(f"5000 groups: first groups shown at {paint:.0f} ms, search regrouped in {filtered:.0f} ms")
    assert 0 < paint < 20_000 and 0 < filtered < 5_000, (paint, filtered)
    assert 0 < group_count(page) < 3000 and page.locator(".group").count() <= GROUPS_PER_PAGE
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests[:5]


def test_decisions_csv_quotes_odd_names(browser, tmp_path):
    """Names with commas, quotes and a newline come back from decisions.csv exactly (CSV quoting)."""
    result = synthetic_result(2)
    odd = ['/photos/a, "first".jpg', "/photos/b\nsecond.jpg", "/photos/c,third.jpg"]
    for item, name in zip(result.items, odd):
        item.display = name
    write_synthetic(tmp_path / "report.html", result)
    page, _, errors = open_report(browser, tmp_path / "report.html")
    page.locator("#threshold").fill("0.1")  # every pair: both groups
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('2 groups')")
    page.locator("#threshold").blur()
    page.keyboard.press("j")
    page.keyboard.press("Shift+N")
    page.keyboard.press("j")
    page.keyboard.press("Shift+D")
    with page.expect_download() as download:
        page.click("#download")
    download.value.save_as(tmp_path / "decisions.csv")
    got = {(r["a"], r["b"]): r["decision"] for r in read_rows(tmp_path / "decisions.csv")}
    expected = page.evaluate("""() => view.groups.flatMap((g, k) => g.pairs.map(([p]) =>
        [DATA.items[p[0]].d, DATA.items[p[1]].d, k === 0 ? 'not_duplicate' : 'duplicate']))""")
    assert got == {(a, b): d for a, b, d in expected} and len(got) >= 2, (got, expected)
    assert any("," in a or "\n" in a or "," in b or "\n" in b for a, b in got)
    assert not errors, errors
