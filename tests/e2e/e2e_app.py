"""The workflows the end-to-end tests run: a user's module, served by ``ledgerflow worker``.

Steps leave marker lines in files under a directory the test chooses, so the
test can count how often each step really ran, across worker processes.
"""

from __future__ import annotations

import time
from pathlib import Path

from ledgerflow import workflow


def add(total: int, i: int) -> int:
    """A trivial step."""
    return total + i


def mark(directory: str, name: str) -> str:
    """Record one execution of ``name``."""
    with (Path(directory) / name).open("a") as f:
        f.write("ran\n")
    return name


def mark_then_wait(directory: str, name: str) -> str:
    """Record one execution, then wait until the test opens the gate file."""
    mark(directory, name)
    gate = Path(directory) / "gate"
    while not gate.exists():  # a step in another process: a file is the simplest gate
        time.sleep(0.01)
    return name


def fail(directory: str, name: str) -> str:
    """Record one execution, then fail."""
    mark(directory, name)
    raise RuntimeError(f"{name} failed")


@workflow.defn(name="sum")
async def sum_steps(ctx: workflow.Context, n: int) -> int:
    """Add 0..n-1 one step at a time."""
    total = 0
    for i in range(n):
        total = await ctx.step("add", add, total, i)
    return total


@workflow.defn(name="gated")
async def gated(ctx: workflow.Context, directory: str) -> str:
    """Three steps; the middle one waits for the test's gate. Logs a line around each."""
    ctx.log.info("starting")
    await ctx.step("first", mark, directory, "first")
    ctx.log.info("first done")
    await ctx.step("blocked", mark_then_wait, directory, "blocked")
    ctx.log.info("blocked done")
    await ctx.step("last", mark, directory, "last")
    ctx.log.info("finished")
    return "done"


@workflow.defn(name="saga")
async def saga(ctx: workflow.Context, directory: str) -> str:
    """Two compensated steps, then a failing one: compensations run last to first."""
    await ctx.step("book", mark, directory, "book", compensate=lambda _: mark(directory, "unbook"))
    await ctx.step("pay", mark, directory, "pay", compensate=lambda _: mark(directory, "refund"))
    await ctx.step("ship", fail, directory, "ship")
    return "unreachable"


@workflow.defn(name="cancellable")
async def cancellable(ctx: workflow.Context, directory: str) -> str:
    """A compensated step, a gated one, then one a cancellation must prevent."""
    await ctx.step("book", mark, directory, "book", compensate=lambda _: mark(directory, "unbook"))
    await ctx.step("blocked", mark_then_wait, directory, "blocked")
    await ctx.step("last", mark, directory, "last")
    return "done"


@workflow.defn(name="draws")
async def draws(ctx: workflow.Context, args: dict[str, object]) -> list[object]:
    """Draw ``kinds`` (random / uuid) in order with a step between draws.

    With ``gate_after``, the step after that many draws waits for the test's gate,
    so a worker can be killed there and the draws replayed by another.
    """
    kinds = list(args["kinds"])  # type: ignore[call-overload]
    directory = str(args.get("directory", ""))
    gate_after = int(args.get("gate_after", -1))  # type: ignore[call-overload]
    out: list[object] = []
    for i, kind in enumerate(kinds):
        out.append(ctx.random() if kind == "random" else str(ctx.uuid4()))
        if i == gate_after:
            await ctx.step("gate", mark_then_wait, directory, "gate-step")
        else:
            await ctx.step(f"between-{i}", add, i, 0)
    return out


@workflow.defn(name="evolve")
async def evolve(ctx: workflow.Context, directory: str) -> str:
    """Two steps; the tests deploy a changed body (step "uno" first) mid-run."""
    await ctx.step("one", mark, directory, "one")
    await ctx.step("two", mark_then_wait, directory, "two")
    return "evolved"


@workflow.defn(name="sleeper")
async def sleeper(ctx: workflow.Context, args: dict[str, object]) -> float:
    """Mark, sleep durably, mark again; return how long ``ctx.now()`` says it slept."""
    directory = str(args["dir"])
    await ctx.step("before", mark, directory, "before")
    began = ctx.now()
    await ctx.sleep(float(args["seconds"]))  # type: ignore[arg-type]
    slept = (ctx.now() - began).total_seconds()
    await ctx.step("after", mark, directory, "after")
    return slept


@workflow.defn(name="approvals")
async def approvals(ctx: workflow.Context, args: dict[str, object]) -> object:
    """Wait for ``count`` signals called ``approve`` (each at most ``timeout`` seconds)."""
    directory = str(args["dir"])
    await ctx.step("prepare", mark_then_wait, directory, "prepare")
    timeout = args.get("timeout")
    got = []
    for _ in range(int(args["count"])):  # type: ignore[call-overload]
        try:
            got.append(
                await ctx.wait_for_signal(
                    "approve",
                    timeout=None if timeout is None else float(timeout),  # type: ignore[arg-type]
                )
            )
        except workflow.WaitTimeoutError as err:
            ctx.log.info("gave up: %s", err)
            return {"timed_out": err.waitpoint_id, "got": got}
    await ctx.step("publish", mark, directory, "publish")
    return got


@workflow.defn(name="remote")
async def remote(ctx: workflow.Context, text: str) -> dict[str, object]:
    """Two steps on a worker of kind ``upper``: one succeeds, one fails."""
    ctx.log.info("asking for %s", text)
    loud = await ctx.step("shout", text, worker_kind="upper")
    try:
        await ctx.step("shout", "boom", worker_kind="upper")
    except workflow.StepFailedError as err:
        failure = err.error.message
    return {"loud": loud, "failure": failure, "waited_at": ctx.now().isoformat()}


@workflow.defn(name="overdue")
async def overdue(ctx: workflow.Context, directory: str) -> str:
    """A compensated step, then a sleep longer than any execution timeout a test gives."""
    await ctx.step("book", mark, directory, "book", compensate=lambda _: mark(directory, "unbook"))
    await ctx.sleep(3600)
    return "never"


@workflow.defn(name="parent")
async def parent(ctx: workflow.Context, directory: str) -> dict[str, object]:
    """A child that completes and one that fails; both awaited."""
    adder = await ctx.start_child("sum", 4)
    total = await adder.result()
    failing = await ctx.start_child(saga, directory)
    try:
        await failing.result()
    except workflow.ChildRunFailedError as err:
        failure = [err.status, err.error.message]
    return {"total": total, "failure": failure, "children": [adder.run_id, failing.run_id]}


@workflow.defn(name="grandparent")
async def grandparent(ctx: workflow.Context, directory: str) -> str:
    """A compensated step, then a wait on a child that sleeps for an hour."""
    await ctx.step("hold", mark, directory, "hold", compensate=lambda _: mark(directory, "release"))
    child = await ctx.start_child(overdue, directory, run_id="sleepy-child")
    return str(await child.result())


@workflow.defn(name="polyglot")
async def polyglot(ctx: workflow.Context, name: str) -> object:
    """A step implemented in TypeScript (sdk/typescript/e2e/step-worker.ts, kind ``images``)."""
    ctx.log.info("asking typescript to resize %s", name)
    return await ctx.step("resize", {"name": name, "width": 200}, worker_kind="images")


@workflow.defn(name="refund")
async def refund(ctx: workflow.Context, amount: float) -> object:
    """A refund reviewed on a worker of kind ``review`` (a person decides the large ones)."""
    return await ctx.step("review", {"amount": amount}, worker_kind="review")


@workflow.defn(name="deadlines")
async def deadlines(ctx: workflow.Context) -> list[str]:
    """A step no worker serves (schedule-to-start) and one that runs too long (timeout)."""
    codes = []
    try:
        await ctx.step("paint", "wall", worker_kind="painters", schedule_to_start_timeout=0.5)
    except workflow.StepFailedError as err:
        codes.append(err.error.code)
    try:
        await ctx.step("shout", "slow", worker_kind="upper", timeout=0.3)
    except workflow.StepFailedError as err:
        codes.append(err.error.code)
    return codes
