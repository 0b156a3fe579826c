// What every page of the web UI shares: the API over the session cookie, the
// event stream, times and durations, and the sign-out button.

const csrfMeta = document.querySelector('meta[name="bitelab-csrf"]');
const csrf = csrfMeta ? csrfMeta.content : "";

export const me = {
  user: document.body.dataset.user,
  admin: document.body.dataset.admin === "true",
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function signIn() {
  const next = location.pathname === "/" ? "" : "?next=" + encodeURIComponent(location.pathname);
  location.assign("/login" + next);
}

// One API call; the decoded answer, or an ApiError with the server's message.
// Changes carry the session's CSRF token.
export async function api(method, path, body, signal) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  const init = { method, headers, credentials: "same-origin", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/api/v1" + path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) signIn();
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "failed", error.message || response.statusText);
  }
  return data;
}

// Every kind of change the server sends on its event stream.
const KINDS = [
  "reserving", "reserved", "releasing", "freed", "maintenance", "maintenance_end",
  "extended", "power", "power_failed", "setup_failed", "removed", "queued",
  "granted", "left", "expiring", "position",
];

// Follow the lab's changes: onEvent(data, receivedAt) for each, onState(text)
// when the stream opens, reconnects or ends.  After a reconnection the page
// may have missed changes: onEvent is then called with {kind: "resync"}.
export function follow(onEvent, onState) {
  const source = new EventSource("/api/v1/events/stream?lab=1");
  let opened = false;
  source.addEventListener("open", () => {
    onState("Live: changes show as they happen.");
    if (opened) onEvent({ kind: "resync" }, performance.now());
    opened = true;
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      onState("Not receiving changes; reload the page.");
      // a session that has ended sends the browser to the sign-in page
      api("GET", "/whoami").catch(() => {});
    } else {
      onState("Reconnecting…");
    }
  });
  for (const kind of KINDS) {
    source.addEventListener(kind, (message) => {
      const received = performance.now();
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      data.kind = data.kind || kind;
      onEvent(data, received);
    });
  }
  return source;
}

// The server's clock, from /info: countdowns do not depend on the browser's.
let clockOffset = 0;
export async function syncClock() {
  const before = Date.now();
  const info = await api("GET", "/info");
  const after = Date.now();
  clockOffset = Date.parse(info.time) - (before + after) / 2;
  return info;
}
export function serverNow() {
  return Date.now() + clockOffset;
}

// "1h 05m", "4m 09s", "12s"; "" without an end.
export function timeLeft(expiresAt) {
  if (!expiresAt) return "";
  let seconds = Math.max(0, Math.round((Date.parse(expiresAt) - serverNow()) / 1000));
  const days = Math.floor(seconds / 86400);
  seconds -= days * 86400;
  const hours = Math.floor(seconds / 3600);
  seconds -= hours * 3600;
  const minutes = Math.floor(seconds / 60);
  seconds -= minutes * 60;
  const two = (n) => String(n).padStart(2, "0");
  if (days) return `${days}d ${two(hours)}h`;
  if (hours) return `${hours}h ${two(minutes)}m`;
  if (minutes) return `${minutes}m ${two(seconds)}s`;
  return `${seconds}s`;
}

// A time in the browser's zone, e.g. "2026-11-25 09:00:00".
export function localTime(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  return `${t.getFullYear()}-${two(t.getMonth() + 1)}-${two(t.getDate())} ` +
    `${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
}

const UNITS = { s: 1, m: 60, min: 60, h: 3600, d: 86400, w: 604800 };

// Seconds in "90", "30m", "2h", "1d", "1h30m" (as the command line takes them).
export function parseDuration(text) {
  text = String(text).trim();
  let seconds;
  if (/^\d+$/.test(text)) {
    seconds = Number(text);
  } else {
    const parts = [...text.matchAll(/(\d+)(min|[smhdw])/g)];
    if (!parts.length || parts.map((p) => p[0]).join("") !== text) {
      throw new Error(`not a duration: "${text}" (e.g. 90, 30m, 2h, 1d)`);
    }
    seconds = parts.reduce((sum, p) => sum + Number(p[1]) * UNITS[p[2]], 0);
  }
  if (!(seconds > 0)) throw new Error(`must be more than 0: "${text}"`);
  return seconds;
}

// An element with properties (attributes for names with a dash) and children.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key.includes("-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

export function setText(id, text) {
  document.getElementById(id).textContent = text ?? "";
}

// The sign-out button of the page header.
const signOut = document.getElementById("sign-out");
if (signOut) {
  signOut.addEventListener("click", async () => {
    signOut.disabled = true;
    try {
      await fetch("/logout", {
        method: "POST",
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
    } finally {
      location.assign("/login");
    }
  });
}
