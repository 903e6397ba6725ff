"""Step tasks on a Python worker: one handler call per ``StepRequest``.

A workflow body anywhere can run a step here with ``ctx.step(name, input,
worker_kind=KIND)`` once a worker serves ``KIND`` (``Worker(steps={KIND: handler})``).
The coordinator has already recorded ``step_started``; this module runs the
handler and reports what it emits (log lines on the channel
``step:<step_id>:<attempt>``, with positional offsets so a resend after a reconnect
is ingested once; progress) as event batches of the task, then builds the
``StepResult``. See ``docs/worker-protocol.md`` (Step tasks).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ledgerflow.ledger import build_log_events
from ledgerflow.ledger._logs import without_nul
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import step_pb2
from ledgerflow.workflow import BatchingSink, EventSink, _events
from ledgerflow.workflow._convert import decode, encode
from ledgerflow.workflow._errorinfo import error_info

StepHandler = Callable[[Any, "StepContext"], Any]
"""``handler(input, ctx) -> output``: sync (run in a thread) or async."""


class NeedsHuman(Exception):  # noqa: N818 (an outcome, not an error)
    """Raise from a step handler when a person must decide: the step comes back BLOCKED.

    The run keeps waiting, on a human waitpoint named after the step, until someone
    sends the signal of that name (``ledgerflow run signal RUN STEP --payload JSON``);
    its payload becomes the step's output.

    Args:
        summary: What the person has to decide (shown in the run's snapshot).
    """

    def __init__(self, summary: str) -> None:
        """Create the outcome."""
        super().__init__(summary)
        self.summary = summary


class StepTimeoutError(TimeoutError):
    """The handler ran past the step's start-to-close timeout (code ``STEP_TIMEOUT``)."""


class StepCancelledError(Exception):
    """The run was cancelled while its step ran here (the step fails with this type)."""


class StepLog:
    """``ctx.log`` of a step: lines on the step's own channel, in order."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    def info(self, message: str, *args: object) -> None:
        """Log at info level (``%`` formatting, as ``logging`` does)."""
        self._ctx._log("info", message % args if args else message)

    def warn(self, message: str, *args: object) -> None:
        """Log at warn level."""
        self._ctx._log("warn", message % args if args else message)

    def error(self, message: str, *args: object) -> None:
        """Log at error level."""
        self._ctx._log("error", message % args if args else message)


class StepContext:
    """What a step handler gets besides its input: identity, logs, progress, cancellation.

    Attributes:
        run_id: The run the step belongs to.
        step_id: The step's id in the run.
        attempt: The attempt, from 1 (a step re-dispatched after a worker died is 2).
        log: Log lines, stored with the run on the step's channel.
    """

    def __init__(
        self,
        request: step_pb2.StepRequest,
        outbox: BatchingSink,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Create the context of one dispatch of a step."""
        self.run_id = request.run_id
        self.step_id = request.step_id
        self.attempt = request.attempt
        self.log = StepLog(self)
        self._outbox = outbox
        self._loop = loop
        self._thread = threading.get_ident()
        self._channel = f"step:{request.step_id}:{request.attempt}"
        self._lines = 0
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled; a long handler should check and stop."""
        return self._cancelled.is_set()

    def progress(
        self,
        completed: int | None = None,
        total: int | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress (fields merge: give only what changed)."""
        event = _events.step_progress(
            self.run_id,
            time.time_ns(),
            step_id=self.step_id,
            completed=completed,
            total=total,
            failed=None,
            message=message,
        )
        self._post([event])

    def _log(self, level: str, message: str) -> None:
        lines = without_nul([f"[{level}] {line}" for line in (message.splitlines() or [""])])
        with self._lock:  # offsets follow the order lines are posted in
            offset = self._lines
            self._lines += len(lines)
            events = build_log_events(
                self.run_id,
                lines,
                event_time_nanos=time.time_ns(),
                channel=self._channel,
                channel_offset=offset,
            )
            self._post(events)

    def _post(self, events: list[pb.LedgerEvent]) -> None:
        if threading.get_ident() == self._thread:
            self._outbox.post(events)
        else:
            self._loop.call_soon_threadsafe(self._outbox.post, events)


async def run_step(
    request: step_pb2.StepRequest,
    handler: StepHandler,
    sink: EventSink,
    cancelled: asyncio.Event,
) -> step_pb2.StepResult:
    """Run ``handler`` for ``request``; return its result once every event it emitted is acked.

    Raises:
        Exception: What ``sink`` raised (a refused batch, a lost lease): the task is over.
    """
    loop = asyncio.get_running_loop()
    outbox = BatchingSink(sink)
    ctx = StepContext(request, outbox, loop)
    result = step_pb2.StepResult(
        task_id=request.task_id,
        lease_epoch=request.lease_epoch,
        run_id=request.run_id,
        step_id=request.step_id,
        attempt=request.attempt,
        worker_kind=request.worker_kind,
    )
    set_nanos(result.start_time, time.time_ns())
    try:
        value = decode(request.input if request.HasField("input") else None, None)
        call = _call(handler, value, ctx)
        runner = asyncio.ensure_future(call)
        waiter = asyncio.ensure_future(cancelled.wait())
        limit = request.timeout.ToNanoseconds() / 1e9 if request.HasField("timeout") else None
        try:
            await asyncio.wait(
                {runner, waiter}, timeout=limit or None, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if not runner.done():
            ctx._cancelled.set()
            runner.cancel()
            if not cancelled.is_set():
                raise StepTimeoutError(f"the step ran past its {limit:g} s timeout")
            raise StepCancelledError("the run was cancelled")
        output = runner.result()
        result.outcome = step_pb2.STEP_OUTCOME_COMPLETED
        result.output.CopyFrom(encode(output))
    except NeedsHuman as blocked:
        result.outcome = step_pb2.STEP_OUTCOME_BLOCKED
        result.needs_human = True
        result.summary = blocked.summary
    except Exception as exc:  # the step failed: that is its result, not the worker's problem
        result.outcome = step_pb2.STEP_OUTCOME_FAILED
        result.error.CopyFrom(error_info(exc))
        if isinstance(exc, StepTimeoutError):
            result.error.code = "STEP_TIMEOUT"
    set_nanos(result.finish_time, time.time_ns())
    await outbox.flush()
    return result


def _call(handler: StepHandler, value: Any, ctx: StepContext) -> Awaitable[Any]:
    if inspect.iscoroutinefunction(handler):
        return handler(value, ctx)  # type: ignore[no-any-return]
    return asyncio.to_thread(handler, value, ctx)
