/**
 * Timestamps and Durations as integer nanoseconds.
 *
 * The reducer compares and subtracts times constantly; doing it on bigint nanoseconds keeps it
 * exact, as the Python reducer does (a `number` of nanoseconds since the epoch overflows 2^53).
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import {
  type Duration,
  DurationSchema,
  type Timestamp,
  TimestampSchema,
} from "@bufbuild/protobuf/wkt";

/** Nanoseconds in a second. */
export const NANOS_PER_SECOND = 1_000_000_000n;
/** Nanoseconds in a millisecond. */
export const NANOS_PER_MILLI = 1_000_000n;

/** Returns `ts` as nanoseconds since the epoch. */
export function toNanos(ts: Timestamp): bigint {
  return ts.seconds * NANOS_PER_SECOND + BigInt(ts.nanos);
}

// Timestamps keep nanos in [0, 1e9) even before the epoch, so division must floor.
function floorDivMod(value: bigint, by: bigint): [bigint, bigint] {
  let q = value / by;
  let r = value % by;
  if (r < 0n) {
    q -= 1n;
    r += by;
  }
  return [q, r];
}

/** Returns a new Timestamp `nanos` nanoseconds after the epoch. */
export function timestampFromNanos(nanos: bigint): Timestamp {
  const [seconds, rem] = floorDivMod(nanos, NANOS_PER_SECOND);
  return create(TimestampSchema, { seconds, nanos: Number(rem) });
}

/** Returns a new Duration of `nanos` (non-negative) nanoseconds. */
export function durationFromNanos(nanos: bigint): Duration {
  const [seconds, rem] = floorDivMod(nanos, NANOS_PER_SECOND);
  return create(DurationSchema, { seconds, nanos: Number(rem) });
}

/** Returns `d` as nanoseconds. */
export function durationNanos(d: Duration): bigint {
  return d.seconds * NANOS_PER_SECOND + BigInt(d.nanos);
}

/** Returns a Timestamp for a JavaScript `Date` (millisecond precision). */
export function timestampFromDate(date: Date): Timestamp {
  return timestampFromNanos(BigInt(date.getTime()) * NANOS_PER_MILLI);
}
