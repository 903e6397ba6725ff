"""Client (asyncio) against a real in-process grpc.aio server serving a scripted fake."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest
from grpc import aio

from ledgerflow.client import Client, EventsPage, ListRunsPage, StartRunResult
from ledgerflow.errors import (
    CoordinatorUnavailableError,
    FailedPreconditionError,
    InvalidArgumentError,
    LedgerflowError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RunAlreadyExistsError,
    RunNotFoundError,
)
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import common_pb2, ledger_pb2
from ledgerflow.v1 import run_service_pb2 as rs
from tests.client.builders import T0, event, log_line, snapshot, summary, ts
from tests.client.fake_service import HOLD, Abort, FakeCoordinator

_T = TypeVar("_T")


async def drain(stream: AsyncIterator[_T], into: list[_T]) -> None:
    """Collect a stream's items into ``into``, keeping those read before an error."""
    async for item in stream:
        into.append(item)  # noqa: PERF401 - a comprehension would lose them on error


@pytest.fixture
async def client(fake: FakeCoordinator) -> AsyncIterator[Client]:
    async with await Client.connect(fake.address, connect_timeout=5, identity="tester@box") as c:
        yield c


# --- unary calls: request shapes and results ----------------------------------------------


async def test_start_run_sends_every_field_and_encodes_input_as_json(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply("StartRun", rs.StartRunResponse(run=snapshot("r9"), created=True))
    result = await client.start_run(
        "checkout",
        {"order": 7, "items": ["a", "b"]},
        run_id="r9",
        idempotency_key="k1",
        tags=["blue", "fast"],
        workflow_version="v2",
        execution_timeout=timedelta(minutes=5),
    )
    assert result == StartRunResult(snapshot=snapshot("r9"), created=True)
    assert result.run_id == "r9"
    request = fake.service.only_request("StartRun")
    assert isinstance(request, rs.StartRunRequest)
    assert request.workflow_name == "checkout"
    assert request.input.encoding == "json/plain"
    assert payload_value(request.input) == {"order": 7, "items": ["a", "b"]}
    assert (request.run_id, request.idempotency_key) == ("r9", "k1")
    assert list(request.tags) == ["blue", "fast"]
    assert request.workflow_version == "v2"
    assert request.execution_timeout.ToTimedelta() == timedelta(minutes=5)


async def test_start_run_defaults_send_null_input_and_no_timeout(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply("StartRun", rs.StartRunResponse(run=snapshot(), created=False))
    result = await client.start_run("checkout")
    assert result.created is False
    request = fake.service.only_request("StartRun")
    assert isinstance(request, rs.StartRunRequest)
    assert request.input.data == b"null"
    assert not request.HasField("execution_timeout")
    assert (request.run_id, request.idempotency_key, list(request.tags)) == ("", "", [])


async def test_start_run_passes_an_encoded_payload_through(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply("StartRun", rs.StartRunResponse(run=snapshot()))
    encoded = common_pb2.Payload(encoding="binary/zstd", data=b"\x28\xb5")
    await client.start_run("checkout", encoded)
    request = fake.service.only_request("StartRun")
    assert isinstance(request, rs.StartRunRequest)
    assert request.input == encoded


async def test_start_run_refuses_input_that_is_not_json_before_calling(
    fake: FakeCoordinator, client: Client
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.start_run("checkout", {"at": object()})
    assert caught.value.field == "input"
    with pytest.raises(InvalidArgumentError, match="input"):
        await client.start_run("checkout", float("nan"))
    assert not fake.service.requests["StartRun"]


async def test_get_run_returns_the_snapshot(fake: FakeCoordinator, client: Client) -> None:
    fake.service.reply("GetRun", rs.GetRunResponse(run=snapshot("r1", last_seq=4)))
    assert await client.get_run("r1") == snapshot("r1", last_seq=4)
    assert fake.service.only_request("GetRun") == rs.GetRunRequest(run_id="r1")


async def test_list_runs_sets_the_filter_and_returns_a_page(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply(
        "ListRuns", rs.ListRunsResponse(runs=[summary("a"), summary("b")], next_page_token="t2")
    )
    after = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    before = datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
    page = await client.list_runs(
        statuses=["running", "RUN_STATUS_FAILED", ledger_pb2.RUN_STATUS_WAITING],
        workflow_name="checkout",
        created_after=after,
        created_before=before,
        page_size=2,
        page_token="t1",
    )
    assert page == ListRunsPage(runs=[summary("a"), summary("b")], next_page_token="t2")
    request = fake.service.only_request("ListRuns")
    assert isinstance(request, rs.ListRunsRequest)
    assert list(request.filter.statuses) == [
        ledger_pb2.RUN_STATUS_RUNNING,
        ledger_pb2.RUN_STATUS_FAILED,
        ledger_pb2.RUN_STATUS_WAITING,
    ]
    assert request.filter.workflow_name == "checkout"
    assert request.filter.created_after == ts(after)
    assert request.filter.created_before == ts(before)
    assert (request.page_size, request.page_token) == (2, "t1")


async def test_list_runs_without_arguments_sends_an_empty_filter(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply("ListRuns", rs.ListRunsResponse())
    assert await client.list_runs() == ListRunsPage(runs=[], next_page_token="")
    request = fake.service.only_request("ListRuns")
    assert isinstance(request, rs.ListRunsRequest)
    assert not request.filter.HasField("created_after")
    assert not request.filter.statuses


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"statuses": ["sleeping"]}, "statuses"),
        ({"statuses": [99]}, "statuses"),
        ({"created_after": datetime(2026, 1, 1)}, "filter.created_after"),  # noqa: DTZ001
        ({"created_before": datetime(2026, 1, 1)}, "filter.created_before"),  # noqa: DTZ001
    ],
)
async def test_list_runs_refuses_a_bad_filter_before_calling(
    fake: FakeCoordinator, client: Client, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.list_runs(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert not fake.service.requests["ListRuns"]


async def test_iter_runs_follows_page_tokens_to_the_end(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply(
        "ListRuns",
        rs.ListRunsResponse(runs=[summary("a"), summary("b")], next_page_token="p2"),
        rs.ListRunsResponse(runs=[summary("c")], next_page_token="p3"),
        rs.ListRunsResponse(runs=[], next_page_token=""),
    )
    runs = [run.run_id async for run in client.iter_runs(workflow_name="w", page_size=2)]
    assert runs == ["a", "b", "c"]
    requests = fake.service.requests["ListRuns"]
    assert [r.page_token for r in requests] == ["", "p2", "p3"]  # type: ignore[attr-defined]
    assert {r.filter.workflow_name for r in requests} == {"w"}  # type: ignore[attr-defined]
    assert {r.page_size for r in requests} == {2}  # type: ignore[attr-defined]


async def test_iter_runs_stops_on_a_token_that_repeats(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply(
        "ListRuns",
        rs.ListRunsResponse(runs=[summary("a")], next_page_token="same"),
        rs.ListRunsResponse(runs=[summary("b")], next_page_token="same"),
    )
    seen: list[rs.RunSummary] = []
    with pytest.raises(LedgerflowError, match="same page token"):
        await drain(client.iter_runs(), seen)
    assert [run.run_id for run in seen] == ["a", "b"]


async def test_get_events_sends_the_cursor_and_returns_a_page(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply(
        "GetEvents", rs.GetEventsResponse(events=[event(4), event(5)], has_more=True)
    )
    page = await client.get_events("r1", after_seq=3, page_size=2)
    assert page == EventsPage(events=[event(4), event(5)], has_more=True)
    assert fake.service.only_request("GetEvents") == rs.GetEventsRequest(
        run_id="r1", after_seq=3, page_size=2
    )


async def test_iter_events_continues_after_the_last_seq_of_each_page(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply(
        "GetEvents",
        rs.GetEventsResponse(events=[event(3), event(4)], has_more=True),
        rs.GetEventsResponse(events=[event(5)], has_more=False),
    )
    seqs = [ev.seq async for ev in client.iter_events("r1", 2, page_size=2)]
    assert seqs == [3, 4, 5]
    cursors = [r.after_seq for r in fake.service.requests["GetEvents"]]  # type: ignore[attr-defined]
    assert cursors == [2, 4]


async def test_iter_events_refuses_more_promised_on_an_empty_page(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply("GetEvents", rs.GetEventsResponse(events=[], has_more=True))
    with pytest.raises(LedgerflowError, match="has_more"):
        [ev async for ev in client.iter_events("r1")]


async def test_cancel_run_names_the_client_identity_by_default(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.reply(
        "CancelRun",
        rs.CancelRunResponse(seq=9),
        rs.CancelRunResponse(seq=9, already_requested=True),
    )
    first = await client.cancel_run("r1", "no longer needed")
    again = await client.cancel_run("r1", identity="ops@desk")
    assert (first.seq, first.already_requested) == (9, False)
    assert again.already_requested
    assert fake.service.requests["CancelRun"] == [
        rs.CancelRunRequest(run_id="r1", reason="no longer needed", identity="tester@box"),
        rs.CancelRunRequest(run_id="r1", identity="ops@desk"),
    ]


async def test_signal_run_encodes_the_payload(fake: FakeCoordinator, client: Client) -> None:
    fake.service.reply(
        "SignalRun", rs.SignalRunResponse(seq=12), rs.SignalRunResponse(seq=13, duplicate=True)
    )
    sent = await client.signal_run("r1", "approve", {"by": "ann"}, request_id="q1")
    assert (sent.seq, sent.duplicate) == (12, False)
    assert (await client.signal_run("r1", "poke")).duplicate
    first, second = fake.service.requests["SignalRun"]
    assert first == rs.SignalRunRequest(
        run_id="r1",
        signal_name="approve",
        payload=json_payload({"by": "ann"}),
        request_id="q1",
        identity="tester@box",
    )
    assert isinstance(second, rs.SignalRunRequest)
    assert second.payload.data == b"null"


async def test_append_events_sends_the_batch(fake: FakeCoordinator, client: Client) -> None:
    reply = rs.AppendEventsResponse(ranges=[rs.AppendedRange(run_id="r1", first_seq=5, last_seq=6)])
    fake.service.reply("AppendEvents", reply)
    events = [event(0), event(0, step_id="s")]
    assert await client.append_events(iter(events), batch_id="b1") == reply
    assert fake.service.only_request("AppendEvents") == rs.AppendEventsRequest(
        batch_id="b1", events=events
    )


async def test_report_status_sends_the_patch(fake: FakeCoordinator, client: Client) -> None:
    reply = rs.ReportStatusResponse(events=[event(3)])
    fake.service.reply("ReportStatus", reply)
    patch = rs.StatusPatch(run_id="r1", status="succeeded", live_logs=["done"])
    assert await client.report_status(patch, batch_id="b7") == reply
    assert fake.service.only_request("ReportStatus") == rs.ReportStatusRequest(
        patch=patch, batch_id="b7"
    )


# --- streams ------------------------------------------------------------------------------


async def test_watch_run_yields_snapshots_in_order(fake: FakeCoordinator, client: Client) -> None:
    snaps = [
        snapshot(last_seq=3),
        snapshot(last_seq=4, active_step_id="charge"),
        snapshot(status=ledger_pb2.RUN_STATUS_COMPLETED, last_seq=5),
    ]
    fake.service.stream("WatchRun", *(rs.WatchRunResponse(snapshot=s) for s in snaps))
    assert [s async for s in client.watch_run("r1", after_seq=2)] == snaps
    assert fake.service.only_request("WatchRun") == rs.WatchRunRequest(run_id="r1", after_seq=2)


async def test_watch_runs_sends_the_filter(fake: FakeCoordinator, client: Client) -> None:
    fake.service.stream(
        "WatchRuns", rs.WatchRunsResponse(run=summary("a")), rs.WatchRunsResponse(run=summary("b"))
    )
    runs = [
        r.run_id
        async for r in client.watch_runs(
            statuses=["failed"], workflow_name="w", created_after=T0, include_existing=True
        )
    ]
    assert runs == ["a", "b"]
    request = fake.service.only_request("WatchRuns")
    assert isinstance(request, rs.WatchRunsRequest)
    assert request.include_existing
    assert list(request.filter.statuses) == [ledger_pb2.RUN_STATUS_FAILED]
    assert request.filter.workflow_name == "w"
    assert request.filter.created_after == ts(T0)


async def test_tail_logs_flattens_batches(fake: FakeCoordinator, client: Client) -> None:
    fake.service.stream(
        "TailLogs",
        rs.TailLogsResponse(lines=[log_line(1, "a"), log_line(2, "b")]),
        rs.TailLogsResponse(lines=[]),
        rs.TailLogsResponse(lines=[log_line(3, "c", "stderr")]),
    )
    lines = [(ln.seq, ln.channel, ln.text) async for ln in client.tail_logs("r1", from_seq=1)]
    assert lines == [(1, "stdout", "a"), (2, "stdout", "b"), (3, "stderr", "c")]
    assert fake.service.only_request("TailLogs") == rs.TailLogsRequest(run_id="r1", from_seq=1)


async def test_tail_logs_follow_is_sent(fake: FakeCoordinator, client: Client) -> None:
    fake.service.stream("TailLogs")
    assert [ln async for ln in client.tail_logs("r1", follow=True)] == []
    assert fake.service.only_request("TailLogs") == rs.TailLogsRequest(run_id="r1", follow=True)


async def test_an_error_mid_stream_is_mapped_after_the_items_before_it(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.stream(
        "TailLogs",
        rs.TailLogsResponse(lines=[log_line(1, "a")]),
        Abort(grpc.StatusCode.UNAVAILABLE, "coordinator shutting down"),
    )
    seen: list[ledger_pb2.LogLine] = []
    with pytest.raises(CoordinatorUnavailableError, match="shutting down") as caught:
        await drain(client.tail_logs("r1", follow=True), seen)
    assert [line.text for line in seen] == ["a"]
    assert fake.address in str(caught.value)
    assert isinstance(caught.value.__cause__, aio.AioRpcError)


async def test_a_stream_refused_at_once_raises_on_first_iteration(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.stream("WatchRun", Abort(grpc.StatusCode.NOT_FOUND, "run r404 not found"))
    stream = client.watch_run("r404")  # nothing is sent until iteration starts
    assert not fake.service.requests["WatchRun"]
    with pytest.raises(RunNotFoundError, match="r404"):
        await anext(stream)


async def test_closing_a_stream_early_cancels_the_call(
    fake: FakeCoordinator, client: Client
) -> None:
    fake.service.stream("WatchRun", rs.WatchRunResponse(snapshot=snapshot()), HOLD)
    async with aclosing(client.watch_run("r1")) as stream:
        async for snap in stream:
            assert snap.run_id == "r1"
            break
    await fake.service.cancelled.wait()


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "error", "message"),
    [
        (grpc.StatusCode.NOT_FOUND, "run r1 not found", RunNotFoundError, "run r1 not found"),
        (grpc.StatusCode.ALREADY_EXISTS, "run r1 exists", RunAlreadyExistsError, "run r1 exists"),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "run r1 has finished",
            FailedPreconditionError,
            "run r1 has finished",
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "input is 9 MB; the limit is 4 MB",
            PayloadTooLargeError,
            "input is 9 MB; the limit is 4 MB",
        ),
        (grpc.StatusCode.UNAVAILABLE, "draining", CoordinatorUnavailableError, "draining"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "slow", CoordinatorUnavailableError, "in time"),
        (grpc.StatusCode.PERMISSION_DENIED, "not yours", PermissionDeniedError, "not yours"),
        (grpc.StatusCode.INTERNAL, "boom", LedgerflowError, "INTERNAL: boom"),
    ],
)
async def test_status_codes_map_to_ledgerflow_errors(
    fake: FakeCoordinator,
    client: Client,
    code: grpc.StatusCode,
    details: str,
    error: type[LedgerflowError],
    message: str,
) -> None:
    fake.service.reply("GetRun", Abort(code, details))
    with pytest.raises(LedgerflowError) as caught:
        await client.get_run("r1")
    assert type(caught.value) is error
    assert message in str(caught.value)
    assert details in str(caught.value)
    assert isinstance(caught.value.__cause__, aio.AioRpcError)


@pytest.mark.parametrize(
    ("details", "field", "problem"),
    [
        ("workflow_name: is required", "workflow_name", "is required"),
        (
            "events[2].step_started.step_id: is required",
            "events[2].step_started.step_id",
            "is required",
        ),
        (
            "page_size: must be at most 1000: got 5000",
            "page_size",
            "must be at most 1000: got 5000",
        ),
        ("Malformed request: no", "", "Malformed request: no"),
        ("the page token is tampered with", "", "the page token is tampered with"),
    ],
)
async def test_invalid_argument_splits_off_the_field(
    fake: FakeCoordinator, client: Client, details: str, field: str, problem: str
) -> None:
    fake.service.reply("StartRun", Abort(grpc.StatusCode.INVALID_ARGUMENT, details))
    with pytest.raises(InvalidArgumentError) as caught:
        await client.start_run("")
    assert (caught.value.field, caught.value.problem) == (field, problem)
    assert str(caught.value) == details


async def test_rpc_timeout_turns_a_silent_coordinator_into_unavailable(
    fake: FakeCoordinator,
) -> None:
    fake.service.reply("GetRun", HOLD)
    async with Client(fake.address, rpc_timeout=0.2) as client:
        with pytest.raises(CoordinatorUnavailableError, match="in time"):
            await client.get_run("r1")
    await fake.service.cancelled.wait()


# --- connecting -------------------------------------------------------------------------


async def test_connect_to_a_dead_port_fails_at_once(dead_address: str) -> None:
    started = time.monotonic()
    with pytest.raises(CoordinatorUnavailableError) as caught:
        await Client.connect(dead_address, connect_timeout=30)
    # A refused connection is reported when it happens, not when the timeout runs out.
    assert time.monotonic() - started < 10
    assert dead_address in str(caught.value)


async def test_connect_gives_up_after_connect_timeout() -> None:
    # A peer that accepts TCP but never speaks HTTP/2 keeps the channel connecting.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(CoordinatorUnavailableError, match=r"within 0\.2s") as caught:
            await Client.connect(address, connect_timeout=0.2)
    assert address in str(caught.value)


async def test_a_lazy_client_reports_a_dead_port_on_first_call(dead_address: str) -> None:
    async with Client(dead_address) as client:
        with pytest.raises(CoordinatorUnavailableError, match=dead_address):
            await client.get_run("r1")
        with pytest.raises(CoordinatorUnavailableError):
            [s async for s in client.watch_run("r1")]


async def test_from_channel_wraps_a_channel_and_closes_it(fake: FakeCoordinator) -> None:
    fake.service.reply("GetRun", rs.GetRunResponse(run=snapshot("r2")))
    channel = aio.insecure_channel(fake.address)
    client = Client.from_channel(channel, address="custom")
    assert (client.address, repr(client)) == ("custom", "Client(address='custom')")
    assert "@" in client.identity
    assert (await client.get_run("r2")).run_id == "r2"
    await client.close()
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def test_results_are_plain_values() -> None:
    result = StartRunResult(snapshot=snapshot("r5"), created=True)
    assert result.run_id == "r5"
    assert "created=True" in repr(result)
    with pytest.raises(AttributeError):
        result.created = False  # type: ignore[misc]
