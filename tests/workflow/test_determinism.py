"""ctx.random() and ctx.uuid4() through a real workflow body reproduce the shared vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ledgerflow import workflow
from ledgerflow.ledger import payload_value
from tests.workflow.harness import MemoryLedger, Runner

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "determinism.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
STREAMS = [c for c in CASES if "random" in c and c["runId"]]
CALLS = [c for c in CASES if "calls" in c]


def draws(kinds: list[str], *, steps: bool = True) -> workflow.WorkflowDefinition[Any, Any]:
    """A body drawing ``kinds`` in order, with a step after every draw when ``steps``."""

    @workflow.defn(name="draws")
    async def body(ctx: workflow.Context) -> list[Any]:
        out: list[Any] = []
        for i, kind in enumerate(kinds):
            out.append(ctx.random() if kind == "random" else str(ctx.uuid4()))
            if steps:
                await ctx.step(f"between-{i}", int, i)
        return out

    return body


def test_the_vectors_have_cases() -> None:
    assert STREAMS
    assert CALLS


@pytest.mark.parametrize("case", STREAMS, ids=lambda c: c["runId"][:30])
async def test_random_and_uuid_streams_match_the_vectors(case: dict[str, Any]) -> None:
    # No steps: some vector run ids are longer than a ledger accepts; the draws still count.
    ledger = MemoryLedger(run_id=case["runId"])
    randoms = await Runner(draws(["random"] * 10, steps=False), ledger).run()
    assert payload_value(randoms.output) == case["random"]
    uuids = await Runner(draws(["uuid"] * 3, steps=False), MemoryLedger(run_id=case["runId"])).run()
    assert payload_value(uuids.output) == case["uuids"]


@pytest.mark.parametrize("case", CALLS, ids=lambda c: c["runId"][:30])
async def test_interleaved_draws_share_one_stream_live_and_on_replay(case: dict[str, Any]) -> None:
    runner = Runner(draws(case["calls"]), MemoryLedger(run_id=case["runId"]))
    live = await runner.run()
    assert payload_value(live.output) == case["values"]
    replayed = await runner.run()
    assert payload_value(replayed.output) == case["values"]


async def test_uuid4_is_a_version_4_uuid() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> list[int]:
        u = ctx.uuid4()
        return [u.version or 0, int(u.variant == "specified in RFC 4122")]

    result = await Runner(body).run()
    assert payload_value(result.output) == [4, 1]
