"""``ledgerflow run start`` as a real subprocess against a real coordinator.

The coordinator is served by the test's event loop, so the CLI runs through asyncio's
subprocess API (see test_cli_run.py); runs end by the test appending their terminal
event while the CLI watches.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from ledgerflow.client import Client
from ledgerflow.ledger import payload_value
from tests.client.builders import ended, produced
from tests.client.conftest import WatchProbe
from tests.client.test_cli_run import Result, ledgerflow

# A watch line: "<UTC time>  <subject>  <what>".
_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  "


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10) as c:
        yield c


async def start(address: str, *args: str) -> Result:
    return await ledgerflow("run", "start", *args, "--address", address)


def matches(lines: list[str], patterns: list[str]) -> bool:
    return len(lines) == len(patterns) and all(
        re.fullmatch(p, line) for p, line in zip(patterns, lines, strict=True)
    )


async def test_start_prints_the_run_id_and_whether_it_was_created(
    address: str, client: Client
) -> None:
    result = await start(
        address, "billing.close", "--run-id", "r1", "--input", '{"month": 1}', "--tag", "eu"
    )
    assert (result.code, result.out, result.err) == (0, "run r1 created\n", "")
    again = await start(address, "billing.close", "--run-id", "r1")
    assert (again.code, again.out) == (0, "run r1 already existed (queued)\n")
    snap = await client.get_run("r1")
    assert (snap.workflow_name, list(snap.tags)) == ("billing.close", ["eu"])
    (first, *_) = [e async for e in client.iter_events("r1")]
    assert payload_value(first.run_created.input) == {"month": 1}

    chosen = await start(address, "billing.close", "--workflow-version", "4")
    match = re.fullmatch(r"run (\S+) created\n", chosen.out)
    assert match, chosen.out
    assert (await client.get_run(match[1])).workflow_version == "4"


async def test_idempotency_key_and_json_output(address: str) -> None:
    first = await start(address, "billing.close", "--idempotency-key", "jan", "--json")
    again = await start(address, "billing.close", "--idempotency-key", "jan", "--json")
    assert (first.code, again.code) == (0, 0)
    (created,) = first.objects
    (existing,) = again.objects
    assert (created["created"], existing["created"]) == (True, False)
    assert created["runId"] == existing["runId"]
    assert created["status"] == "RUN_STATUS_QUEUED"
    assert created["workflowName"] == "billing.close"


async def test_watch_follows_the_run_and_exits_0_when_it_completes(
    address: str, client: Client, probe: WatchProbe
) -> None:
    cli = asyncio.create_task(start(address, "billing.close", "--run-id", "r1", "--watch"))
    await probe.waiting("r1")  # the CLI printed the queued run and waits for changes
    await client.append_events([produced("r1", "run_started")])
    await probe.waiting("r1")
    await client.append_events([produced("r1", "step_started", step_id="sum")])
    await probe.waiting("r1")
    await client.append_events([ended("r1", "completed", {"total": 12})])
    result = await cli
    assert result.code == 0, result.err
    assert matches(
        result.lines,
        [
            "run r1 created",
            _STAMP + "run  queued",
            _STAMP + "run  running",
            _STAMP + "step sum  running",
            _STAMP + "run  completed",
            r'result  \{"total":12\}',
        ],
    ), result.out


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("failed", "failed  ValueError: boom"),
        ("cancelled", "cancelled  CancelledSignal: boom"),
        ("timed_out", "timed_out  TimeoutError: boom"),
        ("terminated", "terminated  Terminated: boom"),
    ],
)
async def test_watch_exits_1_when_the_run_does_not_complete(
    address: str, client: Client, probe: WatchProbe, status: str, shown: str
) -> None:
    error_type = {"failed": "ValueError", "cancelled": "CancelledSignal"}.get(
        status, "TimeoutError"
    )
    cli = asyncio.create_task(start(address, "billing.close", "--run-id", "r1", "--watch"))
    await probe.waiting("r1")
    await client.append_events([ended("r1", status, error_type=error_type, message="boom")])
    result = await cli
    assert result.code == 1
    assert result.err == ""
    assert matches(
        result.lines,
        ["run r1 created", _STAMP + "run  queued", _STAMP + "run  " + shown, shown],
    ), result.out


async def test_watch_of_a_run_that_already_ended_returns_at_once(
    address: str, client: Client
) -> None:
    await client.start("billing.close", run_id="r1")
    await client.append_events([ended("r1", "completed", [1, 2])])
    result = await start(address, "billing.close", "--run-id", "r1", "--watch")
    assert result.code == 0, result.err
    assert matches(
        result.lines,
        ["run r1 already existed \\(completed\\)", _STAMP + "run  completed", r"result  \[1,2\]"],
    )
    await client.start("billing.close", run_id="r2")
    await client.append_events([ended("r2", "failed", error_type="E", message="x")])
    failed = await start(address, "billing.close", "--run-id", "r2", "--watch", "--json")
    assert failed.code == 1
    assert [obj["status"] for obj in failed.objects] == ["RUN_STATUS_FAILED"]


async def test_watch_json_prints_the_start_then_every_snapshot(
    address: str, client: Client, probe: WatchProbe
) -> None:
    cli = asyncio.create_task(
        start(address, "billing.close", "--run-id", "r1", "--watch", "--json")
    )
    await probe.waiting("r1")
    await client.append_events([produced("r1", "run_started")])
    await probe.waiting("r1")
    await client.append_events([ended("r1", "completed", 5)])
    result = await cli
    assert result.code == 0, result.err
    objects = result.objects
    assert [(o.get("created"), o["status"]) for o in objects] == [
        (True, "RUN_STATUS_QUEUED"),
        (None, "RUN_STATUS_RUNNING"),
        (None, "RUN_STATUS_COMPLETED"),
    ]
    assert objects[-1]["result"] == {"encoding": "json/plain", "data": "NQ=="}  # base64 of 5


@pytest.mark.parametrize("bad", ["{nope", "NaN", ""])
async def test_bad_input_exits_2_with_one_line_naming_input(
    address: str, client: Client, bad: str
) -> None:
    result = await start(address, "billing.close", "--input", bad)
    assert result.code == 2
    assert len(result.err.splitlines()) == 1, result.err
    assert "argument --input: not valid JSON" in result.err
    assert (await client.list_runs()).runs == []


async def test_a_refused_start_exits_2_with_the_coordinators_reason(address: str) -> None:
    result = await start(address, "billing.close", "--run-id", "x" * 300)
    assert result.code == 2
    assert result.err.startswith("ledgerflow: run_id: ")
    assert len(result.err.splitlines()) == 1


async def test_address_comes_from_the_environment(address: str) -> None:
    result = await ledgerflow(
        "run", "start", "billing.close", "--run-id", "r1", env={"LEDGERFLOW_ADDRESS": address}
    )
    assert (result.code, result.out) == (0, "run r1 created\n")


async def test_unreachable_coordinator_exits_2(dead_address: str) -> None:
    result = await start(dead_address, "billing.close")
    assert result.code == 2
    assert result.err.startswith(f"ledgerflow: cannot reach the coordinator at {dead_address}")
