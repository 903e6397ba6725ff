"""WorkerService: one bidirectional stream per worker (docs/worker-protocol.md).

A :class:`Session` is one connected worker: what it serves, how many tasks it
may hold, the tasks it holds, and an outbox its stream drains. The
:class:`Dispatcher` leases pending tasks to sessions with free capacity and
records each dispatch in the ledger; it wakes when a commit here queued a task,
when another coordinator committed anything (Postgres NOTIFY), when capacity
frees up, and when the next task becomes available or lease ends.

Requests on a stream are handled in the order received but not one at a time:
each is submitted to the store's writer at once (the writer keeps submission
order, so a task's batches are appended in order) and answered when committed,
so a worker running many tasks gets them group-committed together.

Choices where the issue is silent (also in docs/worker-protocol.md): a broken
stream does not release its tasks — the worker may reconnect (to any
coordinator) within the lease and claim them in ``hello.held_tasks``; a task
whose lease expires is re-dispatched by whichever coordinator sweeps first.

Silent sessions. A TCP stream can outlive the worker behind it (a stopped or
swapped-out process, a host gone without a reset): its session still looks
connected. Every worker heartbeats each interval, holding tasks or not, so a
session heard from (any message) in none of the last three intervals is
*inactive*: the dispatcher passes it over, and a lease it held that expires is
dropped from it (it is told ``STALE_LEASE``) rather than given straight back to
it. The session is not ended: its first message makes it active again, on the
same stream, and whatever it sends for the lost tasks is fenced by their epochs.
This is Hatchet's rule (a worker gets assignments only while its last heartbeat
is recent; the stream stays open); Temporal gets the same effect by pulling
(a stopped worker does not poll, so it is given nothing). Ending the stream
would reach a stopped process no sooner, and would make a worker that was only
slow for a moment reconnect and reclaim leases it still holds; a connection that
is really dead is gRPC keepalive's to detect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf import json_format

from ledgerflow.coordinator.api._auth import namespace_for
from ledgerflow.coordinator.api._errors import status_code_for
from ledgerflow.coordinator.api._run_service import Limits, check_events
from ledgerflow.coordinator.store import Store, Touched
from ledgerflow.coordinator.store._append import Outcome
from ledgerflow.coordinator.store._tasks import TaskRefusedError
from ledgerflow.errors import InvalidArgumentError, LedgerflowError, PayloadTooLargeError
from ledgerflow.ledger import check_id
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import step_pb2, worker_service_pb2_grpc, workflow_pb2
from ledgerflow.v1 import worker_service_pb2 as wpb

_log = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext

# Heartbeats a session may miss before it counts as silent (see the module docstring).
_MISSED_HEARTBEATS = 3


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Lease timing handed to workers in ``welcome``.

    Attributes:
        lease_seconds: How long a lease lasts without a heartbeat.
        heartbeat_seconds: How often workers heartbeat (well under the lease).
    """

    lease_seconds: float = 10.0
    heartbeat_seconds: float = 2.0

    @property
    def lease_nanos(self) -> int:
        """The lease length in nanoseconds."""
        return int(self.lease_seconds * 1_000_000_000)

    @property
    def silent_after_seconds(self) -> float:
        """How long a session may say nothing before the dispatcher passes it over.

        Three heartbeat intervals, but at most the lease less one interval: a
        session that stopped renewing a lease must count as silent by the time the
        lease expires, or the task would go straight back to it.
        """
        limit = min(
            _MISSED_HEARTBEATS * self.heartbeat_seconds, self.lease_seconds - self.heartbeat_seconds
        )
        # A heartbeat no shorter than the lease is a misconfiguration; do not pass
        # over every session because of it.
        return max(limit, self.heartbeat_seconds)


@dataclass(slots=True)
class Held:
    """A task a session holds."""

    run_id: str
    epoch: int
    cancel_sent: bool = False


@dataclass(slots=True)
class Session:
    """One connected worker."""

    session_id: str
    worker_id: str
    runtime: pb.Runtime
    queues: tuple[str, ...]
    capacity: int
    step_queues: tuple[str, ...] = ()
    held: dict[str, Held] = field(default_factory=dict)
    outbox: asyncio.Queue[wpb.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    draining: bool = False
    # time.monotonic() of the last message of any kind from the worker.
    last_heard: float = field(default_factory=time.monotonic)
    # Why the stream ends, when the worker's stream itself is at fault (a frame that
    # does not parse): the Connect handler raises it, the interceptor maps it.
    error: LedgerflowError | None = None
    # The namespace whose runs' tasks the session takes; None takes every namespace's.
    namespace: str | None = None

    @property
    def free(self) -> int:
        """How many more tasks the session may take."""
        return 0 if self.draining else max(0, self.capacity - len(self.held))

    def send(self, message: wpb.ConnectResponse) -> None:
        """Queue a message for the worker."""
        self.outbox.put_nowait(message)

    def reject(
        self,
        task_id: str,
        epoch: int,
        reason: wpb.TaskRejectReason.ValueType,
        message: str,
        batch_no: int = 0,
    ) -> None:
        """Tell the worker a batch, result or held task was refused."""
        self.send(
            wpb.ConnectResponse(
                task_rejected=wpb.TaskRejected(
                    task_id=task_id,
                    lease_epoch=epoch,
                    batch_no=batch_no,
                    reason=reason,
                    message=message,
                )
            )
        )


class Dispatcher:
    """Leases pending tasks to this process's sessions; sweeps expired leases."""

    def __init__(self, store: Store, leases: LeaseConfig) -> None:
        """Create the dispatcher; call :meth:`start`."""
        self._store = store
        self._leases = leases
        self.sessions: dict[str, Session] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # When the earliest lease seen at the end of the last round ends (0: look now).
        # Sweeping before then finds nothing: leases only start later than it (claims),
        # get longer (heartbeats) or go (results). Other coordinators' leases are seen
        # at the next round, at least once per half lease.
        self._sweep_at = 0

    def start(self) -> None:
        """Start dispatching."""
        self._task = asyncio.create_task(self._loop(), name="ledgerflow-dispatcher")

    async def close(self) -> None:
        """Stop dispatching."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Look for work now (a task was queued, capacity freed, another process committed)."""
        self._wake.set()

    def drain(self, reason: str, deadline_nanos: int) -> None:
        """Stop giving sessions work and ask every worker to finish or hand back its tasks."""
        self._stopped = True
        for session in self.sessions.values():
            session.draining = True
            drain = wpb.Drain(reason=reason)
            set_nanos(drain.deadline_time, deadline_nanos)
            session.send(wpb.ConnectResponse(drain=drain))

    def on_commit(self, touched: Sequence[Touched]) -> None:
        """Forward cancellations of runs whose task a session here holds."""
        cancelled = {t.run_id: t.snapshot for t in touched if t.snapshot.cancel_requested}
        if not cancelled:
            return
        for session in self.sessions.values():
            for task_id, held in session.held.items():
                snap = cancelled.get(held.run_id)
                if snap is not None and not held.cancel_sent:
                    held.cancel_sent = True
                    session.send(
                        wpb.ConnectResponse(
                            cancel_task=wpb.CancelTask(
                                task_id=task_id, run_id=held.run_id, reason=snap.cancel_reason
                            )
                        )
                    )

    def _lapsed(self, task_ids: Sequence[str]) -> None:
        """Take tasks whose leases expired away from the sessions here that held them.

        Otherwise the session would keep counting them against its capacity and be
        sent their cancellations, though it no longer holds them. It is told at
        once: a live but slow worker stops the task, a stopped one learns on resuming.
        (A lease another coordinator expired is found stale at the session's next
        heartbeat instead.)
        """
        expired = set(task_ids)
        if not expired:
            return
        for session in self.sessions.values():
            for task_id in session.held.keys() & expired:
                held = session.held.pop(task_id)
                session.reject(
                    task_id,
                    held.epoch,
                    wpb.TASK_REJECT_REASON_STALE_LEASE,
                    "the lease expired: no heartbeat renewed it in time, "
                    "and the task is dispatched again",
                )

    async def _loop(self) -> None:
        while not self._stopped:
            self._wake.clear()
            try:
                timeout = await self._round()
            except Exception:
                # The database may be away; leases stay safe (fencing), so retry shortly.
                _log.warning("dispatch round failed", exc_info=True)
                timeout = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _round(self) -> float:
        """Sweep expired leases, fill every session's free capacity; return the next timeout."""
        # Leases that ended become pending again, for the claims below.
        if time.time_ns() >= self._sweep_at:
            self._lapsed(await self._store.expire_leases())
        claims_from = time.time_ns()
        now = time.monotonic()
        silent_after = self._leases.silent_after_seconds
        for session in list(self.sessions.values()):
            if now - session.last_heard > silent_after:
                continue  # inactive: its next message wakes us (WorkerService._read)
            more = True
            while more and session.free and not self._stopped:
                if session.session_id not in self.sessions:
                    break  # it went away while we dispatched
                limit = session.free
                claimed = await self._store.claim_tasks(
                    queues=session.queues,
                    limit=limit,
                    lease_nanos=self._leases.lease_nanos,
                    worker_id=session.worker_id,
                    session_id=session.session_id,
                    step_queues=session.step_queues,
                    namespace=session.namespace,
                )
                # Fewer than asked: nothing else was available. What comes later wakes us
                # (see wake), so asking again now would only find nothing.
                more = len(claimed) == limit
                for task in claimed:
                    session.held[task.task_id] = Held(task.run_id, task.lease_epoch)
                # Recorded together: the writer commits the dispatches as one group.
                recorded = await asyncio.gather(
                    *(self._store.dispatch(task, session.runtime) for task in claimed)
                )
                for task, dispatched in zip(claimed, recorded, strict=True):
                    if dispatched is None:
                        session.held.pop(task.task_id, None)
                        continue
                    if dispatched.step is not None:
                        session.send(wpb.ConnectResponse(step_task=dispatched.step))
                        continue
                    wt = dispatched.task
                    assert wt is not None
                    wt.lease_duration.FromNanoseconds(self._leases.lease_nanos)
                    session.held[task.task_id].cancel_sent = wt.cancel_requested
                    session.send(wpb.ConnectResponse(workflow_task=wt))
        queues = sorted({q for s in self.sessions.values() for q in (*s.queues, *s.step_queues)})
        # A task already available that the claims left pending has no free taker here
        # (every session is full, silent, or of another namespace): what frees one wakes
        # us (a result or release, a new session, a silent one heard from), so only
        # tasks that come due later set the timeout. Counting the others would spin.
        due = await self._store.next_task_wakeup(queues, after=claims_from)
        self._sweep_at = (
            due.lease_end
            if due.lease_end is not None
            else claims_from + (self._leases.lease_nanos // 2)
        )
        wakeup = due.earliest
        # Other coordinators' tasks and leases change without telling us unless we
        # share a Postgres NOTIFY stream; look at least once a lease period.
        timeout = self._leases.lease_seconds / 2
        if wakeup is not None:
            timeout = min(timeout, max(0.0, (wakeup - time.time_ns()) / 1e9) + 0.001)
        return timeout


FAULT_ENV = "LEDGERFLOW_FAULT"
"""Test-only: ``crash-before-commit:N`` or ``crash-after-commit:N`` (see :class:`CrashPoint`)."""


@dataclass(slots=True)
class CrashPoint:
    """A test-only fault: the process dies, as under SIGKILL, at its N-th event batch.

    Set ``LEDGERFLOW_FAULT`` to ``crash-before-commit:N`` (the batch was received and
    checked but not handed to the store: nothing of it is committed) or
    ``crash-after-commit:N`` (its append committed; the ack is never sent). Read once
    when the servicer is created; unset, the only cost is a ``None`` check per batch.
    The process writes one line naming the batch to stderr, then ``os._exit(137)``:
    no ``finally``, no shutdown, no drain, like ``kill -9`` (137 = 128 + SIGKILL).
    tests/faults/test_commit_kills.py restarts the coordinator after it.

    Attributes:
        point: ``"before-commit"`` or ``"after-commit"``.
        at: Which batch (1 for the first this process handles) to die at.
        seen: Batches that reached ``point`` so far.
    """

    point: str
    at: int
    seen: int = 0

    @classmethod
    def from_env(cls) -> CrashPoint | None:
        """Return the fault ``LEDGERFLOW_FAULT`` asks for, or None when it is unset.

        Raises:
            ValueError: The variable is set but is not one of the two forms.
        """
        raw = os.environ.get(FAULT_ENV)
        if not raw:
            return None
        name, _, count = raw.partition(":")
        point = name.removeprefix("crash-")
        if name == point or point not in ("before-commit", "after-commit") or not count.isdigit():
            raise ValueError(
                f"{FAULT_ENV} must be crash-before-commit:N or crash-after-commit:N, got {raw!r}"
            )
        if int(count) < 1:
            raise ValueError(f"{FAULT_ENV}: N counts batches from 1, got {raw!r}")
        return cls(point, int(count))

    def reached(self, point: str, batch: wpb.EventBatch, committed_seq: int = 0) -> None:
        """Count a batch at ``point``; at the N-th, exit the process at once.

        The line written first ends with the batch as JSON, and after a commit the
        run's last seq, so a test can find exactly those events in the ledger.
        """
        if point != self.point:
            return
        self.seen += 1
        if self.seen < self.at:
            return
        committed = f" committed_seq={committed_seq}" if point == "after-commit" else ""
        body = json_format.MessageToJson(batch, indent=None)
        sys.stderr.write(
            f"{FAULT_ENV}: crash-{point} at event batch {self.at}{committed} batch={body}\n"
        )
        sys.stderr.flush()
        os._exit(137)


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    """The worker-facing API: sessions, dispatch, fenced appends, results, heartbeats."""

    def __init__(
        self, store: Store, dispatcher: Dispatcher, limits: Limits, leases: LeaseConfig
    ) -> None:
        """Create the servicer."""
        self._store = store
        self._dispatcher = dispatcher
        self._limits = limits
        self._leases = leases
        self.coordinator_id = str(uuid.uuid4())
        self._crash = CrashPoint.from_env()

    async def Connect(  # noqa: N802
        self,
        request_iterator: AsyncIterator[wpb.ConnectRequest],
        context: _Context,  # type: ignore[type-arg]
    ) -> AsyncIterator[wpb.ConnectResponse]:
        """Serve one worker for as long as its stream lasts."""
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            return
        session = await self._hello(first, context)
        welcome = wpb.Welcome(
            session_id=session.session_id,
            coordinator_id=self.coordinator_id,
            max_payload_bytes=self._limits.max_payload_bytes,
        )
        welcome.heartbeat_interval.FromNanoseconds(int(self._leases.heartbeat_seconds * 1e9))
        welcome.lease_duration.FromNanoseconds(self._leases.lease_nanos)
        yield wpb.ConnectResponse(welcome=welcome)
        await self._claim_held(session, first.hello.held_tasks)
        self._dispatcher.sessions[session.session_id] = session
        self._dispatcher.wake()
        reader = asyncio.create_task(self._read(session, requests))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    if session.error is not None:
                        raise session.error
                    return
                yield message
        finally:
            self._dispatcher.sessions.pop(session.session_id, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _hello(
        self,
        first: wpb.ConnectRequest,
        context: _Context,  # type: ignore[type-arg]
    ) -> Session:
        if first.WhichOneof("message") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be a hello"
            )
        hello = first.hello
        try:
            check_id(hello.worker_id, "hello.worker_id")
            if not hello.workflows and not hello.step_kinds:
                raise InvalidArgumentError(
                    "hello.workflows", "must name at least one workflow (or step kind)"
                )
            for i, w in enumerate(hello.workflows):
                check_id(w.name, f"hello.workflows[{i}].name")
            for i, kind in enumerate(hello.step_kinds):
                check_id(kind, f"hello.step_kinds[{i}]")
            if hello.max_concurrent_tasks < 1:
                raise InvalidArgumentError("hello.max_concurrent_tasks", "must be at least 1")
            # The token's namespace, or the one asked for if the token may act there.
            namespace = namespace_for(hello.namespace, "hello.namespace")
        except LedgerflowError as err:  # malformed, or a namespace the token may not serve
            await context.abort(status_code_for(err), str(err))
        runtime = pb.Runtime(
            worker_id=hello.worker_id, language=hello.language, sdk_version=hello.sdk_version
        )
        return Session(
            session_id=str(uuid.uuid4()),
            worker_id=hello.worker_id,
            runtime=runtime,
            queues=tuple(sorted({w.name for w in hello.workflows})),
            capacity=hello.max_concurrent_tasks,
            step_queues=tuple(sorted(set(hello.step_kinds))),
            namespace=namespace,
        )

    async def _claim_held(self, session: Session, held: Sequence[wpb.HeldTask]) -> None:
        """Bind the tasks a reconnecting worker still runs to its new session, if still its."""
        known: list[tuple[str, str, int]] = []
        for h in held:
            task = await self._store.find_task(h.task_id)
            if task is None:
                session.reject(
                    h.task_id, h.lease_epoch, wpb.TASK_REJECT_REASON_UNKNOWN_TASK, "no such task"
                )
                continue
            known.append((task.run_id, h.task_id, h.lease_epoch))
        if not known:
            return
        states = await self._store.heartbeat(
            known,
            lease_nanos=self._leases.lease_nanos,
            session_id=session.session_id,
            worker_id=session.worker_id,
        )
        for (run_id, task_id, epoch), state in zip(known, states, strict=True):
            if state.live:
                session.held[task_id] = Held(run_id, epoch)
            else:
                session.reject(
                    task_id, epoch, wpb.TASK_REJECT_REASON_STALE_LEASE, "the lease was lost"
                )

    async def _read(self, session: Session, requests: AsyncIterator[wpb.ConnectRequest]) -> None:
        pending: set[asyncio.Task[None]] = set()
        silent_after = self._leases.silent_after_seconds
        try:
            async for request in requests:
                now = time.monotonic()
                if now - session.last_heard > silent_after:
                    self._dispatcher.wake()  # passed over while silent: it may take work again
                session.last_heard = now
                handler = self._handler(session, request)
                if handler is None:
                    continue
                # Started in arrival order: each submits to the writer before its
                # first suspension, so a task's batches are appended in order.
                job = asyncio.create_task(self._guarded(session, handler))
                pending.add(job)
                job.add_done_callback(pending.discard)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except LedgerflowError as err:  # a frame that does not parse (api/_errors.py)
            session.error = err
        finally:
            for job in list(pending):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
            session.outbox.put_nowait(None)

    async def _guarded(self, session: Session, handler: Coroutine[Any, Any, None]) -> None:
        """Run a message's handler; on an unexpected failure, end the session.

        A refusal (``LedgerflowError``) is answered by the handler itself. Anything
        else — the database went away mid-commit — leaves the message neither
        acknowledged nor refused: ending the stream makes the worker reconnect and
        resend what it still owes (a resend of a committed batch is deduplicated).
        """
        try:
            await handler
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.warning(
                "a message from worker %s failed; ending its session so it resends",
                session.worker_id,
                exc_info=True,
            )
            session.outbox.put_nowait(None)

    def _handler(
        self, session: Session, request: wpb.ConnectRequest
    ) -> Coroutine[Any, Any, None] | None:
        case = request.WhichOneof("message")
        if case == "event_batch":
            return self._on_batch(session, request.event_batch)
        if case == "workflow_result":
            return self._on_result(session, request.workflow_result)
        if case == "heartbeat":
            return self._on_heartbeat(session, request.heartbeat)
        if case == "release":
            return self._on_release(session, request.release)
        if case == "step_result":
            return self._on_step_result(session, request.step_result)
        return None  # hello again: ignored

    def _run_of(self, session: Session, task_id: str, epoch: int) -> str | None:
        held = session.held.get(task_id)
        if held is None or held.epoch != epoch:
            return None
        return held.run_id

    async def _on_batch(self, session: Session, batch: wpb.EventBatch) -> None:
        run_id = self._run_of(session, batch.task_id, batch.lease_epoch)
        if run_id is None:
            session.reject(
                batch.task_id,
                batch.lease_epoch,
                wpb.TASK_REJECT_REASON_STALE_LEASE,
                "this session does not hold that task under that epoch",
                batch.batch_no,
            )
            return
        events = list(batch.events)
        for event in events:
            if not event.run_id:
                event.run_id = run_id
        try:
            check_events(events, self._limits)
            if self._crash is not None:
                self._crash.reached("before-commit", batch)
            outcome = await self._store.append_task_events(
                run_id, batch.task_id, batch.lease_epoch, batch.batch_no, events
            )
        except LedgerflowError as err:  # refused, malformed or too large: nothing appended
            self._refused(session, batch.task_id, batch.lease_epoch, err, batch.batch_no)
            return
        committed_seq = outcome.ranges.get(run_id, (0, 0))[1]
        if self._crash is not None:
            self._crash.reached("after-commit", batch, committed_seq)
        if outcome.duplicate:
            _log.debug(
                "event batch %d of task %s (epoch %d) was appended before: "
                "acknowledged again, nothing appended",
                batch.batch_no,
                batch.task_id,
                batch.lease_epoch,
            )
        ack = wpb.EventBatchAck(
            task_id=batch.task_id,
            lease_epoch=batch.lease_epoch,
            batch_no=batch.batch_no,
            committed_seq=committed_seq,
            duplicate=outcome.duplicate,
        )
        cursors = cast(dict[str, int], outcome.value or {})
        for channel, offset in cursors.items():
            ack.log_cursors.add(channel=channel, next_offset=offset)
        session.send(wpb.ConnectResponse(event_batch_ack=ack))

    def _refused(
        self, session: Session, task_id: str, epoch: int, err: Exception, batch_no: int = 0
    ) -> None:
        if isinstance(err, TaskRefusedError):
            reason = err.reason
        elif isinstance(err, PayloadTooLargeError):
            reason = wpb.TASK_REJECT_REASON_TOO_LARGE
        else:
            reason = wpb.TASK_REJECT_REASON_INVALID
        if reason in (
            wpb.TASK_REJECT_REASON_STALE_LEASE,
            wpb.TASK_REJECT_REASON_UNKNOWN_TASK,
            wpb.TASK_REJECT_REASON_RUN_FINISHED,
        ):
            self._forget(session, task_id, epoch)
        session.reject(task_id, epoch, reason, str(err), batch_no)

    def _forget(self, session: Session, task_id: str, epoch: int) -> None:
        # Only the epoch held: a stale or forged message about the task (another
        # epoch) must not drop the lease this session really holds.
        held = session.held.get(task_id)
        if held is not None and held.epoch == epoch:
            del session.held[task_id]
            self._dispatcher.wake()

    async def _on_result(self, session: Session, result: workflow_pb2.WorkflowTaskResult) -> None:
        await self._take_result(session, result, self._store.complete_task)

    async def _on_step_result(self, session: Session, result: step_pb2.StepResult) -> None:
        await self._take_result(session, result, self._store.complete_step)

    async def _take_result(
        self,
        session: Session,
        result: Any,
        complete: Callable[[str, Any], Awaitable[Outcome]],
    ) -> None:
        run_id = self._run_of(session, result.task_id, result.lease_epoch)
        if run_id is None:
            task = await self._store.find_task(result.task_id)
            if task is None:
                session.reject(
                    result.task_id,
                    result.lease_epoch,
                    wpb.TASK_REJECT_REASON_UNKNOWN_TASK,
                    "no such task",
                )
                return
            run_id = task.run_id  # A resent result: the store answers it as a duplicate or stale.
        try:
            outcome = await complete(run_id, result)
        except LedgerflowError as err:
            self._refused(session, result.task_id, result.lease_epoch, err)
            return
        self._forget(session, result.task_id, result.lease_epoch)
        session.send(
            wpb.ConnectResponse(
                task_result_ack=wpb.TaskResultAck(
                    task_id=result.task_id,
                    lease_epoch=result.lease_epoch,
                    committed_seq=cast(int, outcome.value),
                )
            )
        )

    async def _on_release(self, session: Session, release: wpb.TaskRelease) -> None:
        run_id = self._run_of(session, release.task_id, release.lease_epoch)
        if run_id is None:
            return
        # A refusal means the lease is not its any more: nothing to give back.
        with contextlib.suppress(LedgerflowError):
            await self._store.release_task(
                run_id, release.task_id, release.lease_epoch, failed=release.failed
            )
        self._forget(session, release.task_id, release.lease_epoch)

    async def _on_heartbeat(self, session: Session, heartbeat: wpb.Heartbeat) -> None:
        known: list[tuple[str, str, int]] = []
        for t in heartbeat.tasks:
            run_id = self._run_of(session, t.task_id, t.lease_epoch)
            if run_id is None:
                session.reject(
                    t.task_id, t.lease_epoch, wpb.TASK_REJECT_REASON_STALE_LEASE, "not held here"
                )
            else:
                known.append((run_id, t.task_id, t.lease_epoch))
        states = (
            await self._store.heartbeat(
                known,
                lease_nanos=self._leases.lease_nanos,
                session_id=session.session_id,
                worker_id=session.worker_id,
            )
            if known
            else []
        )
        ack = wpb.HeartbeatAck()
        for state in states:
            if not state.live:
                self._forget(session, state.task_id, state.epoch)
                session.reject(
                    state.task_id,
                    state.epoch,
                    wpb.TASK_REJECT_REASON_STALE_LEASE,
                    "the lease expired and may be held by another worker",
                )
                continue
            lease = ack.leases.add(
                task_id=state.task_id,
                lease_epoch=state.epoch,
                cancel_requested=state.cancel_requested,
            )
            set_nanos(lease.expire_time, state.expire_time)
        session.send(wpb.ConnectResponse(heartbeat_ack=ack))
