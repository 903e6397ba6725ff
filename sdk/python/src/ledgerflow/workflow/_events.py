"""Builders for the ledger events the engine appends (all ``source = WORKER``).

Each builder sets only what ``ledgerflow.ledger.validate_event`` and the journal
projection need plus what the snapshot shows; the coordinator assigns ``seq``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb

STEP_KIND = "function"
"""The ``kind`` of a step run in-process by ``ctx.step``."""


def event(run_id: str, time_ns: int) -> pb.LedgerEvent:
    """Return an empty worker event of ``run_id`` at ``time_ns``."""
    out = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(out.event_time, time_ns)
    return out


def step_started(
    run_id: str,
    time_ns: int,
    *,
    step_id: str,
    name: str,
    ordinal: int,
    attempt: int,
    worker_id: str,
    kind: str = STEP_KIND,
) -> pb.LedgerEvent:
    """Return a ``step_started`` event (write-ahead: sent before the step function runs)."""
    out = event(run_id, time_ns)
    e = out.step_started
    e.step_id = step_id
    e.name = name
    e.ordinal = ordinal
    e.attempt = attempt
    e.kind = kind
    e.worker_id = worker_id
    return out


def step_scheduled(
    run_id: str,
    time_ns: int,
    *,
    step_id: str,
    name: str,
    ordinal: int,
    worker_kind: str,
    step_input: common_pb2.Payload,
) -> pb.LedgerEvent:
    """Return a ``step_scheduled`` event: a step handed to a worker of ``worker_kind``."""
    out = event(run_id, time_ns)
    e = out.step_scheduled
    e.step_id = step_id
    e.name = name
    e.ordinal = ordinal
    e.attempt = 1
    e.worker_kind = worker_kind
    e.input.CopyFrom(step_input)
    return out


def step_completed(
    run_id: str,
    time_ns: int,
    *,
    step_id: str,
    attempt: int,
    output: common_pb2.Payload,
    kind: str = STEP_KIND,
) -> pb.LedgerEvent:
    """Return a ``step_completed`` event carrying the step's output."""
    out = event(run_id, time_ns)
    e = out.step_completed
    e.step_id = step_id
    e.attempt = attempt
    e.kind = kind
    e.output.CopyFrom(output)
    return out


def step_failed(
    run_id: str,
    time_ns: int,
    *,
    step_id: str,
    attempt: int,
    error: common_pb2.ErrorInfo,
    next_attempt_ns: int | None,
    kind: str = STEP_KIND,
) -> pb.LedgerEvent:
    """Return a ``step_failed`` event; ``next_attempt_ns`` set means another attempt follows."""
    out = event(run_id, time_ns)
    e = out.step_failed
    e.step_id = step_id
    e.attempt = attempt
    e.kind = kind
    e.error.CopyFrom(error)
    if next_attempt_ns is not None:
        e.will_retry = True
        set_nanos(e.next_attempt_time, next_attempt_ns)
    return out


def compensation_started(run_id: str, time_ns: int, step_id: str) -> pb.LedgerEvent:
    """Return a ``compensation_started`` event."""
    out = event(run_id, time_ns)
    out.compensation_started.step_id = step_id
    return out


def compensation_finished(
    run_id: str, time_ns: int, step_id: str, error: common_pb2.ErrorInfo | None
) -> pb.LedgerEvent:
    """Return ``compensation_completed``, or ``compensation_failed`` when ``error`` is given."""
    out = event(run_id, time_ns)
    if error is None:
        out.compensation_completed.step_id = step_id
    else:
        out.compensation_failed.step_id = step_id
        out.compensation_failed.error.CopyFrom(error)
    return out


def step_progress(
    run_id: str,
    time_ns: int,
    *,
    step_id: str,
    completed: int | None,
    total: int | None,
    failed: int | None,
    message: str | None,
) -> pb.LedgerEvent:
    """Return a ``step_progress`` event; only the counters given are set (they merge field-wise)."""
    out = event(run_id, time_ns)
    e = out.step_progress
    e.step_id = step_id
    p = e.progress
    p.SetInParent()
    if completed is not None:
        p.completed = completed
    if total is not None:
        p.total = total
    if failed is not None:
        p.failed = failed
    if message is not None:
        p.message = message
    set_nanos(p.update_time, time_ns)
    return out


def checkpoint(
    run_id: str,
    time_ns: int,
    *,
    step_id: str,
    checkpoint_seq: int,
    kind: pb.CheckpointType.ValueType,
    summary: str,
    lines: Sequence[str],
    truncated: bool,
    payload: common_pb2.Payload | None,
) -> pb.LedgerEvent:
    """Return a ``checkpoint_recorded`` event."""
    out = event(run_id, time_ns)
    e = out.checkpoint_recorded
    e.step_id = step_id
    e.checkpoint_seq = checkpoint_seq
    e.type = kind
    e.summary = summary
    e.lines.extend(lines)
    e.truncated = truncated
    if payload is not None:
        e.payload.CopyFrom(payload)
    return out


def metadata_updated(
    run_id: str, time_ns: int, mutations: Sequence[pb.MetadataMutation]
) -> pb.LedgerEvent:
    """Return a ``metadata_updated`` event applying ``mutations`` in order."""
    out = event(run_id, time_ns)
    out.metadata_updated.mutations.extend(mutations)
    return out
