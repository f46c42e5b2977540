// The Ask panel: an uploaded or sample image, a question and the loop's settings go to
// POST /answer; the served boxes then go to POST /v1/viewer/crops for the side-by-side crops.

import { api, needsKey } from "./api.js";
import { byId, clear, el, readDataUrl, show } from "./dom.js";
import { guarded, hideError, showError, showKeyNeeded } from "./errors.js";
import {
  cropsNote,
  renderAnswerCrops,
  renderCrops,
  renderTrace,
  servedZooms,
  uniqueBoxes,
} from "./trace.js";

const MAX_CROP_BOXES = 16; // the crops endpoint's limit (proto/magnifier.py)
const MAX_ROUNDS = 8; // AnswerRequest.max_rounds (proto/policy.py)
const SAMPLE_LABEL_CHARS = 70;

const state = {
  image: null, // {url, dataUrl, name}: the image to ask about
  imageUrl: null, // its object URL, revoked when replaced
  samples: new Map(),
  sampleFields: null, // {question, options} as a picked sample filled them in
  run: 0, // bumps on each Ask, so a slow earlier answer never overwrites a later one
  last: null, // {trace, entries, crops, cropsError, upscale}: the latest answer
  visible: () => true, // whether the Ask mode is on screen
};

function setStatus(text) {
  byId("ask-status").textContent = text;
}

// ---- choosing the image --------------------------------------------------------------
async function useImage(blob, name) {
  const dataUrl = await readDataUrl(blob);
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(blob);
  state.image = { url: state.imageUrl, dataUrl, name };
  const preview = byId("image-preview");
  preview.src = state.image.url;
  preview.alt = `preview of ${name}`;
  show(preview, true);
  byId("image-name").textContent = name;
}

/** Clears the question and options a sample filled in, unless the user has edited them. */
function forgetSample() {
  const filled = state.sampleFields;
  state.sampleFields = null;
  byId("sample-select").value = "";
  byId("sample-gold").textContent = "";
  if (!filled) return;
  for (const [id, value] of Object.entries(filled)) {
    if (byId(id).value === value) byId(id).value = "";
  }
}

async function onFileChosen() {
  const file = byId("image-file").files[0];
  if (!file) return;
  forgetSample();
  await useImage(file, file.name);
}

function sampleOption(sample) {
  const label = `${sample.id}: ${sample.question}`;
  const text =
    label.length > SAMPLE_LABEL_CHARS ? `${label.slice(0, SAMPLE_LABEL_CHARS - 1)}…` : label;
  return el("option", { value: sample.id, text });
}

/** Lists the policy's samples in the picker; waits for the key when one is needed. */
export async function loadSamples() {
  const note = byId("sample-note");
  if (needsKey()) {
    note.textContent = "Enter the API key to list the samples.";
    return;
  }
  const list = await api("v1/viewer/samples");
  state.samples = new Map(list.data.map((s) => [s.id, s]));
  const select = clear(byId("sample-select"));
  select.append(el("option", { value: "", text: "— pick a sample —" }));
  select.append(...list.data.map(sampleOption));
  note.textContent = `${list.data.length} samples (${list.source})`;
}

async function onSampleChosen() {
  const sample = state.samples.get(byId("sample-select").value);
  if (!sample) return;
  byId("image-file").value = "";
  setStatus(`Loading ${sample.id}…`);
  try {
    const path = `v1/viewer/samples/${encodeURIComponent(sample.id)}/image`;
    const blob = await api(path, { as: "blob" });
    await useImage(blob, `${sample.id} (${sample.width}×${sample.height})`);
  } finally {
    setStatus("");
  }
  state.sampleFields = { question: sample.question, options: (sample.options || []).join("\n") };
  for (const [id, value] of Object.entries(state.sampleFields)) byId(id).value = value;
  byId("sample-gold").textContent = `gold answer: ${sample.answer}`;
}

// ---- the request ---------------------------------------------------------------------
function readOptions() {
  const lines = byId("options")
    .value.split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  if (lines.length === 1) throw new Error("Give at least two options, one per line, or none.");
  return lines.length ? lines : null;
}

function askBody() {
  if (!state.image) throw new Error("Pick an image first: upload a file or choose a sample.");
  const question = byId("question").value.trim();
  if (!question) throw new Error("Type a question about the image.");
  const maxRounds = Number(byId("max-rounds").value);
  if (!Number.isInteger(maxRounds) || maxRounds < 1 || maxRounds > MAX_ROUNDS) {
    throw new Error(`Max rounds must be a whole number from 1 to ${MAX_ROUNDS}.`);
  }
  const body = {
    image: { b64: state.image.dataUrl },
    question,
    zoom: byId("zoom").value,
    upscale: byId("upscale").value,
    max_rounds: maxRounds,
    return_crops: "b64",
  };
  const options = readOptions();
  if (options) body.options = options;
  return body;
}

function answerTrace(response, body) {
  const usage = response.usage || {};
  const tokens = `${usage.prompt_tokens ?? 0} prompt + ${usage.completion_tokens ?? 0} completion`;
  return {
    imageUrl: state.image.url,
    question: body.question,
    options: body.options,
    answer: response.answer,
    rawAnswer: response.raw_answer,
    rounds: response.rounds || [],
    timing: response.timing_ms || {},
    meta: [
      ["Model", response.model],
      ["Tokens", tokens],
      ["Settings", `zoom ${body.zoom} · upscale ${body.upscale} · max ${body.max_rounds} rounds`],
    ],
    notices: [["warn", response.zoom_skipped || ""]],
  };
}

// ---- the crops -----------------------------------------------------------------------
function comparisonNote(last) {
  const t = last.crops.timing_ms;
  const parts = ["sr", "bicubic", "crop"].filter((m) => m in t);
  const timing = parts.map((m) => `${m} ${Math.round(t[m])} ms`).join(", ");
  const more =
    last.entries.length > MAX_CROP_BOXES
      ? ` Only the first ${MAX_CROP_BOXES} boxes are compared.`
      : "";
  return `Magnifier time for this comparison: ${timing}.${more}`;
}

function renderAskCrops(last) {
  const node = byId("crops");
  if (!last.entries.length) {
    cropsNote("No region was magnified in this answer.");
  } else if (last.crops) {
    renderCrops(node, last.entries, last.crops, last.upscale);
    cropsNote(comparisonNote(last));
  } else {
    renderAnswerCrops(node, last.entries, last.upscale);
    cropsNote(
      last.cropsError
        ? `The comparison failed (${last.cropsError}); showing the crops the model saw.`
        : "Showing the crops the model saw.",
    );
  }
}

async function compareCrops(last) {
  const boxes = last.entries.slice(0, MAX_CROP_BOXES).map((e) => e.box);
  const body = { image: { b64: state.image.dataUrl }, boxes };
  try {
    last.crops = await api("v1/viewer/crops", { method: "POST", body });
  } catch (err) {
    last.cropsError = err.message;
    showError(err);
  }
}

/** Shows the latest answer again (after the Results mode had the main area). */
export async function showLastAnswer() {
  if (!state.last) return false;
  await renderTrace(state.last.trace);
  renderAskCrops(state.last);
  byId("trace").dataset.state = "done";
  return true;
}

async function ask(event) {
  event.preventDefault();
  hideError();
  if (needsKey()) return showKeyNeeded();
  const body = askBody();
  const run = ++state.run;
  const button = byId("ask");
  byId("trace").dataset.state = "busy";
  button.disabled = true;
  setStatus("Asking the policy…");
  try {
    const response = await api("answer", { method: "POST", body });
    if (run !== state.run) return;
    const trace = answerTrace(response, body);
    const last = { trace, entries: uniqueBoxes(servedZooms(trace.rounds)), upscale: body.upscale };
    if (byId("compare").checked && last.entries.length) {
      setStatus("Magnifying the boxes with every method…");
      await compareCrops(last);
    }
    if (run !== state.run) return;
    state.last = last;
    if (state.visible()) await showLastAnswer();
    setStatus(`Answered in ${Math.round(response.timing_ms?.total ?? 0)} ms.`);
  } catch (err) {
    if (run === state.run) {
      byId("trace").dataset.state = "error";
      setStatus("");
    }
    throw err;
  } finally {
    if (run === state.run) button.disabled = false;
  }
}

/** Wires the panel; `visible` tells whether the Ask mode is the one on screen. */
export function initAsk(visible) {
  state.visible = visible;
  byId("image-file").addEventListener("change", guarded(onFileChosen));
  byId("sample-select").addEventListener("change", guarded(onSampleChosen));
  byId("ask-form").addEventListener("submit", guarded(ask));
}
