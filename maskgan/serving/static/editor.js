// The editor page: wires the controls to the API (parse, edit, style copy) and to the paintable mask.
// API paths are relative, so the page also works when the app is served under a route prefix.

import { ERASER, MaskCanvas } from "./mask_canvas.js";

const $ = (id) => document.getElementById(id);

const state = {
  classes: [], // [{id, name, color: [r, g, b]}] in dataset order
  classId: null, // class being painted
  eraser: false,
  photo: null, // Blob of the photo being edited (uploaded file or sample image)
  reference: null, // {image: Blob, mask: Blob | null} for style copy
  resultUrl: null,
  busy: false,
  mask: null, // MaskCanvas
};

// ------------------------------------------------------------------------------------ API

class ApiError extends Error {}

/** The message of a 4xx/5xx answer: FastAPI's {"detail": "..."} (or its list of validation errors). */
async function errorMessage(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON: fall back to the status line
  }
  if (Array.isArray(detail)) {
    detail = detail.map((item) => `${(item.loc || []).slice(1).join(".")}: ${item.msg}`).join("; ");
  }
  return `${detail || response.statusText || "request failed"} (HTTP ${response.status})`;
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(`cannot reach the server: ${error.message}`);
  }
  if (!response.ok) throw new ApiError(await errorMessage(response));
  return response;
}

const getJson = async (path) => (await request(path)).json();
const getBlob = async (path) => (await request(path)).blob();

function postForm(path, fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value) form.append(name, value, `${name}.png`);
  }
  return request(path, { method: "POST", body: form }).then((response) => response.blob());
}

// ------------------------------------------------------------------------------------ status

function showError(message) {
  $("error-message").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error-message").textContent = "";
  $("error").hidden = true;
}

function setStatus(message) {
  $("status").textContent = message;
}

/** Run one request with the progress bar on and every control disabled; errors go to #error. */
async function busy(message, work) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.busy = "true";
  clearError();
  setStatus(message);
  $("progress").hidden = false;
  refreshControls();
  const started = performance.now();
  try {
    const done = await work();
    setStatus(`${done || "Done"} in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } catch (error) {
    setStatus("Failed.");
    showError(error instanceof ApiError ? error.message : `Error: ${error.message}`);
    if (!(error instanceof ApiError)) console.error(error);
  } finally {
    state.busy = false;
    document.body.dataset.busy = "false";
    $("progress").hidden = true;
    refreshControls();
  }
}

function refreshControls() {
  const mask = state.mask;
  const idle = !state.busy;
  for (const element of $("controls").querySelectorAll("input, select, button")) {
    element.disabled = !idle;
  }
  $("undo").disabled = !idle || !mask.canUndo;
  $("redo").disabled = !idle || !mask.canRedo;
  $("reset-mask").disabled = !idle || !mask.edited;
  $("apply").disabled = !idle || !mask.loaded || !state.photo;
  $("style-copy").disabled = !idle || !mask.loaded || !state.reference;
  const download = $("download");
  const canDownload = idle && state.resultUrl !== null;
  download.setAttribute("aria-disabled", String(!canDownload));
  if (canDownload) download.href = state.resultUrl;
  else download.removeAttribute("href");
}

// ------------------------------------------------------------------------------------ images

/** Decode a PNG/JPEG Blob without colour management (mask colours must come through exactly). */
async function decode(blob) {
  try {
    return await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new ApiError("the browser cannot decode this image");
  }
}

async function pixelsOf(blob) {
  const bitmap = await decode(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingEnabled = false;
  context.drawImage(bitmap, 0, 0);
  return { width: bitmap.width, height: bitmap.height, data: context.getImageData(0, 0, bitmap.width, bitmap.height).data };
}

function showImage(img, blob) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
}

function setResult(blob, caption) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const result = $("result");
  result.src = state.resultUrl;
  result.hidden = false;
  $("result-caption").textContent = caption;
}

function clearResult() {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = null;
  $("result").hidden = true;
  $("result").removeAttribute("src");
  $("result-caption").textContent = "";
}

/** Show a photo and its mask (colour-coded PNG) and make the mask paintable. */
async function openPhoto(photoBlob, maskBlob) {
  const mask = await pixelsOf(maskBlob);
  state.photo = photoBlob;
  showImage($("original"), photoBlob);
  showImage($("mask-photo"), photoBlob);
  $("mask-canvas").hidden = false;
  for (const frame of document.querySelectorAll(".frame")) frame.style.aspectRatio = `${mask.width} / ${mask.height}`;
  clearResult();
  const brush = $("brush-size");
  brush.max = String(Math.max(8, Math.round(mask.width / 4)));
  brush.value = String(Math.max(1, Math.round(mask.width / 32)));
  $("brush-size-value").textContent = brush.value;
  state.mask.load(state.mask.labelsFromPixels(mask.data), mask.width, mask.height);
  return `Mask of ${mask.width} × ${mask.height} px loaded`;
}

// ------------------------------------------------------------------------------------ actions

function loadUpload(file) {
  return busy("Parsing the photo…", async () => {
    const maskBlob = await postForm("api/parse", { image: file });
    return openPhoto(file, maskBlob);
  });
}

function loadSample(id) {
  return busy(`Loading sample ${id}…`, async () => {
    const path = `api/samples/${encodeURIComponent(id)}`;
    const [image, mask] = await Promise.all([getBlob(`${path}/image`), getBlob(`${path}/mask`)]);
    return openPhoto(image, mask);
  });
}

function applyEdit() {
  return busy("Editing…", async () => {
    const [mask, edited] = await Promise.all([state.mask.toBlob(state.mask.original), state.mask.toBlob()]);
    const result = await postForm("api/edit", { image: state.photo, mask, edited_mask: edited });
    setResult(result, "(edit)");
    return "Edited";
  });
}

function loadReference(imageBlob, maskBlob) {
  state.reference = { image: imageBlob, mask: maskBlob };
  showImage($("reference-preview"), imageBlob);
  refreshControls();
}

function styleCopy() {
  return busy("Copying the style…", async () => {
    const target = await state.mask.toBlob();
    const result = await postForm("api/style-copy", {
      target_mask: target,
      reference_image: state.reference.image,
      reference_mask: state.reference.mask,
    });
    setResult(result, "(style copy)");
    return "Style copied";
  });
}

// ------------------------------------------------------------------------------------ painting

// Readable names for the dataset's terse ones (the dataset name stays in the tooltip).
const READABLE = {
  eye_g: "glasses", l_eye: "left eye", r_eye: "right eye", l_brow: "left brow", r_brow: "right brow",
  l_ear: "left ear", r_ear: "right ear", u_lip: "upper lip", l_lip: "lower lip", ear_r: "earring",
  neck_l: "necklace",
};

function selectClass(id) {
  state.classId = id;
  state.eraser = false;
  $("eraser").setAttribute("aria-pressed", "false");
  for (const button of $("palette").children) {
    button.setAttribute("aria-checked", String(Number(button.dataset.classId) === id));
  }
}

function buildPalette(classes) {
  const palette = $("palette");
  palette.replaceChildren();
  for (const { id, name, color } of classes) {
    const button = document.createElement("button");
    button.type = "button";
    button.id = `class-${id}`;
    button.dataset.classId = String(id);
    button.setAttribute("role", "radio");
    button.title = `class ${id}: ${name}`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${color.join(",")})`;
    button.append(swatch, document.createTextNode(READABLE[name] || name));
    button.addEventListener("click", () => selectClass(id));
    palette.append(button);
  }
}

/** Pointer position -> mask pixel coordinates (floats). */
function maskPoint(event) {
  const canvas = $("mask-canvas");
  const rect = canvas.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * canvas.width) / rect.width,
    ((event.clientY - rect.top) * canvas.height) / rect.height,
  ];
}

function moveCursor(event) {
  const canvas = $("mask-canvas");
  const cursor = $("brush-cursor");
  const rect = canvas.getBoundingClientRect();
  const frame = $("mask-frame").getBoundingClientRect();
  const diameter = (Number($("brush-size").value) * rect.width) / canvas.width;
  cursor.style.width = cursor.style.height = `${diameter}px`;
  cursor.style.left = `${event.clientX - frame.left - diameter / 2}px`;
  cursor.style.top = `${event.clientY - frame.top - diameter / 2}px`;
  cursor.hidden = false;
}

function wirePainting() {
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (state.busy || event.button !== 0 || !state.mask.loaded) return;
    canvas.setPointerCapture(event.pointerId);
    const classId = state.eraser ? ERASER : state.classId;
    state.mask.beginStroke(...maskPoint(event), classId, Number($("brush-size").value));
  });
  canvas.addEventListener("pointermove", (event) => {
    moveCursor(event);
    if (state.mask.stroke) state.mask.strokeTo(...maskPoint(event));
  });
  const end = () => state.mask.endStroke();
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", () => ($("brush-cursor").hidden = true));
}

function wireKeys() {
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || state.busy) return;
    const key = event.key.toLowerCase();
    if (key === "z" && !event.shiftKey) state.mask.undo();
    else if (key === "y" || (key === "z" && event.shiftKey)) state.mask.redo();
    else return;
    event.preventDefault();
  });
}

// ------------------------------------------------------------------------------------ start

function wireControls() {
  $("photo-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) loadUpload(file);
    event.target.value = ""; // the same file can be chosen again
  });
  $("sample-select").addEventListener("change", (event) => {
    if (event.target.value) loadSample(event.target.value);
  });
  $("reference-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) loadReference(file, null); // the server parses a reference sent without a mask
    event.target.value = "";
  });
  $("reference-select").addEventListener("change", (event) => {
    const id = event.target.value;
    if (!id) return;
    busy(`Loading reference ${id}…`, async () => {
      const path = `api/samples/${encodeURIComponent(id)}`;
      const [image, mask] = await Promise.all([getBlob(`${path}/image`), getBlob(`${path}/mask`)]);
      loadReference(image, mask);
      return "Reference loaded";
    });
  });
  $("brush-size").addEventListener("input", (event) => ($("brush-size-value").textContent = event.target.value));
  $("opacity").addEventListener("input", (event) => {
    $("opacity-value").textContent = event.target.value;
    $("mask-canvas").style.opacity = String(Number(event.target.value) / 100);
  });
  $("eraser").addEventListener("click", () => {
    state.eraser = !state.eraser;
    $("eraser").setAttribute("aria-pressed", String(state.eraser));
  });
  $("undo").addEventListener("click", () => state.mask.undo());
  $("redo").addEventListener("click", () => state.mask.redo());
  $("reset-mask").addEventListener("click", () => state.mask.reset());
  $("apply").addEventListener("click", applyEdit);
  $("style-copy").addEventListener("click", styleCopy);
  $("error-close").addEventListener("click", clearError);
  $("download").addEventListener("click", (event) => {
    if ($("download").getAttribute("aria-disabled") === "true") event.preventDefault();
  });
}

function fillSamples(ids) {
  for (const select of [$("sample-select"), $("reference-select")]) {
    for (const id of ids) select.append(new Option(String(id), String(id)));
    if (!ids.length) select.append(new Option("(no samples on this server)", "", false, false));
  }
}

async function start() {
  state.mask = new MaskCanvas($("mask-canvas"), []);
  state.mask.onchange = refreshControls;
  $("mask-canvas").style.opacity = String(Number($("opacity").value) / 100);
  wireControls();
  wirePainting();
  wireKeys();
  refreshControls();
  await busy("Connecting…", async () => {
    const [health, classes, samples] = await Promise.all([
      getJson("healthz"),
      getJson("api/classes"),
      getJson("api/samples"),
    ]);
    state.classes = classes;
    state.mask.palette = classes.map((item) => item.color);
    buildPalette(classes);
    selectClass(classes.length > 1 ? 1 : 0);
    fillSamples(samples);
    $("model-info").textContent = `model ${health.model} at ${health.resolution} px`;
    return "Ready: upload a photo or choose a sample";
  });
  document.body.dataset.ready = "true";
}

start();
