// What every page shares: requests to /v1 with the session (and its CSRF token on anything that changes
// something), building the page from data without ever parsing data as HTML, and live streams that say
// when they are reconnecting.

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || (typeof body === "string" && body) || `HTTP ${status}`);
    this.status = status;
    this.param = error.param;
    this.code = error.code;
  }
}

// A request to /v1: `json` is sent as JSON, `form` (FormData) as multipart; the answer's JSON, or an ApiError
// with the server's message. A session that has ended sends the browser to sign in again.
export async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  let body;
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const response = await fetch(`/v1${path}`, { method, headers, body, credentials: "same-origin" });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// An element: h("a", {href: "/jobs", class: "x", onclick: f}, "text", child…). Text is always text.
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function replace(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

export function when(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

export function number(value, digits = 4) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

export function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, status.replace("_", " "));
}

export function jobDuration(job) {
  const started = job.created_at;
  const end = job.finished_at || (["running", "queued", "validating_files"].includes(job.status) ? Date.now() / 1000 : null);
  return end ? end - started : null;
}

// Follow a server-sent event stream: `handlers` by event name get (data, id). The browser's EventSource
// reconnects by itself after a dropped connection, sending the last id it saw (Last-Event-ID), and the
// server replays what was missed. A tab in the background lets its stream go and reopens it from the last
// id when shown again: a browser keeps only six connections to one server, and open tabs' streams would
// otherwise take them all, so a seventh tab would not even load. `statusNode` says which state the
// stream is in; its data-reconnects counts the reconnections after a lost connection.
export function follow(path, handlers, statusNode) {
  let source = null;
  let lastId = null;
  let reconnects = 0;
  let lost = false;
  let ended = false;
  const say = (text) => { if (statusNode) statusNode.textContent = text; };
  const seen = (event) => { if (event.lastEventId) lastId = event.lastEventId; };

  function open() {
    const query = lastId ? `?last_event_id=${encodeURIComponent(lastId)}` : "";
    source = new EventSource(`/v1${path}${query}`, { withCredentials: true });
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => { seen(event); handler(JSON.parse(event.data), event.lastEventId); });
    }
    source.addEventListener("ready", seen); // the position a stream of what happens from now on starts at
    source.addEventListener("open", () => {
      if (lost) {
        reconnects += 1;
        if (statusNode) statusNode.dataset.reconnects = String(reconnects);
        say("Live again: caught up on what happened while the connection was lost.");
      } else {
        say("Live: updates appear as they happen.");
      }
      lost = false;
    });
    source.addEventListener("error", () => {
      lost = true;
      say(source.readyState === EventSource.CLOSED
        ? "Disconnected. Refresh the page to follow again."
        : "Connection lost; reconnecting…");
    });
    source.addEventListener("end", (event) => {
      seen(event);
      ended = true;
      source.close();
      say("The job has finished; everything it recorded is shown.");
    });
  }

  document.addEventListener("visibilitychange", () => {
    if (ended) return;
    if (document.hidden) {
      source.close();
      say("Paused while this tab is in the background.");
    } else if (source.readyState === EventSource.CLOSED) {
      open();
    }
  });
  open();
}

export function showError(node, error) {
  replace(node, h("p", { class: "error", role: "alert" }, error.message || String(error)));
}
