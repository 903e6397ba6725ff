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

/**
 * The caller's token does not allow the request: it lacks the scope the call needs, or it is
 * confined to another namespace (PERMISSION_DENIED). A missing or unknown token is
 * UNAUTHENTICATED, which arrives as a plain {@link LedgerflowError}, as in the Python SDK.
 */
export class PermissionDeniedError extends LedgerflowError {
  override name = "PermissionDeniedError";
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

// Codes Node gives a failed TLS handshake: OpenSSL's (ERR_SSL_..., ERR_OSSL_...), Node's own
// (ERR_TLS_...), and the X.509 verification results (UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...).
const TLS_FAILURE =
  /^(?:ERR_SSL_|ERR_OSSL_|ERR_TLS_|UNABLE_TO_|CERT_|CRL_|ERROR_IN_C)|^(?:DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH_EXCEEDED|HOSTNAME_MISMATCH)$/;

/** The Node TLS error somewhere in `err`'s cause chain, if the call failed in a TLS handshake. */
function tlsFailure(err: unknown): Error | undefined {
  const seen = new Set<unknown>();
  for (let e = err; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && TLS_FAILURE.test(code)) return e;
  }
  return undefined;
}

/** The error for a coordinator that cannot be reached, naming its address. */
export function unavailableError(address: string, reason: string, cause: unknown): CoordinatorUnavailableError {
  return new CoordinatorUnavailableError(`cannot reach the coordinator at ${address}: ${reason}`, { cause });
}

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
  // connect-node reports a failed handshake as INTERNAL; to the caller it is a coordinator it
  // cannot reach, as grpcio (and so the Python SDK) reports it: an untrusted or unexpected
  // certificate, TLS to a plaintext port.
  const tls = tlsFailure(e);
  if (tls !== undefined) return unavailableError(address, `TLS handshake failed: ${tls.message}`, e);
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
    case Code.PermissionDenied:
      return new PermissionDeniedError(details, { cause: e });
    case Code.ResourceExhausted:
      return new PayloadTooLargeError(details, { cause: e });
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return unavailableError(address, details || Code[e.code]!, e);
    default:
      return new LedgerflowError(`${Code[e.code]}: ${details}`, { cause: e });
  }
}
