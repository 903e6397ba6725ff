"""``ledgerflow run ...`` as a real subprocess against the fake coordinator.

The fake is served by the test's event loop, so the CLI is started with asyncio's
subprocess API: awaiting it keeps the loop, and with it the server, running.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2
from ledgerflow.v1 import run_service_pb2 as rs
from tests.client.builders import event, log_line, snapshot, summary
from tests.client.fake_service import HOLD, Abort, FakeCoordinator

BIN = Path(sys.executable).parent / "ledgerflow"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def objects(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


async def ledgerflow(*args: str, env: dict[str, str] | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def run(fake: FakeCoordinator, *args: str) -> Result:
    return await ledgerflow("run", *args, "--address", fake.address)


# --- list ---------------------------------------------------------------------------------


async def test_list_prints_a_table_and_passes_the_filter(fake: FakeCoordinator) -> None:
    fake.service.reply(
        "ListRuns", rs.ListRunsResponse(runs=[summary("run-1"), summary("r2", "billing")])
    )
    result = await run(
        fake,
        "list",
        "--status",
        "queued",
        "--status",
        "timed_out",
        "--workflow",
        "checkout",
        "--created-after",
        "2026-01-01T00:00:00+01:00",
    )
    assert result.code == 0, result.err
    assert result.lines == [
        "RUN ID  WORKFLOW  STATUS  CREATED               UPDATED",
        "run-1   checkout  queued  2026-01-02 03:04:05Z  2026-01-02 03:04:05Z",
        "r2      billing   queued  2026-01-02 03:04:05Z  2026-01-02 03:04:05Z",
    ]
    request = fake.service.only_request("ListRuns")
    assert isinstance(request, rs.ListRunsRequest)
    assert list(request.filter.statuses) == [
        ledger_pb2.RUN_STATUS_QUEUED,
        ledger_pb2.RUN_STATUS_TIMED_OUT,
    ]
    assert request.filter.workflow_name == "checkout"
    assert request.filter.created_after.ToJsonString() == "2025-12-31T23:00:00Z"
    assert request.page_size == 50


async def test_list_json_and_limit_across_pages(fake: FakeCoordinator) -> None:
    fake.service.reply(
        "ListRuns",
        rs.ListRunsResponse(runs=[summary("a"), summary("b")], next_page_token="p2"),
        rs.ListRunsResponse(runs=[summary("c")], next_page_token="p3"),
    )
    result = await run(fake, "list", "--json", "--limit", "3")
    assert result.code == 0, result.err
    assert [obj["runId"] for obj in result.objects] == ["a", "b", "c"]
    assert result.objects[0]["status"] == "RUN_STATUS_QUEUED"
    requests = fake.service.requests["ListRuns"]
    assert [(r.page_size, r.page_token) for r in requests] == [(3, ""), (1, "p2")]  # type: ignore[attr-defined]


async def test_list_with_no_runs(fake: FakeCoordinator) -> None:
    fake.service.reply("ListRuns", rs.ListRunsResponse())
    result = await run(fake, "list")
    assert (result.code, result.out) == (0, "no runs\n")


# --- show ---------------------------------------------------------------------------------


async def test_show_prints_fields_steps_and_the_log_tail(fake: FakeCoordinator) -> None:
    snap = snapshot(
        "r1",
        last_seq=17,
        total_log_count=40,
        active_step_id="ship",
        ordered_step_ids=["charge", "ship"],
        log_tail=[f"line {n}" for n in range(1, 31)],
    )
    snap.tags.extend(["blue"])
    snap.steps["charge"].status = ledger_pb2.STEP_STATUS_COMPLETED
    snap.steps["ship"].status = ledger_pb2.STEP_STATUS_RUNNING
    snap.steps["ship"].attempt = 2
    snap.steps["ship"].progress.completed = 3
    snap.steps["ship"].progress.total = 10
    fake.service.reply("GetRun", rs.GetRunResponse(run=snap))
    result = await run(fake, "show", "r1", "--log-lines", "2")
    assert result.code == 0, result.err
    assert result.lines == [
        "run          r1",
        "workflow     checkout",
        "status       running",
        "created      2026-01-02 03:04:05Z",
        "started      -",
        "updated      2026-01-02 03:04:05Z",
        "finished     -",
        "tags         blue",
        "active step  ship",
        "last seq     17",
        "steps (2):",
        "  STEP    STATUS",
        "  charge  completed",
        "  ship    running    attempt 2  3/10",
        "logs (last 2 of 40 lines):",
        "  line 29",
        "  line 30",
    ]
    assert fake.service.only_request("GetRun") == rs.GetRunRequest(run_id="r1")


async def test_show_a_finished_run_and_as_json(fake: FakeCoordinator) -> None:
    snap = snapshot("r1", status=ledger_pb2.RUN_STATUS_FAILED)
    snap.error.type = "ValueError"
    snap.error.message = "card declined"
    snap.result.data = b'{"refund":true}'
    fake.service.reply("GetRun", rs.GetRunResponse(run=snap), rs.GetRunResponse(run=snap))
    human = await run(fake, "show", "r1")
    assert "error     ValueError: card declined" in human.lines
    assert 'result    {"refund":true}' in human.lines
    machine = await run(fake, "show", "r1", "--json")
    (obj,) = machine.objects
    assert obj["status"] == "RUN_STATUS_FAILED"
    assert obj["error"] == {"type": "ValueError", "message": "card declined"}


async def test_show_unknown_run_exits_2_with_one_line(fake: FakeCoordinator) -> None:
    fake.service.reply("GetRun", Abort(grpc.StatusCode.NOT_FOUND, "no such run: ghost"))
    result = await run(fake, "show", "ghost")
    assert (result.code, result.out, result.err) == (2, "", "ledgerflow: run ghost not found\n")


# --- events and logs ----------------------------------------------------------------------


async def test_events_prints_one_line_per_event_across_pages(fake: FakeCoordinator) -> None:
    fake.service.reply(
        "GetEvents",
        rs.GetEventsResponse(events=[event(3), event(4, step_id="charge")], has_more=True),
        rs.GetEventsResponse(events=[event(5)]),
    )
    result = await run(fake, "events", "r1", "--after", "2")
    assert result.code == 0, result.err
    assert result.lines == [
        "3 2026-01-02 03:04:05.000Z run_started",
        "4 2026-01-02 03:04:05.000Z step_started charge",
        "5 2026-01-02 03:04:05.000Z run_started",
    ]
    cursors = [r.after_seq for r in fake.service.requests["GetEvents"]]  # type: ignore[attr-defined]
    assert cursors == [2, 4]


async def test_events_json(fake: FakeCoordinator) -> None:
    fake.service.reply("GetEvents", rs.GetEventsResponse(events=[event(1, step_id="s")]))
    result = await run(fake, "events", "r1", "--json")
    assert result.objects == [
        {
            "runId": "r1",
            "seq": "1",
            "eventTime": "2026-01-02T03:04:05Z",
            "stepStarted": {"stepId": "s"},
        }
    ]


async def test_logs_prints_seq_channel_text(fake: FakeCoordinator) -> None:
    fake.service.stream(
        "TailLogs",
        rs.TailLogsResponse(lines=[log_line(7, "hello"), log_line(8, "oops", "stderr")]),
        rs.TailLogsResponse(lines=[log_line(9, "")]),
    )
    result = await run(fake, "logs", "r1", "--from", "7", "--follow")
    assert result.code == 0, result.err
    assert result.out == "7 stdout hello\n8 stderr oops\n9 stdout \n"
    assert fake.service.only_request("TailLogs") == rs.TailLogsRequest(
        run_id="r1", from_seq=7, follow=True
    )


async def test_logs_json(fake: FakeCoordinator) -> None:
    fake.service.stream("TailLogs", rs.TailLogsResponse(lines=[log_line(1, "hi")]))
    result = await run(fake, "logs", "r1", "--json")
    assert result.objects == [{"seq": "1", "channel": "stdout", "text": "hi"}]
    assert fake.service.only_request("TailLogs") == rs.TailLogsRequest(run_id="r1")


async def test_logs_error_mid_stream_exits_2(fake: FakeCoordinator) -> None:
    fake.service.stream(
        "TailLogs",
        rs.TailLogsResponse(lines=[log_line(1, "hi")]),
        Abort(grpc.StatusCode.INTERNAL, "disk on fire"),
    )
    result = await run(fake, "logs", "r1")
    assert (result.code, result.out) == (2, "1 stdout hi\n")
    assert result.err == "ledgerflow: INTERNAL: disk on fire\n"


# --- cancel and signal --------------------------------------------------------------------


async def test_cancel_confirms_in_one_line(fake: FakeCoordinator) -> None:
    fake.service.reply(
        "CancelRun",
        rs.CancelRunResponse(seq=12),
        rs.CancelRunResponse(seq=12, already_requested=True),
    )
    first = await run(fake, "cancel", "r1", "--reason", "wrong order", "--identity", "ann")
    assert (first.code, first.out) == (0, "cancellation of run r1 requested (seq 12)\n")
    again = await run(fake, "cancel", "r1", "--json")
    assert again.objects == [{"runId": "r1", "seq": "12", "alreadyRequested": True}]
    sent, resent = fake.service.requests["CancelRun"]
    assert sent == rs.CancelRunRequest(run_id="r1", reason="wrong order", identity="ann")
    assert isinstance(resent, rs.CancelRunRequest)
    assert "@" in resent.identity  # user@host by default


async def test_cancel_a_finished_run_exits_2(fake: FakeCoordinator) -> None:
    fake.service.reply("CancelRun", Abort(grpc.StatusCode.FAILED_PRECONDITION, "run r1 has ended"))
    result = await run(fake, "cancel", "r1")
    assert (result.code, result.err) == (2, "ledgerflow: run r1 has ended\n")


async def test_signal_sends_the_payload(fake: FakeCoordinator) -> None:
    fake.service.reply("SignalRun", rs.SignalRunResponse(seq=30))
    result = await run(
        fake, "signal", "r1", "approve", "--payload", '{"by": "ann"}', "--request-id", "q"
    )
    assert (result.code, result.out) == (0, "signal approve sent to run r1 (seq 30)\n")
    request = fake.service.only_request("SignalRun")
    assert isinstance(request, rs.SignalRunRequest)
    assert (request.run_id, request.signal_name, request.request_id) == ("r1", "approve", "q")
    assert payload_value(request.payload) == {"by": "ann"}


async def test_signal_duplicate_and_invalid_argument(fake: FakeCoordinator) -> None:
    fake.service.reply(
        "SignalRun",
        rs.SignalRunResponse(seq=30, duplicate=True),
        Abort(grpc.StatusCode.INVALID_ARGUMENT, "signal_name: is required"),
    )
    dup = await run(fake, "signal", "r1", "go", "--request-id", "q")
    assert dup.out == "signal go to run r1 was already sent with request id q (seq 30)\n"
    bad = await run(fake, "signal", "r1", "")
    assert (bad.code, bad.err) == (2, "ledgerflow: signal_name: is required\n")


# --- watch --------------------------------------------------------------------------------


async def test_watch_prints_a_line_per_change_and_stops_at_the_terminal_snapshot(
    fake: FakeCoordinator,
) -> None:
    done = snapshot(status=ledger_pb2.RUN_STATUS_FAILED, last_seq=9)
    done.error.type = "ValueError"
    done.error.message = "boom"
    fake.service.stream(
        "WatchRun",
        rs.WatchRunResponse(snapshot=snapshot(last_seq=3)),
        rs.WatchRunResponse(snapshot=snapshot(last_seq=4, active_step_id="a")),
        rs.WatchRunResponse(snapshot=snapshot(last_seq=5, active_step_id="a")),  # no change
        rs.WatchRunResponse(snapshot=done),
        # A coordinator that kept the stream open would hang a CLI waiting for its end.
        HOLD,
    )
    result = await run(fake, "watch", "r1", "--after", "2")
    assert result.code == 1, result.err  # the run failed
    assert result.err == ""
    assert result.lines == [
        "2026-01-02 03:04:05Z  run  running",
        "2026-01-02 03:04:05Z  run  failed  ValueError: boom",
        "failed  ValueError: boom",
    ]
    assert fake.service.only_request("WatchRun") == rs.WatchRunRequest(run_id="r1", after_seq=2)
    await asyncio.wait_for(fake.service.cancelled.wait(), timeout=30)


async def test_watch_of_an_unknown_run_exits_2(fake: FakeCoordinator) -> None:
    fake.service.stream("WatchRun", Abort(grpc.StatusCode.NOT_FOUND, "no such run: ghost"))
    result = await run(fake, "watch", "ghost")
    assert (result.code, result.out, result.err) == (2, "", "ledgerflow: run ghost not found\n")


async def test_watch_json_prints_every_snapshot(fake: FakeCoordinator) -> None:
    fake.service.stream(
        "WatchRun",
        rs.WatchRunResponse(snapshot=snapshot(last_seq=3)),
        rs.WatchRunResponse(snapshot=snapshot(last_seq=4)),
        rs.WatchRunResponse(snapshot=snapshot(status=ledger_pb2.RUN_STATUS_COMPLETED)),
    )
    result = await run(fake, "watch", "r1", "--json")
    assert result.code == 0, result.err
    assert [obj.get("lastSeq") for obj in result.objects] == ["3", "4", None]


# --- bad input, unreachable coordinator, address from the environment ---------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events", "r1", "--after", "-1"], "argument --after: must be >= 0, got -1"),
        (["logs", "r1", "--from", "x"], "argument --from: not an integer: 'x'"),
        (["signal", "r1", "s", "--payload", "{nope"], "argument --payload: not valid JSON"),
        (["signal", "r1", "s", "--payload", "NaN"], "argument --payload: not valid JSON"),
        (["list", "--created-after", "yesterday"], "not an ISO 8601 time: 'yesterday'"),
        (["list", "--status", "sleeping"], "argument --status: invalid choice: 'sleeping'"),
    ],
)
async def test_bad_input_exits_2_with_one_line_and_calls_nothing(
    fake: FakeCoordinator, args: list[str], message: str
) -> None:
    result = await run(fake, *args)
    assert result.code == 2
    assert len(result.err.splitlines()) == 1, result.err
    assert message in result.err
    assert not any(fake.service.requests.values())


async def test_unreachable_coordinator_exits_2_naming_the_address(dead_address: str) -> None:
    result = await ledgerflow("run", "show", "r1", "--address", dead_address)
    assert result.code == 2
    assert result.err.startswith("ledgerflow: cannot reach the coordinator at ")
    assert dead_address in result.err
    assert len(result.err.splitlines()) == 1


async def test_address_comes_from_the_environment(fake: FakeCoordinator) -> None:
    fake.service.reply("GetRun", rs.GetRunResponse(run=snapshot("r1")))
    result = await ledgerflow(
        "run", "show", "r1", "--json", env={"LEDGERFLOW_ADDRESS": fake.address}
    )
    assert result.code == 0, result.err
    assert result.objects[0]["runId"] == "r1"
