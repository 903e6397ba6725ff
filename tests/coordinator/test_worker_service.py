"""WorkerService through a real in-process grpc.aio server: sessions, dispatch, leases, fencing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api._worker_service import LeaseConfig
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1 import worker_service_pb2 as wpb
from ledgerflow.v1 import workflow_pb2
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from ledgerflow.v1.worker_service_pb2_grpc import WorkerServiceStub
from tests.coordinator.test_run_service import ev


def coordinator_config(
    db_url: str, lease: float = 30.0, heartbeat: float | None = None
) -> ServerConfig:
    return ServerConfig(
        listen="127.0.0.1:0",
        database_url=db_url,
        shutdown_grace=2,
        leases=LeaseConfig(lease_seconds=lease, heartbeat_seconds=heartbeat or lease / 5),
    )


# A bug must fail a test, not hang it: no read waits longer than this.
DEADLINE = 20.0


@pytest.fixture
async def coordinator(db_url: str) -> AsyncIterator[Coordinator]:
    c = Coordinator(coordinator_config(db_url))
    await c.start()
    yield c
    await c.stop()


class FakeWorker:
    """A worker driven by hand: a real Connect stream, messages sent and read explicitly.

    Like every worker it heartbeats each ``heartbeat_interval`` of its ``welcome``
    (the coordinator passes over a session it has not heard from in three). These
    heartbeats list only the tasks given to :meth:`keep`, so a test still decides
    which leases are renewed, and :meth:`read` skips their acks. :meth:`go_silent`
    stops them, as stopping the process would.
    """

    def __init__(self, channel: grpc.aio.Channel, worker_id: str = "w1") -> None:
        self.worker_id = worker_id
        self.call: Any = WorkerServiceStub(channel).Connect()
        self.kept: list[wpb.TaskHeartbeat] = []
        self._interval = 0.0
        self._beater: asyncio.Task[None] | None = None
        self._silent = asyncio.Event()
        self._writing = asyncio.Lock()  # the heartbeats and the test write the same stream

    async def hello(self, *workflows: str, capacity: int = 1, held: tuple[Any, ...] = ()) -> Any:
        await self.send(
            hello=wpb.WorkerHello(
                worker_id=self.worker_id,
                language="python",
                workflows=[wpb.WorkflowRegistration(name=w) for w in workflows],
                max_concurrent_tasks=capacity,
                held_tasks=list(held),
            )
        )
        welcome = (await self.read("welcome")).welcome
        self._interval = welcome.heartbeat_interval.ToNanoseconds() / 1e9
        self.resume()
        return welcome

    def keep(self, task: Any) -> None:
        """List ``task`` in the heartbeats from now on: its lease is renewed."""
        self.kept.append(wpb.TaskHeartbeat(task_id=task.task_id, lease_epoch=task.lease_epoch))

    def resume(self) -> None:
        """Heartbeat every interval (started by :meth:`hello`)."""
        if self._beater is None:
            self._silent = asyncio.Event()
            self._beater = asyncio.create_task(self._beat(self._silent))

    async def go_silent(self) -> None:
        """Stop heartbeating; returns once no heartbeat can be sent any more."""
        if self._beater is not None:
            # Not Task.cancel(): cancelling a write in progress cancels the whole call.
            self._silent.set()
            await self._beater
            self._beater = None

    async def _beat(self, silent: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(silent.wait(), self._interval)
            if silent.is_set():
                return
            try:
                await self.send(heartbeat=wpb.Heartbeat(tasks=self.kept))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                return  # the stream ended: the test is over or broke it on purpose

    async def read(self, case: str) -> Any:
        """The next message, which must be ``case``; heartbeat acks are skipped unless asked for."""
        async with asyncio.timeout(DEADLINE):
            message = await self.call.read()
            while (
                message is not grpc.aio.EOF
                and message.WhichOneof("message") == "heartbeat_ack"
                and case != "heartbeat_ack"
            ):
                message = await self.call.read()
        assert message is not grpc.aio.EOF, f"stream ended waiting for {case}"
        assert message.WhichOneof("message") == case, message
        return message

    async def send(self, **fields: Any) -> None:
        async with self._writing:
            await self.call.write(wpb.ConnectRequest(**fields))

    async def close(self) -> None:
        """Stop heartbeating and cancel the stream (to the coordinator: the stream broke)."""
        await self.go_silent()
        self.call.cancel()


async def test_a_workflow_task_runs_end_to_end(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        runs = RunServiceStub(channel)
        worker = FakeWorker(channel)
        welcome = await worker.hello("wf")
        assert welcome.lease_duration.seconds == 30
        assert welcome.max_payload_bytes > 0
        await runs.StartRun(
            rpb.StartRunRequest(workflow_name="wf", run_id="r1", input=json_payload({"n": 2}))
        )
        task = (await worker.read("workflow_task")).workflow_task
        assert (task.run_id, task.lease_epoch, task.invocation) == ("r1", 1, 1)
        assert payload_value(task.input) == {"n": 2}
        # run_id may be left empty: the coordinator fills in the task's run.
        step = ev("", "step_started", step_id="double")
        log = ev("", "log_appended", lines=["a", "b"], channel="workflow", channel_offset=0)
        done = ev("", "step_completed", step_id="double", output=json_payload(4))
        await worker.send(
            event_batch=wpb.EventBatch(
                task_id=task.task_id, lease_epoch=1, batch_no=1, events=[step, log]
            )
        )
        ack = (await worker.read("event_batch_ack")).event_batch_ack
        assert (ack.batch_no, ack.duplicate) == (1, False)
        assert [(c.channel, c.next_offset) for c in ack.log_cursors] == [("workflow", 2)]
        await worker.send(
            event_batch=wpb.EventBatch(
                task_id=task.task_id, lease_epoch=1, batch_no=2, events=[done]
            )
        )
        # A resend of batch 1 after a "reconnect": acknowledged, not appended again.
        await worker.send(
            event_batch=wpb.EventBatch(
                task_id=task.task_id, lease_epoch=1, batch_no=1, events=[step, log]
            )
        )
        second = (await worker.read("event_batch_ack")).event_batch_ack
        resent = (await worker.read("event_batch_ack")).event_batch_ack
        assert (second.batch_no, resent.batch_no, resent.duplicate) == (2, 1, True)
        await worker.send(
            workflow_result=workflow_pb2.WorkflowTaskResult(
                task_id=task.task_id,
                lease_epoch=1,
                run_id="r1",
                outcome=workflow_pb2.WORKFLOW_OUTCOME_COMPLETED,
                output=json_payload(4),
            )
        )
        result_ack = (await worker.read("task_result_ack")).task_result_ack
        snap = (await runs.GetRun(rpb.GetRunRequest(run_id="r1"))).run
        assert snap.status == pb.RUN_STATUS_COMPLETED
        assert payload_value(snap.result) == 4
        assert result_ack.committed_seq == snap.last_seq
        events = (await runs.GetEvents(rpb.GetEventsRequest(run_id="r1"))).events
        assert [e.WhichOneof("payload") for e in events] == [
            "run_created",
            "run_started",
            "step_started",
            "log_appended",
            "step_completed",
            "run_completed",
        ]
        await worker.close()


async def test_the_first_message_must_be_a_valid_hello(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        for first, field in (
            (wpb.ConnectRequest(heartbeat=wpb.Heartbeat()), "hello"),
            (
                wpb.ConnectRequest(hello=wpb.WorkerHello(worker_id="w", max_concurrent_tasks=1)),
                "hello.workflows",
            ),
            (
                wpb.ConnectRequest(
                    hello=wpb.WorkerHello(
                        worker_id="w", workflows=[wpb.WorkflowRegistration(name="wf")]
                    )
                ),
                "hello.max_concurrent_tasks",
            ),
        ):
            call = WorkerServiceStub(channel).Connect()
            await call.write(first)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (info.value.details() or "")


async def test_capacity_limits_what_a_session_gets(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        runs = RunServiceStub(channel)
        worker = FakeWorker(channel)
        await worker.hello("wf", capacity=2)
        for i in range(3):
            await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id=f"r{i}"))
        first = (await worker.read("workflow_task")).workflow_task
        second = (await worker.read("workflow_task")).workflow_task
        # Releasing one frees capacity: the third run's task arrives.
        await worker.send(release=wpb.TaskRelease(task_id=first.task_id, lease_epoch=1))
        third = (await worker.read("workflow_task")).workflow_task
        # Oldest available first: the third run, then (not here: full) the released one.
        assert {first.run_id, second.run_id} == {"r0", "r1"}
        assert third.run_id == "r2"
        await worker.close()


async def test_bad_batches_are_refused_with_a_reason(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        runs = RunServiceStub(channel)
        worker = FakeWorker(channel)
        await worker.hello("wf")
        await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
        task = (await worker.read("workflow_task")).workflow_task
        for events, reason, where in (
            ([ev("", "run_completed")], wpb.TASK_REJECT_REASON_INVALID, "events[0]"),
            ([ev("", "step_started", step_id="")], wpb.TASK_REJECT_REASON_INVALID, "step_id"),
        ):
            await worker.send(
                event_batch=wpb.EventBatch(
                    task_id=task.task_id, lease_epoch=1, batch_no=1, events=events
                )
            )
            rejected = (await worker.read("task_rejected")).task_rejected
            assert (rejected.reason, rejected.batch_no) == (reason, 1)
            assert where in rejected.message
        await worker.send(
            event_batch=wpb.EventBatch(
                task_id=task.task_id,
                lease_epoch=7,
                batch_no=1,
                events=[ev("", "step_started", step_id="s")],
            )
        )
        stale = (await worker.read("task_rejected")).task_rejected
        assert stale.reason == wpb.TASK_REJECT_REASON_STALE_LEASE
        snap = (await runs.GetRun(rpb.GetRunRequest(run_id="r1"))).run
        assert snap.last_seq == 2  # run_created, run_started: nothing refused got in
        await worker.close()


async def test_cancel_reaches_the_worker_holding_the_run(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        runs = RunServiceStub(channel)
        worker = FakeWorker(channel)
        await worker.hello("wf")
        await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
        task = (await worker.read("workflow_task")).workflow_task
        await runs.CancelRun(rpb.CancelRunRequest(run_id="r1", reason="enough"))
        cancel = (await worker.read("cancel_task")).cancel_task
        assert (cancel.task_id, cancel.run_id, cancel.reason) == (task.task_id, "r1", "enough")
        await worker.send(
            heartbeat=wpb.Heartbeat(tasks=[wpb.TaskHeartbeat(task_id=task.task_id, lease_epoch=1)])
        )
        ack = (await worker.read("heartbeat_ack")).heartbeat_ack
        while not ack.leases:  # the ack of an idle heartbeat sent meanwhile
            ack = (await worker.read("heartbeat_ack")).heartbeat_ack
        assert [(lease.task_id, lease.cancel_requested) for lease in ack.leases] == [
            (task.task_id, True)
        ]
        await worker.close()


async def test_an_expired_lease_goes_to_another_worker_and_fences_the_first(db_url: str) -> None:
    # A session heard from in none of the last three heartbeats (0.15 s) is passed over.
    c = Coordinator(coordinator_config(db_url, lease=1.0, heartbeat=0.05))
    await c.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as channel:
            runs = RunServiceStub(channel)
            slow = FakeWorker(channel, "slow")
            # Room for a second task: a session still counted live would be handed its
            # own expired task straight back.
            await slow.hello("wf", "wf2", capacity=2)
            await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
            first = (await slow.read("workflow_task")).workflow_task
            # The slow worker renews its lease a last time, then says nothing (like a
            # stopped process whose stream stays open): silent before the lease ends.
            await slow.go_silent()
            await slow.send(
                heartbeat=wpb.Heartbeat(
                    tasks=[wpb.TaskHeartbeat(task_id=first.task_id, lease_epoch=1)]
                )
            )
            renewed = (await slow.read("heartbeat_ack")).heartbeat_ack
            while not renewed.leases:  # the ack of an idle heartbeat sent before
                renewed = (await slow.read("heartbeat_ack")).heartbeat_ack
            assert [(lease.task_id, lease.lease_epoch) for lease in renewed.leases] == [
                (first.task_id, 1)
            ]
            # A second worker arrives and, once the lease ends, gets the task under epoch 2.
            fresh = FakeWorker(channel, "fresh")
            await fresh.hello("wf")
            second = (await fresh.read("workflow_task")).workflow_task
            fresh.keep(second)
            assert (second.task_id, second.lease_epoch) == (first.task_id, 2)
            assert second.invocation == 2
            # The slow session was told when its lease expired ...
            lapsed = (await slow.read("task_rejected")).task_rejected
            assert (lapsed.task_id, lapsed.lease_epoch, lapsed.batch_no, lapsed.reason) == (
                first.task_id,
                1,
                0,
                wpb.TASK_REJECT_REASON_STALE_LEASE,
            )
            # ... and when the worker wakes up and appends under epoch 1, it is refused.
            await slow.send(
                event_batch=wpb.EventBatch(
                    task_id=first.task_id,
                    lease_epoch=1,
                    batch_no=1,
                    events=[ev("", "step_started", step_id="late")],
                )
            )
            stale = (await slow.read("task_rejected")).task_rejected
            assert (stale.batch_no, stale.reason) == (1, wpb.TASK_REJECT_REASON_STALE_LEASE)
            events = (await runs.GetEvents(rpb.GetEventsRequest(run_id="r1"))).events
            assert "step_started" not in [e.WhichOneof("payload") for e in events]
            assert [e.run_started.invocation for e in events if e.HasField("run_started")] == [1, 2]
            # Heard from again, the session takes work again: its stream was never ended.
            slow.resume()
            await runs.StartRun(rpb.StartRunRequest(workflow_name="wf2", run_id="r2"))
            third = (await slow.read("workflow_task")).workflow_task
            assert (third.run_id, third.lease_epoch) == ("r2", 1)
            await slow.close()
            await fresh.close()
    finally:
        await c.stop()


def test_a_session_counts_as_silent_before_a_lease_it_stopped_renewing_ends() -> None:
    assert LeaseConfig(lease_seconds=10, heartbeat_seconds=2).silent_after_seconds == 6
    # Three intervals would outlast the lease: at most the lease less one interval.
    assert LeaseConfig(lease_seconds=1, heartbeat_seconds=0.4).silent_after_seconds == 0.6
    # A heartbeat as long as the lease (misconfigured) still leaves one interval.
    assert LeaseConfig(lease_seconds=1, heartbeat_seconds=1).silent_after_seconds == 1


async def test_a_reconnecting_worker_keeps_its_task(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        runs = RunServiceStub(channel)
        worker = FakeWorker(channel)
        await worker.hello("wf")
        await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
        task = (await worker.read("workflow_task")).workflow_task
        await worker.close()  # the stream breaks
        again = FakeWorker(channel)
        await again.hello("wf", held=(wpb.HeldTask(task_id=task.task_id, lease_epoch=1),))
        await again.send(
            event_batch=wpb.EventBatch(
                task_id=task.task_id,
                lease_epoch=1,
                batch_no=1,
                events=[ev("", "step_started", step_id="s")],
            )
        )
        ack = (await again.read("event_batch_ack")).event_batch_ack
        assert not ack.duplicate
        # A worker claiming a task it never held is told so.
        other = FakeWorker(channel, "w2")
        await other.hello("wf", held=(wpb.HeldTask(task_id=task.task_id, lease_epoch=9),))
        rejected = (await other.read("task_rejected")).task_rejected
        assert rejected.reason == wpb.TASK_REJECT_REASON_STALE_LEASE
        await again.close()
        await other.close()


async def test_shutdown_drains_workers(db_url: str) -> None:
    c = Coordinator(coordinator_config(db_url))
    await c.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as channel:
        worker = FakeWorker(channel)
        await worker.hello("wf")
        stopping = asyncio.create_task(c.stop())
        drain = (await worker.read("drain")).drain
        assert drain.reason
        await worker.go_silent()
        await worker.call.done_writing()
        await stopping


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_worker_on_one_coordinator_gets_runs_started_on_another(db_url: str) -> None:
    a = Coordinator(coordinator_config(db_url))
    b = Coordinator(coordinator_config(db_url))
    await a.start()
    await b.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as on_a,
            grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as on_b,
        ):
            worker = FakeWorker(on_b)
            await worker.hello("wf", capacity=4)
            runs = RunServiceStub(on_a)
            for i in range(3):
                await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id=f"r{i}"))
            tasks = [(await worker.read("workflow_task")).workflow_task for _ in range(3)]
            assert sorted(t.run_id for t in tasks) == ["r0", "r1", "r2"]
            # Its batch, sent through coordinator B, is visible through A.
            await worker.send(
                event_batch=wpb.EventBatch(
                    task_id=tasks[0].task_id,
                    lease_epoch=1,
                    batch_no=1,
                    events=[ev("", "step_started", step_id="s")],
                )
            )
            await worker.read("event_batch_ack")
            events = (await runs.GetEvents(rpb.GetEventsRequest(run_id=tasks[0].run_id))).events
            assert events[-1].HasField("step_started")
            await worker.close()
    finally:
        await a.stop()
        await b.stop()


async def test_a_backlog_no_session_can_take_does_not_make_the_dispatcher_spin(
    coordinator: Coordinator,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        runs = RunServiceStub(channel)
        worker = FakeWorker(channel)
        await worker.hello("wf", capacity=1)
        for run_id in ("r1", "r2"):
            await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id=run_id))
        task = (await worker.read("workflow_task")).workflow_task
        assert task.run_id == "r1"
        # r2 is due and pending, but the only session is full: the round must sleep until
        # something changes (a result frees capacity and wakes it), not retry at once. The
        # next deadline it knows of is the lease check, half a lease away.
        assert coordinator.dispatcher is not None
        timeout = await coordinator.dispatcher._round()
        assert timeout == pytest.approx(coordinator.config.leases.lease_seconds / 2, rel=0.01)
        await worker.send(
            workflow_result=workflow_pb2.WorkflowTaskResult(
                task_id=task.task_id,
                lease_epoch=task.lease_epoch,
                run_id="r1",
                outcome=workflow_pb2.WORKFLOW_OUTCOME_COMPLETED,
            )
        )
        # The freed slot takes r2 (its task may come before or after the result's ack).
        got: dict[str, Any] = {}
        while len(got) < 2:
            message = await worker.call.read()
            if message.WhichOneof("message") != "heartbeat_ack":
                got[message.WhichOneof("message")] = message
        assert set(got) == {"task_result_ack", "workflow_task"}
        assert got["workflow_task"].workflow_task.run_id == "r2"
        await worker.close()
