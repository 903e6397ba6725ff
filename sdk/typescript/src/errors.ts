/**
 * One error root for everything the SDK throws, mirroring the Python SDK's classes.
 *
 * gRPC status codes are turned into these at the client's edge ({@link fromConnectError}),
 * so callers `catch (e) { if (e instanceof FailedPreconditionError) ... }` instead of
 * matching codes.
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";

import type { ErrorInfo } from "./gen/ledgerflow/v1/common_pb.js";
import { type RunSnapshot, RunStatus } from "./gen/ledgerflow/v1/ledger_pb.js";

/** Base for every error ledgerflow throws to user code. */
export class LedgerflowError extends Error {
  override name = "LedgerflowError";
}

/** A request or event is malformed; nothing was changed. `field` names it when known. */
export class InvalidArgumentError extends LedgerflowError {
  override name = "InvalidArgumentError";
  /**
   * @param field - The offending field as a proto path (`events[2].step_started.step_id`), or "".
   * @param problem - What is wrong with it.
   */
  constructor(
    readonly field: string,
    readonly problem: string,
  ) {
    super(field ? `${field}: ${problem}` : problem);
  }
}

/** No run has the given id (gRPC NOT_FOUND). */
export class RunNotFoundError extends LedgerflowError {
  override name = "RunNotFoundError";
}

/** A run with the given id exists and differs from what was asked for (ALREADY_EXISTS). */
export class RunAlreadyExistsError extends LedgerflowError {
  override name = "RunAlreadyExistsError";
}

/** The run's state forbids the request, e.g. signalling a finished run (FAILED_PRECONDITION). */
export class FailedPreconditionError extends LedgerflowError {
  override name = "FailedPreconditionError";
}

/** A payload or batch exceeds the coordinator's limit; refused whole (RESOURCE_EXHAUSTED). */
export class PayloadTooLargeError extends LedgerflowError {
  override name = "PayloadTooLargeError";
}

/** The coordinator could not be reached or did not answer in time. */
export class CoordinatorUnavailableError extends LedgerflowError {
  override name = "CoordinatorUnavailableError";
}

/**
 * A run ended without completing; thrown by {@link Client.result}. Catch it for every
 * unsuccessful end, or a subclass for one terminal status.
 */
export class RunEndedError extends LedgerflowError {
  override name = "RunEndedError";
  /** The run's error as the ledger recorded it, when there is one. */
  readonly error: ErrorInfo | undefined;

  /** @param snapshot - The run's terminal snapshot. */
  constructor(readonly snapshot: RunSnapshot) {
    const reason = snapshot.error?.message;
    super(`run ${snapshot.runId} ${outcome(snapshot.status)}${reason ? `: ${reason}` : ""}`);
    this.error = snapshot.error;
  }
}

/** The run failed: its body threw, or it was compensated after an error. */
export class RunFailedError extends RunEndedError {
  override name = "RunFailedError";
}

/** The run was cancelled; `error.message` is the cancellation reason. */
export class RunCancelledError extends RunEndedError {
  override name = "RunCancelledError";
}

/** The run passed its execution timeout. */
export class RunTimedOutError extends RunEndedError {
  override name = "RunTimedOutError";
}

/** An operator stopped the run without compensation. */
export class RunTerminatedError extends RunEndedError {
  override name = "RunTerminatedError";
}

/** The coordinator refused a worker's session for good (e.g. a malformed hello). */
export class WorkerRefusedError extends LedgerflowError {
  override name = "WorkerRefusedError";
}

function outcome(status: RunStatus): string {
  switch (status) {
    case RunStatus.FAILED:
      return "failed";
    case RunStatus.CANCELLED:
      return "was cancelled";
    case RunStatus.TIMED_OUT:
      return "timed out";
    case RunStatus.TERMINATED:
      return "was terminated";
    default:
      return "ended";
  }
}

/** Returns the {@link RunEndedError} subclass for a terminal, unsuccessful snapshot. */
export function runEndedError(snapshot: RunSnapshot): RunEndedError {
  switch (snapshot.status) {
    case RunStatus.FAILED:
      return new RunFailedError(snapshot);
    case RunStatus.CANCELLED:
      return new RunCancelledError(snapshot);
    case RunStatus.TIMED_OUT:
      return new RunTimedOutError(snapshot);
    case RunStatus.TERMINATED:
      return new RunTerminatedError(snapshot);
    default:
      return new RunEndedError(snapshot);
  }
}

// The coordinator words INVALID_ARGUMENT as "field: problem" with a snake_case proto path.
const FIELD_PROBLEM =
  /^([a-z_][a-z0-9_]*(?:\[[^\]\s]*\])*(?:\.[a-z_][a-z0-9_]*(?:\[[^\]\s]*\])*)*): ([\s\S]+)$/;

/**
 * Maps a failed call to the ledgerflow error its status code stands for.
 *
 * @param err - What the call threw (anything; non-Connect errors are wrapped as UNKNOWN).
 * @param address - The coordinator's address, named in connection errors.
 */
export function fromConnectError(err: unknown, address: string): LedgerflowError {
  if (err instanceof LedgerflowError) return err;
  const e = ConnectError.from(err);
  const details = e.rawMessage;
  switch (e.code) {
    case Code.InvalidArgument: {
      const match = FIELD_PROBLEM.exec(details);
      return match ? new InvalidArgumentError(match[1]!, match[2]!) : new InvalidArgumentError("", details);
    }
    case Code.NotFound:
      return new RunNotFoundError(details, { cause: e });
    case Code.AlreadyExists:
      return new RunAlreadyExistsError(details, { cause: e });
    case Code.FailedPrecondition:
      return new FailedPreconditionError(details, { cause: e });
    case Code.ResourceExhausted:
      return new PayloadTooLargeError(details, { cause: e });
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return new CoordinatorUnavailableError(
        `cannot reach the coordinator at ${address}: ${details || Code[e.code]}`,
        { cause: e },
      );
    default:
      return new LedgerflowError(`${Code[e.code]}: ${details}`, { cause: e });
  }
}
