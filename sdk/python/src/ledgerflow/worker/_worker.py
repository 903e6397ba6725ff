"""The worker: one stream to a coordinator, workflow tasks on it, reconnects and drain.

A :class:`Worker` opens ``WorkerService.Connect``, says ``hello``, and runs each
``workflow_task`` it is given through the engine (``WorkflowExecution``), at most
``max_concurrent_tasks`` at once, sending each ``append`` of the engine as one
``event_batch`` and the engine's result as ``workflow_result``
(``docs/worker-protocol.md``).

Reconnect. When the stream breaks, running executions go on and their pending
appends simply wait: every batch and result not yet acknowledged is kept per task
(``_task``) and sent again, unchanged, on the next stream, right after the
``welcome`` whose ``hello`` claimed the tasks in ``held_tasks``. Reconnect delays
are exponential with full jitter, capped at a few seconds. Each attempt uses a new
channel: grpc's own channel reconnect backoff grows to two minutes, which would
override the cap (and a new channel resolves the address again, which finds
another coordinator behind a load balancer).

Dead streams. A coordinator answers every heartbeat; when no message at all has
come back for a lease duration after a heartbeat, the worker gives the stream up
and reconnects (TCP alone may not notice a silent network failure before the
leases expire).

Drain. A coordinator's ``drain`` ends the *session*: the worker takes no new task
from it, lets running ones finish until the deadline, releases the rest, closes
the stream and reconnects (to the same address, which after a restart or behind a
load balancer is another coordinator). :meth:`Worker.drain` (SIGTERM in the CLI)
ends the *worker* the same way, and then :meth:`Worker.run` returns. While a
worker drains, tasks still offered to it are held unstarted ("parked") and
released when the stream closes: releasing them at once would have the
coordinator, which knows nothing of a drain it did not start, offer them straight
back to this worker's free capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from ledgerflow.client._auth import bearer_metadata, channel_credentials
from ledgerflow.errors import (
    CoordinatorUnavailableError,
    InvalidArgumentError,
    NonDeterminismError,
    WorkerRefusedError,
    WorkflowNotFoundError,
    WorkflowUsageError,
)
from ledgerflow.ledger import check_id
from ledgerflow.v1 import step_pb2, worker_service_pb2_grpc, workflow_pb2
from ledgerflow.v1 import worker_service_pb2 as ws
from ledgerflow.worker._backoff import Backoff
from ledgerflow.worker._step import StepHandler, run_step
from ledgerflow.worker._task import Phase, StreamSink, TaskRefusedError, TaskState
from ledgerflow.workflow import Registry, WorkflowDefinition, WorkflowExecution

if TYPE_CHECKING:
    from ledgerflow.v1.worker_service_pb2_grpc import WorkerServiceAsyncStub

_log = logging.getLogger("ledgerflow.worker")

DEFAULT_MAX_CONCURRENT_TASKS = 10
"""Workflow tasks a worker runs at once unless told otherwise."""

DEFAULT_DRAIN_TIMEOUT = 10.0
"""Seconds :meth:`Worker.drain` lets running tasks finish before releasing them."""

DEFAULT_EVENT_LINGER = 0.005
"""Seconds a step's ``step_started`` waits for its result to travel with it.

A quick step then costs one round trip to the coordinator instead of two (measured:
per-step overhead p50 5.75 -> 4.1 ms, bench/workflows.py); a slower step's start
is committed this much later, which nothing waits for. The result itself never
lingers: the body is blocked on it.
"""

# Used until a welcome says otherwise (the protocol's defaults).
_DEFAULT_HEARTBEAT_INTERVAL = 2.0
_DEFAULT_LEASE_DURATION = 10.0
# A coordinator that accepted the stream but says nothing is as good as unreachable.
_WELCOME_TIMEOUT = 10.0
# After the worker half-closes, how long the coordinator has to end the stream.
_CLOSE_TIMEOUT = 5.0

# Statuses that end a stream before welcome and would end the next attempt the same way.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)

# Journals travel whole in workflow tasks; grpc's 4 MiB default would refuse a long run's.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.max_receive_message_length", -1),)

_Stub = worker_service_pb2_grpc.WorkerServiceStub


class _StreamBrokenError(Exception):
    """The stream ended or was given up; the worker reconnects."""


class _TaskStoppedError(Exception):
    """What pending appends of a task the worker stopped (released, superseded) raise."""


@dataclass(frozen=True, slots=True)
class _Drain:
    deadline: float  # loop.time()
    reason: str


class _Changes:
    """Wakes whoever waits for the held tasks or a drain to change (no lost wake-ups)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, within: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, within)
        finally:
            self._waiters.discard(waiter)


class _Session:
    """One welcomed stream: its outgoing queue and what the welcome said."""

    def __init__(self, call: aio.StreamStreamCall[Any, Any], welcome: ws.Welcome) -> None:
        self.call = call
        self.welcome = welcome
        self.heartbeat_interval = _seconds(welcome.heartbeat_interval, _DEFAULT_HEARTBEAT_INTERVAL)
        self.lease_duration = _seconds(welcome.lease_duration, _DEFAULT_LEASE_DURATION)
        self.outbox: asyncio.Queue[ws.ConnectRequest | None] = asyncio.Queue()
        self.unanswered_since: float | None = None
        self.drain: _Drain | None = None
        self.closing = False

    def send(self, request: ws.ConnectRequest) -> None:
        if not self.closing:
            self.outbox.put_nowait(request)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait(None)


class Worker:
    """Runs workflow tasks from a ledgerflow coordinator.

    Example::

        worker = Worker("127.0.0.1:7170", [checkout, refund_order])
        runner = asyncio.create_task(worker.run())
        await worker.wait_connected()
        ...
        worker.drain()  # finish or hand back the running tasks, then run() returns
        await runner

    The constructor does no I/O and needs no event loop, so a module can create a
    worker at import time for ``ledgerflow worker module:worker``.

    Attributes:
        worker_id: A UUID, new for each ``Worker``, stable across its reconnects.
        identity: The human-readable name sent in ``hello`` (``host:pid`` by default).
        address: The coordinator's ``host:port``.
        registry: The workflows served.
        max_concurrent_tasks: The most workflow tasks run at once.
        namespace: The namespace whose runs' tasks the worker asks for (sent in
            ``hello``); None names none.
    """

    def __init__(
        self,
        address: str,
        workflows: Registry | WorkflowDefinition[Any, Any] | Iterable[WorkflowDefinition[Any, Any]],
        *,
        max_concurrent_tasks: int = DEFAULT_MAX_CONCURRENT_TASKS,
        identity: str = "",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        namespace: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        tls: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        reconnect_initial_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
        event_linger: float = DEFAULT_EVENT_LINGER,
        steps: Mapping[str, StepHandler] | None = None,
    ) -> None:
        """Configure a worker; nothing connects before :meth:`run`.

        Args:
            address: The coordinator's ``host:port``.
            workflows: A ``Registry``, one definition, or definitions to serve.
            max_concurrent_tasks: The most workflow tasks run at once (sent in ``hello``).
            identity: A name for people, e.g. a pod name; empty means ``host:pid``.
            drain_timeout: Seconds :meth:`drain` lets running tasks finish by default.
            namespace: Run only tasks of runs in this namespace (sent in ``hello``);
                None (or empty) names none: the token's namespace when the token is
                confined to one, else every namespace. The coordinator validates it.
            credentials: TLS credentials (custom root certificates, or a client
                certificate for mutual TLS); None for a plaintext channel unless ``tls``.
            token: A bearer token with the ``worker`` scope, for a coordinator started
                with ``--auth-tokens``; None sends none.
            tls: Connect over TLS verified against the system's root certificates
                (ignored when ``credentials`` is given).
            options: Extra grpc channel options.
            reconnect_initial_delay: Ceiling of the first reconnect delay, in seconds.
            reconnect_max_delay: Largest reconnect delay, in seconds.
            event_linger: Seconds a batch of events nobody waits for (a step's
                ``step_started``, log lines, progress) may wait for one somebody waits
                for (the step's result) before it is sent alone; see
                :data:`DEFAULT_EVENT_LINGER`. 0 sends every batch at once.
            steps: Step handlers by worker kind: ``handler(input, ctx)`` runs each step
                a workflow body sends with ``ctx.step(name, input, worker_kind=KIND)``
                (sync handlers in a thread); see ``ledgerflow.worker.StepContext``.

        Raises:
            InvalidArgumentError: No workflow to serve, or a number out of range.
            WorkflowUsageError: Two different workflows share a name and version.
        """
        if isinstance(workflows, Registry):
            registry = workflows
        elif isinstance(workflows, WorkflowDefinition):
            registry = Registry([workflows])
        else:
            registry = Registry(workflows)
        step_handlers = dict(steps or {})
        if not len(registry) and not step_handlers:
            raise InvalidArgumentError(
                "workflows", "a worker needs at least one workflow (or step handler)"
            )
        for kind in step_handlers:
            check_id(kind, "steps")
        if max_concurrent_tasks < 1:
            raise InvalidArgumentError("max_concurrent_tasks", "must be at least 1")
        if drain_timeout < 0:
            raise InvalidArgumentError("drain_timeout", "must not be negative")
        if not 0 <= event_linger <= 1:
            raise InvalidArgumentError("event_linger", "must be between 0 and 1 second")
        if not 0 < reconnect_initial_delay <= reconnect_max_delay:
            raise InvalidArgumentError(
                "reconnect_initial_delay",
                "must be positive and at most reconnect_max_delay",
            )
        self.worker_id = str(uuid.uuid4())
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.address = address
        self.registry = registry
        self.max_concurrent_tasks = max_concurrent_tasks
        self.namespace = namespace or None
        self._drain_timeout = drain_timeout
        self._credentials = channel_credentials(credentials, tls)
        self._metadata = bearer_metadata(token)
        self._options = [*_CHANNEL_OPTIONS, *options]
        self._backoff = Backoff(reconnect_initial_delay, reconnect_max_delay)
        self._event_linger = event_linger
        self.steps = step_handlers

        self._tasks: dict[str, TaskState] = {}
        self._session: _Session | None = None
        self._welcome: ws.Welcome | None = None
        self._changes = _Changes()
        self._connected = asyncio.Event()
        self._finished = asyncio.Event()
        self._drain: _Drain | None = None
        self._early_drain: tuple[float, str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._started = False
        self._last_session_drained = False

    # -- public ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a welcomed stream is up right now."""
        return self._session is not None

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` (or :meth:`stop`) was called."""
        return self._drain is not None or self._early_drain is not None

    async def run(self) -> None:
        """Serve until drained: connect, run tasks, reconnect whenever the stream breaks.

        Returns once :meth:`drain` or :meth:`stop` has finished or released every
        task and closed the stream. Cancelling the coroutine instead stops at once
        and hands nothing back, like a crash: the tasks' leases expire and the
        coordinator dispatches them again.

        Raises:
            WorkerRefusedError: The coordinator refused the session for good (e.g.
                ``INVALID_ARGUMENT`` on ``hello``, ``UNIMPLEMENTED``).
            WorkflowUsageError: ``run`` was called before.
        """
        if self._started:
            raise WorkflowUsageError("Worker.run() may be called only once")
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        if self._early_drain is not None:
            seconds, reason = self._early_drain
            self._drain = _Drain(loop.time() + seconds, reason)
        _log.info(
            "worker %s (%s) serving %s; coordinator %s%s",
            self.worker_id,
            self.identity,
            ", ".join(_registration_name(d) for d in self.registry),
            self.address,
            f"; namespace {self.namespace}" if self.namespace else "",
        )
        try:
            while not self._drained():
                problem = ""
                try:
                    await self._connect_and_serve()
                except _StreamBrokenError as err:
                    problem = str(err)
                if self._drained():
                    break
                drain = self._drain
                if drain is not None and loop.time() >= drain.deadline:
                    # Not connected at the deadline: nothing can be handed back; the
                    # leases expire and the tasks are dispatched again.
                    _log.warning(
                        "drain deadline passed while disconnected; abandoning %d task(s)",
                        len(self._tasks),
                    )
                    break
                delay = self._backoff.next_delay()
                if problem:
                    _log.warning(
                        "no stream to the coordinator at %s (%s); reconnecting in %.2fs",
                        self.address,
                        problem,
                        delay,
                    )
                await self._pause(delay)
        finally:
            await self._abandon_all()
            self._finished.set()
        _log.info("worker %s stopped", self.worker_id)

    async def wait_connected(self) -> ws.Welcome:
        """Wait until a stream is welcomed (now, if one is up).

        Returns:
            The coordinator's latest ``welcome``.

        Raises:
            CoordinatorUnavailableError: :meth:`run` ended before a stream was up.
        """
        connected = asyncio.ensure_future(self._connected.wait())
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait({connected, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            finished.cancel()
        if self._session is None or self._welcome is None:
            raise CoordinatorUnavailableError(
                f"the worker stopped before connecting to {self.address}"
            )
        return self._welcome

    def drain(self, timeout: float | None = None, *, reason: str = "") -> None:
        """Stop taking tasks, let running ones finish, release the rest, close; ``run`` returns.

        Safe to call from any thread and from a handler installed with
        ``loop.add_signal_handler``; calling again can only bring the deadline closer.

        Args:
            timeout: Seconds running tasks get to finish; None uses the constructor's
                ``drain_timeout``; 0 releases them at once.
            reason: Sent as the release reason of tasks handed back.
        """
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            with contextlib.suppress(RuntimeError):  # A closed loop: run() is over.
                loop.call_soon_threadsafe(lambda: self.drain(timeout, reason=reason))
            return
        seconds = self._drain_timeout if timeout is None else max(0.0, timeout)
        why = reason or "the worker is shutting down"
        if loop is None:
            if self._early_drain is None or seconds < self._early_drain[0]:
                self._early_drain = (seconds, why)
            return
        deadline = loop.time() + seconds
        if self._drain is None or deadline < self._drain.deadline:
            if self._drain is None:
                _log.info("draining (%gs for running tasks): %s", seconds, why)
            self._drain = _Drain(deadline, why)
            self._changes.notify()

    def stop(self) -> None:
        """Release every task now and close: ``drain(timeout=0)``."""
        self.drain(0)

    # -- the connection loop ----------------------------------------------------------------

    def _drained(self) -> bool:
        return self._drain is not None and not self._tasks

    async def _pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self._drained():
            drain = self._drain
            until = min(end, drain.deadline) if drain is not None else end
            if loop.time() >= until:
                return
            await self._changes.wait(until - loop.time())

    def _open_channel(self) -> aio.Channel:
        if self._credentials is None:
            return aio.insecure_channel(self.address, options=self._options)
        return aio.secure_channel(self.address, self._credentials, options=self._options)

    async def _connect_and_serve(self) -> None:
        channel = self._open_channel()
        stub: WorkerServiceAsyncStub = _Stub(channel)
        call = stub.Connect(metadata=self._metadata)
        try:
            welcome = await self._handshake(call)
            session = _Session(call, welcome)
            if not self._last_session_drained:
                # A coordinator that welcomes and drains again and again (it is shutting
                # down) is not a healthy connection: keep backing off from it.
                self._backoff.reset()
            _log.info(
                "connected to coordinator %s at %s (session %s)",
                welcome.coordinator_id,
                self.address,
                welcome.session_id,
            )
            self._go_live(session, welcome)
            try:
                await self._serve(session)
            finally:
                self._session = None
                self._connected.clear()
                self._last_session_drained = session.drain is not None
        finally:
            call.cancel()
            await channel.close(None)

    async def _handshake(self, call: aio.StreamStreamCall[Any, Any]) -> ws.Welcome:
        try:
            await call.write(ws.ConnectRequest(hello=self._hello()))
            reply = await asyncio.wait_for(call.read(), _WELCOME_TIMEOUT)
        except TimeoutError:
            raise _StreamBrokenError(f"no welcome within {_WELCOME_TIMEOUT:g}s") from None
        except aio.AioRpcError as err:
            raise self._refusal(err.code(), err.details() or "") from err
        except asyncio.InvalidStateError:
            reply = aio.EOF
        if reply is aio.EOF:
            raise self._refusal(await call.code(), await call.details())
        assert isinstance(reply, ws.ConnectResponse)
        kind = reply.WhichOneof("message")
        if kind != "welcome":
            raise _StreamBrokenError(f"the coordinator answered hello with {kind}, not welcome")
        return reply.welcome

    def _refusal(self, code: grpc.StatusCode, details: str) -> Exception:
        if code in _REFUSALS:
            return WorkerRefusedError(code.name, details, address=self.address)
        return _StreamBrokenError(f"{code.name}: {details}" if details else code.name)

    def _hello(self) -> ws.WorkerHello:
        return ws.WorkerHello(
            worker_id=self.worker_id,
            identity=self.identity,
            language="python",
            sdk_version=_sdk_version(),
            workflows=[
                ws.WorkflowRegistration(name=d.name, version=d.version) for d in self.registry
            ],
            step_kinds=sorted(self.steps),
            max_concurrent_tasks=self.max_concurrent_tasks,
            namespace=self.namespace or "",
            held_tasks=[
                ws.HeldTask(task_id=s.task_id, lease_epoch=s.epoch) for s in self._tasks.values()
            ],
        )

    def _go_live(self, session: _Session, welcome: ws.Welcome) -> None:
        # Everything still owed goes first, in the order it was first sent, before any
        # new message: the coordinator appends batches in the order it receives them.
        for state in list(self._tasks.values()):
            for request in state.owed():
                session.send(request)
            if state.phase is Phase.RELEASING:
                self._forget(state)
        self._session = session
        self._welcome = welcome
        self._connected.set()
        self._changes.notify()

    async def _serve(self, session: _Session) -> None:
        loops = [
            asyncio.create_task(self._read_loop(session)),
            asyncio.create_task(self._write_loop(session)),
            asyncio.create_task(self._heartbeat_loop(session)),
            asyncio.create_task(self._drain_loop(session)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _read_loop(self, session: _Session) -> None:
        while True:
            try:
                message = await session.call.read()
            except aio.AioRpcError as err:
                details = err.details() or ""
                raise _StreamBrokenError(f"{err.code().name}: {details}") from err
            if message is aio.EOF:
                if session.closing:
                    return  # The coordinator ended the stream the worker closed.
                raise _StreamBrokenError("the coordinator ended the stream")
            assert isinstance(message, ws.ConnectResponse)
            session.unanswered_since = None
            try:
                self._on_message(session, message)
            except Exception:
                # A bug handling one message must not take the worker and every task down.
                _log.exception("could not handle a %s message", message.WhichOneof("message"))

    async def _write_loop(self, session: _Session) -> None:
        try:
            while True:
                request = await session.outbox.get()
                if request is None:
                    await session.call.done_writing()
                    # Half-closed: the read loop waits for the coordinator to end the stream.
                    await asyncio.get_running_loop().create_future()
                await session.call.write(request)
        except (aio.AioRpcError, asyncio.InvalidStateError) as err:
            raise _StreamBrokenError(f"cannot write to the stream: {err}") from err

    async def _heartbeat_loop(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(session.heartbeat_interval)
            now = loop.time()
            since = session.unanswered_since
            if since is not None and now - since > session.lease_duration:
                raise _StreamBrokenError(
                    f"no message from the coordinator for {now - since:.1f}s after a heartbeat"
                )
            if since is None:
                session.unanswered_since = now
            session.send(
                ws.ConnectRequest(
                    heartbeat=ws.Heartbeat(
                        tasks=[
                            ws.TaskHeartbeat(task_id=s.task_id, lease_epoch=s.epoch)
                            for s in self._tasks.values()
                        ]
                    )
                )
            )

    async def _drain_loop(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            drain = self._session_drain(session)
            if drain is not None:
                active = any(s.active for s in self._tasks.values())
                if not active or loop.time() >= drain.deadline:
                    break
                await self._changes.wait(drain.deadline - loop.time())
            else:
                await self._changes.wait(None)
        assert drain is not None
        for state in list(self._tasks.values()):
            self._release(state, f"draining: {drain.reason}")
        session.close()
        await asyncio.sleep(_CLOSE_TIMEOUT)
        raise _StreamBrokenError("the coordinator did not end the stream the worker closed")

    def _session_drain(self, session: _Session) -> _Drain | None:
        drains = [d for d in (self._drain, session.drain) if d is not None]
        return min(drains, key=lambda d: d.deadline) if drains else None

    # -- messages from the coordinator ------------------------------------------------------

    def _on_message(self, session: _Session, message: ws.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "workflow_task":
            self._accept(session, message.workflow_task)
        elif kind == "event_batch_ack":
            ack = message.event_batch_ack
            state = self._held(ack.task_id, ack.lease_epoch)
            if state is not None:
                state.batch_acked(ack.batch_no)
        elif kind == "task_result_ack":
            result_ack = message.task_result_ack
            state = self._held(result_ack.task_id, result_ack.lease_epoch)
            if state is not None and state.phase is Phase.REPORTING:
                state.result_acknowledged()
        elif kind == "task_rejected":
            self._on_rejected(message.task_rejected)
        elif kind == "heartbeat_ack":
            for lease in message.heartbeat_ack.leases:
                state = self._held(lease.task_id, lease.lease_epoch)
                if state is not None and lease.cancel_requested:
                    self._cancel(state, "")
        elif kind == "cancel_task":
            state = self._tasks.get(message.cancel_task.task_id)
            if state is not None:
                self._cancel(state, message.cancel_task.reason)
        elif kind == "drain":
            self._on_drain(session, message.drain)
        elif kind == "step_task":
            self._accept_step(session, message.step_task)
        else:
            _log.debug("ignored a %s message from the coordinator", kind)

    def _held(self, task_id: str, epoch: int) -> TaskState | None:
        state = self._tasks.get(task_id)
        return state if state is not None and state.epoch == epoch else None

    def _accept(self, session: _Session, task: workflow_pb2.WorkflowTask) -> None:
        existing = self._tasks.get(task.task_id)
        if existing is not None:
            if task.lease_epoch <= existing.epoch:
                _log.warning(
                    "task %s (epoch %d) was dispatched twice", task.task_id, task.lease_epoch
                )
                return
            # A newer epoch of a task this worker still runs: its lease was lost.
            _log.warning(
                "task %s was dispatched again with epoch %d; dropping epoch %d",
                task.task_id,
                task.lease_epoch,
                existing.epoch,
            )
            self._drop(existing, _TaskStoppedError("superseded by a newer epoch"))
        state = TaskState(task, Phase.RUNNING)
        self._tasks[task.task_id] = state
        if self._drain is not None:
            state.phase = Phase.PARKED
            self._changes.notify()
            return
        reason = ""
        definition: WorkflowDefinition[Any, Any] | None = None
        busy = sum(1 for s in self._tasks.values() if s.active and s is not state)
        if session.drain is not None:
            reason = f"draining: {session.drain.reason}"
        elif busy >= self.max_concurrent_tasks:
            reason = f"the worker already runs {busy} tasks (max_concurrent_tasks)"
        else:
            try:
                definition = self.registry.get(task.workflow_name, task.workflow_version)
            except WorkflowNotFoundError as err:
                reason = str(err)
        if definition is None:
            self._release(state, reason)
            return
        try:
            state.execution = WorkflowExecution(
                definition,
                task,
                StreamSink(state, self._send),
                worker_id=self.worker_id,
                linger=self._event_linger,
            )
        except Exception as err:
            _log.exception("task %s: cannot start workflow %r", task.task_id, task.workflow_name)
            self._release(state, f"{type(err).__name__}: {err}")
            return
        state.runner = asyncio.get_running_loop().create_task(
            self._run_task(state), name=f"ledgerflow task {task.task_id}"
        )
        self._changes.notify()

    def _accept_step(self, session: _Session, request: step_pb2.StepRequest) -> None:
        existing = self._tasks.get(request.task_id)
        if existing is not None:
            if request.lease_epoch <= existing.epoch:
                return  # dispatched twice: the first one runs
            self._drop(existing, _TaskStoppedError("superseded by a newer epoch"))
        state = TaskState(request, Phase.RUNNING)
        self._tasks[request.task_id] = state
        handler = self.steps.get(request.worker_kind)
        busy = sum(1 for s in self._tasks.values() if s.active and s is not state)
        reason = ""
        if self._drain is not None or session.drain is not None:
            reason = "draining"
        elif busy >= self.max_concurrent_tasks:
            reason = f"the worker already runs {busy} tasks (max_concurrent_tasks)"
        elif handler is None:
            reason = f"this worker runs no step of kind {request.worker_kind!r}"
        if handler is None or reason:
            self._release(state, reason)
            return
        state.runner = asyncio.get_running_loop().create_task(
            self._run_step_task(state, request, handler),
            name=f"ledgerflow step task {request.task_id}",
        )
        self._changes.notify()

    async def _run_step_task(
        self, state: TaskState, request: step_pb2.StepRequest, handler: StepHandler
    ) -> None:
        try:
            result = await run_step(
                request, handler, StreamSink(state, self._send), state.cancelled
            )
        except (TaskRefusedError, _TaskStoppedError):
            return
        except Exception as err:
            _log.exception("step %s of run %s: the task failed", request.step_id, request.run_id)
            self._release(state, f"{type(err).__name__}: {err}", failed=True)
            return
        if await self._report(state, result):
            self._forget(state)

    def _on_rejected(self, rejected: ws.TaskRejected) -> None:
        state = self._held(rejected.task_id, rejected.lease_epoch)
        if state is None:
            return  # About an epoch this worker no longer holds.
        refusal = TaskRefusedError(rejected)
        if refusal.loses_task:
            if state.phase is Phase.REPORTING:
                # Usual after a reconnect: the result was committed, its ack was lost.
                _log.info("%s; the task's result was sent, the task is done here", refusal)
            else:
                _log.warning("%s; the task is dropped", refusal)
            self._drop(state, refusal)
        else:
            # The task fails, not the run (as for NonDeterminismError): hand it back.
            _log.error("%s; the task is handed back", refusal)
            self._release(state, str(refusal), refusal, failed=True)

    def _on_drain(self, session: _Session, drain: ws.Drain) -> None:
        loop = asyncio.get_running_loop()
        if drain.HasField("deadline_time"):
            seconds = max(0.0, (drain.deadline_time.ToNanoseconds() - time.time_ns()) / 1e9)
        else:
            seconds = self._drain_timeout
        why = drain.reason or "the coordinator is shutting down"
        _log.info("the coordinator asks to drain within %gs: %s", seconds, why)
        deadline = loop.time() + seconds
        if session.drain is None or deadline < session.drain.deadline:
            session.drain = _Drain(deadline, why)
        self._changes.notify()

    def _cancel(self, state: TaskState, reason: str) -> None:
        if state.execution is not None and state.phase is Phase.RUNNING:
            state.execution.cancel(reason)
        elif state.phase is Phase.RUNNING:
            state.cancelled.set()  # a step task: its handler is stopped

    # -- tasks ------------------------------------------------------------------------------

    def _send(self, request: ws.ConnectRequest) -> None:
        # Without a live stream the message stays owed in its task and is resent later.
        session = self._session
        if session is not None:
            session.send(request)

    async def _run_task(self, state: TaskState) -> None:
        execution = state.execution
        assert execution is not None
        task = state.task
        assert isinstance(task, workflow_pb2.WorkflowTask)
        try:
            result = await execution.run()
        except (TaskRefusedError, _TaskStoppedError):
            return  # Whoever refused or stopped the task dealt with it.
        except NonDeterminismError as err:
            _log.error(
                "workflow %r, run %s: %s; the task is handed back",
                task.workflow_name,
                task.run_id,
                err,
            )
            self._release(state, f"NonDeterminismError: {err}", failed=True)
            return
        except Exception as err:
            _log.exception("workflow %r, run %s: the task failed", task.workflow_name, task.run_id)
            self._release(state, f"{type(err).__name__}: {err}", failed=True)
            return
        if not await self._report(state, result):
            return
        _log.debug(
            "task %s done: %s", task.task_id, workflow_pb2.WorkflowOutcome.Name(result.outcome)
        )
        self._forget(state)

    async def _report(
        self, state: TaskState, result: workflow_pb2.WorkflowTaskResult | step_pb2.StepResult
    ) -> bool:
        """Send a task's result (kept until acknowledged); True once the ack came."""
        if self._tasks.get(state.task_id) is not state or state.phase is not Phase.RUNNING:
            return False
        acked = state.report(result)
        assert state.result is not None
        self._send(state.result)
        try:
            await acked
        except (TaskRefusedError, _TaskStoppedError):
            return False
        return True

    def _release(
        self,
        state: TaskState,
        reason: str,
        cause: BaseException | None = None,
        *,
        failed: bool = False,
    ) -> None:
        """Stop the task and hand it back (now if a stream is up, else after the next welcome).

        ``failed``: this worker could not run it (the coordinator backs off), as
        opposed to handing it back unstarted (draining, a workflow not served here).
        """
        self._stop_runner(state, cause or _TaskStoppedError(reason))
        request = state.releasing(reason, failed=failed)
        _log.info("released task %s (run %s): %s", state.task_id, state.task.run_id, reason)
        if self._session is not None:
            self._session.send(request)
            self._forget(state)
        else:
            self._changes.notify()

    def _drop(self, state: TaskState, cause: BaseException) -> None:
        """Stop the task and send nothing more about it."""
        self._stop_runner(state, cause)
        self._forget(state)

    def _stop_runner(self, state: TaskState, cause: BaseException) -> None:
        # Cancelling the run() coroutine abandons the execution at once: nothing is
        # compensated or appended; a sync step's thread runs on, but the engine drops
        # whatever it emits after run() ended.
        runner = state.runner
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            runner.cancel()
        state.stop(cause)

    def _forget(self, state: TaskState) -> None:
        if self._tasks.get(state.task_id) is state:
            del self._tasks[state.task_id]
        self._changes.notify()

    async def _abandon_all(self) -> None:
        runners = [s.runner for s in self._tasks.values() if s.runner is not None]
        for state in list(self._tasks.values()):
            self._drop(state, _TaskStoppedError("the worker stopped"))
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)


def _seconds(duration: Duration, default: float) -> float:
    seconds = duration.ToTimedelta().total_seconds()
    return seconds if seconds > 0 else default


def _registration_name(definition: WorkflowDefinition[Any, Any]) -> str:
    return f"{definition.name}@{definition.version}" if definition.version else definition.name


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("ledgerflow")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
