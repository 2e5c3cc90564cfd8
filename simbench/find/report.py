"""report.html: one self-contained page to review the duplicates and record decisions (no network, no server).

Thumbnails are embedded as base64 JPEG data URIs (the placed region for PDF images, THUMB_SIDE px), once
per image; pairs, scores, provenance and evidence travel as one JSON block. Plain JavaScript (no library)
builds the view: a threshold slider, a method filter and a file-name search regroup the pairs (union-find,
as groups.json does) and re-sort the groups by best score on every change; groups are rendered in pages
of GROUPS_PER_PAGE as the reader scrolls (an IntersectionObserver), thumbnails decode lazily, so 5,000
groups stay responsive.

Opening a pair shows the two images side by side (VIEW_SIDE px, read again from the files when the page is
written) with the reason drawn on them (simbench.find.evidence): the verified keypoint matches as lines
and the matched region of each image, the CNN's cosine and neighbour ranks, the chain of a linked pair;
for a PDF image also its page (PAGE_SIDE px) with the placed rectangle highlighted. Only the images of
the VIEW_PAIRS best pairs with an evidence record get a larger view, to keep the page's size in bounds
(the others show their thumbnail enlarged, the evidence drawn on it all the same).

Decisions: a pair or a whole group is marked "duplicate" or "not duplicate" (keyboard shortcuts on the
page), kept in the browser's local storage for this report, and downloaded as decisions.csv (a,b,decision,
a and b as in pairs.csv) for `simbench find --decisions`. A run given decisions starts the page from them
(also from rows naming no image of the run), so the next download still holds every earlier decision. Skipped files are listed at the end.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from simbench.cache import atomic_write_bytes
from simbench.threads import thread_map

log = logging.getLogger("simbench")

GROUPS_PER_PAGE = 40
#: Long side of the pair viewer's images, and of a PDF page shown with its placement, in pixels.
VIEW_SIDE = 480
PAGE_SIDE = 360
VIEW_QUALITY = 72
#: The best pairs with evidence whose images get a larger view (embedded JPEGs: they make up most of the page).
VIEW_PAIRS = 500


def write_report(path: Path, result, cfg, stages) -> None:
    """Write the page for a FindResult (simbench.find.pipeline)."""
    data = report_data(result, cfg, stages)
    atomic_write_bytes(Path(path), render_html(data).encode("utf-8"))


def report_data(result, cfg, stages) -> dict:
    """Everything the page shows, as plain JSON-able values; only images that are in some pair."""
    pairs = result.pairs
    used = np.unique(np.concatenate([pairs.a, pairs.b])) if len(pairs) else np.empty(0, np.int64)
    position = {int(k): p for p, k in enumerate(used)}
    items = [_item(result.items[int(k)]) for k in used]
    decided = ["decision"] if getattr(result, "decisions", None) else []  # pairs a reviewer confirmed
    methods = ["identical", *[s.name for s in stages], *decided, "linked"]
    method_id = {m: k for k, m in enumerate(methods)}
    order = np.lexsort((pairs.b, pairs.a, -pairs.score))
    stage_scores = [pairs.per_stage.get(m, np.zeros(len(pairs))) for m in methods[:-1]]
    calibrated = pairs.calibrated if pairs.calibrated is not None else np.ones(len(pairs), bool)
    evidence = getattr(result, "evidence", None) or {}
    rows = [[position[int(pairs.a[k])], position[int(pairs.b[k])], round(float(pairs.score[k]), 4),
             method_id.get(str(pairs.method[k]), len(methods) - 1),
             [round(float(s[k]), 4) for s in stage_scores], int(bool(calibrated[k])),
             _page_evidence(evidence.get((int(pairs.a[k]), int(pairs.b[k]))), position)] for k in order]
    with_evidence = [row for row in rows if row[6]][:VIEW_PAIRS]  # rows are best first
    pages = add_views(items, [result.items[int(k)] for k in used], {x for row in with_evidence for x in row[:2]})
    return {
        "title": "simbench find: duplicate review",
        "run": hashlib.sha256(json.dumps([[i["d"] for i in items], [r[:2] for r in rows]]).encode()).hexdigest()[:16],
        "summary": {"files": result.n_files, "pdfs": result.n_pdfs, "images": len(result.items),
                    "skipped": len(result.skipped), "blank": result.n_blank, "pairs": len(pairs),
                    "groups": len(result.groups)},
        "decisions": result.decisions.to_json() if getattr(result, "decisions", None) else None,  # decisions.json
        "earlier": earlier_decisions(result),
        "method": str(cfg.method),
        "threshold": float(cfg.threshold),
        "min_score": float(cfg.min_score),
        "link_score": str(cfg.get("link_score", "product")),
        "methods": methods,
        "uncalibrated": [s.name for s in stages if not getattr(s, "is_calibrated", True)],
        "items": items,
        "pairs": rows,
        "pages": pages,
        "skipped": [[s.path, s.reason] for s in result.skipped],
        "skipped_reasons": Counter(_reason_kind(s.reason) for s in result.skipped).most_common(),
        "per_page": GROUPS_PER_PAGE,
    }


def earlier_decisions(result) -> list[list[str]]:
    """[a, b, decision] of the decisions this run was given (--decisions), names as in pairs.csv, and its
    stale rows as written: the page starts from them, so that a downloaded decisions.csv keeps them."""
    decisions = getattr(result, "decisions", None)
    if not decisions:
        return []
    out = [[result.items[int(a)].display, result.items[int(b)].display, decision]
           for decision, found in (("duplicate", decisions.duplicate), ("not_duplicate", decisions.not_duplicate))
           for a, b in np.asarray(found, np.int64).reshape(-1, 2)]
    return out + [[row.a, row.b, row.decision] for row in decisions.stale]


def _item(item) -> dict:
    return {"d": item.display, "s": item.source, "p": item.page, "b": item.bbox, "t": _data_uri(item.thumb)}


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _page_evidence(record: dict | None, position: dict) -> dict | None:
    """An evidence record with item indices (in linked chains) turned into the page's item positions."""
    if not record:
        return None
    out = dict(record)
    if "chain" in out:
        chain = [[position.get(x), position.get(y), s, m] for x, y, s, m in out["chain"]]
        out["chain"] = chain if all(x is not None and y is not None for x, y, _, _ in chain) else None
    return out


def add_views(items: list[dict], originals: list, wanted: set[int]) -> list[dict]:
    """Give items[k] for k in `wanted` a larger view ("v"); PDF images also their page ("g": index into
    the returned pages, each {"t": JPEG data URI}) and where they sit on it ("r": x0 y0 x1 y1 as fractions
    of the page). An image that cannot be read again (moved, damaged) keeps its thumbnail only."""
    pages: list[dict] = []
    page_index: dict[tuple, int] = {}
    files = [k for k in sorted(wanted) if originals[k].page is None]
    for k, view in zip(files, thread_map(lambda k: _file_view(originals[k]), files)):  # PyMuPDF: one thread
        if view is not None:
            items[k]["v"] = _data_uri(view)
    for k in sorted(set(wanted) - set(files)):
        item = originals[k]
        try:
            view, page_jpeg, rect = _pdf_views(item)
        except Exception as exc:  # a view is a convenience: the pair stays listed with its thumbnail
            log.debug("report: no larger view of %s (%s)", item.display, exc)
            continue
        items[k]["v"] = _data_uri(view)
        key = (item.source, item.page)
        if key not in page_index:
            page_index[key] = len(pages)
            pages.append({"t": _data_uri(page_jpeg)})
        items[k]["g"], items[k]["r"] = page_index[key], rect
    return pages


def _file_view(item) -> bytes | None:
    """An image file's larger view (JPEG), or None when it cannot be read again."""
    try:
        return _jpeg(_open_view(item.source))
    except Exception as exc:  # a view is a convenience: the pair stays listed with its thumbnail
        log.debug("report: no larger view of %s (%s)", item.display, exc)
        return None


def _open_view(path: str):
    from simbench.data.images import open_image

    return open_image(path, draft=(VIEW_SIDE, VIEW_SIDE))


def _jpeg(image, side: int = VIEW_SIDE) -> bytes:
    from PIL import Image

    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=VIEW_QUALITY, optimize=True)
    return buffer.getvalue()


def _pdf_views(item) -> tuple[bytes, bytes, list[float]]:
    """(the placed region at VIEW_SIDE, the page at PAGE_SIDE, the region on the page as fractions)."""
    import pymupdf
    from PIL import Image

    with pymupdf.open(item.source, filetype="pdf") as doc:
        page = doc[int(item.page) - 1]
        box = pymupdf.Rect(*(float(v) for v in item.bbox.split()))
        shown = box * page.rotation_matrix  # bbox is unrotated; pixmaps are of the page as displayed
        pixmaps = []
        for clip, side in ((shown, VIEW_SIDE), (page.rect, PAGE_SIDE)):
            zoom = side / max(clip.width, clip.height, 1e-6)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=clip, alpha=False, colorspace=pymupdf.csRGB)
            pixmaps.append(_jpeg(Image.frombytes("RGB", (pix.width, pix.height), pix.samples), side))
        w, h = page.rect.width, page.rect.height
        rect = [round(shown.x0 / w, 4), round(shown.y0 / h, 4), round(shown.x1 / w, 4), round(shown.y1 / h, 4)]
    return pixmaps[0], pixmaps[1], rect


def _reason_kind(reason: str) -> str:
    """The reason without its details in parentheses, for the per-reason counts."""
    return reason.split(" (")[0]


def render_html(data: dict) -> str:
    # "</" must not appear inside the <script> block; JSON allows "<\\/" for it.
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (TEMPLATE.replace("__TITLE__", html.escape(data["title"]))
            .replace("__DATA__", blob))


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
  :root { --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #667085; --line: #e3e6eb; --accent: #2f6fdf;
          --dup: #1f8a4c; --notdup: #c23a2b; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
  header { position: sticky; top: 0; z-index: 5; background: rgba(255,255,255,.96); border-bottom: 1px solid var(--line);
           padding: 10px 20px; display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: center; }
  h1 { font-size: 17px; margin: 0; font-weight: 650; }
  .stats { color: var(--muted); font-size: 13px; }
  .controls { display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: center; }
  .controls label { display: flex; gap: 8px; align-items: center; font-size: 13px; color: var(--muted); }
  input[type=range] { width: 220px; accent-color: var(--accent); }
  #threshold-value { font-variant-numeric: tabular-nums; font-weight: 600; color: var(--ink); min-width: 3.2em; }
  select, input[type=search] { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
  #status { font-weight: 600; color: var(--ink); }
  .decisions { display: flex; gap: 10px; align-items: center; font-size: 13px; }
  a.button, button { font: inherit; font-size: 12.5px; padding: 3px 10px; border: 1px solid var(--line); border-radius: 6px;
                     background: #fff; color: var(--ink); cursor: pointer; text-decoration: none; }
  a.button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
  button.dup { color: var(--dup); } button.notdup { color: var(--notdup); }
  details.keys { font-size: 12.5px; color: var(--muted); }
  details.keys summary { cursor: pointer; color: var(--accent); }
  kbd { font: 11.5px ui-monospace, monospace; border: 1px solid #cfd4dc; border-bottom-width: 2px; border-radius: 4px; padding: 0 4px; background: #fafbfc; color: var(--ink); }
  main { padding: 16px 20px 60px; max-width: 1400px; margin: 0 auto; }
  .group { background: var(--card); border: 1px solid var(--line); border-radius: 10px; margin: 0 0 14px; padding: 12px 14px;
           box-shadow: 0 1px 2px rgba(16,24,40,.04); }
  .group.focused { outline: 2px solid var(--accent); }
  .group-head { display: flex; gap: 12px; align-items: baseline; margin-bottom: 8px; flex-wrap: wrap; }
  .group-head .rank { font-weight: 650; }
  .group-head .meta { color: var(--muted); font-size: 13px; }
  .group-head .actions { margin-left: auto; display: flex; gap: 6px; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-weight: 650; font-size: 12px; color: #fff; font-variant-numeric: tabular-nums; }
  .tag { display: inline-block; padding: 0 6px; border-radius: 4px; background: #eef2f8; color: #344054; font-size: 12px; margin-left: 4px; }
  .state { font-size: 12px; font-weight: 600; }
  .state.duplicate { color: var(--dup); } .state.not_duplicate { color: var(--notdup); }
  .thumbs { display: flex; flex-wrap: wrap; gap: 12px; }
  figure { margin: 0; width: 172px; }
  figure .frame { width: 172px; height: 172px; display: flex; align-items: center; justify-content: center;
                  background: #f0f1f3; border-radius: 6px; border: 1px solid var(--line); overflow: hidden; }
  figure img { max-width: 160px; max-height: 160px; display: block; }
  figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; line-height: 1.3; }
  figcaption b { display: block; color: var(--ink); font-weight: 600; word-break: break-all; }
  details.pairs { margin-top: 8px; font-size: 12.5px; }
  details.pairs summary { cursor: pointer; color: var(--accent); }
  table { border-collapse: collapse; width: 100%; }
  td, th { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { color: var(--muted); font-weight: 600; }
  td.num { font-variant-numeric: tabular-nums; }
  tr.duplicate td:first-child { box-shadow: inset 3px 0 var(--dup); }
  tr.not_duplicate td { color: var(--muted); text-decoration: line-through; }
  tr.not_duplicate td:first-child { box-shadow: inset 3px 0 var(--notdup); }
  #empty { color: var(--muted); padding: 40px; text-align: center; display: none; }
  #sentinel { height: 1px; }
  section.skipped { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; margin-top: 24px; }
  section.skipped summary { cursor: pointer; font-weight: 600; }
  .reasons { color: var(--muted); margin: 6px 0; }
  #viewer { position: fixed; inset: 0; z-index: 10; background: rgba(16,20,28,.72); display: none; overflow: auto; }
  #viewer.open { display: block; }
  #viewer .panel { background: #fff; margin: 18px auto; max-width: 1240px; border-radius: 12px; padding: 14px 18px 18px; }
  #viewer .top { display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
  #viewer .top .names { font-weight: 600; word-break: break-all; }
  #viewer .top .actions { margin-left: auto; display: flex; gap: 6px; }
  #pair-canvas { display: block; margin: 10px auto; max-width: 100%; }
  #why { margin: 6px 0 0; padding-left: 18px; }
  #why li { margin: 3px 0; }
  .chain { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; margin-top: 4px; }
  .chain img { max-width: 72px; max-height: 72px; border-radius: 4px; border: 1px solid var(--line); }
  .pdf-pages { display: flex; gap: 24px; flex-wrap: wrap; justify-content: center; margin-top: 8px; }
  .pdf-pages figure { width: auto; }
  .pdf-pages canvas { display: block; max-height: 300px; max-width: 100%; border: 1px solid var(--line); }
  .legend { font-size: 12px; color: var(--muted); }
  .legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin: 0 3px 0 8px; vertical-align: -1px; }
</style>
</head>
<body>
<header>
  <h1>Duplicate review</h1>
  <div class="stats" id="stats"></div>
  <div class="controls">
    <label title="Scores estimate the precision of a pair (the share of pairs scoring this high that were true duplicates in calibration; from 0.99 up they held on collections never tuned on, below it they are rough); the same threshold means the same for every method">Threshold <input type="range" id="threshold" step="0.01"> <span id="threshold-value"></span></label>
    <label title="Group by the evidence of one method only, or by the best of all">Method <select id="method"></select></label>
    <label>Find <input type="search" id="search" placeholder="file name"></label>
    <span id="status"></span>
  </div>
  <div class="decisions">
    <span id="decision-count">0 decisions</span>
    <a class="button primary" id="download" download="decisions.csv" href="#">Download decisions.csv</a>
    <details class="keys" id="keys"><summary>Keyboard</summary>
      In the list: <kbd>j</kbd>/<kbd>k</kbd> next/previous group, <kbd>Enter</kbd> open its first pair,
      <kbd>Shift</kbd>+<kbd>D</kbd> mark the whole group duplicate, <kbd>Shift</kbd>+<kbd>N</kbd> not duplicate,
      <kbd>Shift</kbd>+<kbd>C</kbd> clear its decisions.<br>
      On a pair: <kbd>d</kbd> duplicate, <kbd>n</kbd> not duplicate, <kbd>c</kbd> clear, <kbd>&rarr;</kbd>/<kbd>&larr;</kbd>
      next/previous pair, <kbd>Esc</kbd> close. Decisions stay in this browser for this report until downloaded
      as decisions.csv (for <code>simbench find --decisions decisions.csv</code>).
    </details>
  </div>
</header>
<main>
  <div id="groups"></div>
  <div id="sentinel"></div>
  <div id="empty">No duplicate groups at this threshold.</div>
  <section class="skipped" id="skipped-section"></section>
</main>
<div id="viewer" role="dialog" aria-modal="true">
  <div class="panel">
    <div class="top">
      <span class="badge" id="pair-score"></span>
      <span class="names" id="pair-names"></span>
      <span class="state" id="pair-state"></span>
      <span class="actions">
        <button class="dup" id="mark-dup" title="d">Duplicate (d)</button>
        <button class="notdup" id="mark-notdup" title="n">Not duplicate (n)</button>
        <button id="mark-clear" title="c">Clear (c)</button>
        <button id="prev" title="&larr;">&larr;</button><button id="next" title="&rarr;">&rarr;</button>
        <button id="close" title="Esc">Close</button>
      </span>
    </div>
    <canvas id="pair-canvas" width="10" height="10"></canvas>
    <div class="legend" id="legend"></div>
    <ul id="why"></ul>
    <div class="pdf-pages" id="pdf-pages"></div>
  </div>
</div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const METHODS = DATA.methods;                 // identical, stages..., linked
const STAGES = METHODS.slice(0, -1);          // the per-stage score columns
const COLOURS = { line: "rgba(0, 190, 255, 0.75)", point: "rgb(255, 0, 255)", region: "rgb(255, 170, 0)", hull: "rgb(255, 230, 0)", page: "rgb(230, 30, 30)" };
let view = { groups: [], shown: 0 };
let focusedGroup = -1;

function scoreOf(pair, method) {
  // "all": the fused score (best stage, or linked through others); a stage: that stage's own score.
  if (method === "all") return pair[2];
  const k = STAGES.indexOf(method);
  return k < 0 ? 0 : pair[4][k];
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const nameOf = (item) => item.d.split(/[\\/]/).pop();

function colour(score) {
  const hue = Math.round(120 * Math.max(0, Math.min(1, (score - 0.3) / 0.7)));
  return `hsl(${hue} 62% 40%)`;
}

// ---------------------------------------------------------------------------------------------------
// Decisions: pair key (a, b as in pairs.csv) -> "duplicate" | "not_duplicate"

const STORE = "simbench-decisions:" + DATA.run;
const decisions = new Map();
const SEP = "\u0000";                       // no path holds it (a newline may)
const pairKey = (p) => DATA.items[p[0]].d + SEP + DATA.items[p[1]].d;
for (const [a, b, v] of DATA.earlier) decisions.set(a + SEP + b, v);  // given to this run (--decisions)
try { for (const [k, v] of JSON.parse(localStorage.getItem(STORE) || "[]")) decisions.set(k, v); } catch (e) { /* no storage on this origin */ }

function decide(pairs, decision) {
  for (const p of pairs) { if (decision) decisions.set(pairKey(p), decision); else decisions.delete(pairKey(p)); }
  try { localStorage.setItem(STORE, JSON.stringify([...decisions])); } catch (e) { /* kept for this visit only */ }
  refreshDecisions();
}

const csvCell = (s) => /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
function decisionsCsv() {
  const lines = ["a,b,decision"];
  for (const [k, v] of decisions) { const [a, b] = k.split(SEP); lines.push([a, b, v].map(csvCell).join(",")); }
  return lines.join("\n") + "\n";
}

function refreshDecisions() {
  const n = decisions.size, dups = [...decisions.values()].filter((v) => v === "duplicate").length;
  $("decision-count").textContent = `${plural(n, "decision")} (${dups} duplicate, ${n - dups} not duplicate)`;
  $("download").href = "data:text/csv;charset=utf-8," + encodeURIComponent(decisionsCsv());
  for (const row of document.querySelectorAll("tr[data-pair]")) {
    const d = decisions.get(pairKey(DATA.pairs[+row.dataset.pair])) || "";
    row.className = d; row.querySelector(".state").textContent = d.replace("_", " ");
  }
  for (const card of document.querySelectorAll(".group")) {
    const g = view.groups[+card.dataset.index];
    card.querySelector(".group-head .state").textContent = groupState(g);
  }
  if (viewer.open) showPairState();
}

function groupState(g) {
  const ds = g.pairs.map(([p]) => decisions.get(pairKey(p))).filter(Boolean);
  if (!ds.length) return "";
  const dup = ds.filter((d) => d === "duplicate").length;
  return `decided ${ds.length}/${g.pairs.length}: ${dup} duplicate, ${ds.length - dup} not`;
}

// ---------------------------------------------------------------------------------------------------
// Groups

function computeGroups() {
  const t = parseFloat($("threshold").value), method = $("method").value;
  const needle = $("search").value.trim().toLowerCase();
  const n = DATA.items.length, parent = new Int32Array(n).map((_, i) => i);
  const root = (x) => { while (parent[x] !== x) { parent[x] = parent[parent[x]]; x = parent[x]; } return x; };
  const kept = [];
  for (const p of DATA.pairs) {
    const s = scoreOf(p, method);
    if (s >= t && s > 0) { kept.push([p, s]); const ra = root(p[0]), rb = root(p[1]); if (ra !== rb) parent[Math.max(ra, rb)] = Math.min(ra, rb); }
  }
  const byRoot = new Map();
  for (const [p, s] of kept) {
    const r = root(p[0]);
    if (!byRoot.has(r)) byRoot.set(r, { members: new Set(), pairs: [], best: 0 });
    const g = byRoot.get(r);
    g.members.add(p[0]); g.members.add(p[1]); g.pairs.push([p, s]); g.best = Math.max(g.best, s);
  }
  let groups = [...byRoot.values()];
  if (needle) groups = groups.filter((g) => [...g.members].some((m) => LOWER[m].includes(needle)));
  groups.sort((x, y) => y.best - x.best || y.members.size - x.members.size);
  for (const g of groups) g.pairs.sort((x, y) => y[1] - x[1]);
  return groups;
}
const LOWER = DATA.items.map((item) => item.d.toLowerCase());
const PAIR_INDEX = new Map(DATA.pairs.map((p, k) => [p, k]));

function caption(item) {
  const parts = [el("b", { text: item.s.split(/[\\/]/).pop() })];
  if (item.p !== null) parts.push(document.createTextNode(`page ${item.p} · image ${item.d.split("image=").pop()}`));
  return parts;
}

function renderGroup(g, index) {
  const members = [...g.members].sort((a, b) => a - b);
  const methods = [...new Set(g.pairs.map(([p]) => METHODS[p[3]]))];
  const head = el("div", { class: "group-head" },
    el("span", { class: "rank", text: `#${index + 1}` }),
    el("span", { class: "badge", style: `background:${colour(g.best)}`, text: g.best.toFixed(3) }),
    el("span", { class: "meta", text: `${members.length} images · ${plural(g.pairs.length, "pair")}` }),
    ...methods.map((m) => el("span", { class: "tag", text: m })),
    el("span", { class: "state", text: groupState(g) }),
    el("span", { class: "actions" },
      el("button", { class: "open", text: "Review pairs", onclick: () => openPair(index, 0) }),
      el("button", { class: "dup", text: "All duplicate", title: "Shift+D", onclick: () => decide(g.pairs.map(([p]) => p), "duplicate") }),
      el("button", { class: "notdup", text: "None duplicate", title: "Shift+N", onclick: () => decide(g.pairs.map(([p]) => p), "not_duplicate") })));
  const thumbs = el("div", { class: "thumbs" });
  for (const m of members) {
    const item = DATA.items[m];
    const where = item.p !== null ? `${item.d}\npage ${item.p}, box ${item.b} pt` : item.d;
    thumbs.append(el("figure", { title: where },
      el("div", { class: "frame" }, el("img", { src: item.t, alt: item.d, loading: "lazy", decoding: "async" })),
      el("figcaption", {}, ...caption(item))));
  }
  const rows = g.pairs.map(([p, s], k) => {
    const d = decisions.get(pairKey(p)) || "";
    return el("tr", { class: d, "data-pair": PAIR_INDEX.get(p) },
      el("td", { text: DATA.items[p[0]].d }), el("td", { text: DATA.items[p[1]].d }),
      el("td", { class: "num", text: s.toFixed(3) }),
      el("td", { text: METHODS[p[3]] + (p[5] ? "" : " (uncalibrated)") }),
      el("td", { class: "state", text: d.replace("_", " ") }),
      el("td", {}, el("button", { class: "open", text: "Open", onclick: () => openPair(index, k) })));
  });
  const table = el("table", {}, el("tr", {}, el("th", { text: "a" }), el("th", { text: "b" }),
    el("th", { text: "score" }), el("th", { text: "method" }), el("th", { text: "decision" }), el("th", {})), ...rows);
  const details = el("details", { class: "pairs" }, el("summary", { text: plural(g.pairs.length, "pair") }), table);
  return el("div", { class: "group" + (index === focusedGroup ? " focused" : ""), "data-score": g.best.toFixed(4), "data-index": index },
    head, thumbs, details);
}

function showMore() {
  const box = $("groups"), end = Math.min(view.groups.length, view.shown + DATA.per_page);
  const frag = document.createDocumentFragment();
  for (let k = view.shown; k < end; k++) frag.append(renderGroup(view.groups[k], k));
  box.append(frag);
  view.shown = end;
}

let pending = false;
function update() {
  // Coalesce slider events into one regrouping per animation frame.
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    $("threshold-value").textContent = parseFloat($("threshold").value).toFixed(2);
    view = { groups: computeGroups(), shown: 0 };
    focusedGroup = -1;
    $("groups").replaceChildren();
    showMore();
    const images = view.groups.reduce((n, g) => n + g.members.size, 0);
    $("status").textContent = `${plural(view.groups.length, "group")} · ${plural(images, "image")}`;
    $("empty").style.display = view.groups.length ? "none" : "block";
    if (!performance.getEntriesByName("groups-shown").length) performance.mark("groups-shown");  // for benchmarks
  });
}

function focusGroup(index) {
  if (!view.groups.length) return;
  focusedGroup = Math.max(0, Math.min(view.groups.length - 1, index));
  while (view.shown <= focusedGroup) showMore();
  for (const card of document.querySelectorAll(".group.focused")) card.classList.remove("focused");
  const card = document.querySelector(`.group[data-index="${focusedGroup}"]`);
  card.classList.add("focused");
  card.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------------------------------------------
// The pair viewer: both images, the reason drawn on them

const viewer = { open: false, group: 0, pair: 0, layout: null };
const loaded = new Map();
function image(src) {
  if (!loaded.has(src)) loaded.set(src, new Promise((resolve) => { const im = new Image(); im.onload = () => resolve(im); im.onerror = () => resolve(null); im.src = src; }));
  return loaded.get(src);
}

function currentPair() { const g = view.groups[viewer.group]; return g && g.pairs[viewer.pair] ? g.pairs[viewer.pair] : null; }

function openPair(groupIndex, pairIndex) {
  viewer.open = true; viewer.group = groupIndex; viewer.pair = pairIndex;
  focusedGroup = groupIndex;
  $("viewer").classList.add("open");
  drawPair();
}

function closeViewer() { viewer.open = false; $("viewer").classList.remove("open"); if (focusedGroup >= 0) focusGroup(focusedGroup); }

function step(delta) {
  // Through every pair of the groups in view, group by group.
  let g = viewer.group, k = viewer.pair + delta;
  while (view.groups[g] && (k < 0 || k >= view.groups[g].pairs.length)) {
    if (k < 0) { g -= 1; if (g < 0) return; k = view.groups[g].pairs.length - 1; }
    else { g += 1; k = 0; if (g >= view.groups.length) return; }
  }
  if (view.groups[g]) { viewer.group = g; viewer.pair = k; drawPair(); }
}

function showPairState() {
  const [p] = currentPair();
  const d = decisions.get(pairKey(p)) || "";
  $("pair-state").className = "state " + d;
  $("pair-state").textContent = d ? "marked " + d.replace("_", " ") : "undecided";
}

async function drawPair() {
  const [p, s] = currentPair();
  const a = DATA.items[p[0]], b = DATA.items[p[1]], ev = p[6] || {};
  $("pair-score").textContent = s.toFixed(3); $("pair-score").style.background = colour(s);
  $("pair-names").textContent = `${a.d}  ↔  ${b.d}  · ${METHODS[p[3]]}${p[5] ? "" : " (uncalibrated)"} · pair ${viewer.pair + 1} of ${view.groups[viewer.group].pairs.length} in group #${viewer.group + 1}`;
  showPairState();
  const token = (viewer.token = (viewer.token || 0) + 1);
  const [ia, ib] = await Promise.all([image(a.v || a.t), image(b.v || b.t)]);
  if (token !== viewer.token || !ia || !ib) return;
  const canvas = $("pair-canvas"), gap = 40;
  const maxW = Math.min(1200, window.innerWidth - 80), side = (maxW - gap) / 2, maxH = Math.max(240, window.innerHeight * 0.58);
  const fit = (im) => Math.min(side / im.naturalWidth, maxH / im.naturalHeight, 3);
  const fa = fit(ia), fb = fit(ib);
  const wa = ia.naturalWidth * fa, ha = ia.naturalHeight * fa, wb = ib.naturalWidth * fb, hb = ib.naturalHeight * fb;
  canvas.width = Math.round(wa + gap + wb); canvas.height = Math.round(Math.max(ha, hb));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  // Where each image is drawn, and the scale from its evidence pixels (size_a / size_b) to the canvas.
  const kp = ev.keypoints;
  const place = (x, y, w, h, size) => ({ x, y, w, h, sx: w / (size ? size[0] : w), sy: h / (size ? size[1] : h) });
  const A = place(0, (canvas.height - ha) / 2, wa, ha, kp && kp.size_a), B = place(wa + gap, (canvas.height - hb) / 2, wb, hb, kp && kp.size_b);
  ctx.drawImage(ia, A.x, A.y, A.w, A.h); ctx.drawImage(ib, B.x, B.y, B.w, B.h);
  viewer.layout = { a: A, b: B };
  canvas.dataset.layout = JSON.stringify(viewer.layout);
  const at = (P, q) => [P.x + q[0] * P.sx, P.y + q[1] * P.sy];
  const why = [];
  if (kp) {
    ctx.lineWidth = 2; ctx.strokeStyle = COLOURS.hull;
    for (const [P, hull] of [[A, kp.hull_a], [B, kp.hull_b]]) {
      ctx.beginPath(); hull.forEach((q, i) => { const [x, y] = at(P, q); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); }); ctx.closePath(); ctx.stroke();
    }
    ctx.setLineDash([6, 4]); ctx.strokeStyle = COLOURS.region;
    for (const [P, box] of [[A, kp.box_a], [B, kp.box_b]]) { const [x0, y0] = at(P, box), [x1, y1] = at(P, box.slice(2)); ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); }
    ctx.setLineDash([]); ctx.lineWidth = 1.2; ctx.strokeStyle = COLOURS.line;
    for (let k = 0; k < kp.points_a.length; k++) {
      const [x0, y0] = at(A, kp.points_a[k]), [x1, y1] = at(B, kp.points_b[k]);
      ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
    }
    ctx.fillStyle = COLOURS.point;
    for (const [P, pts] of [[A, kp.points_a], [B, kp.points_b]]) for (const q of pts) { const [x, y] = at(P, q); ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill(); }
    why.push(el("li", { text: `Keypoints: ${kp.inliers} verified match${kp.inliers === 1 ? "" : "es"} (RANSAC inliers${kp.flipped ? ", one image mirrored" : ""}); ${kp.points_a.length} drawn. The matched region of each image is boxed.` }));
  }
  if (ev.cnn) {
    const nth = (r) => r === 1 ? "nearest neighbour" : `neighbour #${r}`;
    why.push(el("li", { text: `CNN: cosine ${ev.cnn.cosine.toFixed(3)} (calibrated score ${ev.cnn.score.toFixed(3)}); ${nameOf(b)} is ${nameOf(a)}'s ${nth(ev.cnn.rank_a)}, ${nameOf(a)} is ${nameOf(b)}'s ${nth(ev.cnn.rank_b)}.` }));
    const w = ev.cnn.window;
    if (w) {
      const [whole, part] = w.of === "b" ? [a, b] : [b, a];
      why.push(el("li", { text: `CNN, best window: ${nameOf(whole)} against window ${w.index + 1} of ${w.count} of ${nameOf(part)} (squares along its long side): cosine ${w.cosine.toFixed(3)}.` }));
    }
  }
  if (ev.align) why.push(el("li", { text: `Aligned: laid over each other (${nameOf(b)} turned ${90 * ev.align.turns}°, scaled and shifted), their thumbnails correlate at ${ev.align.correlation.toFixed(3)} over ${Math.round(100 * ev.align.overlap)}% of the smaller (calibrated score ${ev.align.score.toFixed(3)}).` }));
  if (ev.hash) why.push(el("li", { text: `Hash: the two ${ev.hash.bits}-bit codes differ in ${plural(ev.hash.distance, "bit")} (calibrated score ${ev.hash.score.toFixed(3)}).` }));
  if (ev.chain) {
    const chain = el("div", { class: "chain" }, el("img", { src: DATA.items[ev.chain[0][0]].t, title: DATA.items[ev.chain[0][0]].d }));
    for (const [, y, sc, m] of ev.chain) chain.append(el("span", { text: `→ ${sc.toFixed(3)} ${m} →` }), el("img", { src: DATA.items[y].t, title: DATA.items[y].d }));
    why.push(el("li", { text: `Linked: not matched directly, but through ${plural(ev.chain.length - 1, "other image")} (score = ${DATA.link_score === "weakest" ? "its weakest pair" : "product along the chain"}):` }, chain));
  }
  if (!why.length) why.push(el("li", { text: METHODS[p[3]] === "identical" ? "Identical image data." : "No evidence record for this pair (a run keeps them for its best pairs only)." }));
  $("why").replaceChildren(...why);
  $("legend").replaceChildren(...(kp ? [document.createTextNode("Drawn:"), el("i", { style: `background:${COLOURS.point}` }), document.createTextNode("matched points"),
    el("i", { style: `background:${COLOURS.line}` }), document.createTextNode("matches"), el("i", { style: `background:${COLOURS.hull}` }), document.createTextNode("matched region (hull)"),
    el("i", { style: `background:${COLOURS.region}` }), document.createTextNode("its box")] : []));
  const pages = [];
  for (const item of [a, b]) if (item.g !== undefined) pages.push(await pageFigure(item));
  if (token === viewer.token) $("pdf-pages").replaceChildren(...pages);
}

async function pageFigure(item) {
  // The page with the placed rectangle highlighted.
  const im = await image(DATA.pages[item.g].t);
  const canvas = el("canvas", { class: "pdf-page" });
  if (im) {
    canvas.width = im.naturalWidth; canvas.height = im.naturalHeight;
    const ctx = canvas.getContext("2d"), [x0, y0, x1, y1] = item.r;
    ctx.drawImage(im, 0, 0);
    ctx.fillStyle = "rgba(230, 30, 30, 0.16)"; ctx.strokeStyle = COLOURS.page; ctx.lineWidth = 3;
    const r = [x0 * canvas.width, y0 * canvas.height, (x1 - x0) * canvas.width, (y1 - y0) * canvas.height];
    ctx.fillRect(...r); ctx.strokeRect(...r);
  }
  return el("figure", {}, canvas, el("figcaption", {}, el("b", { text: nameOf({ d: item.s }) }), document.createTextNode(`page ${item.p}, placed at ${item.b} pt`)));
}

// ---------------------------------------------------------------------------------------------------
// Keyboard

document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target.matches("button, a, summary") && (e.key === "Enter" || e.key === " ")) return;  // the control's own action
  if (viewer.open) {
    const [p] = currentPair() || [];
    const act = { d: () => decide([p], "duplicate"), n: () => decide([p], "not_duplicate"), c: () => decide([p], null),
                  ArrowRight: () => step(1), ArrowLeft: () => step(-1), Escape: closeViewer }[e.key];
    if (act && p) { e.preventDefault(); act(); }
    return;
  }
  const g = view.groups[focusedGroup], groupPairs = g ? g.pairs.map(([p]) => p) : [];
  const act = { j: () => focusGroup(focusedGroup + 1), k: () => focusGroup(focusedGroup - 1),
                Enter: () => g && openPair(focusedGroup, 0), o: () => g && openPair(focusedGroup, 0),
                D: () => g && decide(groupPairs, "duplicate"), N: () => g && decide(groupPairs, "not_duplicate"),
                C: () => g && decide(groupPairs, null) }[e.key];
  if (act) { e.preventDefault(); act(); }
});

function setup() {
  const s = DATA.summary;
  $("stats").textContent = `${s.files} files (${s.pdfs} PDFs) · ${s.images} images · ${s.skipped} skipped` +
    (s.blank ? ` (${s.blank} blank images, not compared)` : "") + ` · method ${DATA.method}` +
    (DATA.uncalibrated.length ? ` · uncalibrated: ${DATA.uncalibrated.join(", ")} (scores rank pairs but do not estimate precision)` : "") +
    (DATA.decisions ? ` · decisions applied: ${DATA.decisions.applied} (${DATA.decisions.hidden} pairs hidden), ${DATA.decisions.stale.length} stale (name no image of this run: ${DATA.decisions.stale.slice(0, 5).map((r) => r.a + " , " + r.b).join("; ") || "none"}${DATA.decisions.stale.length > 5 ? "; …" : ""})` : "");
  const slider = $("threshold");
  slider.min = Math.max(0, Math.floor(DATA.min_score * 100) / 100); slider.max = 1; slider.value = DATA.threshold;
  const select = $("method");
  select.append(el("option", { value: "all", text: "all (best evidence)" }));
  STAGES.forEach((m, k) => { if (DATA.pairs.some((p) => p[4][k] > 0)) select.append(el("option", { value: m, text: m })); });
  for (const c of [slider, select, $("search")]) c.addEventListener("input", update);
  $("mark-dup").addEventListener("click", () => decide([currentPair()[0]], "duplicate"));
  $("mark-notdup").addEventListener("click", () => decide([currentPair()[0]], "not_duplicate"));
  $("mark-clear").addEventListener("click", () => decide([currentPair()[0]], null));
  $("next").addEventListener("click", () => step(1)); $("prev").addEventListener("click", () => step(-1));
  $("close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) closeViewer(); });
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && view.shown < view.groups.length) showMore();
  }, { rootMargin: "800px" }).observe($("sentinel"));
  renderSkipped();
  refreshDecisions();
  update();
}

function renderSkipped() {
  const box = $("skipped-section");
  if (!DATA.skipped.length) { box.append(el("div", { class: "reasons", text: "Nothing was skipped." })); return; }
  const reasons = DATA.skipped_reasons.map(([r, n]) => `${n} × ${r}`).join(" · ");
  const rows = DATA.skipped.map(([f, r]) => el("tr", {}, el("td", { text: f }), el("td", { text: r })));
  box.append(el("details", {}, el("summary", { text: `${DATA.skipped.length} skipped` }),
    el("div", { class: "reasons", text: reasons }),
    el("table", {}, el("tr", {}, el("th", { text: "file" }), el("th", { text: "reason" })), ...rows)));
}

setup();
</script>
</body>
</html>
"""
