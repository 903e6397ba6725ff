"""cancel_task, cancel_requested in heartbeat acks, and drains (the coordinator's, the worker's)."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import worker_service_pb2 as ws
from ledgerflow.v1 import workflow_pb2
from tests.worker import workflows
from tests.worker.conftest import StartWorker
from tests.worker.scripted import Served
from tests.workflow.harness import MemoryLedger


def compensation_events(ledger: MemoryLedger) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for event in ledger.events:
        kind = event.WhichOneof("payload")
        if kind and kind.startswith("compensation_"):
            found.append((kind, getattr(event, kind).step_id))
    return found


async def test_cancel_task_compensates_and_reports_cancelled(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.saga", "pay")
    await coordinator.wait_until(lambda: "start:pay" in workflows.CALLS, "charge running")
    coordinator.session.send(
        ws.ConnectResponse(
            cancel_task=ws.CancelTask(task_id=task.task_id, run_id=task.run_id, reason="user asked")
        )
    )
    # The running step finishes (and is compensated); the next step never starts.
    await coordinator.barrier()
    workflows.gate("pay").set()
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")

    result = coordinator.results[task.task_id]
    assert result.outcome == workflow_pb2.WORKFLOW_OUTCOME_CANCELLED
    assert "user asked" in result.error.message
    assert [c.step_id for c in result.compensations] == ["charge", "reserve"]
    assert all(c.status == pb.COMPENSATION_STATUS_COMPLETED for c in result.compensations)
    assert workflows.CALLS[-2:] == ["undo:charge", "undo:reserve"]
    assert "add:2+2" not in workflows.CALLS
    assert compensation_events(coordinator.ledger(task.run_id)) == [
        ("compensation_started", "charge"),
        ("compensation_completed", "charge"),
        ("compensation_started", "reserve"),
        ("compensation_completed", "reserve"),
    ]


async def test_cancel_requested_in_a_heartbeat_ack_cancels_the_run(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.watchful")
    await coordinator.wait_until(
        lambda: len(coordinator.ledger(task.run_id).of_type("step_started")) == 2, "watching"
    )
    coordinator.leases[task.task_id].cancel_requested = True
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    result = coordinator.results[task.task_id]
    assert result.outcome == workflow_pb2.WORKFLOW_OUTCOME_CANCELLED
    assert [c.step_id for c in result.compensations] == ["reserve"]
    assert "noticed cancel" in workflows.CALLS
    assert "add:2+2" not in workflows.CALLS
    # It was a heartbeat ack that carried the request.
    assert any(
        lease.cancel_requested
        for m in coordinator.session.sent
        if m.HasField("heartbeat_ack")
        for lease in m.heartbeat_ack.leases
    )


def drain_message(
    seconds_from_now: float, reason: str = "coordinator restart"
) -> ws.ConnectResponse:
    deadline = Timestamp()
    deadline.GetCurrentTime()
    deadline.FromNanoseconds(deadline.ToNanoseconds() + int(seconds_from_now * 1e9))
    return ws.ConnectResponse(drain=ws.Drain(reason=reason, deadline_time=deadline))


async def test_a_coordinator_drain_finishes_running_tasks_then_closes_and_reconnects(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, runner = start_worker()
    await worker.wait_connected()
    running = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    first = coordinator.session
    first.send(drain_message(60))
    late = coordinator.dispatch("test.chain", 1)  # a dispatch racing the drain
    await coordinator.wait_until(lambda: coordinator.releases, "the late task released")
    assert [r.task_id for r in coordinator.releases] == [late.task_id]
    assert "coordinator restart" in coordinator.releases[0].reason
    assert not first.worker_closed

    workflows.gate("g").set()
    await coordinator.wait_until(lambda: first.worker_closed, "the worker closed the stream")
    assert running.task_id in coordinator.results
    assert first.kinds().index("workflow_result") < len(first.kinds())
    # A coordinator's drain ends the session, not the worker: it comes back.
    second = await coordinator.wait_for_session(2)
    assert list(second.hello.held_tasks) == []
    assert not runner.done()
    again = coordinator.dispatch("test.chain", 2)
    await coordinator.wait_until(lambda: again.task_id in coordinator.results, "a new task runs")


async def test_a_coordinator_drain_releases_what_is_unfinished_at_the_deadline(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    first = coordinator.session
    first.send(drain_message(0))
    await coordinator.wait_until(lambda: first.worker_closed, "the worker closed the stream")
    assert [(r.task_id, r.lease_epoch) for r in coordinator.releases] == [(task.task_id, 1)]
    assert first.kinds()[-1] == "release"
    assert "cancelled:g" in workflows.CALLS
    assert task.task_id not in coordinator.results


async def test_worker_drain_finishes_the_running_task_and_run_returns(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, runner = start_worker(drain_timeout=60)
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    worker.drain()
    assert worker.draining
    # Offered while draining: parked, never run, handed back when the stream closes.
    parked = coordinator.dispatch("test.chain", 1)
    await coordinator.wait_until(
        lambda: any((parked.task_id, 1) in hb for hb in coordinator.heartbeats()),
        "the parked task is held",
    )
    assert coordinator.releases == []
    workflows.gate("g").set()
    await asyncio.wait_for(runner, 10)
    assert payload_value(coordinator.results[task.task_id].output) == "g"
    assert [r.task_id for r in coordinator.releases] == [parked.task_id]
    assert coordinator.messages("event_batch", parked.task_id) == []
    session = coordinator.session
    assert session.worker_closed
    assert session.kinds().index("workflow_result") < session.kinds().index("release")
    assert len(coordinator.sessions) == 1


async def test_worker_stop_releases_running_tasks_at_once(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, runner = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    worker.stop()
    await asyncio.wait_for(runner, 10)
    assert [(r.task_id, r.lease_epoch) for r in coordinator.releases] == [(task.task_id, 1)]
    assert "shutting down" in coordinator.releases[0].reason
    assert not coordinator.releases[0].failed  # handed back unfinished: dispatch at once
    assert "cancelled:g" in workflows.CALLS
    assert coordinator.session.worker_closed
    assert not worker.connected


async def test_drain_before_run_returns_without_connecting(served: Served) -> None:
    from ledgerflow.worker import Worker

    worker = Worker(served.address, workflows.chain)
    worker.drain()
    await asyncio.wait_for(worker.run(), 10)
    assert served.coordinator.sessions == []
