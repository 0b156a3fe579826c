// The lab view: every board, the classes and the queue, kept up to date from
// the event stream (each change names a board; the page asks for that board
// again).  Filters by class, state and "mine" live in the address.

import { api, el, follow, me, syncClock, timeLeft, localTime } from "./common.js";

const tbody = document.querySelector("#boards tbody");
const status = document.getElementById("status");
const form = document.getElementById("filters");
const classFilter = document.getElementById("f-class");
const stateFilter = document.getElementById("f-state");
const mineFilter = document.getElementById("f-mine");

// board name -> {tr, cells, board}
const rows = new Map();
// boards whose rows show a countdown
const counting = new Set();
// rows on the screen: only their countdowns are redrawn every second
const onScreen = new Set();
const watcher = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const name = entry.target.dataset.name;
    if (entry.isIntersecting) {
      onScreen.add(name);
      showLeft(rows.get(name));
    } else {
      onScreen.delete(name);
    }
  }
});

function makeRow(name) {
  const link = el("a", { href: "/boards/" + encodeURIComponent(name) }, name);
  const cells = {
    cls: el("td", { "data-label": "Class" }),
    state: el("td", { "data-label": "State" }),
    holder: el("td", { "data-label": "Holder" }),
    left: el("td", { "data-label": "Time left", className: "left" }),
    power: el("td", { "data-label": "Power" }),
    perr: el("td", { "data-label": "Power error", className: "perr" }),
  };
  const tr = el("tr", { "data-name": name }, el("th", { scope: "row" }, link), ...Object.values(cells));
  watcher.observe(tr);
  return { tr, cells, board: null };
}

function render(board) {
  let row = rows.get(board.name);
  if (!row) {
    row = makeRow(board.name);
    rows.set(board.name, row);
    tbody.append(row.tr);
  }
  row.board = board;
  const attrs = board.attrs || {};
  const { cells, tr } = row;
  cells.cls.textContent = board.class;
  cells.state.replaceChildren(el("span", { className: `state state-${board.state}` }, board.state));
  cells.holder.textContent = board.holder || "";
  cells.power.textContent = attrs.power === undefined ? "" : attrs.power || "unknown";
  cells.perr.textContent = attrs.power_error || "";
  cells.perr.title = attrs.power_error || "";
  tr.dataset.state = board.state;
  tr.dataset.class = board.class;
  tr.classList.toggle("mine", board.holder === me.user);
  if (board.expires_at) {
    counting.add(board.name);
    cells.left.title = `until ${localTime(board.expires_at)}`;
  } else {
    counting.delete(board.name);
    cells.left.title = "";
  }
  showLeft(row);
  applyFilter(row);
}

function applyFilter(row) {
  const board = row.board;
  row.tr.hidden =
    (classFilter.value && board.class !== classFilter.value) ||
    (stateFilter.value && board.state !== stateFilter.value) ||
    (mineFilter.checked && board.holder !== me.user);
}

function countShown() {
  let shown = 0;
  for (const row of rows.values()) {
    if (!row.tr.hidden) shown += 1;
  }
  document.getElementById("board-count").textContent =
    shown === rows.size ? `(${rows.size})` : `(${shown} of ${rows.size} shown)`;
}

// The filters changed: show the rows they let through, and keep them in
// the address.
function applyFilters() {
  for (const row of rows.values()) applyFilter(row);
  countShown();
  const query = new URLSearchParams();
  if (classFilter.value) query.set("class", classFilter.value);
  if (stateFilter.value) query.set("state", stateFilter.value);
  if (mineFilter.checked) query.set("mine", "1");
  const search = query.toString();
  history.replaceState(null, "", location.pathname + (search ? "?" + search : ""));
}

function renderClasses(classes) {
  const body = document.querySelector("#classes tbody");
  const chosen = classFilter.value || new URLSearchParams(location.search).get("class") || "";
  body.replaceChildren(
    ...classes.map((c) =>
      el("tr", {},
        el("th", { scope: "row" }, c.name),
        el("td", { "data-label": "Architecture" }, c.arch || ""),
        el("td", { "data-label": "Free", className: "num" }, String(c.free)),
        el("td", { "data-label": "Total", className: "num" }, String(c.boards)),
      ),
    ),
  );
  classFilter.replaceChildren(
    el("option", { value: "" }, "all"),
    ...classes.map((c) => el("option", { value: c.name }, c.name)),
  );
  classFilter.value = classes.some((c) => c.name === chosen) ? chosen : "";
}

function renderQueue(queue) {
  const table = document.getElementById("queue");
  const entries = queue.queue || [];
  document.getElementById("queue-total").textContent = queue.total ? `(${queue.total} waiting)` : "";
  document.getElementById("queue-empty").textContent = queue.total
    ? "None of the waiting requests is yours."
    : "Nobody is waiting.";
  document.getElementById("queue-empty").hidden = entries.length > 0;
  table.hidden = entries.length === 0;
  table.tBodies[0].replaceChildren(
    ...entries.map((w) =>
      el("tr", {},
        el("td", { "data-label": "Place", className: "num" }, String(w.position)),
        el("td", { "data-label": "User" }, w.user),
        el("td", { "data-label": "For" }, w.target),
        el("td", { "data-label": "Waiting since" }, localTime(w.since)),
        el("td", { "data-label": "Until" }, localTime(w.deadline)),
      ),
    ),
  );
}

// Asking again for what changed.  Boards are asked for at once, each
// request numbered: an answer is shown unless the row already shows a later
// request's (any request sent after an event reflects that event).  Classes
// and the queue are asked for one request at a time, and again right after
// if they changed meanwhile.
let issued = 0;
// board name -> number of the request its row shows
const shownAnswer = new Map();
const changedBoards = { names: new Set(), all: false, since: null, scheduled: false };

function showIfNewer(board, number) {
  if ((shownAnswer.get(board.name) ?? -1) < number) {
    shownAnswer.set(board.name, number);
    render(board);
  }
}

async function refreshBoards() {
  const names = [...changedBoards.names];
  const { all, since } = changedBoards;
  changedBoards.names.clear();
  changedBoards.all = changedBoards.scheduled = false;
  changedBoards.since = null;
  const number = ++issued;
  try {
    if (all || names.length > 20) {
      (await api("GET", "/boards")).boards.forEach((b) => showIfNewer(b, number));
    } else {
      await Promise.all(
        names.map((name) =>
          api("GET", "/boards/" + encodeURIComponent(name)).then(
            (b) => showIfNewer(b, number),
            (error) => {
              if (error.status !== 404) throw error;
            },
          ),
        ),
      );
    }
    // how long a change took from its event to its row
    if (since !== null) performance.measure("bitelab:update", { start: since });
    countShown();
  } catch (error) {
    status.textContent = `Could not refresh: ${error.message}`;
  }
}

class Refresh {
  constructor(work) {
    this.work = work;
    this.busy = false;
    this.again = false;
  }

  request() {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    setTimeout(() => this.run(), 0);
  }

  async run() {
    try {
      await this.work();
    } catch (error) {
      status.textContent = `Could not refresh: ${error.message}`;
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.request();
      }
    }
  }
}

const classRefresh = new Refresh(async () => {
  renderClasses((await api("GET", "/classes")).classes);
});
const queueRefresh = new Refresh(async () => renderQueue(await api("GET", "/queue")));

function changed(event, received) {
  if (event.kind === "position") {
    queueRefresh.request();
    return;
  }
  if (event.kind === "resync") {
    changedBoards.all = true;
  } else if (event.board) {
    changedBoards.names.add(event.board);
  }
  if (["resync", "queued", "granted", "left"].includes(event.kind)) queueRefresh.request();
  if (changedBoards.since === null) changedBoards.since = received;
  if (!changedBoards.scheduled) {
    changedBoards.scheduled = true;
    setTimeout(refreshBoards, 0);
  }
  classRefresh.request();
}

function showLeft(row) {
  if (!row || !row.board) return;
  const text = timeLeft(row.board.expires_at);
  if (row.cells.left.textContent !== text) row.cells.left.textContent = text;
}

function tick() {
  for (const name of onScreen) {
    if (counting.has(name)) showLeft(rows.get(name));
  }
}

async function start() {
  const query = new URLSearchParams(location.search);
  stateFilter.value = query.get("state") || "";
  mineFilter.checked = query.get("mine") === "1";
  try {
    await syncClock();
    const [boards, classes, queue] = await Promise.all([
      api("GET", "/boards"),
      api("GET", "/classes"),
      api("GET", "/queue"),
    ]);
    renderClasses(classes.classes);
    const fragment = document.createDocumentFragment();
    for (const board of boards.boards) {
      const row = makeRow(board.name);
      rows.set(board.name, row);
      fragment.append(row.tr);
    }
    for (const board of boards.boards) render(board);
    tbody.append(fragment);
    applyFilters();
    renderQueue(queue);
    performance.mark("bitelab:lab-rendered");
  } catch (error) {
    status.textContent = `Could not load the lab: ${error.message}`;
    return;
  }
  follow(changed, (text) => {
    status.textContent = text;
  });
  setInterval(tick, 1000);
  form.addEventListener("change", applyFilters);
  form.addEventListener("submit", (event) => event.preventDefault());
}

start();
