// Calls to the policy, with the API key the user entered once (kept in sessionStorage, so it
// is gone when the tab closes). URLs are relative, so the page also works behind a proxy path.

const KEY_STORAGE = "magsrl.apiKey";

export class ApiError extends Error {
  constructor(message, { status = 0, type = "", param = null, requestId = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.param = param;
    this.requestId = requestId;
  }
}

export function getKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage disabled: the user can still type the key each time
  }
}

export function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: nothing to keep
  }
}

/** Whether the server said (in the page's meta tag) that every API call needs the key. */
export function authRequired() {
  const meta = document.querySelector('meta[name="magsrl-auth"]');
  return meta?.getAttribute("content") === "required";
}

async function errorFrom(resp) {
  let error = {};
  try {
    const body = await resp.json();
    if (body && typeof body.error === "object" && body.error) error = body.error;
  } catch {
    // not JSON (a proxy's page, say): the status line is all we have
  }
  const detail = typeof error.message === "string" ? error.message : resp.statusText;
  let message = detail || `HTTP ${resp.status}`;
  if (resp.status === 401) {
    message =
      "The policy needs an API key, or the key is wrong: enter it in the API key field " +
      `at the top and press Save. (${detail})`;
  }
  return new ApiError(message, {
    status: resp.status,
    type: error.type || "",
    param: error.param ?? null,
    requestId: error.request_id ?? null,
  });
}

/**
 * One call to the policy. `body` is sent as JSON; `as` is "json" or "blob".
 * Any failure becomes an ApiError whose message is meant for the user.
 */
export async function api(path, { method = "GET", body, as = "json" } = {}) {
  const headers = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(`Could not reach the policy (${err.message}). Is it running?`, {
      type: "network_error",
    });
  }
  if (!resp.ok) throw await errorFrom(resp);
  try {
    return as === "blob" ? await resp.blob() : await resp.json();
  } catch (err) {
    throw new ApiError(`The policy's answer could not be read (${err.message})`, {
      status: resp.status,
      type: "bad_response",
    });
  }
}

/** Whether to show the key field: the policy wants a key, or one is set (to forget it).
 * It showed beside "no key needed", inviting a key nothing would read. */
export function keyFieldWanted(required, key) {
  return Boolean(required || key);
}

/** True until the user has entered a key on a policy that wants one. */
export function needsKey() {
  return authRequired() && !getKey();
}
