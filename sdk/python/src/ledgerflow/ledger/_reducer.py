"""The snapshot reducer: a pure fold of a run's ledger into its live snapshot.

A port of the reference ledger's ``reducePlayRunLedgerEvent`` (see
``shared/reference/000_*.txt``) onto the ``ledgerflow.v1`` protos, keeping
every rule: status normalisation and the terminal set; terminal precedence
(first terminal wins, a conflicting one is ignored and recorded as one anomaly
log line, except that a failure demotes ``completed``); steps in first-seen
order with sticky ``failed``, field-wise progress merge and completion
inference; ``active_step_id`` as the last still-running step; a bounded log
tail of 100 lines with a monotonic ``total_log_count`` pinned by ``first_seq``;
timing derived from the first start and finish.

``reduce`` never mutates its input: it copies the snapshot once and folds the
events into the copy, so a batch costs one copy, not one per event.

Deviations from the reference, each pinned by a test in
``tests/ledger/test_reducer.py``:

1. ``run_created`` with a status does not move an already terminal run (the
   reference lets ``run.created`` overwrite any status, which would let a
   late or replayed creation revive a finished run).
2. Retries: a ``step_failed`` with ``will_retry`` marks the step ``RETRYING``
   (not the sticky ``FAILED``) and leaves its completion time alone, so a step
   that fails once and then succeeds ends ``COMPLETED``. The reference has no
   retries; its sticky-failed rule would otherwise report every retried
   success as failed. A final failure (``will_retry`` unset) is sticky as in
   the reference.
3. ``run_timed_out`` and ``run_terminated`` exist (the reference has the
   statuses but no events for them); they follow the same precedence rules as
   ``run_cancelled``: only ``run_failed`` may demote ``completed``.

Events the reference does not have (scheduling, compensation, waitpoints,
checkpoints, metadata, cancellation requests, signals) only touch fields the
reference does not have, so they cannot change any reference-visible field
except ``update_time``, which every event advances as in the reference. A
terminal event also clears ``open_waitpoints``: an ended run waits on nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from google.protobuf.message import Message

from ledgerflow.ledger._metadata import apply_metadata_mutations
from ledgerflow.ledger._status import STATUS_WORDS, is_terminal, js_trim
from ledgerflow.ledger._time import set_duration_nanos, set_nanos, to_nanos
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb

LOG_TAIL_LIMIT = 100
"""How many log lines a snapshot keeps in ``log_tail``."""

_TERMINAL_BY_CASE: dict[str, pb.RunStatus.ValueType] = {
    "run_completed": pb.RUN_STATUS_COMPLETED,
    "run_failed": pb.RUN_STATUS_FAILED,
    "run_cancelled": pb.RUN_STATUS_CANCELLED,
    "run_timed_out": pb.RUN_STATUS_TIMED_OUT,
    "run_terminated": pb.RUN_STATUS_TERMINATED,
}

# Anomaly lines name events as the reference does ("run.completed"), so a
# snapshot reduced from bridged reference events is identical to the reference's.
_ANOMALY_EVENT_NAMES = {
    "run_completed": "run.completed",
    "run_failed": "run.failed",
    "run_cancelled": "run.cancelled",
    "run_timed_out": "run.timed_out",
    "run_terminated": "run.terminated",
}

_FINAL_STEP_STATUSES = (pb.STEP_STATUS_COMPLETED, pb.STEP_STATUS_FAILED, pb.STEP_STATUS_SKIPPED)


def empty_snapshot(run_id: str) -> pb.RunSnapshot:
    """Return the snapshot of a run before any event: status ``UNKNOWN``, nothing else set.

    Args:
        run_id: The run's id; events for other runs are ignored by the fold.

    Returns:
        A new snapshot.
    """
    return pb.RunSnapshot(run_id=run_id, status=pb.RUN_STATUS_UNKNOWN)


def reduce(snapshot: pb.RunSnapshot, event: pb.LedgerEvent) -> pb.RunSnapshot:
    """Fold one event into a snapshot.

    Args:
        snapshot: The snapshot so far; not modified.
        event: The next event of the run's ledger.

    Returns:
        A new snapshot. Events for another run id leave it equal to ``snapshot``.
    """
    return reduce_events(snapshot, (event,))


def reduce_events(snapshot: pb.RunSnapshot, events: Iterable[pb.LedgerEvent]) -> pb.RunSnapshot:
    """Fold events, in order, into a snapshot.

    Args:
        snapshot: The snapshot so far; not modified.
        events: Events in ledger order.

    Returns:
        A new snapshot.
    """
    out = pb.RunSnapshot()
    out.CopyFrom(snapshot)
    for event in events:
        apply_event(out, event)
    return out


def apply_event(snap: pb.RunSnapshot, event: pb.LedgerEvent) -> None:
    """Fold one event into ``snap`` in place (the hot-path form of :func:`reduce`).

    Args:
        snap: The snapshot to update.
        event: The next event of the run's ledger.
    """
    if event.run_id != snap.run_id:
        return
    case = event.WhichOneof("payload")
    occurred = max(0, to_nanos(event.event_time))
    updated = to_nanos(snap.update_time) if snap.HasField("update_time") else 0
    set_nanos(snap.update_time, max(updated, occurred))
    if event.seq > snap.last_seq:
        snap.last_seq = event.seq
    if case is None:
        return
    handler = _HANDLERS.get(case)
    if handler is not None:
        handler(snap, event, occurred)
    _with_timing(snap)


# -- helpers ---------------------------------------------------------------


def _set_time_if_unset(owner: Message, name: str, nanos: int) -> None:
    if not owner.HasField(name):
        set_nanos(getattr(owner, name), nanos)


def _append_log_lines(
    snap: pb.RunSnapshot,
    lines: Sequence[str],
    *,
    first_seq: int | None = None,
    extra_count: int = 0,
    truncated: bool = False,
) -> None:
    # The reducer trusts ingestion: every non-blank line counts, repeats included.
    kept = [t for t in (js_trim(line) for line in lines) if t]
    if first_seq is not None and first_seq > 0:
        snap.total_log_count = max(snap.total_log_count, first_seq + len(kept) + extra_count - 1)
    else:
        snap.total_log_count += len(kept) + extra_count
    if kept:
        snap.log_tail.extend(kept)
        if len(snap.log_tail) > LOG_TAIL_LIMIT:
            del snap.log_tail[: len(snap.log_tail) - LOG_TAIL_LIMIT]
    if truncated:
        snap.logs_truncated = True


def _with_timing(snap: pb.RunSnapshot) -> None:
    if snap.HasField("start_time") and snap.HasField("finish_time"):
        set_duration_nanos(
            snap.duration, max(0, to_nanos(snap.finish_time) - to_nanos(snap.start_time))
        )
    else:
        snap.ClearField("duration")
    if is_terminal(snap.status) and not snap.HasField("result_namespace"):
        for step_id in reversed(snap.ordered_step_ids):
            step = snap.steps.get(step_id)
            # Blank namespaces do not count, as in the reference's `namespace?.trim()`.
            if (
                step is not None
                and step.HasField("artifact_namespace")
                and js_trim(step.artifact_namespace)
            ):
                snap.result_namespace = step.artifact_namespace
                break


def _clear_active(snap: pb.RunSnapshot) -> None:
    snap.ClearField("active_step_id")
    snap.ClearField("active_artifact_namespace")


def _set_active(
    snap: pb.RunSnapshot, step_id: str | None, namespace_of: pb.StepSnapshot | None
) -> None:
    if step_id is None:
        _clear_active(snap)
        return
    snap.active_step_id = step_id
    if namespace_of is not None and namespace_of.HasField("artifact_namespace"):
        snap.active_artifact_namespace = namespace_of.artifact_namespace
    else:
        snap.ClearField("active_artifact_namespace")


def _step(
    snap: pb.RunSnapshot, step_id: str, status: pb.StepStatus.ValueType
) -> tuple[pb.StepSnapshot, pb.StepStatus.ValueType | None]:
    """Return the step to update (created with ``status`` if new) and its status before."""
    existing = snap.steps.get(step_id)
    if existing is not None:
        return existing, existing.status
    step = snap.steps[step_id]
    step.step_id = step_id
    step.first_seen_index = len(snap.ordered_step_ids)
    snap.ordered_step_ids.append(step_id)
    _set_status(snap, step, status)
    return step, None


def _set_status(
    snap: pb.RunSnapshot, step: pb.StepSnapshot, status: pb.StepStatus.ValueType
) -> None:
    """Set a step's status, keeping ``running_step_ids`` in first-seen order.

    The reference finds the active step by scanning every step on each
    completion; keeping the running ones apart makes that O(running), not
    O(steps), which matters for runs with thousands of steps.
    """
    was_running = step.status == pb.STEP_STATUS_RUNNING
    step.status = status
    if was_running == (status == pb.STEP_STATUS_RUNNING):
        return
    running = snap.running_step_ids
    if was_running:
        running.remove(step.step_id)
        return
    pos = len(running)
    while pos > 0 and snap.steps[running[pos - 1]].first_seen_index > step.first_seen_index:
        pos -= 1
    running.insert(pos, step.step_id)


def _copy_label_kind(
    step: pb.StepSnapshot,
    event: pb.StepStarted | pb.StepProgressed | pb.StepCompleted | pb.StepFailed | pb.StepSkipped,
) -> None:
    if event.HasField("label"):
        step.label = event.label
    if event.HasField("kind"):
        step.kind = event.kind


# -- run events ------------------------------------------------------------


def _on_run_created(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.run_created
    if e.HasField("workflow_name"):
        snap.workflow_name = e.workflow_name
    if e.workflow_version:
        snap.workflow_version = e.workflow_version
    # Deviation 1: a creation never revives a terminal run.
    if e.status != pb.RUN_STATUS_UNSPECIFIED and not is_terminal(snap.status):
        snap.status = e.status
    if not snap.HasField("create_time"):
        set_nanos(snap.create_time, occurred)
    if e.tags:
        del snap.tags[:]
        snap.tags.extend(e.tags)
    if e.parent_run_id:
        snap.parent_run_id = e.parent_run_id
    if e.idempotency_key:
        snap.idempotency_key = e.idempotency_key
    if e.namespace:
        snap.namespace = e.namespace
    if e.HasField("execution_timeout"):
        timeout = e.execution_timeout.seconds * 1_000_000_000 + e.execution_timeout.nanos
        set_nanos(snap.deadline_time, to_nanos(snap.create_time) + timeout)


def _on_run_started(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.run_started
    if e.HasField("workflow_name"):
        snap.workflow_name = e.workflow_name
    if not is_terminal(snap.status):
        snap.status = pb.RUN_STATUS_RUNNING
    _set_time_if_unset(snap, "start_time", occurred)


def _on_run_waiting(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    if not is_terminal(snap.status):
        snap.status = pb.RUN_STATUS_WAITING


def _conflicts(snap: pb.RunSnapshot, case: str) -> bool:
    """Apply terminal precedence; return True when the event must be ignored.

    Redelivery of the same terminal status is benign and reduces normally. A
    terminal event that disagrees with an already terminal snapshot is
    ignored and recorded as one anomaly line, so a late worker terminal can
    never flip an explicit cancellation. The one exception is ``run_failed``
    on a ``completed`` run: post-completion work (accounting, a billing cap)
    may fail a run that already reported completion, and that must stick.
    A failed run can never be flipped to completed.
    """
    if not is_terminal(snap.status):
        return False
    target = _TERMINAL_BY_CASE[case]
    if target == snap.status:
        return False
    if snap.status == pb.RUN_STATUS_COMPLETED and case == "run_failed":
        return False
    _append_log_lines(
        snap,
        [
            f"[ledger] conflicting terminal event {_ANOMALY_EVENT_NAMES[case]} ignored; "
            f"status already {STATUS_WORDS[snap.status]}"
        ],
    )
    return True


def _finish(snap: pb.RunSnapshot, status: pb.RunStatus.ValueType, occurred: int) -> None:
    snap.status = status
    _set_time_if_unset(snap, "start_time", occurred)
    _set_time_if_unset(snap, "finish_time", occurred)
    _clear_active(snap)


def _on_run_ended(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    """Reduce any terminal event: completed, failed, cancelled, timed out, terminated."""
    case = event.WhichOneof("payload")
    assert case is not None
    if _conflicts(snap, case):
        return
    ended = getattr(event, case)
    _finish(snap, _TERMINAL_BY_CASE[case], occurred)
    # A run that ended waits on nothing: its pending timers and waits are discarded.
    del snap.open_waitpoints[:]
    if case == "run_completed":
        snap.ClearField("error")
        if ended.HasField("result_summary"):
            snap.result_summary.CopyFrom(ended.result_summary)
    elif case == "run_terminated":
        snap.error.CopyFrom(
            common_pb2.ErrorInfo(message=ended.reason or "terminated", type="Terminated")
        )
    else:
        # An ended event without an error keeps the one already recorded.
        if ended.HasField("error"):
            snap.error.CopyFrom(ended.error)
        if ended.compensation != pb.COMPENSATION_OUTCOME_UNSPECIFIED:
            snap.compensation = ended.compensation
    if ended.HasField("result"):
        snap.result.CopyFrom(ended.result)


# -- step events -----------------------------------------------------------


def _on_step_scheduled(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_scheduled
    step, before = _step(snap, e.step_id, pb.STEP_STATUS_SCHEDULED)
    if before in (pb.STEP_STATUS_RETRYING, pb.STEP_STATUS_SCHEDULED):
        _set_status(snap, step, pb.STEP_STATUS_SCHEDULED)
    if e.worker_kind:
        step.worker_kind = e.worker_kind
    if e.attempt > 0:
        step.attempt = e.attempt
    set_nanos(step.update_time, occurred)


def _on_step_started(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_started
    step, before = _step(snap, e.step_id, pb.STEP_STATUS_RUNNING)
    _copy_label_kind(step, e)
    if before not in (pb.STEP_STATUS_FAILED, pb.STEP_STATUS_COMPLETED):
        _set_status(snap, step, pb.STEP_STATUS_RUNNING)
    if e.HasField("artifact_namespace"):
        step.artifact_namespace = e.artifact_namespace
    _set_time_if_unset(step, "start_time", occurred)
    set_nanos(step.update_time, occurred)
    if e.attempt > 0:
        step.attempt = e.attempt
    step.ClearField("next_attempt_time")

    if not is_terminal(snap.status):
        snap.status = pb.RUN_STATUS_RUNNING
    _set_time_if_unset(snap, "start_time", occurred)
    if step.status == pb.STEP_STATUS_RUNNING:
        _set_active(snap, e.step_id, step)


_PROGRESS_SCALARS: tuple[
    Literal["completed", "total", "failed", "message", "artifact_namespace"], ...
] = ("completed", "total", "failed", "message", "artifact_namespace")
_PROGRESS_TIMES: tuple[Literal["start_time", "completion_time", "update_time"], ...] = (
    "start_time",
    "completion_time",
    "update_time",
)


def _on_step_progress(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_progress
    incoming = e.progress
    before = snap.steps.get(e.step_id)

    progress = pb.StepProgress()
    if before is not None and before.HasField("progress"):
        progress.CopyFrom(before.progress)
    # Field-wise merge: a field present in the event replaces the snapshot's.
    for name in _PROGRESS_SCALARS:
        if incoming.HasField(name):
            setattr(progress, name, getattr(incoming, name))
    for time_name in _PROGRESS_TIMES:
        if incoming.HasField(time_name):
            getattr(progress, time_name).CopyFrom(getattr(incoming, time_name))
    if not incoming.HasField("update_time"):
        set_nanos(progress.update_time, occurred)

    inferred = (
        pb.STEP_STATUS_COMPLETED
        if progress.HasField("completion_time")
        or (
            progress.HasField("total")
            and progress.HasField("completed")
            and progress.total > 0
            and progress.completed >= progress.total
        )
        else pb.STEP_STATUS_RUNNING
    )
    if before is not None and before.status in _FINAL_STEP_STATUSES:
        status = before.status
    elif e.status == pb.STEP_STATUS_RUNNING and inferred == pb.STEP_STATUS_COMPLETED:
        status = pb.STEP_STATUS_COMPLETED
    elif e.status != pb.STEP_STATUS_UNSPECIFIED:
        status = e.status
    elif before is not None:
        status = before.status
    else:
        status = inferred

    step, _ = _step(snap, e.step_id, status)
    _copy_label_kind(step, e)
    _set_status(snap, step, status)
    if progress.HasField("artifact_namespace"):
        step.artifact_namespace = progress.artifact_namespace
    if not step.HasField("start_time") and incoming.HasField("start_time"):
        step.start_time.CopyFrom(incoming.start_time)
    if not step.HasField("completion_time"):
        if incoming.HasField("completion_time"):
            step.completion_time.CopyFrom(incoming.completion_time)
        elif status == pb.STEP_STATUS_COMPLETED:
            if incoming.HasField("update_time"):
                step.completion_time.CopyFrom(incoming.update_time)
            else:
                set_nanos(step.completion_time, occurred)
    set_nanos(step.update_time, occurred)
    step.progress.CopyFrom(progress)

    if status == pb.STEP_STATUS_RUNNING:
        _set_active(snap, e.step_id, step)
    elif snap.HasField("active_step_id") and snap.active_step_id == e.step_id:
        _clear_active(snap)


def _finish_step(
    snap: pb.RunSnapshot,
    step_id: str,
    status: pb.StepStatus.ValueType,
    occurred: int,
    event: pb.StepCompleted | pb.StepFailed | pb.StepSkipped,
    *,
    retrying: bool = False,
) -> pb.StepSnapshot:
    before = snap.steps.get(step_id)
    before_status = before.status if before is not None else pb.STEP_STATUS_UNSPECIFIED
    preserve_failed = before_status == pb.STEP_STATUS_FAILED and status != pb.STEP_STATUS_FAILED
    if preserve_failed:
        status = pb.STEP_STATUS_FAILED
    elif retrying:
        # Deviation 2: a failure that will be retried is not final, unless the step already ended.
        status = before_status if before_status in _FINAL_STEP_STATUSES else pb.STEP_STATUS_RETRYING

    step, _ = _step(snap, step_id, status)
    _copy_label_kind(step, event)
    _set_status(snap, step, status)
    if event.HasField("artifact_namespace"):
        step.artifact_namespace = event.artifact_namespace
    if not (status == pb.STEP_STATUS_SKIPPED or preserve_failed or retrying):
        set_nanos(step.completion_time, occurred)
    set_nanos(step.update_time, occurred)

    # The active step is the last step still running; this one no longer is.
    active = snap.running_step_ids[-1] if snap.running_step_ids else None
    _set_active(snap, active, snap.steps[active] if active is not None else None)
    return step


def _on_step_completed(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_completed
    step = _finish_step(snap, e.step_id, pb.STEP_STATUS_COMPLETED, occurred, e)
    if e.attempt > 0:
        step.attempt = e.attempt
    if step.status == pb.STEP_STATUS_COMPLETED:
        step.ClearField("error")
        step.ClearField("next_attempt_time")


def _on_step_failed(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_failed
    step = _finish_step(snap, e.step_id, pb.STEP_STATUS_FAILED, occurred, e, retrying=e.will_retry)
    if e.attempt > 0:
        step.attempt = e.attempt
    if e.HasField("error"):
        step.error.CopyFrom(e.error)
    if step.status == pb.STEP_STATUS_RETRYING and e.HasField("next_attempt_time"):
        step.next_attempt_time.CopyFrom(e.next_attempt_time)
    else:
        step.ClearField("next_attempt_time")


def _on_step_skipped(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_skipped
    _finish_step(snap, e.step_id, pb.STEP_STATUS_SKIPPED, occurred, e)


# -- other events ----------------------------------------------------------


def _on_log_appended(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.log_appended
    _append_log_lines(
        snap,
        e.lines,
        first_seq=e.first_seq if e.HasField("first_seq") else None,
        extra_count=e.dropped_line_count,
        truncated=e.logs_truncated,
    )


def _on_summary_updated(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.summary_updated
    if not snap.HasField("result_namespace") and e.HasField("namespace"):
        snap.result_namespace = e.namespace


def _compensation(snap: pb.RunSnapshot, step_id: str, occurred: int) -> pb.CompensationSnapshot:
    for entry in snap.compensations:
        if entry.step_id == step_id:
            return entry
    entry = snap.compensations.add(step_id=step_id)
    set_nanos(entry.start_time, occurred)
    return entry


def _on_compensation_started(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    # A compensation restarted after a crash reuses its entry: one row per step.
    entry = _compensation(snap, event.compensation_started.step_id, occurred)
    entry.status = pb.COMPENSATION_STATUS_RUNNING


def _on_compensation_completed(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    entry = _compensation(snap, event.compensation_completed.step_id, occurred)
    entry.status = pb.COMPENSATION_STATUS_COMPLETED
    entry.ClearField("error")
    set_nanos(entry.finish_time, occurred)


def _on_compensation_failed(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.compensation_failed
    entry = _compensation(snap, e.step_id, occurred)
    entry.status = pb.COMPENSATION_STATUS_FAILED
    if e.HasField("error"):
        entry.error.CopyFrom(e.error)
    set_nanos(entry.finish_time, occurred)


def _on_waitpoint_registered(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.waitpoint_registered
    for existing in snap.open_waitpoints:
        if existing.waitpoint_id == e.waitpoint_id:
            return
    wp = snap.open_waitpoints.add(waitpoint_id=e.waitpoint_id, kind=e.kind, name=e.name)
    if e.HasField("deadline_time"):
        wp.deadline_time.CopyFrom(e.deadline_time)
    set_nanos(wp.register_time, occurred)


def _on_waitpoint_resolved(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    waitpoint_id = event.waitpoint_resolved.waitpoint_id
    for i, existing in enumerate(snap.open_waitpoints):
        if existing.waitpoint_id == waitpoint_id:
            del snap.open_waitpoints[i]
            return


def _on_checkpoint_recorded(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.checkpoint_recorded
    step = snap.steps.get(e.step_id)
    if step is None:
        return  # A checkpoint of a step the ledger never started stays in the ledger only.
    step.checkpoint_count += 1
    step.last_checkpoint.CopyFrom(e)
    # The payload can be large (a diff); the snapshot keeps the summary and the tail.
    step.last_checkpoint.ClearField("payload")


def _on_metadata_updated(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    apply_metadata_mutations(snap.metadata, event.metadata_updated.mutations)


def _on_cancel_requested(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    if not snap.cancel_requested:
        snap.cancel_requested = True
        snap.cancel_reason = event.cancel_requested.reason


def _ignore(snap: pb.RunSnapshot, event: pb.LedgerEvent, occurred: int) -> None:
    """Signals live in the journal's inbox; the snapshot only advances update_time."""


_HANDLERS: dict[str, Callable[[pb.RunSnapshot, pb.LedgerEvent, int], None]] = {
    "run_created": _on_run_created,
    "run_started": _on_run_started,
    "run_waiting": _on_run_waiting,
    "run_completed": _on_run_ended,
    "run_failed": _on_run_ended,
    "run_cancelled": _on_run_ended,
    "run_timed_out": _on_run_ended,
    "run_terminated": _on_run_ended,
    "step_scheduled": _on_step_scheduled,
    "step_started": _on_step_started,
    "step_progress": _on_step_progress,
    "step_completed": _on_step_completed,
    "step_failed": _on_step_failed,
    "step_skipped": _on_step_skipped,
    "log_appended": _on_log_appended,
    "summary_updated": _on_summary_updated,
    "compensation_started": _on_compensation_started,
    "compensation_completed": _on_compensation_completed,
    "compensation_failed": _on_compensation_failed,
    "waitpoint_registered": _on_waitpoint_registered,
    "waitpoint_resolved": _on_waitpoint_resolved,
    "checkpoint_recorded": _on_checkpoint_recorded,
    "metadata_updated": _on_metadata_updated,
    "cancel_requested": _on_cancel_requested,
    "signal_received": _ignore,
}
