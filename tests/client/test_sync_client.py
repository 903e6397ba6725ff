"""SyncClient against grpc_testing's fake channel: request shapes, errors, streams.

The client blocks, so each call runs in a worker thread while the test plays the
coordinator: it takes the RPC off the fake channel, checks the request, and
answers or terminates it with a status.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf.message import Message

from ledgerflow.client import EventsPage, ListRunsPage, StartRunResult, SyncClient
from ledgerflow.errors import (
    CoordinatorUnavailableError,
    FailedPreconditionError,
    InvalidArgumentError,
    LedgerflowError,
    PayloadTooLargeError,
    RunAlreadyExistsError,
    RunNotFoundError,
)
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.v1 import ledger_pb2, run_service_pb2
from ledgerflow.v1 import run_service_pb2 as rs
from tests.client.builders import event, log_line, snapshot, summary, ts

SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
OK = grpc.StatusCode.OK
_T = TypeVar("_T")


class Coordinator:
    """The test's side of the fake channel."""

    def __init__(self) -> None:
        self.channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        self.pool = ThreadPoolExecutor(max_workers=1)

    def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Future[_T]:
        return self.pool.submit(fn, *args, **kwargs)

    def unary(
        self, method: str, response: Message, code: grpc.StatusCode = OK, details: str = ""
    ) -> Message:
        """Answer the next call of ``method``; return its request."""
        _, request, rpc = self.channel.take_unary_unary(SERVICE.methods_by_name[method])
        rpc.terminate(response, (), code, details)
        assert isinstance(request, Message)
        return request

    def stream(
        self,
        method: str,
        responses: list[Message],
        code: grpc.StatusCode = OK,
        details: str = "",
    ) -> Message:
        """Send ``responses`` on the next call of ``method``, then end it; return its request."""
        _, request, rpc = self.channel.take_unary_stream(SERVICE.methods_by_name[method])
        for response in responses:
            rpc.send_response(response)
        rpc.terminate((), code, details)
        assert isinstance(request, Message)
        return request


@pytest.fixture
def coordinator() -> Iterator[Coordinator]:
    side = Coordinator()
    yield side
    side.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def client(coordinator: Coordinator) -> SyncClient:
    return SyncClient.from_channel(coordinator.channel, address="fake:1", identity="me@here")


def collect(
    stream: Iterator[_T], on_item: Callable[[_T], object] = lambda _: None
) -> tuple[list[_T], BaseException | None]:
    """Read a stream to its end; return the items and the error that ended it, if any."""
    items: list[_T] = []
    try:
        for item in stream:
            items.append(item)
            on_item(item)
    except LedgerflowError as err:
        return items, err
    return items, None


# --- request shapes -----------------------------------------------------------------------


def test_start_run(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(
        client.start_run,
        "checkout",
        [1, "two", None],
        run_id="r1",
        idempotency_key="k",
        tags=("a",),
        workflow_version="v3",
        execution_timeout=timedelta(seconds=90),
    )
    request = coordinator.unary("StartRun", rs.StartRunResponse(run=snapshot(), created=True))
    assert future.result(timeout=10) == StartRunResult(snapshot=snapshot(), created=True)
    assert isinstance(request, rs.StartRunRequest)
    assert request.workflow_name == "checkout"
    assert request.input == json_payload([1, "two", None])
    assert payload_value(request.input) == [1, "two", None]
    assert (request.run_id, request.idempotency_key, list(request.tags)) == ("r1", "k", ["a"])
    assert request.workflow_version == "v3"
    assert request.execution_timeout.seconds == 90


def test_get_run(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(client.get_run, "r1")
    request = coordinator.unary("GetRun", rs.GetRunResponse(run=snapshot(last_seq=8)))
    assert future.result(timeout=10) == snapshot(last_seq=8)
    assert request == rs.GetRunRequest(run_id="r1")


def test_list_runs_sets_the_filter(coordinator: Coordinator, client: SyncClient) -> None:
    after = datetime(2026, 3, 1, tzinfo=UTC)
    future = coordinator.call(
        client.list_runs,
        statuses=["completed", ledger_pb2.RUN_STATUS_CANCELLED],
        workflow_name="w",
        created_after=after,
        page_size=10,
        page_token="tok",
    )
    request = coordinator.unary(
        "ListRuns", rs.ListRunsResponse(runs=[summary("a")], next_page_token="n")
    )
    assert future.result(timeout=10) == ListRunsPage(runs=[summary("a")], next_page_token="n")
    assert request == rs.ListRunsRequest(
        filter=rs.RunFilter(
            statuses=[ledger_pb2.RUN_STATUS_COMPLETED, ledger_pb2.RUN_STATUS_CANCELLED],
            workflow_name="w",
            created_after=ts(after),
        ),
        page_size=10,
        page_token="tok",
    )


def test_iter_runs_pages(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(lambda: [r.run_id for r in client.iter_runs(page_size=1)])
    first = coordinator.unary(
        "ListRuns", rs.ListRunsResponse(runs=[summary("a")], next_page_token="2")
    )
    second = coordinator.unary("ListRuns", rs.ListRunsResponse(runs=[summary("b")]))
    assert future.result(timeout=10) == ["a", "b"]
    assert [first.page_token, second.page_token] == ["", "2"]  # type: ignore[attr-defined]


def test_get_events_and_iter_events(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(client.get_events, "r1", after_seq=5, page_size=3)
    request = coordinator.unary("GetEvents", rs.GetEventsResponse(events=[event(6)]))
    assert future.result(timeout=10) == EventsPage(events=[event(6)], has_more=False)
    assert request == rs.GetEventsRequest(run_id="r1", after_seq=5, page_size=3)

    all_seqs = coordinator.call(lambda: [e.seq for e in client.iter_events("r1")])
    first = coordinator.unary(
        "GetEvents", rs.GetEventsResponse(events=[event(1), event(2)], has_more=True)
    )
    second = coordinator.unary("GetEvents", rs.GetEventsResponse(events=[event(3)]))
    assert all_seqs.result(timeout=10) == [1, 2, 3]
    assert [first.after_seq, second.after_seq] == [0, 2]  # type: ignore[attr-defined]


def test_cancel_run(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(client.cancel_run, "r1", "stop")
    request = coordinator.unary("CancelRun", rs.CancelRunResponse(seq=4, already_requested=True))
    assert future.result(timeout=10) == rs.CancelRunResponse(seq=4, already_requested=True)
    assert request == rs.CancelRunRequest(run_id="r1", reason="stop", identity="me@here")


def test_signal_run(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(
        client.signal_run, "r1", "approve", {"ok": True}, request_id="x", identity="bot"
    )
    request = coordinator.unary("SignalRun", rs.SignalRunResponse(seq=6))
    assert future.result(timeout=10).seq == 6
    assert request == rs.SignalRunRequest(
        run_id="r1",
        signal_name="approve",
        payload=json_payload({"ok": True}),
        request_id="x",
        identity="bot",
    )


def test_append_events_and_report_status(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(client.append_events, [event(0)], batch_id="b")
    request = coordinator.unary("AppendEvents", rs.AppendEventsResponse(duplicate=True))
    assert future.result(timeout=10).duplicate
    assert request == rs.AppendEventsRequest(batch_id="b", events=[event(0)])

    patch = rs.StatusPatch(run_id="r1", status="running")
    reported = coordinator.call(client.report_status, patch)
    request = coordinator.unary("ReportStatus", rs.ReportStatusResponse(events=[event(2)]))
    assert list(reported.result(timeout=10).events) == [event(2)]
    assert request == rs.ReportStatusRequest(patch=patch)


def test_bad_input_is_refused_without_a_call(client: SyncClient) -> None:
    with pytest.raises(InvalidArgumentError, match="payload"):
        client.signal_run("r1", "s", object())
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        client.list_runs(created_before=datetime(2026, 1, 1))  # noqa: DTZ001


# --- error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "run_id: too long", InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, "run r1 not found", RunNotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, "run r1 runs another workflow", RunAlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, "run r1 has finished", FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "payload too large", PayloadTooLargeError),
        (grpc.StatusCode.UNAVAILABLE, "connection reset", CoordinatorUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline", CoordinatorUnavailableError),
        (grpc.StatusCode.UNAUTHENTICATED, "who are you", LedgerflowError),
        (grpc.StatusCode.ABORTED, "stale lease", LedgerflowError),
    ],
)
def test_each_status_code_maps_to_its_error(
    coordinator: Coordinator,
    client: SyncClient,
    code: grpc.StatusCode,
    details: str,
    error: type[LedgerflowError],
) -> None:
    future = coordinator.call(client.cancel_run, "r1")
    coordinator.unary("CancelRun", rs.CancelRunResponse(), code, details)
    with pytest.raises(LedgerflowError) as caught:
        future.result(timeout=10)
    assert type(caught.value) is error
    assert details in str(caught.value)
    if error is LedgerflowError:
        assert code.name in str(caught.value)
    if error is CoordinatorUnavailableError:
        assert "fake:1" in str(caught.value)
    if error is InvalidArgumentError:
        assert isinstance(caught.value, InvalidArgumentError)
        assert (caught.value.field, caught.value.problem) == ("run_id", "too long")
    assert isinstance(caught.value.__cause__, grpc.RpcError)


# --- streams ------------------------------------------------------------------------------


def test_watch_run_yields_in_order(coordinator: Coordinator, client: SyncClient) -> None:
    snaps = [snapshot(last_seq=n) for n in (1, 2, 3)]
    future = coordinator.call(collect, client.watch_run("r1", after_seq=1))
    request = coordinator.stream("WatchRun", [rs.WatchRunResponse(snapshot=s) for s in snaps])
    assert future.result(timeout=10) == (snaps, None)
    assert request == rs.WatchRunRequest(run_id="r1", after_seq=1)


def test_watch_runs_sends_the_filter(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(
        collect, client.watch_runs(statuses=["queued"], include_existing=True)
    )
    request = coordinator.stream("WatchRuns", [rs.WatchRunsResponse(run=summary("a"))])
    assert future.result(timeout=10) == ([summary("a")], None)
    assert request == rs.WatchRunsRequest(
        filter=rs.RunFilter(statuses=[ledger_pb2.RUN_STATUS_QUEUED]), include_existing=True
    )


def test_tail_logs_flattens_batches_in_order(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(collect, client.tail_logs("r1", from_seq=2, follow=True))
    request = coordinator.stream(
        "TailLogs",
        [
            rs.TailLogsResponse(lines=[log_line(2, "b"), log_line(3, "c")]),
            rs.TailLogsResponse(lines=[log_line(4, "d")]),
        ],
    )
    lines, error = future.result(timeout=10)
    assert [line.text for line in lines] == ["b", "c", "d"]
    assert error is None
    assert request == rs.TailLogsRequest(run_id="r1", from_seq=2, follow=True)


def test_an_error_mid_stream_is_mapped(coordinator: Coordinator, client: SyncClient) -> None:
    received: queue.Queue[ledger_pb2.LogLine] = queue.Queue()
    future = coordinator.call(collect, client.tail_logs("r1", follow=True), received.put)
    _, _, rpc = coordinator.channel.take_unary_stream(SERVICE.methods_by_name["TailLogs"])
    rpc.send_response(rs.TailLogsResponse(lines=[log_line(1, "a")]))
    # grpc_testing drops responses not yet read when a call ends with an error, so the
    # error is sent only once the client has the line.
    assert received.get(timeout=10).text == "a"
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "coordinator restarting")
    lines, error = future.result(timeout=10)
    assert [line.text for line in lines] == ["a"]
    assert isinstance(error, CoordinatorUnavailableError)
    assert "coordinator restarting" in str(error)


def test_watch_run_not_found(coordinator: Coordinator, client: SyncClient) -> None:
    future = coordinator.call(collect, client.watch_run("nope"))
    coordinator.stream("WatchRun", [], grpc.StatusCode.NOT_FOUND, "run nope not found")
    items, error = future.result(timeout=10)
    assert items == []
    assert isinstance(error, RunNotFoundError)


def test_closing_a_stream_early_cancels_the_call(
    coordinator: Coordinator, client: SyncClient
) -> None:
    def first_then_close() -> ledger_pb2.RunSnapshot:
        stream = client.watch_run("r1")
        snap = next(stream)
        stream.close()
        return snap

    future = coordinator.call(first_then_close)
    _, _, rpc = coordinator.channel.take_unary_stream(SERVICE.methods_by_name["WatchRun"])
    rpc.send_response(rs.WatchRunResponse(snapshot=snapshot()))
    rpc.cancelled()  # returns once the client cancelled the call
    assert future.result(timeout=10) == snapshot()


def test_close_and_context_manager(coordinator: Coordinator) -> None:
    with SyncClient.from_channel(coordinator.channel) as client:
        assert repr(client) == "SyncClient(address='<channel>')"
