"""The store: group-committed writes and plain reads over one engine.

Writes are queued and a single writer task commits whatever is queued in one
transaction (group commit): many concurrent AppendEvents, StartRun or SignalRun
calls cost one fsync. Each request runs in its own savepoint, so a refused one
(an unknown run, a finished run) is rolled back alone and the rest commit. A
request's future is resolved only after the commit returns: nothing is
acknowledged before it is durable. If the commit itself fails, every request in
the group fails and none is acknowledged.

On Postgres every touched run is announced with ``NOTIFY ledgerflow_runs``
inside the transaction (delivered at commit), so other coordinator processes
can stream it; in-process subscribers get the committed snapshots through the
``on_commit`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
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
from ledgerflow.coordinator.store._engine import READ_ONLY
from ledgerflow.errors import LedgerflowError, RunNotFoundError
from ledgerflow.ledger import LogRetention
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb

_log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "ledgerflow_runs"
"""The Postgres channel that announces committed changes: payload ``"<last_seq> <run_id>"``."""

_Op = Callable[[AsyncConnection], Awaitable[ops.Outcome]]


class _RefusedError(Exception):
    """Rolls back a one-request transaction whose request was refused."""


@dataclass(slots=True)
class _Pending:
    op: _Op
    future: asyncio.Future[ops.Outcome]


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
        on_commit: Callable[[Sequence[ops.Touched]], None] | None = None,
    ) -> None:
        """Create the store; call :meth:`start` before writing.

        Args:
            engine: The database (migrated).
            retention: The per-run log retention cap.
            max_group: The most requests committed in one transaction.
            on_commit: Called after each commit with the runs it changed.
        """
        self.engine = engine
        self.retention = retention or LogRetention()
        self._max_group = max_group
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._postgres = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None

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
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- writes ------------------------------------------------------------

    async def _submit(self, op: _Op) -> ops.Outcome:
        if self._writer is None:
            raise RuntimeError("Store.start() was not called")
        future: asyncio.Future[ops.Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(op, future))
        # Shielded: a caller that goes away must not cancel a write already queued,
        # it just stops waiting for the acknowledgement.
        return await asyncio.shield(future)

    async def start_run(self, spec: ops.StartRunSpec) -> tuple[pb.RunSnapshot, bool]:
        """Create a run (or return the existing one for a retry); see :func:`ops.start_run`."""
        run_id = spec.run_id or ops.new_run_id()
        now = _now()
        outcome = await self._submit(
            lambda conn: ops.start_run(conn, spec, run_id=run_id, now=now, retention=self.retention)
        )
        return cast(tuple[pb.RunSnapshot, bool], outcome.value)

    async def append_events(
        self, events: Sequence[pb.LedgerEvent], *, request_id: str = ""
    ) -> ops.Outcome:
        """Append validated events atomically; see :func:`ops.append_events`."""
        return await self._submit(
            lambda conn: ops.append_events(
                conn, events, request_id=request_id, retention=self.retention
            )
        )

    async def report_status(self, patch: rpb.StatusPatch, *, request_id: str = "") -> ops.Outcome:
        """Derive events from a status patch and append them; see :func:`ops.report_status`."""
        now = _now()
        return await self._submit(
            lambda conn: ops.report_status(
                conn, patch, request_id=request_id, now=now, retention=self.retention
            )
        )

    async def cancel_run(self, run_id: str, *, reason: str, identity: str) -> tuple[int, bool]:
        """Record a cancellation request; return (its seq, whether one existed already)."""
        now = _now()
        outcome = await self._submit(
            lambda conn: ops.cancel_run(
                conn, run_id, reason=reason, identity=identity, now=now, retention=self.retention
            )
        )
        return cast(int, outcome.value), outcome.duplicate

    async def signal_run(
        self,
        run_id: str,
        *,
        name: str,
        payload: common_pb2.Payload | None,
        request_id: str,
        identity: str,
    ) -> tuple[int, bool]:
        """Append a signal to the run's inbox; return (its seq, whether it was a resend)."""
        now = _now()
        outcome = await self._submit(
            lambda conn: ops.signal_run(
                conn,
                run_id,
                name=name,
                payload=payload,
                request_id=request_id,
                identity=identity,
                now=now,
                retention=self.retention,
            )
        )
        return cast(int, outcome.value), outcome.duplicate

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
        # for every commit cost two round trips on the hot path.
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = await self.engine.connect()
        return self._conn

    async def _run_group(
        self, conn: AsyncConnection, group: list[_Pending]
    ) -> list[ops.Outcome | LedgerflowError]:
        results: list[ops.Outcome | LedgerflowError] = []
        try:
            async with conn.begin():
                if len(group) == 1:
                    # Alone in its transaction a request needs no savepoint: a refusal
                    # rolls back the whole (one-request) transaction.
                    try:
                        results.append(await group[0].op(conn))
                    except LedgerflowError as err:
                        results.append(err)
                        raise _RefusedError from err
                else:
                    for pending in group:
                        try:
                            async with conn.begin_nested():
                                results.append(await pending.op(conn))
                        except LedgerflowError as err:
                            results.append(err)
                if self._postgres:
                    await self._notify(conn, results)
        except _RefusedError:
            pass
        return results

    async def _commit(self, group: list[_Pending]) -> None:
        results: list[ops.Outcome | LedgerflowError] = []
        for attempt in range(3):
            try:
                conn = await self._writer_connection()
                results = await self._run_group(conn, group)
                break
            except DBAPIError as err:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.invalidate()
                    self._conn = None
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
        touched: list[ops.Touched] = []
        for pending, result in zip(group, results, strict=True):
            if isinstance(result, LedgerflowError):
                if not pending.future.done():
                    pending.future.set_exception(result)
            else:
                touched.extend(result.touched)
                if not pending.future.done():
                    pending.future.set_result(result)
        if touched and self._on_commit is not None:
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

    @staticmethod
    async def _notify(conn: AsyncConnection, results: list[ops.Outcome | LedgerflowError]) -> None:
        last: dict[str, int] = {}
        for result in results:
            if isinstance(result, ops.Outcome):
                for t in result.touched:
                    last[t.run_id] = max(last.get(t.run_id, 0), t.last_seq)
        for run_id, seq in last.items():
            await conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": f"{seq} {run_id}"},
            )

    # -- reads -------------------------------------------------------------

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
