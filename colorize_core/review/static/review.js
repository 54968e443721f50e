// The review page: a thin client over the JSON API documented in the README (and colorize_core/review/server.py).
// No colour maths here: the server renders previews, the ab plane at a lightness (/api/gamut), and samples
// the input's L and the output's ab at a point (/api/image/<id>/sample); swatch colours are read from the
// gamut images.
"use strict";

const $ = (sel) => document.querySelector(sel);
const enc = (id) => encodeURIComponent(id);
const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

const state = {
  run: null,
  query: { sort: "image_id", order: "asc", status: "", reviewed: "", range: "", min: "", max: "", limit: 48, offset: 0 },
  page: null,          // last /api/images answer
  id: null,            // image in the detail view
  points: [],          // [{x, y, a, b, l}]
  saved: [],           // hints as last saved / loaded
  selected: -1,
  inflight: false,
  dirty: false,
  previewUrl: null,
};

async function api(path, options = {}) {
  const res = await fetch(path, options);
  if (!res.ok) {
    let reason = res.statusText;
    try { reason = (await res.json()).error || reason; } catch (e) { /* not JSON */ }
    throw new Error(`${res.status}: ${reason}`);
  }
  return res;
}

function status(text) { $("#status").textContent = text; }

// ------------------------------------------------------------------------------------------- the run

async function loadRun() {
  state.run = await (await api("/api/run")).json();
  const r = state.run, c = r.counts;
  $("#run-info").textContent = `${r.output} · model ${r.model} · ${c.all} images (${c.ok} ok, ${c.error} error` +
    `${c.transient ? `, ${c.transient} transient` : ""}) · ${r.reviewed} reviewed`;
  const banner = $("#banner");
  if (!r.preview.available) {
    banner.textContent = `Previews are off: ${r.preview.reason}`;
    banner.hidden = false;
  } else if (!r.preview.accepts_hints) {
    banner.textContent = `This run's model (${r.preview.model}) does not read colour points: previews and ` +
      `re-renders ignore them. Run the collection with a model that takes hints to use them.`;
    banner.hidden = false;
  }
}

// ------------------------------------------------------------------------------------------- the grid

function queryString() {
  const q = state.query, p = new URLSearchParams();
  p.set("sort", q.sort); p.set("order", q.order); p.set("offset", q.offset); p.set("limit", q.limit);
  if (q.status) p.set("status", q.status);
  if (q.reviewed) p.set("reviewed", q.reviewed);
  if (q.range && q.min !== "") p.set(`${q.range}_min`, q.min);
  if (q.range && q.max !== "") p.set(`${q.range}_max`, q.max);
  return p.toString();
}

let gridRequest = 0;

async function loadGrid() {
  const grid = $("#grid"), mine = ++gridRequest;
  let page;
  try {
    page = await (await api(`/api/images?${queryString()}`)).json();
  } catch (e) {
    grid.textContent = `cannot list the images: ${e.message}`;
    return;
  }
  if (mine !== gridRequest) return;  // a later change asked for another page meanwhile
  state.page = page;
  grid.replaceChildren(...page.rows.map(card));
  const last = Math.min(page.offset + page.rows.length, page.total);
  $("#page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no images match";
  $("#prev-page").disabled = page.offset === 0;
  $("#next-page").disabled = last >= page.total;
  document.body.dataset.grid = queryString();
}

function card(row) {
  const el = document.createElement("article");
  el.className = `card ${row.status}`;
  el.tabIndex = 0;
  el.dataset.id = row.image_id;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  if (row.status === "ok") {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = row.image_id;
    img.src = `/api/image/${enc(row.image_id)}/output?max=256`;
    thumb.append(img);
  } else {
    const reason = document.createElement("div");
    reason.className = "reason";
    reason.textContent = `${row.status}: ${row.error || "no reason recorded"}`;
    thumb.append(reason);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const id = document.createElement("div");
  id.className = "id";
  id.textContent = row.image_id;
  if (row.hints !== null) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = `${row.hints} hint${row.hints === 1 ? "" : "s"}`;
    id.append(badge);
  }
  const line = document.createElement("div");
  line.className = "muted";
  line.textContent = metricsLine(row);
  meta.append(id, line);
  el.append(thumb, meta);
  el.addEventListener("click", () => openDetail(row.image_id));
  el.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openDetail(row.image_id); });
  return el;
}

function metricsLine(row) {
  const parts = [];
  if (row.width > 0) parts.push(`${row.width}×${row.height}`);
  if (row.psnr !== null) parts.push(`PSNR ${fmt(row.psnr)}`);
  if (row.ssim !== null) parts.push(`SSIM ${fmt(row.ssim, 3)}`);
  if (row.colorfulness !== null) parts.push(`colour ${fmt(row.colorfulness, 1)}`);
  if (row.metrics_against) parts.push(`vs ${row.metrics_against}`);
  return parts.join(" · ");
}

const LABELS = { image_id: "image id", status: "status", width: "width", height: "height", psnr: "PSNR",
  ssim: "SSIM", rmse: "RMSE", colorfulness: "colourfulness", deltae2000: "CIEDE2000" };

function fillSelect(select, values) {
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = LABELS[v] || v;
    select.append(o);
  }
}

function bindToolbar() {
  const form = $("#toolbar");
  fillSelect(form.elements.sort, state.run.sort_columns);
  fillSelect(form.elements.range, state.run.range_columns);
  form.addEventListener("change", () => {
    const data = new FormData(form);
    for (const [k, v] of data.entries()) state.query[k] = v;
    state.query.offset = 0;
    loadGrid();
  });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  $("#prev-page").addEventListener("click", () => {
    state.query.offset = Math.max(0, state.query.offset - Number(state.query.limit));
    loadGrid();
  });
  $("#next-page").addEventListener("click", () => {
    state.query.offset += Number(state.query.limit);
    loadGrid();
  });
}

// ------------------------------------------------------------------------------------------- detail view

async function openDetail(id) {
  state.id = id;
  state.selected = -1;
  $("#grid-view").hidden = true;
  $("#detail-view").hidden = false;
  $("#detail-id").textContent = id;
  history.replaceState(null, "", `#image=${enc(id)}`);
  const row = (state.page && state.page.rows.find((r) => r.image_id === id)) || null;
  $("#detail-metrics").textContent = row ? metricsLine(row) : "";
  const input = $("#input-img"), output = $("#output-img"), missing = $("#output-missing");
  output.hidden = false;
  missing.hidden = true;
  const loaded = Promise.all([
    new Promise((ok) => { input.onload = input.onerror = ok; }),
    new Promise((ok) => {
      output.onload = ok;
      output.onerror = () => {
        output.hidden = true;
        missing.textContent = row && row.error ? `no output: ${row.error}` : "no output for this image";
        missing.hidden = false;
        ok();
      };
    }),
  ]);
  input.src = `/api/image/${enc(id)}/input?max=${state.run.preview_max_side}`;
  output.src = `/api/image/${enc(id)}/output?max=${state.run.preview_max_side}`;
  $("#output-caption").textContent = "output of the run";
  try {
    const saved = await (await api(`/api/hints/${enc(id)}`)).json();
    state.saved = saved.hints;
  } catch (e) {
    state.saved = [];
    status(`cannot read the saved hints: ${e.message}`);
  }
  state.points = state.saved.map((h) => ({ ...h, l: null }));
  await loaded;
  renderPoints();
  for (const p of state.points) fillLightness(p);
  status(state.saved.length ? `${state.saved.length} saved hint(s)` : "no saved hints");
  document.body.dataset.detailReady = id;
}

function closeDetail() {
  $("#detail-view").hidden = true;
  $("#grid-view").hidden = false;
  state.id = null;
  history.replaceState(null, "", "#");
  loadGrid();
}

function neighbour(step) {
  if (!state.page) return;
  const rows = state.page.rows, i = rows.findIndex((r) => r.image_id === state.id);
  const next = rows[i + step];
  if (next) openDetail(next.image_id);
}

// ------------------------------------------------------------------------------------------- points

const gamutCache = new Map();  // L (integer) -> Promise<ImageData>

function gamut(l) {
  const key = Math.round(Math.max(0, Math.min(100, l)));
  if (!gamutCache.has(key)) {
    gamutCache.set(key, new Promise((ok, fail) => {
      const img = new Image();
      img.onload = () => {
        const c = document.createElement("canvas");
        c.width = img.width; c.height = img.height;
        const g = c.getContext("2d");
        g.drawImage(img, 0, 0);
        ok({ img, data: g.getImageData(0, 0, c.width, c.height) });
      };
      img.onerror = fail;
      img.src = `/api/gamut?l=${key}`;
    }));
  }
  return gamutCache.get(key);
}

function abToPixel(a, b) {
  const { ab, size } = state.run.gamut;
  return [(a + ab) / (2 * ab) * size - 0.5, (ab - b) / (2 * ab) * size - 0.5];
}

function pixelToAb(px, py) {
  const { ab, size } = state.run.gamut;
  return [-ab + 2 * ab * (px + 0.5) / size, ab - 2 * ab * (py + 0.5) / size];
}

async function swatchColour(p) {
  if (p.l === null) return "#888";
  const { data } = await gamut(p.l);
  const [px, py] = abToPixel(p.a, p.b).map((v) => Math.max(0, Math.min(data.width - 1, Math.round(v))));
  const i = 4 * (py * data.width + px);
  return `rgb(${data.data[i]}, ${data.data[i + 1]}, ${data.data[i + 2]})`;
}

async function fillLightness(p) {
  try {
    const s = await (await api(`/api/image/${enc(state.id)}/sample?x=${p.x}&y=${p.y}`)).json();
    p.l = s.l;
    renderPoints();
    if (state.points[state.selected] === p) showPicker();
  } catch (e) { status(`cannot sample the image: ${e.message}`); }
}

function renderPoints() {
  const layer = $("#points"), list = $("#point-list");
  layer.replaceChildren();
  list.replaceChildren();
  state.points.forEach((p, i) => {
    const mark = document.createElement("div");
    mark.className = `point${i === state.selected ? " selected" : ""}`;
    mark.style.left = `${p.x * 100}%`;
    mark.style.top = `${p.y * 100}%`;
    mark.dataset.index = i;
    mark.title = `point ${i + 1}: a ${fmt(p.a, 0)}, b ${fmt(p.b, 0)}`;
    mark.addEventListener("pointerdown", (ev) => startDrag(ev, i));
    mark.addEventListener("contextmenu", (ev) => { ev.preventDefault(); removePoint(i); });
    const li = document.createElement("li");
    li.className = i === state.selected ? "selected" : "";
    const sw = document.createElement("span");
    sw.className = "sw";
    const label = document.createElement("span");
    label.textContent = `x ${fmt(p.x)} y ${fmt(p.y)} · a ${fmt(p.a, 0)} b ${fmt(p.b, 0)}`;
    const del = document.createElement("button");
    del.className = "del";
    del.type = "button";
    del.textContent = "×";
    del.title = "remove this point";
    del.addEventListener("click", (ev) => { ev.stopPropagation(); removePoint(i); });
    li.append(sw, label, del);
    li.addEventListener("click", () => select(i));
    swatchColour(p).then((c) => { mark.style.background = c; sw.style.background = c; });
    layer.append(mark);
    list.append(li);
  });
  document.body.dataset.points = String(state.points.length);
  $("#picker-box").hidden = state.selected < 0;
}

function select(i) {
  state.selected = i;
  renderPoints();
  showPicker();
}

function removePoint(i) {
  state.points.splice(i, 1);
  if (state.selected >= state.points.length) state.selected = state.points.length - 1;
  renderPoints();
  showPicker();
  requestPreview();
}

function framePosition(ev) {
  const r = $("#input-img").getBoundingClientRect();
  return [Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width)),
          Math.max(0, Math.min(1, (ev.clientY - r.top) / r.height))];
}

async function addPoint(ev) {
  if (ev.button !== 0 || ev.target.classList.contains("point")) return;
  const [x, y] = framePosition(ev);
  const p = { x, y, a: 0, b: 0, l: null };
  state.points.push(p);
  state.selected = state.points.length - 1;
  renderPoints();
  try {  // start from the colour the run gave this spot, at the input's lightness there
    const s = await (await api(`/api/image/${enc(state.id)}/sample?x=${x}&y=${y}`)).json();
    p.l = s.l;
    if (s.a !== null) { p.a = s.a; p.b = s.b; }
  } catch (e) { status(`cannot sample the image: ${e.message}`); }
  renderPoints();
  showPicker();
  requestPreview();
}

function startDrag(ev, i) {
  if (ev.button !== 0) return;
  ev.preventDefault();
  ev.stopPropagation();
  select(i);  // re-renders the markers: capture on the frame, which stays
  const frame = $("#input-frame");
  frame.setPointerCapture(ev.pointerId);
  let moved = false;
  const move = (e) => {
    const [x, y] = framePosition(e);
    const p = state.points[i];
    p.x = x; p.y = y;
    const mark = document.querySelector(`#points .point[data-index="${i}"]`);
    if (mark) { mark.style.left = `${x * 100}%`; mark.style.top = `${y * 100}%`; }
    moved = true;
    requestPreview();
  };
  const up = () => {
    frame.removeEventListener("pointermove", move);
    frame.removeEventListener("pointerup", up);
    if (moved) { state.points[i].l = null; renderPoints(); fillLightness(state.points[i]); }
  };
  frame.addEventListener("pointermove", move);
  frame.addEventListener("pointerup", up);
}

// ------------------------------------------------------------------------------------------- the picker

async function showPicker() {
  const p = state.points[state.selected];
  $("#picker-box").hidden = !p;
  if (!p) return;
  $("#picker-index").textContent = String(state.selected + 1);
  $("#picker-l").textContent = p.l === null ? "…" : fmt(p.l, 0);
  const canvas = $("#picker"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (p.l !== null) {
    const { img } = await gamut(p.l);
    g.drawImage(img, 0, 0, canvas.width, canvas.height);
  }
  const [px, py] = abToPixel(p.a, p.b);
  const mark = $("#picker-mark");
  mark.style.left = `${(px + 0.5) * canvas.clientWidth / state.run.gamut.size}px`;
  mark.style.top = `${(py + 0.5) * canvas.clientHeight / state.run.gamut.size}px`;
  const swatches = $("#swatches");
  swatches.replaceChildren();
  state.points.forEach((q, i) => {
    if (i === state.selected) return;
    const b = document.createElement("button");
    b.type = "button";
    b.title = `use point ${i + 1}'s colour (a ${fmt(q.a, 0)}, b ${fmt(q.b, 0)})`;
    swatchColour(q).then((c) => { b.style.background = c; });
    b.addEventListener("click", () => { p.a = q.a; p.b = q.b; renderPoints(); showPicker(); requestPreview(); });
    swatches.append(b);
  });
}

async function pick(ev) {
  const p = state.points[state.selected];
  if (!p || p.l === null) return;
  const canvas = $("#picker"), r = canvas.getBoundingClientRect();
  const size = state.run.gamut.size;
  const px = Math.floor((ev.clientX - r.left) / r.width * size), py = Math.floor((ev.clientY - r.top) / r.height * size);
  const { data } = await gamut(p.l);
  if (px < 0 || py < 0 || px >= size || py >= size || data.data[4 * (py * data.width + px) + 3] === 0) return;
  [p.a, p.b] = pixelToAb(px, py);
  renderPoints();
  showPicker();
  requestPreview();
}

// ------------------------------------------------------------------------------------------- preview, save

function hintsBody() {
  return JSON.stringify({ hints: state.points.map(({ x, y, a, b }) => ({ x, y, a, b })) });
}

// One preview in flight at a time; changes made meanwhile are sent when it returns (a drag sends as fast as
// the model answers, never a queue of stale requests).
async function requestPreview() {
  if (state.inflight) { state.dirty = true; return; }
  state.inflight = true;
  state.dirty = false;
  document.body.dataset.busy = "1";
  const id = state.id, t0 = performance.now();
  try {
    const res = await api(`/api/preview/${enc(id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: hintsBody(),
    });
    const blob = await res.blob();
    if (id === state.id) {
      const url = URL.createObjectURL(blob), img = $("#output-img");
      await new Promise((ok) => { img.onload = img.onerror = ok; img.src = url; });
      img.hidden = false;
      $("#output-missing").hidden = true;
      if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
      state.previewUrl = url;
      const ms = performance.now() - t0;
      $("#output-caption").textContent = `preview with ${state.points.length} point(s), ${Math.round(ms)} ms (not saved)`;
      document.body.dataset.previews = String(Number(document.body.dataset.previews) + 1);
    }
  } catch (e) {
    status(`preview failed: ${e.message}`);
  } finally {
    state.inflight = false;
    if (state.dirty && id === state.id) requestPreview();
    else document.body.dataset.busy = "0";
  }
}

async function save() {
  try {
    const res = await api(`/api/hints/${enc(state.id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: hintsBody(),
    });
    const answer = await res.json();
    state.saved = state.points.map(({ x, y, a, b }) => ({ x, y, a, b }));
    status(`saved ${answer.hints} hint(s) to ${answer.manifest}; to render the saved images: ${answer.rerender}`);
    document.body.dataset.saves = String(Number(document.body.dataset.saves) + 1);
  } catch (e) {
    status(`not saved: ${e.message}`);
  }
}

function revert() {
  state.points = state.saved.map((h) => ({ ...h, l: null }));
  state.selected = -1;
  renderPoints();
  for (const p of state.points) fillLightness(p);
  requestPreview();
}

// ------------------------------------------------------------------------------------------- wiring

function setMode(mode) {
  const stage = $("#stage");
  stage.classList.toggle("slider", mode === "slider");
  stage.classList.toggle("side", mode !== "slider");
  $("#output-frame").style.clipPath = mode === "slider" ? `inset(0 0 0 ${$("#slider").value}%)` : "";
}

async function main() {
  $("#back").addEventListener("click", closeDetail);
  $("#prev-image").addEventListener("click", () => neighbour(-1));
  $("#next-image").addEventListener("click", () => neighbour(1));
  $("#input-frame").addEventListener("pointerdown", addPoint);
  $("#picker").addEventListener("pointerdown", (ev) => {
    pick(ev);
    const canvas = $("#picker");
    canvas.setPointerCapture(ev.pointerId);
    const move = (e) => pick(e);
    const up = () => { canvas.removeEventListener("pointermove", move); canvas.removeEventListener("pointerup", up); };
    canvas.addEventListener("pointermove", move);
    canvas.addEventListener("pointerup", up);
  });
  $("#save").addEventListener("click", save);
  $("#revert").addEventListener("click", revert);
  $("#clear").addEventListener("click", () => { state.points = []; state.selected = -1; renderPoints(); requestPreview(); });
  for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", () => setMode(r.value));
  $("#slider").addEventListener("input", () => setMode("slider"));
  document.addEventListener("keydown", (ev) => {
    if ($("#detail-view").hidden || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    if ((ev.key === "Delete" || ev.key === "Backspace") && state.selected >= 0) removePoint(state.selected);
    else if (ev.key === "Escape") closeDetail();
    else if (ev.key === "ArrowLeft") neighbour(-1);
    else if (ev.key === "ArrowRight") neighbour(1);
  });
  try {
    await loadRun();
  } catch (e) {
    $("#run-info").textContent = `cannot read the run: ${e.message}`;
    return;
  }
  bindToolbar();
  await loadGrid();
  const m = location.hash.match(/^#image=(.+)$/);
  if (m) openDetail(decodeURIComponent(m[1]));
  document.body.dataset.ready = "1";
}

main();
