"""Coarse status reports turned into ledger events.

Producers that cannot emit fine-grained events (a cron job, another
orchestrator) report a :class:`~ledgerflow.v1.run_service_pb2.StatusPatch`: a
free-text status, new log lines, per-step progress. This module derives the
events that move the previous snapshot to what the patch describes — a port of
the reference's ``buildPlayRunLedgerEventsFromStatusPatch``.

Deviations, pinned by tests in ``tests/ledger/test_status_patch.py``:

1. A patch reporting ``timed_out`` or ``terminated`` yields ``run_timed_out``
   or ``run_terminated``; the reference, which has no such events, emits
   ``run.failed`` and so loses the distinction its own statuses make.
2. Steps are visited in step-id order: a protobuf map has no order, where the
   reference walks its object's insertion order.
3. Empty strings count as absent (proto3 strings have no null): an empty
   ``workflow_name`` falls back to the previous name, an empty
   ``runtime_backend`` is not reported, a terminated patch whose error message
   is empty gets the reducer's default reason.
"""

from __future__ import annotations

from google.protobuf.message import Message

from ledgerflow.ledger._logs import build_log_events
from ledgerflow.ledger._status import is_terminal, js_trim, normalize_status
from ledgerflow.ledger._time import set_nanos, to_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

_Signature = tuple[int | str | None, ...]

# Deviation 1: timed_out and terminated keep their own events (the reference emits run.failed).
_TERMINAL_CASES: dict[pb.RunStatus.ValueType, str] = {
    pb.RUN_STATUS_COMPLETED: "run_completed",
    pb.RUN_STATUS_FAILED: "run_failed",
    pb.RUN_STATUS_CANCELLED: "run_cancelled",
    pb.RUN_STATUS_TIMED_OUT: "run_timed_out",
    pb.RUN_STATUS_TERMINATED: "run_terminated",
}


def _normalize_progress(raw: pb.StepProgress) -> pb.StepProgress:
    out = pb.StepProgress()
    if raw.HasField("completed"):
        out.completed = raw.completed
    if raw.HasField("total"):
        out.total = raw.total
    if raw.HasField("failed"):
        out.failed = raw.failed
    if raw.HasField("message") and js_trim(raw.message):
        out.message = js_trim(raw.message)
    if raw.HasField("artifact_namespace") and js_trim(raw.artifact_namespace):
        out.artifact_namespace = js_trim(raw.artifact_namespace)
    for name in ("start_time", "completion_time", "update_time"):
        if raw.HasField(name):
            getattr(out, name).CopyFrom(getattr(raw, name))
    return out


def _time(owner: Message, name: str) -> int | None:
    return to_nanos(getattr(owner, name)) if owner.HasField(name) else None


def _signature(p: pb.StepProgress | None) -> _Signature:
    """The fields whose change makes a progress event worth appending (not update_time)."""
    if p is None:
        return (None,) * 7
    return (
        p.completed if p.HasField("completed") else None,
        p.total if p.HasField("total") else None,
        p.failed if p.HasField("failed") else None,
        p.message if p.HasField("message") else None,
        p.artifact_namespace if p.HasField("artifact_namespace") else None,
        _time(p, "start_time"),
        _time(p, "completion_time"),
    )


def _event(run_id: str, source: pb.EventSource.ValueType, occurred: int) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id, source=source)
    set_nanos(event.event_time, occurred)
    return event


def events_from_status_patch(
    patch: rpb.StatusPatch,
    previous: pb.RunSnapshot,
    *,
    now_nanos: int,
    source: pb.EventSource.ValueType = pb.EVENT_SOURCE_WORKER,
) -> list[pb.LedgerEvent]:
    """Derive the ledger events a status patch stands for.

    Args:
        patch: The producer's report.
        previous: The run's snapshot before the patch.
        now_nanos: The time to use when the patch has no ``last_checkpoint_time``.
        source: Who produced the patch.

    Returns:
        The events, in the order to append them (possibly none).
    """
    run_id = patch.run_id
    status = normalize_status(patch.status)
    live = {
        step_id: _normalize_progress(raw)
        for step_id, raw in sorted(patch.live_step_progress.items())
        if js_trim(step_id)
    }
    checkpoint = (
        to_nanos(patch.last_checkpoint_time)
        if patch.HasField("last_checkpoint_time")
        else now_nanos
    )
    starts = [t for p in live.values() if (t := _time(p, "start_time")) is not None]
    starts += [t for s in previous.steps.values() if (t := _time(s, "start_time")) is not None]
    finishes = [t for p in live.values() if (t := _time(p, "completion_time")) is not None]
    finishes += [
        t for s in previous.steps.values() if (t := _time(s, "completion_time")) is not None
    ]

    events: list[pb.LedgerEvent] = []
    # The reference tests `!startedAt`, so a start at the epoch counts as no start.
    if not _time(previous, "start_time") and (
        live or status == pb.RUN_STATUS_RUNNING or is_terminal(status)
    ):
        started = _event(run_id, source, min(starts) if starts else checkpoint)
        started.run_started.SetInParent()
        if patch.workflow_name:
            started.run_started.workflow_name = patch.workflow_name
        elif previous.HasField("workflow_name"):
            started.run_started.workflow_name = previous.workflow_name
        if patch.runtime_backend:
            started.run_started.runtime.backend = patch.runtime_backend
        events.append(started)

    events.extend(
        build_log_events(
            run_id,
            patch.live_logs,
            event_time_nanos=checkpoint,
            source=source,
            channel_offset=(
                patch.live_logs_channel_offset
                if patch.HasField("live_logs_channel_offset")
                else None
            ),
        )
    )

    for step_id, progress in live.items():
        before = previous.steps.get(step_id)
        started_at = _time(progress, "start_time")
        if started_at and not (before is not None and _time(before, "start_time")):
            event = _event(run_id, source, started_at)
            event.step_started.step_id = step_id
            if progress.HasField("artifact_namespace"):
                event.step_started.artifact_namespace = progress.artifact_namespace
            events.append(event)

        normalized = pb.StepProgress()
        normalized.CopyFrom(progress)
        if not normalized.HasField("update_time"):
            set_nanos(normalized.update_time, checkpoint)
        before_progress = (
            before.progress if before is not None and before.HasField("progress") else None
        )
        if _signature(normalized) != _signature(before_progress):
            updated_at = _time(progress, "update_time")
            event = _event(run_id, source, checkpoint if updated_at is None else updated_at)
            e = event.step_progress
            e.step_id = step_id
            if progress.HasField("completion_time"):
                e.status = pb.STEP_STATUS_COMPLETED
            elif before is not None and before.status == pb.STEP_STATUS_FAILED:
                e.status = pb.STEP_STATUS_FAILED
            else:
                e.status = pb.STEP_STATUS_RUNNING
            e.progress.CopyFrom(normalized)
            events.append(event)

        completed_at = _time(progress, "completion_time")
        if completed_at and not (before is not None and _time(before, "completion_time")):
            event = _event(run_id, source, completed_at)
            event.step_completed.step_id = step_id
            if progress.HasField("artifact_namespace"):
                event.step_completed.artifact_namespace = progress.artifact_namespace
            events.append(event)

    if is_terminal(status) and not is_terminal(previous.status):
        event = _event(run_id, source, max(finishes) if finishes else checkpoint)
        case = _TERMINAL_CASES[status]
        ended = getattr(event, case)
        ended.SetInParent()
        if case == "run_terminated":
            ended.reason = patch.error.message
        elif case != "run_completed" and patch.HasField("error"):
            ended.error.CopyFrom(patch.error)
        if patch.HasField("result"):
            ended.result.CopyFrom(patch.result)
        events.append(event)
    return events
