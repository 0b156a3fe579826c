// The audit log, for admins: filtered by user and board (kept in the address),
// newest first, older entries a page at a time.

import { api, el, localTime } from "./common.js";

const form = document.getElementById("filters");
const body = document.querySelector("#events tbody");
const status = document.getElementById("status");
const older = document.getElementById("older");
let oldest = null;

function query(before) {
  const params = new URLSearchParams();
  for (const key of ["user", "board", "limit"]) {
    const value = form.elements[key].value.trim();
    if (value) params.set(key, value);
  }
  if (before) params.set("before", String(before));
  return params;
}

async function load(more) {
  const params = query(more ? oldest : null);
  status.textContent = "Loading…";
  try {
    const { events } = await api("GET", "/events?" + params.toString());
    const rows = events.map((e) =>
      el("tr", {},
        el("td", { "data-label": "Time", title: e.time }, localTime(e.time)),
        el("td", { "data-label": "User" }, e.user || ""),
        el("td", { "data-label": "Board" }, e.board || ""),
        el("td", { "data-label": "Action" }, e.action),
        el("td", { "data-label": "Detail" }, e.detail || ""),
        el("td", { "data-label": "Reservation", className: "num" },
          e.reservation === null ? "" : String(e.reservation)),
      ),
    );
    if (more) body.append(...rows);
    else body.replaceChildren(...rows);
    if (events.length) oldest = events[events.length - 1].id;
    older.hidden = events.length < Number(form.elements.limit.value);
    status.textContent = `${body.rows.length} entries shown, newest first.`;
  } catch (error) {
    status.textContent = `Could not load the audit log: ${error.message}`;
  }
}

const start = new URLSearchParams(location.search);
for (const key of ["user", "board", "limit"]) {
  if (start.get(key)) form.elements[key].value = start.get(key);
}
form.addEventListener("submit", (event) => {
  event.preventDefault();
  history.replaceState(null, "", "/audit?" + query(null).toString());
  load(false);
});
older.addEventListener("click", () => load(true));
load(false);
