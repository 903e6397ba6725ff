"""task_rejected: a lost task stops at once, sends nothing more; a refused batch fails the task."""

from __future__ import annotations

from ledgerflow.v1 import worker_service_pb2 as ws
from tests.worker import workflows
from tests.worker.conftest import StartWorker
from tests.worker.scripted import ACK, Action, ScriptedSession, Served, eventually, reject


def rejected(task_id: str, reason: ws.TaskRejectReason.ValueType) -> ws.ConnectResponse:
    return ws.ConnectResponse(
        task_rejected=ws.TaskRejected(task_id=task_id, lease_epoch=1, reason=reason)
    )


async def assert_nothing_more_about(served: Served, task_id: str) -> None:
    """After the worker processed the refusal, it sends only heartbeats, none listing the task."""
    coordinator = served.coordinator
    after = len(coordinator.received)
    await coordinator.wait_until(
        lambda: sum(1 for _, m in coordinator.received[after:] if m.HasField("heartbeat")) >= 2,
        "two more heartbeats",
    )
    later = [m for _, m in coordinator.received[after:]]
    assert {m.WhichOneof("message") for m in later} == {"heartbeat"}
    # The first may have been on its way before the refusal arrived.
    assert all(task_id not in [t.task_id for t in m.heartbeat.tasks] for m in later[1:])
    assert task_id not in coordinator.results
    assert coordinator.releases == []


async def test_a_stale_lease_stops_the_running_task_at_once(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    coordinator.session.send(rejected(task.task_id, ws.TASK_REJECT_REASON_STALE_LEASE))
    await eventually(lambda: "cancelled:g" in workflows.CALLS, "the step cancelled")
    workflows.gate("g").set()
    await assert_nothing_more_about(served, task.task_id)
    assert coordinator.ledger(task.run_id).body_lines() == ["[info] before g"]

    # The worker goes on with other tasks.
    other = coordinator.dispatch("test.chain", 1)
    await coordinator.wait_until(lambda: other.task_id in coordinator.results, "another result")


async def test_a_refused_batch_stops_the_task_and_nothing_more_is_appended(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator

    def on_batch(session: ScriptedSession, batch: ws.EventBatch) -> Action:
        if batch.batch_no == 2:
            return reject(ws.TASK_REJECT_REASON_STALE_LEASE, "epoch 1 is not current")
        return ACK

    coordinator.on_batch = on_batch
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 5)
    await coordinator.wait_until(
        lambda: any(m.HasField("task_rejected") for m in coordinator.session.sent), "the refusal"
    )
    await assert_nothing_more_about(served, task.task_id)
    batches = [b.batch_no for _, b in coordinator.messages("event_batch", task.task_id)]
    assert batches == [1, 2]
    assert len(coordinator.ledger(task.run_id).of_type("step_started")) == 1


async def test_unknown_task_and_run_finished_stop_the_task_too(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    one = coordinator.dispatch("test.gated", "one")
    two = coordinator.dispatch("test.gated", "two")
    await coordinator.wait_until(
        lambda: {"start:one", "start:two"} <= set(workflows.CALLS), "both running"
    )
    coordinator.session.send(rejected(one.task_id, ws.TASK_REJECT_REASON_UNKNOWN_TASK))
    coordinator.session.send(rejected(two.task_id, ws.TASK_REJECT_REASON_RUN_FINISHED))
    await eventually(
        lambda: {"cancelled:one", "cancelled:two"} <= set(workflows.CALLS), "both cancelled"
    )
    await assert_nothing_more_about(served, one.task_id)
    await assert_nothing_more_about(served, two.task_id)


async def test_a_refusal_for_another_epoch_is_ignored(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    coordinator.session.send(
        ws.ConnectResponse(
            task_rejected=ws.TaskRejected(
                task_id=task.task_id, lease_epoch=7, reason=ws.TASK_REJECT_REASON_STALE_LEASE
            )
        )
    )
    workflows.gate("g").set()
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert "cancelled:g" not in workflows.CALLS


async def test_an_invalid_batch_fails_the_task_and_hands_it_back(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator

    def on_batch(session: ScriptedSession, batch: ws.EventBatch) -> Action:
        if batch.batch_no == 2:
            return reject(ws.TASK_REJECT_REASON_INVALID, "events[0].step_completed.output: bad")
        return ACK

    coordinator.on_batch = on_batch
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 3)
    await coordinator.wait_until(lambda: coordinator.releases, "a release")
    (release,) = coordinator.releases
    assert (release.task_id, release.lease_epoch) == (task.task_id, 1)
    assert "INVALID" in release.reason
    assert "events[0].step_completed.output: bad" in release.reason
    assert [b.batch_no for _, b in coordinator.messages("event_batch", task.task_id)] == [1, 2]
    assert task.task_id not in coordinator.results


async def test_a_too_large_result_hands_the_task_back(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    coordinator.on_result = lambda session, result: reject(
        ws.TASK_REJECT_REASON_TOO_LARGE, "output: 9000000 bytes; the limit is 4194304"
    )
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 1)
    await coordinator.wait_until(lambda: coordinator.releases, "a release")
    (release,) = coordinator.releases
    assert release.task_id == task.task_id
    assert "TOO_LARGE" in release.reason
    assert "the limit is 4194304" in release.reason
    assert [n for n, _ in coordinator.messages("workflow_result")] == [1]
