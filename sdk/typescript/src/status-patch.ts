/**
 * Coarse status reports turned into ledger events.
 *
 * Producers that cannot emit fine-grained events (a cron job, another orchestrator) report a
 * `StatusPatch`: a free-text status, new log lines, per-step progress. This derives the events
 * that move the previous snapshot to what the patch describes: a port of the Python
 * `events_from_status_patch` (the coordinator's `ReportStatus`), with its documented
 * deviations from the reference: `timed_out`/`terminated` keep their own events, steps are
 * visited in step-id order, and empty strings count as absent. `tests/vectors/status_patches.json`
 * pins both SDKs to it.
 *
 * @module
 */
import { clone, create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";

import {
  EventSource,
  type LedgerEvent,
  LedgerEventSchema,
  LogAppendedSchema,
  RunStartedSchema,
  RunStatus,
  type RunSnapshot,
  type StepProgress,
  StepCompletedSchema,
  StepProgressSchema,
  StepProgressedSchema,
  StepStartedSchema,
  StepStatus,
} from "./gen/ledgerflow/v1/ledger_pb.js";
import type { StatusPatch } from "./gen/ledgerflow/v1/run_service_pb.js";
import { normalizeLogLines } from "./logs.js";
import { isTerminal, normalizeStatus } from "./status.js";
import { timestampFromNanos, toNanos } from "./time.js";

type TerminalCase = "runCompleted" | "runFailed" | "runCancelled" | "runTimedOut" | "runTerminated";

const TERMINAL_CASES: Partial<Record<RunStatus, TerminalCase>> = {
  [RunStatus.COMPLETED]: "runCompleted",
  [RunStatus.FAILED]: "runFailed",
  [RunStatus.CANCELLED]: "runCancelled",
  [RunStatus.TIMED_OUT]: "runTimedOut",
  [RunStatus.TERMINATED]: "runTerminated",
};

function time(ts: Timestamp | undefined): bigint | undefined {
  return ts === undefined ? undefined : toNanos(ts);
}

function normalizeProgress(raw: StepProgress): StepProgress {
  const message = raw.message?.trim();
  const namespace = raw.artifactNamespace?.trim();
  return create(StepProgressSchema, {
    completed: raw.completed,
    total: raw.total,
    failed: raw.failed,
    message: message || undefined,
    artifactNamespace: namespace || undefined,
    startTime: raw.startTime,
    completionTime: raw.completionTime,
    updateTime: raw.updateTime,
  });
}

/** The fields whose change makes a progress event worth appending (not updateTime). */
function signature(p: StepProgress | undefined): string {
  if (p === undefined) return "[]";
  return JSON.stringify(
    [p.completed, p.total, p.failed, p.message, p.artifactNamespace, time(p.startTime), time(p.completionTime)].map(
      (v) => (v === undefined ? null : typeof v === "bigint" ? `n${v}` : v),
    ),
  );
}

/**
 * Derives the ledger events a status patch stands for.
 *
 * @param patch - The producer's report.
 * @param previous - The run's snapshot before the patch.
 * @param nowNanos - The time to use when the patch has no `lastCheckpointTime`.
 * @param source - Who produced the patch.
 * @returns The events, in the order to append them (possibly none).
 */
export function eventsFromStatusPatch(
  patch: StatusPatch,
  previous: RunSnapshot,
  nowNanos: bigint,
  source: EventSource = EventSource.WORKER,
): LedgerEvent[] {
  const runId = patch.runId;
  const status = normalizeStatus(patch.status);
  const live = Object.keys(patch.liveStepProgress)
    .filter((id) => id.trim() !== "")
    .sort()
    .map((id): [string, StepProgress] => [id, normalizeProgress(patch.liveStepProgress[id]!)]);
  const checkpoint = time(patch.lastCheckpointTime) ?? nowNanos;
  const known = (values: (bigint | undefined)[]) => values.filter((v): v is bigint => v !== undefined);
  const steps = Object.values(previous.steps);
  const starts = known([...live.map(([, p]) => time(p.startTime)), ...steps.map((s) => time(s.startTime))]);
  const finishes = known([
    ...live.map(([, p]) => time(p.completionTime)),
    ...steps.map((s) => time(s.completionTime)),
  ]);
  const event = (at: bigint, payload: LedgerEvent["payload"]) =>
    create(LedgerEventSchema, { runId, source, eventTime: timestampFromNanos(at), payload });

  const events: LedgerEvent[] = [];
  // The reference tests `!startedAt`, so a start at the epoch counts as no start.
  if (!time(previous.startTime) && (live.length > 0 || status === RunStatus.RUNNING || isTerminal(status))) {
    const at = starts.length > 0 ? starts.reduce((a, b) => (b < a ? b : a)) : checkpoint;
    const started = create(RunStartedSchema, {
      workflowName: patch.workflowName || previous.workflowName,
      runtime: patch.runtimeBackend ? { backend: patch.runtimeBackend } : undefined,
    });
    events.push(event(at, { case: "runStarted", value: started }));
  }

  const positional = patch.liveLogsChannelOffset !== undefined && patch.liveLogsChannelOffset >= 0n;
  const lines = normalizeLogLines(patch.liveLogs, positional);
  if (lines.length > 0) {
    events.push(
      event(checkpoint, {
        case: "logAppended",
        value: create(LogAppendedSchema, {
          lines,
          channelOffset: positional ? patch.liveLogsChannelOffset : undefined,
        }),
      }),
    );
  }

  for (const [stepId, progress] of live) {
    const before = previous.steps[stepId];
    const startedAt = time(progress.startTime);
    if (startedAt && !(before !== undefined && time(before.startTime))) {
      events.push(
        event(startedAt, {
          case: "stepStarted",
          value: create(StepStartedSchema, { stepId, artifactNamespace: progress.artifactNamespace }),
        }),
      );
    }
    const normalized = clone(StepProgressSchema, progress);
    normalized.updateTime ??= timestampFromNanos(checkpoint);
    if (signature(normalized) !== signature(before?.progress)) {
      const stepStatus =
        progress.completionTime !== undefined
          ? StepStatus.COMPLETED
          : before?.status === StepStatus.FAILED
            ? StepStatus.FAILED
            : StepStatus.RUNNING;
      events.push(
        event(time(progress.updateTime) ?? checkpoint, {
          case: "stepProgress",
          value: create(StepProgressedSchema, { stepId, status: stepStatus, progress: normalized }),
        }),
      );
    }
    const completedAt = time(progress.completionTime);
    if (completedAt && !(before !== undefined && time(before.completionTime))) {
      events.push(
        event(completedAt, {
          case: "stepCompleted",
          value: create(StepCompletedSchema, { stepId, artifactNamespace: progress.artifactNamespace }),
        }),
      );
    }
  }

  const terminal = TERMINAL_CASES[status];
  if (terminal !== undefined && !isTerminal(previous.status)) {
    const at = finishes.length > 0 ? finishes.reduce((a, b) => (b > a ? b : a)) : checkpoint;
    const fields: Record<string, unknown> = {};
    if (terminal === "runTerminated") fields["reason"] = patch.error?.message ?? "";
    else if (terminal !== "runCompleted" && patch.error !== undefined) fields["error"] = patch.error;
    if (patch.result !== undefined) fields["result"] = patch.result;
    const value = create(LedgerEventSchema.field[terminal]!.message!, fields as never);
    events.push(event(at, { case: terminal, value } as LedgerEvent["payload"]));
  }
  return events;
}
