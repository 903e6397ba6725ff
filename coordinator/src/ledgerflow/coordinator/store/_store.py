"""The store: group-committed writes and plain reads over one engine.

Writes are queued and a single writer task commits whatever is queued in one
transaction (group commit): many concurrent AppendEvents, StartRun or SignalRun
calls cost one fsync **and the same few statements** as one call. For a group
the writer

1. locks every run the group names (one ``SELECT … FOR UPDATE`` in run-id order)
   and loads the rows it has no current copy of, with their log cursors — or,
   when it has a copy of every one and the group asks no lookups, reads nothing
   and goes ahead optimistically (see :meth:`Store._load`);
2. prefetches the request ids and idempotency keys the group asks about;
3. runs each request against that working set (:class:`ops.Batch`) in Python —
   a refused request is refused before it changes anything, so it leaves no
   trace and needs no savepoint;
4. writes the group's new runs, run rows, steps, events, log lines, cursors and
   request ids (on Postgres in one statement, NOTIFY included), and commits.
   A run row is written only if its stored ``last_seq`` is still the one the
   group started from; if not (or if an insert conflicts), another coordinator
   got there first: the transaction rolls back and the group is redone.

A request's future is resolved only after the commit returns: nothing is
acknowledged before it is durable. If the commit itself fails, every request in
the group fails and none is acknowledged.

**First try, then thorough.** What is almost always absent is not looked for on a
group's first try: a worker batch's request id (a resend is rare), a StartRun's
run and idempotency key (a new run is the rule), the lease of a task the writer
or a claim cached (a lease taken over elsewhere is rare). The write itself
catches the exception instead — a unique insert conflicts, the guarded task
check fails — and the group is redone with every lookup and lock (the same for
an operation that finds it needs locks it did not take, ``RedoLockingError``).
So a run's StartRun, its dispatch and its batches usually cost one statement
each; only results, cancellations, signals and heartbeats lock.

The writer keeps the rows it committed in a bounded cache: the next group that
touches a run finds its snapshot, journal and cursors already decoded. A cached
row is only ever written back if the stored ``last_seq`` still equals its own —
every write to a run bumps it, so a row another coordinator process changed is
reloaded. A group that fails drops its rows.

On Postgres every touched run is announced with ``NOTIFY ledgerflow_runs``
inside the transaction (delivered at commit), so other coordinator processes
can stream it; in-process subscribers get the committed snapshots through the
``on_commit`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledgerflow.coordinator.store import (
    _append as ops,
)
from ledgerflow.coordinator.store import (
    _sql_events as sql_events,
)
from ledgerflow.coordinator.store import (
    _sql_runs as sql_runs,
)
from ledgerflow.coordinator.store import _sql_tasks as sql_tasks
from ledgerflow.coordinator.store import _tasks as task_ops
from ledgerflow.coordinator.store._dialect import GUARD_FAILED, write_all
from ledgerflow.coordinator.store._engine import READ_ONLY
from ledgerflow.errors import FailedPreconditionError, LedgerflowError, RunNotFoundError
from ledgerflow.ledger import LogRetention
from ledgerflow.v1 import common_pb2, step_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

if TYPE_CHECKING:
    import asyncpg

_log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "ledgerflow_runs"
"""The Postgres channel that announces committed changes: payload ``"<last_seq> <run_id>"``."""


@dataclass(slots=True)
class Touched:
    """A run a commit changed, as handed to ``on_commit``.

    Attributes:
        run_id: The run.
        last_seq: Its last committed seq.
        snapshot: Its committed snapshot. The writer keeps changing this object
            after the callback returns: copy it to keep it.
    """

    run_id: str
    last_seq: int
    snapshot: pb.RunSnapshot


class _GuardFailedError(Exception):
    """A single-statement flush found a run row changed under it; nothing was written."""


class _LostRaceError(Exception):
    """Another coordinator wrote a row this group meant to create: redo the group."""


@dataclass(slots=True)
class _Pending:
    needs: ops.Needs
    op: ops.Op
    future: asyncio.Future[ops.Outcome]


def _unusable(conn: AsyncConnection | None, driver: asyncpg.Connection | None) -> bool:
    """Whether a kept connection must be replaced: gone, or closed by the server."""
    return (
        conn is None
        or conn.closed
        or conn.invalidated
        or (driver is not None and driver.is_closed())
    )


def _now() -> int:
    return time.time_ns()


class Store:
    """The coordinator's durable state: runs, their ledgers, snapshots and logs."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention: LogRetention | None = None,
        max_group: int = 512,
        cached_runs: int = 1024,
        on_commit: Callable[[Sequence[Touched]], None] | None = None,
        on_task_ready: Callable[[], None] | None = None,
    ) -> None:
        """Create the store; call :meth:`start` before writing.

        Args:
            engine: The database (migrated).
            retention: The per-run log retention cap.
            max_group: The most requests committed in one transaction.
            cached_runs: How many recently written runs the writer keeps decoded.
            on_commit: Called after each commit with the runs it changed.
            on_task_ready: Called after a commit that made a task pending (to dispatch it).
        """
        self.engine = engine
        self.retention = retention or LogRetention()
        self._max_group = max_group
        self._cached_runs = cached_runs
        self._on_commit = on_commit
        self.on_task_ready = on_task_ready
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._postgres = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None
        self._driver: asyncpg.Connection | None = None
        """The writer connection's asyncpg connection (Postgres)."""
        self._single = False
        """Whether the group being written is one autocommit statement."""
        # The dispatcher's own connection (Postgres): see _dispatching.
        self._dispatch_conn: AsyncConnection | None = None
        self._dispatch_lock = asyncio.Lock()
        self._dispatch_driver: asyncpg.Connection | None = None
        self._cache: OrderedDict[str, sql_runs.RunRow] = OrderedDict()
        # Task rows the writer committed, for fencing a worker's batch without a
        # lock (the flush re-checks them); claims and sweeps here drop their entries.
        self._task_cache: OrderedDict[str, sql_tasks.TaskRow] = OrderedDict()
        # Postgres's default, restored after a single-statement (autocommit) group.
        self._isolation = "READ COMMITTED"
        self.writer_pids: set[int] = set()
        """Postgres backend pids the writer committed from (its own NOTIFYs)."""

    async def start(self) -> None:
        """Start the writer task."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="ledgerflow-writer")

    async def close(self) -> None:
        """Finish every queued write, then stop the writer."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        for conn in (self._conn, self._dispatch_conn):
            if conn is not None:
                await conn.close()
        self._conn = self._dispatch_conn = None

    # -- writes ------------------------------------------------------------

    async def _submit(self, needs: ops.Needs, op: ops.Op) -> ops.Outcome:
        if self._writer is None:
            raise RuntimeError("Store.start() was not called")
        future: asyncio.Future[ops.Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(needs, op, future))
        # Shielded: a caller that goes away must not cancel a write already queued,
        # it just stops waiting for the acknowledgement.
        return await asyncio.shield(future)

    async def start_run(self, spec: ops.StartRunSpec) -> tuple[pb.RunSnapshot, bool]:
        """Create a run (or return the existing one for a retry); see :func:`ops.start_run`."""
        run_id = spec.run_id or ops.new_run_id()
        now = _now()
        keys = ((spec.namespace, spec.idempotency_key),) if spec.idempotency_key else ()
        outcome = await self._submit(
            ops.Needs(run_ids=(run_id,), idempotency_keys=keys, creates=True),
            lambda batch: ops.start_run(
                batch, spec, run_id=run_id, now=now, retention=self.retention
            ),
        )
        return cast(tuple[pb.RunSnapshot, bool], outcome.value)

    async def append_events(
        self,
        events: Sequence[pb.LedgerEvent],
        *,
        request_id: str = "",
        namespace: str | None = None,
    ) -> ops.Outcome:
        """Append validated events atomically; see :func:`ops.append_events`."""
        run_ids = tuple(dict.fromkeys(e.run_id for e in events))
        keys = tuple(
            (e.run_created.namespace or sql_runs.DEFAULT_NAMESPACE, e.run_created.idempotency_key)
            for e in events
            if e.HasField("run_created") and e.run_created.idempotency_key
        )
        return await self._submit(
            ops.Needs(
                run_ids=run_ids,
                request_ids=tuple((r, request_id) for r in run_ids) if request_id else (),
                idempotency_keys=keys,
            ),
            lambda batch: ops.append_events(
                batch, events, request_id=request_id, retention=self.retention, namespace=namespace
            ),
        )

    async def report_status(
        self, patch: rpb.StatusPatch, *, request_id: str = "", namespace: str | None = None
    ) -> ops.Outcome:
        """Derive events from a status patch and append them; see :func:`ops.report_status`."""
        now = _now()
        return await self._submit(
            ops.Needs(
                run_ids=(patch.run_id,),
                request_ids=((patch.run_id, request_id),) if request_id else (),
            ),
            lambda batch: ops.report_status(
                batch,
                patch,
                request_id=request_id,
                now=now,
                retention=self.retention,
                namespace=namespace,
            ),
        )

    async def cancel_run(
        self, run_id: str, *, reason: str, identity: str, namespace: str | None = None
    ) -> tuple[int, bool]:
        """Record a cancellation request; return (its seq, whether one existed already).

        With a ``namespace``, a run of another namespace is not found.
        """
        now = _now()
        outcome = await self._submit(
            ops.Needs(run_ids=(run_id,), tasks=True),
            lambda batch: ops.cancel_run(
                batch,
                run_id,
                reason=reason,
                identity=identity,
                now=now,
                retention=self.retention,
                namespace=namespace,
            ),
        )
        if not outcome.duplicate:
            await self._cancel_children(run_id)
        return cast(int, outcome.value), outcome.duplicate

    async def signal_run(
        self,
        run_id: str,
        *,
        name: str,
        payload: common_pb2.Payload | None,
        request_id: str,
        identity: str,
        namespace: str | None = None,
    ) -> tuple[int, bool]:
        """Append a signal to the run's inbox; return (its seq, whether it was a resend).

        With a ``namespace``, a run of another namespace is not found.
        """
        now = _now()
        key = ops.signal_key(request_id)
        outcome = await self._submit(
            # Tasks: a signal that resolves a wait wakes the run (its task).
            ops.Needs(run_ids=(run_id,), request_ids=((run_id, key),) if key else (), tasks=True),
            lambda batch: ops.signal_run(
                batch,
                run_id,
                name=name,
                payload=payload,
                request_id=request_id,
                identity=identity,
                now=now,
                retention=self.retention,
                namespace=namespace,
            ),
        )
        return cast(int, outcome.value), outcome.duplicate

    # -- tasks ---------------------------------------------------------------

    async def claim_tasks(
        self,
        *,
        queues: Sequence[str],
        limit: int,
        lease_nanos: int,
        worker_id: str,
        session_id: str,
        step_queues: Sequence[str] = (),
        namespace: str | None = None,
    ) -> list[sql_tasks.TaskRow]:
        """Lease up to ``limit`` available tasks (committed on return); see ``sql_tasks.claim``.

        The dispatch is not in the ledger yet: record it with :meth:`dispatch`. A
        coordinator dying in between leaves a lease that simply expires.
        """
        now = _now()
        async with self._dispatching() as conn:
            claimed = await sql_tasks.claim(
                conn,
                queues=queues,
                limit=limit,
                now=now,
                lease_nanos=lease_nanos,
                worker_id=worker_id,
                session_id=session_id,
                step_queues=step_queues,
                namespace=namespace,
                driver=self._dispatch_driver,
            )
        for task in claimed:
            # For the dispatch that follows: it fences on this row rather than lock it.
            self._task_cache[task.task_id] = dataclasses.replace(task)
        while len(self._task_cache) > self._cached_runs:
            self._task_cache.popitem(last=False)
        return claimed

    async def expire_leases(self) -> list[str]:
        """Make every task whose lease ended pending again; return their ids."""
        async with self._dispatching() as conn:
            expired = await sql_tasks.expire_leases(conn, _now())
        for task_id in expired:
            self._task_cache.pop(task_id, None)
        return expired

    async def next_task_wakeup(
        self, queues: Sequence[str], *, after: int | None = None
    ) -> sql_tasks.Wakeup:
        """Return when a task of ``queues`` next becomes available, and a lease next ends.

        See ``sql_tasks.next_wakeup`` for ``after``.
        """
        async with self._dispatching() as conn:
            return await sql_tasks.next_wakeup(
                conn, queues, after=after, driver=self._dispatch_driver
            )

    @contextlib.asynccontextmanager
    async def _dispatching(self) -> AsyncIterator[AsyncConnection]:
        """A connection for the dispatcher's claims, sweeps and wake-up queries.

        Each of them is one statement, atomic on its own. On Postgres the dispatcher
        keeps one connection in autocommit mode for them: a pooled connection cost a
        pre-ping (three round trips) and BEGIN/COMMIT around every statement, on the
        coordinator's one event loop, several times per dispatch round. A connection
        that fails is dropped; the next call opens another.
        """
        if not self._postgres:
            async with self.engine.begin() as pooled:
                yield pooled
            return
        async with self._dispatch_lock:
            conn = self._dispatch_conn
            if conn is None or _unusable(conn, self._dispatch_driver):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                conn = await self.engine.connect()
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                self._dispatch_conn = conn
                # Claims and wake-up queries go straight to asyncpg (see sql_tasks.claim).
                self._dispatch_driver = (await conn.get_raw_connection()).driver_connection
            try:
                async with conn.begin():  # no BEGIN is sent in autocommit mode
                    yield conn
            except DBAPIError:
                self._dispatch_conn = self._dispatch_driver = None
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                raise

    async def find_task(self, task_id: str) -> sql_tasks.TaskRow | None:
        """Return a task by id, as committed (for routing; decisions re-check under lock)."""
        async with self._read() as conn:
            return await sql_tasks.find_task(conn, task_id)

    async def dispatch(
        self, task: sql_tasks.TaskRow, runtime: pb.Runtime
    ) -> task_ops.Dispatched | None:
        """Record a claimed task's dispatch; return what to send (:func:`task_ops.dispatch`)."""
        now = _now()
        # The claim cached the task: a plain dispatch goes without locks (fenced). One
        # that will change tasks (see task_ops.dispatch) locks them from the start
        # rather than find out on a first try; the cached row is only a hint.
        cached = self._cache.get(task.run_id)
        plain = task.kind == sql_tasks.WORKFLOW_TASK and (
            cached is None or not cached.snapshot.open_waitpoints
        )
        needs = (
            ops.Needs(run_ids=(task.run_id,), fenced=(task.task_id,))
            if plain
            else ops.Needs(run_ids=(task.run_id,), tasks=True)
        )
        outcome = await self._submit(
            needs,
            lambda batch: task_ops.dispatch(
                batch, task.task_id, task.lease_epoch, runtime, now=now, retention=self.retention
            ),
        )
        return cast(task_ops.Dispatched | None, outcome.value)

    async def complete_step(self, run_id: str, result: step_pb2.StepResult) -> ops.Outcome:
        """Append a step task's result and wake its run; see :func:`task_ops.complete_step`."""
        now = _now()
        return await self._submit(
            ops.Needs(run_ids=(run_id,), tasks=True),
            lambda batch: task_ops.complete_step(batch, result, now=now, retention=self.retention),
        )

    async def append_task_events(
        self,
        run_id: str,
        task_id: str,
        epoch: int,
        batch_no: int,
        events: Sequence[pb.LedgerEvent],
    ) -> ops.Outcome:
        """Append a worker's event batch under its lease; see :func:`task_ops.append_batch`."""
        request_id = task_ops.batch_request_id(task_id, epoch, batch_no)
        return await self._submit(
            ops.Needs(
                run_ids=(run_id,),
                request_ids=((run_id, request_id),),
                fenced=(task_id,),
                resends_rare=True,
            ),
            lambda batch: task_ops.append_batch(
                batch, task_id, epoch, batch_no, events, retention=self.retention
            ),
        )

    async def complete_task(
        self, run_id: str, result: workflow_pb2.WorkflowTaskResult
    ) -> ops.Outcome:
        """Append a workflow result's facts and finish its task; see :func:`task_ops.complete`.

        The group also locks the run's parent (a child that ends resolves the parent's
        wait on it) and the children the result names (started, or waited on).
        """
        now = _now()
        related = [r.name for r in result.waitpoints if r.kind == pb.WAITPOINT_KIND_CHILD_RUN]
        parent = await self._parent_of(run_id)
        if parent is not None:
            related.append(parent)
        outcome = await self._submit(
            ops.Needs(run_ids=tuple(dict.fromkeys((run_id, *related))), tasks=True),
            lambda batch: task_ops.complete(batch, result, now=now, retention=self.retention),
        )
        if result.outcome == workflow_pb2.WORKFLOW_OUTCOME_CANCELLED and not outcome.duplicate:
            # Also done by cancel_run; again here in case a crash came in between.
            await self._cancel_children(run_id)
        return outcome

    async def _parent_of(self, run_id: str) -> str | None:
        # A run's parent never changes, so it may be read outside the group.
        cached = self._cache.get(run_id)
        if cached is not None:
            return cached.snapshot.parent_run_id or None
        async with self._read() as conn:
            return await sql_runs.parent_of(conn, run_id)

    async def _cancel_children(self, run_id: str) -> None:
        """Cancel the run's children that have not ended (each then compensates)."""
        async with self._read() as conn:
            children = await sql_runs.open_children(conn, run_id)
        for child in children:
            with contextlib.suppress(FailedPreconditionError, RunNotFoundError):
                await self.cancel_run(
                    child, reason=f"its parent run {run_id} was cancelled", identity="ledgerflow"
                )

    async def release_task(
        self, run_id: str, task_id: str, epoch: int, *, failed: bool = False
    ) -> None:
        """Give a task back to the queue; see :func:`task_ops.release`."""
        now = _now()
        await self._submit(
            ops.Needs(run_ids=(run_id,), tasks=True),
            lambda batch: task_ops.release(batch, task_id, epoch, now=now, failed=failed),
        )

    async def heartbeat(
        self,
        held: Sequence[tuple[str, str, int]],
        *,
        lease_nanos: int,
        session_id: str,
        worker_id: str,
    ) -> list[task_ops.LeaseState]:
        """Extend the leases of ``held`` (run id, task id, epoch): :func:`task_ops.heartbeat`."""
        now = _now()
        outcome = await self._submit(
            ops.Needs(run_ids=tuple(dict.fromkeys(r for r, _, _ in held)), tasks=True),
            lambda batch: task_ops.heartbeat(
                batch,
                [(t, e) for _, t, e in held],
                now=now,
                lease_nanos=lease_nanos,
                session_id=session_id,
                worker_id=worker_id,
            ),
        )
        return cast(list[task_ops.LeaseState], outcome.value)

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            await self._commit(group)
            if stop:
                return

    async def _writer_connection(self) -> AsyncConnection:
        # The writer keeps one connection: checking one out of the pool (and pinging it)
        # for every commit cost two round trips on the hot path. asyncpg notices a
        # connection the server closed (a restart) without a round trip: replace it
        # before a group fails on it.
        if self._conn is not None and not _unusable(self._conn, self._driver):
            return self._conn
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.invalidate()
        self._conn = conn = await self.engine.connect()
        self._driver = None
        if self._postgres:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            await conn.rollback()
            self.writer_pids.add(int(pid))
            # The write statement goes to asyncpg directly (see _dialect.write_all).
            self._driver = (await conn.get_raw_connection()).driver_connection
        return conn

    def _group_needs(self, group: list[_Pending], first_try: bool) -> ops.Needs:
        """What a group needs loaded: the union of its requests' needs.

        On a first try, request ids whose resends are rare are not looked up, and a
        batch's fenced task comes from the cache when cached: a resend then fails the
        insert of its request id, and a moved lease the check of the task row, and the
        group is tried again with every lookup and lock (``first_try`` False).
        """
        lookups = dict.fromkeys(
            k
            for p in group
            if not (first_try and p.needs.resends_rare)
            for k in p.needs.request_ids
        )
        # Runs whose tasks are locked and loaded: those of requests that change tasks,
        # and of fenced batches whose task is not cached (or on a retry).
        task_runs = dict.fromkeys(r for p in group if p.needs.tasks for r in p.needs.run_ids)
        # Runs a StartRun creates are not read on a first try (see Needs.creates).
        assumed_new = dict.fromkeys(
            r for p in group if first_try and p.needs.creates for r in p.needs.run_ids
        )
        for p in group:
            if p.needs.fenced and not (
                first_try
                and all(t in self._task_cache for t in p.needs.fenced)
                and not any(r in task_runs for r in p.needs.run_ids)
            ):
                task_runs.update(dict.fromkeys(p.needs.run_ids))
        return ops.Needs(
            run_ids=tuple(dict.fromkeys(r for p in group for r in p.needs.run_ids)),
            request_ids=tuple(lookups),
            idempotency_keys=tuple(
                dict.fromkeys(
                    k
                    for p in group
                    if not (first_try and p.needs.creates)
                    for k in p.needs.idempotency_keys
                )
            ),
            tasks=bool(task_runs),
            assumed_new=tuple(assumed_new),
            task_runs=tuple(task_runs),
            fenced=tuple(dict.fromkeys(t for p in group for t in p.needs.fenced)),
        )

    def _optimistic(self, needs: ops.Needs) -> bool:
        """Whether a group can go ahead without reading: every run cached, no lookups."""
        return (
            not needs.request_ids
            and not needs.idempotency_keys
            and not needs.tasks
            and all(r in self._cache or r in needs.assumed_new for r in needs.run_ids)
        )

    async def _load(self, conn: AsyncConnection, needs: ops.Needs, optimistic: bool) -> ops.Batch:
        """Load what the group needs; cached rows leave the cache while in use.

        When every run the group names is cached and it asks no lookups, nothing is
        read: the rows are used optimistically, and the flush writes a run only if
        its stored ``last_seq`` is still the cached one (else the group is redone,
        locking). Otherwise the group's runs are locked first and only the rows
        whose ``last_seq`` moved are loaded. Fenced tasks not locked here come from
        the cache either way; the flush checks their rows.
        """
        cache = self._cache
        fenced = {t: self._task_cache.pop(t, None) for t in needs.fenced}
        if optimistic:
            # Decided before this method's caller awaited: a run the listener dropped
            # from the cache meanwhile is read as any other (the next try locks).
            if any(r not in cache and r not in needs.assumed_new for r in needs.run_ids):
                raise ops.RedoLockingError
            rows = {run_id: cache.pop(run_id) for run_id in needs.run_ids if run_id in cache}
            tasks = {t: task for t, task in fenced.items() if task is not None}
            if len(tasks) != len(fenced):
                raise ops.RedoLockingError  # a sweep took a cached task meanwhile
            return ops.Batch(conn, rows, {}, {}, tasks)
        seqs = await sql_runs.lock_runs(conn, needs.run_ids)
        rows = {}
        misses: list[str] = []
        for run_id, seq in seqs.items():
            cached = cache.pop(run_id, None)
            if cached is not None and cached.last_seq == seq:
                rows[run_id] = cached
            else:
                misses.append(run_id)
        if misses:
            loaded = await sql_runs.load_runs(conn, misses)
            cursors = await sql_events.load_cursors(conn, misses)
            for run_id, row in loaded.items():
                row.log.cursors = cursors.get(run_id, {})
            rows.update(loaded)
        requests = await sql_events.find_requests(conn, needs.request_ids)
        keys = await sql_runs.run_ids_for_keys(conn, needs.idempotency_keys)
        tasks = await sql_tasks.lock_tasks(conn, needs.task_runs)
        for task_id in tasks:
            self._task_cache.pop(task_id, None)
        for task_id, cached_task in fenced.items():
            if task_id in tasks:
                continue
            if cached_task is None:
                raise ops.RedoLockingError  # a sweep took it from the cache meanwhile
            tasks[task_id] = cached_task  # checked by the flush (check_leases)
        batch = ops.Batch(conn, rows, requests, keys, tasks)
        batch.task_runs = frozenset(needs.task_runs)
        return batch

    async def _flush(self, conn: AsyncConnection, batch: ops.Batch) -> None:
        """Write everything the group changed (on Postgres, in one statement)."""
        new = [(batch.rows[run_id], created) for run_id, created in batch.new_runs.items()]
        notify = None
        if self._postgres:
            payloads = [f"{batch.rows[r].last_seq} {r}" for r in batch.dirty]
            notify = (NOTIFY_CHANNEL, payloads)
        existing = [batch.rows[r] for r in batch.dirty if r not in batch.new_runs]
        checked = {t: seen for t, seen in batch.checked_tasks.items() if t not in batch.dirty_tasks}
        try:
            inserted, saved, fenced, *_ = await self._write(
                conn, batch, new, existing, checked, notify
            )
        except DBAPIError as err:
            if getattr(err.orig, "sqlstate", None) == GUARD_FAILED:
                raise _GuardFailedError from err
            raise
        if len(inserted) != len(new) or len(saved) != len(existing) or len(fenced) != len(checked):
            raise _LostRaceError

    async def _write(
        self,
        conn: AsyncConnection,
        batch: ops.Batch,
        new: list[tuple[sql_runs.RunRow, int]],
        existing: list[sql_runs.RunRow],
        checked: dict[str, tuple[int, int]],
        notify: tuple[str, list[str]] | None,
    ) -> list[list[object]]:
        return await write_all(
            conn,
            [
                sql_runs.insert_runs(new),
                sql_runs.save_runs(existing, batch.loaded_seqs),
                sql_tasks.check_leases(checked),
                sql_runs.save_steps([sql_runs.step_row(batch.rows[r], s) for r, s in batch.steps]),
                sql_events.insert_events(batch.events),
                sql_events.insert_log_lines(batch.lines),
                sql_events.save_cursors(batch.cursors),
                sql_events.record_requests(batch.recorded),
                sql_tasks.save_tasks([batch.tasks[t] for t in batch.dirty_tasks]),
            ],
            notify=notify,
            # Straight to asyncpg when the statement may run as it is: on its own (an
            # autocommit group), or inside the transaction the group's reads began.
            driver=self._driver
            if self._driver is not None and (self._single or self._driver.is_in_transaction())
            else None,
        )

    async def _run_group(
        self, conn: AsyncConnection, group: list[_Pending], *, first_try: bool
    ) -> tuple[list[ops.Outcome | LedgerflowError], ops.Batch]:
        needs = self._group_needs(group, first_try)
        results: list[ops.Outcome | LedgerflowError] = []
        # A group that reads nothing writes with one statement on Postgres, and one
        # statement is a transaction of its own: skipping BEGIN and COMMIT saves two
        # of its three round trips. Its guard (every run row still at the seq it was
        # cached at) fails the statement as a whole, so nothing half-written commits.
        single = self._single = self._optimistic(needs)
        if self._postgres:
            await conn.execution_options(
                isolation_level="AUTOCOMMIT" if single else self._isolation
            )
        async with conn.begin():
            batch = await self._load(conn, needs, single)
            for pending in group:
                before = batch.changes()
                try:
                    results.append(await pending.op(batch))
                except LedgerflowError as err:
                    if batch.changes() != before:
                        # A refusal must come before any change (see ops); one that did
                        # not would leave half a request behind, so nothing commits.
                        raise RuntimeError("a refused request changed the batch") from err
                    results.append(err)
            await self._flush(conn, batch)
        return results, batch

    async def _commit(self, group: list[_Pending]) -> None:
        results: list[ops.Outcome | LedgerflowError] = []
        batch: ops.Batch | None = None
        for attempt in range(3):
            try:
                conn = await self._writer_connection()
                results, batch = await self._run_group(conn, group, first_try=attempt == 0)
                break
            except (_LostRaceError, IntegrityError, _GuardFailedError, ops.RedoLockingError):
                # Another coordinator created a run (or appended to one) this group
                # meant to write; its rows are committed now (the conflict waited for
                # them), so the next attempt locks and loads them like any other.
                if attempt < 2:
                    continue
                self._fail(group, RuntimeError("run creation kept conflicting"))
                return
            except DBAPIError as err:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.invalidate()
                    self._conn = self._driver = None
                # A serialization failure or deadlock is retried as a whole; anything else
                # (the database is down) fails the group: nothing was acknowledged.
                retriable = getattr(err.orig, "sqlstate", None) in ("40001", "40P01")
                if retriable and attempt < 2:
                    continue
                _log.warning("commit failed: %s", err.__class__.__name__)
                self._fail(group, err)
                return
            except Exception as err:
                _log.exception("commit failed")
                self._fail(group, err)
                return
        assert batch is not None
        for run_id, row in batch.rows.items():
            self._cache[run_id] = row
        while len(self._cache) > self._cached_runs:
            self._cache.popitem(last=False)
        for task_id, task in batch.tasks.items():
            if task.status == sql_tasks.LEASED:
                self._task_cache[task_id] = task
        while len(self._task_cache) > self._cached_runs:
            self._task_cache.popitem(last=False)
        for pending, result in zip(group, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, LedgerflowError):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if self.on_task_ready is not None and any(
            batch.tasks[t].status == sql_tasks.PENDING for t in batch.dirty_tasks
        ):
            self.on_task_ready()
        if batch.dirty and self._on_commit is not None:
            touched = [
                Touched(r, batch.rows[r].last_seq, batch.rows[r].snapshot) for r in batch.dirty
            ]
            try:
                self._on_commit(touched)
            except Exception:
                # Fan-out is best effort; the writes are committed and acknowledged, and a
                # dead writer task would hang every later request.
                _log.exception("on_commit callback failed")

    @staticmethod
    def _fail(group: list[_Pending], err: BaseException) -> None:
        for pending in group:
            if not pending.future.done():
                pending.future.set_exception(err)

    # -- reads -------------------------------------------------------------

    def peek_run(self, run_id: str) -> pb.RunSnapshot | None:
        """Return a copy of the run's snapshot as this process last committed it, if cached.

        No database read. The cache holds only committed states; it is current unless
        another coordinator changed the run since and the NOTIFY saying so has not
        arrived yet (its arrival drops the row: :meth:`forget`). So it suits a stream
        that subscribed to the run's changes first (WatchRun: that NOTIFY then reaches
        the stream), not a one-off read (GetRun).
        """
        row = self._cache.get(run_id)
        if row is None:
            return None
        snapshot = pb.RunSnapshot()
        snapshot.CopyFrom(row.snapshot)
        return snapshot

    def forget(self, run_id: str | None = None) -> None:
        """Drop a cached run (another process changed it), or every one (None)."""
        if run_id is None:
            self._cache.clear()
        else:
            self._cache.pop(run_id, None)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        # Read-only: on SQLite a DEFERRED transaction reads a WAL snapshot without
        # queueing behind the writer's BEGIN IMMEDIATE.
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            yield conn

    async def get_run(self, run_id: str) -> pb.RunSnapshot:
        """Return a run's snapshot.

        Raises:
            RunNotFoundError: No such run.
        """
        async with self._read() as conn:
            snap = await sql_runs.get_snapshot(conn, run_id)
        if snap is None:
            raise RunNotFoundError(f"run {run_id!r} not found")
        return snap

    async def find_run(self, run_id: str) -> pb.RunSnapshot | None:
        """Return a run's snapshot, or None for an unknown run."""
        async with self._read() as conn:
            return await sql_runs.get_snapshot(conn, run_id)

    async def list_runs(
        self,
        flt: sql_runs.RunFilter,
        limit: int,
        after: sql_runs.PagePosition | None,
    ) -> list[tuple[int, pb.RunSnapshot]]:
        """Return a page of (create_time, snapshot), newest first."""
        async with self._read() as conn:
            return await sql_runs.list_snapshots(conn, flt, limit, after)

    async def get_events(
        self, run_id: str, after_seq: int, limit: int
    ) -> tuple[list[pb.LedgerEvent], bool]:
        """Return (events with seq > after_seq, whether more follow).

        Raises:
            RunNotFoundError: No such run.
        """
        async with self._read() as conn:
            if await sql_runs.get_snapshot(conn, run_id) is None:
                raise RunNotFoundError(f"run {run_id!r} not found")
            page = await sql_events.page_events(conn, run_id, after_seq, limit + 1)
        return page[:limit], len(page) > limit

    async def get_log_lines(self, run_id: str, from_seq: int, limit: int) -> list[pb.LogLine]:
        """Return up to ``limit`` stored log lines with seq >= from_seq."""
        async with self._read() as conn:
            return await sql_events.page_log_lines(conn, run_id, from_seq, limit)
