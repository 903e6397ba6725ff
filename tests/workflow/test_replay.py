"""Replay: journaled steps return their recorded result without running; changed bodies fail."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any

import pytest

from ledgerflow import workflow
from ledgerflow.errors import NonDeterminismError, StepFailedError
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import journal_pb2
from tests.workflow.harness import Counter, MemoryLedger, Runner, counting, make_task

CALLS: Counter = {}


def build(*steps: str, fail: str = "") -> workflow.WorkflowDefinition[Any, Any]:
    """A body calling ``steps`` in order; the step named ``fail`` raises."""

    def impl(name: str) -> Any:
        def fn(x: int) -> int:
            if name == fail:
                raise KeyError(f"no {name}")
            return x + 1

        return counting(CALLS, name, fn)

    fns = {name: impl(name) for name in steps}

    @workflow.defn(name="steps")
    async def body(ctx: workflow.Context, n: int) -> dict[str, Any]:
        seen: dict[str, Any] = {"before": ctx.random()}
        for name in steps:
            try:
                n = await ctx.step(name, fns[name], n)
            except StepFailedError as err:
                seen["error"] = (err.step_id, err.error_type, err.error.message)
        seen["n"] = n
        seen["after"] = ctx.random()
        seen["uuid"] = str(ctx.uuid4())
        seen["now"] = ctx.now().isoformat()
        return seen

    return body


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


async def test_replay_returns_recorded_outputs_without_running_steps() -> None:
    runner = Runner(build("a", "b", "c"), workflow_input=0)
    first = await runner.run()
    assert CALLS == {"a": 1, "b": 1, "c": 1}
    events = len(runner.ledger.events)

    second = await runner.run()
    assert CALLS == {"a": 1, "b": 1, "c": 1}
    assert len(runner.ledger.events) == events, "a full replay appends nothing"
    assert second.output == first.output
    assert payload_value(second.output)["n"] == 3


async def test_replay_raises_the_recorded_step_error_without_running() -> None:
    runner = Runner(build("a", "b", "c", fail="b"), workflow_input=0)
    first = await runner.run()
    assert payload_value(first.output)["error"] == ["b", "KeyError", "'no b'"]
    second = await runner.run()
    assert CALLS == {"a": 1, "b": 1, "c": 1}
    assert second.output == first.output


async def test_replay_continues_live_after_the_journal() -> None:
    runner = Runner(build("a", "b"), workflow_input=0)
    await runner.run()
    runner.definition = build("a", "b", "c")
    result = await runner.run()
    assert CALLS == {"a": 1, "b": 1, "c": 1}
    assert payload_value(result.output)["n"] == 3
    assert runner.ledger.journal.step_results["c"].ordinal == 3


async def test_replay_from_the_reduced_journal_matches_live_time_and_randomness() -> None:
    runner = Runner(build("a", "b"), workflow_input=0)
    first = payload_value((await runner.run()).output)
    second = payload_value((await runner.run()).output)
    assert first == second


async def test_is_replaying_is_true_until_the_body_reaches_the_journals_end() -> None:
    seen: list[bool] = []

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        for name in ("a", "b"):
            seen.append(ctx.is_replaying)
            await ctx.step(name, lambda: 1)
        seen.append(ctx.is_replaying)

    runner = Runner(body)
    await runner.run()
    await runner.run()
    assert seen == [False, False, False, True, True, False]


@pytest.mark.parametrize(
    ("recorded", "changed", "expected"),
    [
        (("a", "b", "c"), ("a", "x", "c"), "step call #2: the ledger recorded step 'b' here"),
        (("a", "b"), ("b", "a"), "step call #1: the ledger recorded step 'a' here"),
        (("a", "b", "c"), ("a", "c"), "step call #2: the ledger recorded step 'b' here"),
        (("a", "b", "c"), ("a", "b"), "no longer calls: 'c' (ordinal 3)"),
        (("a", "a"), ("a",), "no longer calls: 'a#2' (ordinal 2)"),
    ],
)
async def test_a_changed_body_fails_the_task_with_non_determinism(
    recorded: tuple[str, ...], changed: tuple[str, ...], expected: str
) -> None:
    runner = Runner(build(*recorded), workflow_input=0)
    await runner.run()
    events = len(runner.ledger.events)
    CALLS.clear()
    runner.definition = build(*changed)
    with pytest.raises(NonDeterminismError, match=re.escape(expected)):
        await runner.run()
    assert CALLS == {}, "no step of a non-deterministic replay runs"
    assert len(runner.ledger.events) == events, "nothing is appended"


async def test_non_determinism_names_the_ordinal_and_both_steps() -> None:
    runner = Runner(build("a", "b"), workflow_input=0)
    await runner.run()
    runner.definition = build("a", "x")
    with pytest.raises(NonDeterminismError) as info:
        await runner.run()
    assert (info.value.ordinal, info.value.step_id, info.value.recorded_step_id) == (2, "x", "b")


async def test_a_step_pending_at_another_ordinal_is_non_deterministic() -> None:
    ledger = MemoryLedger()
    runner = Runner(build("a", "b"), ledger, workflow_input=0)
    ledger.fail_at = 3  # a's started+completed, b's started commit; b's result is lost.
    ledger.fail_mode = "before"
    with pytest.raises(Exception, match="refused"):
        await runner.run()
    assert "b" in ledger.journal.pending_steps
    ledger.healthy()
    runner.definition = build("b")
    with pytest.raises(NonDeterminismError, match="step call #1"):
        await runner.run()


async def test_a_swallowed_non_determinism_error_still_fails_the_task() -> None:
    @workflow.defn(name="steps")
    async def first(ctx: workflow.Context) -> None:
        await ctx.step("a", lambda: 1)

    @workflow.defn(name="steps")
    async def changed(ctx: workflow.Context) -> str:
        with contextlib.suppress(NonDeterminismError):
            await ctx.step("other", lambda: 1)
        try:
            await ctx.step("more", lambda: 2)
        except NonDeterminismError:
            return "swallowed"
        return "unreachable"

    runner = Runner(first)
    await runner.run()
    runner.definition = changed
    with pytest.raises(NonDeterminismError, match="'a'"):
        await runner.run()


@dataclasses.dataclass
class Shape:
    x: int


def old_shape() -> dict[str, int]:
    return {"y": 1}


def new_shape() -> Shape:
    return Shape(x=1)


async def test_a_recorded_output_that_no_longer_decodes_is_non_deterministic() -> None:
    @workflow.defn(name="typed")
    async def old(ctx: workflow.Context) -> None:
        await ctx.step("value", old_shape)

    @workflow.defn(name="typed")
    async def new(ctx: workflow.Context) -> None:
        await ctx.step("value", new_shape)

    runner = Runner(old)
    await runner.run()
    runner.definition = new
    with pytest.raises(NonDeterminismError, match="no longer decodes as Shape"):
        await runner.run()


async def test_journal_entries_without_name_or_ordinal_match_by_id() -> None:
    """Other producers may record results without ordinal and name; replay matches the id."""
    ledger = MemoryLedger()
    entry = ledger.journal.step_results["a"]
    entry.step_id = entry.name = "a"
    entry.status = journal_pb2.STEP_RESULT_STATUS_COMPLETED
    entry.output.CopyFrom(json_payload(41))
    runner = Runner(build("a"), ledger, workflow_input=0)
    result = await runner.run()
    assert payload_value(result.output)["n"] == 41
    assert CALLS == {}


async def test_the_task_is_not_modified() -> None:
    ledger = MemoryLedger()
    runner = Runner(build("a", "b"), ledger, workflow_input=0)
    await runner.run()
    task = make_task(ledger, 0, invocation=2)
    before = task.SerializeToString(deterministic=True)
    execution = workflow.WorkflowExecution(build("a", "b", "c"), task, ledger)
    await execution.run()
    assert task.SerializeToString(deterministic=True) == before
