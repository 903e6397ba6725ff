"""The workflows the fault-injection tests run: a user's module, served by ``ledgerflow worker``.

Steps and compensations leave marker lines in files under a directory the test
chooses, so a test can count how often each really ran across worker processes;
gated ones wait for a gate file, so a test can fault a process while they run.
"""

from __future__ import annotations

import time
from pathlib import Path

from ledgerflow import workflow


def mark(directory: str, name: str) -> str:
    """Record one execution of ``name``."""
    with (Path(directory) / name).open("a") as f:
        f.write("ran\n")
    return name


def mark_then_wait(directory: str, name: str) -> str:
    """Record one execution, then wait until the test creates the file ``<name>.gate``."""
    mark(directory, name)
    gate = Path(directory) / f"{name}.gate"
    while not gate.exists():  # a step in another process: a file is the simplest gate
        time.sleep(0.01)
    return name


def fail(directory: str, name: str) -> str:
    """Record one execution, then fail."""
    mark(directory, name)
    raise RuntimeError(f"{name} failed")


@workflow.defn(name="gated_saga")
async def gated_saga(ctx: workflow.Context, directory: str) -> str:
    """A gated step, then a failure whose second compensation (``unbook``) is gated.

    Compensations run last to first: ``refund`` finishes before ``unbook`` blocks,
    so a crash inside ``unbook`` tests both "not repeated" and "not skipped".
    """
    await ctx.step(
        "book",
        mark,
        directory,
        "book",
        compensate=lambda _: mark_then_wait(directory, "unbook"),
    )
    await ctx.step(
        "pay", mark_then_wait, directory, "pay", compensate=lambda _: mark(directory, "refund")
    )
    await ctx.step("ship", fail, directory, "ship")
    return "unreachable"


@workflow.defn(name="chatty")
async def chatty(ctx: workflow.Context, args: dict[str, object]) -> int:
    """``steps`` quick marked steps, each followed by a log line: many small batches."""
    directory = str(args["dir"])
    tag = str(args["tag"])
    steps = int(args["steps"])  # type: ignore[call-overload]
    for i in range(steps):
        await ctx.step(f"s{i}", mark, directory, f"{tag}.s{i}")
        ctx.log.info("step %d done", i)
    return int(steps)


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
