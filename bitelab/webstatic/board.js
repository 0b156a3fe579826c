// One board: what it is, what its holder (and an admin) can do with it, its
// attributes, its serial console in a terminal, and this reservation's log.

import { Terminal } from "/static/vendor/xterm.mjs";
import { FitAddon } from "/static/vendor/addon-fit.mjs";
import {
  api, follow, localTime, me, parseDuration, setText, syncClock, timeLeft,
} from "./common.js";

const name = document.body.dataset.board;
const path = "/boards/" + encodeURIComponent(name);
const status = document.getElementById("status");
const problem = document.getElementById("problem");
// what the attributes list leaves to the summary
const SHOWN = new Set(["power", "power_error", "power_read_at", "console", "console_connected"]);

let board = null;

function report(error) {
  problem.textContent = error ? error.message : "";
  problem.hidden = !error;
}

// Run an action with its button disabled; the board as it is afterwards.
async function act(button, work) {
  if (button) button.disabled = true;
  report(null);
  try {
    const result = await work();
    if (result && result.name === name) show(result);
    else await load();
    return result;
  } catch (error) {
    if (error.name !== "AbortError") report(error);
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

function held() {
  return board && board.holder === me.user;
}

function show(next) {
  board = next;
  const attrs = board.attrs || {};
  fact("b-class", `${board.class} (${board.arch})`);
  document.getElementById("b-state").replaceChildren(stateBadge(board.state));
  fact("b-holder", board.holder ? board.holder + (held() ? " (you)" : "") : "nobody");
  fact("b-reserved", localTime(board.reserved_at));
  fact("b-expires", localTime(board.expires_at));
  fact("b-left", timeLeft(board.expires_at));
  fact("b-power", attrs.power === undefined ? "no power control" : attrs.power || "unknown");
  fact("b-power-error", attrs.power_error || "");
  fact("b-reason", board.reason || "");

  const mine = held() && board.state === "reserved";
  const admin = me.admin;
  document.getElementById("reserve-form").hidden = held() || board.state === "maintenance";
  document.getElementById("holder-actions").hidden = !((mine || admin) && board.state === "reserved");
  document.getElementById("power-buttons").hidden = attrs.power === undefined;
  document.getElementById("admin-actions").hidden = !admin;
  document.getElementById("force-form").hidden =
    !(admin && board.holder && !held() && ["reserving", "reserved"].includes(board.state));
  document.getElementById("maintenance-form").hidden = !(admin && board.state === "free");
  document.getElementById("maintenance-end").hidden = !(admin && board.state === "maintenance");

  const ssh = document.getElementById("ssh");
  if (attrs.ip && attrs.ssh_user) {
    const port = attrs.ssh_port && attrs.ssh_port !== "22" ? `-p ${attrs.ssh_port} ` : "";
    setText("ssh-command", `ssh ${port}${attrs.ssh_user}@${attrs.ip}`);
    ssh.hidden = false;
  } else {
    ssh.hidden = true;
  }
  const facts = Object.entries(attrs).filter(([key]) => !SHOWN.has(key));
  document.getElementById("attrs").replaceChildren(
    ...facts.flatMap(([key, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = key;
      dd.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
      return [dt, dd];
    }),
  );
  document.getElementById("console-section").hidden = !attrs.console;
  document.getElementById("log-section").hidden = !((mine || admin) && board.reservation_id);
}

// One fact of the summary; an empty one is not shown.
function fact(id, text) {
  const dd = document.getElementById(id);
  dd.textContent = text;
  dd.hidden = !text;
  dd.previousElementSibling.hidden = !text;
}

function stateBadge(state) {
  const span = document.createElement("span");
  span.className = `state state-${state}`;
  span.textContent = state;
  return span;
}

async function load() {
  try {
    show(await api("GET", path));
  } catch (error) {
    report(error);
  }
}

// -- actions --------------------------------------------------------------

let waiting = null;

document.getElementById("reserve-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = {};
  try {
    if (form.elements.timeout.value.trim()) body.timeout = parseDuration(form.elements.timeout.value);
    if (form.elements.wait.checked) body.wait = parseDuration(form.elements.wait_for.value);
  } catch (error) {
    report(error);
    return;
  }
  const key = form.elements.sshpubkey.value.trim();
  if (key) body.sshpubkey = key;
  const stop = document.getElementById("stop-waiting");
  waiting = new AbortController();
  if (body.wait) {
    stop.hidden = false;
    status.textContent = "Waiting for the board…";
  }
  await act(form.elements.reserve || document.getElementById("reserve"), () =>
    api("POST", path + "/reserve", body, waiting.signal),
  );
  stop.hidden = true;
  waiting = null;
});

document.getElementById("stop-waiting").addEventListener("click", () => {
  if (waiting) waiting.abort();
  status.textContent = "Stopped waiting.";
});

document.getElementById("release").addEventListener("click", (event) =>
  act(event.target, () => api("POST", path + "/release", {})),
);

document.getElementById("extend-form").addEventListener("submit", (event) => {
  event.preventDefault();
  let timeout;
  try {
    timeout = parseDuration(event.target.elements.timeout.value);
  } catch (error) {
    report(error);
    return;
  }
  act(event.submitter, () => api("POST", path + "/attrs", { timeout }));
});

for (const button of document.querySelectorAll("[data-power]")) {
  button.addEventListener("click", () =>
    act(button, () => api("POST", path + "/attrs", { power: button.dataset.power })),
  );
}

document.getElementById("force-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const reason = event.target.elements.reason.value.trim();
  const body = { force: true };
  if (reason) body.reason = reason;
  act(event.submitter, () => api("POST", path + "/release", body));
});

document.getElementById("maintenance-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const reason = event.target.elements.reason.value.trim();
  act(event.submitter, () => api("POST", path + "/maintenance", { reason }));
});

document.getElementById("maintenance-end").addEventListener("click", (event) =>
  act(event.target, () => api("DELETE", path + "/maintenance")),
);

document.getElementById("copy-ssh").addEventListener("click", async (event) => {
  const text = document.getElementById("ssh-command").textContent;
  try {
    await navigator.clipboard.writeText(text);
    event.target.textContent = "Copied";
  } catch {
    // no clipboard (plain HTTP): select the text for the user to copy
    const range = document.createRange();
    range.selectNodeContents(document.getElementById("ssh-command"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    event.target.textContent = "Selected: copy it";
  }
  setTimeout(() => (event.target.textContent = "Copy"), 2000);
});

// -- this reservation's console log -------------------------------------------

const logUrl = "/api/v1" + path + "/console";
const download = document.getElementById("download-log");
download.href = logUrl;
download.download = `${name}-console.log`;

document.getElementById("show-log").addEventListener("click", async (event) => {
  const pre = document.getElementById("log");
  event.target.disabled = true;
  report(null);
  try {
    const response = await fetch(logUrl, { credentials: "same-origin" });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new Error((data && data.error && data.error.message) || response.statusText);
    }
    pre.textContent = await response.text();
    pre.hidden = false;
    event.target.textContent = "Show again";
    pre.scrollTop = pre.scrollHeight;
  } catch (error) {
    report(error);
  } finally {
    event.target.disabled = false;
  }
});

// -- the serial console ---------------------------------------------------------

const connect = document.getElementById("connect");
const disconnect = document.getElementById("disconnect");
const sendBreak = document.getElementById("send-break");
const consoleState = document.getElementById("console-state");
const notice = document.getElementById("console-notice");
const screen = document.getElementById("terminal");
const encoder = new TextEncoder();
let term = null;
let fit = null;
let socket = null;

// text from the server, without anything a terminal would act on
function plain(text) {
  return String(text).replace(/[\x00-\x1f\x7f]/g, " ");
}

function tell(text, bad) {
  notice.textContent = text;
  notice.classList.toggle("bad", Boolean(bad));
  notice.hidden = false;
}

function terminal() {
  if (term) return term;
  screen.hidden = false;
  term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontSize: 14,
    // the server's own lines end in a bare line feed
    convertEol: true,
    theme: {
      scrollbarSliderBackground: "rgba(255, 255, 255, 0.2)",
      scrollbarSliderHoverBackground: "rgba(255, 255, 255, 0.35)",
      scrollbarSliderActiveBackground: "rgba(255, 255, 255, 0.5)",
    },
  });
  fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  addEventListener("resize", () => fit.fit());
  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  // Tab and the arrows belong to the board: Ctrl+] leaves the terminal
  term.attachCustomKeyEventHandler((event) => {
    if (event.type === "keydown" && event.ctrlKey && (event.key === "]" || event.code === "BracketRight")) {
      (socket ? disconnect : connect).focus();
      return false;
    }
    return true;
  });
  return term;
}

function send(bytes) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(bytes);
}

function connected(open) {
  connect.hidden = open;
  disconnect.hidden = !open;
  sendBreak.hidden = !open;
}

function control(message) {
  if (message.type === "attached") {
    consoleState.textContent = `Connected (reservation ${message.reservation ?? "none"}).`;
    term.focus();
  } else if (message.type === "notice") {
    tell(message.message);
    term.write(`\r\n\x1b[33m[bitelab: ${plain(message.message)}]\x1b[0m\r\n`);
  } else if (message.type === "error") {
    tell(`Console refused: ${message.message}`, true);
  } else if (message.type === "closed") {
    tell(`Console closed: ${message.reason}`, true);
    term.write(`\r\n\x1b[1;33m[bitelab: ${plain(message.reason)}]\x1b[0m\r\n`);
  }
}

function open() {
  notice.hidden = true;
  terminal().reset();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws/console/${encodeURIComponent(name)}`);
  socket.binaryType = "arraybuffer";
  consoleState.textContent = "Connecting…";
  connected(true);
  let told = false;
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      told = told || ["error", "closed"].includes(message.type);
      control(message);
    } else {
      term.write(new Uint8Array(event.data));
    }
  });
  socket.addEventListener("close", (event) => {
    socket = null;
    connected(false);
    consoleState.textContent = "Not connected.";
    if (!told && event.code !== 1000 && event.code !== 1005) {
      tell(`Console connection lost${event.reason ? ": " + event.reason : ""}.`, true);
    }
    connect.focus();
  });
}

connect.addEventListener("click", open);
disconnect.addEventListener("click", () => {
  if (socket) socket.close(1000, "closed by the user");
});
sendBreak.addEventListener("click", () => {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "break" }));
  term.focus();
});

// -- start --------------------------------------------------------------------------

async function start() {
  try {
    await syncClock();
  } catch (error) {
    report(error);
  }
  await load();
  follow(
    (event) => {
      if (event.kind === "resync" || event.board === name) load();
    },
    (text) => {
      status.textContent = text;
    },
  );
  setInterval(() => {
    if (board) fact("b-left", timeLeft(board.expires_at));
  }, 1000);
}

start();
