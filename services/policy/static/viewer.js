// The trace viewer's entry point: the API key field and the two modes, Ask (ask.js: a live
// /answer) and Results (browse.js: an eval results file). Rendering lives in trace.js.

import { authRequired, getKey, keyFieldWanted, setKey } from "./api.js";
import { initAsk, loadSamples, showLastAnswer } from "./ask.js";
import { initBrowse, showLastRecord } from "./browse.js";
import { byId, show } from "./dom.js";
import { guarded, hideError } from "./errors.js";
import { resetTrace } from "./trace.js";

const PLACEHOLDERS = {
  ask: "Upload an image or pick a sample, type a question and press Ask: the trace appears here.",
  results: "Open an eval results.jsonl (or its folder, to see the thumbnails), then pick a record.",
};

let mode = "ask";

// ---- the API key ---------------------------------------------------------------------
function renderKeyStatus() {
  const key = getKey();
  const status = byId("key-status");
  if (key) status.textContent = "key set for this tab";
  else if (authRequired()) status.textContent = "this policy needs a key";
  else status.textContent = "no key needed";
  status.className = key || !authRequired() ? "ok" : "warn";
  const wanted = keyFieldWanted(authRequired(), key);
  for (const id of ["api-key-label", "api-key", "key-save", "key-clear"]) show(byId(id), wanted);
}

async function saveKey(event) {
  event.preventDefault();
  const input = byId("api-key");
  setKey(input.value.trim());
  input.value = "";
  renderKeyStatus();
  hideError();
  await loadSamples(); // also tells the user at once when the key is wrong
}

function forgetKey() {
  setKey("");
  renderKeyStatus();
}

// ---- modes ---------------------------------------------------------------------------
async function setMode(next) {
  mode = next;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  }
  show(byId("ask-panel"), mode === "ask");
  show(byId("results-panel"), mode === "results");
  hideError();
  const shown = mode === "ask" ? await showLastAnswer() : await showLastRecord();
  if (!shown) resetTrace(PLACEHOLDERS[mode]);
}

async function start() {
  byId("key-form").addEventListener("submit", guarded(saveKey));
  byId("key-clear").addEventListener("click", forgetKey);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener(
      "click",
      guarded(() => setMode(tab.dataset.mode)),
    );
  }
  initAsk(() => mode === "ask");
  initBrowse();
  renderKeyStatus();
  resetTrace(PLACEHOLDERS.ask);
  await loadSamples();
}

guarded(start)();
