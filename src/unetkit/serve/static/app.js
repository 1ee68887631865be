// The page of `unetkit serve`: pick or drop an image, show it with the predicted classes over it.
// Everything comes from this server (/info, /predict); nothing is loaded from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ids: null, width: 0, height: 0, classes: [], hidden: new Set(), mask: null, name: "", info: [] };
const KEY = "unetkit-api-key";

// Every API call goes through here: it adds the API key (asked for once, kept for this tab's session).
async function api(url, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const headers = new Headers(options.headers || {});
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const res = await fetch(url, { ...options, headers });
  if (res.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey(key ? "That key was refused; enter the server's API key." : "This server needs an API key.");
    throw new Error("the server needs an API key (401)");
  }
  return res;
}

function askForKey(text) {
  $("key-message").textContent = text;
  $("keyform").hidden = false;
  $("key").focus();
}

function setState(name) { document.body.dataset.state = name; }
function setStatus(text) { $("status").textContent = text; }
function showError(text) {
  clearResult();
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  setStatus("");
  setState("error");
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }

// A refused or failed upload must not leave the previous image's result on screen as if it were its own.
function clearResult() {
  state.ids = null;
  state.mask = null;
  $("viewer").hidden = true;
  for (const id of ["image", "overlay"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  $("download-mask").disabled = true;
  $("download-overlay").disabled = true;
  if (state.info.length) renderLegend(state.info.map((k) => ({ ...k, fraction: null })));
}

function stem(name) { return (name.replace(/\.[^.]*$/, "") || "image").replace(/[^\w.-]+/g, "_"); }

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function downloadMask() {
  if (!state.mask) return;
  download(new Blob([bytesOf(state.mask)], { type: "image/png" }), `${stem(state.name)}_mask.png`);
}

function downloadOverlay() {
  if (!state.ids) return;
  // what the page shows: the image with the visible classes blended at the chosen opacity
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage($("image"), 0, 0);
  ctx.globalAlpha = $("opacity").value / 100;
  ctx.drawImage($("overlay"), 0, 0);
  canvas.toBlob((blob) => { if (blob) download(blob, `${stem(state.name)}_overlay.png`); }, "image/png");
}

async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return res.statusText || "the request failed";
}

function percent(fraction) {
  if (fraction === null || fraction === undefined) return "";
  const p = fraction * 100;
  return (p > 0 && p < 0.1 ? "<0.1" : p.toFixed(1)) + " %";
}

function renderLegend(classes) {
  const list = $("legend");
  list.replaceChildren();
  for (const c of classes) {
    const item = document.createElement("li");
    item.dataset.classId = String(c.id);
    item.title = "click to show or hide this class";
    if (c.fraction === 0) item.classList.add("absent");
    if (state.hidden.has(c.id)) item.classList.add("off");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.colour.join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = percent(c.fraction);
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.min(100, (c.fraction || 0) * 100)}%`;
    bar.append(fill);
    item.append(swatch, name, share, bar);
    item.addEventListener("click", () => {
      if (state.hidden.has(c.id)) state.hidden.delete(c.id); else state.hidden.add(c.id);
      item.classList.toggle("off");
      paintOverlay();
    });
    list.append(item);
  }
}

function paintOverlay() {
  const { ids, width, height, classes } = state;
  if (!ids) return;
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(width, height);
  const table = new Uint8ClampedArray(256 * 4);
  for (const c of classes) {
    if (c.id > 255) continue;
    table.set([c.colour[0], c.colour[1], c.colour[2], state.hidden.has(c.id) ? 0 : 255], c.id * 4);
  }
  const px = out.data;
  for (let p = 0; p < px.length; p += 4) {
    const k = ids[p] * 4;
    px[p] = table[k]; px[p + 1] = table[k + 1]; px[p + 2] = table[k + 2]; px[p + 3] = table[k + 3];
  }
  ctx.putImageData(out, 0, 0);
}

function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

async function decodeMask(base64, width, height) {
  const blob = new Blob([bytesOf(base64)], { type: "image/png" });
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, width, height).data; // red channel = class id
}

async function picture(file) {
  try {
    return await createImageBitmap(file);
  } catch (_) {
    // The browser cannot show this format (e.g. TIFF): ask the server for its decoded image.
    const form = new FormData();
    form.append("file", file, file.name);
    const res = await api("/predict?format=overlay&alpha=0", { method: "POST", body: form });
    if (!res.ok) throw new Error(await errorText(res));
    return await createImageBitmap(await res.blob());
  }
}

async function segment(file) {
  clearError();
  setState("busy");
  setStatus(`Segmenting ${file.name}…`);
  const started = performance.now();
  const form = new FormData();
  form.append("file", file, file.name);
  let res;
  try {
    res = await api("/predict?format=json", { method: "POST", body: form });
  } catch (err) {
    showError(`Could not segment ${file.name}: ${err.message}`);
    return;
  }
  if (!res.ok) {
    showError(`The server refused ${file.name} (${res.status}): ${await errorText(res)}`);
    return;
  }
  try {
    const data = await res.json();
    const image = await picture(file);
    const base = $("image");
    base.width = data.width;
    base.height = data.height;
    base.getContext("2d").drawImage(image, 0, 0, data.width, data.height);
    state.width = data.width;
    state.height = data.height;
    state.classes = data.classes;
    state.name = file.name;
    state.mask = data.mask_png_base64;
    if (data.n_classes > 256) {
      state.ids = null;
      $("overlay").getContext("2d").clearRect(0, 0, data.width, data.height);
      setStatus("This model has more than 256 classes: the page shows shares only (use the API for masks).");
    } else {
      state.ids = await decodeMask(data.mask_png_base64, data.width, data.height);
      paintOverlay();
    }
    // small images are enlarged (pixelated) to at least 560 px; the column's width caps every image
    $("stage").style.width = `${Math.max(560, data.width)}px`;
    renderLegend(data.classes);
    $("viewer").hidden = false;
    $("download-mask").disabled = false;
    $("download-overlay").disabled = !state.ids;
    const ms = Math.round(performance.now() - started);
    if (data.n_classes <= 256) setStatus(`${file.name}: ${data.width} × ${data.height} px, ${ms} ms`);
    setState("done");
  } catch (err) {
    showError(`Could not show the result: ${err.message}`);
  }
}

function pick(files) {
  if (!files || files.length === 0) return;
  segment(files[0]);
}

async function loadInfo() {
  try {
    const res = await api("/info");
    if (!res.ok) throw new Error(`${res.status}: ${await errorText(res)}`);
    const info = await res.json();
    const [h, w, c] = info.input_size;
    $("model").textContent = `${info.model.name} (${info.model.backend}, ${info.model.precision || "fp32"}) · ` +
      `input ${h} × ${w} × ${c} · ${info.n_classes} classes · ${info.model.source}`;
    state.classes = info.classes;
    state.info = info.classes;
    renderLegend(info.classes.map((k) => ({ ...k, fraction: null })));
    $("keyform").hidden = true;
    setState("ready");
  } catch (err) {
    if ($("keyform").hidden) showError(`Could not load the model description: ${err.message}`);
    else setState("key");
  }
}

async function start() {
  const zone = $("dropzone");
  $("download-mask").addEventListener("click", downloadMask);
  $("download-overlay").addEventListener("click", downloadOverlay);
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    $("keyform").hidden = true;
    clearError();
    loadInfo();
  });
  $("file").addEventListener("change", (e) => { pick(e.target.files); e.target.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); pick(e.dataTransfer.files); });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => { e.preventDefault(); pick(e.dataTransfer.files); });
  const slider = $("opacity");
  const showOpacity = () => {
    $("overlay").style.opacity = String(slider.value / 100);
    $("opacity-value").textContent = `${slider.value} %`;
  };
  slider.addEventListener("input", showOpacity);
  showOpacity();
  await loadInfo();
}

start();
