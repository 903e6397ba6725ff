"""The journal projection: what a worker replays a workflow body against.

A second pure fold of the same ledger (the reference's ``JournalSlice`` in
``journal.ts``). Where the snapshot is for people, the journal is for replay:

- ``step_results``: the final result of each finished step with its attempt,
  output or error, start and finish times, and the step's ordinal and name, so
  replay can return the recorded result and detect a body that no longer
  issues the same step at the same position. Results are immutable once
  recorded: a redelivered or contradictory later result is ignored, because
  the body may already have acted on the first one.
- ``pending_steps``: steps started or scheduled without a final result, so a
  resumed body knows which attempt comes next and when.
- ``waitpoints_resolved``: first resolution wins, for the same reason.
- ``compensations_run``: finished compensations, so a crash mid-compensation
  neither repeats a finished one nor skips one.
- ``metadata_state``: the run's metadata.
- ``signal_inbox``: signals received and not yet consumed by a waitpoint
  (a resolution names the signal it consumed by ``matched_seq``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ledgerflow.ledger._metadata import apply_metadata_mutations
from ledgerflow.ledger._time import set_nanos, to_nanos
from ledgerflow.v1 import journal_pb2 as jpb
from ledgerflow.v1 import ledger_pb2 as pb


def empty_journal() -> jpb.JournalSlice:
    """Return the journal of a run before any event."""
    return jpb.JournalSlice()


def project_journal(journal: jpb.JournalSlice, event: pb.LedgerEvent) -> jpb.JournalSlice:
    """Fold one event into a journal.

    Args:
        journal: The journal so far; not modified.
        event: The next event of the run's ledger.

    Returns:
        A new journal.
    """
    return project_journal_events(journal, (event,))


def project_journal_events(
    journal: jpb.JournalSlice, events: Iterable[pb.LedgerEvent]
) -> jpb.JournalSlice:
    """Fold events, in order, into a journal.

    Args:
        journal: The journal so far; not modified.
        events: Events of one run, in ledger order.

    Returns:
        A new journal.
    """
    out = jpb.JournalSlice()
    out.CopyFrom(journal)
    for event in events:
        apply_journal_event(out, event)
    return out


def apply_journal_event(journal: jpb.JournalSlice, event: pb.LedgerEvent) -> None:
    """Fold one event into ``journal`` in place (the hot-path form of :func:`project_journal`).

    Args:
        journal: The journal to update.
        event: The next event of the run's ledger.
    """
    if event.seq > journal.last_seq:
        journal.last_seq = event.seq
    case = event.WhichOneof("payload")
    handler = _HANDLERS.get(case) if case is not None else None
    if handler is not None:
        handler(journal, event, max(0, to_nanos(event.event_time)))


def _pending(journal: jpb.JournalSlice, step_id: str) -> jpb.PendingStep | None:
    if step_id in journal.step_results:
        return None  # Finished steps stay finished.
    step = journal.pending_steps[step_id]
    if not step.step_id:
        step.step_id = step_id
        step.name = step_id
    return step


def _attempt(
    journal: jpb.JournalSlice,
    step_id: str,
    name: str,
    ordinal: int,
    attempt: int,
    status: pb.StepStatus.ValueType,
) -> jpb.PendingStep | None:
    """Record that an attempt of a step was scheduled or started; None once it finished."""
    step = _pending(journal, step_id)
    if step is None:
        return None
    if name:
        step.name = name
    if ordinal:
        step.ordinal = ordinal
    step.attempt = max(step.attempt, attempt)
    step.status = status
    return step


def _on_step_scheduled(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_scheduled
    step = _attempt(journal, e.step_id, e.name, e.ordinal, e.attempt, pb.STEP_STATUS_SCHEDULED)
    if step is None:
        return
    step.worker_kind = e.worker_kind
    step.ClearField("next_attempt_time")


def _on_step_started(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_started
    step = _attempt(journal, e.step_id, e.name, e.ordinal, e.attempt, pb.STEP_STATUS_RUNNING)
    if step is None:
        return
    if not step.HasField("start_time"):
        set_nanos(step.start_time, occurred)
    step.ClearField("next_attempt_time")


def _record(
    journal: jpb.JournalSlice,
    step_id: str,
    status: jpb.StepResultStatus.ValueType,
    attempt: int,
    occurred: int,
) -> jpb.StepJournalEntry | None:
    if step_id in journal.step_results:
        return None
    entry = journal.step_results[step_id]
    entry.step_id = step_id
    entry.name = step_id
    entry.status = status
    entry.attempt = attempt
    pending = journal.pending_steps.get(step_id)
    if pending is not None:
        entry.name = pending.name or step_id
        entry.ordinal = pending.ordinal
        entry.attempt = attempt or pending.attempt
        if pending.HasField("start_time"):
            entry.start_time.CopyFrom(pending.start_time)
        del journal.pending_steps[step_id]
    if not entry.HasField("start_time"):
        set_nanos(entry.start_time, occurred)
    set_nanos(entry.finish_time, occurred)
    return entry


def _on_step_completed(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_completed
    entry = _record(journal, e.step_id, jpb.STEP_RESULT_STATUS_COMPLETED, e.attempt, occurred)
    if entry is not None and e.HasField("output"):
        entry.output.CopyFrom(e.output)


def _on_step_failed(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.step_failed
    if e.will_retry:
        step = _pending(journal, e.step_id)
        if step is None:
            return
        step.attempt = max(step.attempt, e.attempt)
        step.status = pb.STEP_STATUS_RETRYING
        if e.HasField("next_attempt_time"):
            step.next_attempt_time.CopyFrom(e.next_attempt_time)
        if e.HasField("error"):
            step.last_error.CopyFrom(e.error)
        return
    entry = _record(journal, e.step_id, jpb.STEP_RESULT_STATUS_FAILED, e.attempt, occurred)
    if entry is not None and e.HasField("error"):
        entry.error.CopyFrom(e.error)


def _on_step_skipped(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    _record(journal, event.step_skipped.step_id, jpb.STEP_RESULT_STATUS_SKIPPED, 0, occurred)


def _on_waitpoint_resolved(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.waitpoint_resolved
    if e.waitpoint_id in journal.waitpoints_resolved:
        return
    res = journal.waitpoints_resolved[e.waitpoint_id]
    res.kind = e.kind
    set_nanos(res.resolve_time, occurred)
    if e.HasField("payload"):
        res.payload.CopyFrom(e.payload)
    if e.HasField("error"):
        res.error.CopyFrom(e.error)
    res.source = e.source
    res.matched_seq = e.matched_seq
    res.timed_out = e.timed_out
    if e.matched_seq:
        for i, signal in enumerate(journal.signal_inbox):
            if signal.seq == e.matched_seq:
                del journal.signal_inbox[i]
                break


def _on_signal_received(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    e = event.signal_received
    signal = journal.signal_inbox.add(seq=event.seq, name=e.name)
    if e.HasField("payload"):
        signal.payload.CopyFrom(e.payload)
    set_nanos(signal.receive_time, occurred)


def _on_compensation_completed(
    journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int
) -> None:
    step_id = event.compensation_completed.step_id
    if step_id in journal.compensations_run:
        return
    entry = journal.compensations_run[step_id]
    entry.status = pb.COMPENSATION_STATUS_COMPLETED
    set_nanos(entry.finish_time, occurred)


def _on_compensation_failed(
    journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int
) -> None:
    e = event.compensation_failed
    if e.step_id in journal.compensations_run:
        return
    entry = journal.compensations_run[e.step_id]
    entry.status = pb.COMPENSATION_STATUS_FAILED
    set_nanos(entry.finish_time, occurred)
    if e.HasField("error"):
        entry.error.CopyFrom(e.error)


def _on_metadata_updated(journal: jpb.JournalSlice, event: pb.LedgerEvent, occurred: int) -> None:
    apply_metadata_mutations(journal.metadata_state, event.metadata_updated.mutations)


_HANDLERS: dict[str, Callable[[jpb.JournalSlice, pb.LedgerEvent, int], None]] = {
    "step_scheduled": _on_step_scheduled,
    "step_started": _on_step_started,
    "step_completed": _on_step_completed,
    "step_failed": _on_step_failed,
    "step_skipped": _on_step_skipped,
    "waitpoint_resolved": _on_waitpoint_resolved,
    "signal_received": _on_signal_received,
    "compensation_completed": _on_compensation_completed,
    "compensation_failed": _on_compensation_failed,
    "metadata_updated": _on_metadata_updated,
}
