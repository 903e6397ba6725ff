"""Control-flow signals are BaseExceptions; a body that swallows one does not escape it."""

from __future__ import annotations

import contextlib

import pytest

from ledgerflow import workflow
from ledgerflow.errors import LedgerflowError, StepFailedError
from ledgerflow.v1 import common_pb2, workflow_pb2
from ledgerflow.workflow._signals import WaitpointPendingSignal
from tests.workflow.harness import Counter, Runner, counting, outcome_name

CALLS: Counter = {}
UNDONE: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    UNDONE.clear()


def test_signals_are_not_exceptions_and_errors_are_ledgerflow_errors() -> None:
    for signal in (workflow.CancelledSignal, workflow.CompensateRequestedSignal):
        assert issubclass(signal, workflow.ControlFlowSignal)
        assert issubclass(signal, BaseException)
        assert not issubclass(signal, Exception)
    assert issubclass(workflow.NonDeterminismError, LedgerflowError)
    assert issubclass(workflow.StepFailedError, LedgerflowError)


def test_step_failed_error_describes_the_recorded_error() -> None:
    err = StepFailedError(
        "charge", common_pb2.ErrorInfo(type="ValueError", message="bad"), attempt=3
    )
    assert str(err) == "step 'charge' failed: ValueError: bad"
    assert (err.step_id, err.error_type, err.attempt) == ("charge", "ValueError", 3)


async def test_except_exception_cannot_swallow_a_signal() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        await ctx.step("a", lambda: "a", compensate=UNDONE.append)
        try:
            ctx.compensate()
        except Exception:
            return "swallowed"

    result = await Runner(body).run()
    assert outcome_name(result) == "compensated"
    assert UNDONE == ["a"]


async def test_a_swallowed_compensate_request_is_honoured_and_sticky() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        await ctx.step("a", lambda: "a", compensate=UNDONE.append)
        # Swallowing every BaseException is the point of the test.
        with contextlib.suppress(BaseException):
            ctx.compensate()
        try:
            await ctx.step("b", counting(CALLS, "b", lambda: "b"))
        except BaseException:
            return "pretends to complete"
        return "unreachable"

    runner = Runner(body)
    result = await runner.run()
    assert outcome_name(result) == "compensated"
    assert UNDONE == ["a"]
    assert CALLS == {}
    assert any("swallowed CompensateRequestedSignal" in x for x in runner.ledger.body_lines())


async def test_a_body_replacing_a_signal_with_an_error_is_still_cancelled() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        try:
            await ctx.step("a", lambda: 1)
        except BaseException as exc:
            raise RuntimeError("cleanup failed") from exc

    result = await Runner(body).run(cancel_requested=True)
    assert outcome_name(result) == "cancelled"


async def test_ctx_compensate_inside_a_step_function_is_a_usage_error() -> None:
    """A step function cannot use body-only calls: the step fails, no signal escapes it."""

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("a", ctx.compensate)

    result = await Runner(body).run()
    assert outcome_name(result) == "failed"
    assert result.error.cause.type == "WorkflowUsageError"


def waiting_body(end: str) -> workflow.WorkflowDefinition[None, str]:
    """Registers a waitpoint the way ctx.sleep will, then ends as ``end`` says."""

    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        await ctx.step("a", lambda: "a", compensate=UNDONE.append)
        ctx._ex._waitpoints.append(
            workflow_pb2.WaitpointRegistration(waitpoint_id="wp-1", name="timer")
        )
        if end == "signal":
            raise WaitpointPendingSignal("wp-1")
        if end == "error":
            raise ValueError("after registering")
        if end == "compensate":
            ctx.compensate()
        return "returned"

    return body


@pytest.mark.parametrize(
    ("end", "outcome", "undone"),
    [
        ("signal", "waiting", []),
        ("return", "waiting", []),  # A swallowed waitpoint signal is honoured.
        ("error", "waiting", []),  # So is one replaced by an error.
        ("compensate", "compensated", ["a"]),
    ],
)
async def test_the_reference_outcome_table_with_waitpoints(
    end: str, outcome: str, undone: list[str]
) -> None:
    result = await Runner(waiting_body(end)).run()
    assert outcome_name(result) == outcome
    assert undone == UNDONE
    if outcome == "waiting":
        assert [w.waitpoint_id for w in result.waitpoints] == ["wp-1"]
        assert not result.HasField("output")


async def test_cancellation_wins_over_a_registered_waitpoint() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        ctx._ex._waitpoints.append(workflow_pb2.WaitpointRegistration(waitpoint_id="wp-1"))
        await ctx.step("a", lambda: "a")  # Live, so the cancellation is delivered here.

    result = await Runner(body).run(cancel_requested=True)
    assert outcome_name(result) == "cancelled"
    assert not result.waitpoints
