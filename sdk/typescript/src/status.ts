/**
 * Run status words, normalisation and the terminal set, shared by the reducer and the client.
 *
 * @module
 */
import { RunStatus } from "./gen/ledgerflow/v1/ledger_pb.js";

const TERMINAL = new Set<RunStatus>([
  RunStatus.COMPLETED,
  RunStatus.FAILED,
  RunStatus.CANCELLED,
  RunStatus.TERMINATED,
  RunStatus.TIMED_OUT,
]);

const ALIASES: ReadonlyMap<string, RunStatus> = new Map([
  ["queued", RunStatus.QUEUED],
  ["pending", RunStatus.QUEUED],
  ["running", RunStatus.RUNNING],
  ["started", RunStatus.RUNNING],
  ["waiting", RunStatus.WAITING],
  ["completed", RunStatus.COMPLETED],
  ["complete", RunStatus.COMPLETED],
  ["succeeded", RunStatus.COMPLETED],
  ["failed", RunStatus.FAILED],
  ["error", RunStatus.FAILED],
  ["cancelled", RunStatus.CANCELLED],
  ["canceled", RunStatus.CANCELLED],
  ["terminated", RunStatus.TERMINATED],
  ["timed_out", RunStatus.TIMED_OUT],
  ["timeout", RunStatus.TIMED_OUT],
]);

/** The lower-case words statuses are printed as (anomaly lines, the reference JSON shape). */
export const STATUS_WORDS: Readonly<Record<RunStatus, string>> = {
  [RunStatus.UNSPECIFIED]: "unknown",
  [RunStatus.QUEUED]: "queued",
  [RunStatus.RUNNING]: "running",
  [RunStatus.WAITING]: "waiting",
  [RunStatus.COMPLETED]: "completed",
  [RunStatus.FAILED]: "failed",
  [RunStatus.CANCELLED]: "cancelled",
  [RunStatus.TERMINATED]: "terminated",
  [RunStatus.TIMED_OUT]: "timed_out",
  [RunStatus.UNKNOWN]: "unknown",
};

/** Returns whether `status` is one of the five terminal statuses. */
export function isTerminal(status: RunStatus): boolean {
  return TERMINAL.has(status);
}

/**
 * Maps a producer's free-text status to a {@link RunStatus}: case and surrounding whitespace
 * are ignored, aliases (`pending`, `succeeded`, `canceled`, `timeout`, ...) are understood,
 * anything else is `UNKNOWN`.
 */
export function normalizeStatus(text: string): RunStatus {
  return ALIASES.get(text.trim().toLowerCase()) ?? RunStatus.UNKNOWN;
}
