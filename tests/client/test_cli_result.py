"""``ledgerflow run result`` as a real subprocess against a real coordinator.

Runs end by the test appending their terminal event (see test_cli_start.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ledgerflow.client import Client
from tests.client.builders import ended
from tests.client.conftest import WatchProbe
from tests.client.test_cli_run import Result, ledgerflow


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10) as c:
        yield c


async def result(address: str, *args: str) -> Result:
    return await ledgerflow("run", "result", *args, "--address", address)


async def test_waits_for_the_run_and_prints_its_result_as_json(
    address: str, client: Client, probe: WatchProbe
) -> None:
    await client.start("billing.close", run_id="r1")
    cli = asyncio.create_task(result(address, "r1"))
    await probe.waiting("r1")  # the CLI waits for the run's next change
    await client.append_events([ended("r1", "completed", {"total": 12, "ok": True})])
    done = await cli
    assert (done.code, done.out, done.err) == (0, '{"total":12,"ok":true}\n', "")
    again = await result(address, "r1", "--json")
    assert again.code == 0
    assert again.objects == [
        {"runId": "r1", "status": "RUN_STATUS_COMPLETED", "result": {"total": 12, "ok": True}}
    ]


@pytest.mark.parametrize(
    ("status", "error_type", "line"),
    [
        ("failed", "ValueError", "failed  ValueError: boom"),
        ("cancelled", "CancelledSignal", "cancelled  CancelledSignal: boom"),
        ("timed_out", "TimeoutError", "timed_out  TimeoutError: boom"),
    ],
)
async def test_a_run_that_did_not_complete_exits_1(
    address: str, client: Client, status: str, error_type: str, line: str
) -> None:
    await client.start("billing.close", run_id="r1")
    await client.append_events([ended("r1", status, error_type=error_type, message="boom")])
    done = await result(address, "r1")
    assert (done.code, done.out, done.err) == (1, "", f"ledgerflow: run r1 {line}\n")
    as_json = await result(address, "r1", "--json")
    assert as_json.code == 1
    (obj,) = as_json.objects
    assert obj["status"] == f"RUN_STATUS_{status.upper()}"
    assert obj["error"] == {"type": error_type, "message": "boom"}


async def test_errors_exit_2_with_one_line(address: str, client: Client) -> None:
    unknown = await result(address, "ghost")
    assert (unknown.code, unknown.err) == (2, "ledgerflow: run ghost not found\n")
    await client.start("billing.close", run_id="r1")
    # Nothing will end this run: the timeout is what is under test, not a wait.
    waited = await result(address, "r1", "--timeout", "0.2")
    assert (waited.code, waited.err) == (2, "ledgerflow: run r1 did not end within 0.2s\n")
    bad = await result(address, "r1", "--timeout", "0")
    assert bad.code == 2
    assert "argument --timeout: must be > 0, got 0" in bad.err
    assert len(bad.err.splitlines()) == 1
