"""Client.start and RunHandle against a real coordinator (SQLite and Postgres).

Workers are not part of these tests: a run is driven to its end the way a worker's
coordinator would record it, by appending the terminal event through AppendEvents.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pydantic
import pytest

from ledgerflow import workflow
from ledgerflow.client import Client, RunHandle
from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    LedgerflowError,
    ResultTimeoutError,
    RunAlreadyExistsError,
    RunCancelledError,
    RunEndedError,
    RunFailedError,
    RunNotFoundError,
    RunTerminatedError,
    RunTimedOutError,
)
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import common_pb2, ledger_pb2
from tests.client.builders import ended, produced
from tests.client.conftest import WatchProbe


@dataclass
class Order:
    id: str
    amount: int


@dataclass
class Receipt:
    order_id: str
    charged: int
    at: datetime


class Colour(enum.Enum):
    RED = "red"


class Item(pydantic.BaseModel):
    sku: str
    quantity: int = 1


@workflow.defn(name="order.checkout", version="2")
async def checkout(ctx: workflow.Context, order: Order) -> Receipt:
    raise AssertionError("no worker runs it in these tests")


@workflow.defn
async def nightly(ctx: workflow.Context) -> list[Item]:
    raise AssertionError("no worker runs it in these tests")


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with await Client.connect(address, connect_timeout=10, identity="ann@desk") as c:
        yield c


async def created(client: Client, run_id: str) -> ledger_pb2.RunCreated:
    """The run's run_created event: what StartRun recorded (input, version, timeout)."""
    async for event in client.iter_events(run_id):
        if event.WhichOneof("payload") == "run_created":
            return event.run_created
    raise AssertionError(f"run {run_id} has no run_created event")


async def finish(client: Client, event: ledger_pb2.LedgerEvent) -> None:
    """Append a run's terminal event, as the coordinator does for a worker's result."""
    await client.append_events([event])


# --- start ----------------------------------------------------------------------------------


async def test_start_by_name_lets_the_coordinator_choose_the_id(client: Client) -> None:
    handle = await client.start("billing.close", {"month": "2026-01"}, tags=["eu", "nightly"])
    assert isinstance(handle, RunHandle)
    assert handle.created
    assert handle.run_id
    assert handle.client is client
    snap = await handle.describe()
    assert (snap.run_id, snap.workflow_name, snap.workflow_version) == (
        handle.run_id,
        "billing.close",
        "",
    )
    assert snap.status == ledger_pb2.RUN_STATUS_QUEUED
    assert list(snap.tags) == ["eu", "nightly"]
    assert payload_value((await created(client, handle.run_id)).input) == {"month": "2026-01"}
    other = await client.start("billing.close")
    assert other.created
    assert other.run_id != handle.run_id


async def test_a_retried_start_with_the_same_run_id_returns_the_run_not_created(
    client: Client,
) -> None:
    first = await client.start("billing.close", 1, run_id="close-2026-01")
    again = await client.start("billing.close", 1, run_id="close-2026-01")
    assert (first.run_id, first.created) == ("close-2026-01", True)
    assert (again.run_id, again.created) == ("close-2026-01", False)
    assert repr(again) == "RunHandle(run_id='close-2026-01', created=False)"
    with pytest.raises(RunAlreadyExistsError):
        await client.start("another.workflow", run_id="close-2026-01")


async def test_a_retried_start_with_the_same_idempotency_key_returns_the_first_run(
    client: Client,
) -> None:
    first = await client.start("billing.close", idempotency_key="close-jan")
    again = await client.start("billing.close", idempotency_key="close-jan")
    assert first.created
    assert not again.created
    assert again.run_id == first.run_id
    both = await client.start("billing.close", run_id="r-k", idempotency_key="k2")
    assert both.run_id == "r-k"
    assert (await client.start("billing.close", run_id="r-k", idempotency_key="k2")).run_id == "r-k"
    listed = await client.list_runs(workflow_name="billing.close")
    assert sorted(r.run_id for r in listed.runs) == sorted([first.run_id, "r-k"])


async def test_start_with_a_definition_sends_its_name_and_version_and_converts_the_input(
    client: Client,
) -> None:
    handle = await client.start(checkout, Order(id="o-1", amount=250), run_id="o-1")
    snap = await handle.describe()
    assert (snap.workflow_name, snap.workflow_version) == ("order.checkout", "2")
    recorded = await created(client, "o-1")
    assert recorded.input.encoding == "json/plain"
    assert payload_value(recorded.input) == {"id": "o-1", "amount": 250}
    pinned = await client.start(checkout, Order(id="o-2", amount=1), version="3")
    assert (await pinned.describe()).workflow_version == "3"
    unversioned = await client.start(checkout, Order(id="o-3", amount=1), version="")
    assert (await unversioned.describe()).workflow_version == ""
    no_input = await client.start(nightly)
    assert (await no_input.describe()).workflow_name == "nightly"
    assert payload_value((await created(client, no_input.run_id)).input) is None


async def test_input_is_converted_as_the_workflow_engine_converts_it(client: Client) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "order": Order(id="o", amount=3),
        "item": Item(sku="s-1"),
        "colour": Colour.RED,
        "at": when,
        "key": key,
        "sizes": (1, 2),
        "labels": {"b", "a"},
    }
    handle = await client.start("convert", value)
    assert payload_value((await created(client, handle.run_id)).input) == {
        "order": {"id": "o", "amount": 3},
        "item": {"sku": "s-1", "quantity": 1},
        "colour": "red",
        "at": "2026-01-02T03:04:05+00:00",
        "key": str(key),
        "sizes": [1, 2],
        "labels": ["a", "b"],
    }
    encoded = common_pb2.Payload(encoding="json/plain", data=b'{"raw":true}')
    raw = await client.start("convert", encoded)
    assert (await created(client, raw.run_id)).input == encoded


async def test_input_without_a_json_form_is_refused_before_anything_is_created(
    client: Client,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.start("convert", {"when": object()})
    assert caught.value.field == "input"
    assert "has no JSON form" in caught.value.problem
    with pytest.raises(InvalidArgumentError, match="input"):
        await client.start("convert", float("nan"))
    with pytest.raises(InvalidArgumentError) as caught:
        await client.start(42, None)  # type: ignore[call-overload]
    assert caught.value.field == "workflow"
    assert (await client.list_runs()).runs == []


async def test_the_coordinator_refusing_a_field_names_it(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.start("convert", run_id="x" * 300)
    assert caught.value.field == "run_id"


async def test_execution_timeout_is_sent(client: Client) -> None:
    handle = await client.start("slow", execution_timeout=timedelta(minutes=5))
    recorded = await created(client, handle.run_id)
    assert recorded.execution_timeout.ToTimedelta() == timedelta(minutes=5)


# --- result -----------------------------------------------------------------------------------


async def test_result_of_a_completed_run_decodes_into_the_definitions_return_type(
    client: Client,
) -> None:
    handle = await client.start(checkout, Order(id="o-1", amount=250), run_id="o-1")
    output = {"order_id": "o-1", "charged": 250, "at": "2026-01-02T03:04:05+00:00"}
    await finish(client, ended("o-1", "completed", output))
    receipt = await handle.result()
    assert receipt == Receipt(
        order_id="o-1", charged=250, at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    # The same run by id: plain JSON unless a type is asked for.
    by_id = client.get_handle("o-1")
    assert not by_id.created
    assert await by_id.result() == output
    assert await by_id.result(result_type=Receipt) == receipt
    stored = await by_id.result(result_type=common_pb2.Payload)
    assert stored == json_payload(output)
    typed = client.get_handle("o-1", result_type=dict[str, str])
    assert (await typed.result())["charged"] == 250  # dict[str, str] does not coerce


async def test_result_decodes_pydantic_models_and_a_run_without_a_result_is_none(
    client: Client,
) -> None:
    handle = await client.start(nightly, run_id="n1")
    await finish(client, ended("n1", "completed", [{"sku": "a"}, {"sku": "b", "quantity": 2}]))
    assert await handle.result() == [Item(sku="a"), Item(sku="b", quantity=2)]
    await client.start("bare", run_id="bare")
    await finish(client, produced("bare", "run_completed"))
    assert await client.get_handle("bare").result() is None


async def test_a_result_that_does_not_fit_the_type_is_a_ledgerflow_error(client: Client) -> None:
    handle = await client.start(checkout, Order(id="o", amount=1), run_id="o")
    await finish(client, ended("o", "completed", ["not", "an", "object"]))
    with pytest.raises(LedgerflowError, match="run o: its result does not decode as Receipt"):
        await handle.result()


@pytest.mark.parametrize(
    ("status", "error", "error_type", "message", "text"),
    [
        ("failed", RunFailedError, "ValueError", "card declined", "failed"),
        ("cancelled", RunCancelledError, "CancelledSignal", "customer", "was cancelled"),
        ("timed_out", RunTimedOutError, "TimeoutError", "after 300s", "timed out"),
    ],
)
async def test_result_of_a_run_that_did_not_complete_raises_its_typed_error(
    client: Client,
    status: str,
    error: type[RunEndedError],
    error_type: str,
    message: str,
    text: str,
) -> None:
    handle = await client.start("checkout", run_id="r1")
    await finish(client, ended("r1", status, error_type=error_type, message=message))
    with pytest.raises(error) as caught:
        await handle.result()
    err = caught.value
    assert str(err) == f"run r1 {text}: {error_type}: {message}"
    assert isinstance(err, RunEndedError)
    assert isinstance(err, LedgerflowError)
    assert not isinstance(err, TimeoutError)  # the run is over; nothing to wait longer for
    assert (err.run_id, err.error_type, err.error_message) == ("r1", error_type, message)
    assert err.error == common_pb2.ErrorInfo(type=error_type, message=message)
    assert err.snapshot.run_id == "r1"
    assert err.status == err.snapshot.status
    assert err.status == ledger_pb2.RunStatus.Value(f"RUN_STATUS_{status.upper()}")


async def test_result_of_a_terminated_run(client: Client) -> None:
    handle = await client.start("checkout", run_id="r1")
    await finish(client, ended("r1", "terminated", message="operator stop"))
    with pytest.raises(RunTerminatedError) as caught:
        await handle.result()
    assert str(caught.value) == "run r1 was terminated: Terminated: operator stop"
    assert caught.value.status == ledger_pb2.RUN_STATUS_TERMINATED


async def test_a_failed_run_keeps_its_compensation_outcome_and_partial_result(
    client: Client,
) -> None:
    handle = await client.start("checkout", run_id="r1")
    event = produced(
        "r1",
        "run_failed",
        error=common_pb2.ErrorInfo(type="ValueError", message="no stock"),
        result=json_payload({"partial": True}),
        compensation=ledger_pb2.COMPENSATION_OUTCOME_COMPENSATED,
    )
    await finish(client, event)
    with pytest.raises(RunFailedError) as caught:
        await handle.result()
    assert caught.value.snapshot.compensation == ledger_pb2.COMPENSATION_OUTCOME_COMPENSATED
    assert payload_value(caught.value.snapshot.result) == {"partial": True}


async def test_result_waits_for_a_run_that_ends_while_it_waits(
    client: Client, probe: WatchProbe
) -> None:
    handle = await client.start("checkout", {"n": 1}, run_id="r1")
    waiter = asyncio.create_task(handle.result())
    await probe.waiting("r1")  # result() has the queued snapshot and waits for the end
    # It asked for the end only: the coordinator sends none of the changes in between.
    assert probe.terminal_only["r1"]
    await client.append_events([produced("r1", "run_started")])
    assert not waiter.done()
    await finish(client, ended("r1", "completed", {"ok": True}))
    assert await asyncio.wait_for(waiter, timeout=30) == {"ok": True}


async def test_result_raises_for_a_run_that_fails_while_it_waits(
    client: Client, probe: WatchProbe
) -> None:
    handle = await client.start("checkout", run_id="r1")
    waiter = asyncio.create_task(handle.result())
    await probe.waiting("r1")
    await finish(client, ended("r1", "failed", error_type="KeyError", message="'sku'"))
    with pytest.raises(RunFailedError, match="KeyError"):
        await asyncio.wait_for(waiter, timeout=30)


async def test_result_timeout_gives_up_waiting_and_the_run_goes_on(
    client: Client, probe: WatchProbe
) -> None:
    handle = await client.start("checkout", run_id="r1")
    with pytest.raises(ResultTimeoutError) as caught:
        await handle.result(timeout=0.2)
    err = caught.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, LedgerflowError)
    assert str(err) == "run r1 did not end within 0.2s"
    assert (err.run_id, err.timeout) == ("r1", 0.2)
    assert err.snapshot is not None
    assert err.snapshot.status == ledger_pb2.RUN_STATUS_QUEUED
    # The watch it gave up on was closed, and the run can still be waited for.
    waiter = asyncio.create_task(handle.result(timeout=60))
    await probe.waiting("r1")
    await finish(client, ended("r1", "completed", 7))
    assert await waiter == 7


async def test_result_of_an_unknown_run(client: Client) -> None:
    with pytest.raises(RunNotFoundError):
        await client.get_handle("nobody").result()


# --- watch ----------------------------------------------------------------------------------


async def test_watch_follows_the_run_until_it_ends(client: Client) -> None:
    handle = await client.start("checkout", run_id="r1")
    seen: list[ledger_pb2.RunSnapshot] = []
    async with aclosing(handle.watch()) as snapshots:
        seen.append(await anext(snapshots))
        await client.append_events([produced("r1", "run_started")])
        seen.append(await anext(snapshots))
        await client.append_events([produced("r1", "step_started", step_id="charge")])
        seen.append(await anext(snapshots))
        await finish(client, ended("r1", "completed", 1))
        seen.extend([snap async for snap in snapshots])  # ends after the terminal one
    assert [(s.status, s.active_step_id) for s in seen] == [
        (ledger_pb2.RUN_STATUS_QUEUED, ""),
        (ledger_pb2.RUN_STATUS_RUNNING, ""),
        (ledger_pb2.RUN_STATUS_RUNNING, "charge"),
        (ledger_pb2.RUN_STATUS_COMPLETED, ""),
    ]
    assert [s.last_seq for s in seen] == sorted({s.last_seq for s in seen})


async def test_watch_resumes_after_a_seq(client: Client, probe: WatchProbe) -> None:
    handle = await client.start("checkout", run_id="r1")
    first = await handle.describe()
    async with aclosing(handle.watch(after_seq=first.last_seq)) as snapshots:
        pending = asyncio.ensure_future(anext(snapshots))
        await probe.waiting("r1")  # nothing new yet: the current snapshot was skipped
        await client.append_events([produced("r1", "run_started")])
        resumed = await pending
    assert resumed.status == ledger_pb2.RUN_STATUS_RUNNING
    await finish(client, ended("r1", "completed", 1))
    done = await handle.describe()
    # A watch resumed after the end has nothing to send and ends; from before it, the end.
    assert [s async for s in handle.watch(after_seq=done.last_seq)] == []
    tail = [s async for s in handle.watch(after_seq=resumed.last_seq)]
    assert [s.status for s in tail] == [ledger_pb2.RUN_STATUS_COMPLETED]


async def test_watch_of_an_unknown_run(client: Client) -> None:
    with pytest.raises(RunNotFoundError):
        await anext(client.get_handle("nobody").watch())


async def test_result_survives_a_coordinator_restart(db_url: str) -> None:
    """A stopping coordinator ends watch streams cleanly; result() resumes on the next one."""
    first = Coordinator(ServerConfig(listen="127.0.0.1:0", database_url=db_url, shutdown_grace=2))
    first_probe = WatchProbe(first.hub)
    await first.start()
    address = f"127.0.0.1:{first.port}"
    # grpc waits a second or more before reconnecting a channel whose server went away.
    fast = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]
    async with Client(address, options=fast) as client:
        handle = await client.start("checkout", run_id="r1")
        await client.append_events([produced("r1", "run_started")])
        waiter = asyncio.create_task(handle.result(timeout=60))
        await first_probe.waiting("r1")
        await first.stop()
        second = Coordinator(ServerConfig(listen=address, database_url=db_url, shutdown_grace=2))
        second_probe = WatchProbe(second.hub)
        await second.start()
        try:
            await second_probe.waiting("r1")  # result() is watching again
            assert not waiter.done()
            await finish(client, ended("r1", "completed", {"ok": True}))
            assert await asyncio.wait_for(waiter, timeout=30) == {"ok": True}
        finally:
            await second.stop()


async def test_handle_cancel_signal_and_describe(client: Client) -> None:
    handle = await client.start("checkout", run_id="r1")
    cancelled = await handle.cancel("customer asked")
    assert not cancelled.already_requested
    again = await handle.cancel("twice")
    assert again.already_requested
    snap = await handle.describe()
    assert snap.cancel_requested
    assert snap.cancel_reason == "customer asked"

    sent = await handle.signal("approve", Order(id="o", amount=2), request_id="q1")
    assert not sent.duplicate
    dup = await handle.signal("approve", Order(id="o", amount=2), request_id="q1")
    assert (dup.duplicate, dup.seq) == (True, sent.seq)
    events = [e async for e in client.iter_events("r1")]
    cancel_event = next(e for e in events if e.WhichOneof("payload") == "cancel_requested")
    assert cancel_event.cancel_requested.identity == "ann@desk"
    signal_event = next(e for e in events if e.WhichOneof("payload") == "signal_received")
    assert signal_event.seq == sent.seq
    assert signal_event.signal_received.name == "approve"
    assert payload_value(signal_event.signal_received.payload) == {"id": "o", "amount": 2}

    await finish(client, ended("r1", "cancelled", error_type="CancelledSignal", message="asked"))
    with pytest.raises(RunCancelledError):
        await handle.result()
    with pytest.raises(FailedPreconditionError):
        await handle.signal("approve")
    with pytest.raises(RunNotFoundError):
        await client.get_handle("nobody").describe()
