/**
 * `@ledgerflow/sdk`: TypeScript for ledgerflow.
 *
 * - {@link StepWorker} runs step handlers that Python (or any) workflows schedule with
 *   `worker_kind`, over `WorkerService.Connect`.
 * - {@link Client} starts runs, awaits their results, watches snapshots and tails logs.
 * - The pure ledger core shared by every SDK: {@link DeterministicRandom},
 *   {@link slicePositionalLogLines} and the snapshot reducer ({@link reduceEvents}).
 * - The generated `ledgerflow.v1` messages and service descriptors (protobuf-es v2).
 *
 * @packageDocumentation
 */
export * from "./gen/ledgerflow/v1/common_pb.js";
export * from "./gen/ledgerflow/v1/journal_pb.js";
export * from "./gen/ledgerflow/v1/ledger_pb.js";
export * from "./gen/ledgerflow/v1/run_service_pb.js";
export * from "./gen/ledgerflow/v1/step_pb.js";
export * from "./gen/ledgerflow/v1/worker_service_pb.js";
export * from "./gen/ledgerflow/v1/workflow_pb.js";

export { DeterministicRandom, Mulberry32, fnv1a32 } from "./determinism.js";
export {
  BLANK_LINE_PLACEHOLDER,
  type PositionalSlice,
  normalizeLogLines,
  slicePositionalLogLines,
} from "./logs.js";
export { LOG_TAIL_LIMIT, applyEvent, emptySnapshot, reduce, reduceEvents } from "./reducer.js";
export { STATUS_WORDS, isTerminal, normalizeStatus } from "./status.js";
export {
  durationFromNanos,
  durationNanos,
  timestampFromDate,
  timestampFromNanos,
  toNanos,
} from "./time.js";
export { Client, type StartOptions, type StartedRun, type StreamOptions } from "./client.js";
export type { ConnectionOptions, TlsOptions } from "./address.js";
export {
  CoordinatorUnavailableError,
  FailedPreconditionError,
  InvalidArgumentError,
  LedgerflowError,
  PayloadTooLargeError,
  PermissionDeniedError,
  RunAlreadyExistsError,
  RunCancelledError,
  RunEndedError,
  RunFailedError,
  RunNotFoundError,
  RunTerminatedError,
  RunTimedOutError,
  WorkerRefusedError,
  fromConnectError,
  runEndedError,
} from "./errors.js";
export { JSON_ENCODING, jsonPayload, payloadValue } from "./payload.js";
export {
  StepAbortedError,
  StepContext,
  StepFailure,
  type StepLogger,
  errorInfo,
} from "./step-context.js";
export { type StepHandler, StepWorker, type StepWorkerOptions } from "./worker.js";
export { Backoff } from "./backoff.js";
export { SDK_VERSION } from "./version.js";
export { eventsFromStatusPatch } from "./status-patch.js";
