"""A scripted WorkerService: the coordinator's side of docs/worker-protocol.md, in memory.

It runs in a real in-process ``grpc.aio`` server on a loopback port (grpc_testing
would silently pass an async servicer) and keeps what a coordinator keeps: leases
(task, epoch, done, released), the committed ledger of each run (every batch
validated, sequenced and log-ingested positionally by the real ledger core, via
``tests.workflow.harness.MemoryLedger``) and which (task, epoch, batch_no) were
committed, so a resent batch is acknowledged as a duplicate and never appended
twice. By default it answers as the protocol says; a test changes that with hooks
(``on_batch``, ``on_result``) returning an :class:`Action`, or pushes messages
itself (``session.send``), and waits for what the worker sends with
:meth:`ScriptedCoordinator.wait_until`.

Every received message is recorded in order (``received``), with its session, so
tests can assert ordering without looking at a clock. Protocol violations it can
detect (a batch number out of sequence, an event for another run) are recorded
in ``violations`` rather than raised, and every test checks the list is empty.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from typing_extensions import override

from ledgerflow.ledger import json_payload, validate_event
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import journal_pb2, step_pb2, workflow_pb2
from ledgerflow.v1 import worker_service_pb2 as ws
from ledgerflow.v1 import worker_service_pb2_grpc as ws_grpc
from tests.workflow.harness import RUN_START_NS, MemoryLedger

_Context = aio.ServicerContext[ws.ConnectRequest, ws.ConnectResponse]


class Act(enum.Enum):
    """What the scripted coordinator does with a batch or a result."""

    ACK = "ack"
    """Commit and acknowledge (the protocol's answer)."""
    HOLD = "hold"
    """Record it but neither commit nor answer."""
    ABORT = "abort"
    """End the stream with UNAVAILABLE without committing (lost on the wire)."""
    COMMIT_AND_ABORT = "commit_and_abort"
    """Commit, then end the stream with UNAVAILABLE before the ack (the ack is lost)."""
    REJECT = "reject"
    """Answer ``task_rejected`` with the action's reason."""


@dataclass(frozen=True)
class Action:
    """A hook's decision."""

    act: Act
    reason: ws.TaskRejectReason.ValueType = ws.TASK_REJECT_REASON_UNSPECIFIED
    message: str = ""


ACK = Action(Act.ACK)
HOLD = Action(Act.HOLD)
ABORT = Action(Act.ABORT)
COMMIT_AND_ABORT = Action(Act.COMMIT_AND_ABORT)


def reject(reason: ws.TaskRejectReason.ValueType, message: str = "") -> Action:
    """Refuse with ``task_rejected{reason}``."""
    return Action(Act.REJECT, reason, message)


@dataclass
class Lease:
    """The coordinator's record of one task."""

    task: workflow_pb2.WorkflowTask
    epoch: int
    done: bool = False
    released: str | None = None
    cancel_requested: bool = False
    next_batch_no: int = 1

    @property
    def live(self) -> bool:
        return not self.done and self.released is None


class _End:
    """Ends the stream with status OK."""


@dataclass
class _Abort:
    code: grpc.StatusCode
    details: str


@dataclass
class ScriptedSession:
    """One ``Connect`` call."""

    number: int
    hello: ws.WorkerHello = field(default_factory=ws.WorkerHello)
    greeted: bool = False
    received: list[ws.ConnectRequest] = field(default_factory=list)
    sent: list[ws.ConnectResponse] = field(default_factory=list)
    worker_closed: bool = False
    ended: bool = False
    outbox: asyncio.Queue[ws.ConnectResponse | _Abort | _End] = field(default_factory=asyncio.Queue)

    def send(self, message: ws.ConnectResponse) -> None:
        """Send a message to the worker."""
        self.outbox.put_nowait(message)

    def abort(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, details: str = "") -> None:
        """End the stream with a status (a coordinator crash or a network failure)."""
        self.outbox.put_nowait(_Abort(code, details or "scripted stream break"))

    def end(self) -> None:
        """End the stream with status OK."""
        self.outbox.put_nowait(_End())

    def kinds(self) -> list[str]:
        """The kind of every message received after hello, in order."""
        return [str(m.WhichOneof("message")) for m in self.received]


class ScriptedCoordinator(ws_grpc.WorkerServiceServicer):
    """See the module docstring."""

    def __init__(self) -> None:
        self.heartbeat_interval_ms = 20
        self.lease_duration_ms = 60_000
        self.max_payload_bytes = 4 << 20
        self.ack_heartbeats = True
        self.close_when_worker_closes = True
        self.refuse_hello: tuple[grpc.StatusCode, str] | None = None
        self.on_batch: Callable[[ScriptedSession, ws.EventBatch], Action] | None = None
        self.on_result: (
            Callable[[ScriptedSession, workflow_pb2.WorkflowTaskResult], Action] | None
        ) = None
        self.sessions: list[ScriptedSession] = []
        self.received: list[tuple[int, ws.ConnectRequest]] = []
        self.leases: dict[str, Lease] = {}
        self.ledgers: dict[str, MemoryLedger] = {}
        self.committed_batches: dict[tuple[str, int, int], bytes] = {}
        self.results: dict[str, workflow_pb2.WorkflowTaskResult] = {}
        self.releases: list[ws.TaskRelease] = []
        self.barriers: set[str] = set()
        self.violations: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._next_task = 0

    # -- driving the worker ------------------------------------------------------------------

    @property
    def session(self) -> ScriptedSession:
        """The latest session."""
        return self.sessions[-1]

    def ledger(self, run_id: str) -> MemoryLedger:
        """The committed ledger of a run."""
        if run_id not in self.ledgers:
            self.ledgers[run_id] = MemoryLedger(run_id=run_id)
        return self.ledgers[run_id]

    def dispatch(
        self,
        workflow_name: str,
        workflow_input: Any = None,
        *,
        run_id: str | None = None,
        task_id: str | None = None,
        epoch: int = 1,
        version: str = "",
        journal: journal_pb2.JournalSlice | None = None,
        cancel_requested: bool = False,
        cancel_reason: str = "",
        session: ScriptedSession | None = None,
    ) -> workflow_pb2.WorkflowTask:
        """Lease a workflow task and send it; its journal is the run's committed one."""
        self._next_task += 1
        task_id = task_id or f"task-{self._next_task}"
        run_id = run_id or f"run-{self._next_task}"
        ledger = self.ledger(run_id)
        task = workflow_pb2.WorkflowTask(
            task_id=task_id,
            lease_epoch=epoch,
            run_id=run_id,
            workflow_name=workflow_name,
            workflow_version=version,
            invocation=epoch,
            cancel_requested=cancel_requested,
            cancel_reason=cancel_reason,
        )
        if workflow_input is not None:
            task.input.CopyFrom(json_payload(workflow_input))
        task.journal.CopyFrom(journal if journal is not None else ledger.journal)
        set_nanos(task.run_start_time, RUN_START_NS)
        self.leases[task_id] = Lease(task, epoch)
        (session or self.session).send(ws.ConnectResponse(workflow_task=task))
        return task

    async def wait_until(self, predicate: Callable[[], object], what: str = "") -> None:
        """Wait until ``predicate()`` holds; re-checked after every message and stream event.

        The 10 s bound only keeps a broken test from hanging; nothing is timed.
        """
        try:
            async with asyncio.timeout(10):
                while not predicate():
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            kinds = [(n, m.WhichOneof("message")) for n, m in self.received]
            raise AssertionError(f"never happened: {what}; received {kinds[-30:]}") from None

    async def wait_for_session(self, number: int) -> ScriptedSession:
        """Wait until the ``number``-th session (from 1) said hello."""
        await self.wait_until(
            lambda: len(self.sessions) >= number and self.sessions[number - 1].greeted,
            f"session {number}",
        )
        return self.sessions[number - 1]

    async def barrier(self) -> None:
        """Wait until the worker has processed everything sent to it so far.

        The worker handles messages in order, and answers a step task (which it does
        not run) with a release: once that release is back, whatever was sent before
        the step task was handled too.
        """
        self._next_task += 1
        task_id = f"barrier-{self._next_task}"
        self.session.send(
            ws.ConnectResponse(step_task=step_pb2.StepRequest(task_id=task_id, lease_epoch=1))
        )
        await self.wait_until(lambda: task_id in self.barriers, "the barrier's release")

    def messages(self, kind: str, task_id: str | None = None) -> list[tuple[int, Any]]:
        """Received messages of one kind (and task), with their session number, in order."""
        found = []
        for number, request in self.received:
            if request.WhichOneof("message") != kind:
                continue
            body = getattr(request, kind)
            if task_id is None or getattr(body, "task_id", None) == task_id:
                found.append((number, body))
        return found

    def heartbeats(self) -> list[list[tuple[str, int]]]:
        """The tasks listed by every heartbeat received, in order."""
        return [
            [(t.task_id, t.lease_epoch) for t in hb.tasks] for _, hb in self.messages("heartbeat")
        ]

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the service -------------------------------------------------------------------------

    @override
    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: _Context
    ) -> None:
        session = ScriptedSession(number=len(self.sessions) + 1)
        self.sessions.append(session)
        reader = asyncio.create_task(self._read(session, context))
        try:
            while True:
                item = await session.outbox.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.details)
                session.sent.append(item)
                await context.write(item)
        finally:
            reader.cancel()
            session.ended = True
            self._notify()

    async def _read(self, session: ScriptedSession, context: _Context) -> None:
        while True:
            request: object = await context.read()
            if not isinstance(request, ws.ConnectRequest):  # EOF: the worker closed its side
                session.worker_closed = True
                self._notify()
                if self.close_when_worker_closes:
                    session.end()
                return
            if not session.greeted:
                self._hello(session, request)
            else:
                session.received.append(request)
                self.received.append((session.number, request))
                self._handle(session, request)
            self._notify()

    def _hello(self, session: ScriptedSession, request: ws.ConnectRequest) -> None:
        if request.WhichOneof("message") != "hello":
            session.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be hello"
            )
            return
        hello = request.hello
        if self.refuse_hello is not None:
            session.abort(*self.refuse_hello)
            return
        if not hello.worker_id:
            session.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.worker_id: required")
            return
        session.hello = hello
        session.greeted = True
        welcome = ws.Welcome(
            session_id=f"session-{session.number}",
            coordinator_id="scripted",
            max_payload_bytes=self.max_payload_bytes,
        )
        welcome.heartbeat_interval.FromMilliseconds(self.heartbeat_interval_ms)
        welcome.lease_duration.FromMilliseconds(self.lease_duration_ms)
        session.send(ws.ConnectResponse(welcome=welcome))
        for held in hello.held_tasks:
            lease = self.leases.get(held.task_id)
            if lease is None or not lease.live or lease.epoch != held.lease_epoch:
                session.send(
                    _rejected(held.task_id, held.lease_epoch, 0, ws.TASK_REJECT_REASON_STALE_LEASE)
                )

    def _handle(self, session: ScriptedSession, request: ws.ConnectRequest) -> None:
        kind = request.WhichOneof("message")
        if kind == "event_batch":
            self._batch(session, request.event_batch)
        elif kind == "workflow_result":
            self._result(session, request.workflow_result)
        elif kind == "heartbeat":
            self._heartbeat(session, request.heartbeat)
        elif kind == "release":
            release = request.release
            if release.task_id.startswith("barrier-"):
                self.barriers.add(release.task_id)
                return
            self.releases.append(release)
            lease = self.leases.get(release.task_id)
            if lease is not None and lease.epoch == release.lease_epoch and lease.live:
                lease.released = release.reason
        else:
            self.violations.append(f"unexpected {kind}")

    def _lease_refusal(self, task_id: str, epoch: int) -> ws.TaskRejectReason.ValueType | None:
        lease = self.leases.get(task_id)
        if lease is None:
            return ws.TASK_REJECT_REASON_UNKNOWN_TASK
        if lease.epoch != epoch or lease.released is not None:
            return ws.TASK_REJECT_REASON_STALE_LEASE
        return None

    def _batch(self, session: ScriptedSession, batch: ws.EventBatch) -> None:
        key = (batch.task_id, batch.lease_epoch, batch.batch_no)
        if key in self.committed_batches:
            if self.committed_batches[key] != batch.SerializeToString(deterministic=True):
                self.violations.append(f"batch {key} resent with different content")
            self._ack_batch(session, batch, duplicate=True)
            return
        refusal = self._lease_refusal(batch.task_id, batch.lease_epoch)
        if refusal is None and self.leases[batch.task_id].done:
            refusal = ws.TASK_REJECT_REASON_STALE_LEASE
        if refusal is not None:
            session.send(_rejected(batch.task_id, batch.lease_epoch, batch.batch_no, refusal))
            return
        action = self.on_batch(session, batch) if self.on_batch is not None else ACK
        if action.act is Act.HOLD:
            return
        if action.act is Act.ABORT:
            session.abort()
            return
        if action.act is Act.REJECT:
            session.send(
                _rejected(
                    batch.task_id, batch.lease_epoch, batch.batch_no, action.reason, action.message
                )
            )
            return
        self.commit_batch(batch)
        if action.act is Act.COMMIT_AND_ABORT:
            session.abort()
            return
        self._ack_batch(session, batch, duplicate=False)

    def commit_batch(self, batch: ws.EventBatch) -> None:
        """Commit a batch (one the test held) as the coordinator would."""
        lease = self.leases[batch.task_id]
        if batch.batch_no != lease.next_batch_no:
            self.violations.append(
                f"task {batch.task_id}: batch {batch.batch_no}, expected {lease.next_batch_no}"
            )
        lease.next_batch_no = batch.batch_no + 1
        ledger = self.ledger(lease.task.run_id)
        for event in batch.events:
            validate_event(event)
            if event.run_id != lease.task.run_id:
                self.violations.append(
                    f"event for run {event.run_id} in a batch of {lease.task.run_id}"
                )
        for event in batch.events:
            ledger.commit(event)
        key = (batch.task_id, batch.lease_epoch, batch.batch_no)
        self.committed_batches[key] = batch.SerializeToString(deterministic=True)

    def _ack_batch(
        self, session: ScriptedSession, batch: ws.EventBatch, *, duplicate: bool
    ) -> None:
        lease = self.leases[batch.task_id]
        ledger = self.ledger(lease.task.run_id)
        session.send(
            ws.ConnectResponse(
                event_batch_ack=ws.EventBatchAck(
                    task_id=batch.task_id,
                    lease_epoch=batch.lease_epoch,
                    batch_no=batch.batch_no,
                    committed_seq=len(ledger.events),
                    duplicate=duplicate,
                )
            )
        )

    def _result(self, session: ScriptedSession, result: workflow_pb2.WorkflowTaskResult) -> None:
        lease = self.leases.get(result.task_id)
        if lease is not None and lease.done and lease.epoch == result.lease_epoch:
            self._ack_result(session, result)  # A resend: acknowledged again, nothing appended.
            return
        refusal = self._lease_refusal(result.task_id, result.lease_epoch)
        if refusal is not None:
            session.send(_rejected(result.task_id, result.lease_epoch, 0, refusal))
            return
        action = self.on_result(session, result) if self.on_result is not None else ACK
        if action.act is Act.HOLD:
            return
        if action.act is Act.ABORT:
            session.abort()
            return
        if action.act is Act.REJECT:
            session.send(
                _rejected(result.task_id, result.lease_epoch, 0, action.reason, action.message)
            )
            return
        self.results[result.task_id] = result
        self.leases[result.task_id].done = True
        if action.act is Act.COMMIT_AND_ABORT:
            session.abort()
            return
        self._ack_result(session, result)

    def _ack_result(
        self, session: ScriptedSession, result: workflow_pb2.WorkflowTaskResult
    ) -> None:
        lease = self.leases[result.task_id]
        session.send(
            ws.ConnectResponse(
                task_result_ack=ws.TaskResultAck(
                    task_id=result.task_id,
                    lease_epoch=result.lease_epoch,
                    committed_seq=len(self.ledger(lease.task.run_id).events),
                )
            )
        )

    def _heartbeat(self, session: ScriptedSession, heartbeat: ws.Heartbeat) -> None:
        if not self.ack_heartbeats:
            return
        ack = ws.HeartbeatAck()
        for held in heartbeat.tasks:
            lease = self.leases.get(held.task_id)
            if lease is None or not lease.live or lease.epoch != held.lease_epoch:
                session.send(
                    _rejected(held.task_id, held.lease_epoch, 0, ws.TASK_REJECT_REASON_STALE_LEASE)
                )
                continue
            entry = ack.leases.add(
                task_id=held.task_id,
                lease_epoch=held.lease_epoch,
                cancel_requested=lease.cancel_requested,
            )
            entry.expire_time.GetCurrentTime()
        session.send(ws.ConnectResponse(heartbeat_ack=ack))


async def eventually(predicate: Callable[[], object], what: str) -> None:
    """Wait until ``predicate()`` holds, for state the coordinator is not told about.

    It polls (each check yields to the loop that runs the worker); the 10 s bound
    only keeps a broken test from hanging, nothing is timed.
    """
    try:
        async with asyncio.timeout(10):
            while not predicate():  # noqa: ASYNC110 (the worker's state has no event)
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def _rejected(
    task_id: str,
    epoch: int,
    batch_no: int,
    reason: ws.TaskRejectReason.ValueType,
    message: str = "",
) -> ws.ConnectResponse:
    return ws.ConnectResponse(
        task_rejected=ws.TaskRejected(
            task_id=task_id, lease_epoch=epoch, batch_no=batch_no, reason=reason, message=message
        )
    )


@dataclass
class Served:
    """A scripted coordinator being served, and where."""

    coordinator: ScriptedCoordinator
    server: aio.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop serving: every stream breaks and connections are refused (a crash)."""
        await self.server.stop(grace=None)

    async def start(self) -> None:
        """Serve the same state on the same port again (the coordinator restarted)."""
        self.server, _ = await _serve(self.coordinator, self.port)


async def _serve(coordinator: ScriptedCoordinator, port: int) -> tuple[aio.Server, int]:
    server = aio.server()
    ws_grpc.add_WorkerServiceServicer_to_server(coordinator, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert port in (0, bound)
    await server.start()
    return server, bound


async def serve(coordinator: ScriptedCoordinator | None = None) -> Served:
    """Serve a scripted coordinator on 127.0.0.1, port 0."""
    coordinator = coordinator or ScriptedCoordinator()
    server, port = await _serve(coordinator, 0)
    return Served(coordinator, server, port)
