"""The web app: one self-contained HTML page (vanilla JS, inline CSS, nothing fetched from elsewhere).

Kept as a Python string so it ships inside the package with no package-data rule. Element ids are
part of the contract with ``tests/server/test_server_browser.py``.
"""

INDEX_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>refine-by-align</title>
<style>
  :root { --fg:#1d2330; --muted:#667085; --line:#d0d5dd; --accent:#2f6fed; --bad:#b42318; --bg:#f6f7f9; }
  * { box-sizing: border-box; }
  [hidden] { display:none !important; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; color:var(--fg); background:var(--bg); }
  header { padding:10px 18px; background:#fff; border-bottom:1px solid var(--line); display:flex; gap:16px; align-items:baseline; }
  header h1 { font-size:18px; margin:0; }
  header .note { color:var(--muted); }
  main { display:grid; grid-template-columns: minmax(320px, 1.3fr) minmax(300px, 1fr); gap:16px; padding:16px; }
  section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px; min-width:0; }
  h2 { font-size:15px; margin:0 0 8px; }
  label { display:inline-flex; gap:6px; align-items:center; margin:4px 12px 4px 0; }
  .row { display:flex; flex-wrap:wrap; align-items:center; gap:4px 8px; margin:6px 0; }
  .hint { color:var(--muted); font-size:12px; }
  button { font:inherit; padding:6px 12px; border:1px solid var(--line); border-radius:6px; background:#fff; cursor:pointer; }
  button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
  button:disabled { opacity:.5; cursor:not-allowed; }
  button.on { background:#fde68a; }
  input[type=number] { width:80px; }
  #stage { position:relative; display:inline-block; max-width:100%; line-height:0; background:#e4e7ec; min-height:60px; min-width:60px; }
  #image-view { display:block; max-width:100%; height:auto; image-rendering:auto; user-select:none; }
  #mask-canvas { position:absolute; left:0; top:0; width:100%; height:100%; opacity:.5; cursor:crosshair; touch-action:none; }
  #error { display:none; background:#fef3f2; color:var(--bad); border:1px solid #fecdca; border-radius:6px; padding:8px 10px; margin:0 16px; white-space:pre-wrap; }
  #error.show { display:block; }
  progress { width:220px; }
  .thumb { max-width:100%; max-height:220px; display:block; margin-top:4px; border:1px solid var(--line); }
  #compare { position:relative; display:inline-block; max-width:100%; line-height:0; }
  #compare img { display:block; max-width:100%; height:auto; }
  #compare-after { position:absolute; left:0; top:0; clip-path: inset(0 0 0 50%); }
  #compare-line { position:absolute; top:0; bottom:0; left:50%; width:2px; background:#fff; box-shadow:0 0 2px #000; pointer-events:none; }
  #compare-range { width:100%; }
  .tag { position:absolute; top:6px; padding:2px 7px; border-radius:4px; background:rgba(0,0,0,.62); color:#fff;
         font:600 12px/1.4 system-ui, sans-serif; pointer-events:none; transition:opacity .15s; }
  #label-before { left:6px; }
  #label-after { right:6px; }
  #region-img { max-height:420px; }
  @media (max-width: 760px) {
    main { grid-template-columns: minmax(0, 1fr); padding:8px; gap:10px; }
    header { flex-wrap:wrap; gap:4px 12px; }
    #error { margin:0 8px; }
  }
  .results { display:none; }
  .results.show { display:block; }
  a.button { display:inline-block; padding:6px 12px; border-radius:6px; background:var(--accent); color:#fff; text-decoration:none; }
  .warn { color:#b54708; }
  .extra-ref { border-top:1px dashed var(--line); margin-top:10px; padding-top:6px; }
  .swatch { display:inline-block; width:12px; height:12px; border-radius:3px; vertical-align:-1px; margin-right:4px; border:1px solid rgba(0,0,0,.25); }
  #references-list { margin:6px 0; padding-left:0; list-style:none; }
  #references-list li { margin:2px 0; }
  #source-img { max-height:420px; }
</style>
</head>
<body data-state="idle">
<header><h1>refine-by-align</h1><span class="note" id="model-note">checking the model&hellip;</span></header>
<div id="error" role="alert"></div>
<main>
<section>
  <h2>1. Image with artifacts &mdash; paint over the artifact</h2>
  <div class="row">
    <input type="file" id="image-file" accept="image/*,.png,.jpg,.jpeg,.webp,.tif,.tiff,.bmp">
  </div>
  <div class="row">
    <label>brush <input type="range" id="brush-size" min="2" max="120" value="20"> <span id="brush-value">20</span> px</label>
    <button id="eraser" type="button" title="toggle eraser (E)">eraser</button>
    <button id="undo" type="button" title="undo (Ctrl+Z)">undo</button>
    <button id="clear-mask" type="button">clear</button>
    <button id="suggest-btn" type="button" disabled title="propose the artifact mask from where the image disagrees with the reference; edit it with the brush, undo reverts it">Suggest mask</button>
    <label class="hint">or mask file <input type="file" id="mask-file" accept="image/*"></label>
  </div>
  <div id="stage"><img id="image-view" alt=""><canvas id="mask-canvas" width="1" height="1"></canvas></div>
  <div class="hint" id="image-info">Upload an image, then paint the artifact in red.</div>
  <div class="hint" id="suggest-info" role="status"></div>
</section>
<section>
  <h2>2. Reference photo of the same object</h2>
  <div class="row"><input type="file" id="reference-file" accept="image/*,.png,.jpg,.jpeg,.webp,.tif,.tiff,.bmp"></div>
  <div class="row"><label class="hint">optional object mask <input type="file" id="reference-mask-file" accept="image/*"></label></div>
  <div class="hint" id="reference-info">Without an object mask the object is estimated from the photo (its alpha channel if it has one).</div>
  <img id="reference-view" class="thumb" alt="" hidden>
  <div id="more-references"></div>
  <div class="row"><button id="add-reference" type="button" title="another photo of the object (another view, a close-up): each part of the artifact is taken from the reference that fits it best">Add reference</button>
    <span class="hint" id="references-hint"></span></div>
  <h2 style="margin-top:14px">3. Settings</h2>
  <div class="row">
    <label>steps <input type="number" id="steps" min="1" max="1000" step="1" placeholder="model"></label>
    <label>guidance <input type="number" id="guidance" min="0" step="0.1" placeholder="model"></label>
    <label>seed <input type="number" id="seed" min="0" step="1" value="0"></label>
  </div>
  <div class="row">
    <button id="refine-btn" class="primary" type="button" disabled>Refine</button>
    <button id="align-btn" type="button" disabled>Align only</button>
    <button id="cancel-btn" type="button" hidden>Cancel</button>
    <span class="hint" id="ready-hint"></span>
  </div>
  <div class="row"><progress id="progress" max="1" value="0" hidden></progress> <span id="status" class="hint"></span></div>
</section>
<section class="results" id="results">
  <h2 id="results-title">Before / after</h2>
  <div id="compare"><img id="compare-before" alt="before"><img id="compare-after" alt="after"><div id="compare-line"></div>
    <span class="tag" id="label-before">before</span><span class="tag" id="label-after">after</span></div>
  <input type="range" id="compare-range" min="0" max="100" value="50" aria-label="before/after">
  <img id="region-img" class="thumb" alt="the found region on the reference" hidden>
  <div class="row"><a id="download" class="button" download="refined.png" href="#">Download result</a>
    <span class="hint" id="result-info"></span></div>
  <img id="result-img" alt="result" hidden>
</section>
<section class="results" id="references-section">
  <h2>Where each part came from</h2>
  <img id="source-img" class="thumb" alt="the refined image, each part of the mask tinted by the reference it came from">
  <ul id="references-list"></ul>
  <div class="hint" id="source-caption">Each pixel of the mask is tinted by the reference whose warped pixels it took (grey: drawn by the model).</div>
  <img id="references-compare-img" class="thumb" alt="input | each reference with its aligned region | result | where each part came from">
</section>
<section class="results" id="heat-section">
  <h2>Where the masked part was found on the reference</h2>
  <img id="heatmap-img" class="thumb" alt="correspondence heat map" style="max-height:420px">
  <div class="hint" id="heat-caption">Heat map of the alignment (red = strong); the white outline is the region that guided the refinement.</div>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const canvas = $("mask-canvas");
const ctx = canvas.getContext("2d");
const state = { image: null, reference: null, referenceMask: null, w: 0, h: 0, eraser: false, busy: false,
                undo: [], drawing: false, last: null, job: null, abort: null, urls: {}, gen: 0,
                extras: [], maxReferences: 4 };
// references #2, #3 ...: { block, file, mask } each (the first is reference-file / reference-mask-file)
const COLOURS = ["#00c8ff", "#ffaa00", "#aaff3c", "#ff50c8", "#8c78ff"];

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.classList.add("show");
  document.body.dataset.state = "error";
}
function clearError() { $("error").classList.remove("show"); $("error").textContent = ""; }
function setStatus(text) { $("status").textContent = text; }
function setUrl(key, blob) {
  dropUrl(key);
  state.urls[key] = URL.createObjectURL(blob);
  return state.urls[key];
}
function dropUrl(key) {
  if (state.urls[key]) URL.revokeObjectURL(state.urls[key]);
  delete state.urls[key];
}
function blank(img) { img.removeAttribute("src"); dropUrl(img.id); }

// The results on screen always belong to the inputs on screen: any change of an input (a file, the
// mask, a setting) or a new job removes them, and a job whose inputs changed while it ran is dropped.
function clearResults() {
  state.gen += 1;
  for (const id of ["results", "heat-section", "references-section"]) $(id).classList.remove("show");
  for (const id of ["compare-after", "result-img", "heatmap-img", "region-img", "source-img", "references-compare-img"]) blank($(id));
  $("references-list").textContent = "";
  dropUrl("result");
  $("download").setAttribute("href", "#");
  $("result-info").textContent = "";
  delete $("result-img").dataset.jobId;
  if (!state.busy && document.body.dataset.state === "done") { document.body.dataset.state = "idle"; setStatus(""); }
}
function setSuggestInfo(text, warn) {
  $("suggest-info").textContent = text;
  $("suggest-info").classList.toggle("warn", !!warn);
}
function resetImage(info) {
  setSuggestInfo("");
  state.image = null; state.w = state.h = 0; state.undo = [];
  blank($("image-view")); $("compare-before").removeAttribute("src");
  canvas.width = canvas.height = 1; ctx.clearRect(0, 0, 1, 1);
  $("image-info").textContent = info;
}
function resetReference() {
  state.reference = null;
  blank($("reference-view")); $("reference-view").hidden = true;
}
async function errorText(response) {
  let text = "";
  try { text = await response.text(); const j = JSON.parse(text); if (j && j.error) return j.error; } catch (e) {}
  return "HTTP " + response.status + (text ? ": " + text.slice(0, 300) : "");
}
async function post(url, form, signal) {
  let r;
  try { r = await fetch(url, { method: "POST", body: form, signal: signal }); }
  catch (e) {
    if (e.name === "AbortError") throw new Error("cancelled by the user");
    throw new Error("cannot reach the server (" + e.message + "); is `refine-by-align serve` still running?"); }
  if (!r.ok) throw new Error(await errorText(r));
  return r;
}
async function preview(file, role) {
  const form = new FormData();
  form.append("file", file, file.name || role);
  form.append("role", role);
  const r = await post("/api/preview", form);
  return await r.blob();
}
function loadImg(img, blob, key) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not show the picture"));
    img.src = setUrl(key || img.id, blob);
  });
}
function updateButtons() {
  const empty = state.extras.findIndex((x) => !x.file);
  const ready = state.image && state.reference && empty < 0 && !state.busy;
  const several = state.extras.length > 0;
  $("refine-btn").disabled = !ready;
  $("align-btn").disabled = !ready || several;
  $("align-btn").title = several ? "Align only works with one reference: remove the others" : "";
  $("suggest-btn").disabled = !(state.image && state.reference && !state.busy);
  $("cancel-btn").hidden = !state.busy;
  $("add-reference").disabled = state.busy || 1 + state.extras.length >= state.maxReferences;
  $("references-hint").textContent = 1 + state.extras.length >= state.maxReferences ? "at most " + state.maxReferences + " references" :
    several ? "Suggest mask compares with reference #1" : "";
  const missing = [];
  if (!state.image) missing.push("an image");
  if (!state.reference) missing.push("a reference photo");
  if (empty >= 0) missing.push("a photo for reference #" + (empty + 2) + " (or remove it)");
  $("ready-hint").textContent = state.busy || !missing.length ? "" : "Refine needs " + missing.join(" and ") + ".";
}

// ------------------------------------------------------------------ uploads
$("image-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  clearError(); clearResults();
  resetImage("Upload an image, then paint the artifact in red."); updateButtons();
  if (!file) return;
  try {
    const blob = await preview(file, "image");
    const img = await loadImg($("image-view"), blob);
    state.w = img.naturalWidth; state.h = img.naturalHeight;
    canvas.width = state.w; canvas.height = state.h;
    ctx.clearRect(0, 0, state.w, state.h);
    state.image = file;
    $("compare-before").src = img.src;
    $("image-info").textContent = file.name + ": " + state.w + " x " + state.h + " px. Paint over the artifact.";
  } catch (e) {
    resetImage("No image: " + file.name + " could not be used (" + e.message + "). Upload another one.");
    ev.target.value = "";
    showError("image: " + e.message);
  }
  updateButtons();
});
$("reference-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  clearError(); clearResults();
  resetReference(); updateButtons();
  if (!file) return;
  try {
    const blob = await preview(file, "reference");
    const img = await loadImg($("reference-view"), blob);
    img.hidden = false;
    state.reference = file;
  } catch (e) { ev.target.value = ""; showError("reference: " + e.message); }
  updateButtons();
});
$("reference-mask-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  clearError(); clearResults();
  state.referenceMask = null;
  const info = "Without an object mask the object is estimated from the photo (its alpha channel if it has one).";
  $("reference-info").textContent = info;
  if (!file) return;
  try {
    await preview(file, "reference_mask");
    state.referenceMask = file;
    $("reference-info").textContent = "Object mask: " + file.name + ".";
  } catch (e) { ev.target.value = ""; showError("reference mask: " + e.message); }
});
// ------------------------------------------------------------------ more references
// Each block's ids carry its number (reference-file-2 ...); removing one renumbers those after it.
function extraBlock() {
  const block = document.createElement("div");
  block.className = "extra-ref";
  block.innerHTML = '<div class="row"><span class="swatch"></span><b class="ref-title"></b> ' +
    '<input type="file" class="ref-file" accept="image/*,.png,.jpg,.jpeg,.webp,.tif,.tiff,.bmp"> ' +
    '<button type="button" class="ref-remove">remove</button></div>' +
    '<div class="row"><label class="hint">optional object mask <input type="file" class="ref-mask" accept="image/*"></label></div>' +
    '<div class="hint ref-info"></div><img class="thumb ref-view" alt="" hidden>';
  const extra = { block: block, file: null, mask: null };
  const q = (c) => block.querySelector("." + c);
  q("ref-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0], k = state.extras.indexOf(extra) + 2;
    clearError(); clearResults();
    extra.file = null; blank(q("ref-view")); q("ref-view").hidden = true; updateButtons();
    if (!file) return;
    try {
      const img = await loadImg(q("ref-view"), await preview(file, "reference"));
      img.hidden = false;
      extra.file = file;
    } catch (e) { ev.target.value = ""; showError("reference #" + k + ": " + e.message); }
    updateButtons();
  });
  q("ref-mask").addEventListener("change", async (ev) => {
    const file = ev.target.files[0], k = state.extras.indexOf(extra) + 2;
    clearError(); clearResults();
    extra.mask = null; q("ref-info").textContent = "";
    if (!file) return;
    try {
      await preview(file, "reference_mask");
      extra.mask = file;
      q("ref-info").textContent = "Object mask: " + file.name + ".";
    } catch (e) { ev.target.value = ""; showError("reference #" + k + " mask: " + e.message); }
  });
  q("ref-remove").addEventListener("click", () => {
    clearError(); clearResults();
    blank(q("ref-view"));
    state.extras.splice(state.extras.indexOf(extra), 1);
    block.remove();
    renumber(); updateButtons();
  });
  return extra;
}
function renumber() {
  state.extras.forEach((x, i) => {
    const k = i + 2, q = (c) => x.block.querySelector("." + c);
    x.block.id = "reference-block-" + k;
    q("ref-title").textContent = "Reference #" + k;
    q("swatch").style.background = COLOURS[(k - 1) % COLOURS.length];
    q("ref-file").id = "reference-file-" + k;
    q("ref-mask").id = "reference-mask-file-" + k;
    q("ref-remove").id = "remove-reference-" + k;
    q("ref-info").id = "reference-info-" + k;
    const view = q("ref-view"), id = "reference-view-" + k;
    if (view.id && view.id !== id && state.urls[view.id]) {  // its picture's URL moves with it (blocks only move up)
      state.urls[id] = state.urls[view.id];
      delete state.urls[view.id];
    }
    view.id = id;
  });
}
$("add-reference").addEventListener("click", () => {
  if (1 + state.extras.length >= state.maxReferences) return;
  clearResults();
  const extra = extraBlock();
  state.extras.push(extra);
  $("more-references").appendChild(extra.block);
  renumber(); updateButtons();
  extra.block.querySelector(".ref-file").focus();
});

$("mask-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  clearError(); clearResults();
  if (!state.w) { ev.target.value = ""; showError("upload the image first, then its mask"); return; }
  try {
    const blob = await preview(file, "mask");
    const img = await loadImg(new Image(), blob, "mask-file");
    if (img.naturalWidth !== state.w || img.naturalHeight !== state.h) {
      throw new Error("mask is " + img.naturalWidth + " x " + img.naturalHeight + " but the image is " + state.w + " x " + state.h);
    }
    fillMask(img);
  } catch (e) { showError("mask: " + e.message); }
  ev.target.value = "";
});

// The brush layer becomes the mask picture (white = artifact), one undo step.
function fillMask(img) {
  pushUndo();
  const tmp = document.createElement("canvas"); tmp.width = state.w; tmp.height = state.h;
  const t = tmp.getContext("2d"); t.drawImage(img, 0, 0);
  const src = t.getImageData(0, 0, state.w, state.h), out = ctx.createImageData(state.w, state.h);
  for (let i = 0; i < src.data.length; i += 4) {
    if (src.data[i] >= 128) { out.data[i] = 255; out.data[i + 3] = 255; }
  }
  ctx.putImageData(out, 0, 0);
}

// ------------------------------------------------------------------ painting
function scale() { const r = canvas.getBoundingClientRect(); return r.width > 0 ? canvas.width / r.width : 1; }
function pointer(ev) {
  const r = canvas.getBoundingClientRect(), s = scale();
  return [(ev.clientX - r.left) * s, (ev.clientY - r.top) * s];
}
function brushPx() { return Number($("brush-size").value) * scale(); }
function paint(a, b) {
  ctx.globalCompositeOperation = state.eraser ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "rgb(255,0,0)";
  ctx.lineWidth = brushPx(); ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.arc(a[0], a[1], brushPx() / 2, 0, 2 * Math.PI); ctx.fill();
  ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke();
  ctx.globalCompositeOperation = "source-over";
}
function pushUndo() {
  state.undo.push(ctx.getImageData(0, 0, canvas.width, canvas.height));
  if (state.undo.length > 30) state.undo.shift();
}
canvas.addEventListener("pointerdown", (ev) => {
  if (!state.w || ev.button !== 0) return;
  ev.preventDefault();
  canvas.setPointerCapture(ev.pointerId);
  clearResults();
  pushUndo();
  state.drawing = true; state.last = pointer(ev);
  paint(state.last, state.last);
});
canvas.addEventListener("pointermove", (ev) => {
  if (!state.drawing) return;
  const p = pointer(ev); paint(state.last, p); state.last = p;
});
for (const t of ["pointerup", "pointercancel", "lostpointercapture"]) {
  canvas.addEventListener(t, () => { state.drawing = false; });
}
$("brush-size").addEventListener("input", () => { $("brush-value").textContent = $("brush-size").value; });
$("eraser").addEventListener("click", () => { state.eraser = !state.eraser; $("eraser").classList.toggle("on", state.eraser); });
$("undo").addEventListener("click", () => { const s = state.undo.pop(); if (s) { clearResults(); ctx.putImageData(s, 0, 0); } });
$("clear-mask").addEventListener("click", () => { clearResults(); pushUndo(); ctx.clearRect(0, 0, canvas.width, canvas.height); });
for (const k of ["steps", "guidance", "seed"]) $(k).addEventListener("input", clearResults);
document.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); $("undo").click(); }
  else if (ev.key === "e" && ev.target.tagName !== "INPUT") { $("eraser").click(); }
});

function maskBlob() {
  const src = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const out = new ImageData(canvas.width, canvas.height);
  let painted = 0;
  for (let i = 0; i < src.data.length; i += 4) {
    const on = src.data[i + 3] >= 128 ? 255 : 0;
    painted += on ? 1 : 0;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = on; out.data[i + 3] = 255;
  }
  const tmp = document.createElement("canvas"); tmp.width = canvas.width; tmp.height = canvas.height;
  tmp.getContext("2d").putImageData(out, 0, 0);
  return new Promise((resolve) => tmp.toBlob((b) => resolve({ blob: b, painted: painted }), "image/png"));
}

// ------------------------------------------------------------------ jobs
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function run(mode) {
  clearError();
  if (!state.image || !state.reference) { showError("upload both the image and the reference first"); return; }
  const empty = state.extras.findIndex((x) => !x.file);
  if (empty >= 0) { showError("reference #" + (empty + 2) + " has no photo: upload one or remove it"); return; }
  if (mode === "align" && state.extras.length) { showError("Align only works with one reference: remove the others"); return; }
  const mask = await maskBlob();
  if (!mask.painted) { showError("paint over the artifact first (the mask is empty)"); return; }
  const form = new FormData();
  form.append("mode", mode);
  form.append("image", state.image, state.image.name);
  form.append("mask", mask.blob, "mask.png");
  form.append("reference", state.reference, state.reference.name);
  if (state.referenceMask) form.append("reference_mask", state.referenceMask, state.referenceMask.name);
  if (mode === "refine") {  // the k-th reference's mask goes in reference_mask_k
    state.extras.forEach((x) => { form.append("reference", x.file, x.file.name); });
    state.extras.forEach((x, i) => { if (x.mask) form.append("reference_mask_" + (i + 2), x.mask, x.mask.name); });
  }
  for (const k of ["steps", "guidance", "seed"]) { const v = $(k).value.trim(); if (v !== "") form.append(k, v); }
  clearResults();
  const gen = state.gen;
  state.busy = true; updateButtons();
  document.body.dataset.state = "running";
  const t0 = performance.now();
  const bar = $("progress"); bar.hidden = false; bar.removeAttribute("value");
  setStatus("uploading...");
  try {
    const job = await (await post("/api/jobs", form)).json();
    state.job = job.id;
    let s = job;
    while (s.state === "queued" || s.state === "running") {
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      if (s.state === "queued") { bar.removeAttribute("value"); setStatus("waiting in queue (position " + (s.queue_position || "?") + ") " + secs + " s"); }
      else if (s.total > 0) { bar.max = s.total; bar.value = s.step; setStatus("step " + s.step + " / " + s.total + " - " + secs + " s"); }
      else { setStatus("aligning... " + secs + " s"); }
      await sleep(250);
      let r;
      try { r = await fetch("/api/jobs/" + job.id, { cache: "no-store" }); }
      catch (e) { throw new Error("lost the server while waiting (" + e.message + ")"); }
      if (!r.ok) throw new Error(await errorText(r));
      s = await r.json();
    }
    if (s.state !== "done") throw new Error(s.error || "the job failed");
    if (gen !== state.gen) { setStatus("the inputs changed while the job ran: its result was dropped"); document.body.dataset.state = "idle"; return; }
    await showResult(job.id, mode, s, (performance.now() - t0) / 1000, gen);
  } catch (e) {
    showError(e.message);
    setStatus("");
  } finally {
    state.busy = false; state.job = null; bar.hidden = true; updateButtons();
  }
}
async function fetchBlob(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(await errorText(r));
  return await r.blob();
}
// The reference with the found region M* tinted and outlined (drawn here from correspondence.png).
async function regionPicture(maskBlob) {
  const ref = $("reference-view"), m = await loadImg(new Image(), maskBlob, "region-mask");
  const w = m.naturalWidth, h = m.naturalHeight;
  const c = document.createElement("canvas"); c.width = w; c.height = h;
  const g = c.getContext("2d");
  g.drawImage(m, 0, 0);
  const mask = g.getImageData(0, 0, w, h).data;
  g.drawImage(ref, 0, 0, w, h);
  const pic = g.getImageData(0, 0, w, h), p = pic.data;
  const t = Math.max(1, Math.round(Math.max(w, h) / 256));
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && mask[(y * w + x) * 4] >= 128;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!on(x, y)) continue;
      const i = (y * w + x) * 4;
      const edge = !on(x - t, y) || !on(x + t, y) || !on(x, y - t) || !on(x, y + t);
      if (edge) { p[i] = p[i + 1] = p[i + 2] = 255; }
      else { p[i] = 0.55 * p[i] + 0.45 * 255; p[i + 1] = 0.55 * p[i + 1]; p[i + 2] = 0.55 * p[i + 2] + 0.45 * 255; }
    }
  }
  g.putImageData(pic, 0, 0);
  return await new Promise((resolve) => c.toBlob(resolve, "image/png"));
}
async function showResult(id, mode, status, secs, gen) {
  const has = (name) => status.outputs.indexOf(name) >= 0;
  const result = await fetchBlob("/api/jobs/" + id + "/result.png");
  const heat = has("heatmap.png") ? await fetchBlob("/api/jobs/" + id + "/heatmap.png") : null;
  const region = mode === "align" ? await regionPicture(result) : null;
  const source = has("source.png") ? await fetchBlob("/api/jobs/" + id + "/source.png") : null;
  const tiles = has("compare.png") ? await fetchBlob("/api/jobs/" + id + "/compare.png") : null;
  if (gen !== state.gen) return;  // an input changed while the pictures were fetched
  const url = setUrl("result", result);
  const img = $("result-img");
  await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = url; });
  const refine = mode === "refine";
  $("results-title").textContent = refine ? "Before / after" : "Found region on the reference";
  $("compare").style.display = refine ? "" : "none";
  $("compare-range").style.display = refine ? "" : "none";
  if (refine) { $("compare-after").src = url; }
  else { await loadImg($("region-img"), region); }
  $("region-img").hidden = refine;
  const dl = $("download");
  dl.href = url;
  dl.download = refine ? "refined.png" : "correspondence.png";
  dl.textContent = refine ? "Download refined image" : "Download the region as a mask";
  $("results").classList.add("show");
  const refs = (status.info && status.info.references) || null;
  if (refs && refs.length > 1) await showReferences(refs, source, tiles);
  if (heat) {
    await loadImg($("heatmap-img"), heat);
    const on = refs && refs.length > 1 ? " on reference #" + (status.info.guide + 1) + ", the one that guided the model" : "";
    $("heat-caption").textContent = "Heat map of the alignment" + on + " (red = strong); the white outline is " +
      (refine ? "the region that guided the refinement." : "the found region (tinted under \u201cFound region on the reference\u201d).");
    $("heat-section").classList.add("show");
  }
  let info = "done in " + secs.toFixed(1) + " s";
  if (status.info && status.info.random_weights) info += " - WARNING: the model has random weights, the result is a stand-in";
  $("result-info").textContent = info;
  setStatus(info);
  img.dataset.jobId = id;
  document.body.dataset.state = "done";
  $("results").scrollIntoView({ behavior: "smooth", block: "start" });
}
// Several references: the source picture, one line per reference (its colour, how much of the mask
// its warp gave, how well it agreed with the image around the mask, whether it guided the model)
// and the server's picture with a tile per reference.
async function showReferences(refs, source, tiles) {
  const list = $("references-list");
  list.textContent = "";
  for (const r of refs) {
    const li = document.createElement("li"), sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = r.colour;
    li.appendChild(sw);
    let text = "#" + r.number + " " + (r.name || "") + ": " + Math.round(100 * (r.warp_fraction || 0)) + "% of the mask from its warp";
    text += r.ring_ncc === null || r.ring_ncc === undefined ? " (no alignment field)" : " (ring correlation " + r.ring_ncc.toFixed(2) + ")";
    if (r.guided) text += " \u2014 guided the model";
    if (r.notes && r.notes.length) text += ". " + r.notes.join("; ");
    li.appendChild(document.createTextNode(text));
    li.dataset.number = r.number;
    list.appendChild(li);
  }
  if (source) await loadImg($("source-img"), source);
  if (tiles) await loadImg($("references-compare-img"), tiles);
  $("references-section").classList.add("show");
}
// "Suggest mask": the server proposes the artifact mask (/api/detect); it fills the brush layer as
// one undo step, to be edited like a painted one. An empty proposal leaves the layer as it was.
async function suggestMask() {
  clearError();
  if (!state.image || !state.reference) { showError("upload both the image and the reference first"); return; }
  const form = new FormData();
  form.append("image", state.image, state.image.name);
  form.append("reference", state.reference, state.reference.name);
  if (state.referenceMask) form.append("reference_mask", state.referenceMask, state.referenceMask.name);
  clearResults();
  setSuggestInfo("");
  const gen = state.gen;
  state.busy = true; state.abort = new AbortController(); updateButtons();
  document.body.dataset.state = "running";
  const bar = $("progress"); bar.hidden = false; bar.removeAttribute("value");
  setStatus("looking for where the image disagrees with the reference...");
  try {
    const d = await (await post("/api/detect", form, state.abort.signal)).json();
    if (gen !== state.gen) { setStatus("the inputs changed while the mask was suggested: the suggestion was dropped"); document.body.dataset.state = "idle"; return; }
    const notes = (d.notes || []).join("; ");
    if (d.empty) {
      setSuggestInfo("No mask suggested: nothing in the image disagrees clearly with the reference" +
        (notes ? " (" + notes + ")" : "") + ". Paint the artifact by hand.", true);
      setStatus("no mask suggested");
    } else {
      if (d.size[0] !== state.w || d.size[1] !== state.h) throw new Error("the suggested mask is " + d.size[0] + " x " + d.size[1] + " but the image is " + state.w + " x " + state.h);
      const img = await new Promise((resolve, reject) => {
        const m = new Image(); m.onload = () => resolve(m);
        m.onerror = () => reject(new Error("the browser could not read the suggested mask"));
        m.src = "data:image/png;base64," + d.mask;
      });
      if (gen !== state.gen) { setStatus("the inputs changed while the mask was suggested: the suggestion was dropped"); document.body.dataset.state = "idle"; return; }
      fillMask(img);
      setSuggestInfo("Suggested mask: " + d.pixels + " px (" + (100 * d.fraction).toFixed(1) + "% of the image). " +
        "Edit it with the brush and the eraser; undo reverts it." + (notes ? " Notes: " + notes + "." : ""));
      setStatus("mask suggested");
    }
    document.body.dataset.state = "idle";
  } catch (e) {
    showError("suggest mask: " + e.message);
    setStatus("");
  } finally {
    state.busy = false; state.abort = null; bar.hidden = true; updateButtons();
  }
}
$("suggest-btn").addEventListener("click", suggestMask);
$("refine-btn").addEventListener("click", () => run("refine"));
$("align-btn").addEventListener("click", () => run("align"));
$("cancel-btn").addEventListener("click", async () => {
  if (state.abort) state.abort.abort();
  if (state.job) { try { await fetch("/api/jobs/" + state.job, { method: "DELETE" }); } catch (e) {} }
});
$("compare-range").addEventListener("input", () => {
  const v = $("compare-range").value;
  $("compare-after").style.clipPath = "inset(0 0 0 " + v + "%)";
  $("compare-line").style.left = v + "%";
  $("label-before").style.opacity = v < 12 ? 0 : 1;
  $("label-after").style.opacity = v > 88 ? 0 : 1;
});
window.addEventListener("unhandledrejection", (ev) => showError(String(ev.reason && ev.reason.message || ev.reason)));

(async () => {
  try {
    const r = await fetch("/api/health", { cache: "no-store" });
    const h = await r.json();
    if (!r.ok) { $("model-note").textContent = "model not loaded: " + (h.error || r.status); return; }
    const l = h.limits;
    if (l.max_references) { state.maxReferences = l.max_references; updateButtons(); }
    $("model-note").innerHTML = "";
    $("model-note").textContent = "model: " + h.model + " | limits: " + (l.max_upload_bytes / 1048576).toFixed(0) +
      " MiB per request, " + l.max_image_side + " px per side, " + l.job_timeout_s + " s per job";
    if (h.random_weights) {
      const w = document.createElement("span"); w.className = "warn";
      w.textContent = " | RANDOM weights: results are stand-ins"; $("model-note").appendChild(w);
    }
  } catch (e) { showError("cannot reach the server: " + e.message); }
})();
updateButtons();
</script>
</body>
</html>
"""
