// The runs page: a filtered, paginated list that follows changes live.
//
// Rows come from GET /api/runs (ListRuns). Changes arrive on /api/stream/runs
// (WatchRuns) as run summaries. The list stream has no resume position, so the
// current page is reloaded every time the stream (re)connects; after that, summaries
// update rows in place (a summary never replaces a newer one: last_seq decides).
//
// The stream is opened without the status filter and statuses are matched here: a run
// that leaves the filter (say "running" -> "completed") must be seen to be removed,
// and the server only sends runs that match the filter it was given.

import {
  api,
  badge,
  el,
  formatDuration,
  formatTime,
  millis,
  runStatus,
  say,
  showAccount,
  trackLive,
} from "./common.js";

const STATUSES = [
  "queued",
  "running",
  "waiting",
  "completed",
  "failed",
  "cancelled",
  "terminated",
  "timed_out",
];

const $ = (id) => document.getElementById(id);
const rowsBody = $("rows");
const message = $("message");

/** run_id -> {summary, tr} for the rows on screen. */
const rows = new Map();
/** page tokens: pages[i] is the token of page i (page 0 has none). */
let pages = [""];
let pageIndex = 0;
let nextToken = "";
let source = null;
let live = null;

function filterFromUrl() {
  const q = new URLSearchParams(location.search);
  return {
    statuses: (q.get("status") || "").split(",").filter((s) => STATUSES.includes(s)),
    workflow: q.get("workflow") || "",
    createdAfter: q.get("created_after") || "",
    createdBefore: q.get("created_before") || "",
    pageSize: Number(q.get("page_size")) || 50,
  };
}

let filter = filterFromUrl();

function filterQuery({ withStatus = true } = {}) {
  const q = new URLSearchParams();
  if (withStatus && filter.statuses.length) q.set("status", filter.statuses.join(","));
  if (filter.workflow) q.set("workflow", filter.workflow);
  if (filter.createdAfter) q.set("created_after", filter.createdAfter);
  if (filter.createdBefore) q.set("created_before", filter.createdBefore);
  return q;
}

// datetime-local inputs hold local wall-clock time; the URL and API hold ISO 8601 UTC.
function toIso(local) {
  if (!local) return "";
  const ms = Date.parse(local);
  return Number.isNaN(ms) ? local : new Date(ms).toISOString();
}
function toLocalInput(iso) {
  const ms = millis(iso);
  if (ms === null) return "";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` +
    `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

function buildForm() {
  const boxes = $("status-boxes");
  for (const status of STATUSES) {
    const box = el("input", { type: "checkbox", name: "status", value: status });
    box.checked = filter.statuses.includes(status);
    boxes.append(el("label", { class: "check" }, box, ` ${status.replace("_", " ")}`));
  }
  $("f-workflow").value = filter.workflow;
  $("f-after").value = toLocalInput(filter.createdAfter);
  $("f-before").value = toLocalInput(filter.createdBefore);
  $("f-size").value = String(filter.pageSize);
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    filter = {
      statuses: [...document.querySelectorAll("input[name=status]:checked")].map((b) => b.value),
      workflow: $("f-workflow").value.trim(),
      createdAfter: toIso($("f-after").value),
      createdBefore: toIso($("f-before").value),
      pageSize: Number($("f-size").value) || 50,
    };
    const q = filterQuery();
    if (filter.pageSize !== 50) q.set("page_size", String(filter.pageSize));
    history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
    restart();
  });
  $("reset").addEventListener("click", () => {
    history.replaceState(null, "", "/");
    location.reload();
  });
  $("older").addEventListener("click", () => {
    if (!nextToken) return;
    pages = pages.slice(0, pageIndex + 1);
    pages.push(nextToken);
    pageIndex += 1;
    loadPage();
  });
  $("newer").addEventListener("click", () => {
    if (pageIndex === 0) return;
    pageIndex -= 1;
    loadPage();
  });
}

function durationOf(summary) {
  const start = millis(summary.create_time);
  if (start === null) return "—";
  const end = millis(summary.finish_time) ?? Date.now();
  return formatDuration(end - start);
}

function renderRow(summary) {
  const word = runStatus(summary.status);
  const href = `/run?run_id=${encodeURIComponent(summary.run_id)}`;
  return el(
    "tr",
    { dataset: { runId: summary.run_id, status: word } },
    el("td", { class: "mono" }, el("a", { href, text: summary.run_id })),
    el("td", { text: summary.workflow_name || "—" }),
    el("td", {}, badge(word)),
    el("td", { class: "nowrap", text: formatTime(summary.create_time) }),
    el("td", { class: "nowrap duration", text: durationOf(summary) }),
    el("td", { class: "nowrap", text: formatTime(summary.update_time) }),
    el("td", { class: "error-text", text: summary.error_message || "" }),
  );
}

function updateChrome() {
  $("empty").hidden = rows.size > 0;
  $("newer").disabled = pageIndex === 0;
  $("older").disabled = !nextToken;
  $("page-label").textContent = `page ${pageIndex + 1}`;
}

async function loadPage() {
  const q = filterQuery();
  q.set("page_size", String(filter.pageSize));
  if (pages[pageIndex]) q.set("page_token", pages[pageIndex]);
  let page;
  try {
    page = await api(`/api/runs?${q}`);
  } catch (err) {
    say(message, "error", String(err));
    return;
  }
  message.replaceChildren();
  rows.clear();
  const trs = [];
  for (const summary of page.runs || []) {
    const tr = renderRow(summary);
    rows.set(summary.run_id, { summary, tr });
    trs.push(tr);
  }
  rowsBody.replaceChildren(...trs);
  nextToken = page.next_page_token || "";
  updateChrome();
}

function matches(summary) {
  return filter.statuses.length === 0 || filter.statuses.includes(runStatus(summary.status).replace(" ", "_"));
}

function onRun(summary) {
  const known = rows.get(summary.run_id);
  if (known && Number(summary.last_seq || 0) < Number(known.summary.last_seq || 0)) return;
  if (known) {
    if (!matches(summary)) {
      known.tr.remove();
      rows.delete(summary.run_id);
    } else {
      const tr = renderRow(summary);
      known.tr.replaceWith(tr);
      rows.set(summary.run_id, { summary, tr });
    }
    updateChrome();
    return;
  }
  // Only the first page takes in runs it has not shown, and only where they sort
  // (newest first): a change to an older run belongs to a later page.
  if (!matches(summary) || pageIndex !== 0) return;
  const created = millis(summary.create_time) ?? 0;
  const onPage = [...rows.values()];
  const full = onPage.length >= filter.pageSize;
  const before = onPage.find((r) => (millis(r.summary.create_time) ?? 0) < created);
  if (!before && full) return;
  const tr = renderRow(summary);
  if (before) rowsBody.insertBefore(tr, before.tr);
  else rowsBody.append(tr);
  rows.set(summary.run_id, { summary, tr });
  if (rows.size > filter.pageSize) {
    const last = rowsBody.lastElementChild;
    rows.delete(last.dataset.runId);
    last.remove();
    if (!nextToken) loadPage(); // the page now has an older neighbour: fetch its token
  }
  updateChrome();
}

function connect() {
  if (source) source.close();
  const q = filterQuery({ withStatus: false });
  source = new EventSource(`/api/stream/runs?${q}`);
  live = trackLive($("live"), source);
  source.addEventListener("open", () => loadPage());
  source.addEventListener("run", (event) => onRun(JSON.parse(event.data)));
  source.addEventListener("error", (event) => {
    if (!event.data) {
      // Refused outright (a bad filter, no credentials): the browser gives up, so load
      // the page once to show the API's own message.
      if (source.readyState === EventSource.CLOSED) loadPage();
      return; // otherwise a dropped connection: the browser reconnects by itself
    }
    const body = JSON.parse(event.data);
    say(message, "error", `${body.error.code}: ${body.error.message}`);
    source.close();
    live.done("stopped");
  });
}

function restart() {
  pages = [""];
  pageIndex = 0;
  nextToken = "";
  connect();
}

// Durations of unfinished runs grow while the page is open.
setInterval(() => {
  for (const { summary, tr } of rows.values()) {
    if (!summary.finish_time) tr.querySelector(".duration").textContent = durationOf(summary);
  }
}, 1000);

buildForm();
updateChrome();
showAccount();
connect();
