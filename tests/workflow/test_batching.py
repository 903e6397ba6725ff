"""BatchingSink: concurrent appends leave in one call; a failure poisons later appends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ledgerflow import workflow
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.builders import log_event
from tests.workflow.harness import Runner, outcome_name


async def ticks(n: int = 5) -> None:
    """Let the loop run ``n`` rounds (no wall-clock wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Recording:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def append(self, events: Sequence[pb.LedgerEvent]) -> None:
        self.calls.append([e.log_appended.lines[0] for e in events])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def test_appends_in_one_tick_leave_in_one_call_in_order() -> None:
    inner = Recording()
    sink = workflow.BatchingSink(inner)
    await asyncio.gather(*(sink.append([log_event(str(i))]) for i in range(5)))
    assert inner.calls == [["0", "1", "2", "3", "4"]]


async def test_appends_during_a_call_in_flight_leave_together_next() -> None:
    inner = Recording()
    inner.gate = asyncio.Event()
    sink = workflow.BatchingSink(inner)
    first = asyncio.ensure_future(sink.append([log_event("a")]))
    await ticks()
    assert inner.calls == [["a"]]
    rest = [asyncio.ensure_future(sink.append([log_event(x)])) for x in "bc"]
    await ticks()
    sink.post([log_event("d")])
    assert not first.done()
    assert inner.calls == [["a"]]
    inner.gate.set()
    await asyncio.gather(first, *rest)
    assert inner.calls == [["a"], ["b", "c", "d"]]


async def test_post_does_not_wait_and_flush_waits_for_everything() -> None:
    inner = Recording()
    sink = workflow.BatchingSink(inner)
    sink.post([log_event("x")])
    sink.post([])
    assert inner.calls == []
    await sink.flush()
    assert inner.calls == [["x"]]
    await sink.flush()  # Nothing pending: returns at once.


async def test_a_failure_reaches_every_waiter_and_poisons_the_sink() -> None:
    inner = Recording()
    inner.fail = ConnectionError("lease lost")
    sink = workflow.BatchingSink(inner)
    results = await asyncio.gather(
        sink.append([log_event("a")]), sink.append([log_event("b")]), return_exceptions=True
    )
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert isinstance(sink.failure, ConnectionError)
    with pytest.raises(ConnectionError):
        await sink.append([log_event("c")])
    sink.post([log_event("d")])  # Dropped silently: the task is being abandoned.
    with pytest.raises(ConnectionError):
        await sink.flush()
    assert inner.calls == [["a", "b"]]


async def test_a_failure_of_a_posted_batch_surfaces_at_the_next_append() -> None:
    inner = Recording()
    inner.fail = ConnectionError("gone")
    sink = workflow.BatchingSink(inner)
    sink.post([log_event("a")])
    await ticks()
    with pytest.raises(ConnectionError):
        await sink.append([log_event("b")])


async def test_a_cancelled_waiter_does_not_cancel_the_shared_batch() -> None:
    inner = Recording()
    inner.gate = asyncio.Event()
    sink = workflow.BatchingSink(inner)
    waiter = asyncio.ensure_future(sink.append([log_event("a")]))
    other = asyncio.ensure_future(sink.append([log_event("b")]))
    await ticks()
    waiter.cancel()
    inner.gate.set()
    await other
    assert inner.calls == [["a", "b"]]
    assert sink.failure is None


async def test_gathered_steps_start_in_one_append_and_finish_together() -> None:
    release = asyncio.Event()

    async def step(i: int) -> int:
        await release.wait()
        return i

    async def opener() -> None:
        release.set()

    @workflow.defn
    async def body(ctx: workflow.Context) -> list[int]:
        results = await asyncio.gather(*(ctx.step(f"s{i}", step, i) for i in range(4)))
        return list(results)

    runner = Runner(body)
    task = asyncio.ensure_future(runner.run())
    await ticks()
    calls = runner.ledger.calls
    assert [[e.WhichOneof("payload") for e in c] for c in calls] == [["step_started"] * 4]
    await opener()
    result = await task
    assert outcome_name(result) == "completed"
    assert [[e.WhichOneof("payload") for e in c] for c in calls] == [
        ["step_started"] * 4,
        ["step_completed"] * 4,
    ]
    assert [e.step_started.ordinal for e in calls[0]] == [1, 2, 3, 4]


async def test_trivial_gathered_steps_commit_in_a_single_append() -> None:
    async def value(i: int) -> int:
        return i

    @workflow.defn
    async def body(ctx: workflow.Context) -> list[int]:
        return list(await asyncio.gather(*(ctx.step(f"s{i}", value, i) for i in range(10))))

    runner = Runner(body)
    await runner.run()
    assert len(runner.ledger.calls) == 1
    assert len(runner.ledger.calls[0]) == 20


async def test_with_linger_a_posted_batch_waits_for_the_next_append_to_join_it() -> None:
    # A quick step's start is posted, its result appended: with a linger both leave
    # in one call (one round trip); without, the start leaves alone first.
    for linger, expected in ((3600.0, [["start", "done"]]), (0.0, [["start"], ["done"]])):
        inner = Recording()
        sink = workflow.BatchingSink(inner, linger=linger)
        sink.post([log_event("start")])
        await ticks()
        await sink.append([log_event("done")])
        assert inner.calls == expected


async def test_with_linger_posted_events_still_leave_on_their_own() -> None:
    # Nobody appends: the posted batch goes once the linger ends (here awaited through
    # flush, which also cuts the linger short).
    inner = Recording()
    sink = workflow.BatchingSink(inner, linger=3600.0)
    sink.post([log_event("alone")])
    await ticks()
    assert inner.calls == []
    await sink.flush()
    assert inner.calls == [["alone"]]
