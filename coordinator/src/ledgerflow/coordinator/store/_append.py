"""The append path: every write to a ledger goes through these operations.

Each operation runs inside the writer's transaction (in its own savepoint, so
one refused request does not undo the others in the same group commit) and:

1. locks the rows of the runs it touches (in run-id order: no deadlocks),
2. ingests log lines through the positional channel cursors,
3. assigns gapless seqs after the run's ``last_seq``,
4. folds the events into the stored snapshot and journal,
5. writes events, log lines, cursors and the run row back.

Nothing here commits: the caller acknowledges only after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.duration_pb2 import Duration
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store import _sql_events as sql_events
from ledgerflow.coordinator.store import _sql_runs as sql_runs
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


@dataclass(slots=True)
class Touched:
    """What an operation changed in one run, for acknowledgements and fan-out."""

    run_id: str
    first_seq: int
    last_seq: int
    snapshot: pb.RunSnapshot


@dataclass(slots=True)
class Outcome:
    """The result of one write operation.

    Attributes:
        touched: The runs changed, in first-seen order (empty for a duplicate).
        duplicate: The request had been applied before; nothing was appended.
        ranges: Per run, the seqs the request appended (for a duplicate: the first time).
        value: Operation-specific result (e.g. StartRun's snapshot and created flag).
    """

    touched: list[Touched] = field(default_factory=list)
    appended: list[pb.LedgerEvent] = field(default_factory=list)
    duplicate: bool = False
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    value: object = None


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
    )


async def _fold(
    conn: AsyncConnection,
    row: sql_runs.RunRow,
    events: Sequence[pb.LedgerEvent],
    retention: LogRetention,
) -> list[pb.LedgerEvent]:
    """Ingest, number and fold ``events`` into ``row``; write events and log lines."""
    channels = [
        e.log_appended.channel
        for e in events
        if e.HasField("log_appended") and e.log_appended.HasField("channel_offset")
    ]
    row.log.cursors = await sql_events.load_cursors(conn, row.run_id, channels)
    appended: list[pb.LedgerEvent] = []
    # All of a batch's log lines go in one INSERT: a round trip per log event was the
    # ingest bottleneck (bench/ingest.py).
    stored: list[tuple[StoredLine, int]] = []
    for index, event in enumerate(events):
        case = event.WhichOneof("payload")
        if case in REFUSED_AFTER_TERMINAL and is_terminal(row.snapshot.status):
            raise FailedPreconditionError(
                f"events[{index}] ({case}): run {row.run_id!r} already finished "
                f"({STATUS_WORDS[row.snapshot.status]})"
            )
        if case == "log_appended":
            result = ingest_log_batch(event, row.log, retention)
            if result.event is None:
                continue  # Everything in it was ingested before: a resend.
            out = result.event
            time = to_nanos(event.event_time)
            stored.extend((line, time) for line in result.stored)
        else:
            out = pb.LedgerEvent()
            out.CopyFrom(event)
        row.last_seq += 1
        out.seq = row.last_seq
        apply_event(row.snapshot, out)
        apply_journal_event(row.journal, out)
        appended.append(out)
    await sql_events.insert_events(conn, appended)
    await sql_events.insert_log_lines(conn, row.run_id, stored)
    await sql_events.save_cursors(conn, row.run_id, row.log.cursors)
    return appended


async def append_events(
    conn: AsyncConnection,
    events: Sequence[pb.LedgerEvent],
    *,
    request_id: str,
    retention: LogRetention,
) -> Outcome:
    """Append validated events (possibly for many runs) atomically.

    A run is created by a leading ``run_created``; events for any other unknown run
    are refused. With a ``request_id``, a resend is answered from the first append.

    Raises:
        RunNotFoundError: An event names a run that does not exist.
        RunAlreadyExistsError: A ``run_created`` names an existing run.
        FailedPreconditionError: An event cannot follow the run's end.
    """
    run_ids = list(dict.fromkeys(e.run_id for e in events))
    if request_id:
        prior = await sql_events.find_request(conn, run_ids, request_id)
        if prior:
            return Outcome(duplicate=True, ranges={r: prior[r] for r in run_ids if r in prior})
    rows = await sql_runs.lock_runs(conn, run_ids)
    outcome = Outcome()
    for run_id in run_ids:
        batch = [e for e in events if e.run_id == run_id]
        row = rows.get(run_id)
        creates = [i for i, e in enumerate(batch) if e.HasField("run_created")]
        if row is not None and creates:
            raise RunAlreadyExistsError(f"run {run_id!r} already exists")
        if row is None:
            if creates != [0]:
                raise RunNotFoundError(
                    f"run {run_id!r} not found (a new run's first event must be run_created)"
                )
            row = _new_row(batch[0])
        first = row.last_seq + 1
        appended = await _fold(conn, row, batch, retention)
        if run_id not in rows:
            if not await sql_runs.insert_run(conn, row, to_nanos(batch[0].event_time)):
                raise RunAlreadyExistsError(f"run {run_id!r} or its idempotency key already exists")
        elif appended:
            await sql_runs.save_run(conn, row)
        if appended:
            outcome.touched.append(Touched(run_id, first, row.last_seq, row.snapshot))
            outcome.ranges[run_id] = (first, row.last_seq)
            outcome.appended.extend(appended)
    if request_id:
        await sql_events.record_request(conn, request_id, outcome.ranges)
    return outcome


async def report_status(
    conn: AsyncConnection,
    patch: rpb.StatusPatch,
    *,
    request_id: str,
    now: int,
    retention: LogRetention,
) -> Outcome:
    """Derive events from a status patch against the locked snapshot, and append them.

    A patch for an unknown run creates it (a producer that only reports status has
    no other way to), with the patch's workflow name.
    """
    if request_id:
        prior = await sql_events.find_request(conn, [patch.run_id], request_id)
        if prior:
            return Outcome(duplicate=True, ranges=prior)
    rows = await sql_runs.lock_runs(conn, [patch.run_id])
    row = rows.get(patch.run_id)
    previous = row.snapshot if row is not None else empty_snapshot(patch.run_id)
    derived = events_from_status_patch(
        patch, previous, now_nanos=now, source=pb.EVENT_SOURCE_EXTERNAL
    )
    if row is None:
        created = _new_event(patch.run_id, pb.EVENT_SOURCE_EXTERNAL, now)
        created.run_created.workflow_name = patch.workflow_name
        created.run_created.status = pb.RUN_STATUS_QUEUED
        derived.insert(0, created)
    if not derived:
        return Outcome()
    return await append_events(conn, derived, request_id=request_id, retention=retention)


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


def new_run_id() -> str:
    """Return a fresh run id (a random uuid4, so ids never collide across coordinators)."""
    return str(uuid.uuid4())


async def start_run(
    conn: AsyncConnection, spec: StartRunSpec, *, run_id: str, now: int, retention: LogRetention
) -> Outcome:
    """Create a run, or return the existing one for a retried request.

    ``Outcome.value`` is ``(snapshot, created)``.

    Raises:
        RunAlreadyExistsError: ``run_id`` exists for another workflow.
    """
    if spec.idempotency_key:
        existing = await sql_runs.run_id_for_idempotency_key(conn, spec.idempotency_key)
        if existing is not None:
            snap = await sql_runs.get_snapshot(conn, existing)
            return Outcome(value=(snap, False))
    rows = await sql_runs.lock_runs(conn, [run_id])
    if run_id in rows:
        return _existing(rows[run_id], spec)
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
    row = _new_row(event)
    await _fold(conn, row, [event], retention)
    if not await sql_runs.insert_run(conn, row, now):
        # Another coordinator created it between our lookup and insert; its row is
        # committed (ON CONFLICT waited for it), so read it back.
        if spec.idempotency_key:
            existing = await sql_runs.run_id_for_idempotency_key(conn, spec.idempotency_key)
            if existing is not None:
                snap = await sql_runs.get_snapshot(conn, existing)
                return Outcome(value=(snap, False))
        rows = await sql_runs.lock_runs(conn, [run_id])
        if run_id in rows:
            return _existing(rows[run_id], spec)
        raise RunAlreadyExistsError(f"run {run_id!r} could not be created")
    return Outcome(
        touched=[Touched(run_id, 1, row.last_seq, row.snapshot)],
        ranges={run_id: (1, row.last_seq)},
        value=(row.snapshot, True),
    )


def _existing(row: sql_runs.RunRow, spec: StartRunSpec) -> Outcome:
    if row.workflow_name != spec.workflow_name:
        raise RunAlreadyExistsError(
            f"run {row.run_id!r} already exists for workflow {row.workflow_name!r}"
        )
    return Outcome(value=(row.snapshot, False))


async def _locked_run(conn: AsyncConnection, run_id: str) -> sql_runs.RunRow:
    rows = await sql_runs.lock_runs(conn, [run_id])
    row = rows.get(run_id)
    if row is None:
        raise RunNotFoundError(f"run {run_id!r} not found")
    return row


def _require_open(row: sql_runs.RunRow, action: str) -> None:
    if is_terminal(row.snapshot.status):
        raise FailedPreconditionError(
            f"cannot {action} run {row.run_id!r}: it already finished "
            f"({STATUS_WORDS[row.snapshot.status]})"
        )


async def _append_one(
    conn: AsyncConnection, row: sql_runs.RunRow, event: pb.LedgerEvent, retention: LogRetention
) -> Outcome:
    first = row.last_seq + 1
    await _fold(conn, row, [event], retention)
    await sql_runs.save_run(conn, row)
    return Outcome(
        touched=[Touched(row.run_id, first, row.last_seq, row.snapshot)],
        ranges={row.run_id: (first, row.last_seq)},
        value=row.last_seq,
    )


async def cancel_run(
    conn: AsyncConnection,
    run_id: str,
    *,
    reason: str,
    identity: str,
    now: int,
    retention: LogRetention,
) -> Outcome:
    """Record a cancellation request once; ``Outcome.value`` is its seq.

    Raises:
        RunNotFoundError: No such run.
        FailedPreconditionError: The run already finished.
    """
    row = await _locked_run(conn, run_id)
    # A retry of a cancel that succeeded is answered as such, even once the run ended.
    if row.snapshot.cancel_requested:
        seq = await sql_events.first_event_seq(conn, run_id, "cancel_requested")
        return Outcome(duplicate=True, value=seq or 0)
    _require_open(row, "cancel")
    event = _new_event(run_id, pb.EVENT_SOURCE_CLIENT, now)
    event.cancel_requested.reason = reason
    event.cancel_requested.identity = identity
    return await _append_one(conn, row, event, retention)


async def signal_run(
    conn: AsyncConnection,
    run_id: str,
    *,
    name: str,
    payload: common_pb2.Payload | None,
    request_id: str,
    identity: str,
    now: int,
    retention: LogRetention,
) -> Outcome:
    """Put a signal in the run's inbox; ``Outcome.value`` is its seq.

    Raises:
        RunNotFoundError: No such run.
        FailedPreconditionError: The run already finished.
    """
    row = await _locked_run(conn, run_id)
    # A retry of a send that succeeded is answered as such, even once the run ended.
    key = f"signal:{request_id}" if request_id else ""
    if key:
        prior = await sql_events.find_request(conn, [run_id], key)
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
    outcome = await _append_one(conn, row, event, retention)
    if key:
        await sql_events.record_request(conn, key, outcome.ranges)
    return outcome
