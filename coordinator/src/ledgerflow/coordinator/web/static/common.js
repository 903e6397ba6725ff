// Shared helpers for the dashboard pages.
//
// Safety rule for every page: elements are built with el(); text goes in with
// textContent (text nodes), never innerHTML, so step names, log lines, payloads and
// error messages render as text whatever they contain.
//
// Signing in: any API answer of 401 shows the sign-in form (showSignIn). It posts the
// token once to /api/session, whose answer sets an HttpOnly session cookie that every
// later request and EventSource carries; the token itself is kept nowhere on the page.

/**
 * Create an element.
 * @param {string} tag
 * @param {object} props  class, text, href, title, type, value, placeholder, name,
 *                        for, id, dataset (object), on (object of listeners)
 * @param {...(Node|string|number|null|undefined)} children  strings become text nodes
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "on") {
      for (const [type, listener] of Object.entries(value)) node.addEventListener(type, listener);
    } else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An error the API answered with: code is the gRPC status name. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || "";
  }
  toString() {
    return `${this.code}: ${this.message}`;
  }
}

/** Call a JSON endpoint; throws ApiError with the API's code and message. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "UNAVAILABLE", `the coordinator could not be reached (${err})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) showSignIn();
    const error = (data && data.error) || {};
    throw new ApiError(
      response.status,
      error.code || `HTTP_${response.status}`,
      error.message || text || response.statusText,
      error.field,
    );
  }
  return data;
}

/** "RUN_STATUS_TIMED_OUT" -> "timed out". */
export function enumWord(value, prefix) {
  if (!value) return "unspecified";
  return String(value).replace(prefix, "").toLowerCase().replace(/_/g, " ");
}

export const runStatus = (s) => enumWord(s, "RUN_STATUS_");
export const stepStatus = (s) => enumWord(s, "STEP_STATUS_");

const TERMINAL = new Set([
  "RUN_STATUS_COMPLETED",
  "RUN_STATUS_FAILED",
  "RUN_STATUS_CANCELLED",
  "RUN_STATUS_TERMINATED",
  "RUN_STATUS_TIMED_OUT",
]);
export const isTerminal = (status) => TERMINAL.has(status);

/** A status badge; the class carries the colour, the text says the word. */
export function badge(word) {
  return el("span", { class: `badge status-${word.replace(/ /g, "-")}`, text: word });
}

/** Milliseconds since the epoch of an RFC 3339 timestamp, or null. */
export function millis(ts) {
  if (!ts) return null;
  const value = Date.parse(ts);
  return Number.isNaN(value) ? null : value;
}

export function formatTime(ts) {
  const ms = millis(ts);
  if (ms === null) return "—";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** proto3 JSON Duration ("1.500s") -> milliseconds. */
export function durationMillis(duration) {
  if (!duration) return null;
  const value = parseFloat(String(duration));
  return Number.isNaN(value) ? null : value * 1000;
}

/** Decode a Payload {encoding, data: base64} to display text (pretty JSON when JSON). */
export function payloadText(payload) {
  if (!payload || !payload.data) return null;
  let text;
  try {
    const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return `(${payload.encoding || "binary"}, base64) ${payload.data}`;
  }
  const encoding = payload.encoding || "json/plain";
  if (encoding === "json/plain") {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      return text;
    }
  }
  return `(${encoding}) ${text}`;
}

/** A <pre> of pretty JSON (or a placeholder). */
export function jsonBlock(text, emptyText = "—") {
  if (text === null || text === undefined) return el("p", { class: "muted", text: emptyText });
  return el("pre", { class: "json" }, text);
}

/** Keeps a "live" indicator in step with an EventSource's state. */
export function trackLive(indicator, source, { ended = false } = {}) {
  const set = (state, text) => {
    indicator.className = `live live-${state}`;
    indicator.textContent = text;
  };
  set("connecting", "connecting…");
  source.addEventListener("open", () => set("on", "live"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) set("off", "disconnected");
    else set("connecting", "reconnecting…");
  });
  return { done: (text = "finished") => set("done", text) };
}

/** Show a message in a status area; kind is "ok" or "error". */
export function say(area, kind, text) {
  area.replaceChildren(el("span", { class: `message message-${kind}`, role: "status" }, text));
}

/** Replace the page with the sign-in form (once); a valid token reloads the page. */
export function showSignIn() {
  if (document.getElementById("sign-in")) return;
  const token = el("input", {
    id: "sign-in-token",
    type: "password",
    name: "token",
    autocomplete: "off",
    spellcheck: "false",
    required: "required",
  });
  const area = el("div", { id: "sign-in-message", class: "message-area", "aria-live": "polite" });
  // method=post: should the script below ever fail to take the submit, the browser posts
  // a form body (refused with 415) instead of putting the token in a URL.
  const form = el(
    "form",
    { id: "sign-in", class: "sign-in", method: "post", action: "/api/session" },
    el("h2", { text: "Sign in" }),
    el("p", {
      class: "muted",
      text: "This coordinator requires a token with the client scope (ledgerflow admin new-token --scope client).",
    }),
    el("label", {}, "Token", token),
    el("button", { type: "submit", id: "sign-in-button", text: "Sign in" }),
    area,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/api/session", { method: "POST", body: { token: token.value } });
    } catch (err) {
      say(area, "error", String(err));
      return;
    }
    token.value = "";
    location.reload();
  });
  document.body.classList.add("signed-out");
  document.querySelector("main").prepend(form);
  token.focus();
}

/** Show who is asking in the header, with a sign-out button for a signed-in session. */
export async function showAccount() {
  let who;
  try {
    who = await api("/api/session");
  } catch {
    return; // a 401 has shown the sign-in form; any other error shows on the page
  }
  if (!who || !who.credential) return; // an open dashboard: nobody to name
  const parts = [el("span", { id: "who", text: who.identity })];
  if (who.credential === "cookie") {
    const signOut = async () => {
      try {
        await api("/api/session", { method: "DELETE" });
      } finally {
        location.reload();
      }
    };
    parts.push(el("button", { type: "button", id: "sign-out", class: "secondary", text: "Sign out", on: { click: signOut } }));
  }
  document.getElementById("account").replaceChildren(...parts);
}
