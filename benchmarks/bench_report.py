"""How responsive report.html is on large collections (issue 14, "Large collections"):

    python benchmarks/bench_report.py --out results/report.md

Writes pages of 500 and 5,000 groups of 2-3 images each (seeded), as `simbench find` writes them
(simbench.find.report.write_report), with thumbnails of real photo texture (160 x 120 crops of
scikit-image's photographs, JPEG q75 like find's) and an evidence record of 64 matched points for each of
the best MAX_EVIDENCE_PAIRS pairs; the larger views that find reads again from the files are left out
(the synthetic images have no files). Each page is opened REPEATS times in headless Chromium (Debian's
`chromium`, through Playwright) and timed in the page (performance marks and performance.now()):

- page read: from navigation start until the browser has the whole file (navigation timing responseEnd);
- groups shown: from navigation start until the first page of groups is built (the page's "groups-shown"
  mark), and first contentful paint;
- search: typing a file-name filter until the view is regrouped and painted;
- slider: moving the threshold until the view is regrouped and painted;
- open pair: opening the first pair until its evidence is drawn.

The table gives the median of the repeats (and the slowest). Figures are wall times on a shared machine:
the load average is printed with them.

Then what the evidence costs `find`: `--method keypoints` in-process on the first EVIDENCE_IMAGES images
(sorted by name, so tiles and their copies come together) of bench_scale.py's cached collection of
photo tiles and their copies: the matching time against the time to compute every evidence record
(simbench.find.evidence), and the size and writing time of the page with its larger views.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine

SIZES = (500, 5000)
EVIDENCE_IMAGES = 500
REPEATS = 3
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

REGROUPED = """(control) => new Promise((resolve) => {
    const status = document.querySelector('#status'), before = status.textContent, t0 = performance.now();
    new MutationObserver(() => { if (status.textContent !== before) requestAnimationFrame(() => resolve(performance.now() - t0)); })
      .observe(status, { childList: true, characterData: true, subtree: true });
    const [id, value] = control, box = document.querySelector(id); box.value = value; box.dispatchEvent(new Event('input'));
})"""

OPENED = """() => new Promise((resolve) => {
    const canvas = document.querySelector('#pair-canvas'), t0 = performance.now();
    new MutationObserver(() => requestAnimationFrame(() => resolve(performance.now() - t0)))
      .observe(canvas, { attributes: true, attributeFilter: ['data-layout'] });
    openPair(0, 0);
})"""


def photo_thumbs(n: int, rng: np.random.Generator) -> list[bytes]:
    """n JPEG thumbnails cut at random places from scikit-image's photographs."""
    import skimage.data

    from simbench.find.items import thumbnail_jpeg

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")]
    out = []
    for _ in range(n):
        img = photos[int(rng.integers(len(photos)))]
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h - 240)), int(rng.integers(0, w - 320))
        out.append(thumbnail_jpeg(Image.fromarray(img[y:y + 240, x:x + 320])))
    return out


def collection(n_groups: int, seed: int = 0):
    """(FindResult, cfg, stages) of n_groups groups, as the module docstring says."""
    from omegaconf import OmegaConf

    from simbench.find.cascade import FusedPairs
    from simbench.find.evidence import MAX_EVIDENCE_PAIRS, MAX_MATCHES
    from simbench.find.items import Item
    from simbench.find.pipeline import FindResult

    rng = np.random.default_rng(seed)
    thumbs = photo_thumbs(400, rng)  # reused: the page embeds each item's own copy all the same
    items, a, b, score = [], [], [], []
    for g in range(n_groups):
        first = len(items)
        for k in range(int(rng.integers(2, 4))):
            items.append(Item(None, f"/photos/album-{g % 7}/img-{g:05d}-{k}.jpg", f"/photos/album-{g % 7}/img-{g:05d}-{k}.jpg",
                              None, None, f"{g}-{k}", thumbs[int(rng.integers(len(thumbs)))], ""))
            if k:
                a.append(first)
                b.append(len(items) - 1)
                score.append(float(rng.uniform(0.3, 1.0)))
    n = len(a)
    pairs = FusedPairs(np.array(a), np.array(b), np.array(score), np.array(["keypoints"] * n, dtype=object),
                       {"identical": np.zeros(n), "keypoints": np.array(score), "cnn": np.zeros(n)})
    result = FindResult(items, pairs, [], [], len(items), 0, len(items))
    for k in np.argsort(-pairs.score)[:MAX_EVIDENCE_PAIRS]:
        pa, pb = rng.uniform(0, 640, (MAX_MATCHES, 2)).round(1), rng.uniform(0, 640, (MAX_MATCHES, 2)).round(1)
        result.evidence[int(pairs.a[k]), int(pairs.b[k])] = {"keypoints": {
            "inliers": 100, "flipped": False, "size_a": [640, 640], "size_b": [640, 640],
            "points_a": pa.tolist(), "points_b": pb.tolist(), "box_a": [0, 0, 640, 640], "box_b": [0, 0, 640, 640],
            "hull_a": [[0, 0], [640, 0], [640, 640]], "hull_b": [[0, 0], [640, 0], [640, 640]]}}
    cfg = OmegaConf.create({"method": "keypoints", "threshold": 0.5, "min_score": 0.01})
    stages = [type("Stage", (), {"name": "keypoints"})(), type("Stage", (), {"name": "cnn"})()]
    return result, cfg, stages


def measure(browser, page_path: Path) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_path.as_uri())
    page.wait_for_function("performance.getEntriesByName('groups-shown').length > 0")
    out = {"read_ms": page.evaluate("performance.getEntriesByType('navigation')[0].responseEnd"),
           "groups_shown_ms": page.evaluate("performance.getEntriesByName('groups-shown')[0].startTime"),
           "fcp_ms": page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime"),
           "search_ms": page.evaluate(REGROUPED, ["#search", "album-3"]),
           "slider_ms": page.evaluate(REGROUPED, ["#threshold", "0.8"]),
           "open_pair_ms": page.evaluate(OPENED)}
    page.close()
    return out


def evidence_cost(out_dir: Path) -> dict:
    """find --method keypoints on EVIDENCE_IMAGES images of bench_scale's collection: times and counts."""
    import time

    from benchmarks.bench_scale import build
    from simbench.data.synthetic import default_cache_dir
    from simbench.find import cascade
    from simbench.find.pipeline import find
    from simbench.find.report import write_report

    images = sorted((build(default_cache_dir()) / "images").glob("*.jpg"))[:EVIDENCE_IMAGES]
    cfg = cascade.make_config("keypoints")
    result = find(images, out_dir, cfg, progress=False)
    started = time.perf_counter()  # find wrote report.html already; written again here to time it alone
    write_report(out_dir / "again.html", result, cfg, cascade.build_stages(cfg, quiet=True))
    return {"images": len(result.items), "pairs": len(result.pairs),
            "records": sum("keypoints" in r for r in result.evidence.values()),
            "match_s": result.timing["match_s"], "evidence_s": result.timing["evidence_s"],
            "report_s": time.perf_counter() - started, "mb": (out_dir / "again.html").stat().st_size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the table (Markdown) here too")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from simbench.find.report import write_report

    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for n_groups in SIZES:
            path = Path(tmp) / f"report-{n_groups}.html"
            result, cfg, stages = collection(n_groups)
            write_report(path, result, cfg, stages)
            runs = [measure(browser, path) for _ in range(REPEATS)]
            row = {"groups": n_groups, "images": len(result.items), "pairs": len(result.pairs),
                   "mb": path.stat().st_size / 1e6}
            for key in runs[0]:
                values = [r[key] for r in runs]
                row[key] = (statistics.median(values), max(values))
            rows.append(row)
            print(row, flush=True)
        browser.close()
    with tempfile.TemporaryDirectory() as tmp:
        cost = evidence_cost(Path(tmp))
    print(cost, flush=True)
    where = machine()
    header = ("| groups | images | pairs | page MB | page read ms | groups shown ms | first contentful paint ms | search ms | "
              "slider ms | open pair ms |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['groups']:,} | {r['images']:,} | {r['pairs']:,} | {r['mb']:.1f} | "
        + " | ".join(f"{r[k][0]:.0f} ({r[k][1]:.0f})" for k in ("read_ms", "groups_shown_ms", "fcp_ms", "search_ms", "slider_ms",
                                                             "open_pair_ms")) + " |" for r in rows]
    caption = (f"What the evidence costs `find` (`--method keypoints`, in-process, first {EVIDENCE_IMAGES} images "
               "of bench_scale.py's collection):")
    head = ("| images | pairs written | keypoint evidence records | matching s | evidence s | ms per record | "
            "writing report.html s | report.html MB |")
    row = (f"| {cost['images']} | {cost['pairs']:,} | {cost['records']:,} | {cost['match_s']:.1f} | "
           f"{cost['evidence_s']:.1f} | {1000 * cost['evidence_s'] / max(cost['records'], 1):.1f} | "
           f"{cost['report_s']:.1f} | {cost['mb']:.1f} |")
    lines += ["", caption, "", head, "|---|---|---|---|---|---|---|---|", row]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(
            "# report.html on large collections\n\n"
            "Command: `python benchmarks/bench_report.py --out results/report.md`\n\n"
            f"Median of {REPEATS} page loads in headless Chromium (slowest in parentheses), times from the page "
            "itself (see the script's docstring for what each column measures). "
            f"Machine: {where['cpu']}, {where['cores']} cores, load average {load_average():.1f} at the end "
            f"(shared machine), git {where['git']}, {where['time']}.\n\n{text}\n")


if __name__ == "__main__":
    main()
