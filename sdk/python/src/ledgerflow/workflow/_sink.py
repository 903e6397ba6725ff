"""Where the engine's events go: the ``EventSink`` protocol and a group-committing wrapper.

The engine performs no I/O. Everything it records about a run goes through one
:class:`EventSink` that the worker provides (over its gRPC stream, under the
task's lease). One sink, not a separate one for log lines, because replay relies
on its order: an event handed to the sink before another is committed no later
than it, so a step found in the journal proves every event the body emitted
before that step is committed too (see ``_execution``).

:class:`BatchingSink` is the engine's outbox. Appends issued while another append
is in flight, or in the same event-loop tick, leave in one ``append`` call (group
commit): ``asyncio.gather`` over several ``ctx.step`` calls becomes one batch of
``step_started`` events and, as the steps finish, as few batches of results as the
sink's latency allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from ledgerflow.v1 import ledger_pb2


class EventSink(Protocol):
    """What the engine needs from the worker: a durable, ordered append to the run's ledger."""

    async def append(self, events: Sequence[ledger_pb2.LedgerEvent]) -> None:
        """Durably append events to the run's ledger; return only once they are committed.

        Events are for the task's run, with ``seq`` 0 and ``source`` set. The
        sink must commit one call's events atomically (one ``EventBatch``, one
        transaction) and calls in the order they were made; the engine never
        issues a second call before the first returned.

        Args:
            events: The events, in order.

        Raises:
            Exception: Any exception when the events were refused or their fate is
                unknown (a stale lease, a lost connection). The engine stops the task
                and re-raises it from ``WorkflowExecution.run``.
        """
        ...


class _Batch:
    __slots__ = ("done", "events")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[ledger_pb2.LedgerEvent] = []
        self.done: asyncio.Future[None] = loop.create_future()


class BatchingSink:
    """An :class:`EventSink` that coalesces concurrent appends into one call of another sink.

    At most one call to the wrapped sink is in flight. Events appended while it
    is, or in the same loop tick as the first of them, leave together in the next
    call, in the order they were appended. After the wrapped sink raises once,
    every later append raises the same exception without calling it again: later
    events must never be committed after earlier ones were lost.
    """

    def __init__(self, sink: EventSink, *, linger: float = 0.0) -> None:
        """Wrap ``sink``.

        Args:
            sink: The sink that commits batches.
            linger: How long a batch holding only *posted* events (``step_started``,
                log lines, progress) waits for an ``append`` to join it before it
                leaves anyway. A quick step's start then travels with its result:
                one round trip instead of two. 0 sends at once.
        """
        self._sink = sink
        self._linger = linger
        self._urgent = asyncio.Event()
        self._open: _Batch | None = None
        self._last: _Batch | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @property
    def failure(self) -> BaseException | None:
        """The exception the wrapped sink raised, once it has; None while healthy."""
        return self._failure

    async def append(self, events: Sequence[ledger_pb2.LedgerEvent]) -> None:
        """Append events and wait until the batch carrying them is committed.

        Args:
            events: The events, in order.

        Raises:
            BaseException: What the wrapped sink raised for this batch or an earlier one.
        """
        if self._failure is not None:
            raise self._failure
        batch = self._enqueue(events)
        self._urgent.set()  # someone waits on this batch: no lingering
        # Shielded: a waiter that is cancelled must not cancel a batch others share.
        await asyncio.shield(batch.done)

    def post(self, events: Sequence[ledger_pb2.LedgerEvent]) -> None:
        """Append events without waiting; a failure surfaces at the next ``append`` or ``flush``.

        Once the sink has failed the events are dropped: the task is being abandoned.

        Args:
            events: The events, in order.
        """
        if self._failure is None and events:
            self._enqueue(events)

    async def flush(self) -> None:
        """Wait until every event appended or posted so far is committed.

        Raises:
            BaseException: What the wrapped sink raised, if it ever did.
        """
        last = self._last
        if last is not None and not last.done.done():
            self._urgent.set()
            await asyncio.shield(last.done)
        if self._failure is not None:
            raise self._failure

    def _enqueue(self, events: Sequence[ledger_pb2.LedgerEvent]) -> _Batch:
        batch = self._open
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._open = self._last = _Batch(loop)
            if self._flusher is None:
                self._flusher = loop.create_task(self._flush_loop())
        batch.events.extend(events)
        return batch

    async def _flush_loop(self) -> None:
        try:
            # One tick for appends issued in the same tick (gather) to join the first.
            await asyncio.sleep(0)
            while self._open is not None:
                if self._linger > 0 and not self._urgent.is_set():
                    # Only posted events so far: give the step a moment to finish.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), self._linger)
                self._urgent.clear()
                batch, self._open = self._open, None
                if self._failure is None:
                    try:
                        await self._sink.append(batch.events)
                    except asyncio.CancelledError:
                        self._failure = asyncio.CancelledError("the event sink was cancelled")
                        _fail(batch, self._failure)
                        raise
                    except BaseException as exc:
                        self._failure = exc
                    else:
                        batch.done.set_result(None)
                        continue
                _fail(batch, self._failure)
        finally:
            self._flusher = None
            if self._open is not None:
                # Only reachable when cancelled: nobody will send what is still queued.
                _fail(self._open, self._failure or asyncio.CancelledError())
                self._open = None


def _fail(batch: _Batch, exc: BaseException) -> None:
    if batch.done.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        batch.done.cancel()
        return
    batch.done.set_exception(exc)
    # Mark it retrieved: a posted batch may have no waiter, and the failure is
    # reported through ``failure`` and the next append instead.
    batch.done.exception()
