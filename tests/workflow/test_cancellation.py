"""Cancellation: the body gets CancelledSignal at its next live step; compensations run."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from ledgerflow import workflow
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.harness import Counter, MemoryLedger, Runner, counting, outcome_name

CALLS: Counter = {}
UNDONE: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    UNDONE.clear()


def three_steps() -> workflow.WorkflowDefinition[Any, Any]:
    @workflow.defn(name="three")
    async def body(ctx: workflow.Context) -> str:
        for name in ("a", "b", "c"):
            await ctx.step(name, counting(CALLS, name, lambda n=name: n), compensate=UNDONE.append)
        return "done"

    return body


async def test_cancel_requested_before_the_first_step_cancels_with_nothing_to_undo() -> None:
    runner = Runner(three_steps())
    result = await runner.run(cancel_requested=True, cancel_reason="user asked")
    assert outcome_name(result) == "cancelled"
    assert CALLS == {}
    assert (result.error.type, result.error.message) == ("CancelledSignal", "user asked")
    assert not result.compensations
    assert runner.ledger.events == []


async def test_a_cancelled_task_replays_the_journal_then_cancels_and_compensates() -> None:
    ledger = MemoryLedger(fail_at=4)  # a and b commit; the worker dies starting c.
    runner = Runner(three_steps(), ledger)
    with pytest.raises(Exception, match="refused"):
        await runner.run()
    assert set(ledger.journal.step_results) == {"a", "b"}
    ledger.healthy()
    CALLS.clear()

    result = await runner.run(cancel_requested=True)
    assert CALLS == {}, "journaled steps replay; the next live step is not run"
    assert UNDONE == ["b", "a"]
    assert outcome_name(result) == "cancelled"
    assert [c.step_id for c in result.compensations] == ["b", "a"]
    assert result.error.message == "run cancelled"


async def test_cancel_during_a_step_lets_it_finish_then_stops_at_the_next() -> None:
    started = asyncio.Event()
    proceed = asyncio.Event()

    async def long_step() -> str:
        started.set()
        await proceed.wait()
        return "finished"

    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        await ctx.step("long", long_step, compensate=UNDONE.append)
        seen = ctx.cancelled
        await ctx.step("next", counting(CALLS, "next", lambda: 1))
        return f"unreachable {seen}"

    runner = Runner(body)
    execution = runner.execution()
    task = asyncio.ensure_future(execution.run())
    await started.wait()
    execution.cancel("shutting down")
    execution.cancel("second call is ignored")
    proceed.set()
    result = await task
    assert outcome_name(result) == "cancelled"
    assert result.error.message == "shutting down"
    assert CALLS == {}
    assert UNDONE == ["finished"]
    assert runner.ledger.snapshot.steps["long"].status == pb.STEP_STATUS_COMPLETED


async def test_cancel_interrupts_a_retry_backoff() -> None:
    attempts: list[int] = []

    def failing() -> None:
        attempts.append(1)
        raise ConnectionError("down")

    class Blocking:
        def __init__(self) -> None:
            self.sleeping = asyncio.Event()

        async def __call__(self, seconds: float) -> None:
            self.sleeping.set()
            await asyncio.Event().wait()  # Only the cancellation ends this backoff.

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("retry", failing, retry=workflow.RetryPolicy(max_attempts=0))

    sleep = Blocking()
    runner = Runner(body)
    runner.sleep = sleep  # type: ignore[assignment]
    execution = runner.execution()
    task = asyncio.ensure_future(execution.run())
    await sleep.sleeping.wait()
    execution.cancel()
    result = await task
    assert outcome_name(result) == "cancelled"
    assert attempts == [1]
    pending = runner.ledger.journal.pending_steps["retry"]
    assert pending.status == pb.STEP_STATUS_RETRYING


async def test_a_swallowed_cancellation_is_honoured() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        await ctx.step("a", lambda: "a", compensate=UNDONE.append)
        # Swallowing every BaseException is the point of the test.
        with contextlib.suppress(BaseException):
            await ctx.step("b", lambda: "b")
        with contextlib.suppress(BaseException):
            await ctx.step("c", counting(CALLS, "c", lambda: "c"))
        return "pretends to complete"

    ledger = MemoryLedger(fail_at=2)  # "a" commits, then the worker dies.
    runner = Runner(body, ledger)
    with pytest.raises(Exception, match="refused"):
        await runner.run()
    ledger.healthy()
    result = await runner.run(cancel_requested=True)
    assert outcome_name(result) == "cancelled"
    assert CALLS == {}, "a step after a delivered signal raises it again"
    assert UNDONE == ["a"]
    assert any("swallowed CancelledSignal" in line for line in runner.ledger.body_lines())


async def test_a_body_that_propagates_cancellation_gets_no_warning() -> None:
    runner = Runner(three_steps())
    await runner.run(cancel_requested=True)
    assert not any("swallowed" in line for line in runner.ledger.body_lines())


async def test_the_worker_cancelling_run_abandons_the_task() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("forever", forever, compensate=lambda _: UNDONE.append("forever"))

    runner = Runner(body)
    task = asyncio.ensure_future(runner.run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert UNDONE == []
    assert runner.ledger.kinds() == ["step_started"]


async def test_cancel_may_come_from_another_thread() -> None:
    started = asyncio.Event()
    proceed = asyncio.Event()

    async def long_step() -> str:
        started.set()
        await proceed.wait()
        return "finished"

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("long", long_step)
        await ctx.step("next", counting(CALLS, "next", lambda: 1))

    execution = Runner(body).execution()
    task = asyncio.ensure_future(execution.run())
    await started.wait()
    await asyncio.to_thread(execution.cancel, "from a thread")
    proceed.set()
    result = await task
    assert outcome_name(result) == "cancelled"
    assert result.error.message == "from a thread"
    assert CALLS == {}
