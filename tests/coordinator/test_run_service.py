"""RunService through a real in-process grpc.aio server, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api import Limits
from ledgerflow.ledger import json_payload, payload_value
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub

if TYPE_CHECKING:
    from ledgerflow.v1.run_service_pb2_grpc import RunServiceAsyncStub

Code = grpc.StatusCode


@pytest.fixture
async def coordinator(db_url: str) -> AsyncIterator[Coordinator]:
    c = Coordinator(
        ServerConfig(
            listen="127.0.0.1:0",
            database_url=db_url,
            limits=Limits(max_payload_bytes=64 * 1024),
            shutdown_grace=2,
        )
    )
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def stub(coordinator: Coordinator) -> AsyncIterator[RunServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        yield RunServiceStub(channel)


def ev(run_id: str, case: str, t: int = 1, **fields: Any) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(event.event_time, t * 1_000_000)
    payload = getattr(event, case)
    payload.CopyFrom(type(payload)(**fields))
    payload.SetInParent()
    return event


async def read(call: Any) -> Any:
    """Read the next message of a server stream; None at its end."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def start(stub: RunServiceAsyncStub, run_id: str = "r1", **kw: Any) -> pb.RunSnapshot:
    response = await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id=run_id, **kw))
    return response.run


async def last_seq(stub: RunServiceAsyncStub, run_id: str) -> int:
    return (await stub.GetRun(rpb.GetRunRequest(run_id=run_id))).run.last_seq


async def test_health_and_start_get(stub: RunServiceAsyncStub, coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    first = await stub.StartRun(
        rpb.StartRunRequest(workflow_name="wf", run_id="r1", input=json_payload({"n": 1}))
    )
    assert first.created
    assert first.run.status == pb.RUN_STATUS_QUEUED
    again = await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
    assert not again.created
    got = await stub.GetRun(rpb.GetRunRequest(run_id="r1"))
    assert got.run.run_id == "r1"
    assert got.run.workflow_name == "wf"


@pytest.mark.parametrize(
    ("request_kw", "code", "field"),
    [
        ({"workflow_name": ""}, Code.INVALID_ARGUMENT, "workflow_name"),
        ({"workflow_name": "wf", "run_id": "x" * 300}, Code.INVALID_ARGUMENT, "run_id"),
        (
            {"workflow_name": "wf", "input": common_pb2.Payload(data=b"{not json")},
            Code.INVALID_ARGUMENT,
            "input",
        ),
        (
            {"workflow_name": "wf", "input": json_payload("x" * 70_000)},
            Code.RESOURCE_EXHAUSTED,
            "input",
        ),
    ],
)
async def test_start_run_refuses_bad_input_without_creating_anything(
    stub: RunServiceAsyncStub, request_kw: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    got, details = await status_of(stub.StartRun(rpb.StartRunRequest(**request_kw)))
    assert got == code
    assert details.startswith(field)
    listed = await stub.ListRuns(rpb.ListRunsRequest())
    assert list(listed.runs) == []


async def test_start_run_for_another_workflow_is_already_exists(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    code, details = await status_of(
        stub.StartRun(rpb.StartRunRequest(workflow_name="other", run_id="r1"))
    )
    assert code == Code.ALREADY_EXISTS
    assert "r1" in details


async def test_get_run_not_found(stub: RunServiceAsyncStub) -> None:
    code, details = await status_of(stub.GetRun(rpb.GetRunRequest(run_id="ghost")))
    assert code == Code.NOT_FOUND
    assert "ghost" in details
    code, _ = await status_of(stub.GetRun(rpb.GetRunRequest(run_id="")))
    assert code == Code.INVALID_ARGUMENT


async def test_list_runs_filters_and_pages_with_signed_tokens(stub: RunServiceAsyncStub) -> None:
    for i in range(7):
        await start(stub, f"r{i}")
    await stub.StartRun(rpb.StartRunRequest(workflow_name="other", run_id="o"))
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r3", "run_completed", 9)]))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListRuns(
            rpb.ListRunsRequest(
                filter=rpb.RunFilter(workflow_name="wf"), page_size=3, page_token=token
            )
        )
        seen.extend(r.run_id for r in page.runs)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"r{i}" for i in range(7)]
    assert len(seen) == len(set(seen))
    done = await stub.ListRuns(
        rpb.ListRunsRequest(filter=rpb.RunFilter(statuses=[pb.RUN_STATUS_COMPLETED]))
    )
    assert [r.run_id for r in done.runs] == ["r3"]
    first = await stub.ListRuns(
        rpb.ListRunsRequest(filter=rpb.RunFilter(workflow_name="wf"), page_size=2)
    )
    tampered = first.next_page_token[:-2] + (
        "AA" if not first.next_page_token.endswith("AA") else "BB"
    )
    code, details = await status_of(
        stub.ListRuns(
            rpb.ListRunsRequest(filter=rpb.RunFilter(workflow_name="wf"), page_token=tampered)
        )
    )
    assert (code, details.split(":")[0]) == (Code.INVALID_ARGUMENT, "page_token")
    code, details = await status_of(
        stub.ListRuns(
            rpb.ListRunsRequest(
                filter=rpb.RunFilter(workflow_name="other"), page_token=first.next_page_token
            )
        )
    )
    assert code == Code.INVALID_ARGUMENT
    assert "different filter" in details
    code, _ = await status_of(stub.ListRuns(rpb.ListRunsRequest(page_size=5000)))
    assert code == Code.INVALID_ARGUMENT
    code, details = await status_of(
        stub.ListRuns(rpb.ListRunsRequest(filter=rpb.RunFilter(statuses=[42])))  # type: ignore[list-item]
    )
    assert (code, details.split(":")[0]) == (Code.INVALID_ARGUMENT, "filter.statuses[0]")


async def test_get_events_pages_after_a_seq(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    await stub.AppendEvents(
        rpb.AppendEventsRequest(
            events=[ev("r1", "log_appended", i, lines=[str(i)]) for i in range(5)]
        )
    )
    page = await stub.GetEvents(rpb.GetEventsRequest(run_id="r1", after_seq=2, page_size=2))
    assert [e.seq for e in page.events] == [3, 4]
    assert page.has_more
    last = await stub.GetEvents(rpb.GetEventsRequest(run_id="r1", after_seq=4))
    assert [e.seq for e in last.events] == [5, 6]
    assert not last.has_more
    code, _ = await status_of(stub.GetEvents(rpb.GetEventsRequest(run_id="r1", after_seq=-1)))
    assert code == Code.INVALID_ARGUMENT
    code, _ = await status_of(stub.GetEvents(rpb.GetEventsRequest(run_id="ghost")))
    assert code == Code.NOT_FOUND


async def test_cancel_and_signal(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    signal = await stub.SignalRun(
        rpb.SignalRunRequest(
            run_id="r1", signal_name="approve", payload=json_payload(True), request_id="q1"
        )
    )
    resend = await stub.SignalRun(
        rpb.SignalRunRequest(
            run_id="r1", signal_name="approve", payload=json_payload(True), request_id="q1"
        )
    )
    assert (signal.seq, signal.duplicate, resend.seq, resend.duplicate) == (2, False, 2, True)
    cancel = await stub.CancelRun(rpb.CancelRunRequest(run_id="r1", reason="stop"))
    again = await stub.CancelRun(rpb.CancelRunRequest(run_id="r1", reason="stop"))
    assert (cancel.seq, cancel.already_requested, again.already_requested) == (3, False, True)
    code, details = await status_of(
        stub.SignalRun(rpb.SignalRunRequest(run_id="r1", signal_name=""))
    )
    assert (code, details.split(":")[0]) == (Code.INVALID_ARGUMENT, "signal_name")
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_cancelled", 9)]))
    code, _ = await status_of(stub.SignalRun(rpb.SignalRunRequest(run_id="r1", signal_name="late")))
    assert code == Code.FAILED_PRECONDITION
    # Retrying the cancel that succeeded still succeeds once the run ended.
    retry = await stub.CancelRun(rpb.CancelRunRequest(run_id="r1"))
    assert (retry.seq, retry.already_requested) == (3, True)
    code, _ = await status_of(stub.CancelRun(rpb.CancelRunRequest(run_id="ghost")))
    assert code == Code.NOT_FOUND
    assert await last_seq(stub, "r1") == 4


@pytest.mark.parametrize(
    ("events", "code", "field"),
    [
        ([], Code.INVALID_ARGUMENT, "events"),
        ([ev("r1", "step_started")], Code.INVALID_ARGUMENT, "events[0].step_started.step_id"),
        (
            [pb.LedgerEvent(run_id="r1", run_started=pb.RunStarted())],
            Code.INVALID_ARGUMENT,
            "events[0].event_time",
        ),
        (
            [ev("r1", "log_appended", lines=["x"], first_seq=3)],
            Code.INVALID_ARGUMENT,
            "events[0].log_appended",
        ),
        (
            [ev("r1", "run_completed", result=json_payload("x" * 70_000))],
            Code.RESOURCE_EXHAUSTED,
            "events[0]",
        ),
        ([ev("ghost", "run_started")], Code.NOT_FOUND, "run 'ghost'"),
        ([ev("r1", "run_created", workflow_name="wf")], Code.ALREADY_EXISTS, "run 'r1'"),
    ],
)
async def test_append_events_refuses_bad_batches_without_change(
    stub: RunServiceAsyncStub, events: list[pb.LedgerEvent], code: grpc.StatusCode, field: str
) -> None:
    await start(stub)
    batch = [ev("r1", "run_started"), *events] if events else []
    got, details = await status_of(stub.AppendEvents(rpb.AppendEventsRequest(events=batch)))
    assert got == code
    assert details.replace("events[1]", "events[0]").startswith(field)
    assert await last_seq(stub, "r1") == 1


async def test_append_events_unknown_enum_and_stale_seq(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    bad = ev("r1", "run_started")
    bad.source = 77  # type: ignore[assignment]
    code, details = await status_of(stub.AppendEvents(rpb.AppendEventsRequest(events=[bad])))
    assert (code, details.split(":")[0]) == (Code.INVALID_ARGUMENT, "events[0].source")
    numbered = ev("r1", "run_started")
    numbered.seq = 5
    code, details = await status_of(stub.AppendEvents(rpb.AppendEventsRequest(events=[numbered])))
    assert (code, details.split(":")[0]) == (Code.INVALID_ARGUMENT, "events[0].seq")


async def test_append_events_batch_id_makes_a_resend_harmless(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    request = rpb.AppendEventsRequest(
        batch_id="b1", events=[ev("r1", "run_started"), ev("r2", "run_created", workflow_name="wf")]
    )
    first = await stub.AppendEvents(request)
    again = await stub.AppendEvents(request)
    assert [(r.run_id, r.first_seq, r.last_seq) for r in first.ranges] == [
        ("r1", 2, 2),
        ("r2", 1, 1),
    ]
    assert again.duplicate
    assert [(r.run_id, r.first_seq) for r in again.ranges] == [("r1", 2), ("r2", 1)]
    assert await last_seq(stub, "r1") == 2


async def test_report_status_creates_and_derives_events(stub: RunServiceAsyncStub) -> None:
    patch = rpb.StatusPatch(
        run_id="ext", workflow_name="cron", status="running", live_logs=["hello"]
    )
    patch.live_step_progress["s"].CopyFrom(pb.StepProgress(completed=1, total=2))
    response = await stub.ReportStatus(rpb.ReportStatusRequest(patch=patch, batch_id="p1"))
    assert [e.WhichOneof("payload") for e in response.events] == [
        "run_created",
        "run_started",
        "log_appended",
        "step_progress",
    ]
    assert [e.seq for e in response.events] == [1, 2, 3, 4]
    done = await stub.ReportStatus(
        rpb.ReportStatusRequest(
            patch=rpb.StatusPatch(run_id="ext", status="succeeded", result=json_payload(7))
        )
    )
    assert [e.WhichOneof("payload") for e in done.events] == ["run_completed"]
    run = (await stub.GetRun(rpb.GetRunRequest(run_id="ext"))).run
    assert run.status == pb.RUN_STATUS_COMPLETED
    assert payload_value(run.result) == 7
    code, _ = await status_of(stub.ReportStatus(rpb.ReportStatusRequest(patch=rpb.StatusPatch())))
    assert code == Code.INVALID_ARGUMENT


async def test_watch_run_streams_each_commit_and_ends_at_the_end(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    call = stub.WatchRun(rpb.WatchRunRequest(run_id="r1"))
    first = await read(call)
    assert first.snapshot.last_seq == 1
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_started", 2)]))
    second = await read(call)
    assert second.snapshot.status == pb.RUN_STATUS_RUNNING
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_completed", 3)]))
    third = await read(call)
    assert third.snapshot.status == pb.RUN_STATUS_COMPLETED
    assert await read(call) is None
    # Resuming at the last seq of a finished run sends nothing and ends.
    resumed = [m async for m in stub.WatchRun(rpb.WatchRunRequest(run_id="r1", after_seq=3))]
    assert resumed == []
    code, _ = await status_of(read(stub.WatchRun(rpb.WatchRunRequest(run_id="ghost"))))
    assert code == Code.NOT_FOUND


async def test_watch_run_skipping_intermediate_sends_the_first_and_the_terminal_snapshot(
    stub: RunServiceAsyncStub,
) -> None:
    await start(stub)
    skipping = stub.WatchRun(rpb.WatchRunRequest(run_id="r1", skip_intermediate=True))
    every = stub.WatchRun(rpb.WatchRunRequest(run_id="r1"))
    assert (await read(skipping)).snapshot.last_seq == 1
    assert (await read(every)).snapshot.last_seq == 1
    for i in range(2, 6):
        await stub.AppendEvents(
            rpb.AppendEventsRequest(events=[ev("r1", "log_appended", i, lines=[str(i)])])
        )
        # Each change was published (the other watcher has it) and skipped here.
        assert (await read(every)).snapshot.last_seq == i
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_completed", 9)]))
    final = await read(skipping)
    assert (final.snapshot.last_seq, final.snapshot.status) == (6, pb.RUN_STATUS_COMPLETED)
    assert await read(skipping) is None
    # A run that has ended answers at once with its terminal snapshot.
    again = [
        m.snapshot.last_seq
        async for m in stub.WatchRun(rpb.WatchRunRequest(run_id="r1", skip_intermediate=True))
    ]
    assert again == [6]


async def test_a_watch_never_starts_from_a_cached_run_another_coordinator_changed(
    pg_cluster: Any,
) -> None:
    # WatchRun's first snapshot comes from the writer's cache when it has the run. A
    # commit by another coordinator makes that copy old: its NOTIFY drops it, so a
    # watch opened afterwards starts from the committed state, and one waiting only
    # for the end gets it at once instead of waiting on an ended run.
    if not pg_cluster.running:
        pg_cluster.start()
    url = pg_cluster.create_database("watch_cache")
    first, second = (
        Coordinator(ServerConfig(listen="127.0.0.1:0", database_url=url, shutdown_grace=2))
        for _ in range(2)
    )
    await first.start()
    await second.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as a,
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as b,
        ):
            here, there = RunServiceStub(a), RunServiceStub(b)
            await start(here)  # the first coordinator's writer now caches r1
            assert first.store is not None
            cached = first.store.peek_run("r1")
            assert cached is not None
            assert cached.last_seq == 1
            watching = here.WatchRun(rpb.WatchRunRequest(run_id="r1"))
            assert (await read(watching)).snapshot.last_seq == 1
            await there.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_started", 2)]))
            # The first coordinator heard of it (its watcher has the new state)...
            assert (await read(watching)).snapshot.last_seq == 2
            # ...and no longer trusts its copy.
            assert first.store.peek_run("r1") is None
            fresh = here.WatchRun(rpb.WatchRunRequest(run_id="r1"))
            assert (await read(fresh)).snapshot.last_seq == 2
            await there.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_completed", 3)]))
            assert (await read(watching)).snapshot.status == pb.RUN_STATUS_COMPLETED
            ended = [
                m.snapshot.status
                async for m in here.WatchRun(
                    rpb.WatchRunRequest(run_id="r1", skip_intermediate=True)
                )
            ]
            assert ended == [pb.RUN_STATUS_COMPLETED]
    finally:
        await first.stop()
        await second.stop()


async def test_a_watcher_that_reads_late_gets_increasing_snapshots_ending_at_the_last(
    stub: RunServiceAsyncStub,
) -> None:
    await start(stub)
    call = stub.WatchRun(rpb.WatchRunRequest(run_id="r1"))
    assert (await read(call)).snapshot.last_seq == 1
    for i in range(30):  # the watcher reads nothing meanwhile
        await stub.AppendEvents(
            rpb.AppendEventsRequest(events=[ev("r1", "log_appended", i, lines=[str(i)])])
        )
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_completed", 99)]))
    seqs = []
    while (message := await read(call)) is not None:
        seqs.append(message.snapshot.last_seq)
    assert seqs[-1] == 32
    assert seqs == sorted(set(seqs))


async def test_tail_logs_reads_from_a_seq_and_follows(stub: RunServiceAsyncStub) -> None:
    await start(stub)
    await stub.AppendEvents(
        rpb.AppendEventsRequest(events=[ev("r1", "log_appended", 1, lines=["a", "b", "c"])])
    )
    lines = [
        line
        async for m in stub.TailLogs(rpb.TailLogsRequest(run_id="r1", from_seq=2))
        for line in m.lines
    ]
    assert [(line.seq, line.text) for line in lines] == [(2, "b"), (3, "c")]
    call = stub.TailLogs(rpb.TailLogsRequest(run_id="r1", from_seq=4, follow=True))
    reader = asyncio.ensure_future(read(call))
    await stub.AppendEvents(
        rpb.AppendEventsRequest(events=[ev("r1", "log_appended", 2, lines=["d"])])
    )
    got = await reader
    assert [(line.seq, line.text) for line in got.lines] == [(4, "d")]
    await stub.AppendEvents(rpb.AppendEventsRequest(events=[ev("r1", "run_completed", 3)]))
    assert await read(call) is None
    code, _ = await status_of(read(stub.TailLogs(rpb.TailLogsRequest(run_id="r1", from_seq=-2))))
    assert code == Code.INVALID_ARGUMENT


async def test_watch_runs_streams_matching_changes(stub: RunServiceAsyncStub) -> None:
    await start(stub, "old")
    call = stub.WatchRuns(
        rpb.WatchRunsRequest(filter=rpb.RunFilter(workflow_name="wf"), include_existing=True)
    )
    assert (await read(call)).run.run_id == "old"
    await stub.StartRun(rpb.StartRunRequest(workflow_name="other", run_id="skip"))
    await start(stub, "new")
    assert (await read(call)).run.run_id == "new"
    call.cancel()


async def test_stop_ends_open_streams_cleanly(db_url: str) -> None:
    c = Coordinator(ServerConfig(listen="127.0.0.1:0", database_url=db_url, shutdown_grace=5))
    await c.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as channel:
        stub = RunServiceStub(channel)
        await start(stub)
        call = stub.WatchRun(rpb.WatchRunRequest(run_id="r1"))
        await read(call)
        await c.stop()
        assert await read(call) is None
        assert await call.code() == Code.OK
