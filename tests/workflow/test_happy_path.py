"""A workflow runs live: steps are journaled write-ahead and the result is derived from the body."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from ledgerflow import workflow
from ledgerflow.ledger import payload_value
from ledgerflow.ledger._time import to_nanos
from ledgerflow.v1 import journal_pb2, workflow_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.harness import RUN_START_NS, MemoryLedger, Runner, outcome_name


def add(a: int, b: int) -> int:
    return a + b


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@workflow.defn(name="math")
async def math_flow(ctx: workflow.Context, n: int) -> dict[str, int]:
    a = await ctx.step("add", add, n, 1)
    b = await ctx.step("double", double, a)
    c = await ctx.step("add", add, b, 100)
    return {"a": a, "b": b, "c": c}


async def test_steps_run_and_the_result_is_completed() -> None:
    runner = Runner(math_flow, workflow_input=4)
    result = await runner.run()
    assert outcome_name(result) == "completed"
    assert payload_value(result.output) == {"a": 5, "b": 10, "c": 110}
    assert (result.task_id, result.lease_epoch, result.run_id) == ("task-1", 1, "run-1")
    assert not result.HasField("error")


async def test_each_step_is_journaled_with_ordinal_name_and_suffixed_ids() -> None:
    runner = Runner(math_flow, workflow_input=4)
    await runner.run()
    journal = runner.ledger.journal
    assert not journal.pending_steps
    got = {
        step_id: (e.name, e.ordinal, e.attempt, payload_value(e.output))
        for step_id, e in journal.step_results.items()
    }
    assert got == {
        "add": ("add", 1, 1, 5),
        "double": ("double", 2, 1, 10),
        "add#2": ("add", 3, 1, 110),
    }
    assert all(
        e.status == journal_pb2.STEP_RESULT_STATUS_COMPLETED for e in journal.step_results.values()
    )


async def test_step_started_precedes_every_result_and_carries_the_worker() -> None:
    runner = Runner(math_flow, workflow_input=4)
    await runner.run()
    ledger = runner.ledger
    assert ledger.kinds() == ["step_started", "step_completed"] * 3
    started = [e.step_started for e in ledger.of_type("step_started")]
    assert [(s.step_id, s.name, s.ordinal, s.attempt, s.kind, s.worker_id) for s in started] == [
        ("add", "add", 1, 1, "function", "worker-a"),
        ("double", "double", 2, 1, "function", "worker-a"),
        ("add#2", "add", 3, 1, "function", "worker-a"),
    ]
    snapshot = ledger.snapshot
    assert list(snapshot.ordered_step_ids) == ["add", "double", "add#2"]
    assert all(s.status == pb.STEP_STATUS_COMPLETED for s in snapshot.steps.values())


async def test_no_run_event_is_appended_by_the_engine() -> None:
    runner = Runner(math_flow, workflow_input=1)
    await runner.run()
    assert not [k for k in runner.ledger.kinds() if k.startswith("run_")]


@workflow.defn
async def clocked(ctx: workflow.Context) -> list[str]:
    times = [ctx.now()]
    await ctx.step("one", add, 1, 2)
    times.append(ctx.now())
    await ctx.step("two", add, 1, 2)
    times.append(ctx.now())
    return [t.isoformat() for t in times]


async def test_now_is_the_run_start_then_each_steps_journaled_finish_time() -> None:
    runner = Runner(clocked)
    result = await runner.run()
    times = [datetime.fromisoformat(t) for t in payload_value(result.output)]
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=RUN_START_NS // 1000)
    assert times[0] == start
    finishes = [to_nanos(runner.ledger.journal.step_results[s].finish_time) for s in ("one", "two")]
    assert [int(t.timestamp() * 1_000_000) * 1000 for t in times[1:]] == finishes
    assert times[0] < times[1] < times[2]
    # The step's finish time is the event time of its step_completed.
    completed = runner.ledger.of_type("step_completed")
    assert [to_nanos(e.event_time) for e in completed] == finishes


@workflow.defn(name="identity", version="3")
async def identity(ctx: workflow.Context) -> dict[str, object]:
    return {
        "run_id": ctx.run_id,
        "attempt": ctx.attempt,
        "cancelled": ctx.cancelled,
        "name": ctx.workflow_name,
        "replaying": ctx.is_replaying,
    }


async def test_context_properties() -> None:
    runner = Runner(identity, MemoryLedger(run_id="order-7"))
    result = await runner.run()
    assert payload_value(result.output) == {
        "run_id": "order-7",
        "attempt": 1,
        "cancelled": False,
        "name": "identity",
        "replaying": False,
    }


@workflow.defn
async def returns_none(ctx: workflow.Context) -> None:
    await ctx.step("noop", lambda: None)


async def test_a_body_returning_none_completes_with_a_null_output() -> None:
    result = await Runner(returns_none).run()
    assert result.outcome == workflow_pb2.WORKFLOW_OUTCOME_COMPLETED
    assert payload_value(result.output) is None


@workflow.defn
async def unencodable(ctx: workflow.Context) -> object:
    return object()


async def test_an_output_without_json_form_fails_the_run() -> None:
    result = await Runner(unencodable).run()
    assert outcome_name(result) == "failed"
    assert result.error.type == "TypeError"


@workflow.defn
async def body_raises(ctx: workflow.Context, order_id: str) -> None:
    await ctx.step("load", add, 1, 1)
    raise ValueError(f"order {order_id} is invalid")


async def test_an_uncaught_body_error_without_compensations_fails_the_run() -> None:
    result = await Runner(body_raises, workflow_input="o-1").run()
    assert outcome_name(result) == "failed"
    assert (result.error.type, result.error.message) == ("ValueError", "order o-1 is invalid")
    assert result.error.category == "USER_ERROR"
    assert "body_raises" in result.error.stack_trace
    assert not result.compensations
