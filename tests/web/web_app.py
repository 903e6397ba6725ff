"""Workflows the dashboard tests and the screenshot script run in a real worker.

Steps that must stay in flight wait for a gate file the test creates: a step runs in
another process, so a file is the simplest gate.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from ledgerflow import workflow

HOSTILE_STEP = '<img src=x onerror="window.__pwned=1">'
"""A step name that would run script if the page ever parsed it as HTML."""

HOSTILE_LOG = "<script>window.__pwned=2</script> & <b>not bold</b>"
"""A log line that would run script if the page ever parsed it as HTML."""


def mark(directory: str, name: str) -> str:
    """Record one execution of ``name``."""
    with (Path(directory) / name).open("a") as f:
        f.write("ran\n")
    return name


def wait_for_gate(directory: str, name: str) -> str:
    """Record one execution, then wait until the test creates ``directory/gate``."""
    mark(directory, name)
    gate = Path(directory) / "gate"
    while not gate.exists():
        time.sleep(0.01)
    return name


@workflow.defn(name="web.live")
async def live(ctx: workflow.Context, directory: str) -> dict[str, object]:
    """Steps, progress, a checkpoint and logs; the second step waits for the gate."""
    ctx.log.info("preparing")
    await ctx.step("prepare", mark, directory, "prepare")
    ctx.checkpoint("inputs checked", step="prepare")
    ctx.progress("batch", completed=1, total=2, message="half way")
    await ctx.step("wait-for-gate", wait_for_gate, directory, "wait-for-gate")
    ctx.progress("batch", completed=2, total=2, message="all done")
    ctx.log.info("finished")
    return {"answer": 42, "steps": ["prepare", "wait-for-gate"]}


@workflow.defn(name="web.cancellable")
async def cancellable(ctx: workflow.Context, directory: str) -> str:
    """A compensated step, a gated one, then one a cancellation must prevent."""
    await ctx.step("book", mark, directory, "book", compensate=lambda _: mark(directory, "unbook"))
    await ctx.step("blocked", wait_for_gate, directory, "blocked")
    await ctx.step("last", mark, directory, "last")
    return "done"


@workflow.defn(name="web.hostile")
async def hostile(ctx: workflow.Context, directory: str) -> str:
    """A step name and a log line made of HTML."""
    ctx.log.info(HOSTILE_LOG)
    await ctx.step(HOSTILE_STEP, mark, directory, "hostile")
    return HOSTILE_LOG


@workflow.defn(name="web.failing")
async def failing(ctx: workflow.Context, directory: str) -> str:
    """A compensated step, then one that fails: the run fails and compensates."""
    await ctx.step("reserve", mark, directory, "reserve", compensate=lambda _: mark(directory, "x"))
    retry = workflow.RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=50))
    await ctx.step("charge", _fail, directory, retry=retry)
    return "unreachable"


def _fail(directory: str) -> str:
    raise RuntimeError("card declined")
