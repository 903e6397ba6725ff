"""One workflow task on a worker: what was sent for it and is not yet acknowledged.

The worker keeps, per task, every message the coordinator still owes an answer
for: the event batches not yet acknowledged (in ``batch_no`` order), the result
until ``task_result_ack``, and a release waiting for a stream. That record, not
the stream, is the truth: a message written into a stream that then breaks is
simply sent again, unchanged, on the next one (the coordinator acknowledges a
batch it already committed as a duplicate, and a result again without a second
append). So a reconnect never fails an execution: its pending ``append`` waits
for the ack, whichever stream brings it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ledgerflow.v1 import ledger_pb2, step_pb2, workflow_pb2
from ledgerflow.v1 import worker_service_pb2 as ws
from ledgerflow.workflow import WorkflowExecution

# The task is gone for this worker: append nothing more, send nothing more.
LOSING_REASONS = frozenset(
    {
        ws.TASK_REJECT_REASON_UNSPECIFIED,
        ws.TASK_REJECT_REASON_STALE_LEASE,
        ws.TASK_REJECT_REASON_UNKNOWN_TASK,
        ws.TASK_REJECT_REASON_RUN_FINISHED,
    }
)


class TaskRefusedError(Exception):
    """The coordinator refused a message about the task (``task_rejected``).

    Raised from a pending ``append`` (and so from ``WorkflowExecution.run``) and
    from the wait for the result's ack. Private: the worker handles it.
    """

    def __init__(self, rejected: ws.TaskRejected) -> None:
        self.reason = rejected.reason
        self.reason_name = ws.TaskRejectReason.Name(rejected.reason).removeprefix(
            "TASK_REJECT_REASON_"
        )
        self.detail = rejected.message
        what = f"batch {rejected.batch_no}" if rejected.batch_no else "a message"
        text = f"the coordinator refused {what} of task {rejected.task_id}: {self.reason_name}"
        super().__init__(f"{text}: {rejected.message}" if rejected.message else text)

    @property
    def loses_task(self) -> bool:
        """Whether the task is no longer this worker's (stale lease, unknown, run over)."""
        return self.reason in LOSING_REASONS


class Phase(enum.Enum):
    """Where a held task is."""

    RUNNING = "running"
    """The body runs; batches may await their acks."""
    REPORTING = "reporting"
    """The result was sent; its ack is awaited."""
    RELEASING = "releasing"
    """A release waits for a stream to be sent on."""
    PARKED = "parked"
    """Accepted while the worker drains; never run, released when the stream closes."""


@dataclass(slots=True)
class _PendingBatch:
    request: ws.ConnectRequest
    acked: asyncio.Future[None]


class TaskState:
    """A task this worker holds, and what it owes the coordinator for it."""

    def __init__(
        self, task: workflow_pb2.WorkflowTask | step_pb2.StepRequest, phase: Phase
    ) -> None:
        """Hold ``task``.

        Args:
            task: The task as dispatched.
            phase: Where it starts.
        """
        self.task = task
        self.phase = phase
        self.execution: WorkflowExecution | None = None
        self.runner: asyncio.Task[None] | None = None
        self.next_batch_no = 1
        self.unacked: dict[int, _PendingBatch] = {}
        self.result: ws.ConnectRequest | None = None
        self.result_acked: asyncio.Future[None] | None = None
        self.release: ws.ConnectRequest | None = None
        self.stopped: BaseException | None = None
        # Step tasks: set when the run is cancelled (the handler is stopped).
        self.cancelled = asyncio.Event()

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.task_id

    @property
    def epoch(self) -> int:
        """The lease epoch this worker holds the task under."""
        return self.task.lease_epoch

    @property
    def active(self) -> bool:
        """Whether the task takes a slot: running, or its result not yet acknowledged.

        The ack frees the slot at once, before the coroutine that awaited it resumes:
        the coordinator frees it too and may send the next task right behind the ack,
        which would otherwise find the worker "full" and be handed back.
        """
        return self.phase is Phase.RUNNING or (
            self.phase is Phase.REPORTING and self.result is not None
        )

    def owed(self) -> Iterator[ws.ConnectRequest]:
        """Every message still owed an answer (or a stream), in the order first sent."""
        for pending in self.unacked.values():
            yield pending.request
        if self.result is not None:
            yield self.result
        if self.release is not None:
            yield self.release

    def new_batch(self, events: Sequence[ledger_pb2.LedgerEvent]) -> _PendingBatch:
        """Number the next batch of the task's epoch and keep it until acknowledged."""
        batch_no = self.next_batch_no
        self.next_batch_no += 1
        request = ws.ConnectRequest(
            event_batch=ws.EventBatch(
                task_id=self.task_id, lease_epoch=self.epoch, batch_no=batch_no, events=events
            )
        )
        pending = _PendingBatch(request, asyncio.get_running_loop().create_future())
        self.unacked[batch_no] = pending
        return pending

    def batch_acked(self, batch_no: int) -> None:
        """Resolve the batch's pending append (a duplicate ack of an acked batch is ignored)."""
        pending = self.unacked.pop(batch_no, None)
        if pending is not None and not pending.acked.done():
            pending.acked.set_result(None)

    def report(
        self, result: workflow_pb2.WorkflowTaskResult | step_pb2.StepResult
    ) -> asyncio.Future[None]:
        """Keep the result until acknowledged; return the future its ack resolves."""
        self.phase = Phase.REPORTING
        if isinstance(result, step_pb2.StepResult):
            self.result = ws.ConnectRequest(step_result=result)
        else:
            self.result = ws.ConnectRequest(workflow_result=result)
        self.result_acked = asyncio.get_running_loop().create_future()
        return self.result_acked

    def result_acknowledged(self) -> None:
        """Resolve the wait for the result's ack."""
        self.result = None
        if self.result_acked is not None and not self.result_acked.done():
            self.result_acked.set_result(None)

    def stop(self, cause: BaseException) -> None:
        """Fail everything that awaits an answer with ``cause``; nothing owed is resent.

        Later appends raise ``cause`` at once.
        """
        if self.stopped is None:
            self.stopped = cause
        for pending in self.unacked.values():
            _fail(pending.acked, cause)
        self.unacked.clear()
        self.result = None
        if self.result_acked is not None:
            _fail(self.result_acked, cause)

    def releasing(self, reason: str, *, failed: bool = False) -> ws.ConnectRequest:
        """Turn the task into a release with ``reason``; nothing else is owed any more.

        ``failed`` tells the coordinator this worker could not run it (not draining),
        so it backs off before dispatching it again.
        """
        self.phase = Phase.RELEASING
        self.unacked.clear()
        self.result = None
        self.release = ws.ConnectRequest(
            release=ws.TaskRelease(
                task_id=self.task_id, lease_epoch=self.epoch, reason=reason, failed=failed
            )
        )
        return self.release


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        # Nobody may be waiting any more (the runner was cancelled): mark it retrieved.
        future.exception()


class StreamSink:
    """The ``EventSink`` of one execution: one ``append`` call is one ``EventBatch``.

    ``append`` returns when the coordinator acknowledges the batch, on whichever
    stream the ack arrives; it raises :class:`TaskRefusedError` when the batch (or
    the task) is refused. The engine coalesces concurrent appends itself (it wraps
    every sink in ``workflow.BatchingSink``), so a second wrapper here would only add
    a loop tick.
    """

    def __init__(self, state: TaskState, send: Callable[[ws.ConnectRequest], None]) -> None:
        """Create the sink.

        Args:
            state: The task's record, which keeps each batch until it is acknowledged.
            send: Sends a message on the live stream, or drops it when there is none
                (it is resent from ``state`` after the next ``welcome``).
        """
        self._state = state
        self._send = send

    async def append(self, events: Sequence[ledger_pb2.LedgerEvent]) -> None:
        """Send the events as the task's next batch and wait for its ack.

        Args:
            events: The events, in order.

        Raises:
            TaskRefusedError: The coordinator refused the batch or the task.
            Exception: What the worker stopped the task with (released, superseded).
        """
        state = self._state
        if state.stopped is not None:
            raise state.stopped
        pending = state.new_batch(events)
        self._send(pending.request)
        await pending.acked
