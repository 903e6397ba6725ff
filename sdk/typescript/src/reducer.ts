/**
 * The snapshot reducer: a pure fold of a run's ledger into its live snapshot.
 *
 * A port of the Python reducer (`ledgerflow.ledger._reducer`, itself a port of the reference
 * `reducePlayRunLedgerEvent`), with the same rules and the same documented deviations
 * (`docs/ledger.md`): status normalisation and the terminal set; terminal precedence (the first
 * terminal event wins, a conflicting one is ignored and recorded as one anomaly log line, except
 * that a failure demotes `completed`); steps in first-seen order with sticky final failures,
 * `RETRYING` for failures that will be retried, field-wise progress merge and completion
 * inference; `activeStepId` as the last still-running step; a 100-line log tail with a
 * monotonic `totalLogCount` pinned by `firstSeq`; timing derived from the first start and finish.
 *
 * Clients that fold `GetEvents` pages themselves use it; the coordinator's stored snapshot is
 * the same fold (`tests/vectors/ledgers.json` pins both SDKs to it).
 *
 * @module
 */
import { clone, create } from "@bufbuild/protobuf";
import { type Value, ValueSchema, ListValueSchema } from "@bufbuild/protobuf/wkt";

import { ErrorInfoSchema } from "./gen/ledgerflow/v1/common_pb.js";
import {
  type CheckpointRecorded,
  CheckpointRecordedSchema,
  CompensationStatus,
  type CompensationSnapshot,
  CompensationSnapshotSchema,
  CompensationOutcome,
  type LedgerEvent,
  MetadataOp,
  type MetadataMutation,
  MetadataTarget,
  RunStatus,
  type RunSnapshot,
  RunSnapshotSchema,
  StepProgressSchema,
  type StepSnapshot,
  StepSnapshotSchema,
  StepStatus,
  WaitpointSnapshotSchema,
} from "./gen/ledgerflow/v1/ledger_pb.js";
import { isTerminal, STATUS_WORDS } from "./status.js";
import { durationFromNanos, durationNanos, timestampFromNanos, toNanos } from "./time.js";

/** How many log lines a snapshot keeps in `logTail`. */
export const LOG_TAIL_LIMIT = 100;

type Payload = LedgerEvent["payload"];
type Case = NonNullable<Payload["case"]>;
type Handler = (snap: RunSnapshot, payload: Payload, occurred: bigint) => void;
type TerminalCase = "runCompleted" | "runFailed" | "runCancelled" | "runTimedOut" | "runTerminated";

const TERMINAL_BY_CASE: Readonly<Record<TerminalCase, RunStatus>> = {
  runCompleted: RunStatus.COMPLETED,
  runFailed: RunStatus.FAILED,
  runCancelled: RunStatus.CANCELLED,
  runTimedOut: RunStatus.TIMED_OUT,
  runTerminated: RunStatus.TERMINATED,
};

// Anomaly lines name events as the reference does, so snapshots of bridged reference
// ledgers are identical to the reference's.
const ANOMALY_EVENT_NAMES: Readonly<Record<TerminalCase, string>> = {
  runCompleted: "run.completed",
  runFailed: "run.failed",
  runCancelled: "run.cancelled",
  runTimedOut: "run.timed_out",
  runTerminated: "run.terminated",
};

const FINAL_STEP_STATUSES = new Set([StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED]);

/**
 * Returns the snapshot of a run before any event: status `UNKNOWN`, nothing else set.
 *
 * @param runId - The run's id; events for other runs are ignored by the fold.
 */
export function emptySnapshot(runId: string): RunSnapshot {
  return create(RunSnapshotSchema, { runId, status: RunStatus.UNKNOWN });
}

/**
 * Folds events, in ledger order, into a snapshot.
 *
 * @param snapshot - The snapshot so far; not modified.
 * @param events - The events, in ledger order.
 * @returns A new snapshot.
 */
export function reduceEvents(snapshot: RunSnapshot, events: Iterable<LedgerEvent>): RunSnapshot {
  const out = clone(RunSnapshotSchema, snapshot);
  for (const event of events) applyEvent(out, event);
  return out;
}

/**
 * Folds one event into a snapshot.
 *
 * @param snapshot - The snapshot so far; not modified.
 * @param event - The next event of the run's ledger.
 * @returns A new snapshot; an event for another run leaves it equal to `snapshot`.
 */
export function reduce(snapshot: RunSnapshot, event: LedgerEvent): RunSnapshot {
  return reduceEvents(snapshot, [event]);
}

/**
 * Folds one event into `snap` in place: the allocation-free form of {@link reduce}.
 *
 * @param snap - The snapshot to update.
 * @param event - The next event of the run's ledger.
 */
export function applyEvent(snap: RunSnapshot, event: LedgerEvent): void {
  if (event.runId !== snap.runId) return;
  const occurred = max(0n, event.eventTime ? toNanos(event.eventTime) : 0n);
  const updated = snap.updateTime ? toNanos(snap.updateTime) : 0n;
  snap.updateTime = timestampFromNanos(max(updated, occurred));
  if (event.seq > snap.lastSeq) snap.lastSeq = event.seq;
  const kind = event.payload.case;
  if (kind === undefined) return;
  HANDLERS[kind](snap, event.payload, occurred);
  withTiming(snap);
}

// -- helpers ---------------------------------------------------------------------------------

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

function appendLogLines(
  snap: RunSnapshot,
  lines: readonly string[],
  firstSeq?: bigint,
  extraCount = 0n,
  truncated = false,
): void {
  // The reducer trusts ingestion: every non-blank line counts, repeats included.
  const kept = lines.map((line) => line.trim()).filter((line) => line !== "");
  const count = BigInt(kept.length);
  if (firstSeq !== undefined && firstSeq > 0n) {
    snap.totalLogCount = max(snap.totalLogCount, firstSeq + count + extraCount - 1n);
  } else {
    snap.totalLogCount += count + extraCount;
  }
  if (kept.length > 0) {
    snap.logTail.push(...kept);
    if (snap.logTail.length > LOG_TAIL_LIMIT) {
      snap.logTail.splice(0, snap.logTail.length - LOG_TAIL_LIMIT);
    }
  }
  if (truncated) snap.logsTruncated = true;
}

function withTiming(snap: RunSnapshot): void {
  if (snap.startTime && snap.finishTime) {
    snap.duration = durationFromNanos(max(0n, toNanos(snap.finishTime) - toNanos(snap.startTime)));
  } else {
    snap.duration = undefined;
  }
  if (isTerminal(snap.status) && snap.resultNamespace === undefined) {
    for (let i = snap.orderedStepIds.length - 1; i >= 0; i--) {
      const step = snap.steps[snap.orderedStepIds[i]!];
      // Blank namespaces do not count, as in the reference's `namespace?.trim()`.
      if (step?.artifactNamespace !== undefined && step.artifactNamespace.trim() !== "") {
        snap.resultNamespace = step.artifactNamespace;
        break;
      }
    }
  }
}

function clearActive(snap: RunSnapshot): void {
  snap.activeStepId = undefined;
  snap.activeArtifactNamespace = undefined;
}

function setActive(snap: RunSnapshot, stepId: string | undefined): void {
  if (stepId === undefined) {
    clearActive(snap);
    return;
  }
  snap.activeStepId = stepId;
  snap.activeArtifactNamespace = snap.steps[stepId]?.artifactNamespace;
}

/** Returns the step to update (created with `status` if new) and its status before. */
function getStep(
  snap: RunSnapshot,
  stepId: string,
  status: StepStatus,
): [StepSnapshot, StepStatus | undefined] {
  const existing = snap.steps[stepId];
  if (existing !== undefined) return [existing, existing.status];
  const step = create(StepSnapshotSchema, {
    stepId,
    firstSeenIndex: snap.orderedStepIds.length,
  });
  snap.steps[stepId] = step;
  snap.orderedStepIds.push(stepId);
  setStatus(snap, step, status);
  return [step, undefined];
}

/**
 * Sets a step's status, keeping `runningStepIds` in first-seen order: finding the active step
 * then costs O(running steps), not a scan of every step, which matters for long runs.
 */
function setStatus(snap: RunSnapshot, step: StepSnapshot, status: StepStatus): void {
  const wasRunning = step.status === StepStatus.RUNNING;
  step.status = status;
  if (wasRunning === (status === StepStatus.RUNNING)) return;
  const running = snap.runningStepIds;
  if (wasRunning) {
    running.splice(running.indexOf(step.stepId), 1);
    return;
  }
  let pos = running.length;
  while (pos > 0 && snap.steps[running[pos - 1]!]!.firstSeenIndex > step.firstSeenIndex) pos--;
  running.splice(pos, 0, step.stepId);
}

function copyLabelKind(step: StepSnapshot, e: { label?: string; kind?: string }): void {
  if (e.label !== undefined) step.label = e.label;
  if (e.kind !== undefined) step.kind = e.kind;
}

// -- run events ------------------------------------------------------------------------------

function onRunCreated(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "runCreated") return;
  const e = payload.value;
  if (e.workflowName !== undefined) snap.workflowName = e.workflowName;
  if (e.workflowVersion) snap.workflowVersion = e.workflowVersion;
  // Deviation 1: a creation never revives a terminal run.
  if (e.status !== RunStatus.UNSPECIFIED && !isTerminal(snap.status)) snap.status = e.status;
  snap.createTime ??= timestampFromNanos(occurred);
  if (e.tags.length > 0) snap.tags = [...e.tags];
  if (e.parentRunId) snap.parentRunId = e.parentRunId;
  if (e.idempotencyKey) snap.idempotencyKey = e.idempotencyKey;
  if (e.namespace) snap.namespace = e.namespace;
  if (e.executionTimeout) {
    snap.deadlineTime = timestampFromNanos(
      toNanos(snap.createTime) + durationNanos(e.executionTimeout),
    );
  }
}

function onRunStarted(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "runStarted") return;
  if (payload.value.workflowName !== undefined) snap.workflowName = payload.value.workflowName;
  if (!isTerminal(snap.status)) snap.status = RunStatus.RUNNING;
  snap.startTime ??= timestampFromNanos(occurred);
}

function onRunWaiting(snap: RunSnapshot): void {
  if (!isTerminal(snap.status)) snap.status = RunStatus.WAITING;
}

/**
 * Applies terminal precedence; returns true when the event must be ignored. The same terminal
 * status again is benign; a different one is ignored and recorded as one anomaly line, except
 * `runFailed` on a completed run (post-completion accounting may fail a run).
 */
function conflicts(snap: RunSnapshot, kind: TerminalCase): boolean {
  if (!isTerminal(snap.status)) return false;
  if (TERMINAL_BY_CASE[kind] === snap.status) return false;
  if (snap.status === RunStatus.COMPLETED && kind === "runFailed") return false;
  appendLogLines(snap, [
    `[ledger] conflicting terminal event ${ANOMALY_EVENT_NAMES[kind]} ignored; ` +
      `status already ${STATUS_WORDS[snap.status]}`,
  ]);
  return true;
}

function onRunEnded(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  const kind = payload.case as TerminalCase;
  if (conflicts(snap, kind)) return;
  snap.status = TERMINAL_BY_CASE[kind];
  snap.startTime ??= timestampFromNanos(occurred);
  snap.finishTime ??= timestampFromNanos(occurred);
  clearActive(snap);
  // A run that ended waits on nothing: its pending timers and waits are discarded.
  snap.openWaitpoints = [];
  switch (payload.case) {
    case "runCompleted":
      snap.error = undefined;
      if (payload.value.resultSummary) snap.resultSummary = payload.value.resultSummary;
      break;
    case "runTerminated":
      snap.error = create(ErrorInfoSchema, {
        message: payload.value.reason || "terminated",
        type: "Terminated",
      });
      break;
    case "runFailed":
    case "runCancelled":
    case "runTimedOut":
      // An ended event without an error keeps the one already recorded.
      if (payload.value.error) snap.error = payload.value.error;
      if (payload.value.compensation !== CompensationOutcome.UNSPECIFIED) {
        snap.compensation = payload.value.compensation;
      }
      break;
    default:
      return;
  }
  if (payload.value.result) snap.result = payload.value.result;
}

// -- step events -----------------------------------------------------------------------------

function onStepScheduled(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "stepScheduled") return;
  const e = payload.value;
  const [step, before] = getStep(snap, e.stepId, StepStatus.SCHEDULED);
  if (before === StepStatus.RETRYING || before === StepStatus.SCHEDULED) {
    setStatus(snap, step, StepStatus.SCHEDULED);
  }
  if (e.workerKind) step.workerKind = e.workerKind;
  if (e.attempt > 0) step.attempt = e.attempt;
  step.updateTime = timestampFromNanos(occurred);
}

function onStepStarted(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "stepStarted") return;
  const e = payload.value;
  const [step, before] = getStep(snap, e.stepId, StepStatus.RUNNING);
  copyLabelKind(step, e);
  if (before !== StepStatus.FAILED && before !== StepStatus.COMPLETED) {
    setStatus(snap, step, StepStatus.RUNNING);
  }
  if (e.artifactNamespace !== undefined) step.artifactNamespace = e.artifactNamespace;
  step.startTime ??= timestampFromNanos(occurred);
  step.updateTime = timestampFromNanos(occurred);
  if (e.attempt > 0) step.attempt = e.attempt;
  step.nextAttemptTime = undefined;

  if (!isTerminal(snap.status)) snap.status = RunStatus.RUNNING;
  snap.startTime ??= timestampFromNanos(occurred);
  if (step.status === StepStatus.RUNNING) setActive(snap, e.stepId);
}

const PROGRESS_SCALARS = ["completed", "total", "failed", "message", "artifactNamespace"] as const;
const PROGRESS_TIMES = ["startTime", "completionTime", "updateTime"] as const;

function onStepProgress(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "stepProgress") return;
  const e = payload.value;
  const incoming = e.progress ?? create(StepProgressSchema);
  const before = snap.steps[e.stepId];

  const progress = before?.progress
    ? clone(StepProgressSchema, before.progress)
    : create(StepProgressSchema);
  // Field-wise merge: a field present in the event replaces the snapshot's.
  for (const name of PROGRESS_SCALARS) {
    if (incoming[name] !== undefined) (progress as Record<string, unknown>)[name] = incoming[name];
  }
  for (const name of PROGRESS_TIMES) {
    if (incoming[name] !== undefined) progress[name] = incoming[name];
  }
  if (incoming.updateTime === undefined) progress.updateTime = timestampFromNanos(occurred);

  const inferred =
    progress.completionTime !== undefined ||
    (progress.total !== undefined &&
      progress.completed !== undefined &&
      progress.total > 0n &&
      progress.completed >= progress.total)
      ? StepStatus.COMPLETED
      : StepStatus.RUNNING;
  let status: StepStatus;
  if (before !== undefined && FINAL_STEP_STATUSES.has(before.status)) status = before.status;
  else if (e.status === StepStatus.RUNNING && inferred === StepStatus.COMPLETED) {
    status = StepStatus.COMPLETED;
  } else if (e.status !== StepStatus.UNSPECIFIED) status = e.status;
  else if (before !== undefined) status = before.status;
  else status = inferred;

  const [step] = getStep(snap, e.stepId, status);
  copyLabelKind(step, e);
  setStatus(snap, step, status);
  if (progress.artifactNamespace !== undefined) step.artifactNamespace = progress.artifactNamespace;
  if (step.startTime === undefined && incoming.startTime !== undefined) {
    step.startTime = incoming.startTime;
  }
  if (step.completionTime === undefined) {
    if (incoming.completionTime !== undefined) step.completionTime = incoming.completionTime;
    else if (status === StepStatus.COMPLETED) {
      step.completionTime = incoming.updateTime ?? timestampFromNanos(occurred);
    }
  }
  step.updateTime = timestampFromNanos(occurred);
  step.progress = progress;

  if (status === StepStatus.RUNNING) setActive(snap, e.stepId);
  else if (snap.activeStepId === e.stepId) clearActive(snap);
}

function finishStep(
  snap: RunSnapshot,
  stepId: string,
  wanted: StepStatus,
  occurred: bigint,
  e: { label?: string; kind?: string; artifactNamespace?: string },
  retrying = false,
): StepSnapshot {
  const beforeStatus = snap.steps[stepId]?.status ?? StepStatus.UNSPECIFIED;
  const preserveFailed = beforeStatus === StepStatus.FAILED && wanted !== StepStatus.FAILED;
  let status = wanted;
  if (preserveFailed) status = StepStatus.FAILED;
  else if (retrying) {
    // Deviation 2: a failure that will be retried is not final, unless the step already ended.
    status = FINAL_STEP_STATUSES.has(beforeStatus) ? beforeStatus : StepStatus.RETRYING;
  }
  const [step] = getStep(snap, stepId, status);
  copyLabelKind(step, e);
  setStatus(snap, step, status);
  if (e.artifactNamespace !== undefined) step.artifactNamespace = e.artifactNamespace;
  if (!(status === StepStatus.SKIPPED || preserveFailed || retrying)) {
    step.completionTime = timestampFromNanos(occurred);
  }
  step.updateTime = timestampFromNanos(occurred);
  // The active step is the last step still running; this one no longer is.
  setActive(snap, snap.runningStepIds.at(-1));
  return step;
}

function onStepCompleted(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "stepCompleted") return;
  const e = payload.value;
  const step = finishStep(snap, e.stepId, StepStatus.COMPLETED, occurred, e);
  if (e.attempt > 0) step.attempt = e.attempt;
  if (step.status === StepStatus.COMPLETED) {
    step.error = undefined;
    step.nextAttemptTime = undefined;
  }
}

function onStepFailed(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "stepFailed") return;
  const e = payload.value;
  const step = finishStep(snap, e.stepId, StepStatus.FAILED, occurred, e, e.willRetry);
  if (e.attempt > 0) step.attempt = e.attempt;
  if (e.error) step.error = e.error;
  step.nextAttemptTime =
    step.status === StepStatus.RETRYING && e.nextAttemptTime ? e.nextAttemptTime : undefined;
}

function onStepSkipped(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case !== "stepSkipped") return;
  finishStep(snap, payload.value.stepId, StepStatus.SKIPPED, occurred, payload.value);
}

// -- other events ----------------------------------------------------------------------------

function onLogAppended(snap: RunSnapshot, payload: Payload): void {
  if (payload.case !== "logAppended") return;
  const e = payload.value;
  appendLogLines(snap, e.lines, e.firstSeq, e.droppedLineCount, e.logsTruncated);
}

function onSummaryUpdated(snap: RunSnapshot, payload: Payload): void {
  if (payload.case !== "summaryUpdated") return;
  if (snap.resultNamespace === undefined && payload.value.namespace !== undefined) {
    snap.resultNamespace = payload.value.namespace;
  }
}

function compensation(snap: RunSnapshot, stepId: string, occurred: bigint): CompensationSnapshot {
  // A compensation restarted after a crash reuses its entry: one row per step.
  const existing = snap.compensations.find((c) => c.stepId === stepId);
  if (existing) return existing;
  const entry = create(CompensationSnapshotSchema, {
    stepId,
    startTime: timestampFromNanos(occurred),
  });
  snap.compensations.push(entry);
  return entry;
}

function onCompensation(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  switch (payload.case) {
    case "compensationStarted":
      compensation(snap, payload.value.stepId, occurred).status = CompensationStatus.RUNNING;
      return;
    case "compensationCompleted": {
      const entry = compensation(snap, payload.value.stepId, occurred);
      entry.status = CompensationStatus.COMPLETED;
      entry.error = undefined;
      entry.finishTime = timestampFromNanos(occurred);
      return;
    }
    case "compensationFailed": {
      const entry = compensation(snap, payload.value.stepId, occurred);
      entry.status = CompensationStatus.FAILED;
      if (payload.value.error) entry.error = payload.value.error;
      entry.finishTime = timestampFromNanos(occurred);
      return;
    }
    default:
      return;
  }
}

function onWaitpoint(snap: RunSnapshot, payload: Payload, occurred: bigint): void {
  if (payload.case === "waitpointRegistered") {
    const e = payload.value;
    if (snap.openWaitpoints.some((w) => w.waitpointId === e.waitpointId)) return;
    snap.openWaitpoints.push(
      create(WaitpointSnapshotSchema, {
        waitpointId: e.waitpointId,
        kind: e.kind,
        name: e.name,
        deadlineTime: e.deadlineTime,
        registerTime: timestampFromNanos(occurred),
      }),
    );
  } else if (payload.case === "waitpointResolved") {
    const id = payload.value.waitpointId;
    const index = snap.openWaitpoints.findIndex((w) => w.waitpointId === id);
    if (index >= 0) snap.openWaitpoints.splice(index, 1);
  }
}

function onCheckpointRecorded(snap: RunSnapshot, payload: Payload): void {
  if (payload.case !== "checkpointRecorded") return;
  const e: CheckpointRecorded = payload.value;
  const step = snap.steps[e.stepId];
  if (step === undefined) return; // A checkpoint of a step never started stays in the ledger only.
  step.checkpointCount += 1;
  // The payload can be large (a diff); the snapshot keeps the summary and the tail.
  const last = clone(CheckpointRecordedSchema, e);
  last.payload = undefined;
  step.lastCheckpoint = last;
}

function onMetadataUpdated(snap: RunSnapshot, payload: Payload): void {
  if (payload.case !== "metadataUpdated") return;
  applyMetadataMutations(snap.metadata, payload.value.mutations);
}

function onCancelRequested(snap: RunSnapshot, payload: Payload): void {
  if (payload.case !== "cancelRequested" || snap.cancelRequested) return;
  snap.cancelRequested = true;
  snap.cancelReason = payload.value.reason;
}

/**
 * Applies the mutations targeting the run itself, in order. The fold must be total, so type
 * clashes have a defined reading: incrementing a missing or non-numeric value starts from 0,
 * appending to a missing value starts a list, appending to a non-list wraps it first.
 */
function applyMetadataMutations(
  metadata: { [key: string]: Value },
  mutations: readonly MetadataMutation[],
): void {
  for (const m of mutations) {
    if (m.target !== MetadataTarget.UNSPECIFIED && m.target !== MetadataTarget.SELF) continue;
    const value = m.value ?? create(ValueSchema);
    switch (m.op) {
      case MetadataOp.SET:
        metadata[m.key] = clone(ValueSchema, value);
        break;
      case MetadataOp.REMOVE:
        delete metadata[m.key];
        break;
      case MetadataOp.INCREMENT: {
        const current = metadata[m.key]?.kind;
        const base = current?.case === "numberValue" ? current.value : 0;
        const step = value.kind.case === "numberValue" ? value.kind.value : 0;
        metadata[m.key] = create(ValueSchema, { kind: { case: "numberValue", value: base + step } });
        break;
      }
      case MetadataOp.APPEND: {
        const current = metadata[m.key];
        if (current?.kind.case === "listValue") {
          current.kind.value.values.push(clone(ValueSchema, value));
        } else {
          const values = current && current.kind.case !== undefined ? [current] : [];
          values.push(clone(ValueSchema, value));
          metadata[m.key] = create(ValueSchema, {
            kind: { case: "listValue", value: create(ListValueSchema, { values }) },
          });
        }
        break;
      }
      default:
        break;
    }
  }
}

// Signals live in the journal's inbox; the snapshot only advances updateTime.
const ignore: Handler = () => {};

const HANDLERS: Readonly<Record<Case, Handler>> = {
  runCreated: onRunCreated,
  runStarted: onRunStarted,
  runWaiting: onRunWaiting,
  runCompleted: onRunEnded,
  runFailed: onRunEnded,
  runCancelled: onRunEnded,
  runTimedOut: onRunEnded,
  runTerminated: onRunEnded,
  stepScheduled: onStepScheduled,
  stepStarted: onStepStarted,
  stepProgress: onStepProgress,
  stepCompleted: onStepCompleted,
  stepFailed: onStepFailed,
  stepSkipped: onStepSkipped,
  logAppended: onLogAppended,
  summaryUpdated: onSummaryUpdated,
  compensationStarted: onCompensation,
  compensationCompleted: onCompensation,
  compensationFailed: onCompensation,
  waitpointRegistered: onWaitpoint,
  waitpointResolved: onWaitpoint,
  checkpointRecorded: onCheckpointRecorded,
  metadataUpdated: onMetadataUpdated,
  cancelRequested: onCancelRequested,
  signalReceived: ignore,
};
