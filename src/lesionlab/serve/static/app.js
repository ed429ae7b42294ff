// The page's only script: send the chosen image to the API and draw the answer.
// Everything shown comes from the JSON response and is inserted as text, never as HTML.
"use strict";

const state = { canExplain: false, maxUploadMb: 10, metadataFields: [], file: null, latest: 0 };
const PATIENT_FIELDS = ["age", "sex", "site"];

const el = (id) => document.getElementById(id);

function setStatus(message, isError = false) {
  const status = el("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

async function loadHealth() {
  try {
    const response = await fetch("/health");
    const health = await response.json();
    state.canExplain = health.can_explain;
    state.maxUploadMb = health.max_upload_mb;
    const calibration = !health.calibrated ? "uncalibrated"
      : health.temperature === null ? "calibrated" : `temperature ${health.temperature.toFixed(3)}`;
    el("model-id").textContent = `${health.model_id} (${health.arch}, ${health.backend}, ${calibration})`;
    el("model-id").title = health.calibration;
    el("drop-hint").textContent = `JPEG, PNG, BMP, TIFF or WebP, up to ${health.max_upload_mb} MB`;
    el("rule").textContent = health.malignant_rule;
    setUpPatientFields(health.metadata_fields, health.metadata_sites);
  } catch (error) {
    el("model-id").textContent = "unavailable";
    setStatus(`The service does not answer: ${error}`, true);
  }
}

// Only the fields the model reads are shown; the site choices are the shared vocabulary /health lists.
function setUpPatientFields(fields, sites) {
  state.metadataFields = fields;
  if (fields.length === 0) return;
  const site = el("site");
  for (const name of sites) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    site.append(option);
  }
  for (const field of fields) {
    el(`${field}-field`).hidden = false;
    el(field).addEventListener("change", () => {
      if (state.file) classify(state.file);
    });
  }
  el("patient-fields").textContent = fields.join(", ");
  el("patient").hidden = false;
}

function renderBars(classes) {
  const bars = el("bars");
  bars.replaceChildren();
  for (const entry of classes) {
    const percent = (100 * entry.probability).toFixed(1);
    const item = document.createElement("li");
    item.className = entry.malignant ? "bar malignant" : "bar benign";

    const name = document.createElement("span");
    name.className = "bar-name";
    name.textContent = `${entry.name} (${entry.code})`;

    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${percent}%`;
    track.append(fill);

    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${percent}%`;

    item.append(name, track, value);
    bars.append(item);
  }
}

function renderResult(result) {
  const top = result.classes[0];
  el("top-class").textContent = `${top.name} (${top.code})`;
  el("top-probability").textContent = `${(100 * result.top_probability).toFixed(1)}%`;
  const flag = el("malignancy");
  const malignantPercent = (100 * result.malignant_probability).toFixed(1);
  flag.textContent = `${result.malignant ? "Flagged malignant" : "Not flagged"}: `
    + `malignant probability ${malignantPercent}%`;
  flag.className = result.malignant ? "malignancy malignant" : "malignancy benign";
  const origin = result.malignant_threshold_fitted
    ? "chosen on validation data"
    : "a fallback: no threshold was fitted on validation data for this model";
  el("malignancy-rule").textContent = `Malignant probability is the sum of akiec, bcc and mel; the flag `
    + `threshold is ${(100 * result.malignant_threshold).toFixed(1)}% (${origin}).`;
  const metadata = result.metadata;
  const note = el("metadata-note");
  note.hidden = metadata.reads.length === 0 && metadata.ignored.length === 0;
  note.textContent = `Patient fields: ${metadata.note}.`;
  renderBars(result.classes);

  const overlayFigure = el("overlay-figure");
  if (result.overlay_png_base64) {
    el("overlay").src = `data:image/png;base64,${result.overlay_png_base64}`;
    const explained = result.classes.find((entry) => entry.code === result.explained_class);
    el("overlay-caption").textContent = `Grad-CAM for ${explained.name} (${explained.code}), probability `
      + `${(100 * result.explained_probability).toFixed(1)}%: the colour bar runs from blue (0, least) `
      + `to red (1, most).`;
    overlayFigure.hidden = false;
  } else {
    overlayFigure.hidden = true;
  }
  el("result").hidden = false;
}

async function classify(file) {
  if (file.size > state.maxUploadMb * 1e6) {
    setStatus(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${state.maxUploadMb} MB.`, true);
    return;
  }
  state.file = file;
  const request = ++state.latest;  // a field changed while this ran makes its answer stale
  el("preview").src = URL.createObjectURL(file);
  setStatus(`Analysing ${file.name}…`);
  const body = new FormData();
  body.append("file", file);
  for (const field of PATIENT_FIELDS) {
    const value = state.metadataFields.includes(field) ? el(field).value.trim() : "";
    if (value !== "") body.append(field, value);
  }
  const route = state.canExplain ? "/explain" : "/predict";
  try {
    const response = await fetch(route, { method: "POST", body });
    const payload = await response.json();
    if (request !== state.latest) return;
    if (!response.ok) {
      const detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
      setStatus(`Not analysed: ${detail}`, true);
      el("result").hidden = true;
      return;
    }
    renderResult(payload);
    setStatus(`Result for ${file.name}`);
  } catch (error) {
    setStatus(`The request failed: ${error}`, true);
  }
}

function setUpDropZone() {
  const zone = el("drop-zone");
  const input = el("file-input");
  input.addEventListener("change", () => {
    if (input.files.length > 0) classify(input.files[0]);
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer.files;
    if (files.length > 0) classify(files[0]);
  });
}

setUpDropZone();
loadHealth();
