// The gateway client: the endpoint and key the user typed (session storage), JSON calls
// with their latency, and server-sent events read from fetch (EventSource cannot send the
// Authorization header).
//
// Key rule: every failure becomes an ApiError with a message a person can act on: 401 names
// the key, an unreachable endpoint names the URL and CORS, other errors carry the gateway's
// own {"error": {message, field}} (ours or OpenAI's shape).

const STORE = window.sessionStorage;

export const conn = {
  get url() {
    return (STORE.getItem("fnb.endpoint") || window.location.origin).replace(/\/+$/, "");
  },
  get key() {
    return STORE.getItem("fnb.key") || "";
  },
  save(url, key) {
    STORE.setItem("fnb.endpoint", url.trim().replace(/\/+$/, ""));
    STORE.setItem("fnb.key", key.trim());
  },
};

export class ApiError extends Error {
  constructor(message, status = 0, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

function headers(json) {
  const h = {};
  if (conn.key) h.Authorization = `Bearer ${conn.key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function errorOf(response) {
  if (response.status === 401) {
    return new ApiError(
      "The gateway refused the API key (401): check the key, or ask whoever runs it for one.",
      401,
    );
  }
  let message = `${response.status} ${response.statusText}`;
  let field = null;
  try {
    const body = await response.json();
    const err = body.error || {};
    message = `${response.status}: ${err.message || JSON.stringify(body)}`;
    field = err.field || err.param || null;
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(message, response.status, field);
}

async function send(path, init) {
  try {
    return await fetch(conn.url + path, init);
  } catch {
    throw new ApiError(
      `Cannot reach ${conn.url}: is the gateway running there, and does it allow this ` +
        "page's origin (FNB_CORS_ORIGINS)?",
      0,
    );
  }
}

/** A JSON call: {data, status, ms}; an ApiError for any non-2xx answer. */
export async function call(method, path, body) {
  const init = { method, headers: headers(body !== undefined) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const started = performance.now();
  const response = await send(path, init);
  if (!response.ok) throw await errorOf(response);
  const data = response.status === 204 ? null : await response.json();
  return { data, status: response.status, ms: performance.now() - started };
}

/** Upload a file as the raw body (POST /v1/datasets?name=...). */
export async function upload(file) {
  const response = await send(`/v1/datasets?name=${encodeURIComponent(file.name)}`, {
    method: "POST",
    headers: { ...headers(false), "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** A file the gateway serves behind the key, as an object URL (images, downloads). */
export async function blobUrl(path) {
  const response = await send(path, { headers: headers(false) });
  if (!response.ok) throw await errorOf(response);
  return URL.createObjectURL(await response.blob());
}

/**
 * Read server-sent events from a fetch response: onEvent({event, data, id}) for each.
 * Resolves when the stream ends; `signal` aborts it.
 */
export async function events(method, path, body, onEvent, signal, extraHeaders = {}) {
  const init = { method, headers: { ...headers(body !== undefined), ...extraHeaders }, signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const started = performance.now();
  const response = await send(path, init);
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let firstMs = null;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (signal && signal.aborted) break;
      throw err;
    }
    if (chunk.done) break;
    if (firstMs === null) firstMs = performance.now() - started;
    buffer += chunk.value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const ev = { event: "message", data: "", id: null };
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") data.push(value);
        else if (name === "event") ev.event = value;
        else if (name === "id") ev.id = value;
      }
      if (data.length) {
        ev.data = data.join("\n");
        onEvent(ev);
      }
    }
  }
  return { ms: performance.now() - started, firstMs };
}
