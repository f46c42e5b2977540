// The page's one error area: every failure, from the API or from the user's input, is shown
// there with what to do about it, and never escapes to the console as an uncaught error.

import { ApiError } from "./api.js";
import { byId, clear, el, show } from "./dom.js";

export function showError(err) {
  const box = clear(byId("error"));
  const message = err instanceof Error ? err.message : String(err);
  box.append(el("p", { class: "error-message", text: message }));
  if (err instanceof ApiError) {
    const details = [
      err.status ? `HTTP ${err.status}` : "",
      err.type,
      err.param ? `field: ${err.param}` : "",
      err.requestId ? `request id: ${err.requestId}` : "",
    ].filter(Boolean);
    if (details.length) box.append(el("p", { class: "error-details", text: details.join(" · ") }));
  }
  box.append(el("button", { type: "button", class: "close", text: "Dismiss", onclick: hideError }));
  show(box, true);
}

export function hideError() {
  show(byId("error"), false);
}

/** An event handler that reports its failure on the page instead of throwing. */
export function guarded(handler) {
  return async (event) => {
    try {
      await handler(event);
    } catch (err) {
      showError(err);
    }
  };
}

export function showKeyNeeded() {
  showError(
    new Error(
      "This policy needs an API key: enter it in the API key field at the top and press Save.",
    ),
  );
  byId("api-key").focus();
}
