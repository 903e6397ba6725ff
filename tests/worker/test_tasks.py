"""Workflow tasks end to end: real bodies, batches and acks, results, releases."""

from __future__ import annotations

from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import journal_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import worker_service_pb2 as ws
from tests.worker import workflows
from tests.worker.conftest import StartWorker
from tests.worker.scripted import ACK, HOLD, Action, ScriptedSession, Served


async def test_a_task_runs_its_body_and_reports_the_result(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 4)
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")

    result = coordinator.results[task.task_id]
    assert result.outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPLETED
    assert payload_value(result.output) == 0 + 1 + 2 + 3
    assert (result.task_id, result.lease_epoch, result.run_id) == (task.task_id, 1, task.run_id)
    ledger = coordinator.ledger(task.run_id)
    steps = ledger.of_type("step_started")
    assert [e.step_started.step_id for e in steps] == ["add", "add#2", "add#3", "add#4"]
    assert all(e.step_started.worker_id == worker.worker_id for e in steps)
    assert len(ledger.of_type("step_completed")) == 4
    assert ledger.body_lines() == [
        "[info] adding 0",
        "[info] adding 1",
        "[info] adding 2",
        "[info] adding 3",
        "[info] total 6",
    ]
    # Every step's completion was committed before the body went on: the result comes
    # after the last batch, and each step started only after the previous completed.
    kinds = [k for k in ledger.kinds() if k.startswith("step_")]
    assert kinds == ["step_started", "step_completed"] * 4
    assert coordinator.session.kinds().index("workflow_result") > max(
        i for i, k in enumerate(coordinator.session.kinds()) if k == "event_batch"
    )


async def test_batches_are_numbered_from_1_per_task_and_epoch(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    first = coordinator.dispatch("test.chain", 3)
    second = coordinator.dispatch("test.chain", 2)
    await coordinator.wait_until(
        lambda: {first.task_id, second.task_id} <= coordinator.results.keys(), "both results"
    )
    for task in (first, second):
        numbers = [b.batch_no for _, b in coordinator.messages("event_batch", task.task_id)]
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(numbers) >= 2
        assert {b.lease_epoch for _, b in coordinator.messages("event_batch", task.task_id)} == {1}

    # The same run dispatched again under epoch 2 (its journal holds every step now):
    # numbering starts again at 1 for the new epoch.
    again = coordinator.dispatch(
        "test.chain", 3, run_id=first.run_id, task_id=first.task_id, epoch=2
    )
    await coordinator.wait_until(
        lambda: coordinator.leases[again.task_id].done, "the redispatched task's result"
    )
    epoch2 = [
        b.batch_no
        for _, b in coordinator.messages("event_batch", first.task_id)
        if b.lease_epoch == 2
    ]
    assert epoch2 == list(range(1, len(epoch2) + 1))
    # Replay ran no step again.
    assert len(coordinator.ledger(first.run_id).of_type("step_started")) == 3


async def test_steps_started_together_leave_in_one_batch(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.fanout", ["a", "b", "c"])
    await coordinator.wait_until(
        lambda: {"start:a", "start:b", "start:c"} <= set(workflows.CALLS), "all three started"
    )
    await coordinator.wait_until(
        lambda: len(coordinator.messages("event_batch", task.task_id)) >= 1, "a batch"
    )
    _, first = coordinator.messages("event_batch", task.task_id)[0]
    assert [e.WhichOneof("payload") for e in first.events] == ["step_started"] * 3
    assert [e.step_started.step_id for e in first.events] == ["wait a", "wait b", "wait c"]

    for name in "abc":
        workflows.gate(name).set()
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert payload_value(coordinator.results[task.task_id].output) == ["a", "b", "c"]
    assert len(coordinator.ledger(task.run_id).of_type("step_completed")) == 3


async def test_a_quick_steps_start_travels_with_its_result(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    # A linger far longer than a step takes: each start waits for its result.
    worker, _ = start_worker(event_linger=1.0)
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 3)
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    batches = [
        [e.WhichOneof("payload") for e in b.events]
        for _, b in coordinator.messages("event_batch", task.task_id)
    ]
    # One round trip per step: its log line and start leave with its completion.
    # The last log line is flushed before the result is sent.
    assert batches == [["log_appended", "step_started", "step_completed"]] * 3 + [["log_appended"]]


async def test_a_slow_steps_start_is_committed_while_it_runs(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker(event_linger=0.05)
    await worker.wait_connected()
    task = coordinator.dispatch("test.gated", "g")
    # The step is blocked on its gate: its start leaves once the linger is over.
    await coordinator.wait_until(
        lambda: coordinator.ledger(task.run_id).of_type("step_started"), "the start"
    )
    assert "end:g" not in workflows.CALLS
    workflows.gate("g").set()
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert payload_value(coordinator.results[task.task_id].output) == "g"


async def test_an_unknown_workflow_is_released_with_the_reason(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.nope", version="3")
    await coordinator.wait_until(lambda: coordinator.releases, "a release")
    (release,) = coordinator.releases
    assert (release.task_id, release.lease_epoch) == (task.task_id, 1)
    assert "test.nope" in release.reason
    assert "'3'" in release.reason
    assert coordinator.messages("event_batch", task.task_id) == []
    assert task.task_id not in coordinator.results


async def test_a_version_is_matched_by_the_registry(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.versioned", version="2")
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert payload_value(coordinator.results[task.task_id].output) == "v2"


async def test_non_determinism_releases_the_task_and_appends_nothing(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker()
    await worker.wait_connected()
    # The ledger says step "charge" ran first; the body's first step is "add".
    journal = journal_pb2.JournalSlice()
    journal.step_results["charge"].CopyFrom(
        journal_pb2.StepJournalEntry(
            step_id="charge",
            name="charge",
            ordinal=1,
            attempt=1,
            status=journal_pb2.STEP_RESULT_STATUS_COMPLETED,
            output=json_payload(1),
        )
    )
    task = coordinator.dispatch("test.chain", 2, journal=journal)
    await coordinator.wait_until(lambda: coordinator.releases, "a release")
    (release,) = coordinator.releases
    assert release.task_id == task.task_id
    assert release.reason.startswith("NonDeterminismError: ")
    assert release.failed  # the coordinator backs off before dispatching it again
    assert "'charge'" in release.reason
    assert "'add'" in release.reason
    assert task.task_id not in coordinator.results
    assert coordinator.ledger(task.run_id).of_type("step_started") == []
    assert "add:0+0" not in workflows.CALLS


async def test_more_tasks_than_the_capacity_are_handed_back(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    worker, _ = start_worker(max_concurrent_tasks=2)
    await worker.wait_connected()
    one = coordinator.dispatch("test.gated", "one")
    two = coordinator.dispatch("test.gated", "two")
    three = coordinator.dispatch("test.gated", "three")
    await coordinator.wait_until(lambda: coordinator.releases, "a release")
    assert [r.task_id for r in coordinator.releases] == [three.task_id]
    assert "max_concurrent_tasks" in coordinator.releases[0].reason
    workflows.gate("one").set()
    workflows.gate("two").set()
    await coordinator.wait_until(
        lambda: {one.task_id, two.task_id} <= coordinator.results.keys(), "two results"
    )
    assert "start:three" not in workflows.CALLS


async def test_metadata_left_at_the_end_travels_in_the_result(
    served: Served, start_worker: StartWorker
) -> None:
    from ledgerflow import workflow

    @workflow.defn(name="test.meta")
    async def meta(ctx: workflow.Context) -> None:
        await ctx.step("one", workflows.add, 1, 1)
        ctx.metadata.set("color", "blue")

    coordinator = served.coordinator
    worker, _ = start_worker(workflows=[meta])
    await worker.wait_connected()
    task = coordinator.dispatch("test.meta")
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    (mutation,) = coordinator.results[task.task_id].metadata_updates
    assert (mutation.op, mutation.key) == (pb.METADATA_OP_SET, "color")


async def test_the_body_goes_on_only_when_the_matching_ack_arrives(
    served: Served, start_worker: StartWorker
) -> None:
    coordinator = served.coordinator
    held: list[ws.EventBatch] = []

    def on_batch(session: ScriptedSession, batch: ws.EventBatch) -> Action:
        kinds = [e.WhichOneof("payload") for e in batch.events]
        if "step_completed" in kinds and not held:
            held.append(batch)
            return HOLD
        return ACK

    coordinator.on_batch = on_batch
    worker, _ = start_worker()
    await worker.wait_connected()
    task = coordinator.dispatch("test.chain", 2)
    await coordinator.wait_until(lambda: bool(held), "the first step's completion")
    (batch,) = held

    def ack(epoch: int, batch_no: int) -> ws.ConnectResponse:
        return ws.ConnectResponse(
            event_batch_ack=ws.EventBatchAck(
                task_id=task.task_id, lease_epoch=epoch, batch_no=batch_no, committed_seq=1
            )
        )

    # Acks for another epoch or another batch number do not count.
    coordinator.session.send(ack(2, batch.batch_no))
    coordinator.session.send(ack(1, batch.batch_no + 5))
    await coordinator.barrier()
    assert workflows.CALLS == ["add:0+0"]
    assert task.task_id not in coordinator.results

    coordinator.commit_batch(batch)
    coordinator.session.send(ack(1, batch.batch_no))
    await coordinator.wait_until(lambda: task.task_id in coordinator.results, "the result")
    assert workflows.CALLS == ["add:0+0", "add:0+1"]
