"""Named queries on the ``runs`` aggregate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store._dialect import insert_for
from ledgerflow.coordinator.store._schema import runs
from ledgerflow.ledger import RunLogState
from ledgerflow.v1 import journal_pb2, ledger_pb2


@dataclass(slots=True)
class RunRow:
    """A run's row, decoded, as the appending transaction holds it under lock."""

    run_id: str
    workflow_name: str
    last_seq: int
    snapshot: ledger_pb2.RunSnapshot
    journal: journal_pb2.JournalSlice
    log: RunLogState
    idempotency_key: str | None


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
    )


async def lock_runs(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, RunRow]:
    """Lock and load the rows of existing runs among ``run_ids``.

    Rows are locked in run-id order (FOR UPDATE on Postgres; SQLite's BEGIN
    IMMEDIATE already holds the database's one write lock), so two transactions
    touching overlapping runs can never deadlock.
    """
    if not run_ids:
        return {}
    rows = await conn.execute(
        select(runs)
        .where(runs.c.run_id.in_(sorted(set(run_ids))))
        .order_by(runs.c.run_id)
        .with_for_update()
    )
    return {row.run_id: _decode(row) for row in rows}


async def run_id_for_idempotency_key(conn: AsyncConnection, key: str) -> str | None:
    """Return the run started with idempotency ``key``, if any."""
    return (
        await conn.execute(select(runs.c.run_id).where(runs.c.idempotency_key == key))
    ).scalar_one_or_none()


async def insert_run(conn: AsyncConnection, row: RunRow, create_time: int) -> bool:
    """Insert a new run; return False when the run id or idempotency key already exists.

    The insert is ``ON CONFLICT DO NOTHING`` so two coordinators racing to create
    the same run both succeed in finding exactly one.
    """
    insert = insert_for(conn)
    stmt = (
        insert(runs)
        .values(
            run_id=row.run_id,
            workflow_name=row.workflow_name,
            status=row.snapshot.status,
            create_time=create_time,
            update_time=create_time,
            last_seq=row.last_seq,
            idempotency_key=row.idempotency_key,
            parent_run_id=row.snapshot.parent_run_id or None,
            snapshot=row.snapshot.SerializeToString(deterministic=True),
            journal=row.journal.SerializeToString(deterministic=True),
        )
        .on_conflict_do_nothing()
    )
    result = await conn.execute(stmt)
    return bool(result.rowcount)


async def save_run(conn: AsyncConnection, row: RunRow) -> None:
    """Write back a locked run's seq, snapshot, journal and log counters."""
    snap = row.snapshot
    await conn.execute(
        update(runs)
        .where(runs.c.run_id == row.run_id)
        .values(
            status=snap.status,
            update_time=snap.update_time.seconds * 1_000_000_000 + snap.update_time.nanos,
            last_seq=row.last_seq,
            snapshot=snap.SerializeToString(deterministic=True),
            journal=row.journal.SerializeToString(deterministic=True),
            log_last_seq=row.log.last_seq,
            log_stored_lines=row.log.stored_lines,
            log_stored_bytes=row.log.stored_bytes,
            log_truncated=row.log.truncated,
        )
    )


async def get_snapshot(conn: AsyncConnection, run_id: str) -> ledger_pb2.RunSnapshot | None:
    """Return a run's stored snapshot, or None for an unknown run."""
    data = (
        await conn.execute(select(runs.c.snapshot).where(runs.c.run_id == run_id))
    ).scalar_one_or_none()
    return None if data is None else ledger_pb2.RunSnapshot.FromString(data)


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs to list."""

    statuses: tuple[int, ...] = ()
    workflow_name: str = ""
    created_after: int | None = None
    created_before: int | None = None


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
    query = select(runs.c.create_time, runs.c.snapshot)
    conditions: list[ColumnElement[bool]] = []
    if flt.statuses:
        conditions.append(runs.c.status.in_(flt.statuses))
    if flt.workflow_name:
        conditions.append(runs.c.workflow_name == flt.workflow_name)
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
    rows = await conn.execute(query)
    return [(row.create_time, ledger_pb2.RunSnapshot.FromString(row.snapshot)) for row in rows]
