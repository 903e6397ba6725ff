"""Task operations: what workers do to runs, fenced by the task's lease.

Like the operations of ``_append`` these run inside the writer's group
transaction against a :class:`~ledgerflow.coordinator.store._append.Batch`, with
the run's row and all of its tasks locked. Every one of them checks the lease
first — the task is leased, under this epoch — and refuses with
:class:`TaskRefusedError` otherwise, before changing anything. Because the check
and the append are one transaction over locked rows, a worker whose lease was
taken over can never append after the newer epoch was granted.

Claiming (leasing pending tasks) and the expiry sweep are single statements run
outside the writer (``_sql_tasks.claim`` / ``expire_leases``); :func:`dispatch`
then records the dispatch in the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ledgerflow.coordinator.store import _append as ops
from ledgerflow.coordinator.store import _sql_events as sql_events
from ledgerflow.coordinator.store import _sql_runs as sql_runs
from ledgerflow.coordinator.store import _sql_tasks as sql_tasks
from ledgerflow.coordinator.store import _waitpoints as wps
from ledgerflow.errors import FailedPreconditionError, InvalidArgumentError, LedgerflowError
from ledgerflow.ledger import LogRetention, check_id, is_terminal, json_payload
from ledgerflow.ledger._time import set_nanos, to_nanos
from ledgerflow.v1 import common_pb2, step_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1 import worker_service_pb2 as wpb
from ledgerflow.workflow._execution import START_REQUEST_ENCODING

# What a worker may append under a task lease: facts about steps and about what the
# body emits. A run's lifecycle (run_*) follows from dispatches and results.
WORKER_EVENTS = frozenset(
    {
        "step_scheduled",
        "step_started",
        "step_progress",
        "step_completed",
        "step_failed",
        "step_skipped",
        "compensation_started",
        "compensation_completed",
        "compensation_failed",
        "log_appended",
        "checkpoint_recorded",
        "summary_updated",
        "metadata_updated",
    }
)


class TaskRefusedError(LedgerflowError):
    """A worker's batch, result or lease was refused; nothing was appended.

    Attributes:
        reason: The ``TaskRejectReason`` to send back.
    """

    def __init__(self, reason: wpb.TaskRejectReason.ValueType, message: str) -> None:
        """Create the refusal."""
        super().__init__(message)
        self.reason = reason


def _leased(batch: ops.Batch, task_id: str, epoch: int) -> sql_tasks.TaskRow:
    """Return the task if this epoch holds its lease; refuse otherwise."""
    task = batch.tasks.get(task_id)
    if task is None:
        raise TaskRefusedError(wpb.TASK_REJECT_REASON_UNKNOWN_TASK, f"no task {task_id!r}")
    if task.status != sql_tasks.LEASED or task.lease_epoch != epoch:
        state = "done" if task.status == sql_tasks.DONE else f"at epoch {task.lease_epoch}"
        raise TaskRefusedError(
            wpb.TASK_REJECT_REASON_STALE_LEASE,
            f"task {task_id!r}: the lease of epoch {epoch} is no longer held (task {state})",
        )
    batch.checked_tasks[task_id] = (task.lease_epoch, task.status)
    return task


# What a worker may append under a step task: what the step emits while it runs. Its
# start comes from the dispatch, its end from the result.
STEP_WORKER_EVENTS = frozenset(
    {"step_progress", "log_appended", "checkpoint_recorded", "summary_updated"}
)


@dataclass(slots=True)
class Dispatched:
    """What a worker needs to run a task, read under the lock of its dispatch.

    Exactly one of ``task`` (a workflow task) and ``step`` (a step task) is set.
    """

    task: workflow_pb2.WorkflowTask | None = None
    step: step_pb2.StepRequest | None = None


async def dispatch(
    batch: ops.Batch,
    task_id: str,
    epoch: int,
    runtime: pb.Runtime,
    *,
    now: int,
    retention: LogRetention,
) -> ops.Outcome:
    """Record a claimed task's dispatch (``run_started``) and build its WorkflowTask.

    ``Outcome.value`` is the :class:`Dispatched`, or None when the task cannot run:
    its run finished meanwhile (the task is marked done) or the lease moved on.
    """
    try:
        task = _leased(batch, task_id, epoch)
    except TaskRefusedError:
        return ops.Outcome(value=None)
    row = batch.rows.get(task.run_id)
    if task.run_id not in batch.task_runs and (
        row is None
        or is_terminal(row.snapshot.status)
        or task.kind == sql_tasks.STEP_TASK
        or len(row.snapshot.open_waitpoints) > 0
    ):
        # Only the plain case (a workflow task of a live run with nothing to resolve)
        # goes without the run's tasks locked: the others change tasks.
        raise ops.RedoLockingError
    if row is None or is_terminal(row.snapshot.status):
        _finish(batch, task)
        return ops.Outcome(value=None)
    if task.kind == sql_tasks.STEP_TASK:
        return _dispatch_step(batch, task, row, runtime, now=now, retention=retention)
    # Deadlines that passed while the run waited resolve first (the timer fires, a
    # signal wait times out), in this transaction: the body's journal carries them.
    wps.resolve(batch, row, now=now, retention=retention)
    started = ops._new_event(task.run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    started.run_started.runtime.CopyFrom(runtime)
    started.run_started.invocation = task.invocation
    outcome = ops._append_one(batch, row, started, retention)
    if row.created is not None:
        created = [row.created]
        row.created = None  # a later dispatch (a retry) reads it; the cache stays small
    else:
        created = await sql_events.page_events(batch.conn, task.run_id, 0, 1)
    snap = row.snapshot
    out = workflow_pb2.WorkflowTask(
        task_id=task.task_id,
        lease_epoch=task.lease_epoch,
        run_id=task.run_id,
        workflow_name=snap.workflow_name,
        workflow_version=snap.workflow_version,
        invocation=task.invocation,
        cancel_requested=snap.cancel_requested,
        cancel_reason=snap.cancel_reason,
    )
    if not snap.cancel_requested and past_deadline(snap, now):
        # The body is stopped as on a cancellation (compensations run); its result
        # is recorded as run_timed_out (see complete).
        out.cancel_requested = True
        out.cancel_reason = TIMEOUT_REASON
    if created and created[0].run_created.HasField("input"):
        out.input.CopyFrom(created[0].run_created.input)
    out.tags.extend(snap.tags)
    if snap.HasField("start_time"):
        out.run_start_time.CopyFrom(snap.start_time)
    # The batch's journal is the writer's own (cached) object: the task gets a copy.
    out.journal.CopyFrom(row.journal)
    outcome.value = Dispatched(task=out)
    return outcome


def _finish(batch: ops.Batch, task: sql_tasks.TaskRow) -> None:
    task.status = sql_tasks.DONE
    task.lease_expire_time = task.worker_id = task.session_id = None
    batch.save_task(task)


def _dispatch_step(
    batch: ops.Batch,
    task: sql_tasks.TaskRow,
    row: sql_runs.RunRow,
    runtime: pb.Runtime,
    *,
    now: int,
    retention: LogRetention,
) -> ops.Outcome:
    """Record a step task's dispatch (``step_started``, attempt = dispatch count)."""
    request = step_pb2.StepRequest.FromString(task.step_request or b"")
    request.task_id = task.task_id
    request.lease_epoch = task.lease_epoch
    request.attempt = task.invocation
    started = ops._new_event(task.run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    e = started.step_started
    e.step_id = request.step_id
    e.name = request.step_name
    e.attempt = request.attempt
    e.kind = "remote"
    e.worker_id = runtime.worker_id
    pending = row.journal.pending_steps.get(request.step_id)
    if pending is not None:
        e.ordinal = pending.ordinal
    outcome = ops._append_one(batch, row, started, retention)
    # Started: its schedule-to-start deadline no longer applies.
    wps.resolve_open(batch, row, wps.STEP_START + request.step_id, now=now, retention=retention)
    outcome.value = Dispatched(step=request)
    return outcome


TIMEOUT_REASON = "the run passed its execution timeout"
"""The cancel reason a worker gets for a run past its deadline."""


def past_deadline(snap: pb.RunSnapshot, now: int) -> bool:
    """Whether the run has an execution timeout and ``now`` is past it."""
    return snap.HasField("deadline_time") and to_nanos(snap.deadline_time) <= now


def check_worker_events(events: Sequence[pb.LedgerEvent], run_id: str) -> None:
    """Refuse events a worker may not append under a task (INVALID, naming the event)."""
    for index, event in enumerate(events):
        case = event.WhichOneof("payload")
        if case not in WORKER_EVENTS:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"events[{index}]: a worker may not append {case or 'an empty event'}; "
                "run facts come from task results",
            )
        if event.run_id != run_id:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"events[{index}].run_id: {event.run_id!r} is not the task's run {run_id!r}",
            )


def batch_request_id(task_id: str, epoch: int, batch_no: int) -> str:
    """The request id an event batch is remembered under (a resend is answered from it)."""
    return f"task:{task_id}:{epoch}:{batch_no}"


async def append_batch(
    batch: ops.Batch,
    task_id: str,
    epoch: int,
    batch_no: int,
    events: Sequence[pb.LedgerEvent],
    *,
    retention: LogRetention,
) -> ops.Outcome:
    """Append a worker's event batch under its lease.

    ``Outcome.value`` is the run's channel cursors after the batch, for the channels
    the batch wrote. A resend of an appended batch is answered as a duplicate.

    Raises:
        TaskRefusedError: The lease is not this epoch's, or the batch is malformed.
    """
    task = batch.tasks.get(task_id)
    request_id = batch_request_id(task_id, epoch, batch_no)
    if task is not None:
        prior = batch.prior_request([task.run_id], request_id)
        if prior:
            return ops.Outcome(duplicate=True, ranges=prior, value=_cursors(batch, task, events))
    task = _leased(batch, task_id, epoch)
    check_worker_events(events, task.run_id)
    if task.kind == sql_tasks.STEP_TASK:
        for index, event in enumerate(events):
            if event.WhichOneof("payload") not in STEP_WORKER_EVENTS:
                raise TaskRefusedError(
                    wpb.TASK_REJECT_REASON_INVALID,
                    f"events[{index}]: a step task may append only "
                    f"{', '.join(sorted(STEP_WORKER_EVENTS))}; its start and end come "
                    "from the dispatch and the step_result",
                )
    try:
        outcome = await ops.append_events(batch, events, request_id=request_id, retention=retention)
    except FailedPreconditionError as err:
        raise TaskRefusedError(wpb.TASK_REJECT_REASON_RUN_FINISHED, str(err)) from err
    outcome.value = _cursors(batch, task, events)
    return outcome


def _cursors(
    batch: ops.Batch, task: sql_tasks.TaskRow, events: Sequence[pb.LedgerEvent]
) -> dict[str, int]:
    row = batch.rows.get(task.run_id)
    channels = {
        e.log_appended.channel
        for e in events
        if e.HasField("log_appended") and e.log_appended.HasField("channel_offset")
    }
    if row is None:
        return {}
    return {c: row.log.cursors.get(c, 0) for c in sorted(channels)}


def _terminal_events(
    result: workflow_pb2.WorkflowTaskResult, run_id: str, now: int
) -> list[pb.LedgerEvent]:
    """The events a workflow result stands for (docs/worker-protocol.md, Results)."""
    out: list[pb.LedgerEvent] = []
    if result.metadata_updates:
        update = ops._new_event(run_id, pb.EVENT_SOURCE_WORKER, now)
        update.metadata_updated.mutations.extend(result.metadata_updates)
        out.append(update)
    end = ops._new_event(run_id, pb.EVENT_SOURCE_WORKER, now)
    outcome = result.outcome
    if outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPLETED:
        end.run_completed.SetInParent()
        if result.HasField("output"):
            end.run_completed.result.CopyFrom(result.output)
    elif outcome in (
        workflow_pb2.WORKFLOW_OUTCOME_FAILED,
        workflow_pb2.WORKFLOW_OUTCOME_COMPENSATED,
        workflow_pb2.WORKFLOW_OUTCOME_COMPENSATION_FAILED,
    ):
        end.run_failed.SetInParent()
        if result.HasField("error"):
            end.run_failed.error.CopyFrom(result.error)
        if outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPENSATED:
            end.run_failed.compensation = pb.COMPENSATION_OUTCOME_COMPENSATED
        elif outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPENSATION_FAILED:
            end.run_failed.compensation = pb.COMPENSATION_OUTCOME_COMPENSATION_FAILED
    elif outcome == workflow_pb2.WORKFLOW_OUTCOME_CANCELLED:
        end.run_cancelled.SetInParent()
        if result.HasField("error"):
            end.run_cancelled.error.CopyFrom(result.error)
        end.run_cancelled.compensation = _compensation_outcome(result.compensations)
    elif outcome == workflow_pb2.WORKFLOW_OUTCOME_WAITING:
        end.run_waiting.waitpoint_ids.extend(w.waitpoint_id for w in result.waitpoints)
    else:
        raise TaskRefusedError(
            wpb.TASK_REJECT_REASON_INVALID, f"outcome: unknown workflow outcome {outcome}"
        )
    out.append(end)
    return out


def check_registrations(registrations: Sequence[workflow_pb2.WaitpointRegistration]) -> None:
    """Refuse a malformed registration (INVALID, naming the field) before anything changes."""
    for i, reg in enumerate(registrations):
        field = f"waitpoints[{i}]"
        if not reg.waitpoint_id or len(reg.waitpoint_id) > wps.MAX_WAITPOINT_ID_CHARS:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.waitpoint_id: must be 1 to {wps.MAX_WAITPOINT_ID_CHARS} characters",
            )
        if reg.kind not in wps.SUPPORTED_KINDS:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.kind: waitpoint kind {reg.kind} is not supported "
                "(timer, signal, human, step, child run)",
            )
        if reg.kind == pb.WAITPOINT_KIND_TIMER and not reg.HasField("timeout"):
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID, f"{field}.timeout: a timer needs one"
            )
        if reg.kind == pb.WAITPOINT_KIND_STEP and not reg.name:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID, f"{field}.name: a step wait needs the step id"
            )
        if reg.kind in wps.SIGNALLED and not reg.name:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID, f"{field}.name: a signal wait needs the name"
            )
        if reg.HasField("timeout") and (reg.timeout.seconds < 0 or reg.timeout.nanos < 0):
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID, f"{field}.timeout: must not be negative"
            )


def _timed_out(result: workflow_pb2.WorkflowTaskResult, run_id: str, now: int) -> pb.LedgerEvent:
    end = ops._new_event(run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    end.run_timed_out.error.type = "TimeoutError"
    end.run_timed_out.error.message = TIMEOUT_REASON
    end.run_timed_out.compensation = _compensation_outcome(result.compensations)
    return end


def _compensation_outcome(
    reports: Sequence[workflow_pb2.CompensationReport],
) -> pb.CompensationOutcome.ValueType:
    if not reports:
        return pb.COMPENSATION_OUTCOME_UNSPECIFIED
    if any(r.status == pb.COMPENSATION_STATUS_FAILED for r in reports):
        return pb.COMPENSATION_OUTCOME_COMPENSATION_FAILED
    return pb.COMPENSATION_OUTCOME_COMPENSATED


async def complete(
    batch: ops.Batch,
    result: workflow_pb2.WorkflowTaskResult,
    *,
    now: int,
    retention: LogRetention,
) -> ops.Outcome:
    """Append a workflow result's terminal facts and mark its task done, under the lease.

    ``Outcome.value`` is the run's last seq. A resend of a result already taken
    under the same epoch is answered as a duplicate.

    Raises:
        TaskRefusedError: The lease is not this epoch's, or the result is malformed.
    """
    task = batch.tasks.get(result.task_id)
    row = batch.rows.get(task.run_id) if task is not None else None
    if (
        task is not None
        and row is not None
        and task.status == sql_tasks.DONE
        and task.lease_epoch == result.lease_epoch
    ):
        return ops.Outcome(duplicate=True, value=row.last_seq)
    task = _leased(batch, result.task_id, result.lease_epoch)
    if result.run_id and result.run_id != task.run_id:
        raise TaskRefusedError(
            wpb.TASK_REJECT_REASON_INVALID,
            f"run_id: {result.run_id!r} is not the task's run {task.run_id!r}",
        )
    waiting = result.outcome == workflow_pb2.WORKFLOW_OUTCOME_WAITING
    row = batch.rows[task.run_id]
    starts: list[tuple[str, rpb.StartRunRequest]] = []
    if waiting:
        check_registrations(result.waitpoints)
        _check_steps(row, result.waitpoints)
        starts = _check_children(batch, row, result.waitpoints)
    events = _terminal_events(result, task.run_id, now)
    if (
        result.outcome == workflow_pb2.WORKFLOW_OUTCOME_CANCELLED
        and not row.snapshot.cancel_requested
        and past_deadline(row.snapshot, now)
    ):
        events[-1] = _timed_out(result, task.run_id, now)
    # A wait the ledger already resolved (while this invocation ran) wakes the run at once.
    wake = False
    if waiting:
        events[-1:-1] = wps.registered_events(row, result.waitpoints, now)
        resolved = row.journal.waitpoints_resolved
        wake = any(reg.waitpoint_id in resolved for reg in result.waitpoints)
    outcome = await ops.append_events(batch, events, request_id="", retention=retention)
    task.status = sql_tasks.DONE
    task.lease_expire_time = task.worker_id = task.session_id = None
    batch.save_task(task)
    row = batch.rows[task.run_id]
    if waiting:
        wake = await _start_children(batch, row, starts, now=now, retention=retention) or wake
        wake = _resolve_ended_children(batch, row, now=now, retention=retention) or wake
        wake = wps.resolve(batch, row, now=now, retention=retention) or wake
        wps.schedule(batch, row, now=now, wake=wake)
        _schedule_steps(batch, row, result.waitpoints, now)
    elif is_terminal(row.snapshot.status):
        _notify_parent(batch, row, now=now, retention=retention)
    outcome.value = row.last_seq
    return outcome


def _check_steps(
    row: sql_runs.RunRow, registrations: Sequence[workflow_pb2.WaitpointRegistration]
) -> None:
    """Refuse a wait on a remote step the ledger has not seen scheduled (before any change)."""
    for i, reg in enumerate(registrations):
        if reg.waitpoint_id != "step:" + reg.name or reg.name in row.journal.step_results:
            continue
        scheduled = row.journal.pending_steps.get(reg.name)
        if scheduled is None or not scheduled.worker_kind:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"waitpoints[{i}].name: step {reg.name!r} was not scheduled (step_scheduled "
                "with a worker_kind) before the body waited on it",
            )


CHILD_START = "child-start:"
"""Waitpoint id prefix of a child's durable start (resolved as soon as it exists)."""
CHILD_END = "child:"
"""Waitpoint id prefix of a wait for a child's end."""


def _check_children(
    batch: ops.Batch,
    row: sql_runs.RunRow,
    registrations: Sequence[workflow_pb2.WaitpointRegistration],
) -> list[tuple[str, rpb.StartRunRequest]]:
    """Refuse malformed child registrations (before any change); return the starts asked."""
    starts: list[tuple[str, rpb.StartRunRequest]] = []
    for i, reg in enumerate(registrations):
        if reg.kind != pb.WAITPOINT_KIND_CHILD_RUN:
            continue
        field = f"waitpoints[{i}]"
        child_id = reg.name
        if reg.waitpoint_id not in (CHILD_START + child_id, CHILD_END + child_id):
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.waitpoint_id: a child wait is {CHILD_START!r} or {CHILD_END!r} "
                "followed by the child's run id (the name)",
            )
        try:
            check_id(child_id, f"{field}.name")
        except InvalidArgumentError as err:
            raise TaskRefusedError(wpb.TASK_REJECT_REASON_INVALID, str(err)) from err
        child = batch.rows.get(child_id)
        if child is not None and child.snapshot.parent_run_id != row.run_id:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.name: run {child_id!r} exists and is not a child of {row.run_id!r}",
            )
        if not reg.waitpoint_id.startswith(CHILD_START):
            continue
        if reg.payload.encoding != START_REQUEST_ENCODING:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.payload: a child start carries a StartRunRequest "
                f"(encoding {START_REQUEST_ENCODING!r})",
            )
        try:
            request = rpb.StartRunRequest.FromString(reg.payload.data)
        except DecodeError as err:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID, f"{field}.payload: not a StartRunRequest"
            ) from err
        try:
            check_id(request.workflow_name, f"{field}.payload.workflow_name")
        except InvalidArgumentError as err:
            raise TaskRefusedError(wpb.TASK_REJECT_REASON_INVALID, str(err)) from err
        if request.namespace and request.namespace != row.namespace:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.payload.namespace: a child run lives in its parent's namespace "
                f"({row.namespace!r}), not {request.namespace!r}",
            )
        if child is not None and child.workflow_name != request.workflow_name:
            raise TaskRefusedError(
                wpb.TASK_REJECT_REASON_INVALID,
                f"{field}.name: child run {child_id!r} runs {child.workflow_name!r}, "
                f"not {request.workflow_name!r}",
            )
        starts.append((child_id, request))
    return starts


async def _start_children(
    batch: ops.Batch,
    row: sql_runs.RunRow,
    starts: Sequence[tuple[str, rpb.StartRunRequest]],
    *,
    now: int,
    retention: LogRetention,
) -> bool:
    """Create each child not yet created and resolve its start; True if any start resolved."""
    woke = False
    for child_id, request in starts:
        if child_id not in batch.rows:
            spec = ops.StartRunSpec(
                workflow_name=request.workflow_name,
                workflow_version=request.workflow_version,
                input=request.input if request.HasField("input") else None,
                run_id=child_id,
                tags=tuple(request.tags),
                execution_timeout=(
                    request.execution_timeout if request.HasField("execution_timeout") else None
                ),
                parent_run_id=row.run_id,
                namespace=row.namespace,
            )
            await ops.start_run(batch, spec, run_id=child_id, now=now, retention=retention)
        woke = (
            wps.resolve_open(
                batch,
                row,
                CHILD_START + child_id,
                now=now,
                retention=retention,
                payload=json_payload({"run_id": child_id}),
            )
            or woke
        )
    return woke


def _resolve_ended_children(
    batch: ops.Batch, row: sql_runs.RunRow, *, now: int, retention: LogRetention
) -> bool:
    """Resolve waits on children that already ended (before the parent waited)."""
    woke = False
    for wp in list(row.snapshot.open_waitpoints):
        if not wp.waitpoint_id.startswith(CHILD_END):
            continue
        child = batch.rows.get(wp.name)
        if child is None or not is_terminal(child.snapshot.status):
            continue
        payload, error = wps.child_outcome(child.snapshot)
        woke = (
            wps.resolve_open(
                batch,
                row,
                wp.waitpoint_id,
                now=now,
                retention=retention,
                payload=payload,
                error=error,
            )
            or woke
        )
    return woke


def _notify_parent(
    batch: ops.Batch, row: sql_runs.RunRow, *, now: int, retention: LogRetention
) -> None:
    """A child ended: resolve its parent's wait on it and make the parent due."""
    parent = batch.rows.get(row.snapshot.parent_run_id) if row.snapshot.parent_run_id else None
    if parent is None or is_terminal(parent.snapshot.status):
        return
    payload, error = wps.child_outcome(row.snapshot)
    if wps.resolve_open(
        batch,
        parent,
        CHILD_END + row.run_id,
        now=now,
        retention=retention,
        payload=payload,
        error=error,
    ):
        ops.ensure_task(batch, parent, now)


def _schedule_steps(
    batch: ops.Batch,
    row: sql_runs.RunRow,
    registrations: Sequence[workflow_pb2.WaitpointRegistration],
    now: int,
) -> None:
    """Give each step the body waits on (and that is not finished) a step task, once."""
    open_steps = {
        t.step_id
        for t in batch.tasks_of(row.run_id)
        if t.kind == sql_tasks.STEP_TASK and t.status != sql_tasks.DONE
    }
    for reg in registrations:
        if reg.kind != pb.WAITPOINT_KIND_STEP or reg.waitpoint_id != "step:" + reg.name:
            continue
        step_id = reg.name
        if step_id in open_steps or step_id in row.journal.step_results:
            continue
        scheduled = row.journal.pending_steps[step_id]  # checked by _check_steps
        request = step_pb2.StepRequest(
            run_id=row.run_id,
            step_id=step_id,
            step_name=scheduled.name,
            step_kind="remote",
            worker_kind=scheduled.worker_kind,
        )
        if reg.HasField("payload"):
            request.input.CopyFrom(reg.payload)
        if reg.HasField("timeout"):
            request.timeout.CopyFrom(reg.timeout)
        set_nanos(request.create_time, now)
        batch.save_task(
            sql_tasks.new_step_task(
                row.run_id, step_id, scheduled.worker_kind, request.SerializeToString(), now
            )
        )
        open_steps.add(step_id)


async def complete_step(
    batch: ops.Batch,
    result: step_pb2.StepResult,
    *,
    now: int,
    retention: LogRetention,
) -> ops.Outcome:
    """Append a step task's result, resolve the body's wait on it, and wake the run.

    ``Outcome.value`` is the run's last seq. A resend of a result already taken under
    the same epoch is answered as a duplicate. A result for a run that ended
    meanwhile finishes the task and appends nothing.

    Raises:
        TaskRefusedError: The lease is not this epoch's, or the result is malformed.
    """
    task = batch.tasks.get(result.task_id)
    row = batch.rows.get(task.run_id) if task is not None else None
    if (
        task is not None
        and row is not None
        and task.status == sql_tasks.DONE
        and task.lease_epoch == result.lease_epoch
    ):
        return ops.Outcome(duplicate=True, value=row.last_seq)
    task = _leased(batch, result.task_id, result.lease_epoch)
    if task.kind != sql_tasks.STEP_TASK:
        raise TaskRefusedError(
            wpb.TASK_REJECT_REASON_INVALID,
            f"task_id: {task.task_id!r} is a workflow task; send a workflow_result",
        )
    if result.step_id and result.step_id != task.step_id:
        raise TaskRefusedError(
            wpb.TASK_REJECT_REASON_INVALID,
            f"step_id: {result.step_id!r} is not the task's step {task.step_id!r}",
        )
    if result.outcome not in (
        step_pb2.STEP_OUTCOME_COMPLETED,
        step_pb2.STEP_OUTCOME_FAILED,
        step_pb2.STEP_OUTCOME_BLOCKED,
    ):
        raise TaskRefusedError(
            wpb.TASK_REJECT_REASON_INVALID,
            f"outcome: {result.outcome} is not a step outcome (COMPLETED, FAILED, BLOCKED)",
        )
    row = batch.rows[task.run_id]
    assert task.step_id is not None
    if is_terminal(row.snapshot.status):
        _finish(batch, task)
        return ops.Outcome(value=row.last_seq)
    attempt = result.attempt or task.invocation
    if result.outcome == step_pb2.STEP_OUTCOME_BLOCKED:
        return await _park_for_a_human(batch, task, row, result, now=now, retention=retention)
    end = ops._new_event(task.run_id, pb.EVENT_SOURCE_WORKER, now)
    output: common_pb2.Payload | None = None
    error: common_pb2.ErrorInfo | None = None
    if result.outcome == step_pb2.STEP_OUTCOME_COMPLETED:
        end.step_completed.step_id = task.step_id
        end.step_completed.attempt = attempt
        end.step_completed.kind = "remote"
        if result.HasField("output"):
            output = result.output
            end.step_completed.output.CopyFrom(output)
    else:
        end.step_failed.step_id = task.step_id
        end.step_failed.attempt = attempt
        end.step_failed.kind = "remote"
        error = result.error if result.HasField("error") else common_pb2.ErrorInfo()
        if not error.type:
            error.type = "StepFailed"
        end.step_failed.error.CopyFrom(error)
    outcome = await ops.append_events(batch, [end], request_id="", retention=retention)
    row = batch.rows[task.run_id]
    wps.resolve_open(
        batch,
        row,
        f"step:{task.step_id}",
        now=now,
        retention=retention,
        payload=output,
        error=error,
    )
    _finish(batch, task)
    row = batch.rows[task.run_id]
    ops.ensure_task(batch, row, now)
    outcome.value = row.last_seq
    return outcome


HUMAN = "human:"
"""Waitpoint id prefix of a person's decision on a step that came back blocked."""


async def _park_for_a_human(
    batch: ops.Batch,
    task: sql_tasks.TaskRow,
    row: sql_runs.RunRow,
    result: step_pb2.StepResult,
    *,
    now: int,
    retention: LogRetention,
) -> ops.Outcome:
    """A step that needs a person: the run keeps waiting, now on a human waitpoint.

    The signal named after the step (``ledgerflow run signal RUN STEP --payload
    JSON``) resolves it: its payload becomes the step's output (``resolve_signal``).
    """
    assert task.step_id is not None
    why = result.summary or "the step needs a human decision"
    progress = ops._new_event(task.run_id, pb.EVENT_SOURCE_WORKER, now)
    progress.step_progress.step_id = task.step_id
    progress.step_progress.progress.message = f"needs a human: {why}"
    set_nanos(progress.step_progress.progress.update_time, now)
    parked = ops._new_event(task.run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    wp = parked.waitpoint_registered
    wp.waitpoint_id = HUMAN + task.step_id
    wp.kind = pb.WAITPOINT_KIND_HUMAN
    wp.name = task.step_id
    wp.payload.CopyFrom(json_payload({"summary": why}))
    # The step's start made the run "running"; it waits on a person now.
    waiting = ops._new_event(task.run_id, pb.EVENT_SOURCE_COORDINATOR, now)
    waiting.run_waiting.waitpoint_ids.append(wp.waitpoint_id)
    outcome = await ops.append_events(
        batch, [progress, parked, waiting], request_id="", retention=retention
    )
    _finish(batch, task)
    outcome.value = batch.rows[task.run_id].last_seq
    return outcome


FAILED_RELEASE_BACKOFF_NANOS = (100_000_000, 60_000_000_000)
"""A task a worker could not run waits 0.1 s * 2^(dispatches - 1), at most 60 s."""


def release_delay(invocation: int) -> int:
    """Nanoseconds before a task handed back as failed may be dispatched again.

    Grows with the task's dispatch count, so a body that fails the same way on every
    replay (a non-deterministic deployment) is retried ever more slowly, not in a
    tight loop, until a fixed worker takes it.
    """
    first, cap = FAILED_RELEASE_BACKOFF_NANOS
    return int(min(cap, first * 2 ** min(max(invocation - 1, 0), 30)))


async def release(
    batch: ops.Batch, task_id: str, epoch: int, *, now: int, failed: bool = False
) -> ops.Outcome:
    """Give a task back: it becomes pending for any worker (after a backoff if ``failed``).

    Raises:
        TaskRefusedError: The lease is not this epoch's.
    """
    task = _leased(batch, task_id, epoch)
    task.status = sql_tasks.PENDING
    task.available_time = now + (release_delay(task.invocation) if failed else 0)
    task.lease_expire_time = task.worker_id = task.session_id = None
    batch.save_task(task)
    return ops.Outcome()


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A heartbeat's answer for one task."""

    task_id: str
    epoch: int
    live: bool
    expire_time: int
    cancel_requested: bool
    cancel_reason: str


async def heartbeat(
    batch: ops.Batch,
    held: Sequence[tuple[str, int]],
    *,
    now: int,
    lease_nanos: int,
    session_id: str,
    worker_id: str,
) -> ops.Outcome:
    """Extend each live lease in ``held`` to ``now + lease_nanos`` (and bind it to the session).

    ``Outcome.value`` is a :class:`LeaseState` per held task, in order.
    """
    states: list[LeaseState] = []
    for task_id, epoch in held:
        task = batch.tasks.get(task_id)
        if task is None or task.status != sql_tasks.LEASED or task.lease_epoch != epoch:
            states.append(LeaseState(task_id, epoch, False, 0, False, ""))
            continue
        task.lease_expire_time = now + lease_nanos
        task.session_id = session_id
        task.worker_id = worker_id
        batch.save_task(task)
        row = batch.rows.get(task.run_id)
        cancel = row is not None and row.snapshot.cancel_requested
        reason = row.snapshot.cancel_reason if row is not None else ""
        if row is not None and not cancel and past_deadline(row.snapshot, now):
            cancel, reason = True, TIMEOUT_REASON
        states.append(LeaseState(task_id, epoch, True, now + lease_nanos, cancel, reason))
    return ops.Outcome(value=states)
