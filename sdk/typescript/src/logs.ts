/**
 * Positional log slicing: exactly-once log delivery without ever comparing text.
 *
 * Every producer channel counts the lines it ever emitted; a batch carries `channelOffset`,
 * the count of lines the channel emitted before the batch's first line. The coordinator keeps
 * a cursor per (run, channel) and skips an overlapping resend by position, so repeated
 * identical lines survive and a resend after a reconnect is ingested once
 * (`docs/ledger.md`, "Logs"; vectors in `tests/vectors/slicing.json`).
 *
 * @module
 */

/** The unsent suffix of a producer's log buffer. */
export interface PositionalSlice {
  /** The lines to send, oldest first. */
  readonly lines: string[];
  /** How many lines the channel emitted before `lines[0]`. */
  readonly channelOffset: number;
}

/**
 * Cuts the not-yet-sent lines out of a producer's rotating log buffer, by position.
 *
 * Lines that rotated out of the buffer before they were ever sent are not renumbered: the
 * returned offset jumps past them and ingestion records one gap marker.
 *
 * @param bufferLines - The retained tail of the lines the channel emitted.
 * @param bufferTotalCount - How many lines the channel ever emitted (monotonic).
 * @param sentCount - The producer's cursor: lines already handed to the ledger.
 * @returns The new lines and the offset of the first one, or `null` when nothing is new.
 */
export function slicePositionalLogLines(
  bufferLines: readonly string[],
  bufferTotalCount: number,
  sentCount: number,
): PositionalSlice | null {
  const total = Math.max(bufferTotalCount, bufferLines.length);
  const sent = Math.max(0, sentCount);
  if (total <= sent) return null;
  const bufferFirstOffset = total - bufferLines.length;
  const sendFrom = Math.max(sent, bufferFirstOffset);
  const lines = bufferLines.slice(sendFrom - bufferFirstOffset);
  if (lines.length === 0) return null;
  return { lines, channelOffset: sendFrom };
}

/** Stands in for a blank line in a positional batch: dropping it would shift every later line. */
export const BLANK_LINE_PLACEHOLDER = "(blank log line)";

/**
 * Trims lines; keeps blanks as {@link BLANK_LINE_PLACEHOLDER} in positional batches (positions
 * must not shift) and drops them otherwise.
 */
export function normalizeLogLines(lines: readonly string[], positional: boolean): string[] {
  const trimmed = lines.map((line) => line.trim());
  return positional
    ? trimmed.map((line) => line || BLANK_LINE_PLACEHOLDER)
    : trimmed.filter((line) => line !== "");
}
