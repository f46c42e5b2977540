// The Results panel: an eval results.jsonl (and its thumbnails) picked from disk, listed with
// filters for right/wrong and per arm; a record opens as a trace. Nothing is uploaded.

import { byId, clear, el } from "./dom.js";
import { guarded, hideError } from "./errors.js";
import {
  armsOf,
  filterRecords,
  indexImages,
  parseResults,
  pickResultsFile,
  recordTrace,
  thumbFile,
} from "./results.js";
import { cropsNote, renderTrace, resetTrace } from "./trace.js";

const MAX_LISTED = 500; // records rendered in the list at once; the filters narrow the rest

const state = {
  records: [],
  index: null, // the picked images, by relative path and by name
  thumbUrl: null, // the object URL on screen, revoked when replaced
  last: null, // the record on screen
};

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function fillArms(records) {
  const select = clear(byId("filter-arm"));
  select.append(el("option", { value: "", text: "every arm" }));
  select.append(...armsOf(records).map((name) => el("option", { value: name, text: name })));
}

async function onPicked(event) {
  const files = [...event.target.files];
  if (!files.length) return;
  const resultsFile = pickResultsFile(files);
  if (!resultsFile) {
    throw new Error("None of the picked files is a .jsonl: pick results.jsonl or its folder.");
  }
  const { records, skipped } = parseResults(await resultsFile.text());
  Object.assign(state, { records, index: indexImages(files, resultsFile), last: null });
  fillArms(records);
  const parts = [
    `${plural(records.length, "record")} from ${resultsFile.name}`,
    plural(state.index.byPath.size, "image"),
  ];
  if (skipped) parts.push(`${plural(skipped, "malformed line")} skipped`);
  const summary = byId("results-summary");
  summary.textContent = parts.join(" · ");
  summary.dataset.skipped = String(skipped);
  event.target.value = ""; // picking the same file again reloads it
  renderList();
  resetTrace(records.length ? "Pick a record from the list." : "The file holds no records.");
}

function filters() {
  return {
    outcome: byId("filter-outcome").value,
    arm: byId("filter-arm").value,
    text: byId("filter-text").value,
  };
}

function recordItem(record) {
  const outcome = record.correct ? "right" : "wrong";
  const active = state.last?.key === record.key ? " active" : "";
  return el(
    "li",
    {},
    el(
      "button",
      {
        type: "button",
        class: `record ${outcome}${active}`,
        title: outcome,
        dataset: { key: record.key },
        onclick: guarded(() => openRecord(record)),
      },
      el("span", { class: "mark", text: record.correct ? "✓" : "✗" }),
      el("span", { class: "rec-id", text: record.sample_id }),
      el("span", { class: "rec-arm", text: record.arm }),
      el("span", { class: "rec-q", text: record.question }),
      el("span", {
        class: "rec-a",
        text: `${record.answer || "∅"} / gold ${record.gold}`,
        title: `${record.answer || "∅"} / gold ${record.gold}`, // the whole of a cut answer
      }),
    ),
  );
}

function renderList() {
  const shown = filterRecords(state.records, filters());
  clear(byId("record-list")).append(...shown.slice(0, MAX_LISTED).map(recordItem));
  const right = shown.filter((r) => r.correct).length;
  const count = byId("results-count");
  count.dataset.count = String(shown.length);
  count.textContent =
    `${shown.length} of ${state.records.length} shown · ${right} right, ` +
    `${shown.length - right} wrong` +
    (shown.length > MAX_LISTED ? ` · listing the first ${MAX_LISTED}` : "");
}

function thumbUrl(record) {
  const file = state.index ? thumbFile(record, state.index) : null;
  if (state.thumbUrl) URL.revokeObjectURL(state.thumbUrl);
  state.thumbUrl = file ? URL.createObjectURL(file) : null;
  return state.thumbUrl;
}

async function openRecord(record) {
  hideError();
  state.last = record;
  for (const button of document.querySelectorAll("#record-list .record")) {
    button.classList.toggle("active", button.dataset.key === record.key);
  }
  await renderTrace(recordTrace(record, thumbUrl(record)));
  cropsNote(
    "Results files keep the boxes, not the crops: ask the policy about the image to compare them.",
  );
  byId("trace").dataset.state = "done";
}

/** Shows the record that was open before the Ask mode had the main area. */
export async function showLastRecord() {
  if (!state.last) return false;
  await openRecord(state.last);
  return true;
}

export function initBrowse() {
  byId("results-files").addEventListener("change", guarded(onPicked));
  byId("results-folder").addEventListener("change", guarded(onPicked));
  byId("filter-outcome").addEventListener("change", renderList);
  byId("filter-arm").addEventListener("change", renderList);
  byId("filter-text").addEventListener("input", renderList);
}
