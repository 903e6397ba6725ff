"""The append path: every write to a ledger goes through these operations.

Operations run inside the writer's group transaction against a :class:`Batch`:
the locked rows of every run the group touches, loaded (or taken from the
writer's cache) before any operation runs. An operation:

1. checks everything that could refuse it **before** changing anything (an
   unknown run, a finished run, a duplicate creation), so a refused request
   leaves no trace and the rest of the group still commits;
2. ingests log lines through the positional channel cursors,
3. assigns gapless seqs after the run's ``last_seq``,
4. folds the events into the run's snapshot and journal,
5. queues its events, log lines, cursors and request ids on the batch.

The writer then flushes the whole group with one statement per table and
commits: many requests cost the round trips of one. Nothing here commits, and
apart from rare lookups (a retried cancellation, an idempotency key naming a run
outside the group) nothing here touches the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.duration_pb2 import Duration
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store import _sql_events as sql_events
from ledgerflow.coordinator.store import _sql_runs as sql_runs
from ledgerflow.coordinator.store import _sql_tasks as sql_tasks
from ledgerflow.errors import (
    FailedPreconditionError,
    RunAlreadyExistsError,
    RunNotFoundError,
)
from ledgerflow.ledger import (
    LogRetention,
    RunLogState,
    StoredLine,
    apply_event,
    apply_journal_event,
    empty_journal,
    empty_snapshot,
    events_from_status_patch,
    ingest_log_batch,
    is_terminal,
)
from ledgerflow.ledger._status import STATUS_WORDS
from ledgerflow.ledger._time import set_nanos, to_nanos
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

# Facts that cannot follow a run's end: nothing can start, wait, or be asked of a
# finished run. Logs, metadata, checkpoints and a failure demoting a completion can.
REFUSED_AFTER_TERMINAL = frozenset(
    {
        "run_started",
        "run_waiting",
        "step_scheduled",
        "step_started",
        "waitpoint_registered",
        "signal_received",
        "cancel_requested",
    }
)

# The events after which a run is finished, whatever it was before (terminal
# statuses are sticky in the reducer; tests/coordinator/test_append.py checks
# this against it for every event kind).
_ENDS_RUN = frozenset(
    {"run_completed", "run_failed", "run_cancelled", "run_timed_out", "run_terminated"}
)


# The event kinds that name a step: the only step a reducer or journal rule for
# them changes is that one (the store rewrites just the steps an append named).
STEP_EVENTS = frozenset(
    f.name
    for f in pb.LedgerEvent.DESCRIPTOR.oneofs_by_name["payload"].fields
    if f.message_type is not None and "step_id" in f.message_type.fields_by_name
)


def step_of(event: pb.LedgerEvent) -> str | None:
    """Return the step an event names, if its kind names one."""
    case = event.WhichOneof("payload")
    if case in STEP_EVENTS:
        step_id: str = getattr(event, case).step_id
        return step_id
    return None


def ends_run(event: pb.LedgerEvent) -> bool:
    """Return whether the run is finished once ``event`` is reduced (whatever came before)."""
    case = event.WhichOneof("payload")
    if case == "run_created":
        return is_terminal(event.run_created.status)
    return case in _ENDS_RUN


@dataclass(slots=True)
class Outcome:
    """The result of one write operation.

    Attributes:
        appended: The events the request appended, seqs assigned.
        duplicate: The request had been applied before; nothing was appended.
        ranges: Per run, the seqs the request appended (for a duplicate: the first time).
        value: Operation-specific result (e.g. StartRun's snapshot and created flag).
    """

    appended: list[pb.LedgerEvent] = field(default_factory=list)
    duplicate: bool = False
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    value: object = None


@dataclass(frozen=True, slots=True)
class Needs:
    """What an operation will look at, so the writer loads it for the whole group at once.

    Attributes:
        run_ids: Runs whose rows are locked and loaded (existing or not).
        request_ids: (run id, request id) pairs whose earlier outcome is looked up.
        idempotency_keys: (namespace, StartRun idempotency key) pairs whose run is looked up.
        tasks: Whether the tasks of ``run_ids`` are locked and loaded too.
        task_runs: For a whole group (the writer fills it in): the runs whose tasks
            are locked and loaded.
        fenced: Task ids whose lease is checked, not changed.
        resends_rare: Request ids may be checked by their insert instead of a lookup.
        creates: The runs are almost always new (StartRun): try without reading them
            or their idempotency keys (an existing one then conflicts on insert and
            the group is redone with the reads).
    """

    run_ids: tuple[str, ...] = ()
    request_ids: tuple[tuple[str, str], ...] = ()
    idempotency_keys: tuple[tuple[str, str], ...] = ()
    tasks: bool = False
    """Lock and load the tasks of ``run_ids`` too."""
    task_runs: tuple[str, ...] = ()
    assumed_new: tuple[str, ...] = ()
    """For a whole group: runs not read, assumed not to exist yet (``creates``)."""
    fenced: tuple[str, ...] = ()
    """Tasks whose lease the operation checks but does not change (a worker's batch)."""
    resends_rare: bool = False
    """The request ids are almost always new: try without looking them up (a resend
    then conflicts on insert and the group is redone with the lookup)."""
    creates: bool = False


class RedoLockingError(Exception):
    """An operation found it needs rows its group did not lock (it went optimistic).

    Raised before the operation changes anything; the writer drops the group's work
    and redoes it with every read and lock, where the operation does not raise this.
    """


class Batch:
    """The working set of one group transaction: locked rows and queued writes.

    Rows are the writer's own objects (possibly cached across commits); an
    operation changes them only after all of its checks passed.
    """

    def __init__(
        self,
        conn: AsyncConnection,
        rows: dict[str, sql_runs.RunRow],
        requests: dict[tuple[str, str], tuple[int, int]],
        keys: dict[tuple[str, str], str],
        tasks: dict[str, sql_tasks.TaskRow] | None = None,
    ) -> None:
        """Create a batch over rows the caller locked and lookups it prefetched."""
        self.conn = conn
        self.rows = rows
        self.tasks = tasks if tasks is not None else {}
        """Locked tasks by task id (only when some request of the group asked), and
        cached rows of fenced tasks (checked by the flush)."""
        self.task_runs: frozenset[str] = frozenset()
        """Runs whose every task is locked and loaded in ``tasks``."""
        self.dirty_tasks: dict[str, None] = {}
        self.checked_tasks: dict[str, tuple[int, int]] = {}
        """Tasks whose lease an operation relied on, with the (epoch, status) it saw:
        the flush writes only if they are unchanged (fencing without a lock)."""
        self.requests = requests
        self.keys = keys
        self.loaded_seqs = {run_id: row.last_seq for run_id, row in rows.items()}
        """Each loaded run's ``last_seq`` as stored: the flush writes a run only if unchanged."""
        self.new_runs: dict[str, int] = {}
        """Runs created in this batch, with their create time."""
        self.dirty: dict[str, None] = {}
        """Runs changed in this batch, in first-changed order."""
        self.events: list[pb.LedgerEvent] = []
        self.lines: list[tuple[str, StoredLine, int]] = []
        self.cursors: dict[tuple[str, str], int] = {}
        self.recorded: list[tuple[str, str, int, int]] = []
        self.steps: dict[tuple[str, str], None] = {}
        """(run id, step id) of every step the batch's events named."""

    def changes(self) -> tuple[int, ...]:
        """Return a fingerprint of the queued changes (to check a refusal changed nothing)."""
        return (
            len(self.events),
            len(self.lines),
            len(self.cursors),
            len(self.recorded),
            len(self.new_runs),
            len(self.dirty),
            len(self.dirty_tasks),
        )

    # -- lookups -------------------------------------------------------------

    def prior_request(self, run_ids: Sequence[str], request_id: str) -> dict[str, tuple[int, int]]:
        """Return what an earlier request with this id appended to each of ``run_ids``."""
        found = {}
        for run_id in run_ids:
            prior = self.requests.get((run_id, request_id))
            if prior is not None:
                found[run_id] = prior
        return found

    async def snapshot_of(self, run_id: str) -> pb.RunSnapshot | None:
        """Return a run's snapshot: from the batch if it holds the run, else as stored."""
        row = self.rows.get(run_id)
        if row is not None:
            return row.snapshot
        return await sql_runs.get_snapshot(self.conn, run_id)

    async def first_event_seq(self, run_id: str, event_type: str) -> int | None:
        """Return the seq of a run's first event of ``event_type``, queued ones included."""
        seq = await sql_events.first_event_seq(self.conn, run_id, event_type)
        if seq is not None:
            return seq
        for event in self.events:
            if event.run_id == run_id and event.WhichOneof("payload") == event_type:
                return event.seq
        return None

    # -- changes ---------------------------------------------------------------

    def create(self, row: sql_runs.RunRow, create_time: int) -> None:
        """Add a run created by this batch."""
        self.rows[row.run_id] = row
        self.new_runs[row.run_id] = create_time
        if row.idempotency_key:
            self.keys[(row.namespace, row.idempotency_key)] = row.run_id

    def save_task(self, task: sql_tasks.TaskRow) -> None:
        """Add or change a task; it is written with the batch."""
        self.tasks[task.task_id] = task
        self.dirty_tasks[task.task_id] = None

    def tasks_of(self, run_id: str) -> list[sql_tasks.TaskRow]:
        """Return the batch's tasks of a run (all of them when the group asked for tasks)."""
        return [t for t in self.tasks.values() if t.run_id == run_id]

    def record_request(self, request_id: str, ranges: dict[str, tuple[int, int]]) -> None:
        """Remember what a request appended, so a resend is answered without a second append."""
        for run_id, (first, last) in ranges.items():
            self.requests[(run_id, request_id)] = (first, last)
            self.recorded.append((run_id, request_id, first, last))

    def fold(
        self, row: sql_runs.RunRow, events: Sequence[pb.LedgerEvent], retention: LogRetention
    ) -> list[pb.LedgerEvent]:
        """Ingest, number and fold checked ``events`` into ``row``; queue their writes."""
        appended: list[pb.LedgerEvent] = []
        for event in events:
            if event.HasField("log_appended"):
                result = ingest_log_batch(event, row.log, retention)
                if event.log_appended.HasField("channel_offset"):
                    channel = event.log_appended.channel
                    self.cursors[(row.run_id, channel)] = row.log.cursors.get(channel, 0)
                if result.event is None:
                    continue  # Everything in it was ingested before: a resend.
                out = result.event
                time = to_nanos(event.event_time)
                self.lines.extend((row.run_id, line, time) for line in result.stored)
            else:
                out = pb.LedgerEvent()
                out.CopyFrom(event)
            step_id = step_of(out)
            if step_id is not None:
                self.steps[(row.run_id, step_id)] = None
            row.last_seq += 1
            out.seq = row.last_seq
            apply_event(row.snapshot, out)
            apply_journal_event(row.journal, out)
            appended.append(out)
        if appended:
            self.events.extend(appended)
            self.dirty[row.run_id] = None
        return appended


Op = Callable[[Batch], Awaitable[Outcome]]


def _new_event(run_id: str, source: pb.EventSource.ValueType, now: int) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id, source=source)
    set_nanos(event.event_time, now)
    return event


def _new_row(event: pb.LedgerEvent) -> sql_runs.RunRow:
    created = event.run_created
    return sql_runs.RunRow(
        run_id=event.run_id,
        workflow_name=created.workflow_name,
        last_seq=0,
        snapshot=empty_snapshot(event.run_id),
        journal=empty_journal(),
        log=RunLogState(),
        idempotency_key=created.idempotency_key or None,
        namespace=created.namespace or sql_runs.DEFAULT_NAMESPACE,
    )


def _check_namespace(row: sql_runs.RunRow, namespace: str | None) -> None:
    # A run of another namespace is answered exactly as a missing one: a caller
    # confined to a namespace learns nothing about the others.
    if namespace is not None and row.namespace != namespace:
        raise RunNotFoundError(f"run {row.run_id!r} not found")


async def append_events(
    batch: Batch,
    events: Sequence[pb.LedgerEvent],
    *,
    request_id: str,
    retention: LogRetention,
    namespace: str | None = None,
) -> Outcome:
    """Append validated events (possibly for many runs) atomically.

    A run is created by a leading ``run_created``; events for any other unknown run
    are refused. With a ``request_id``, a resend is answered from the first append.
    With a ``namespace``, runs of other namespaces are treated as unknown (the caller
    checked that the runs it creates are in it).

    Raises:
        RunNotFoundError: An event names a run that does not exist.
        RunAlreadyExistsError: A ``run_created`` names an existing run.
        FailedPreconditionError: An event cannot follow the run's end.
    """
    run_ids = list(dict.fromkeys(e.run_id for e in events))
    if request_id:
        prior = batch.prior_request(run_ids, request_id)
        if prior:
            return Outcome(duplicate=True, ranges=prior)
    # Every check first: a refusal must leave the batch exactly as it found it.
    plan: list[tuple[sql_runs.RunRow | None, list[pb.LedgerEvent]]] = []
    for run_id in run_ids:
        indexes = [i for i, e in enumerate(events) if e.run_id == run_id]
        run_events = [events[i] for i in indexes]
        row = batch.rows.get(run_id)
        if row is not None:
            _check_namespace(row, namespace)
        creates = [i for i, e in enumerate(run_events) if e.HasField("run_created")]
        if row is not None and creates:
            raise RunAlreadyExistsError(f"run {run_id!r} already exists")
        if row is None and creates != [0]:
            raise RunNotFoundError(
                f"run {run_id!r} not found (a new run's first event must be run_created)"
            )
        created = run_events[0].run_created
        key = (created.namespace or sql_runs.DEFAULT_NAMESPACE, created.idempotency_key)
        if row is None and key[1] and key in batch.keys:
            raise RunAlreadyExistsError(
                f"idempotency key {key[1]!r} already names run {batch.keys[key]!r}"
            )
        before = row.snapshot.status if row is not None else pb.RUN_STATUS_UNKNOWN
        finished = is_terminal(before)
        for index, event in zip(indexes, run_events, strict=True):
            case = event.WhichOneof("payload")
            if finished and case in REFUSED_AFTER_TERMINAL:
                word = STATUS_WORDS[before] if is_terminal(before) else "earlier in this request"
                raise FailedPreconditionError(
                    f"events[{index}] ({case}): run {run_id!r} already finished ({word})"
                )
            finished = finished or ends_run(event)
        plan.append((row, run_events))

    outcome = Outcome()
    for row, run_events in plan:
        if row is None:
            row = _new_row(run_events[0])
            batch.create(row, to_nanos(run_events[0].event_time))
        first = row.last_seq + 1
        appended = batch.fold(row, run_events, retention)
        if appended:
            outcome.ranges[row.run_id] = (first, row.last_seq)
            outcome.appended.extend(appended)
    if request_id:
        batch.record_request(request_id, outcome.ranges)
    return outcome


async def report_status(
    batch: Batch,
    patch: rpb.StatusPatch,
    *,
    request_id: str,
    now: int,
    retention: LogRetention,
    namespace: str | None = None,
) -> Outcome:
    """Derive events from a status patch against the locked snapshot, and append them.

    A patch for an unknown run creates it (a producer that only reports status has
    no other way to), with the patch's workflow name, in ``namespace`` (or "default").
    With a ``namespace``, a run of another namespace is treated as unknown.
    """
    row = batch.rows.get(patch.run_id)
    if row is not None:
        _check_namespace(row, namespace)
    if request_id:
        prior = batch.prior_request([patch.run_id], request_id)
        if prior:
            return Outcome(duplicate=True, ranges=prior)
    previous = row.snapshot if row is not None else empty_snapshot(patch.run_id)
    derived = events_from_status_patch(
        patch, previous, now_nanos=now, source=pb.EVENT_SOURCE_EXTERNAL
    )
    if row is None:
        created = _new_event(patch.run_id, pb.EVENT_SOURCE_EXTERNAL, now)
        created.run_created.workflow_name = patch.workflow_name
        created.run_created.status = pb.RUN_STATUS_QUEUED
        created.run_created.namespace = namespace or sql_runs.DEFAULT_NAMESPACE
        derived.insert(0, created)
    if not derived:
        return Outcome()
    return await append_events(
        batch, derived, request_id=request_id, retention=retention, namespace=namespace
    )


@dataclass(frozen=True, slots=True)
class StartRunSpec:
    """What StartRun asks for (already validated)."""

    workflow_name: str
    workflow_version: str = ""
    input: common_pb2.Payload | None = None
    run_id: str = ""
    idempotency_key: str = ""
    tags: tuple[str, ...] = ()
    execution_timeout: Duration | None = None
    parent_run_id: str = ""
    namespace: str = sql_runs.DEFAULT_NAMESPACE


def new_run_id() -> str:
    """Return a fresh run id (a random uuid4, so ids never collide across coordinators)."""
    return str(uuid.uuid4())


def _copy(snapshot: pb.RunSnapshot) -> pb.RunSnapshot:
    # Rows outlive the batch in the writer's cache and keep changing: anything handed
    # out to a caller must be its own copy.
    out = pb.RunSnapshot()
    out.CopyFrom(snapshot)
    return out


async def start_run(
    batch: Batch, spec: StartRunSpec, *, run_id: str, now: int, retention: LogRetention
) -> Outcome:
    """Create a run, or return the existing one for a retried request.

    ``Outcome.value`` is ``(snapshot, created)``.

    Raises:
        RunAlreadyExistsError: ``run_id`` exists for another workflow or in another
            namespace (run ids are global; idempotency keys are per namespace).
    """
    if spec.idempotency_key:
        existing = batch.keys.get((spec.namespace, spec.idempotency_key))
        if existing is not None:
            snap = await batch.snapshot_of(existing)
            if snap is not None:
                return Outcome(value=(_copy(snap), False))
    row = batch.rows.get(run_id)
    if row is not None:
        if row.namespace != spec.namespace:
            # Says no more than that the id is taken: the run is not the caller's to see.
            raise RunAlreadyExistsError(f"run_id: run {run_id!r} already exists")
        if row.workflow_name != spec.workflow_name:
            raise RunAlreadyExistsError(
                f"run {row.run_id!r} already exists for workflow {row.workflow_name!r}"
            )
        return Outcome(value=(_copy(row.snapshot), False))
    event = _new_event(run_id, pb.EVENT_SOURCE_CLIENT, now)
    created = event.run_created
    created.workflow_name = spec.workflow_name
    created.workflow_version = spec.workflow_version
    created.status = pb.RUN_STATUS_QUEUED
    created.tags.extend(spec.tags)
    created.idempotency_key = spec.idempotency_key
    if spec.input is not None:
        created.input.CopyFrom(spec.input)
    if spec.execution_timeout is not None:
        created.execution_timeout.CopyFrom(spec.execution_timeout)
    created.parent_run_id = spec.parent_run_id
    created.namespace = spec.namespace
    row = _new_row(event)
    if event.ByteSize() <= KEEP_CREATED_BYTES:
        row.created = event  # for the first dispatch (see RunRow.created)
    batch.create(row, now)
    appended = batch.fold(row, [event], retention)
    # StartRun means "run this workflow": the run waits for a worker in the queue
    # named after its workflow.
    batch.save_task(sql_tasks.new_workflow_task(run_id, spec.workflow_name, now))
    return Outcome(
        appended=appended,
        ranges={run_id: (1, row.last_seq)},
        value=(_copy(row.snapshot), True),
    )


KEEP_CREATED_BYTES = 16 * 1024
"""The largest ``run_created`` event a cached run row keeps for its first dispatch; the
writer caches up to ``cached_runs`` rows, so this bounds the memory it costs."""


def _open_row(batch: Batch, run_id: str, namespace: str | None = None) -> sql_runs.RunRow:
    row = batch.rows.get(run_id)
    if row is None:
        raise RunNotFoundError(f"run {run_id!r} not found")
    _check_namespace(row, namespace)
    return row


def _require_open(row: sql_runs.RunRow, action: str) -> None:
    if is_terminal(row.snapshot.status):
        raise FailedPreconditionError(
            f"cannot {action} run {row.run_id!r}: it already finished "
            f"({STATUS_WORDS[row.snapshot.status]})"
        )


def _append_one(
    batch: Batch, row: sql_runs.RunRow, event: pb.LedgerEvent, retention: LogRetention
) -> Outcome:
    first = row.last_seq + 1
    appended = batch.fold(row, [event], retention)
    return Outcome(
        appended=appended,
        ranges={row.run_id: (first, row.last_seq)},
        value=row.last_seq,
    )


async def cancel_run(
    batch: Batch,
    run_id: str,
    *,
    reason: str,
    identity: str,
    now: int,
    retention: LogRetention,
    namespace: str | None = None,
) -> Outcome:
    """Record a cancellation request once; ``Outcome.value`` is its seq.

    Raises:
        RunNotFoundError: No such run (in ``namespace``, when given).
        FailedPreconditionError: The run already finished.
    """
    row = _open_row(batch, run_id, namespace)
    # A retry of a cancel that succeeded is answered as such, even once the run ended.
    if row.snapshot.cancel_requested:
        seq = await batch.first_event_seq(run_id, "cancel_requested")
        return Outcome(duplicate=True, value=seq or 0)
    _require_open(row, "cancel")
    event = _new_event(run_id, pb.EVENT_SOURCE_CLIENT, now)
    event.cancel_requested.reason = reason
    event.cancel_requested.identity = identity
    outcome = _append_one(batch, row, event, retention)
    _enqueue_if_idle(batch, row, now)
    return outcome


def _enqueue_if_idle(batch: Batch, row: sql_runs.RunRow, now: int) -> None:
    """Give a run that workers ran, and that no task holds now, a workflow task.

    A run cancelled while nobody runs it (waiting, or between tasks) must still be
    replayed once, so its compensations run and it ends cancelled.
    """
    if is_terminal(row.snapshot.status):
        return
    ensure_task(batch, row, now)


def ensure_task(batch: Batch, row: sql_runs.RunRow, due: int) -> None:
    """Make a worker-run run's workflow task available by ``due``, creating it if none is open.

    Needs the run's tasks in the batch. A run with no task at all is a producer's
    ledger (never run by workers) and gets none; one whose task is leased is left to
    that invocation, whose result schedules what follows. A pending task due later
    (a sleeping run's timer) is brought forward.
    """
    tasks = batch.tasks_of(row.run_id)
    if not tasks:
        return
    open_tasks = [
        t for t in tasks if t.kind == sql_tasks.WORKFLOW_TASK and t.status != sql_tasks.DONE
    ]
    if any(t.status == sql_tasks.LEASED for t in open_tasks):
        return
    for task in open_tasks:
        if task.available_time > due:
            task.available_time = due
            batch.save_task(task)
        return
    batch.save_task(sql_tasks.new_workflow_task(row.run_id, row.workflow_name, due))


def signal_key(request_id: str) -> str:
    """Return the request-id key a SignalRun request id is remembered under."""
    return f"signal:{request_id}" if request_id else ""


async def signal_run(
    batch: Batch,
    run_id: str,
    *,
    name: str,
    payload: common_pb2.Payload | None,
    request_id: str,
    identity: str,
    now: int,
    retention: LogRetention,
    namespace: str | None = None,
) -> Outcome:
    """Put a signal in the run's inbox; ``Outcome.value`` is its seq.

    Raises:
        RunNotFoundError: No such run (in ``namespace``, when given).
        FailedPreconditionError: The run already finished.
    """
    row = _open_row(batch, run_id, namespace)
    # A retry of a send that succeeded is answered as such, even once the run ended.
    key = signal_key(request_id)
    if key:
        prior = batch.prior_request([run_id], key)
        if run_id in prior:
            return Outcome(duplicate=True, ranges=prior, value=prior[run_id][0])
    _require_open(row, "signal")
    event = _new_event(run_id, pb.EVENT_SOURCE_CLIENT, now)
    signal = event.signal_received
    signal.name = name
    signal.request_id = request_id
    signal.identity = identity
    if payload is not None:
        signal.payload.CopyFrom(payload)
    outcome = _append_one(batch, row, event, retention)
    if key:
        batch.record_request(key, outcome.ranges)
    # Imported here: waitpoint ops build on this module's.
    from ledgerflow.coordinator.store import _waitpoints

    if batch.tasks_of(run_id) and _waitpoints.resolve_signal(
        batch, row, name, row.last_seq, payload, now=now, retention=retention
    ):
        ensure_task(batch, row, now)
    return outcome
