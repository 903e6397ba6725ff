"""Retries and timeouts: every attempt is a ledger fact; replay does not run recorded attempts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from ledgerflow import workflow
from ledgerflow.errors import StepFailedError
from ledgerflow.ledger import payload_value
from ledgerflow.ledger._time import to_nanos
from ledgerflow.v1 import journal_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.harness import MemoryLedger, Runner, outcome_name

POLICY = workflow.RetryPolicy(
    max_attempts=4,
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=3,
    max_interval=timedelta(seconds=10),
)


def test_backoff_grows_by_the_coefficient_up_to_the_cap() -> None:
    assert [POLICY.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2, 6, 10, 10]
    default = workflow.RetryPolicy(initial_interval=timedelta(seconds=1))
    assert default.backoff(50) == timedelta(seconds=100), "100 x the initial interval"
    assert default.backoff(10_000) == timedelta(seconds=100), "no overflow"


def test_attempt_budget() -> None:
    assert [POLICY.allows_attempt(n) for n in (1, 4, 5)] == [True, True, False]
    assert workflow.RetryPolicy(max_attempts=0).allows_attempt(1_000_000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": -1},
        {"backoff_coefficient": 0.5},
        {"initial_interval": timedelta(seconds=-1)},
        {"initial_interval": timedelta(seconds=5), "max_interval": timedelta(seconds=1)},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        workflow.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_non_retryable_types_match_the_class_and_its_bases() -> None:
    policy = workflow.RetryPolicy(non_retryable_error_types=["LookupError"])
    assert not policy.is_retryable(KeyError("x"))
    assert policy.is_retryable(ValueError("x"))
    flagged = ValueError("x")
    flagged.non_retryable = True  # type: ignore[attr-defined]
    assert not policy.is_retryable(flagged)
    assert isinstance(policy.non_retryable_error_types, tuple)


def failing_then_ok(failures: int) -> tuple[list[int], workflow.WorkflowDefinition[None, str]]:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return f"ok after {len(calls)}"

    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        return await ctx.step("flaky", flaky, retry=POLICY)

    return calls, body


async def test_failed_attempts_are_ledger_facts_then_the_step_completes() -> None:
    _, body = failing_then_ok(2)
    runner = Runner(body)
    result = await runner.run()
    assert payload_value(result.output) == "ok after 3"
    assert runner.sleep.calls == [2, 6]
    ledger = runner.ledger
    facts = [
        (e.WhichOneof("payload"), getattr(e, str(e.WhichOneof("payload"))).attempt)
        for e in ledger.events
    ]
    assert facts == [
        ("step_started", 1),
        ("step_failed", 1),
        ("step_started", 2),
        ("step_failed", 2),
        ("step_started", 3),
        ("step_completed", 3),
    ]
    failed = ledger.of_type("step_failed")
    assert all(e.step_failed.will_retry for e in failed)
    assert [
        (to_nanos(e.step_failed.next_attempt_time) - to_nanos(e.event_time)) / 1e9 for e in failed
    ] == [2, 6]
    assert failed[0].step_failed.error.message == "attempt 1 failed"
    entry = ledger.journal.step_results["flaky"]
    assert (entry.attempt, entry.status) == (3, journal_pb2.STEP_RESULT_STATUS_COMPLETED)
    assert ledger.snapshot.steps["flaky"].status == pb.STEP_STATUS_COMPLETED


async def test_exhausted_attempts_fail_the_step_for_good() -> None:
    calls, body = failing_then_ok(10)
    runner = Runner(body)
    result = await runner.run()
    assert calls == [1, 2, 3, 4]
    assert outcome_name(result) == "failed"
    assert (result.error.type, result.error.cause.type) == ("StepFailedError", "ConnectionError")
    last = runner.ledger.of_type("step_failed")[-1].step_failed
    assert (last.attempt, last.will_retry) == (4, False)
    assert runner.ledger.snapshot.steps["flaky"].status == pb.STEP_STATUS_FAILED


async def test_non_retryable_errors_fail_at_once() -> None:
    def invalid() -> None:
        raise KeyError("no such order")

    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        policy = workflow.RetryPolicy(non_retryable_error_types=["LookupError"])
        try:
            await ctx.step("lookup", invalid, retry=policy)
        except StepFailedError as err:
            return f"{err.error_type} after {err.attempt}"
        return "unreachable"

    runner = Runner(body)
    result = await runner.run()
    assert payload_value(result.output) == "KeyError after 1"
    assert runner.sleep.calls == []


async def test_an_error_flagged_non_retryable_is_recorded_so() -> None:
    class PermanentError(Exception):
        non_retryable = True

    def fail() -> None:
        raise PermanentError("no")

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("x", fail, retry=POLICY)

    runner = Runner(body)
    await runner.run()
    failed = runner.ledger.of_type("step_failed")
    assert len(failed) == 1
    assert failed[0].step_failed.error.non_retryable


async def test_replay_does_not_rerun_recorded_attempts() -> None:
    calls, body = failing_then_ok(2)
    ledger = MemoryLedger(fail_at=2)  # attempt 1 started and failed; attempt 2's start is lost.
    runner = Runner(body, ledger)
    with pytest.raises(Exception, match="refused"):
        await runner.run()
    assert calls == [1, 2]
    pending = ledger.journal.pending_steps["flaky"]
    assert (pending.attempt, pending.status) == (1, pb.STEP_STATUS_RETRYING)

    ledger.healthy()
    runner.sleep.calls.clear()
    result = await runner.run()
    # Attempt 1 is not run again: the next one is attempt 2, and it succeeds.
    assert calls == [1, 2, 3]
    assert payload_value(result.output) == "ok after 3"
    assert [e.step_started.attempt for e in ledger.of_type("step_started")] == [1, 2]
    assert 0 < runner.sleep.calls[0] < 2, "only what is left of the recorded backoff"


async def test_an_interrupted_attempt_reruns_under_its_own_number() -> None:
    _, body = failing_then_ok(0)
    ledger = MemoryLedger(fail_at=0, fail_mode="after")  # step_started commits, ack lost.
    runner = Runner(body, ledger)
    with pytest.raises(Exception, match="ack lost"):
        await runner.run()
    ledger.healthy()
    result = await runner.run()
    assert payload_value(result.output) == "ok after 2"
    assert [e.step_started.attempt for e in ledger.of_type("step_started")] == [1, 1]
    assert ledger.journal.step_results["flaky"].attempt == 1


async def test_a_timeout_is_a_retryable_timeout_error() -> None:
    attempts: list[int] = []

    async def hangs() -> None:
        attempts.append(1)
        await asyncio.Event().wait()

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step(
            "hang", hangs, timeout=timedelta(milliseconds=1), retry=workflow.RetryPolicy(2)
        )

    runner = Runner(body)
    result = await runner.run()
    assert attempts == [1, 1]
    assert outcome_name(result) == "failed"
    cause = result.error.cause
    assert (cause.type, cause.code) == ("TimeoutError", "STEP_TIMEOUT")
    assert cause.message == "step 'hang' timed out after 0.001s"
    failed = runner.ledger.of_type("step_failed")
    assert [e.step_failed.will_retry for e in failed] == [True, False]


async def test_a_timeout_error_raised_by_the_step_itself_is_not_a_step_timeout() -> None:
    async def raises() -> None:
        raise TimeoutError("upstream timed out")

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("x", raises, timeout=60)

    result = await Runner(body).run()
    assert (result.error.cause.type, result.error.cause.code) == ("TimeoutError", "")
    assert result.error.cause.message == "upstream timed out"


async def test_a_non_positive_timeout_is_refused() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("x", lambda: 1, timeout=0)

    result = await Runner(body).run()
    assert (result.error.type, result.error.message) == ("ValueError", "timeout must be positive")
