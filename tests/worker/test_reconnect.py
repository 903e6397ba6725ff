"""A broken stream: the worker reconnects, claims its tasks, resends what was not acknowledged.

Every scenario compares the run's committed ledger with the same workflow run on
a healthy stream: nothing may be lost or doubled, and no step may run again.
"""

from __future__ import annotations

from collections.abc import Callable

from ledgerflow.ledger import payload_value
from ledgerflow.v1 import worker_service_pb2 as ws
from ledgerflow.v1 import workflow_pb2
from tests.worker import workflows
from tests.worker.conftest import StartWorker
from tests.worker.scripted import (
    ABORT,
    ACK,
    COMMIT_AND_ABORT,
    Action,
    ScriptedCoordinator,
    ScriptedSession,
    Served,
    eventually,
)


async def baseline_kinds(coordinator: ScriptedCoordinator, n: int) -> list[str]:
    """The ledger of ``test.chain(n)`` run on a healthy stream."""
    task = coordinator.dispatch("test.chain", n)
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the baseline")
    return coordinator.ledger(task.run_id).kinds()


def break_at_batch(
    task_id: str, batch_no: int, action: Action
) -> Callable[[ScriptedSession, ws.EventBatch], Action]:
    def on_batch(session: ScriptedSession, batch: ws.EventBatch) -> Action:
        if session.number == 1 and batch.task_id == task_id and batch.batch_no == batch_no:
            return action
        return ACK

    return on_batch


async def check_resent_after_break(
    served: Served, start_worker: StartWorker, action: Action
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    expected = await baseline_kinds(coordinator, 4)
    workflows.CALLS.clear()

    coordinator.on_batch = break_at_batch("task-2", 3, action)
    task = coordinator.dispatch("test.chain", 4)
    assert task.task_id == "task-2"
    second = await coordinator.wait_for_session(2)
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")

    assert [(h.task_id, h.lease_epoch) for h in second.hello.held_tasks] == [(task.task_id, 1)]
    assert second.hello.worker_id == worker.worker_id
    # The batch the break left unacknowledged is the first thing the new stream carries,
    # byte for byte as first sent.
    lost = [b for n, b in coordinator.messages("event_batch", task.task_id) if n == 1][-1]
    assert lost.batch_no == 3
    assert second.received[0].WhichOneof("message") == "event_batch"
    resent = second.received[0].event_batch
    assert resent.SerializeToString(deterministic=True) == lost.SerializeToString(
        deterministic=True
    )
    # Numbering goes on from there.
    later = [b.batch_no for n, b in coordinator.messages("event_batch", task.task_id) if n == 2]
    assert later == list(range(3, 3 + len(later)))

    result = coordinator.results[task.task_id]
    assert result.outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPLETED
    assert payload_value(result.output) == 6
    ledger = coordinator.ledger(task.run_id)
    assert ledger.kinds() == expected
    assert ledger.body_lines() == [f"[info] adding {i}" for i in range(4)] + ["[info] total 6"]
    # No step ran twice because of the break.
    assert [c for c in workflows.CALLS if c.startswith("add")] == [
        "add:0+0",
        "add:0+1",
        "add:1+2",
        "add:3+3",
    ]


async def test_a_batch_lost_with_the_stream_is_resent_unchanged(
    served: Served, start_worker: StartWorker
) -> None:
    await check_resent_after_break(served, start_worker, ABORT)
    # The resend was its first commit.
    assert not any(
        m.event_batch_ack.duplicate
        for s in served.coordinator.sessions
        for m in s.sent
        if m.HasField("event_batch_ack")
    )


async def test_a_batch_whose_ack_was_lost_is_resent_and_acked_as_a_duplicate(
    served: Served, start_worker: StartWorker
) -> None:
    await check_resent_after_break(served, start_worker, COMMIT_AND_ABORT)
    duplicates = [
        (s.number, m.event_batch_ack.batch_no)
        for s in served.coordinator.sessions
        for m in s.sent
        if m.HasField("event_batch_ack") and m.event_batch_ack.duplicate
    ]
    assert duplicates == [(2, 3)]


async def test_a_result_whose_ack_was_lost_is_resent_until_acknowledged(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    coordinator.on_result = lambda session, result: COMMIT_AND_ABORT if session.number == 1 else ACK
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 2)
    second = await coordinator.wait_for_session(2)
    assert [(h.task_id, h.lease_epoch) for h in second.hello.held_tasks] == [(task.task_id, 1)]
    await coordinator.wait_until(
        lambda: any(m.HasField("task_result_ack") for m in second.sent), "the result's ack"
    )
    assert second.received[0].WhichOneof("message") == "workflow_result"
    assert second.received[0].workflow_result == coordinator.messages("workflow_result")[0][1]
    # Held no more once acknowledged.
    after = len(coordinator.received)
    await coordinator.wait_until(
        lambda: any(m.HasField("heartbeat") for _, m in coordinator.received[after:]),
        "a heartbeat",
    )
    await coordinator.wait_until(
        lambda: any(
            m.HasField("heartbeat") and not m.heartbeat.tasks
            for _, m in coordinator.received[after:]
        ),
        "an empty heartbeat",
    )


async def test_a_result_lost_with_the_stream_is_resent(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    coordinator.on_result = lambda session, result: ABORT if session.number == 1 else ACK
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 2)
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert [n for n, _ in coordinator.messages("workflow_result")] == [1, 2]
    assert payload_value(coordinator.results[task.task_id].output) == 1


async def test_a_coordinator_restart_loses_nothing(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    gated = coordinator.dispatch("test.gated", "g")
    other = coordinator.dispatch("test.gated", "h")
    await coordinator.wait_until(
        lambda: {"start:g", "start:h"} <= set(workflows.CALLS), "both steps running"
    )
    await coordinator.wait_until(
        lambda: all(coordinator.ledger(t.run_id).of_type("step_started") for t in (gated, other)),
        "both step starts committed",
    )
    # Committed is not yet acknowledged: a start whose ack is lost with the stream is
    # (rightly) resent first on the next one, which is not what this test is about.
    await eventually(
        lambda: all(not state.unacked for state in worker._tasks.values()),
        "both step starts acknowledged",
    )

    await served.stop()
    await eventually(lambda: not worker.connected, "the worker noticed")
    # The steps finish while no coordinator is up: their results wait in the worker.
    workflows.gate("g").set()
    workflows.gate("h").set()
    await eventually(lambda: {"end:g", "end:h"} <= set(workflows.CALLS), "both steps done")
    await served.start()

    second = await coordinator.wait_for_session(2)
    await coordinator.wait_until(
        lambda: {gated.task_id, other.task_id} <= coordinator.results.keys(), "both results"
    )
    assert sorted((h.task_id, h.lease_epoch) for h in second.hello.held_tasks) == [
        (gated.task_id, 1),
        (other.task_id, 1),
    ]
    # What the steps produced while disconnected went first on the new stream.
    first_two = second.received[:2]
    assert {m.event_batch.task_id for m in first_two} == {gated.task_id, other.task_id}
    for message in first_two:
        kinds = [e.WhichOneof("payload") for e in message.event_batch.events]
        assert "step_completed" in kinds
    for task, name in ((gated, "g"), (other, "h")):
        ledger = coordinator.ledger(task.run_id)
        assert [k for k in ledger.kinds() if k.startswith("step")] == [
            "step_started",
            "step_completed",
        ]
        assert ledger.body_lines() == [f"[info] before {name}", f"[info] after {name}"]
        assert payload_value(coordinator.results[task.task_id].output) == name
    assert workflows.CALLS.count("start:g") == 1


async def test_a_held_task_whose_lease_was_lost_is_dropped_on_reconnect(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    await coordinator.wait_until(lambda: "start:g" in workflows.CALLS, "the step running")
    # Meanwhile the lease expired and the task went to another worker under epoch 2.
    coordinator.leases[task.task_id].epoch = 2
    coordinator.session.abort()
    second = await coordinator.wait_for_session(2)
    assert [(h.task_id, h.lease_epoch) for h in second.hello.held_tasks] == [(task.task_id, 1)]
    await eventually(lambda: "cancelled:g" in workflows.CALLS, "the execution stopped")
    after = len(coordinator.received)
    await coordinator.wait_until(
        lambda: any(
            m.HasField("heartbeat") and not m.heartbeat.tasks
            for _, m in coordinator.received[after:]
        ),
        "a heartbeat without the task",
    )
    workflows.gate("g").set()
    assert "end:g" not in workflows.CALLS
    kinds_after = {m.WhichOneof("message") for _, m in coordinator.received[after:]}
    assert kinds_after == {"heartbeat"}
    assert task.task_id not in coordinator.results
    assert coordinator.releases == []


async def test_step_log_lines_are_stored_once_when_their_ack_is_lost(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    broken: list[int] = []

    def on_batch(session: ScriptedSession, batch: ws.EventBatch) -> Action:
        has_lines = any(e.log_appended.channel == "step:chatty" for e in batch.events)
        if session.number == 1 and has_lines and not broken:
            broken.append(batch.batch_no)
            return COMMIT_AND_ABORT
        return ACK

    coordinator.on_batch = on_batch
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chatty", 3)
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert broken
    second = coordinator.sessions[1]
    assert second.received[0].event_batch.batch_no == broken[0]
    lines = [text for channel, text in coordinator.ledger(task.run_id).lines]
    assert lines == ["[info] line 0", "[info] line 1", "[info] line 2"]
