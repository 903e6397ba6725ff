"""Waitpoints: what a waiting run waits on, what resolves it, and when it runs again.

A body that waits (``ctx.sleep``, ``ctx.wait_for_signal``) ends its invocation
``waiting`` with the waitpoints it registered. These operations run inside the
writer's group transaction, like the other ops, with the run's row and all of its
tasks loaded:

- :func:`registered_events` records a result's registrations (``waitpoint_registered``; a
  waitpoint already open or resolved is not registered twice, so the first
  registration's deadline holds across replays) and :func:`resolve` resolves at
  once what can be: a signal wait whose signal already sits in the inbox (source
  INBOX, oldest signal first, each consumed once) and a deadline already past.
- A signal that arrives for an open signal wait resolves it (:func:`resolve_signal`).
- The timer is the run's workflow task itself: :func:`schedule` leaves the run one
  pending task, available when the run has something to do — at once after a
  resolution or a cancellation, else at its earliest open deadline. No separate
  timer table or loop: the dispatcher already sleeps until the next available task,
  claims with ``SKIP LOCKED`` (so two coordinators never take one timer), and a task
  that came due while no coordinator ran is simply overdue when one starts.
- The dispatch of that task (``_tasks.dispatch``) first resolves (:func:`resolve`)
  every deadline that has passed — the timer fires, a signal wait times out — in the same
  transaction as ``run_started``, so the body's journal carries the resolution.

A waiting run holds no lease and no worker slot: only a pending task row.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledgerflow.coordinator.store import _append as ops
from ledgerflow.coordinator.store import _sql_runs as sql_runs
from ledgerflow.coordinator.store import _sql_tasks as sql_tasks
from ledgerflow.ledger import LogRetention, is_terminal
from ledgerflow.ledger._time import set_nanos, to_nanos
from ledgerflow.v1 import common_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb

# What this coordinator resolves; a result registering another kind is malformed.
SUPPORTED_KINDS = frozenset(
    {
        pb.WAITPOINT_KIND_TIMER,
        pb.WAITPOINT_KIND_SIGNAL,
        pb.WAITPOINT_KIND_HUMAN,
        pb.WAITPOINT_KIND_STEP,
        pb.WAITPOINT_KIND_CHILD_RUN,
    }
)
# Waits a signal of the waitpoint's name resolves.
SIGNALLED = (pb.WAITPOINT_KIND_SIGNAL, pb.WAITPOINT_KIND_HUMAN)

MAX_WAITPOINT_ID_CHARS = 200
"""The longest waitpoint id a worker may register."""


def registered_events(
    row: sql_runs.RunRow,
    registrations: Sequence[workflow_pb2.WaitpointRegistration],
    now: int,
) -> list[pb.LedgerEvent]:
    """Return ``waitpoint_registered`` events for the registrations not yet open or resolved.

    A registration's deadline is ``now + timeout``: the worker measured what was left
    on its own clock, so the two clocks' offset does not move the deadline.
    """
    known = {w.waitpoint_id for w in row.snapshot.open_waitpoints}
    known.update(row.journal.waitpoints_resolved)
    out: list[pb.LedgerEvent] = []
    for reg in registrations:
        if reg.waitpoint_id in known:
            continue
        known.add(reg.waitpoint_id)
        event = ops._new_event(row.run_id, pb.EVENT_SOURCE_WORKER, now)
        e = event.waitpoint_registered
        e.waitpoint_id = reg.waitpoint_id
        e.kind = reg.kind
        e.name = reg.name
        # A remote step's timeout bounds one attempt on its worker (it travels in the
        # StepRequest), not the wait; its schedule-to-start deadline is a waitpoint of
        # its own; and its input is not the ledger's to repeat here.
        if reg.HasField("timeout") and (
            reg.kind != pb.WAITPOINT_KIND_STEP or reg.waitpoint_id.startswith(STEP_START)
        ):
            timeout = reg.timeout.seconds * 1_000_000_000 + reg.timeout.nanos
            set_nanos(e.deadline_time, now + timeout)
        if reg.HasField("payload") and reg.kind != pb.WAITPOINT_KIND_STEP:
            e.payload.CopyFrom(reg.payload)
        out.append(event)
    return out


def _resolution(
    row: sql_runs.RunRow,
    wp: pb.WaitpointSnapshot,
    now: int,
    *,
    source: pb.WaitpointResolutionSource.ValueType,
    matched_seq: int = 0,
    payload: common_pb2.Payload | None = None,
    timed_out: bool = False,
) -> pb.LedgerEvent:
    event = ops._new_event(row.run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    e = event.waitpoint_resolved
    e.waitpoint_id = wp.waitpoint_id
    e.kind = wp.kind
    e.source = source
    e.matched_seq = matched_seq
    e.timed_out = timed_out
    if payload is not None:
        e.payload.CopyFrom(payload)
    return event


def resolve(batch: ops.Batch, row: sql_runs.RunRow, *, now: int, retention: LogRetention) -> bool:
    """Resolve the run's open waitpoints that can be: inbox signals and passed deadlines.

    Returns:
        Whether anything was resolved.
    """
    events: list[pb.LedgerEvent] = []
    consumed: set[int] = set()
    for wp in row.snapshot.open_waitpoints:
        if wp.kind in SIGNALLED:
            match = next(
                (
                    s
                    for s in row.journal.signal_inbox
                    if s.name == wp.name and s.seq not in consumed
                ),
                None,
            )
            if match is not None:
                consumed.add(match.seq)
                events.append(
                    _resolution(
                        row,
                        wp,
                        now,
                        source=pb.WAITPOINT_RESOLUTION_SOURCE_INBOX,
                        matched_seq=match.seq,
                        payload=match.payload if match.HasField("payload") else None,
                    )
                )
                continue
        if wp.HasField("deadline_time") and to_nanos(wp.deadline_time) <= now:
            if wp.waitpoint_id.startswith(STEP_START):
                events += _schedule_to_start_passed(batch, row, wp, now)
                continue
            events.append(
                _resolution(
                    row,
                    wp,
                    now,
                    source=pb.WAITPOINT_RESOLUTION_SOURCE_LIVE,
                    timed_out=wp.kind != pb.WAITPOINT_KIND_TIMER,
                )
            )
    if events:
        batch.fold(row, events, retention)
    return bool(events)


STEP_START = "step-start:"
"""Waitpoint id prefix of a remote step's schedule-to-start deadline."""


def _schedule_to_start_passed(
    batch: ops.Batch, row: sql_runs.RunRow, wp: pb.WaitpointSnapshot, now: int
) -> list[pb.LedgerEvent]:
    """A remote step's schedule-to-start deadline passed: fail it if no worker took it.

    A step already started just closes the waitpoint. One still scheduled fails with
    ``TimeoutError`` (code ``SCHEDULE_TO_START_TIMEOUT``), its task is withdrawn, and
    the body's wait on it is resolved with the error.
    """
    step_id = wp.name
    pending = row.journal.pending_steps.get(step_id)
    started = pending is None or pending.status != pb.STEP_STATUS_SCHEDULED
    live = pb.WAITPOINT_RESOLUTION_SOURCE_LIVE
    events = [_resolution(row, wp, now, source=live, timed_out=not started)]
    if started or step_id in row.journal.step_results:
        return events
    error = common_pb2.ErrorInfo(
        type="TimeoutError",
        message=f"no worker started step {step_id!r} before its schedule-to-start timeout",
        code="SCHEDULE_TO_START_TIMEOUT",
    )
    failed = ops._new_event(row.run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    failed.step_failed.step_id = step_id
    failed.step_failed.kind = "remote"
    failed.step_failed.attempt = pending.attempt if pending is not None else 1
    failed.step_failed.error.CopyFrom(error)
    events.append(failed)
    for other in row.snapshot.open_waitpoints:
        if other.waitpoint_id == "step:" + step_id:
            resolved = _resolution(row, other, now, source=live)
            resolved.waitpoint_resolved.error.CopyFrom(error)
            events.append(resolved)
    for task in batch.tasks_of(row.run_id):
        if task.step_id == step_id and task.status != sql_tasks.DONE:
            task.status = sql_tasks.DONE
            task.lease_expire_time = task.worker_id = task.session_id = None
            batch.save_task(task)
    return events


def resolve_open(
    batch: ops.Batch,
    row: sql_runs.RunRow,
    waitpoint_id: str,
    *,
    now: int,
    retention: LogRetention,
    payload: common_pb2.Payload | None = None,
    error: common_pb2.ErrorInfo | None = None,
) -> bool:
    """Resolve the run's open waitpoint ``waitpoint_id`` (live); False when it is not open."""
    for wp in row.snapshot.open_waitpoints:
        if wp.waitpoint_id == waitpoint_id:
            event = _resolution(
                row, wp, now, source=pb.WAITPOINT_RESOLUTION_SOURCE_LIVE, payload=payload
            )
            if error is not None:
                event.waitpoint_resolved.error.CopyFrom(error)
            batch.fold(row, [event], retention)
            return True
    return False


def child_outcome(
    child: pb.RunSnapshot,
) -> tuple[common_pb2.Payload | None, common_pb2.ErrorInfo | None]:
    """What an ended child resolves its parent's wait with: its result, or its error.

    The error's ``code`` says how the child ended (``FAILED``, ``CANCELLED``, ...).
    """
    if child.status == pb.RUN_STATUS_COMPLETED:
        return (child.result if child.HasField("result") else None), None
    error = common_pb2.ErrorInfo()
    if child.HasField("error"):
        error.CopyFrom(child.error)
    error.code = pb.RunStatus.Name(child.status).removeprefix("RUN_STATUS_")
    if not error.message:
        error.message = f"the child run ended {error.code.lower()}"
    return None, error


def resolve_signal(
    batch: ops.Batch,
    row: sql_runs.RunRow,
    name: str,
    seq: int,
    payload: common_pb2.Payload | None,
    *,
    now: int,
    retention: LogRetention,
) -> bool:
    """Resolve the oldest open wait for the signal just appended at ``seq``.

    Returns:
        Whether a wait took it (else it stays in the inbox for a later wait).
    """
    for wp in row.snapshot.open_waitpoints:
        if wp.kind in SIGNALLED and wp.name == name:
            events = [
                _resolution(
                    row,
                    wp,
                    now,
                    source=pb.WAITPOINT_RESOLUTION_SOURCE_LIVE,
                    matched_seq=seq,
                    payload=payload,
                )
            ]
            if wp.kind == pb.WAITPOINT_KIND_HUMAN and wp.waitpoint_id == "human:" + wp.name:
                events += _decided(row, wp.name, payload, now)
            batch.fold(row, events, retention)
            return True
    return False


def _decided(
    row: sql_runs.RunRow, step_id: str, payload: common_pb2.Payload | None, now: int
) -> list[pb.LedgerEvent]:
    """A person decided a blocked step: the decision is its output, and the body goes on."""
    done = ops._new_event(row.run_id, pb.EVENT_SOURCE_CLIENT, now)
    done.step_completed.step_id = step_id
    done.step_completed.kind = "remote"
    pending = row.journal.pending_steps.get(step_id)
    done.step_completed.attempt = pending.attempt if pending is not None else 1
    if payload is not None:
        done.step_completed.output.CopyFrom(payload)
    waiting = [w for w in row.snapshot.open_waitpoints if w.waitpoint_id == "step:" + step_id]
    live = pb.WAITPOINT_RESOLUTION_SOURCE_LIVE
    return [done, *(_resolution(row, w, now, source=live, payload=payload) for w in waiting)]


def schedule(batch: ops.Batch, row: sql_runs.RunRow, *, now: int, wake: bool) -> None:
    """Leave the waiting run one pending workflow task, due when it has something to do.

    Due ``now`` when ``wake`` (something it waits on was resolved) or a cancellation
    was requested, else at its earliest open deadline or its execution deadline;
    with neither, no task: a signal will schedule one. A run whose task is leased
    is left alone: that invocation's result schedules what follows.
    """
    if is_terminal(row.snapshot.status):
        return
    due: int | None = now if wake or row.snapshot.cancel_requested else None
    if due is None:
        deadlines = [
            to_nanos(w.deadline_time)
            for w in row.snapshot.open_waitpoints
            if w.HasField("deadline_time")
        ]
        # A run with an execution timeout is dispatched at its deadline to be stopped.
        if row.snapshot.HasField("deadline_time"):
            deadlines.append(to_nanos(row.snapshot.deadline_time))
        due = min(deadlines) if deadlines else None
    if due is None:
        return
    ops.ensure_task(batch, row, due)
