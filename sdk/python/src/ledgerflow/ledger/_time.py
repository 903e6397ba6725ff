"""Conversions between protobuf Timestamps and integer nanoseconds.

The reducer compares and subtracts times constantly; doing it on integer
nanoseconds keeps it exact (the reference works in epoch milliseconds, which
convert to nanoseconds without loss).
"""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_MILLI = 1_000_000
# Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_NANOS = -62_135_596_800 * NANOS_PER_SECOND
MAX_TIMESTAMP_NANOS = 253_402_300_799 * NANOS_PER_SECOND + 999_999_999


def to_nanos(ts: Timestamp) -> int:
    """Return ``ts`` as integer nanoseconds since the epoch."""
    return ts.seconds * NANOS_PER_SECOND + ts.nanos


def set_nanos(ts: Timestamp, nanos: int) -> None:
    """Set ``ts`` in place to ``nanos`` nanoseconds since the epoch."""
    seconds, rem = divmod(nanos, NANOS_PER_SECOND)
    ts.seconds = seconds
    ts.nanos = rem


def timestamp(nanos: int) -> Timestamp:
    """Return a new Timestamp for ``nanos`` nanoseconds since the epoch."""
    ts = Timestamp()
    set_nanos(ts, nanos)
    return ts


def set_duration_nanos(d: Duration, nanos: int) -> None:
    """Set ``d`` in place to ``nanos`` nanoseconds (non-negative)."""
    seconds, rem = divmod(nanos, NANOS_PER_SECOND)
    d.seconds = seconds
    d.nanos = rem


def duration_nanos(d: Duration) -> int:
    """Return ``d`` as integer nanoseconds."""
    return d.seconds * NANOS_PER_SECOND + d.nanos
