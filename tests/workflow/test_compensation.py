"""Compensation: LIFO over completed steps, journaled, resumable, failures do not stop the rest."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledgerflow import workflow
from ledgerflow.ledger import payload_value
from ledgerflow.ledger._time import duration_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.harness import MemoryLedger, Runner, SinkRefusedError, outcome_name

ORDER: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    ORDER.clear()


def undo(name: str, *, fail: bool = False) -> Any:
    def fn(output: Any) -> None:
        ORDER.append(f"{name}:{output}")
        if fail:
            raise RuntimeError(f"cannot undo {name}")

    return fn


def flow(*, failing_undo: str = "", end: str = "raise") -> workflow.WorkflowDefinition[Any, Any]:
    @workflow.defn(name="saga")
    async def body(ctx: workflow.Context) -> str:
        for name in ("a", "b", "c"):
            await ctx.step(
                name, lambda n=name: n.upper(), compensate=undo(name, fail=name == failing_undo)
            )
        await ctx.step("no-undo", lambda: 0)
        if end == "raise":
            raise ValueError("late failure")
        if end == "compensate":
            ctx.compensate()
        return "done"

    return body


async def test_an_uncaught_error_compensates_lifo_with_the_step_outputs() -> None:
    runner = Runner(flow())
    result = await runner.run()
    assert ORDER == ["c:C", "b:B", "a:A"]
    assert outcome_name(result) == "compensated"
    assert (result.error.type, result.error.message) == ("ValueError", "late failure")
    assert [(c.step_id, c.status) for c in result.compensations] == [
        ("c", pb.COMPENSATION_STATUS_COMPLETED),
        ("b", pb.COMPENSATION_STATUS_COMPLETED),
        ("a", pb.COMPENSATION_STATUS_COMPLETED),
    ]
    assert all(duration_nanos(c.duration) > 0 for c in result.compensations)


async def test_each_compensation_is_journaled_started_then_finished() -> None:
    runner = Runner(flow(failing_undo="b"))
    await runner.run()
    ledger = runner.ledger
    tail = [
        (e.WhichOneof("payload"), getattr(e, str(e.WhichOneof("payload"))).step_id)
        for e in ledger.events
        if str(e.WhichOneof("payload")).startswith("compensation")
    ]
    assert tail == [
        ("compensation_started", "c"),
        ("compensation_completed", "c"),
        ("compensation_started", "b"),
        ("compensation_failed", "b"),
        ("compensation_started", "a"),
        ("compensation_completed", "a"),
    ]
    assert ledger.journal.compensations_run["b"].error.message == "cannot undo b"
    assert [c.step_id for c in ledger.snapshot.compensations] == ["c", "b", "a"]


async def test_a_failing_compensation_does_not_stop_the_rest() -> None:
    result = await Runner(flow(failing_undo="b")).run()
    assert ORDER == ["c:C", "b:B", "a:A"]
    assert outcome_name(result) == "compensation_failed"
    failed = [c for c in result.compensations if c.status == pb.COMPENSATION_STATUS_FAILED]
    assert [(c.step_id, c.error.type, c.error.message) for c in failed] == [
        ("b", "RuntimeError", "cannot undo b")
    ]
    assert result.error.message == "late failure"


async def test_ctx_compensate_compensates_without_an_error() -> None:
    result = await Runner(flow(end="compensate")).run()
    assert ORDER == ["c:C", "b:B", "a:A"]
    assert outcome_name(result) == "compensated"
    assert not result.HasField("error")


async def test_ctx_compensate_with_nothing_to_compensate_is_compensated() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("x", lambda: 1)
        ctx.compensate()

    result = await Runner(body).run()
    assert outcome_name(result) == "compensated"
    assert not result.compensations


async def test_a_completed_body_compensates_nothing() -> None:
    result = await Runner(flow(end="return")).run()
    assert ORDER == []
    assert outcome_name(result) == "completed"


async def test_failed_steps_are_not_compensated() -> None:
    def broken(x: int) -> int:
        raise OSError("disk")

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("ok", lambda: "fine", compensate=undo("ok"))
        await ctx.step("broken", broken, 1, compensate=undo("broken"))

    result = await Runner(body).run()
    assert ORDER == ["ok:fine"]
    assert outcome_name(result) == "compensated"
    assert (result.error.type, result.error.cause.type) == ("StepFailedError", "OSError")


async def test_async_compensations_get_the_typed_output() -> None:
    seen: list[object] = []

    def make() -> tuple[int, str]:
        return (1, "x")

    async def revert(value: tuple[int, str]) -> None:
        await asyncio.sleep(0)
        seen.append(value)

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("make", make, compensate=revert)
        ctx.compensate()

    await Runner(body).run()
    assert seen == [(1, "x")]


async def test_concurrent_steps_compensate_in_reverse_call_order() -> None:
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "slow"

    async def fast() -> str:
        release.set()
        return "fast"

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        # "slow" is called first but finishes last.
        await asyncio.gather(
            ctx.step("slow", slow, compensate=undo("slow")),
            ctx.step("fast", fast, compensate=undo("fast")),
        )
        ctx.compensate()

    await Runner(body).run()
    assert ORDER == ["fast:fast", "slow:slow"]


async def test_a_crash_mid_compensation_neither_repeats_nor_skips_one() -> None:
    ledger = MemoryLedger()
    runner = Runner(flow(failing_undo="b"), ledger)
    # Appends: 4 steps (start+result each, as separate batches for sync steps) then
    # compensations; crash right after the first compensation finished.
    appends: list[int] = []
    original = ledger.append

    async def watching(events: Any) -> None:
        await original(events)
        if any(e.WhichOneof("payload") == "compensation_completed" for e in events):
            appends.append(len(ledger.calls))
            raise SinkRefusedError("worker killed")

    ledger.append = watching  # type: ignore[method-assign]
    with pytest.raises(SinkRefusedError):
        await runner.run()
    assert ORDER == ["c:C"]
    assert set(ledger.journal.compensations_run) == {"c"}

    ledger.append = original  # type: ignore[method-assign]
    result = await runner.run()
    assert ORDER == ["c:C", "b:B", "a:A"], "c is not compensated twice, b and a are not skipped"
    assert [(c.step_id, c.status) for c in result.compensations] == [
        ("c", pb.COMPENSATION_STATUS_COMPLETED),
        ("b", pb.COMPENSATION_STATUS_FAILED),
        ("a", pb.COMPENSATION_STATUS_COMPLETED),
    ]
    assert outcome_name(result) == "compensation_failed"


async def test_a_compensation_started_but_not_finished_runs_again() -> None:
    ledger = MemoryLedger()
    runner = Runner(flow(), ledger)
    original = ledger.append

    async def crash_on_started(events: Any) -> None:
        await original(events)
        if any(e.WhichOneof("payload") == "compensation_started" for e in events):
            raise SinkRefusedError("worker killed")

    ledger.append = crash_on_started  # type: ignore[method-assign]
    with pytest.raises(SinkRefusedError):
        await runner.run()
    ledger.append = original  # type: ignore[method-assign]
    result = await runner.run()
    assert ORDER.count("c:C") == 2, "at least once: its finish was never committed"
    assert ORDER[-3:] == ["c:C", "b:B", "a:A"]
    assert outcome_name(result) == "compensated"


async def test_steps_finishing_after_the_body_failed_are_recorded_then_compensated() -> None:
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "late"

    async def fail() -> None:
        raise RuntimeError("branch failed")

    after: list[str] = []

    async def branch(ctx: workflow.Context) -> None:
        await ctx.step("slow", slow, compensate=undo("slow"))
        after.append("continued")
        await ctx.step("never", lambda: 1)

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        try:
            await asyncio.gather(branch(ctx), ctx.step("fail", fail))
        finally:
            gate.set()  # "slow" finishes only after the body has ended.

    runner = Runner(body)
    result = await runner.run()
    assert ORDER == ["slow:late"]
    assert after == ["continued"]
    assert "never" not in runner.ledger.journal.step_results
    assert "never" not in runner.ledger.journal.pending_steps
    assert outcome_name(result) == "compensated"
    assert payload_value(runner.ledger.journal.step_results["slow"].output) == "late"
