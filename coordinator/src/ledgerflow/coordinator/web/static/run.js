// The run page: one run's snapshot, followed live, with its logs, ledger and actions.
//
// GET /api/run gives the snapshot now (and a clear 404); /api/stream/run (WatchRun)
// then sends each newer snapshot, resuming after the last seq on reconnect; it says
// "end" once the run is over. /api/stream/logs (TailLogs, follow) appends log lines
// the same way. Ledger events are fetched page by page whenever the snapshot shows
// seqs not loaded yet. Cancel and signal POST to the API and show its answer or error.

import {
  api,
  badge,
  durationMillis,
  el,
  enumWord,
  formatDuration,
  formatTime,
  isTerminal,
  jsonBlock,
  millis,
  payloadText,
  runStatus,
  say,
  showAccount,
  stepStatus,
  trackLive,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const runId = new URLSearchParams(location.search).get("run_id") || "";
const runQuery = `run_id=${encodeURIComponent(runId)}`;

const MAX_LOG_LINES = 2000; // kept on screen; the full log is one click away
const AUTO_EVENTS = 1000; // loaded without asking; more on "Load more"
const ENVELOPE = new Set(["run_id", "seq", "event_time", "source"]);

let snapshot = null;
let eventsThrough = 0;
let eventsLoading = false;
let eventsMore = false;
let inputShown = false;

// -- overview -----------------------------------------------------------------------

function fact(term, ...value) {
  return [el("dt", { text: term }), el("dd", {}, ...value)];
}

function renderOverview(snap) {
  const word = runStatus(snap.status);
  document.title = `${snap.run_id} · ledgerflow`;
  $("run-id").textContent = snap.run_id;
  const start = millis(snap.start_time);
  const finish = millis(snap.finish_time);
  let duration = "—";
  if (snap.duration) duration = formatDuration(durationMillis(snap.duration));
  else if (start !== null && !isTerminal(snap.status)) duration = `${formatDuration(Date.now() - start)} so far`;
  const facts = [
    ...fact("Status", badge(word)),
    ...fact("Workflow", snap.workflow_name || "—", snap.workflow_version ? ` (${snap.workflow_version})` : ""),
    ...fact("Created", formatTime(snap.create_time)),
    ...fact("Started", formatTime(snap.start_time)),
    ...fact("Finished", finish === null ? "—" : formatTime(snap.finish_time)),
    ...fact("Duration", el("span", { id: "run-duration", text: duration })),
    ...fact("Updated", formatTime(snap.update_time)),
    ...fact("Last seq", snap.last_seq || "0"),
  ];
  if (snap.active_step_id) facts.push(...fact("Active step", snap.active_step_id));
  if (snap.deadline_time) facts.push(...fact("Deadline", formatTime(snap.deadline_time)));
  if ((snap.tags || []).length) facts.push(...fact("Tags", snap.tags.join(", ")));
  if (snap.parent_run_id) {
    const href = `/run?run_id=${encodeURIComponent(snap.parent_run_id)}`;
    facts.push(...fact("Parent run", el("a", { href, text: snap.parent_run_id })));
  }
  if (snap.idempotency_key) facts.push(...fact("Idempotency key", snap.idempotency_key));
  if (snap.cancel_requested) {
    facts.push(
      ...fact("Cancel", el("span", { id: "cancel-requested", text: `requested${snap.cancel_reason ? `: ${snap.cancel_reason}` : ""}` })),
    );
  }
  $("facts").replaceChildren(...facts);
  const over = isTerminal(snap.status);
  for (const id of ["cancel-button", "signal-button"]) $(id).classList.toggle("faded", over);
}

function renderError(snap) {
  const error = snap.error;
  const section = $("error-section");
  if (!error || (!error.message && !error.type)) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  const parts = [el("p", { class: "error-text" }, el("strong", { text: error.type || "Error" }), `: ${error.message || ""}`)];
  if (error.stack_trace) parts.push(el("pre", { class: "stack" }, error.stack_trace));
  if (error.details) parts.push(jsonBlock(payloadText(error.details)));
  $("error").replaceChildren(...parts);
}

// -- steps timeline -----------------------------------------------------------------

function stepEnd(step, now) {
  return millis(step.completion_time) ?? (step.status === "STEP_STATUS_RUNNING" ? now : millis(step.update_time));
}

function renderSteps(snap) {
  const ids = snap.ordered_step_ids || [];
  const steps = snap.steps || {};
  if (!ids.length) {
    $("steps").replaceChildren(el("p", { class: "muted", text: "No steps yet." }));
    return;
  }
  const now = Date.now();
  const t0 = millis(snap.start_time) ?? millis(snap.create_time) ?? now;
  let t1 = millis(snap.finish_time) ?? now;
  for (const id of ids) t1 = Math.max(t1, stepEnd(steps[id] || {}, now) ?? t1);
  const span = Math.max(t1 - t0, 1);
  const rows = ids.map((id) => {
    const step = steps[id] || { step_id: id };
    const word = stepStatus(step.status);
    const begin = millis(step.start_time);
    const end = stepEnd(step, now);
    const bar = el("div", { class: `bar status-${word.replace(/ /g, "-")}` });
    let duration = "—";
    if (begin !== null && end !== null) {
      bar.style.left = `${((begin - t0) / span) * 100}%`;
      bar.style.width = `${Math.max(((end - begin) / span) * 100, 0.5)}%`;
      duration = formatDuration(end - begin);
    } else bar.hidden = true;
    const cells = [
      el("div", { class: "step-name" }, el("span", { class: "name", text: step.label || id }), step.label && step.label !== id ? el("span", { class: "muted mono small", text: ` ${id}` }) : null),
      el("div", { class: "step-state" }, badge(word)),
      el("div", { class: "step-attempt", text: step.attempt > 1 ? `attempt ${step.attempt}` : step.attempt ? "1 attempt" : "" }),
      el("div", { class: "step-duration", text: duration }),
      el("div", { class: "track" }, bar),
    ];
    const row = el("div", { class: "step", dataset: { stepId: id, status: word } }, ...cells);
    const details = [];
    const progress = step.progress;
    if (progress && (progress.total || progress.completed || progress.message)) {
      const done = Number(progress.completed || 0);
      const total = Number(progress.total || 0);
      const meter = el("progress", { max: String(total || 1), value: String(total ? Math.min(done, total) : 0) });
      const label = total ? `${done}/${total}` : `${done}`;
      details.push(
        el("div", { class: "progress" }, meter, ` ${label}`, progress.failed ? ` (${progress.failed} failed)` : "", progress.message ? ` — ${progress.message}` : ""),
      );
    }
    if (step.error && step.error.message) {
      details.push(el("div", { class: "error-text small" }, `${step.error.type ? `${step.error.type}: ` : ""}${step.error.message}`));
    }
    if (step.next_attempt_time) details.push(el("div", { class: "small muted", text: `next attempt ${formatTime(step.next_attempt_time)}` }));
    if (step.worker_kind) details.push(el("div", { class: "small muted", text: `worker kind ${step.worker_kind}` }));
    if (details.length) row.append(el("div", { class: "step-details" }, ...details));
    return row;
  });
  $("steps").replaceChildren(...rows);
}

// -- waitpoints, compensation, checkpoints -------------------------------------------

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted", text: empty });
  return el(
    "table",
    { class: "plain" },
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c))))),
  );
}

function renderWaitpoints(snap) {
  const rows = (snap.open_waitpoints || []).map((w) => [
    w.waitpoint_id,
    enumWord(w.kind, "WAITPOINT_KIND_"),
    w.name || "—",
    w.deadline_time ? formatTime(w.deadline_time) : "never",
    formatTime(w.register_time),
  ]);
  $("waitpoints").replaceChildren(table(["Waitpoint", "Kind", "Waits for", "Deadline", "Registered"], rows, "None open."));
}

function renderCompensation(snap) {
  const parts = [];
  if (snap.compensation) parts.push(el("p", {}, "Outcome: ", badge(enumWord(snap.compensation, "COMPENSATION_OUTCOME_"))));
  const rows = (snap.compensations || []).map((c) => [
    c.step_id,
    badge(enumWord(c.status, "COMPENSATION_STATUS_")),
    formatTime(c.start_time),
    formatTime(c.finish_time),
    c.error && c.error.message ? `${c.error.type ? `${c.error.type}: ` : ""}${c.error.message}` : "",
  ]);
  parts.push(table(["Step", "Compensation", "Started", "Finished", "Error"], rows, "No compensations ran."));
  $("compensation").replaceChildren(...parts);
}

function renderCheckpoints(snap) {
  const steps = snap.steps || {};
  const rows = [];
  for (const id of snap.ordered_step_ids || []) {
    const step = steps[id];
    const cp = step && step.last_checkpoint;
    if (!cp) continue;
    const detail = [];
    if ((cp.lines || []).length) detail.push(el("pre", { class: "log-lines" }, cp.lines.join("\n")));
    const payload = payloadText(cp.payload);
    if (payload !== null) detail.push(el("pre", { class: "json" }, payload));
    rows.push([
      id,
      enumWord(cp.type, "CHECKPOINT_TYPE_"),
      cp.summary || "",
      String(step.checkpoint_count || 1),
      detail.length ? el("details", {}, el("summary", { text: "show" }), ...detail) : "",
    ]);
  }
  $("checkpoints").replaceChildren(table(["Step", "Type", "Latest summary", "Count", "Detail"], rows, "No checkpoints."));
}

function renderPayloads(snap) {
  const result = payloadText(snap.result);
  const summary = payloadText(snap.result_summary);
  const parts = [jsonBlock(result, isTerminal(snap.status) ? "No result." : "Not finished.")];
  if (summary !== null) parts.push(el("h3", { text: "Summary" }), jsonBlock(summary));
  $("result").replaceChildren(...parts);
  const metadata = snap.metadata && Object.keys(snap.metadata).length ? JSON.stringify(snap.metadata, null, 2) : null;
  $("metadata").replaceChildren(jsonBlock(metadata, "None."));
}

function render(snap) {
  if (snapshot && Number(snap.last_seq || 0) < Number(snapshot.last_seq || 0)) return;
  snapshot = snap;
  renderOverview(snap);
  renderError(snap);
  renderSteps(snap);
  renderWaitpoints(snap);
  renderCompensation(snap);
  renderCheckpoints(snap);
  renderPayloads(snap);
  $("log-count").textContent = `(${snap.total_log_count || 0} line${Number(snap.total_log_count) === 1 ? "" : "s"}${snap.logs_truncated ? ", stored log truncated" : ""})`;
  loadEvents();
}

// -- ledger events ------------------------------------------------------------------

function eventType(event) {
  return Object.keys(event).find((key) => !ENVELOPE.has(key)) || "unknown";
}

function eventRow(event) {
  const type = eventType(event);
  const body = JSON.stringify(event[type] ?? {});
  const payload =
    body.length > 100
      ? el("details", {}, el("summary", { class: "mono", text: `${body.slice(0, 100)}…` }), el("pre", { class: "json" }, JSON.stringify(event[type], null, 2)))
      : el("code", { text: body });
  return el(
    "tr",
    { dataset: { seq: event.seq, type } },
    el("td", { class: "mono", text: event.seq }),
    el("td", { class: "nowrap", text: formatTime(event.event_time) }),
    el("td", { text: enumWord(event.source, "EVENT_SOURCE_") }),
    el("td", { class: "mono", text: type }),
    el("td", {}, payload),
  );
}

function showInput(event) {
  if (inputShown || !event.run_created) return;
  inputShown = true;
  $("input").replaceChildren(jsonBlock(payloadText(event.run_created.input), "No input."));
}

async function loadEvents({ more = false } = {}) {
  if (eventsLoading) return;
  if (!more && eventsThrough >= AUTO_EVENTS) {
    $("more-events").hidden = !(snapshot && Number(snapshot.last_seq) > eventsThrough);
    return;
  }
  eventsLoading = true;
  try {
    do {
      const page = await api(`/api/events?${runQuery}&after_seq=${eventsThrough}&page_size=200`);
      const events = page.events || [];
      for (const event of events) showInput(event);
      $("events").append(...events.map(eventRow));
      if (events.length) eventsThrough = Number(events[events.length - 1].seq);
      eventsMore = Boolean(page.has_more);
    } while (eventsMore && (more || eventsThrough < AUTO_EVENTS));
  } catch (err) {
    say($("message"), "error", `loading ledger events: ${err}`);
  } finally {
    eventsLoading = false;
  }
  $("event-count").textContent = `(${eventsThrough} loaded)`;
  // A snapshot may have arrived while a page was loading: catch up with it.
  if (snapshot && Number(snapshot.last_seq) > eventsThrough && eventsThrough < AUTO_EVENTS && !more) {
    loadEvents();
  }
  $("more-events").hidden = !(snapshot && Number(snapshot.last_seq) > eventsThrough);
}

// -- logs ---------------------------------------------------------------------------

function appendLogLines(lines) {
  const box = $("logs");
  const follow = $("follow").checked;
  box.append(
    ...lines.map((line) =>
      el(
        "div",
        { class: line.marker ? "line marker" : "line", dataset: { seq: line.seq } },
        el("span", { class: "seq", text: line.seq }),
        el("span", { class: "channel", text: line.channel || "" }),
        el("span", { class: "text", text: line.text ?? "" }),
      ),
    ),
  );
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (follow) box.scrollTop = box.scrollHeight;
}

function followLogs(snap) {
  const total = Number(snap.total_log_count || 0);
  const from = Math.max(1, total - 199);
  const source = new EventSource(`/api/stream/logs?${runQuery}&from_seq=${from}`);
  source.addEventListener("logs", (event) => appendLogLines(JSON.parse(event.data)));
  source.addEventListener("end", () => source.close());
  source.addEventListener("error", (event) => {
    if (!event.data) return;
    say($("message"), "error", `log stream: ${JSON.parse(event.data).error.message}`);
    source.close();
  });
}

// -- live snapshot ----------------------------------------------------------------

function followRun(snap) {
  const source = new EventSource(`/api/stream/run?${runQuery}&after_seq=${snap.last_seq || 0}`);
  const live = trackLive($("live"), source);
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  source.addEventListener("end", () => {
    source.close();
    live.done(`run ${runStatus(snapshot.status)}`);
  });
  source.addEventListener("error", (event) => {
    if (!event.data) {
      // Refused outright (say, the session ended): asking who we are shows the sign-in
      // form on a 401. Otherwise a dropped connection: the browser reconnects by itself.
      if (source.readyState === EventSource.CLOSED) showAccount();
      return;
    }
    say($("message"), "error", JSON.parse(event.data).error.message);
    source.close();
    live.done("stopped");
  });
}

// -- actions ------------------------------------------------------------------------

function setupActions() {
  const area = $("action-message");
  $("cancel-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await api("/api/cancel", {
        method: "POST",
        body: { run_id: runId, reason: $("cancel-reason").value },
      });
      say(area, "ok", answer.already_requested ? "Cancellation was already requested." : `Cancellation requested (seq ${answer.seq}).`);
    } catch (err) {
      say(area, "error", String(err));
    }
  });
  $("signal-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await api("/api/signal", {
        method: "POST",
        body: {
          run_id: runId,
          signal_name: $("signal-name").value,
          payload_text: $("signal-payload").value,
          request_id: $("signal-request-id").value,
        },
      });
      say(area, "ok", answer.duplicate ? "Signal was already sent with this request id." : `Signal sent (seq ${answer.seq}).`);
    } catch (err) {
      say(area, "error", String(err));
    }
  });
}

// -- start --------------------------------------------------------------------------

async function main() {
  $("full-logs").href = `/api/logs?${runQuery}`;
  $("run-id").textContent = runId;
  $("more-events").addEventListener("click", () => loadEvents({ more: true }));
  setupActions();
  showAccount();
  let snap;
  try {
    snap = (await api(`/api/run?${runQuery}`)).run;
  } catch (err) {
    say($("message"), "error", String(err));
    $("live").className = "live live-off";
    $("live").textContent = err.status === 404 ? "not found" : "stopped";
    return;
  }
  render(snap);
  followRun(snap);
  followLogs(snap);
  // Elapsed times of a run in progress grow while the page is open.
  setInterval(() => {
    if (snapshot && !isTerminal(snapshot.status)) {
      renderOverview(snapshot);
      renderSteps(snapshot);
    }
  }, 1000);
}

main();
