"""Durable waits in the engine: ``ctx.sleep`` and ``ctx.wait_for_signal`` against a journal."""

from __future__ import annotations

import pytest

from ledgerflow import workflow
from ledgerflow.ledger import json_payload
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.harness import RUN_START_NS, Runner, outcome_name

UNDONE: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    UNDONE.clear()


def resolve(
    runner: Runner,
    waitpoint_id: str,
    kind: pb.WaitpointKind.ValueType,
    *,
    at_ns: int,
    payload: object = None,
    timed_out: bool = False,
) -> None:
    """Resolve a waitpoint in the runner's ledger, as the coordinator does."""
    event = pb.LedgerEvent(run_id=runner.ledger.run_id, source=pb.EVENT_SOURCE_COORDINATOR)
    set_nanos(event.event_time, at_ns)
    e = event.waitpoint_resolved
    e.waitpoint_id = waitpoint_id
    e.kind = kind
    e.timed_out = timed_out
    if payload is not None:
        e.payload.CopyFrom(json_payload(payload))
    runner.ledger.commit(event)


@workflow.defn
async def napper(ctx: workflow.Context) -> float:
    await ctx.step("a", lambda: "a")
    began = ctx.now()
    await ctx.sleep(60)
    await ctx.step("b", lambda: "b")
    return (ctx.now() - began).total_seconds()


async def test_a_sleep_ends_the_invocation_waiting_then_replays_past_its_resolution() -> None:
    runner = Runner(napper)
    first = await runner.run()
    assert outcome_name(first) == "waiting"
    (timer,) = first.waitpoints
    assert (timer.waitpoint_id, timer.kind) == ("sleep#1", pb.WAITPOINT_KIND_TIMER)
    # What was left of the minute when the result was built, on the worker's clock.
    assert 59 < timer.timeout.seconds + timer.timeout.nanos / 1e9 <= 60
    assert runner.ledger.of_type("step_completed")[-1].step_completed.step_id == "a"

    fired_at = RUN_START_NS + 61 * 1_000_000_000
    resolve(runner, "sleep#1", pb.WAITPOINT_KIND_TIMER, at_ns=fired_at)
    second = await runner.run()
    assert outcome_name(second) == "completed"
    # ctx.now() after the sleep is the resolution's time; step "a" was not run again.
    assert [e.step_started.step_id for e in runner.ledger.of_type("step_started")] == ["a", "b"]
    assert float(second.output.data) >= 60


@workflow.defn
async def approver(ctx: workflow.Context) -> object:
    try:
        return await ctx.wait_for_signal("approve", timeout=5)
    except workflow.WaitTimeoutError as err:
        return f"timed out: {err.waitpoint_id}"


@pytest.mark.parametrize(
    ("timed_out", "expected"),
    [(False, {"ok": True}), (True, "timed out: signal:approve#1")],
)
async def test_a_signal_wait_returns_the_payload_or_raises_on_timeout(
    timed_out: bool, expected: object
) -> None:
    runner = Runner(approver)
    first = await runner.run()
    (wait,) = first.waitpoints
    assert (wait.waitpoint_id, wait.kind, wait.name) == (
        "signal:approve#1",
        pb.WAITPOINT_KIND_SIGNAL,
        "approve",
    )
    assert wait.HasField("timeout")
    resolve(
        runner,
        "signal:approve#1",
        pb.WAITPOINT_KIND_SIGNAL,
        at_ns=RUN_START_NS + 10**9,
        payload=None if timed_out else {"ok": True},
        timed_out=timed_out,
    )
    second = await runner.run()
    assert outcome_name(second) == "completed"
    assert json_payload(expected).data == second.output.data


async def test_a_wait_resolved_as_another_kind_is_non_determinism() -> None:
    runner = Runner(napper)
    await runner.run()
    resolve(runner, "sleep#1", pb.WAITPOINT_KIND_SIGNAL, at_ns=RUN_START_NS)
    with pytest.raises(workflow.NonDeterminismError, match="sleep#1"):
        await runner.run()


@workflow.defn
async def saga_nap(ctx: workflow.Context) -> str:
    await ctx.step("reserve", lambda: "r", compensate=lambda _: UNDONE.append("reserve"))
    await ctx.sleep(3600)
    return "done"


async def test_a_run_cancelled_while_it_sleeps_compensates_instead_of_waiting() -> None:
    runner = Runner(saga_nap)
    assert outcome_name(await runner.run()) == "waiting"
    result = await runner.run(cancel_requested=True, cancel_reason="no longer needed")
    assert outcome_name(result) == "cancelled"
    assert not result.waitpoints
    assert UNDONE == ["reserve"]
