"""Named queries on the ``runs`` aggregate: the ``runs`` row and its ``run_steps`` rows.

A run's snapshot and journal are stored in two parts: the run row holds them
without their per-step maps (the *head*), and each step is a ``run_steps`` row
(its StepSnapshot, final StepJournalEntry and PendingStep). An append rewrites
the head and the steps its events name — every reducer and journal rule changes
at most the step its event names (tests/coordinator/test_append.py checks that
over the golden ledgers) — so a long run costs no more to append to than a
short one. Readers put the parts back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store._dialect import Write
from ledgerflow.coordinator.store._schema import run_steps, runs
from ledgerflow.ledger import RunLogState
from ledgerflow.ledger._status import TERMINAL_STATUSES
from ledgerflow.v1 import journal_pb2, ledger_pb2

DEFAULT_NAMESPACE = "default"
"""The namespace of a run whose ``run_created`` named none."""


def namespace_of(snapshot: ledger_pb2.RunSnapshot) -> str:
    """Return the namespace a run lives in."""
    return snapshot.namespace or DEFAULT_NAMESPACE


@dataclass(slots=True)
class RunRow:
    """A run's row, decoded, as the appending transaction holds it under lock.

    ``log.cursors`` holds every channel cursor of the run once loaded, so a
    channel missing from it has ingested nothing yet.
    """

    run_id: str
    workflow_name: str
    last_seq: int
    snapshot: ledger_pb2.RunSnapshot
    journal: journal_pb2.JournalSlice
    log: RunLogState
    idempotency_key: str | None
    namespace: str = DEFAULT_NAMESPACE
    created: ledger_pb2.LedgerEvent | None = None
    """The run's ``run_created`` event, kept (not stored) from its creation by this
    process to its first dispatch when small, so the dispatch need not read it back."""


_SNAPSHOT_STEPS = "steps"
_JOURNAL_STEPS = ("step_results", "pending_steps")
_STEP_FIELDS = frozenset({_SNAPSHOT_STEPS, *_JOURNAL_STEPS})


def head_bytes(message: Message) -> bytes:
    """Serialize a RunSnapshot or JournalSlice without its per-step maps.

    Copies the other fields into a fresh message rather than copying everything
    and clearing the maps: the point is not to touch every step.
    """
    head = type(message)()
    for fd, value in message.ListFields():
        if fd.name in _STEP_FIELDS:
            continue
        target = getattr(head, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            target.extend(value)
        elif fd.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(head, fd.name, value)
    return head.SerializeToString(deterministic=True)


def _blob(message: Message | None) -> bytes | None:
    return None if message is None else message.SerializeToString(deterministic=True)


def step_row(row: RunRow, step_id: str) -> dict[str, Any]:
    """Return the ``run_steps`` columns of one step of a (decoded) run."""
    return {
        "run_id": row.run_id,
        "step_id": step_id,
        "snapshot": _blob(row.snapshot.steps.get(step_id)),
        "result": _blob(row.journal.step_results.get(step_id)),
        "pending": _blob(row.journal.pending_steps.get(step_id)),
    }


def save_steps(rows: Sequence[dict[str, Any]]) -> Write:
    """Upsert ``run_steps`` rows built by :func:`step_row`."""
    names = ("run_id", "step_id", "snapshot", "result", "pending")
    return Write(
        run_steps,
        {name: [r[name] for r in rows] for name in names},
        update=("snapshot", "result", "pending"),
    )


async def _merge_steps(
    conn: AsyncConnection,
    snapshots: dict[str, ledger_pb2.RunSnapshot],
    journals: dict[str, journal_pb2.JournalSlice] | None = None,
) -> None:
    """Put the step rows of ``snapshots``' runs (and of ``journals``) back into them."""
    if not snapshots:
        return
    columns = [run_steps.c.run_id, run_steps.c.step_id, run_steps.c.snapshot]
    if journals is not None:
        columns += [run_steps.c.result, run_steps.c.pending]
    rows = await conn.execute(select(*columns).where(run_steps.c.run_id.in_(set(snapshots))))
    for row in rows:
        if row.snapshot is not None:
            snapshots[row.run_id].steps[row.step_id].MergeFromString(row.snapshot)
        if journals is not None:
            journal = journals[row.run_id]
            if row.result is not None:
                journal.step_results[row.step_id].MergeFromString(row.result)
            if row.pending is not None:
                journal.pending_steps[row.step_id].MergeFromString(row.pending)


def _decode(row: object) -> RunRow:
    r = row._mapping  # type: ignore[attr-defined]
    return RunRow(
        run_id=r["run_id"],
        workflow_name=r["workflow_name"],
        last_seq=r["last_seq"],
        snapshot=ledger_pb2.RunSnapshot.FromString(r["snapshot"]),
        journal=journal_pb2.JournalSlice.FromString(r["journal"]),
        log=RunLogState(
            last_seq=r["log_last_seq"],
            stored_lines=r["log_stored_lines"],
            stored_bytes=r["log_stored_bytes"],
            truncated=r["log_truncated"],
        ),
        idempotency_key=r["idempotency_key"],
        namespace=r["namespace"],
    )


async def lock_runs(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, int]:
    """Lock the rows of existing runs among ``run_ids``; return each one's ``last_seq``.

    Rows are locked in run-id order (FOR UPDATE on Postgres; SQLite's BEGIN
    IMMEDIATE already holds the database's one write lock), so two transactions
    touching overlapping runs can never deadlock. The seq tells the writer whether
    its cached copy of a row is still current: every write to a run bumps it.
    """
    if not run_ids:
        return {}
    rows = await conn.execute(
        select(runs.c.run_id, runs.c.last_seq)
        .where(runs.c.run_id.in_(sorted(set(run_ids))))
        .order_by(runs.c.run_id)
        .with_for_update()
    )
    return dict(rows.tuples().all())


async def load_runs(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, RunRow]:
    """Load the rows of runs the caller locked (their log cursors are loaded separately)."""
    if not run_ids:
        return {}
    rows = await conn.execute(select(runs).where(runs.c.run_id.in_(set(run_ids))))
    loaded = {row.run_id: _decode(row) for row in rows}
    await _merge_steps(
        conn,
        {run_id: row.snapshot for run_id, row in loaded.items()},
        {run_id: row.journal for run_id, row in loaded.items()},
    )
    return loaded


async def run_ids_for_keys(
    conn: AsyncConnection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Return the run started with each (namespace, idempotency key) of ``keys`` that has one."""
    if not keys:
        return {}
    wanted = set(keys)
    rows = await conn.execute(
        select(runs.c.namespace, runs.c.idempotency_key, runs.c.run_id).where(
            runs.c.idempotency_key.in_({key for _, key in wanted})
        )
    )
    # Filtered here rather than with a row-value IN, which not every SQLite build has.
    return {(ns, key): run_id for ns, key, run_id in rows.tuples() if (ns, key) in wanted}


def _state(rows: Sequence[RunRow]) -> dict[str, list[Any]]:
    """The columns every append rewrites, one list per column."""
    snaps = [row.snapshot for row in rows]
    return {
        "run_id": [row.run_id for row in rows],
        "status": [snap.status for snap in snaps],
        "update_time": [s.update_time.seconds * 1_000_000_000 + s.update_time.nanos for s in snaps],
        "last_seq": [row.last_seq for row in rows],
        "snapshot": [head_bytes(snap) for snap in snaps],
        "journal": [head_bytes(row.journal) for row in rows],
        "log_last_seq": [row.log.last_seq for row in rows],
        "log_stored_lines": [row.log.stored_lines for row in rows],
        "log_stored_bytes": [row.log.stored_bytes for row in rows],
        "log_truncated": [row.log.truncated for row in rows],
    }


def insert_runs(new: Sequence[tuple[RunRow, int]]) -> Write:
    """Insert new runs (with their create times), returning the ids actually inserted.

    The insert is ``ON CONFLICT DO NOTHING``: a run id or idempotency key another
    coordinator committed since this transaction looked (or that a StartRun assumed
    new without looking) is left alone, and its id is missing from the result, so
    the caller can retry against the committed row. On Postgres the conflict also
    fails the whole statement (``all_or_nothing``): a group written without a
    transaction must not commit the rest of its writes.
    """
    rows = [row for row, _ in new]
    columns = {
        **_state(rows),
        "workflow_name": [row.workflow_name for row in rows],
        "create_time": [create_time for _, create_time in new],
        "idempotency_key": [row.idempotency_key for row in rows],
        "parent_run_id": [row.snapshot.parent_run_id or None for row in rows],
        "namespace": [row.namespace for row in rows],
    }
    return Write(runs, columns, returning="run_id", all_or_nothing=True)


def save_runs(rows: Sequence[RunRow], loaded_seqs: dict[str, int]) -> Write:
    """Write back runs' seqs, snapshots, journals and log counters; return the ids written.

    A row is written only if its stored ``last_seq`` is still the one it was loaded
    at (``loaded_seqs``): a run another coordinator appended to since is skipped,
    and its id is missing from the result, so the caller can redo its group.
    """
    columns = _state(rows)
    columns["expected_last_seq"] = [loaded_seqs[row.run_id] for row in rows]
    return Write(
        runs,
        columns,
        returning="run_id",
        match=(("run_id", "run_id"), ("last_seq", "expected_last_seq")),
        all_or_nothing=True,
    )


async def parent_of(conn: AsyncConnection, run_id: str) -> str | None:
    """Return a run's parent run id (None for a top-level or unknown run); it never changes."""
    parent = await conn.scalar(select(runs.c.parent_run_id).where(runs.c.run_id == run_id))
    return str(parent) if parent else None


async def open_children(conn: AsyncConnection, run_id: str) -> list[str]:
    """Return the ids of a run's children that have not ended."""
    rows = await conn.execute(
        select(runs.c.run_id).where(
            runs.c.parent_run_id == run_id, runs.c.status.not_in(sorted(TERMINAL_STATUSES))
        )
    )
    return list(rows.scalars().all())


async def get_snapshot(conn: AsyncConnection, run_id: str) -> ledger_pb2.RunSnapshot | None:
    """Return a run's stored snapshot, or None for an unknown run."""
    data = (
        await conn.execute(select(runs.c.snapshot).where(runs.c.run_id == run_id))
    ).scalar_one_or_none()
    if data is None:
        return None
    snapshot = ledger_pb2.RunSnapshot.FromString(data)
    await _merge_steps(conn, {run_id: snapshot})
    return snapshot


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs to list."""

    statuses: tuple[int, ...] = ()
    workflow_name: str = ""
    created_after: int | None = None
    created_before: int | None = None
    namespace: str = ""
    """Runs of this namespace only; empty lists every namespace."""


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a page of runs (newest first) resumes: after this (create_time, run_id)."""

    create_time: int
    run_id: str


async def list_snapshots(
    conn: AsyncConnection, flt: RunFilter, limit: int, after: PagePosition | None
) -> list[tuple[int, ledger_pb2.RunSnapshot]]:
    """Return up to ``limit`` (create_time, snapshot) pairs, newest first, after ``after``.

    Keyset pagination on (create_time, run_id): stable while runs are created
    concurrently, and each page is one index range scan.
    """
    query = select(runs.c.run_id, runs.c.create_time, runs.c.snapshot)
    conditions: list[ColumnElement[bool]] = []
    if flt.statuses:
        conditions.append(runs.c.status.in_(flt.statuses))
    if flt.workflow_name:
        conditions.append(runs.c.workflow_name == flt.workflow_name)
    if flt.namespace:
        conditions.append(runs.c.namespace == flt.namespace)
    if flt.created_after is not None:
        conditions.append(runs.c.create_time >= flt.created_after)
    if flt.created_before is not None:
        conditions.append(runs.c.create_time < flt.created_before)
    if after is not None:
        conditions.append(
            or_(
                runs.c.create_time < after.create_time,
                and_(runs.c.create_time == after.create_time, runs.c.run_id < after.run_id),
            )
        )
    if conditions:
        query = query.where(and_(*conditions))
    query = query.order_by(runs.c.create_time.desc(), runs.c.run_id.desc()).limit(limit)
    rows = (await conn.execute(query)).all()
    snapshots = {row.run_id: ledger_pb2.RunSnapshot.FromString(row.snapshot) for row in rows}
    await _merge_steps(conn, snapshots)
    return [(row.create_time, snapshots[row.run_id]) for row in rows]
