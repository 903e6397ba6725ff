"""SyncClient.start and SyncRunHandle against a real coordinator (SQLite and Postgres).

The coordinator is served by the test's event loop, so every blocking call runs in a
thread (``asyncio.to_thread``) while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from ledgerflow import workflow
from ledgerflow.client import SyncClient, SyncRunHandle
from ledgerflow.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResultTimeoutError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunTerminatedError,
)
from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2
from tests.client.builders import ended, produced
from tests.client.conftest import WatchProbe

_T = TypeVar("_T")


@dataclass
class Invoice:
    number: str
    total: int


@workflow.defn(name="billing.invoice", version="1")
async def invoice(ctx: workflow.Context, customer: str) -> Invoice:
    raise AssertionError("no worker runs it in these tests")


@pytest.fixture
def client(address: str) -> Iterator[SyncClient]:
    # connect_timeout=None: connecting would block the loop that serves the coordinator.
    with SyncClient.connect(address, connect_timeout=None, identity="bob@desk") as c:
        yield c


async def blocking(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout=60)


async def test_start_and_a_retry_with_the_same_run_id_or_key(client: SyncClient) -> None:
    handle = await blocking(client.start, invoice, "acme", run_id="inv-1")
    assert isinstance(handle, SyncRunHandle)
    assert (handle.run_id, handle.created) == ("inv-1", True)
    assert handle.client is client
    again = await blocking(client.start, invoice, "acme", run_id="inv-1")
    assert (again.run_id, again.created) == ("inv-1", False)
    assert repr(again) == "SyncRunHandle(run_id='inv-1', created=False)"
    keyed = await blocking(client.start, "billing.invoice", "acme", idempotency_key="k")
    keyed_again = await blocking(client.start, "billing.invoice", "acme", idempotency_key="k")
    assert keyed.created
    assert (keyed_again.run_id, keyed_again.created) == (keyed.run_id, False)
    snap = await blocking(handle.describe)
    assert (snap.workflow_name, snap.workflow_version) == ("billing.invoice", "1")
    events = await blocking(lambda: list(client.iter_events("inv-1")))
    assert payload_value(events[0].run_created.input) == "acme"
    with pytest.raises(InvalidArgumentError) as caught:
        await blocking(client.start, "billing.invoice", {"x": object()})
    assert caught.value.field == "input"


async def test_result_of_an_ended_run(client: SyncClient) -> None:
    handle = await blocking(client.start, invoice, "acme", run_id="inv-1")
    await blocking(client.append_events, [ended("inv-1", "completed", {"number": "7", "total": 3})])
    assert await blocking(handle.result) == Invoice(number="7", total=3)
    assert await blocking(handle.result, result_type=dict) == {"number": "7", "total": 3}
    assert await blocking(client.get_handle("inv-1").result) == {"number": "7", "total": 3}

    failed = await blocking(client.start, "billing.invoice", run_id="inv-2")
    await blocking(
        client.append_events, [ended("inv-2", "failed", error_type="IOError", message="disk")]
    )
    with pytest.raises(RunFailedError) as caught:
        await blocking(failed.result)
    assert (caught.value.error_type, caught.value.error_message) == ("IOError", "disk")
    assert caught.value.snapshot.status == ledger_pb2.RUN_STATUS_FAILED

    stopped = await blocking(client.start, "billing.invoice", run_id="inv-3")
    await blocking(client.append_events, [ended("inv-3", "terminated", message="ops")])
    with pytest.raises(RunTerminatedError, match="ops"):
        await blocking(stopped.result, timeout=30)

    with pytest.raises(RunNotFoundError):
        await blocking(client.get_handle("nobody").result)


async def test_result_blocks_until_the_run_ends(client: SyncClient, probe: WatchProbe) -> None:
    handle = await blocking(client.start, invoice, "acme", run_id="inv-1")
    waiter = asyncio.ensure_future(blocking(handle.result, timeout=60))
    await probe.waiting("inv-1")
    assert not waiter.done()
    await blocking(client.append_events, [ended("inv-1", "completed", {"number": "8", "total": 1})])
    assert await waiter == Invoice(number="8", total=1)


async def test_result_timeout(client: SyncClient, probe: WatchProbe) -> None:
    handle = await blocking(client.start, "billing.invoice", run_id="inv-1")
    with pytest.raises(ResultTimeoutError) as caught:
        await blocking(handle.result, timeout=0.2)
    assert caught.value.snapshot is not None
    assert caught.value.snapshot.status == ledger_pb2.RUN_STATUS_QUEUED
    assert str(caught.value) == "run inv-1 did not end within 0.2s"
    waiter = asyncio.ensure_future(blocking(handle.result, timeout=60))
    await probe.waiting("inv-1")
    await blocking(client.append_events, [ended("inv-1", "completed", 1)])
    assert await waiter == 1


async def test_watch_follows_the_run_and_resumes_after_a_seq(
    client: SyncClient, probe: WatchProbe
) -> None:
    handle = await blocking(client.start, "billing.invoice", run_id="inv-1")

    def watch_all(after_seq: int) -> list[ledger_pb2.RunSnapshot]:
        with closing(handle.watch(after_seq=after_seq)) as snapshots:
            return list(snapshots)

    start = await blocking(handle.describe)
    watcher = asyncio.ensure_future(blocking(watch_all, 0))
    resumed = asyncio.ensure_future(blocking(watch_all, start.last_seq))
    await probe.waiting("inv-1", watchers=2)
    await blocking(client.append_events, [produced("inv-1", "run_started")])
    await blocking(client.append_events, [ended("inv-1", "completed", 2)])
    seen = await watcher
    assert seen[0].status == ledger_pb2.RUN_STATUS_QUEUED
    assert seen[-1].status == ledger_pb2.RUN_STATUS_COMPLETED
    tail = await resumed
    assert start.last_seq not in [s.last_seq for s in tail]
    assert tail[-1].status == ledger_pb2.RUN_STATUS_COMPLETED


async def test_handle_cancel_signal_and_describe(client: SyncClient) -> None:
    handle = await blocking(client.start, "billing.invoice", run_id="inv-1")
    first = await blocking(handle.cancel, "duplicate order")
    again = await blocking(handle.cancel)
    assert (first.already_requested, again.already_requested) == (False, True)
    snap = await blocking(handle.describe)
    assert (snap.cancel_requested, snap.cancel_reason) == (True, "duplicate order")
    sent = await blocking(handle.signal, "approve", Invoice(number="1", total=2))
    events = await blocking(lambda: list(client.iter_events("inv-1")))
    (signal,) = [e for e in events if e.seq == sent.seq]
    assert signal.signal_received.name == "approve"
    assert payload_value(signal.signal_received.payload) == {"number": "1", "total": 2}
    assert signal.signal_received.identity == "bob@desk"
    await blocking(
        client.append_events,
        [ended("inv-1", "cancelled", error_type="CancelledSignal", message="duplicate order")],
    )
    with pytest.raises(RunCancelledError, match="duplicate order"):
        await blocking(handle.result)
    with pytest.raises(FailedPreconditionError):
        await blocking(handle.signal, "approve")
