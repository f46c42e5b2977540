// Reads an eval results file (one EvalRecord per line, see proto/eval.py) and the thumbnails
// picked with it, filters the records, and shapes one as a trace. Nothing leaves the browser.

import { placeholderUrl } from "./trace.js";

const DEFAULT_SIZE = [1000, 750]; // a record without image_size still gets a drawable frame

function isRecord(row) {
  return (
    row !== null &&
    typeof row === "object" &&
    !Array.isArray(row) &&
    typeof row.arm === "string" &&
    typeof row.question === "string" &&
    (typeof row.sample_id === "string" || typeof row.key === "string") &&
    (row.rounds === undefined || Array.isArray(row.rounds))
  );
}

/** The records of a results.jsonl text; malformed lines are skipped and counted. */
export function parseResults(text) {
  const records = [];
  let skipped = 0;
  for (const line of text.split(/\r?\n/)) {
    if (!line.trim()) continue;
    let row;
    try {
      row = JSON.parse(line);
    } catch {
      skipped += 1;
      continue;
    }
    if (!isRecord(row)) {
      skipped += 1;
      continue;
    }
    row.sample_id = row.sample_id ?? row.key;
    row.key = row.key ?? `${row.sample_id}|${row.arm}`;
    row.rounds = row.rounds ?? [];
    records.push(row);
  }
  return { records, skipped };
}

function relPath(file) {
  return file.webkitRelativePath || file.name;
}

function dirname(path) {
  const cut = path.lastIndexOf("/");
  return cut < 0 ? "" : path.slice(0, cut + 1);
}

function basename(path) {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** The results file among the picked ones: results.jsonl first, else any .jsonl. */
export function pickResultsFile(files) {
  const jsonl = files.filter((f) => f.name.toLowerCase().endsWith(".jsonl"));
  return jsonl.find((f) => f.name === "results.jsonl") || jsonl[0] || null;
}

/** Picked images by their path relative to the results file's folder, and by name. */
export function indexImages(files, resultsFile) {
  const base = resultsFile ? dirname(relPath(resultsFile)) : "";
  const byPath = new Map();
  const byName = new Map();
  for (const file of files) {
    if (file === resultsFile || !file.type.startsWith("image/")) continue;
    const path = relPath(file);
    byPath.set(base && path.startsWith(base) ? path.slice(base.length) : path, file);
    if (!byName.has(file.name)) byName.set(file.name, file);
  }
  return { byPath, byName };
}

export function thumbFile(record, index) {
  if (!record.thumb) return null;
  const thumb = String(record.thumb).replace(/^\.\//, "");
  return index.byPath.get(thumb) || index.byName.get(basename(thumb)) || null;
}

export function armsOf(records) {
  return [...new Set(records.map((r) => r.arm))].sort();
}

/** outcome: all | right | wrong; arm: "" for every arm; text: matched in id and question. */
export function filterRecords(records, { outcome = "all", arm = "", text = "" } = {}) {
  const needle = text.trim().toLowerCase();
  return records.filter(
    (r) =>
      (outcome === "all" || (outcome === "right") === Boolean(r.correct)) &&
      (!arm || r.arm === arm) &&
      (!needle ||
        String(r.sample_id).toLowerCase().includes(needle) ||
        r.question.toLowerCase().includes(needle)),
  );
}

function imageSize(record) {
  const size = record.image_size;
  const ok =
    Array.isArray(size) && size.length === 2 && size.every((v) => Number.isFinite(v) && v > 0);
  return ok ? size : DEFAULT_SIZE;
}

/** A record as a trace; `thumbUrl` is an object URL of its thumbnail, or null. */
export function recordTrace(record, thumbUrl) {
  const [width, height] = imageSize(record);
  let imageNote = "";
  if (!thumbUrl) {
    imageNote = record.thumb
      ? `Thumbnail ${record.thumb} was not among the picked files: pick the results folder ` +
        "(or the images too) to see the image. The boxes are drawn on a grey stand-in."
      : "The results file has no thumbnail for this record; the boxes are drawn on a grey stand-in.";
  }
  return {
    imageUrl: thumbUrl || placeholderUrl(width, height),
    width,
    height,
    imageNote,
    question: record.question,
    options: record.options,
    answer: record.answer,
    rawAnswer: record.raw_answer,
    gold: record.gold,
    correct: Boolean(record.correct),
    rounds: record.rounds,
    timing: record.timing_ms || {},
    latency: record.latency_ms,
    meta: [
      ["Sample", record.sample_id],
      ["Arm", record.arm],
      ["Dataset", record.dataset],
      ["Category", record.category],
      ["Image", record.image],
    ],
    notices: [["error", record.error ? `This sample failed: ${record.error}` : ""]],
  };
}
