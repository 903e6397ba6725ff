"""Workflows the worker tests serve, written as a user's module would be.

Steps that must wait for the test block on a named gate (an ``asyncio.Event`` on
the test's loop, which also runs the worker); ``CALLS`` records what really ran,
so a test can tell a step that ran from one that replayed or was cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ledgerflow import workflow

GATES: dict[str, asyncio.Event] = {}
CALLS: list[str] = []


def reset() -> None:
    """Forget the gates and calls of the previous test."""
    GATES.clear()
    CALLS.clear()


def gate(name: str) -> asyncio.Event:
    """The gate called ``name`` (created closed)."""
    return GATES.setdefault(name, asyncio.Event())


def add(a: int, b: int) -> int:
    CALLS.append(f"add:{a}+{b}")
    return a + b


async def wait_gate(name: str) -> str:
    CALLS.append(f"start:{name}")
    try:
        await gate(name).wait()
    except asyncio.CancelledError:
        CALLS.append(f"cancelled:{name}")
        raise
    CALLS.append(f"end:{name}")
    return name


@workflow.defn(name="test.chain")
async def chain(ctx: workflow.Context, n: int) -> int:
    total = 0
    for i in range(n):
        ctx.log.info("adding %d", i)
        total = await ctx.step("add", add, total, i)
    ctx.log.info("total %d", total)
    return total


@workflow.defn(name="test.gated")
async def gated(ctx: workflow.Context, name: str) -> str:
    ctx.log.info("before %s", name)
    out = await ctx.step("wait", wait_gate, name)
    ctx.log.info("after %s", name)
    return out


@workflow.defn(name="test.fanout")
async def fanout(ctx: workflow.Context, names: list[str]) -> list[str]:
    return list(await asyncio.gather(*(ctx.step(f"wait {n}", wait_gate, n) for n in names)))


def _undo(tag: str) -> Callable[[object], None]:
    def undo(output: object) -> None:
        CALLS.append(f"undo:{tag}")

    return undo


@workflow.defn(name="test.saga")
async def saga(ctx: workflow.Context, name: str) -> str:
    await ctx.step("reserve", add, 1, 1, compensate=_undo("reserve"))
    await ctx.step("charge", wait_gate, name, compensate=_undo("charge"))
    await ctx.step("ship", add, 2, 2)
    return "shipped"


async def until_cancelled(ctx: workflow.Context) -> str:
    # A long step that notices cancellation itself (polling is the step's business).
    while not ctx.cancelled:  # noqa: ASYNC110 (ctx has no event to await)
        await asyncio.sleep(0.002)
    CALLS.append("noticed cancel")
    return "noticed"


@workflow.defn(name="test.watchful")
async def watchful(ctx: workflow.Context) -> str:
    await ctx.step("reserve", add, 1, 1, compensate=_undo("reserve"))
    await ctx.step("watch", until_cancelled, ctx)
    await ctx.step("ship", add, 2, 2)
    return "shipped"


def chatty(ctx: workflow.Context, n: int) -> int:
    # Lines logged inside a step: channel "step:<id>", no offset, deduplicated only by
    # the batch they travel in.
    for i in range(n):
        ctx.log.info("line %d", i)
    return n


@workflow.defn(name="test.chatty")
async def chatty_body(ctx: workflow.Context, n: int) -> int:
    return await ctx.step("chatty", chatty, ctx, n)


@workflow.defn(name="test.versioned", version="2")
async def versioned(ctx: workflow.Context) -> str:
    return "v2"
