"""The README's picture of the review page: docs/review-page.png, made from a real run.

    python docs/review_screenshot.py

Builds a small generated yearbook (two PDFs, photos placed two or three times, cropped, scaled, rotated:
simbench.find.yearbook), runs `simbench find` with the default method on it, opens report.html in
headless Chromium (Debian's `chromium`, through Playwright), opens the best pair of a photo placed on two
different pages, and saves the window, quantised to 256 colours to keep the file small.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "review-page.png"
CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from simbench.find import cascade
    from simbench.find.pipeline import find
    from simbench.find.yearbook import build_yearbook

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # short relative paths on the page
        build_yearbook("pdfs", n_pdfs=2, n_photos=4, n_single=2, seed=3)
        find(["pdfs"], Path(tmp) / "out", cascade.make_config(), progress=False)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1160}, bypass_csp=True)  # evaluate() needs eval
            page.goto((Path(tmp) / "out" / "report.html").as_uri())
            page.wait_for_selector("#status:not(:empty)")
            # The first pair of two placements on different pages that has keypoint evidence.
            found = page.evaluate("""() => { for (const [g, group] of view.groups.entries())
                for (const [k, [p]] of group.pairs.entries()) {
                  const a = DATA.items[p[0]], b = DATA.items[p[1]];
                  if (p[6] && p[6].keypoints && METHODS[p[3]] !== "identical" && (a.s !== b.s || a.p !== b.p)) { openPair(g, k); return true; } }
                return false; }""")
            if not found:
                raise SystemExit("no keypoint pair across pages in this run")
            page.wait_for_function("document.querySelectorAll('#pdf-pages canvas').length === 2")
            page.keyboard.press("d")  # shows a decision being made
            shot = Path(tmp) / "shot.png"
            page.screenshot(path=str(shot))
            browser.close()
        Image.open(shot).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(OUT, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
