"""Tasks in the store: claiming, dispatch, fenced appends and results, leases, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Value
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledgerflow.coordinator.store import StartRunSpec, Store
from ledgerflow.coordinator.store import _sql_tasks as sql_tasks
from ledgerflow.coordinator.store._tasks import TIMEOUT_REASON, TaskRefusedError, release_delay
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import worker_service_pb2 as wpb
from ledgerflow.v1 import workflow_pb2
from tests.coordinator.test_store import assert_consistent, ev

SECOND = 1_000_000_000
RUNTIME = pb.Runtime(worker_id="w1", language="python")


async def claim_one(store: Store, *, lease: int = 60 * SECOND, session: str = "s1"):  # type: ignore[no-untyped-def]
    (task,) = await store.claim_tasks(
        queues=["wf"], limit=5, lease_nanos=lease, worker_id="w1", session_id=session
    )
    return task


async def test_start_run_queues_a_task_that_a_claim_leases_and_dispatch_records(
    store: Store,
) -> None:
    await store.start_run(
        StartRunSpec(workflow_name="wf", run_id="a", input=json_payload({"x": 1}), tags=("t",))
    )
    assert (
        await store.claim_tasks(
            queues=["other"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )
    task = await claim_one(store)
    assert (task.run_id, task.lease_epoch, task.invocation) == ("a", 1, 1)
    dispatched = await store.dispatch(task, RUNTIME)
    assert dispatched is not None
    wt = dispatched.task
    assert wt is not None
    assert (wt.task_id, wt.lease_epoch, wt.run_id, wt.workflow_name) == (task.task_id, 1, "a", "wf")
    assert payload_value(wt.input) == {"x": 1}
    assert list(wt.tags) == ["t"]
    assert wt.journal.last_seq == 2
    snap = await store.get_run("a")
    assert snap.status == pb.RUN_STATUS_RUNNING
    events = await assert_consistent(store, "a")
    assert events[-1].run_started.invocation == 1
    assert events[-1].run_started.runtime.worker_id == "w1"
    # Nothing else to claim: the run's one task is leased.
    assert (
        await store.claim_tasks(
            queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )


async def test_batches_append_under_the_lease_and_resends_are_acknowledged_once(
    store: Store,
) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    batch = [
        ev("a", "step_started", 1, step_id="s"),
        ev("a", "log_appended", 1, lines=["x", "y"], channel="c", channel_offset=0),
    ]
    first = await store.append_task_events("a", task.task_id, 1, 1, batch)
    again = await store.append_task_events("a", task.task_id, 1, 1, batch)
    assert not first.duplicate
    assert again.duplicate
    assert again.ranges == first.ranges
    assert first.value == again.value == {"c": 2}
    events = await assert_consistent(store, "a")
    assert [e.WhichOneof("payload") for e in events].count("step_started") == 1


async def test_a_claim_leases_at_most_its_limit_oldest_first(store: Store) -> None:
    # Regression: on Postgres ``UPDATE … WHERE task_id IN (SELECT … LIMIT n FOR UPDATE
    # SKIP LOCKED)`` leased every pending task whatever n, so one session got more
    # tasks than it had slots and its worker handed the rest back.
    for i in range(12):
        await store.start_run(StartRunSpec(workflow_name="wf", run_id=f"r{i:02}"))
    first = await store.claim_tasks(
        queues=["wf"], limit=2, lease_nanos=60 * SECOND, worker_id="w", session_id="s"
    )
    assert [t.run_id for t in first] == ["r00", "r01"]
    # The statement without the coordinator's own asyncpg connection (SQLAlchemy's).
    async with store.engine.begin() as conn:
        second = await sql_tasks.claim(
            conn,
            queues=["wf"],
            limit=3,
            now=time.time_ns(),
            lease_nanos=60 * SECOND,
            worker_id="w",
            session_id="s",
        )
    assert [t.run_id for t in second] == ["r02", "r03", "r04"]
    rest = await store.claim_tasks(
        queues=["wf"], limit=50, lease_nanos=60 * SECOND, worker_id="w", session_id="s"
    )
    assert len(rest) == 7


async def test_a_stale_epoch_is_refused_and_changes_nothing(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a", input=json_payload(5)))
    old = await claim_one(store, lease=0)  # expires at once
    first = await store.dispatch(old, RUNTIME)
    assert await store.expire_leases() == [old.task_id]
    new = await claim_one(store)
    assert new.lease_epoch == 2
    second = await store.dispatch(new, RUNTIME)
    # Both carry the input: the first from the run's creation, the second read back.
    assert first is not None
    assert first.task is not None
    assert second is not None
    assert second.task is not None
    assert payload_value(first.task.input) == payload_value(second.task.input) == 5
    before = len(await assert_consistent(store, "a"))
    with pytest.raises(TaskRefusedError) as refused:
        await store.append_task_events(
            "a", old.task_id, 1, 1, [ev("a", "step_started", 1, step_id="s")]
        )
    assert refused.value.reason == wpb.TASK_REJECT_REASON_STALE_LEASE
    stale_result = workflow_pb2.WorkflowTaskResult(
        task_id=old.task_id, lease_epoch=1, outcome=workflow_pb2.WORKFLOW_OUTCOME_COMPLETED
    )
    with pytest.raises(TaskRefusedError):
        await store.complete_task("a", stale_result)
    assert len(await assert_consistent(store, "a")) == before
    # The current epoch still works.
    await store.append_task_events(
        "a", new.task_id, 2, 1, [ev("a", "step_started", 1, step_id="s")]
    )


async def test_workers_may_not_append_run_facts_or_other_runs_events(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.start_run(StartRunSpec(workflow_name="other", run_id="b"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    for bad, where in (
        ([ev("a", "run_completed", 1)], "events[0]"),
        (
            [ev("a", "step_started", 1, step_id="s"), ev("b", "step_started", 1, step_id="s")],
            "events[1].run_id",
        ),
    ):
        with pytest.raises(
            TaskRefusedError, match=where.replace("[", r"\[").replace("]", r"\]")
        ) as refused:
            await store.append_task_events("a", task.task_id, 1, 1, bad)
        assert refused.value.reason == wpb.TASK_REJECT_REASON_INVALID
    assert len(await assert_consistent(store, "a")) == 2


@pytest.mark.parametrize(
    ("outcome", "status", "case"),
    [
        (workflow_pb2.WORKFLOW_OUTCOME_COMPLETED, pb.RUN_STATUS_COMPLETED, "run_completed"),
        (workflow_pb2.WORKFLOW_OUTCOME_FAILED, pb.RUN_STATUS_FAILED, "run_failed"),
        (workflow_pb2.WORKFLOW_OUTCOME_COMPENSATED, pb.RUN_STATUS_FAILED, "run_failed"),
        (workflow_pb2.WORKFLOW_OUTCOME_CANCELLED, pb.RUN_STATUS_CANCELLED, "run_cancelled"),
        (workflow_pb2.WORKFLOW_OUTCOME_WAITING, pb.RUN_STATUS_WAITING, "run_waiting"),
    ],
)
async def test_a_result_ends_the_task_with_its_terminal_fact_once(
    store: Store, outcome: int, status: int, case: str
) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    result = workflow_pb2.WorkflowTaskResult(
        task_id=task.task_id,
        lease_epoch=1,
        run_id="a",
        outcome=outcome,  # type: ignore[arg-type]
        output=json_payload(7),
        metadata_updates=[
            pb.MetadataMutation(op=pb.METADATA_OP_SET, key="k", value=Value(number_value=1))
        ],
    )
    first = await store.complete_task("a", result)
    again = await store.complete_task("a", result)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.value == again.value
    snap = await store.get_run("a")
    assert snap.status == status
    assert snap.metadata["k"].number_value == 1
    events = await assert_consistent(store, "a")
    assert [e.WhichOneof("payload") for e in events[-2:]] == ["metadata_updated", case]
    if case == "run_completed":
        assert payload_value(snap.result) == 7
    if outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPENSATED:
        assert events[-1].run_failed.compensation == pb.COMPENSATION_OUTCOME_COMPENSATED
    with pytest.raises(TaskRefusedError) as refused:
        await store.append_task_events(
            "a", task.task_id, 1, 9, [ev("a", "step_started", 1, step_id="s")]
        )
    assert refused.value.reason == wpb.TASK_REJECT_REASON_STALE_LEASE


async def test_release_and_heartbeats(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    (state,) = await store.heartbeat(
        [("a", task.task_id, 1)], lease_nanos=30 * SECOND, session_id="s2", worker_id="w1"
    )
    assert state.live
    assert not state.cancel_requested
    await store.cancel_run("a", reason="stop", identity="me")
    (state,) = await store.heartbeat(
        [("a", task.task_id, 1)], lease_nanos=30 * SECOND, session_id="s2", worker_id="w1"
    )
    assert state.live
    assert state.cancel_requested
    assert state.cancel_reason == "stop"
    await store.release_task("a", task.task_id, 1)
    (state,) = await store.heartbeat(
        [("a", task.task_id, 1)], lease_nanos=30 * SECOND, session_id="s2", worker_id="w1"
    )
    assert not state.live
    again = await claim_one(store)
    assert (again.task_id, again.lease_epoch, again.invocation) == (task.task_id, 2, 2)
    dispatched = await store.dispatch(again, RUNTIME)
    assert dispatched is not None
    assert dispatched.task is not None
    assert dispatched.task.cancel_requested


async def test_cancelling_a_run_nobody_runs_queues_a_task_to_compensate(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    await store.complete_task(
        "a",
        workflow_pb2.WorkflowTaskResult(
            task_id=task.task_id, lease_epoch=1, outcome=workflow_pb2.WORKFLOW_OUTCOME_WAITING
        ),
    )
    assert (
        await store.claim_tasks(
            queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )
    await store.cancel_run("a", reason="stop", identity="me")
    again = await claim_one(store)
    assert again.task_id != task.task_id
    dispatched = await store.dispatch(again, RUNTIME)
    assert dispatched is not None
    assert dispatched.task is not None
    assert dispatched.task.cancel_requested
    # A cancel of a run whose task is leased queues nothing more.
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="b"))
    busy = await claim_one(store)
    await store.cancel_run("b", reason="stop", identity="me")
    assert busy.run_id == "b"
    assert (
        await store.claim_tasks(
            queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )


async def test_producer_runs_get_no_tasks(store: Store) -> None:
    await store.append_events([ev("p", "run_created", 1, workflow_name="wf")])
    await store.cancel_run("p", reason="stop", identity="me")
    assert (
        await store.claim_tasks(
            queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )


async def test_a_dispatch_of_a_run_that_ended_meanwhile_finishes_the_task(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.append_events([ev("a", "run_failed", 1)])
    task = await claim_one(store)
    assert await store.dispatch(task, RUNTIME) is None
    (state,) = await store.heartbeat(
        [("a", task.task_id, 1)], lease_nanos=SECOND, session_id="s", worker_id="w"
    )
    assert not state.live


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_coordinators_never_lease_one_task_twice(engine: AsyncEngine) -> None:
    stores = [Store(engine) for _ in range(2)]
    for s in stores:
        await s.start()
    try:
        for i in range(40):
            await stores[0].start_run(StartRunSpec(workflow_name="wf", run_id=f"r{i}"))
        claimed = await asyncio.gather(
            *(
                s.claim_tasks(
                    queues=["wf"],
                    limit=3,
                    lease_nanos=60 * SECOND,
                    worker_id=f"w{n}",
                    session_id=f"s{n}",
                )
                for n, s in enumerate(stores * 10)
            )
        )
    finally:
        for s in stores:
            await s.close()
    ids = [t.task_id for batch in claimed for t in batch]
    assert len(ids) == len(set(ids)) == 40


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "in-a-locking-group"])
async def test_a_lease_taken_over_elsewhere_fences_a_cached_task(
    store: Store, grouped: bool
) -> None:
    # The writer fences a worker's batch on its cached task row, without a lock; the
    # write re-checks the row. Here another coordinator (by hand) gave the task a new
    # epoch: the batch must be refused, and nothing of it written. The same in a group
    # that locks (with a new run's StartRun): the task comes from the cache there too.
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    await store.append_task_events(
        "a", task.task_id, 1, 1, [ev("a", "step_started", 1, step_id="s")]
    )
    before = len(await assert_consistent(store, "a"))
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE tasks SET lease_epoch = 2 WHERE task_id = :t"), {"t": task.task_id}
        )
    stale = store.append_task_events(
        "a", task.task_id, 1, 2, [ev("a", "step_completed", 1, step_id="s")]
    )
    others = [store.start_run(StartRunSpec(workflow_name="wf", run_id="b"))] if grouped else []
    refused, *started = await asyncio.gather(stale, *others, return_exceptions=True)
    assert isinstance(refused, TaskRefusedError)
    assert refused.reason == wpb.TASK_REJECT_REASON_STALE_LEASE
    assert len(await assert_consistent(store, "a")) == before
    if grouped:
        (outcome,) = started
        assert isinstance(outcome, tuple)
        assert outcome[0].run_id == "b"
        assert len(await assert_consistent(store, "b")) == 1


async def test_a_resend_grouped_with_a_locking_request_is_acknowledged_once(
    store: Store,
) -> None:
    # A batch's request id is not looked up on a first try, even in a group that
    # locks (here with a new run's StartRun): the resend fails the id's insert, and
    # the group is redone with the lookup.
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    batch = [ev("a", "step_started", 1, step_id="s")]
    first = await store.append_task_events("a", task.task_id, 1, 1, batch)
    again, (started, created) = await asyncio.gather(
        store.append_task_events("a", task.task_id, 1, 1, batch),
        store.start_run(StartRunSpec(workflow_name="wf", run_id="b")),
    )
    assert again.duplicate
    assert again.ranges == first.ranges
    assert (started.run_id, created) == ("b", True)
    events = await assert_consistent(store, "a")
    assert [e.WhichOneof("payload") for e in events].count("step_started") == 1
    assert len(await assert_consistent(store, "b")) == 1


def test_the_failed_release_backoff_doubles_up_to_a_cap() -> None:
    delays = [release_delay(n) for n in (1, 2, 3, 10, 40, 10_000)]
    assert delays[:3] == [100_000_000, 200_000_000, 400_000_000]
    assert delays[3] == 51_200_000_000
    assert delays[4:] == [60_000_000_000, 60_000_000_000]


async def test_a_task_released_as_failed_is_not_dispatched_again_at_once(store: Store) -> None:
    # A worker whose body is non-deterministic hands the task back as failed: it must
    # not be offered straight back (a hot loop), unlike a task released by a drain.
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="b"))
    failing, draining = await store.claim_tasks(
        queues=["wf"], limit=2, lease_nanos=60 * SECOND, worker_id="w1", session_id="s1"
    )
    await store.release_task(failing.run_id, failing.task_id, 1, failed=True)
    await store.release_task(draining.run_id, draining.task_id, 1)
    again = await store.claim_tasks(
        queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
    )
    assert [t.task_id for t in again] == [draining.task_id]
    row = await store.find_task(failing.task_id)
    assert row is not None
    assert row.status == 1
    assert row.available_time >= failing.create_time + release_delay(1)


# --- waitpoints ---------------------------------------------------------------------------


def waiting_result(task_id: str, *registrations: workflow_pb2.WaitpointRegistration):  # type: ignore[no-untyped-def]
    return workflow_pb2.WorkflowTaskResult(
        task_id=task_id,
        lease_epoch=1,
        run_id="a",
        outcome=workflow_pb2.WORKFLOW_OUTCOME_WAITING,
        waitpoints=registrations,
    )


async def test_a_sleeping_run_keeps_one_task_due_at_its_deadline(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    timer = workflow_pb2.WaitpointRegistration(waitpoint_id="sleep#1", kind=pb.WAITPOINT_KIND_TIMER)
    timer.timeout.seconds = 3600
    await store.complete_task("a", waiting_result(task.task_id, timer))
    snap = await store.get_run("a")
    assert snap.status == pb.RUN_STATUS_WAITING
    (open_wp,) = snap.open_waitpoints
    assert open_wp.waitpoint_id == "sleep#1"
    # Not claimable before the deadline: the task is the timer.
    assert (
        await store.claim_tasks(
            queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )
    due = await store.next_task_wakeup(["wf"])
    assert due.lease_end is None  # the task is pending (waiting), not leased
    assert due.available is not None
    deadline = open_wp.deadline_time.seconds * SECOND + open_wp.deadline_time.nanos
    assert abs(due.available - deadline) < SECOND
    assert due.earliest == due.available
    # A cancellation brings the task forward.
    await store.cancel_run("a", reason="r", identity="i")
    assert (
        len(
            await store.claim_tasks(
                queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
            )
        )
        == 1
    )
    await assert_consistent(store, "a")


async def test_a_signal_resolves_the_open_wait_and_wakes_the_run(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    wait = workflow_pb2.WaitpointRegistration(
        waitpoint_id="signal:go#1", kind=pb.WAITPOINT_KIND_SIGNAL, name="go"
    )
    await store.complete_task("a", waiting_result(task.task_id, wait))
    assert (
        await store.claim_tasks(
            queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
        )
        == []
    )  # no deadline: only a signal wakes it
    await store.signal_run("a", name="other", payload=None, request_id="", identity="i")
    seq, _ = await store.signal_run(
        "a", name="go", payload=json_payload(1), request_id="", identity="i"
    )
    (woken,) = await store.claim_tasks(
        queues=["wf"], limit=5, lease_nanos=SECOND, worker_id="w", session_id="s"
    )
    dispatched = await store.dispatch(woken, RUNTIME)
    assert dispatched is not None
    assert dispatched.task is not None
    resolution = dispatched.task.journal.waitpoints_resolved["signal:go#1"]
    assert resolution.matched_seq == seq
    assert payload_value(resolution.payload) == 1
    # The other signal stays in the inbox for a later wait.
    assert [s.name for s in dispatched.task.journal.signal_inbox] == ["other"]
    await assert_consistent(store, "a")


async def test_a_malformed_registration_is_refused_and_changes_nothing(store: Store) -> None:
    await store.start_run(StartRunSpec(workflow_name="wf", run_id="a"))
    task = await claim_one(store)
    await store.dispatch(task, RUNTIME)
    before = await store.get_run("a")
    for bad, where in (
        (workflow_pb2.WaitpointRegistration(kind=pb.WAITPOINT_KIND_TIMER), "waitpoint_id"),
        (
            workflow_pb2.WaitpointRegistration(waitpoint_id="x", kind=pb.WAITPOINT_KIND_TIMER),
            "timeout",
        ),
        (
            workflow_pb2.WaitpointRegistration(waitpoint_id="x", kind=pb.WAITPOINT_KIND_SIGNAL),
            "name",
        ),
        (
            workflow_pb2.WaitpointRegistration(waitpoint_id="x", kind=99),  # type: ignore[arg-type]
            "kind",
        ),
    ):
        with pytest.raises(TaskRefusedError, match=rf"waitpoints\[0\]\.{where}") as refused:
            await store.complete_task("a", waiting_result(task.task_id, bad))
        assert refused.value.reason == wpb.TASK_REJECT_REASON_INVALID
    assert (await store.get_run("a")).last_seq == before.last_seq


async def test_a_run_past_its_deadline_is_stopped_and_recorded_timed_out(store: Store) -> None:
    await store.start_run(
        StartRunSpec(workflow_name="wf", run_id="a", execution_timeout=Duration(nanos=1))
    )
    task = await claim_one(store)
    dispatched = await store.dispatch(task, RUNTIME)
    assert dispatched is not None
    assert dispatched.task is not None
    # Dispatched to be stopped: the body compensates as on a cancellation.
    assert dispatched.task.cancel_requested
    assert dispatched.task.cancel_reason == TIMEOUT_REASON
    (lease,) = await store.heartbeat(
        [("a", task.task_id, 1)], lease_nanos=60 * SECOND, session_id="s1", worker_id="w1"
    )
    assert (lease.cancel_requested, lease.cancel_reason) == (True, TIMEOUT_REASON)
    await store.complete_task(
        "a",
        workflow_pb2.WorkflowTaskResult(
            task_id=task.task_id,
            lease_epoch=1,
            run_id="a",
            outcome=workflow_pb2.WORKFLOW_OUTCOME_CANCELLED,
        ),
    )
    snap = await store.get_run("a")
    assert snap.status == pb.RUN_STATUS_TIMED_OUT
    events = await assert_consistent(store, "a")
    assert events[-1].run_timed_out.error.message == TIMEOUT_REASON
