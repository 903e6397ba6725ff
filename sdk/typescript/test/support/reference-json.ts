// The reference ledger's JSON shapes (`type: "run.created"`, camelCase, epoch milliseconds),
// bridged to and from the ledgerflow.v1 messages: the conformance vectors in tests/vectors are
// written in that shape. A test-side port of the Python `ledgerflow.ledger.reference` codec;
// its validation is left out (the vectors are well-formed; the Python tests check refusals).
import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";

import {
  ErrorInfoSchema,
  EventSource,
  type LedgerEvent,
  LedgerEventSchema,
  type Payload,
  PayloadSchema,
  type RunSnapshot,
  RunStatus,
  type StepProgress,
  StepProgressSchema,
  type StepSnapshot,
  StepStatus,
  type StatusPatch,
  StatusPatchSchema,
  STATUS_WORDS,
  durationNanos,
  timestampFromNanos,
  toNanos,
} from "../../src/index.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const SOURCES: Record<string, EventSource> = {
  worker: EventSource.WORKER,
  coordinator: EventSource.COORDINATOR,
  system: EventSource.SYSTEM,
  temporal: EventSource.EXTERNAL,
  convex: EventSource.EXTERNAL,
};
const SOURCE_WORDS: Partial<Record<EventSource, string>> = {
  [EventSource.WORKER]: "worker",
  [EventSource.COORDINATOR]: "coordinator",
};
const RUN_STATUSES = new Map<string, RunStatus>(
  Object.entries(STATUS_WORDS)
    .filter(([status]) => Number(status) !== RunStatus.UNSPECIFIED)
    .map(([status, word]): [string, RunStatus] => [word, Number(status) as RunStatus]),
);
const STEP_STATUSES: Record<string, StepStatus> = {
  running: StepStatus.RUNNING,
  completed: StepStatus.COMPLETED,
  failed: StepStatus.FAILED,
  skipped: StepStatus.SKIPPED,
  scheduled: StepStatus.SCHEDULED,
  retrying: StepStatus.RETRYING,
};
const STEP_WORDS = new Map(Object.entries(STEP_STATUSES).map(([w, s]) => [s, w]));

function str(obj: JsonObject, key: string): string | undefined {
  const value = obj[key];
  return typeof value === "string" ? value : undefined;
}

function int(obj: JsonObject, key: string): bigint | undefined {
  const value = obj[key];
  return typeof value === "number" ? BigInt(value) : undefined;
}

/** Epoch milliseconds (fractions allowed) to a Timestamp, as the Python codec rounds them. */
export function millisToTimestamp(value: number): Timestamp {
  const nanos = Number.isInteger(value)
    ? BigInt(value) * 1_000_000n
    : BigInt(Math.round(value * 1_000_000));
  return timestampFromNanos(nanos);
}

function millisOut(nanos: bigint): number {
  return nanos % 1_000_000n === 0n ? Number(nanos / 1_000_000n) : Number(nanos) / 1_000_000;
}

function timeOut(ts: Timestamp | undefined): number | null {
  return ts === undefined ? null : millisOut(toNanos(ts));
}

export function jsonPayload(value: Json): Payload {
  return create(PayloadSchema, { encoding: "json/plain", data: encoder.encode(JSON.stringify(value)) });
}

export function payloadValue(payload: Payload): Json {
  return JSON.parse(decoder.decode(payload.data)) as Json;
}

function readProgress(raw: Json | undefined): StepProgress {
  const progress = create(StepProgressSchema);
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return progress;
  progress.completed = int(raw, "completed");
  progress.total = int(raw, "total");
  progress.failed = int(raw, "failed");
  progress.message = str(raw, "message");
  progress.artifactNamespace = str(raw, "artifactTableNamespace");
  const times = [
    ["startedAt", "startTime"],
    ["completedAt", "completionTime"],
    ["updatedAt", "updateTime"],
  ] as const;
  for (const [key, name] of times) {
    const value = raw[key];
    if (typeof value === "number") progress[name] = millisToTimestamp(value);
  }
  return progress;
}

/** Converts one reference-shaped event to a LedgerEvent. */
export function eventFromJson(obj: JsonObject): LedgerEvent {
  const event = create(LedgerEventSchema, {
    runId: str(obj, "runId") ?? "",
    eventTime: millisToTimestamp(obj["occurredAt"] as number),
    source: SOURCES[str(obj, "source") ?? ""] ?? EventSource.UNSPECIFIED,
  });
  const seq = int(obj, "seq");
  if (seq !== undefined && seq > 0n) event.seq = seq;
  return withPayload(event, obj);
}

// Sets the oneof payload the reference event's type stands for.
function withPayload(event: LedgerEvent, obj: JsonObject): LedgerEvent {
  const type = str(obj, "type");
  const payload = (key: string) => (obj[key] == null ? undefined : jsonPayload(obj[key]));
  const stepCommon = () => ({
    stepId: str(obj, "stepId") ?? "",
    label: str(obj, "label"),
    kind: str(obj, "kind"),
  });
  const error = () => {
    const message = str(obj, "error");
    return message === undefined ? undefined : create(ErrorInfoSchema, { message });
  };
  const value = (fields: Record<string, unknown>) => fields as never;
  switch (type) {
    case "run.created": {
      const status = str(obj, "status");
      event.payload = {
        case: "runCreated",
        value: make("runCreated", {
          workflowName: str(obj, "playName"),
          status: status === undefined ? RunStatus.UNSPECIFIED : RUN_STATUSES.get(status),
        }),
      };
      break;
    }
    case "run.started": {
      const backend = str(obj, "runtimeBackend");
      event.payload = {
        case: "runStarted",
        value: make("runStarted", {
          workflowName: str(obj, "playName"),
          runtime: backend ? { backend } : undefined,
        }),
      };
      break;
    }
    case "run.completed":
      event.payload = {
        case: "runCompleted",
        value: make("runCompleted", { result: payload("result"), resultSummary: payload("resultSummary") }),
      };
      break;
    case "run.failed":
      event.payload = { case: "runFailed", value: make("runFailed", { error: error(), result: payload("result") }) };
      break;
    case "run.cancelled":
      event.payload = {
        case: "runCancelled",
        value: make("runCancelled", { error: error(), result: payload("result") }),
      };
      break;
    case "step.started":
    case "step.completed":
    case "step.skipped":
    case "step.failed": {
      const fields = value({
        ...stepCommon(),
        artifactNamespace: str(obj, "artifactTableNamespace"),
        ...(type === "step.failed" ? { error: error() } : {}),
      });
      const kind = ({
        "step.started": "stepStarted",
        "step.completed": "stepCompleted",
        "step.skipped": "stepSkipped",
        "step.failed": "stepFailed",
      } as const)[type];
      event.payload = { case: kind, value: make(kind, fields) } as LedgerEvent["payload"];
      break;
    }
    case "step.progress": {
      const status = str(obj, "status");
      event.payload = {
        case: "stepProgress",
        value: make("stepProgress", {
          ...stepCommon(),
          status: status === undefined ? StepStatus.UNSPECIFIED : STEP_STATUSES[status],
          progress: readProgress(obj["progress"]),
        }),
      };
      break;
    }
    case "log.appended": {
      const firstSeq = int(obj, "firstSeq");
      const offset = int(obj, "channelOffset");
      event.payload = {
        case: "logAppended",
        value: make("logAppended", {
          lines: obj["lines"] as string[],
          firstSeq: firstSeq !== undefined && firstSeq > 0n ? firstSeq : undefined,
          channelOffset: offset !== undefined && offset >= 0n ? offset : undefined,
          logsTruncated: obj["logsTruncated"] === true,
        }),
      };
      break;
    }
    case "sheet.summary.updated":
      event.payload = {
        case: "summaryUpdated",
        value: make("summaryUpdated", {
          namespace: str(obj, "tableNamespace"),
          deltaCursor: int(obj, "deltaCursor"),
          summary: payload("summary"),
        }),
      };
      break;
    default:
      throw new Error(`unknown reference event type ${String(type)}`);
  }
  return event;
}

// Builds the payload message of a LedgerEvent oneof case from its field's schema.
function make<K extends NonNullable<LedgerEvent["payload"]["case"]>>(
  kind: K,
  init: Record<string, unknown>,
): Extract<LedgerEvent["payload"], { case: K }>["value"] {
  const schema = LedgerEventSchema.field[kind]!.message!;
  return create(schema, init as never) as never;
}

function progressJson(p: StepProgress): JsonObject {
  const out: JsonObject = {};
  for (const name of ["completed", "total", "failed"] as const) {
    if (p[name] !== undefined) out[name] = Number(p[name]);
  }
  if (p.message !== undefined) out["message"] = p.message;
  if (p.artifactNamespace !== undefined) out["artifactTableNamespace"] = p.artifactNamespace;
  const times = [
    ["startedAt", p.startTime],
    ["completedAt", p.completionTime],
    ["updatedAt", p.updateTime],
  ] as const;
  for (const [key, ts] of times) if (ts !== undefined) out[key] = timeOut(ts);
  return out;
}

function stepJson(step: StepSnapshot): JsonObject {
  const out: JsonObject = { stepId: step.stepId };
  if (step.label !== undefined) out["label"] = step.label;
  if (step.kind !== undefined) out["kind"] = step.kind;
  out["status"] = STEP_WORDS.get(step.status) ?? "running";
  out["artifactTableNamespace"] = step.artifactNamespace ?? null;
  out["startedAt"] = timeOut(step.startTime);
  out["completedAt"] = timeOut(step.completionTime);
  out["updatedAt"] = timeOut(step.updateTime);
  out["progress"] = step.progress ? progressJson(step.progress) : null;
  return out;
}

/** Renders a snapshot in the reference's `PlayRunLedgerSnapshot` shape. */
export function snapshotToJson(snap: RunSnapshot): JsonObject {
  const steps: JsonObject = {};
  for (const id of snap.orderedStepIds) steps[id] = stepJson(snap.steps[id]!);
  const out: JsonObject = {
    runId: snap.runId,
    playName: snap.workflowName ?? null,
    status: STATUS_WORDS[snap.status] ?? "unknown",
    error: snap.error ? snap.error.message : null,
    createdAt: timeOut(snap.createTime),
    startedAt: timeOut(snap.startTime),
    updatedAt: timeOut(snap.updateTime),
    finishedAt: timeOut(snap.finishTime),
    durationMs: snap.duration ? millisOut(durationNanos(snap.duration)) : null,
    orderedStepIds: [...snap.orderedStepIds],
    stepsById: steps,
    logTail: [...snap.logTail],
    totalLogCount: Number(snap.totalLogCount),
    logsTruncated: snap.logsTruncated,
    activeStepId: snap.activeStepId ?? null,
    activeArtifactTableNamespace: snap.activeArtifactNamespace ?? null,
    resultTableNamespace: snap.resultNamespace ?? null,
  };
  if (snap.resultSummary) out["resultSummary"] = payloadValue(snap.resultSummary);
  if (snap.result) out["result"] = payloadValue(snap.result);
  return out;
}

/** Drops null-valued keys recursively: null and absent mean the same in the vectors. */
export function comparable(value: Json): Json {
  if (Array.isArray(value)) return value.map(comparable);
  if (value !== null && typeof value === "object") {
    const out: JsonObject = {};
    for (const [key, item] of Object.entries(value)) if (item !== null) out[key] = comparable(item);
    return out;
  }
  return value;
}

export { SOURCE_WORDS };

/** Converts a reference-shaped status patch (`PlayRunLedgerStatusPatch`) to a StatusPatch. */
export function statusPatchFromJson(obj: JsonObject): StatusPatch {
  const live: Record<string, StepProgress> = {};
  const raw = obj["liveNodeProgress"];
  if (raw !== null && typeof raw === "object" && !Array.isArray(raw)) {
    for (const [stepId, progress] of Object.entries(raw)) {
      // The reference skips entries that are not objects.
      if (progress !== null && typeof progress === "object" && !Array.isArray(progress)) {
        live[stepId] = readProgress(progress);
      }
    }
  }
  const error = str(obj, "error");
  const checkpoint = obj["lastCheckpointAt"];
  return create(StatusPatchSchema, {
    runId: str(obj, "runId") ?? "",
    status: str(obj, "status") ?? "",
    workflowName: str(obj, "playName") ?? "",
    error: error === undefined ? undefined : { message: error },
    runtimeBackend: str(obj, "runtimeBackend") ?? "",
    lastCheckpointTime: typeof checkpoint === "number" ? millisToTimestamp(checkpoint) : undefined,
    liveLogs: (obj["liveLogs"] as string[] | null | undefined) ?? [],
    liveLogsChannelOffset: int(obj, "liveLogsChannelOffset"),
    liveStepProgress: live,
    result: obj["result"] == null ? undefined : jsonPayload(obj["result"]),
  });
}

/** Renders an event in the reference's JSON shape (ledgerflow's own events by their dotted name). */
export function eventToJson(event: LedgerEvent): JsonObject {
  const p = event.payload;
  const out: JsonObject = {
    type: (p.case ?? "").replace(/^([a-z]+)([A-Z])/, (_, a: string, b: string) => `${a}.${b.toLowerCase()}`)
      .replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`),
    runId: event.runId,
    occurredAt: timeOut(event.eventTime),
    source: SOURCE_WORDS[event.source] ?? "system",
  };
  if (event.seq) out["seq"] = Number(event.seq);
  switch (p.case) {
    case "runCreated":
      out["playName"] = p.value.workflowName ?? null;
      if (p.value.status !== RunStatus.UNSPECIFIED) out["status"] = STATUS_WORDS[p.value.status];
      break;
    case "runStarted":
      out["playName"] = p.value.workflowName ?? null;
      out["runtimeBackend"] = p.value.runtime?.backend || null;
      break;
    case "runCompleted":
      if (p.value.result) out["result"] = payloadValue(p.value.result);
      if (p.value.resultSummary) out["resultSummary"] = payloadValue(p.value.resultSummary);
      break;
    case "runFailed":
    case "runCancelled":
    case "runTimedOut":
      out["error"] = p.value.error?.message ?? null;
      if (p.value.result) out["result"] = payloadValue(p.value.result);
      break;
    case "runTerminated":
      out["error"] = p.value.reason || null;
      if (p.value.result) out["result"] = payloadValue(p.value.result);
      break;
    case "stepStarted":
    case "stepCompleted":
    case "stepSkipped":
    case "stepFailed":
    case "stepProgress": {
      out["type"] = `step.${p.case.slice(4).toLowerCase()}`;
      out["stepId"] = p.value.stepId;
      if (p.value.label !== undefined) out["label"] = p.value.label;
      if (p.value.kind !== undefined) out["kind"] = p.value.kind;
      if (p.case === "stepProgress") {
        if (p.value.status !== StepStatus.UNSPECIFIED) out["status"] = STEP_WORDS.get(p.value.status)!;
        out["progress"] = progressJson(p.value.progress ?? create(StepProgressSchema));
      } else {
        out["artifactTableNamespace"] = p.value.artifactNamespace ?? null;
        if (p.case === "stepFailed") out["error"] = p.value.error?.message ?? null;
      }
      break;
    }
    case "logAppended":
      out["lines"] = [...p.value.lines];
      if (p.value.firstSeq !== undefined) out["firstSeq"] = Number(p.value.firstSeq);
      if (p.value.channelOffset !== undefined) out["channelOffset"] = Number(p.value.channelOffset);
      if (p.value.logsTruncated) out["logsTruncated"] = true;
      break;
    case "summaryUpdated":
      out["type"] = "sheet.summary.updated";
      out["tableNamespace"] = p.value.namespace ?? null;
      if (p.value.deltaCursor !== undefined) out["deltaCursor"] = Number(p.value.deltaCursor);
      if (p.value.summary) out["summary"] = payloadValue(p.value.summary);
      break;
    default:
      break;
  }
  return out;
}
