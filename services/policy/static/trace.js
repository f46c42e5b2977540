// Renders one trace: the question and answer, the zoom boxes over the image, each round's
// reasoning, the timing split, and the crops side by side. A trace comes from a live
// /answer call or from a line of an eval results file; both are shaped alike first.

import { byId, clear, el, ms, show, svg } from "./dom.js";

const METHOD_NAMES = { sr: "super-resolved", bicubic: "bicubic", crop: "plain crop" };
// queue: the wait in the hf engine's batch queue (absent where the engine cannot see it).
const TIMING_PARTS = ["model", "magnifier", "queue", "overhead"];
// Blank lines kept in a row; a random model's ~500 newlines drew a 9,000-px empty box.
const MAX_BLANK_LINES = 2;
const ROUND_COLOURS = 4; // .round-0 .. .round-3 in viewer.css
const CROP_DISPLAY_PX = 256; // every method's crop shown at this width, so they compare
const CROP_MAX_HEIGHT_PX = 320;
// The tags of both zoom protocols, shown as tags so the reasoning reads at a glance.
const TAG_PATTERN = /(<\/?(?:think|rethink|answer|zoom|tool_call|tool_response)>)/;

let renders = 0; // bumps on each render, so a slow image decode never draws over a newer one

/** The zooms the magnifier served, in order, each with a short tag such as "R1·2". */
export function servedZooms(rounds) {
  const out = [];
  rounds.forEach((round, r) => {
    (round.zooms || []).forEach((zoom, k) => {
      const box = zoom.box;
      // Finite numbers only: a hand-edited results file must not feed NaN to the SVG.
      if (Array.isArray(box) && box.length === 4 && box.every(Number.isFinite) && !zoom.error) {
        out.push({ ...zoom, round: r + 1, tag: `R${r + 1}·${k + 1}` });
      }
    });
  });
  return out;
}

/** The served boxes without repeats (a model may ask for a region twice). */
export function uniqueBoxes(served) {
  const byKey = new Map();
  for (const zoom of served) {
    const key = zoom.box.join(",");
    const seen = byKey.get(key);
    if (seen) seen.tags.push(zoom.tag);
    else byKey.set(key, { box: zoom.box, tags: [zoom.tag], label: zoom.label, crop: zoom.crop });
  }
  return [...byKey.values()];
}

/** A grey stand-in of the image's aspect ratio, for records whose thumbnail is missing. */
export function placeholderUrl(width, height) {
  const body =
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
    `<rect width="100%" height="100%" fill="#d5d9df"/></svg>`;
  return `data:image/svg+xml,${encodeURIComponent(body)}`;
}

// ---- question and answer -------------------------------------------------------------
function dlRow(term, ...values) {
  return [el("dt", { text: term }), el("dd", {}, ...values)];
}

function verdict(correct) {
  if (correct === true) return el("span", { class: "badge right", text: "right" });
  if (correct === false) return el("span", { class: "badge wrong", text: "wrong" });
  return null;
}

function renderQA(node, trace) {
  const rows = [dlRow("Question", trace.question)];
  if (trace.options?.length) {
    rows.push(
      dlRow("Options", el("ol", { type: "A" }, ...trace.options.map((o) => el("li", { text: o })))),
    );
  }
  const answer = el("span", { id: "answer", class: "answer", text: trace.answer || "(empty)" });
  const raw =
    trace.rawAnswer && trace.rawAnswer !== trace.answer ? ` (said: ${trace.rawAnswer})` : "";
  rows.push(dlRow("Answer", answer, raw, " ", verdict(trace.correct)));
  if (trace.gold !== undefined)
    rows.push(dlRow("Gold", el("span", { class: "gold", text: trace.gold })));
  for (const [term, value] of trace.meta || []) {
    if (value !== undefined && value !== null && value !== "")
      rows.push(dlRow(term, String(value)));
  }
  clear(node).append(el("dl", { class: "qa-list" }, ...rows.flat()));
  for (const [kind, text] of trace.notices || []) {
    if (text) node.append(el("p", { class: `notice ${kind}`, text }));
  }
}

// ---- the image and its boxes -----------------------------------------------------------
/** Draws the boxes in original pixels: the viewBox is the original's size, so they line up. */
export function drawOverlay(overlay, width, height, served) {
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  overlay.setAttribute("preserveAspectRatio", "none");
  clear(overlay);
  const font = Math.max(width, height) * 0.024;
  for (const zoom of served) {
    const [x1, y1, x2, y2] = zoom.box;
    const labelY = y1 - font * 0.35 > font ? y1 - font * 0.35 : Math.min(height, y2 + font);
    const title = `${zoom.tag} [${zoom.box.join(", ")}]${zoom.label ? ` ${zoom.label}` : ""}`;
    overlay.append(
      svg(
        "g",
        { class: `zoom round-${(zoom.round - 1) % ROUND_COLOURS}`, dataset: { tag: zoom.tag } },
        svg(
          "rect",
          {
            class: "zoom-box",
            x: x1,
            y: y1,
            width: x2 - x1,
            height: y2 - y1,
            "vector-effect": "non-scaling-stroke",
          },
          svg("title", { text: title }),
        ),
        svg(
          "text",
          { class: "zoom-label", x: x1, y: labelY, "font-size": font },
          zoom.label ? `${zoom.tag} ${zoom.label}` : zoom.tag,
        ),
      ),
    );
  }
}

/** A frame that holds every box, for an image the browser cannot show and no known size. */
function fallbackFrame(trace, served) {
  if (trace.width && trace.height) return { width: trace.width, height: trace.height };
  const right = Math.max(...served.map((z) => z.box[2]), 0);
  const bottom = Math.max(...served.map((z) => z.box[3]), 0);
  return {
    width: Math.max(1000, Math.ceil(right * 1.05)),
    height: Math.max(750, Math.ceil(bottom * 1.05)),
  };
}

/** Puts the image on the stage; null when a later render replaced it meanwhile. */
async function showImage(trace, served, render) {
  const image = byId("stage-image");
  image.src = trace.imageUrl;
  try {
    await image.decode();
  } catch {
    if (render !== renders) return null;
    // A format this browser cannot show (TIFF, say): draw the boxes on a stand-in instead.
    const frame = fallbackFrame(trace, served);
    image.src = placeholderUrl(frame.width, frame.height);
    await image.decode().catch(() => {});
    const note = "This browser cannot display the image; the boxes are drawn on a grey stand-in.";
    return { ...frame, note };
  }
  if (render !== renders) return null;
  // Boxes are in the original's pixels: a reduced thumbnail is stretched to that frame.
  return {
    width: trace.width || image.naturalWidth,
    height: trace.height || image.naturalHeight,
    note: trace.imageNote || "",
  };
}

// ---- rounds --------------------------------------------------------------------------
/** ``text`` with each run of more than MAX_BLANK_LINES blank lines folded into one line
 * that says how many there were. */
export function collapseBlankLines(text) {
  return text.replace(/\n(?:[ \t]*\n){3,}/g, (run) => {
    const blank = run.split("\n").length - 2;
    return `\n${"\n".repeat(MAX_BLANK_LINES - 1)}[… ${blank} blank lines …]\n\n`;
  });
}

function highlighted(text) {
  return text
    .split(TAG_PATTERN)
    .filter((part) => part !== "")
    .map((part) => (TAG_PATTERN.test(part) ? el("span", { class: "tag", text: part }) : part));
}

function zoomItem(zoom, r, k) {
  const tag = `R${r + 1}·${k + 1}`;
  if (zoom.error || !zoom.box) {
    return el(
      "li",
      { class: "zoom-error" },
      el("b", { text: tag }),
      ` refused: ${zoom.error || "no box"}`,
    );
  }
  const crop = zoom.crop;
  const cropText = crop
    ? ` → ${crop.width}×${crop.height} ${crop.method}${crop.model ? ` (${crop.model})` : ""}`
    : "";
  return el(
    "li",
    {},
    el("b", { text: tag }),
    ` [${zoom.box.join(", ")}]`,
    zoom.label ? ` “${zoom.label}”` : "",
    cropText,
  );
}

function renderRounds(list, rounds) {
  clear(list);
  rounds.forEach((round, r) => {
    const zooms = round.zooms || [];
    list.append(
      el(
        "li",
        { class: `round round-${r % ROUND_COLOURS}` },
        el("h3", { text: `Round ${r + 1}` }),
        el("pre", { class: "round-text" }, ...highlighted(collapseBlankLines(round.text || ""))),
        zooms.length
          ? el("ul", { class: "zoom-list" }, ...zooms.map((z, k) => zoomItem(z, r, k)))
          : null,
      ),
    );
  });
  if (!rounds.length) list.append(el("li", { class: "note", text: "No rounds recorded." }));
}

// ---- timing --------------------------------------------------------------------------
export function renderTiming(node, timing, latency) {
  clear(node);
  const parts = TIMING_PARTS.filter((name) => typeof timing?.[name] === "number");
  const sum = parts.reduce((acc, name) => acc + Math.max(0, timing[name]), 0);
  const total = typeof timing?.total === "number" ? timing.total : sum;
  if (!parts.length) {
    node.append(el("p", { class: "note", text: "No timing recorded." }));
  } else {
    const bar = el("div", { class: "timing-bar", role: "img", "aria-label": "time split" });
    const legend = el("dl", { class: "timing-legend" });
    for (const name of parts) {
      const share = sum > 0 ? (100 * Math.max(0, timing[name])) / sum : 0;
      bar.append(
        el("span", {
          class: `seg seg-${name}`,
          style: { width: `${share}%` },
          title: `${name}: ${ms(timing[name])}`,
        }),
      );
      legend.append(
        el("dt", {}, el("span", { class: `swatch seg-${name}` }), name),
        el("dd", { dataset: { part: name }, text: `${ms(timing[name])} · ${share.toFixed(0)}%` }),
      );
    }
    legend.append(
      el("dt", { class: "total", text: "total" }),
      el("dd", { class: "total", dataset: { part: "total" }, text: ms(total) }),
    );
    node.append(bar, legend);
  }
  if (typeof latency === "number" && latency > 0) {
    node.append(el("p", { class: "note", text: `Client-side latency: ${ms(latency)}` }));
  }
}

// ---- crops ---------------------------------------------------------------------------
function displaySize(box) {
  const aspect = (box[3] - box[1]) / Math.max(1, box[2] - box[0]);
  let width = CROP_DISPLAY_PX;
  let height = width * aspect;
  if (height > CROP_MAX_HEIGHT_PX) {
    width *= CROP_MAX_HEIGHT_PX / height;
    height = CROP_MAX_HEIGHT_PX;
  }
  return { width: `${Math.round(width)}px`, height: `${Math.round(height)}px` };
}

function cropFigure(crop, size, used) {
  const name = METHOD_NAMES[crop.method] || crop.method;
  const caption = el(
    "figcaption",
    {},
    el("b", { text: name }),
    crop.model ? ` · ${crop.model}` : "",
    el("br"),
    `${crop.width} × ${crop.height} px`,
    used ? el("span", { class: "badge used", text: "the model saw this" }) : null,
  );
  const image = el("img", {
    class: `crop-img method-${crop.method}`,
    alt: `${name} crop, ${crop.width} by ${crop.height} pixels`,
    src: `data:image/${crop.format || "png"};base64,${crop.b64}`,
    style: size,
    dataset: { method: crop.method },
  });
  return el("figure", { class: `crop${used ? " used" : ""}` }, image, caption);
}

function cropRow(entry, crops, usedMethod) {
  const [x1, y1, x2, y2] = entry.box;
  const size = displaySize(entry.box);
  const where = ` [${entry.box.join(", ")}] · ${x2 - x1} × ${y2 - y1} px of the original`;
  const label = entry.label ? ` · “${entry.label}”` : "";
  const figures = crops.map((c) => cropFigure(c, size, c.method === usedMethod));
  return el(
    "div",
    { class: "crop-row" },
    el("h3", {}, entry.tags.join(", "), el("span", { class: "note", text: where + label })),
    el("div", { class: "crop-grid" }, ...figures),
  );
}

/** The crops of each served box under every method, from POST /v1/viewer/crops. */
export function renderCrops(node, entries, response, usedMethod) {
  clear(node);
  response.boxes.forEach((boxCrops, i) => {
    const entry = { ...entries[i], box: boxCrops.box };
    node.append(cropRow(entry, boxCrops.crops, usedMethod));
  });
}

/** Only the crops /answer returned (one method): when the comparison is off or failed. */
export function renderAnswerCrops(node, entries, usedMethod) {
  clear(node);
  for (const entry of entries) {
    if (entry.crop?.b64) node.append(cropRow(entry, [entry.crop], usedMethod));
  }
}

export function cropsNote(text) {
  const note = byId("crops-note");
  note.textContent = text || "";
  show(note, Boolean(text));
}

/** Renders everything but the crops; returns the served zooms for the crops step. */
export async function renderTrace(trace) {
  show(byId("placeholder"), false);
  show(byId("trace-view"), true);
  renderQA(byId("qa"), trace);
  renderRounds(byId("rounds"), trace.rounds);
  renderTiming(byId("timing"), trace.timing, trace.latency);
  clear(byId("crops"));
  cropsNote("");
  const served = servedZooms(trace.rounds);
  const render = ++renders;
  const frame = await showImage(trace, served, render);
  if (!frame) return served;
  const stage = byId("stage");
  stage.dataset.width = String(frame.width);
  stage.dataset.height = String(frame.height);
  stage.style.setProperty("--aspect", String(frame.width / frame.height));
  drawOverlay(byId("overlay"), frame.width, frame.height, served);
  const note = byId("image-note");
  note.textContent = frame.note;
  show(note, Boolean(frame.note));
  byId("box-count").textContent = served.length
    ? `${served.length} zoom box${served.length > 1 ? "es" : ""}`
    : "no zoom";
  return served;
}

export function resetTrace(message) {
  show(byId("trace-view"), false);
  const placeholder = byId("placeholder");
  placeholder.textContent = message;
  show(placeholder, true);
}
