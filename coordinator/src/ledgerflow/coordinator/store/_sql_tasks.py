"""Named queries and group-commit writes on the ``tasks`` aggregate: the dispatch queue.

Invariants (see ``_schema.tasks``): a run has at most one workflow task that is
not done; ``lease_epoch`` grows by one at every dispatch; a task row is read for
a decision (fencing, completion) only under its row lock, in the transaction
that acts on the decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.coordinator.store._dialect import Write, fetch_raw
from ledgerflow.coordinator.store._schema import runs, tasks

if TYPE_CHECKING:
    import asyncpg

WORKFLOW_TASK = 1
"""TaskKind: runs a workflow body."""
STEP_TASK = 2
"""TaskKind: runs one step on a worker of a step kind."""

PENDING = 1
"""TaskStatus: waiting to be dispatched from ``available_time``."""
LEASED = 2
"""TaskStatus: a worker holds it until ``lease_expire_time``."""
DONE = 3
"""TaskStatus: finished; kept as the record of its last epoch."""


@dataclass(slots=True)
class TaskRow:
    """A task's row, as the transaction that locked it holds it."""

    run_id: str
    task_id: str
    kind: int
    queue: str
    status: int
    lease_epoch: int
    available_time: int
    lease_expire_time: int | None
    worker_id: str | None
    session_id: str | None
    invocation: int
    create_time: int
    step_id: str | None = None
    step_request: bytes | None = None


_COLUMNS = tuple(f.name for f in fields(TaskRow))


def new_workflow_task(run_id: str, queue: str, now: int) -> TaskRow:
    """Return a new pending workflow task for a run, available at ``now``."""
    return TaskRow(
        run_id=run_id,
        task_id=str(uuid.uuid4()),
        kind=WORKFLOW_TASK,
        queue=queue,
        status=PENDING,
        lease_epoch=0,
        available_time=now,
        lease_expire_time=None,
        worker_id=None,
        session_id=None,
        invocation=0,
        create_time=now,
    )


def new_step_task(run_id: str, step_id: str, worker_kind: str, request: bytes, now: int) -> TaskRow:
    """Return a new pending step task running ``step_id`` on a worker of ``worker_kind``."""
    task = new_workflow_task(run_id, worker_kind, now)
    task.kind = STEP_TASK
    task.step_id = step_id
    task.step_request = request
    return task


def _decode(row: Any) -> TaskRow:
    return TaskRow(**{name: row._mapping[name] for name in _COLUMNS})


async def lock_tasks(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, TaskRow]:
    """Lock and load every task of ``run_ids``, by task id (in key order: no deadlocks)."""
    if not run_ids:
        return {}
    rows = await conn.execute(
        select(tasks)
        .where(tasks.c.run_id.in_(set(run_ids)))
        .order_by(tasks.c.run_id, tasks.c.task_id)
        .with_for_update()
    )
    return {row.task_id: _decode(row) for row in rows}


def save_tasks(rows: Sequence[TaskRow]) -> Write:
    """Insert new tasks and overwrite changed ones (an upsert on the key)."""
    return Write(
        tasks,
        {name: [getattr(row, name) for row in rows] for name in _COLUMNS},
        update=tuple(n for n in _COLUMNS if n not in ("run_id", "task_id")),
    )


def check_leases(checked: dict[str, tuple[int, int]]) -> Write:
    """Fence on tasks a group relied on: fail the write unless each is still as seen.

    Sets each row to what it already is; the point is the match (task id, epoch,
    status) and the all-or-nothing guard. Tasks the group changes are excluded by
    the caller (one statement must not update a row twice).
    """
    return Write(
        tasks,
        {
            "task_id": list(checked),
            "lease_epoch": [epoch for epoch, _ in checked.values()],
            "status": [status for _, status in checked.values()],
            "expected_epoch": [epoch for epoch, _ in checked.values()],
            "expected_status": [status for _, status in checked.values()],
        },
        returning="task_id",
        match=(
            ("task_id", "task_id"),
            ("lease_epoch", "expected_epoch"),
            ("status", "expected_status"),
        ),
        all_or_nothing=True,
    )


async def claim(
    conn: AsyncConnection,
    *,
    queues: Sequence[str],
    limit: int,
    now: int,
    lease_nanos: int,
    worker_id: str,
    session_id: str,
    step_queues: Sequence[str] = (),
    namespace: str | None = None,
    driver: asyncpg.Connection | None = None,
) -> list[TaskRow]:
    """Lease up to ``limit`` available pending tasks, oldest first.

    Workflow tasks of the workflows in ``queues``, step tasks of the worker kinds in
    ``step_queues`` (queues of the two kinds never match each other); with a
    ``namespace``, only tasks of runs in it.

    Each claimed task's epoch and invocation grow by one. On Postgres, ``FOR
    UPDATE SKIP LOCKED`` lets coordinators claim concurrently without waiting on
    each other or taking the same task; SQLite has one writer at a time anyway.
    With ``driver`` (Postgres, autocommit), the statement goes straight to asyncpg.
    """
    if not (queues or step_queues) or limit <= 0:
        return []
    if driver is not None:
        args = (now, lease_nanos, worker_id, session_id, list(queues), list(step_queues))
        raw = await fetch_raw(driver, _CLAIM_PG, (*args, namespace, limit))
        leased = (TaskRow(**dict(row.items())) for row in raw)
        return sorted(leased, key=lambda t: (t.available_time, t.task_id))
    wanted = []
    if queues:
        wanted.append(and_(tasks.c.kind == WORKFLOW_TASK, tasks.c.queue.in_(set(queues))))
    if step_queues:
        wanted.append(and_(tasks.c.kind == STEP_TASK, tasks.c.queue.in_(set(step_queues))))
    conditions = [tasks.c.status == PENDING, or_(*wanted), tasks.c.available_time <= now]
    if namespace is not None:
        conditions.append(
            tasks.c.run_id.in_(select(runs.c.run_id).where(runs.c.namespace == namespace))
        )
    candidates = (
        select(tasks.c.task_id).where(*conditions).order_by(tasks.c.available_time).limit(limit)
    )
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    # A CTE, not ``IN (subquery)``: Postgres may run a locking subquery with a LIMIT
    # once per row it updates, so ``IN`` claimed every pending task, whatever the
    # limit. A CTE runs once.
    picked = candidates.cte("picked")
    rows = await conn.execute(
        update(tasks)
        .where(tasks.c.task_id.in_(select(picked.c.task_id)), tasks.c.status == PENDING)
        .values(
            status=LEASED,
            lease_epoch=tasks.c.lease_epoch + 1,
            invocation=tasks.c.invocation + 1,
            lease_expire_time=now + lease_nanos,
            worker_id=worker_id,
            session_id=session_id,
        )
        .returning(*tasks.c)
    )
    return sorted((_decode(row) for row in rows), key=lambda t: (t.available_time, t.task_id))


# -- the dispatcher's statements on Postgres, straight to asyncpg -----------------------
# The same statements as ``claim`` and ``next_wakeup``, written out for Postgres: the
# dispatcher runs them a few times per dispatch round on its own connection, and
# SQLAlchemy built, compiled and ran them for more CPU than Postgres spent on them.

_CLAIM_PG = f"""
WITH picked AS (
    SELECT task_id FROM tasks
    WHERE status = {PENDING} AND available_time <= $1::bigint
      AND ((kind = {WORKFLOW_TASK} AND queue = ANY($5::text[]))
           OR (kind = {STEP_TASK} AND queue = ANY($6::text[])))
      AND ($7::text IS NULL OR run_id IN (SELECT run_id FROM runs WHERE namespace = $7::text))
    ORDER BY available_time
    LIMIT $8
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks SET status = {LEASED}, lease_epoch = lease_epoch + 1,
    invocation = invocation + 1, lease_expire_time = $1::bigint + $2::bigint,
    worker_id = $3, session_id = $4
FROM picked
WHERE tasks.task_id = picked.task_id AND tasks.status = {PENDING}
RETURNING {", ".join(f"tasks.{c}" for c in _COLUMNS)}
"""


_NEXT_WAKEUP_PG = f"""
SELECT
    (SELECT available_time FROM tasks
     WHERE status = {PENDING} AND queue = ANY($1::text[])
       AND ($2::bigint IS NULL OR available_time > $2::bigint)
     ORDER BY available_time LIMIT 1),
    (SELECT lease_expire_time FROM tasks
     WHERE status = {LEASED} ORDER BY lease_expire_time LIMIT 1)
"""


async def expire_leases(conn: AsyncConnection, now: int) -> list[str]:
    """Turn every lease that ended before ``now`` back into a pending task; return their ids."""
    expired = select(tasks.c.task_id).where(
        tasks.c.status == LEASED, tasks.c.lease_expire_time < now
    )
    if conn.dialect.name == "postgresql":
        # Skip rows a writer holds: it is acting on that task right now (a result, a
        # heartbeat); the next sweep looks again. Waiting could deadlock with it.
        expired = expired.with_for_update(skip_locked=True)
    rows = await conn.execute(
        update(tasks)
        .where(tasks.c.task_id.in_(expired.scalar_subquery()), tasks.c.status == LEASED)
        .values(
            status=PENDING,
            available_time=now,
            lease_expire_time=None,
            worker_id=None,
            session_id=None,
        )
        .returning(tasks.c.task_id)
    )
    return list(rows.scalars().all())


@dataclass(frozen=True, slots=True)
class Wakeup:
    """When the dispatcher next has something to do (nanoseconds since the epoch).

    Attributes:
        available: When a pending task next becomes available; None if none will.
        lease_end: When the earliest live lease ends; None if no task is leased.
    """

    available: int | None
    lease_end: int | None

    @property
    def earliest(self) -> int | None:
        """The earlier of the two; None when neither is due."""
        found = [t for t in (self.available, self.lease_end) if t is not None]
        return min(found) if found else None


async def next_wakeup(
    conn: AsyncConnection,
    queues: Sequence[str],
    *,
    after: int | None = None,
    driver: asyncpg.Connection | None = None,
) -> Wakeup:
    """Return the earliest time a task of ``queues`` becomes available, and a lease ends.

    With ``after``, only tasks that become available after it count: the dispatcher
    passes the time its claims ran, since a task available then and still pending
    has no free taker, and it is woken when capacity frees rather than spinning.
    Leases count whatever their queue (any coordinator may sweep any lease). One
    statement: both are scalar subqueries. With ``driver`` (Postgres), straight to asyncpg.
    """
    if driver is not None:
        ((soonest, lease_end),) = await fetch_raw(driver, _NEXT_WAKEUP_PG, (list(queues), after))
        return Wakeup(soonest, lease_end)
    available = None
    if queues:
        pending = [tasks.c.status == PENDING, tasks.c.queue.in_(set(queues))]
        if after is not None:
            pending.append(tasks.c.available_time > after)
        available = (
            select(tasks.c.available_time)
            .where(*pending)
            .order_by(tasks.c.available_time)
            .limit(1)
            .scalar_subquery()
        )
    lease_end = (
        select(tasks.c.lease_expire_time)
        .where(tasks.c.status == LEASED)
        .order_by(tasks.c.lease_expire_time)
        .limit(1)
        .scalar_subquery()
    )
    row = (
        await conn.execute(select(available if available is not None else null(), lease_end))
    ).one()
    return Wakeup(None if row[0] is None else int(row[0]), None if row[1] is None else int(row[1]))


async def find_task(conn: AsyncConnection, task_id: str) -> TaskRow | None:
    """Return a task by id (no lock: for routing, never for a decision)."""
    row = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).first()
    return None if row is None else _decode(row)
