"""Logs with positional cursors: exactly once, without ever comparing text.

Producer side: every channel (a step's stdout, stderr, the worker's lifecycle
channel, ...) counts the lines it ever emitted. :func:`slice_positional_log_lines`
cuts the not-yet-sent suffix out of a producer's rotating buffer, and each
batch carries ``channel_offset``, the count of lines the channel emitted before
the batch's first line (the reference's ``slicePositionalLogLines``).

Ingestion side (the coordinator calls :func:`ingest_log_batch` inside the
appending transaction): a per (run, channel) cursor counts the lines already
ingested. An overlapping resend has its ingested prefix skipped by position, so
repeated identical lines survive; a batch that starts beyond the cursor records
one loud gap marker and continues; every stored line gets an absolute per-run
``seq``. Past the retention cap (25,000 lines or 5 MB per run by default) line
bodies are dropped, a truncation marker is the last stored line, and the count
keeps going. Markers are stored lines too: they take a seq and appear in the
snapshot's tail, so ``total_log_count`` always equals the last seq handed out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ledgerflow.ledger._status import js_trim
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb

BLANK_LINE_PLACEHOLDER = "(blank log line)"
"""Stands in for a blank line in a positional batch: dropping it would shift every later line."""


@dataclass(frozen=True, slots=True)
class PositionalSlice:
    """The unsent suffix of a producer's log buffer.

    Attributes:
        lines: The lines to send, oldest first.
        channel_offset: How many lines the channel emitted before ``lines[0]``.
    """

    lines: list[str]
    channel_offset: int


def slice_positional_log_lines(
    buffer_lines: Sequence[str], buffer_total_count: int, sent_count: int
) -> PositionalSlice | None:
    """Cut the not-yet-sent lines out of a producer's rotating log buffer, by position.

    Lines that rotated out of the buffer before they were ever sent are not
    renumbered: the returned offset jumps past them and ingestion records a gap.

    Args:
        buffer_lines: The retained tail of the lines the channel emitted.
        buffer_total_count: How many lines the channel ever emitted (monotonic).
        sent_count: The producer's cursor: lines already handed to the ledger.

    Returns:
        The new lines and the offset of the first one, or None when nothing is new.
    """
    total = max(buffer_total_count, len(buffer_lines))
    sent = max(0, sent_count)
    if total <= sent:
        return None
    buffer_first_offset = total - len(buffer_lines)
    send_from = max(sent, buffer_first_offset)
    lines = list(buffer_lines[send_from - buffer_first_offset :])
    if not lines:
        return None
    return PositionalSlice(lines=lines, channel_offset=send_from)


def normalize_log_lines(lines: Sequence[str], *, positional: bool) -> list[str]:
    """Trim lines; keep blanks as a placeholder in positional batches, drop them otherwise."""
    if positional:
        return [js_trim(line) or BLANK_LINE_PLACEHOLDER for line in lines]
    return [t for t in (js_trim(line) for line in lines) if t]


def without_nul(lines: Sequence[str]) -> list[str]:
    """Return ``lines`` with each NUL replaced by U+FFFD, positions unchanged.

    Postgres text cannot hold NUL and the coordinator refuses a line with one, so
    producers of raw output (a subprocess, a step's logs) pass their lines through
    this first.
    """
    return [line.replace("\x00", "\ufffd") for line in lines]


def build_log_events(
    run_id: str,
    lines: Sequence[str],
    *,
    event_time_nanos: int,
    source: pb.EventSource.ValueType = pb.EVENT_SOURCE_WORKER,
    channel: str = "",
    channel_offset: int | None = None,
) -> list[pb.LedgerEvent]:
    """Turn producer log lines into (at most) one ``log_appended`` event.

    No text deduplication happens here; redelivery is reconciled at ingestion
    by position (the reference's ``buildPlayRunLedgerEventsFromLogLines``).

    Args:
        run_id: The run the lines belong to.
        lines: The lines, oldest first.
        event_time_nanos: The event time.
        source: Who produced the lines.
        channel: The producer channel.
        channel_offset: The channel position of ``lines[0]``; None for a non-positional batch.

    Returns:
        An empty list when no line survives normalisation, else one event.
    """
    positional = channel_offset is not None and channel_offset >= 0
    kept = normalize_log_lines(lines, positional=positional)
    if not kept:
        return []
    event = pb.LedgerEvent(run_id=run_id, source=source)
    set_nanos(event.event_time, event_time_nanos)
    event.log_appended.lines.extend(kept)
    event.log_appended.channel = channel
    if positional:
        assert channel_offset is not None
        event.log_appended.channel_offset = channel_offset
    return [event]


@dataclass(frozen=True, slots=True)
class LogRetention:
    """How much of a run's log is stored in full.

    Attributes:
        max_lines: Lines stored per run, the truncation marker included.
        max_bytes: UTF-8 bytes of line bodies stored per run.
    """

    max_lines: int = 25_000
    max_bytes: int = 5 * 1024 * 1024


@dataclass(slots=True)
class RunLogState:
    """Per-run log counters the coordinator keeps next to the run.

    Attributes:
        last_seq: The last line seq handed out (stored or not); the next line gets ``last_seq + 1``.
        stored_lines: Lines whose bodies are stored, markers included.
        stored_bytes: UTF-8 bytes of the stored bodies.
        truncated: Whether the retention cap has been crossed.
        cursors: Per channel, how many of its lines have been ingested.
    """

    last_seq: int = 0
    stored_lines: int = 0
    stored_bytes: int = 0
    truncated: bool = False
    cursors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredLine:
    """A log line to store.

    Attributes:
        seq: Its absolute per-run position, from 1.
        channel: The producer channel.
        text: The line.
        marker: Whether ingestion wrote it (a gap or truncation notice).
    """

    seq: int
    channel: str
    text: str
    marker: bool


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingesting one ``log_appended`` batch produced.

    Attributes:
        event: The event to append to the ledger (lines deduplicated, ``first_seq``
            set), or None when the batch held nothing new.
        stored: The lines to store, in seq order.
    """

    event: pb.LedgerEvent | None
    stored: list[StoredLine]


def gap_marker(channel: str, expected: int, got: int) -> str:
    """Return the marker recorded when a positional batch skips lines on a channel."""
    name = channel or "default"
    return (
        f"[ledger] log gap on channel {name}: {got - expected} line(s) never arrived "
        f"(offsets {expected}..{got - 1})"
    )


def truncation_marker(retention: LogRetention) -> str:
    """Return the marker stored as the last line once the retention cap is crossed."""
    return (
        f"[ledger] log retention cap reached ({retention.max_lines} lines / "
        f"{retention.max_bytes} bytes): later lines are counted but not stored"
    )


def ingest_log_batch(
    event: pb.LedgerEvent, state: RunLogState, retention: LogRetention
) -> IngestResult:
    """Ingest one ``log_appended`` event against a run's log state.

    ``state`` is updated in place; the caller persists it in the same
    transaction as the returned event and lines, so a crash loses both or neither.

    Args:
        event: A ``log_appended`` event as a producer sent it.
        state: The run's log state; updated in place.
        retention: The retention cap.

    Returns:
        The event to append (or None if nothing was new) and the lines to store.
    """
    batch = event.log_appended
    positional = batch.HasField("channel_offset") and batch.channel_offset >= 0
    lines = normalize_log_lines(batch.lines, positional=positional)
    channel = batch.channel

    new_lines: list[tuple[str, bool]] = []
    if positional:
        cursor = state.cursors.get(channel, 0)
        offset = batch.channel_offset
        end = offset + len(lines)
        if end <= cursor:
            return IngestResult(event=None, stored=[])
        if offset > cursor:
            new_lines.append((gap_marker(channel, cursor, offset), True))
        skip = max(0, cursor - offset)
        new_lines.extend((line, False) for line in lines[skip:])
        state.cursors[channel] = end
    else:
        new_lines.extend((line, False) for line in lines)
    if not new_lines:
        return IngestResult(event=None, stored=[])

    first_seq = state.last_seq + 1
    kept: list[str] = []
    stored: list[StoredLine] = []
    dropped = 0
    for text, marker in new_lines:
        seq = first_seq + len(kept) + dropped
        size = len(text.encode("utf-8"))
        fits = (
            not state.truncated
            and state.stored_lines + 1 < retention.max_lines
            and state.stored_bytes + size <= retention.max_bytes
        )
        if fits:
            kept.append(text)
            stored.append(StoredLine(seq=seq, channel=channel, text=text, marker=marker))
            state.stored_lines += 1
            state.stored_bytes += size
        elif not state.truncated:
            notice = truncation_marker(retention)
            kept.append(notice)
            stored.append(StoredLine(seq=seq, channel=channel, text=notice, marker=True))
            state.stored_lines += 1
            state.truncated = True
            dropped += 1  # The line that did not fit is counted, its body dropped.
        else:
            dropped += 1
    state.last_seq = first_seq + len(kept) + dropped - 1

    out = pb.LedgerEvent()
    out.CopyFrom(event)
    appended = out.log_appended
    del appended.lines[:]
    appended.lines.extend(kept)
    appended.first_seq = first_seq
    appended.dropped_line_count = dropped
    appended.logs_truncated = state.truncated
    return IngestResult(event=out, stored=stored)
