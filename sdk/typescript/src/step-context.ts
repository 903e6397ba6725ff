/**
 * What a step handler sees: its input's context (`ctx`) and the task state behind it.
 *
 * @module
 */
import { type MessageInitShape, create } from "@bufbuild/protobuf";

import { ErrorInfoSchema, type ErrorInfo } from "./gen/ledgerflow/v1/common_pb.js";
import {
  CheckpointType,
  EventSource,
  type LedgerEvent,
  LedgerEventSchema,
} from "./gen/ledgerflow/v1/ledger_pb.js";
import type { StepRequest } from "./gen/ledgerflow/v1/step_pb.js";
import { LedgerflowError } from "./errors.js";
import { timestampFromDate } from "./time.js";

/**
 * A step failure with the details the coordinator's retry policy reads. Any thrown value fails
 * the step; throw this one to set `code` or to say that retrying is pointless.
 */
export class StepFailure extends LedgerflowError {
  override name = "StepFailure";
  /** A stable machine-readable code, e.g. `"QUOTA_EXCEEDED"`. */
  readonly code: string;
  /** Marks an error that must not be retried whatever the policy says. */
  readonly nonRetryable: boolean;

  constructor(message: string, options: { code?: string; nonRetryable?: boolean; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.code = options.code ?? "";
    this.nonRetryable = options.nonRetryable ?? false;
  }
}

/** Why a step's {@link StepContext.signal} was aborted. */
export class StepAbortedError extends LedgerflowError {
  override name = "StepAbortedError";
  /**
   * @param reason - `cancelled` (the run was cancelled), `timeout` (the attempt's timeout
   *   passed), `stopped` (the lease is no longer this worker's: nothing it sends counts) or
   *   `released` (the worker is draining and handed the task back).
   */
  constructor(
    readonly reason: "cancelled" | "timeout" | "stopped" | "released",
    message: string,
  ) {
    super(message);
  }
}

/** Converts anything a handler threw into the `ErrorInfo` a `step_result` carries. */
export function errorInfo(err: unknown): ErrorInfo {
  if (err instanceof StepAbortedError) {
    return create(ErrorInfoSchema, {
      message: err.message,
      type: err.reason === "timeout" ? "StepTimeoutError" : "CancelledError",
      code: err.reason === "timeout" ? "STEP_TIMEOUT" : "CANCELLED",
      category: "USER_ERROR",
    });
  }
  if (err instanceof Error) {
    return create(ErrorInfoSchema, {
      message: err.message,
      type: err.name || err.constructor.name,
      code: err instanceof StepFailure ? err.code : "",
      category: "USER_ERROR",
      stackTrace: err.stack ?? "",
      nonRetryable: err instanceof StepFailure && err.nonRetryable,
    });
  }
  return create(ErrorInfoSchema, { message: String(err), type: typeof err, category: "USER_ERROR" });
}

/** Logs lines to the step's positional log channel. */
export interface StepLogger {
  /** Logs `message` (each of its lines) as is. */
  info(message: string): void;
  /** Logs `message` prefixed `[warn] `. */
  warn(message: string): void;
  /** Logs `message` prefixed `[error] `. */
  error(message: string): void;
}

/** The hooks a {@link StepContext} reports through; the worker implements them per task. */
export interface TaskSink {
  /** Queues an event for the task's next batch (dropped once the task stopped). */
  emit(event: LedgerEvent): void;
  /** Sends a heartbeat for the worker's tasks now. */
  heartbeat(): void;
}

/** How many of the step's own log lines a context keeps for the final log-tail checkpoint. */
const DEFAULT_LOG_TAIL_LINES = 20;

/**
 * The context a step handler gets: where its logs, progress and checkpoints go, and the signal
 * that says it should stop.
 *
 * Log lines are positional: the context counts every line it emitted on its channel and each
 * `log_appended` carries `channelOffset`, so a batch resent after a reconnect is ingested once,
 * repeated identical lines included.
 */
export class StepContext {
  /** The log channel: `step:<step_id>:log`, `@<attempt>` after the first attempt (as Python names it). */
  readonly logChannel: string;
  /** Logging to the step's channel. */
  readonly log: StepLogger;
  /** Aborted when the step must stop; its `reason` is a {@link StepAbortedError}. */
  readonly signal: AbortSignal;

  #linesEmitted = 0;
  #checkpoints = 0;
  readonly #tail: string[] = [];
  readonly #tailLimit: number;

  /** @internal Created by the worker for each task. */
  constructor(
    readonly request: StepRequest,
    private readonly sink: TaskSink,
    signal: AbortSignal,
  ) {
    const channel = `step:${request.stepId}:log`;
    this.logChannel = request.attempt > 1 ? `${channel}@${request.attempt}` : channel;
    this.signal = signal;
    this.#tailLimit = request.checkpoint?.logTailLines || DEFAULT_LOG_TAIL_LINES;
    this.log = {
      info: (message) => this.#logLines(message, ""),
      warn: (message) => this.#logLines(message, "[warn] "),
      error: (message) => this.#logLines(message, "[error] "),
    };
  }

  /** The run the step belongs to. */
  get runId(): string {
    return this.request.runId;
  }

  /** The step's id within the run. */
  get stepId(): string {
    return this.request.stepId;
  }

  /** The attempt, from 1. */
  get attempt(): number {
    return this.request.attempt;
  }

  /** How many lines the step logged so far. */
  get linesLogged(): number {
    return this.#linesEmitted;
  }

  /** How many checkpoints the step recorded so far. */
  get checkpointCount(): number {
    return this.#checkpoints;
  }

  /** Reports progress; the run's snapshot infers completion once `completed >= total > 0`. */
  progress(completed: number, total?: number, message?: string): void {
    this.#emit({
      case: "stepProgress",
      value: {
        stepId: this.stepId,
        progress: {
          completed: BigInt(completed),
          total: total === undefined ? undefined : BigInt(total),
          message,
        },
      },
    });
  }

  /** Records a summary checkpoint: where the step is, in one line. */
  checkpoint(summary: string): void {
    this.#checkpoint(CheckpointType.SUMMARY, summary, []);
  }

  /** Extends the lease now: for handlers that run long between other context calls. */
  heartbeat(): void {
    this.sink.heartbeat();
  }

  /** @internal The final log-tail checkpoint (checkpoint mode CAPTURE). */
  recordLogTail(): void {
    this.#checkpoint(
      CheckpointType.LOG_TAIL,
      `last ${this.#tail.length} of ${this.#linesEmitted} log lines`,
      [...this.#tail],
      this.#linesEmitted > this.#tail.length,
    );
  }

  #checkpoint(type: CheckpointType, summary: string, lines: string[], truncated = false): void {
    this.#checkpoints += 1;
    // resume_from_seq continues the numbering of an earlier attempt's checkpoints.
    const seq = (this.request.checkpoint?.resumeFromSeq ?? 0n) + BigInt(this.#checkpoints);
    this.#emit({
      case: "checkpointRecorded",
      value: { stepId: this.stepId, checkpointSeq: seq, type, summary, lines, truncated },
    });
  }

  #logLines(message: string, prefix: string): void {
    const lines = message.split(/\r?\n/).map((line) => prefix + line);
    const offset = BigInt(this.#linesEmitted);
    this.#linesEmitted += lines.length;
    this.#tail.push(...lines);
    if (this.#tail.length > this.#tailLimit) this.#tail.splice(0, this.#tail.length - this.#tailLimit);
    this.#emit({
      case: "logAppended",
      value: { lines, channel: this.logChannel, channelOffset: offset },
    });
  }

  #emit(payload: MessageInitShape<typeof LedgerEventSchema>["payload"]): void {
    this.sink.emit(
      create(LedgerEventSchema, {
        runId: this.runId,
        eventTime: timestampFromDate(new Date()),
        source: EventSource.WORKER,
        payload,
      }),
    );
  }
}
