"""report.html: one self-contained page to review the duplicates (no network, no external file).

Thumbnails are embedded as base64 JPEG data URIs (the placed region for PDF images, THUMB_SIDE px), once
per image; pairs, scores and provenance travel as one JSON block. Plain JavaScript (no library) builds
the view: a threshold slider and a method filter regroup the pairs (union-find, as groups.json does) and
re-sort the groups by best score on every change; groups are rendered in pages of GROUPS_PER_PAGE as
the reader scrolls (an IntersectionObserver), so 500 groups stay smooth. Skipped files are listed at the
end with their reasons.
"""
from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

import numpy as np

from simbench.cache import atomic_write_bytes

GROUPS_PER_PAGE = 40


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
    methods = ["identical", *[s.name for s in stages], "linked"]
    method_id = {m: k for k, m in enumerate(methods)}
    order = np.lexsort((pairs.b, pairs.a, -pairs.score))
    stage_scores = [pairs.per_stage.get(m, np.zeros(len(pairs))) for m in methods[:-1]]
    calibrated = pairs.calibrated if pairs.calibrated is not None else np.ones(len(pairs), bool)
    rows = [[position[int(pairs.a[k])], position[int(pairs.b[k])], round(float(pairs.score[k]), 4),
             method_id.get(str(pairs.method[k]), len(methods) - 1),
             [round(float(s[k]), 4) for s in stage_scores], int(bool(calibrated[k]))] for k in order]
    return {
        "title": "simbench find: duplicate review",
        "summary": {"files": result.n_files, "pdfs": result.n_pdfs, "images": len(result.items),
                    "skipped": len(result.skipped), "blank": result.n_blank, "pairs": len(pairs),
                    "groups": len(result.groups)},
        "method": str(cfg.method),
        "threshold": float(cfg.threshold),
        "min_score": float(cfg.min_score),
        "methods": methods,
        "uncalibrated": [s.name for s in stages if not getattr(s, "is_calibrated", True)],
        "items": items,
        "pairs": rows,
        "skipped": [[s.path, s.reason] for s in result.skipped],
        "skipped_reasons": Counter(_reason_kind(s.reason) for s in result.skipped).most_common(),
        "per_page": GROUPS_PER_PAGE,
    }


def _item(item) -> dict:
    return {"d": item.display, "s": item.source, "p": item.page, "b": item.bbox,
            "t": "data:image/jpeg;base64," + base64.b64encode(item.thumb).decode("ascii")}


def _reason_kind(reason: str) -> str:
    """The reason without its details in parentheses, for the per-reason counts."""
    return reason.split(" (")[0]


def render_html(data: dict) -> str:
    # "</" must not appear inside the <script> block; JSON allows "<\/" for it.
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
  :root { --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #667085; --line: #e3e6eb; --accent: #2f6fdf; }
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
  main { padding: 16px 20px 60px; max-width: 1400px; margin: 0 auto; }
  .group { background: var(--card); border: 1px solid var(--line); border-radius: 10px; margin: 0 0 14px; padding: 12px 14px;
           box-shadow: 0 1px 2px rgba(16,24,40,.04); }
  .group-head { display: flex; gap: 12px; align-items: baseline; margin-bottom: 8px; }
  .group-head .rank { font-weight: 650; }
  .group-head .meta { color: var(--muted); font-size: 13px; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-weight: 650; font-size: 12px; color: #fff; font-variant-numeric: tabular-nums; }
  .tag { display: inline-block; padding: 0 6px; border-radius: 4px; background: #eef2f8; color: #344054; font-size: 12px; margin-left: 4px; }
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
  #empty { color: var(--muted); padding: 40px; text-align: center; display: none; }
  #sentinel { height: 1px; }
  section.skipped { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; margin-top: 24px; }
  section.skipped summary { cursor: pointer; font-weight: 600; }
  .reasons { color: var(--muted); margin: 6px 0; }
</style>
</head>
<body>
<header>
  <h1>Duplicate review</h1>
  <div class="stats" id="stats"></div>
  <div class="controls">
    <label title="Scores estimate the precision of a pair (the share of pairs scoring this high that were true duplicates in calibration); the same threshold means the same for every method">Threshold <input type="range" id="threshold" step="0.01"> <span id="threshold-value"></span></label>
    <label title="Group by the evidence of one method only, or by the best of all">Method <select id="method"></select></label>
    <label>Find <input type="search" id="search" placeholder="file name"></label>
    <span id="status"></span>
  </div>
</header>
<main>
  <div id="groups"></div>
  <div id="sentinel"></div>
  <div id="empty">No duplicate groups at this threshold.</div>
  <section class="skipped" id="skipped-section"></section>
</main>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const METHODS = DATA.methods;                 // identical, stages..., linked
const STAGES = METHODS.slice(0, -1);          // the per-stage score columns
let view = { groups: [], shown: 0 };

function scoreOf(pair, method) {
  // "all": the fused score (best stage, or linked through others); a stage: that stage's own score.
  if (method === "all") return pair[2];
  const k = STAGES.indexOf(method);
  return k < 0 ? 0 : pair[4][k];
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function colour(score) {
  const hue = Math.round(120 * Math.max(0, Math.min(1, (score - 0.3) / 0.7)));
  return `hsl(${hue} 62% 40%)`;
}

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
  if (needle) groups = groups.filter((g) => [...g.members].some((m) => DATA.items[m].d.toLowerCase().includes(needle)));
  groups.sort((x, y) => y.best - x.best || y.members.size - x.members.size);
  for (const g of groups) g.pairs.sort((x, y) => y[1] - x[1]);
  return groups;
}

function caption(item) {
  const name = item.s.split(/[\\/]/).pop();
  const parts = [el("b", { text: name })];
  if (item.p !== null) parts.push(document.createTextNode(`page ${item.p} · image ${item.d.split("image=").pop()}`));
  return parts;
}

function renderGroup(g, rank) {
  const members = [...g.members].sort((a, b) => a - b);
  const methods = [...new Set(g.pairs.map(([p]) => METHODS[p[3]]))];
  const head = el("div", { class: "group-head" },
    el("span", { class: "rank", text: `#${rank}` }),
    el("span", { class: "badge", style: `background:${colour(g.best)}`, text: g.best.toFixed(3) }),
    el("span", { class: "meta", text: `${members.length} images · ${plural(g.pairs.length, "pair")}` }),
    ...methods.map((m) => el("span", { class: "tag", text: m })));
  const thumbs = el("div", { class: "thumbs" });
  for (const m of members) {
    const item = DATA.items[m];
    const where = item.p !== null ? `${item.d}\npage ${item.p}, box ${item.b} pt` : item.d;
    thumbs.append(el("figure", { title: where },
      el("div", { class: "frame" }, el("img", { src: item.t, alt: item.d, loading: "lazy" })),
      el("figcaption", {}, ...caption(item))));
  }
  const rows = g.pairs.map(([p, s]) => el("tr", {},
    el("td", { text: DATA.items[p[0]].d }), el("td", { text: DATA.items[p[1]].d }),
    el("td", { class: "num", text: s.toFixed(3) }),
    el("td", { text: METHODS[p[3]] + (p[5] ? "" : " (uncalibrated)") })));
  const table = el("table", {}, el("tr", {}, el("th", { text: "a" }), el("th", { text: "b" }),
    el("th", { text: "score" }), el("th", { text: "method" })), ...rows);
  const details = el("details", { class: "pairs" }, el("summary", { text: plural(g.pairs.length, "pair") }), table);
  return el("div", { class: "group", "data-score": g.best.toFixed(4) }, head, thumbs, details);
}

function showMore() {
  const box = $("groups"), end = Math.min(view.groups.length, view.shown + DATA.per_page);
  const frag = document.createDocumentFragment();
  for (let k = view.shown; k < end; k++) frag.append(renderGroup(view.groups[k], k + 1));
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
    $("groups").replaceChildren();
    showMore();
    const images = view.groups.reduce((n, g) => n + g.members.size, 0);
    $("status").textContent = `${plural(view.groups.length, "group")} · ${plural(images, "image")}`;
    $("empty").style.display = view.groups.length ? "none" : "block";
  });
}

function setup() {
  const s = DATA.summary;
  $("stats").textContent = `${s.files} files (${s.pdfs} PDFs) · ${s.images} images · ${s.skipped} skipped` +
    (s.blank ? ` (${s.blank} blank images, not compared)` : "") + ` · method ${DATA.method}` +
    (DATA.uncalibrated.length ? ` · uncalibrated: ${DATA.uncalibrated.join(", ")} (scores rank pairs but do not estimate precision)` : "");
  const slider = $("threshold");
  slider.min = Math.max(0, Math.floor(DATA.min_score * 100) / 100); slider.max = 1; slider.value = DATA.threshold;
  const select = $("method");
  select.append(el("option", { value: "all", text: "all (best evidence)" }));
  for (const m of STAGES) if (DATA.pairs.some((p) => p[4][STAGES.indexOf(m)] > 0)) select.append(el("option", { value: m, text: m }));
  for (const c of [slider, select, $("search")]) c.addEventListener("input", update);
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && view.shown < view.groups.length) showMore();
  }, { rootMargin: "800px" }).observe($("sentinel"));
  renderSkipped();
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
