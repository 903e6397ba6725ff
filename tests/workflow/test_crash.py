"""Crash at every append, before or after it commits, then re-execute from the reduced journal.

For each workflow below, an uninterrupted run is the baseline. Then, for every append
call N of the baseline, a run whose sink raises at call N (``before``: the batch is
lost; ``after``: it committed but the ack was lost) is followed by a re-execution on a
healthy sink, from the journal the real ledger core reduced so far. The re-execution must
end exactly as the baseline did (result, journal, stored body log lines, metadata), and no
step or compensation whose completion was committed may run again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from ledgerflow import workflow
from ledgerflow.v1 import workflow_pb2
from tests.workflow.harness import (
    Counter,
    MemoryLedger,
    Runner,
    SinkRefusedError,
    comparable_journal,
    comparable_result,
    outcome_name,
)


@dataclass
class Scenario:
    definition: workflow.WorkflowDefinition[Any, Any]
    calls: Counter
    workflow_input: Any = None


Factory = Callable[[MemoryLedger], Scenario]


def saga(ledger: MemoryLedger) -> Scenario:
    """Sequential steps with logs, metadata, progress, checkpoints; the last step fails."""
    calls: Counter = {}

    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    def reserve(item: str) -> dict[str, str]:
        count("reserve")
        return {"reservation": f"r-{item}"}

    async def charge(amount: int) -> dict[str, int]:
        count("charge")
        await asyncio.sleep(0)
        return {"charged": amount}

    def notify() -> str:
        count("notify")
        return "sent"

    def ship() -> None:
        count("ship")
        raise RuntimeError("carrier down")

    def release(reservation: dict[str, str]) -> None:
        count("release")

    async def refund(charged: dict[str, int]) -> None:
        count("refund")
        raise ValueError(f"refund of {charged['charged']} refused")

    @workflow.defn(name="saga")
    async def body(ctx: workflow.Context, order: dict[str, Any]) -> dict[str, Any]:
        ctx.log.info("checkout %s", order["id"])
        ctx.metadata.set("order", order["id"])
        reservation = await ctx.step("reserve", reserve, order["item"], compensate=release)
        ctx.metadata.increment("steps")
        ctx.progress("checkout", completed=1, total=3)
        ctx.checkpoint("reserved")
        charged = await ctx.step("charge", charge, order["amount"], compensate=refund)
        ctx.metadata.increment("steps")
        ctx.log.info("charged\n%s", charged["charged"])
        await ctx.step("notify", notify)
        ctx.metadata.append("trail", "notified")
        ctx.checkpoint("shipping")
        ctx.log.warn("shipping")
        try:
            await ctx.step("ship", ship)
        except workflow.StepFailedError:
            # Emitted after the last step: committed with the first compensation.
            ctx.checkpoint("ship failed")
            ctx.log.error("ship failed")
            ctx.metadata.set("failed", True)
            raise
        return {"reservation": reservation}

    return Scenario(body, calls, {"id": "o-1", "item": "book", "amount": 12})


def retried(ledger: MemoryLedger) -> Scenario:
    """A step that fails twice (judged by the committed ledger) before it succeeds."""
    calls: Counter = {}

    def flaky() -> str:
        calls["flaky"] = calls.get("flaky", 0) + 1
        failures = sum(1 for e in ledger.of_type("step_failed") if e.step_failed.step_id == "flaky")
        if failures < 2:
            raise ConnectionError(f"try {failures + 1}")
        return "ok"

    def prepare() -> int:
        calls["prepare"] = calls.get("prepare", 0) + 1
        return 7

    @workflow.defn(name="retried")
    async def body(ctx: workflow.Context) -> dict[str, Any]:
        n = await ctx.step("prepare", prepare)
        ctx.log.info("prepared %d", n)
        status = await ctx.step(
            "flaky",
            flaky,
            retry=workflow.RetryPolicy(max_attempts=5),
        )
        ctx.metadata.set("status", status)
        ctx.log.info("done")
        return {"n": n, "status": status, "pick": ctx.random()}

    return Scenario(body, calls)


def fan_out(ledger: MemoryLedger) -> Scenario:
    """Three concurrent steps with compensations, then a failing step: compensated LIFO."""
    calls: Counter = {}

    def make(name: str) -> Callable[[], Awaitable[str]]:
        async def fn() -> str:
            calls[name] = calls.get(name, 0) + 1
            await asyncio.sleep(0)
            return name.upper()

        return fn

    def undo(name: str) -> Callable[[str], None]:
        def fn(output: str) -> None:
            calls[f"undo-{name}"] = calls.get(f"undo-{name}", 0) + 1

        return fn

    def boom() -> None:
        calls["boom"] = calls.get("boom", 0) + 1
        raise LookupError("missing")

    @workflow.defn(name="fan-out")
    async def body(ctx: workflow.Context) -> list[str]:
        ctx.log.info("fanning out")
        results = await asyncio.gather(
            *(ctx.step(n, make(n), compensate=undo(n)) for n in ("a", "b", "c"))
        )
        ctx.metadata.set("results", list(results))
        await ctx.step("boom", boom)
        return list(results)

    return Scenario(body, calls)


SCENARIOS: dict[str, Factory] = {"saga": saga, "retried": retried, "fan_out": fan_out}
EXPECTED_OUTCOMES = {
    "saga": "compensation_failed",
    "retried": "completed",
    "fan_out": "compensated",
}


@dataclass
class Baseline:
    result: dict[str, Any]
    journal: dict[str, Any]
    lines: list[str]
    checkpoints: int
    appends: int
    calls: Counter


async def baseline(name: str) -> Baseline:
    ledger = MemoryLedger()
    scenario = SCENARIOS[name](ledger)
    runner = Runner(scenario.definition, ledger, scenario.workflow_input)
    result = await runner.run()
    assert outcome_name(result) == EXPECTED_OUTCOMES[name]
    return Baseline(
        result=comparable_result(result),
        journal=comparable_journal(ledger.journal),
        lines=ledger.body_lines(),
        checkpoints=len(ledger.of_type("checkpoint_recorded")),
        appends=len(ledger.calls),
        calls=dict(scenario.calls),
    )


def test_every_baseline_has_several_appends() -> None:
    for name in SCENARIOS:
        assert asyncio.run(baseline(name)).appends >= 4, name


@pytest.mark.parametrize("mode", ["before", "after"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_crash_at_every_append_then_replay_ends_like_the_uninterrupted_run(
    name: str, mode: Literal["before", "after"]
) -> None:
    base = await baseline(name)
    for crash_at in range(base.appends):
        where = f"{name}: crash at append {crash_at} ({mode} commit)"
        ledger = MemoryLedger(fail_at=crash_at, fail_mode=mode)
        scenario = SCENARIOS[name](ledger)
        runner = Runner(scenario.definition, ledger, scenario.workflow_input)
        with pytest.raises(SinkRefusedError):
            await runner.run()
        committed_steps = {
            step_id for step_id, entry in ledger.journal.step_results.items() if entry.status != 0
        }
        committed_compensations = set(ledger.journal.compensations_run)

        ledger.healthy()
        scenario.calls.clear()
        result = await runner.run()

        assert comparable_result(result) == base.result, where
        assert comparable_journal(ledger.journal) == base.journal, where
        assert ledger.body_lines() == base.lines, where
        for step_id in committed_steps:
            assert scenario.calls.get(step_id, 0) == 0, f"{where}: {step_id} ran again"
        for step_id in committed_compensations:
            assert scenario.calls.get(f"undo-{step_id}", 0) == 0, where
            assert (
                scenario.calls.get({"reserve": "release", "charge": "refund"}.get(step_id, ""), 0)
                == 0
            ), where
        if name == "saga":
            assert len(ledger.of_type("checkpoint_recorded")) == base.checkpoints, where


async def test_a_crash_loses_at_most_the_step_in_flight() -> None:
    """Across all crash points, a step runs at most twice: once lost, once for good."""
    base = await baseline("saga")
    for crash_at in range(base.appends):
        ledger = MemoryLedger(fail_at=crash_at)
        scenario = saga(ledger)
        runner = Runner(scenario.definition, ledger, scenario.workflow_input)
        with pytest.raises(SinkRefusedError):
            await runner.run()
        first = dict(scenario.calls)
        scenario.calls.clear()
        ledger.healthy()
        await runner.run()
        total = {k: first.get(k, 0) + scenario.calls.get(k, 0) for k in base.calls}
        rerun = [k for k, v in total.items() if v > base.calls[k]]
        assert len(rerun) <= 1, (crash_at, rerun)
        assert all(total[k] <= base.calls[k] + 1 for k in total), (crash_at, total)


async def test_a_refused_append_stops_the_task_and_appends_nothing_more() -> None:
    ledger = MemoryLedger(fail_at=1)
    scenario = saga(ledger)
    runner = Runner(scenario.definition, ledger, scenario.workflow_input)
    with pytest.raises(SinkRefusedError, match="append #1 refused"):
        await runner.run()
    assert len(ledger.calls) == 2
    assert scenario.calls == {"reserve": 1}


async def test_a_body_that_swallows_the_abort_still_stops() -> None:
    ledger = MemoryLedger(fail_at=0)

    @workflow.defn
    async def stubborn(ctx: workflow.Context) -> str:
        for name in ("a", "b", "c"):
            with contextlib.suppress(BaseException):  # The point of the test.
                await ctx.step(name, lambda: 1)
        return "finished anyway"

    with pytest.raises(SinkRefusedError):
        await Runner(stubborn, ledger).run()
    assert len(ledger.calls) == 1


def test_result_outcomes_are_the_reference_names() -> None:
    assert workflow_pb2.WorkflowOutcome.Name(workflow_pb2.WORKFLOW_OUTCOME_COMPENSATION_FAILED)
