"""RunService under hostile input: each refusal has the right code and field, and changes nothing.

Each case is sent as raw bytes (``request_serializer=None``) so the server does the
parsing; that is the only way to send what a typed client cannot (invalid UTF-8,
wrong wire types, corrupt framing). Before and after each case the whole store is
fingerprinted (runs, statuses, last seqs, event counts) and must not have moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.ledger import json_payload
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from tests.hostile.conftest import MAX_PAYLOAD, Refusal, call_raw, fingerprint

Code = grpc.StatusCode
INT64_MAX = 2**63 - 1
OVER = "x" * (MAX_PAYLOAD + 1)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def wire(number: int, wire_type: int, body: bytes) -> bytes:
    """One hand-encoded field: the tag, then the length for length-delimited bodies."""
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(body)) + body if wire_type == 2 else body)


def ev(run_id: str, case: str, seconds: int = 1, **fields: Any) -> pb.LedgerEvent:
    event = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    event.event_time.seconds = seconds
    payload = getattr(event, case)
    payload.CopyFrom(type(payload)(**fields))
    payload.SetInParent()
    return event


def nested_value(depth: int) -> bytes:
    """A google.protobuf.Value nested ``depth`` lists deep, encoded by hand (upb caps depth)."""
    value = wire(3, 2, b"leaf")  # string_value
    for _ in range(depth):
        value = wire(6, 2, wire(1, 2, value))  # list_value.values[0]
    return value


def append(*events: pb.LedgerEvent, batch_id: str = "") -> bytes:
    return rpb.AppendEventsRequest(batch_id=batch_id, events=events).SerializeToString()


def ser(message: Message) -> bytes:
    return message.SerializeToString()


def start(**fields: Any) -> bytes:
    return ser(rpb.StartRunRequest(**{"workflow_name": "wf", "run_id": "new", **fields}))


def patch(**fields: Any) -> bytes:
    return ser(rpb.ReportStatusRequest(patch=rpb.StatusPatch(**{"run_id": "r1", **fields})))


def _far_event() -> pb.LedgerEvent:
    event = ev("r1", "run_started")
    event.event_time.seconds = 2**40
    return event


def _huge_offset_event() -> pb.LedgerEvent:
    return ev("r1", "log_appended", lines=["a", "b"], channel_offset=INT64_MAX - 1)


def _deep_metadata(depth: int) -> bytes:
    mutation = pb.MetadataMutation(op=pb.METADATA_OP_SET, key="k").SerializeToString()
    event = ev("r1", "metadata_updated").SerializeToString()
    # LedgerEvent.metadata_updated is a oneof member; append a mutation with a deep value.
    number = pb.LedgerEvent.DESCRIPTOR.fields_by_name["metadata_updated"].number
    deep = wire(number, 2, wire(1, 2, mutation + wire(3, 2, nested_value(depth))))
    return wire(2, 2, event + deep)


def _no_payload_event() -> bytes:
    # An event whose only payload is a field number this coordinator does not know.
    envelope = pb.LedgerEvent(run_id="r1")
    set_nanos(envelope.event_time, 1)
    return wire(2, 2, envelope.SerializeToString() + wire(999, 2, b"\x08\x01"))


@dataclass(frozen=True)
class Case:
    """One hostile request and the refusal it must get."""

    method: str
    body: bytes
    code: grpc.StatusCode
    field: str  # the refusal's details start with this


BAD_UTF8 = b"r\xff\xfe"
CASES: dict[str, Case] = {
    # -- StartRun
    "start/missing-workflow": Case("StartRun", b"", Code.INVALID_ARGUMENT, "workflow_name"),
    "start/blank-workflow": Case(
        "StartRun", start(workflow_name=" \t"), Code.INVALID_ARGUMENT, "workflow_name"
    ),
    "start/long-workflow": Case(
        "StartRun", start(workflow_name="w" * 256), Code.INVALID_ARGUMENT, "workflow_name"
    ),
    "start/utf8-workflow": Case("StartRun", wire(1, 2, BAD_UTF8), Code.INVALID_ARGUMENT, "request"),
    "start/wrong-type-workflow": Case(
        "StartRun", wire(1, 0, b"\x07"), Code.INVALID_ARGUMENT, "workflow_name"
    ),
    "start/corrupt": Case("StartRun", b"\x0a\x09wf", Code.INVALID_ARGUMENT, "request"),
    "start/nul-run-id": Case("StartRun", start(run_id="a\x00b"), Code.INVALID_ARGUMENT, "run_id"),
    "start/blank-tag": Case("StartRun", start(tags=["ok", " "]), Code.INVALID_ARGUMENT, "tags[1]"),
    "start/long-key": Case(
        "StartRun", start(idempotency_key="k" * 256), Code.INVALID_ARGUMENT, "idempotency_key"
    ),
    "start/huge-version": Case(
        "StartRun", start(workflow_version=OVER), Code.RESOURCE_EXHAUSTED, "workflow_version"
    ),
    "start/not-json": Case(
        "StartRun", start(input=common_pb2.Payload(data=b"{")), Code.INVALID_ARGUMENT, "input"
    ),
    "start/utf8-json": Case(
        "StartRun", start(input=common_pb2.Payload(data=b'"\xff"')), Code.INVALID_ARGUMENT, "input"
    ),
    "start/nan-json": Case(
        "StartRun", start(input=common_pb2.Payload(data=b"NaN")), Code.INVALID_ARGUMENT, "input"
    ),
    "start/deep-json": Case(
        "StartRun",
        start(input=common_pb2.Payload(data=b"[" * 20_000 + b"]" * 20_000)),
        Code.INVALID_ARGUMENT,
        "input",
    ),
    "start/huge-input": Case(
        "StartRun", start(input=json_payload(OVER)), Code.RESOURCE_EXHAUSTED, "input"
    ),
    "start/negative-timeout": Case(
        "StartRun",
        start(execution_timeout=Duration(seconds=-5)),
        Code.INVALID_ARGUMENT,
        "execution_timeout",
    ),
    "start/zero-timeout": Case(
        "StartRun",
        start(execution_timeout=Duration(seconds=0)),
        Code.INVALID_ARGUMENT,
        "execution_timeout",
    ),
    "start/overflowing-timeout": Case(
        "StartRun",
        start(execution_timeout=Duration(seconds=2**62)),
        Code.INVALID_ARGUMENT,
        "execution_timeout",
    ),
    "start/duplicate-id": Case(
        "StartRun", start(run_id="r1", workflow_name="other"), Code.ALREADY_EXISTS, "run 'r1'"
    ),
    # -- GetRun
    "get/missing": Case("GetRun", b"", Code.INVALID_ARGUMENT, "run_id"),
    "get/utf8": Case("GetRun", wire(1, 2, BAD_UTF8), Code.INVALID_ARGUMENT, "request"),
    "get/long": Case(
        "GetRun", ser(rpb.GetRunRequest(run_id="r" * 256)), Code.INVALID_ARGUMENT, "run_id"
    ),
    "get/unknown": Case(
        "GetRun", ser(rpb.GetRunRequest(run_id="ghost")), Code.NOT_FOUND, "run 'ghost'"
    ),
    # -- ListRuns
    "list/negative-page": Case(
        "ListRuns", ser(rpb.ListRunsRequest(page_size=-1)), Code.INVALID_ARGUMENT, "page_size"
    ),
    "list/huge-page": Case(
        "ListRuns",
        ser(rpb.ListRunsRequest(page_size=2**31 - 1)),
        Code.INVALID_ARGUMENT,
        "page_size",
    ),
    "list/token-garbage": Case(
        "ListRuns", ser(rpb.ListRunsRequest(page_token="!!!")), Code.INVALID_ARGUMENT, "page_token"
    ),
    "list/token-short": Case(
        "ListRuns", ser(rpb.ListRunsRequest(page_token="abc")), Code.INVALID_ARGUMENT, "page_token"
    ),
    "list/token-unicode": Case(
        "ListRuns",
        ser(rpb.ListRunsRequest(page_token="é" * 40)),
        Code.INVALID_ARGUMENT,
        "page_token",
    ),
    "list/token-forged": Case(
        "ListRuns",
        ser(rpb.ListRunsRequest(page_token="A" * 16 + "eyJ0IjoxLCJyIjoiciIsImYiOiIifQ")),
        Code.INVALID_ARGUMENT,
        "page_token",
    ),
    "list/utf8-token": Case("ListRuns", wire(3, 2, BAD_UTF8), Code.INVALID_ARGUMENT, "request"),
    "list/unknown-status": Case(
        "ListRuns",
        ser(rpb.ListRunsRequest(filter=rpb.RunFilter(statuses=[cast(Any, 99)]))),
        Code.INVALID_ARGUMENT,
        "filter.statuses[0]",
    ),
    "list/unspecified-status": Case(
        "ListRuns",
        ser(
            rpb.ListRunsRequest(
                filter=rpb.RunFilter(statuses=[pb.RUN_STATUS_RUNNING, cast(Any, 0)])
            )
        ),
        Code.INVALID_ARGUMENT,
        "filter.statuses[1]",
    ),
    "list/far-future": Case(
        "ListRuns",
        ser(rpb.ListRunsRequest(filter=rpb.RunFilter(created_after=Timestamp(seconds=2**62)))),
        Code.INVALID_ARGUMENT,
        "filter.created_after",
    ),
    "list/negative-nanos": Case(
        "ListRuns",
        ser(
            rpb.ListRunsRequest(filter=rpb.RunFilter(created_before=Timestamp(seconds=5, nanos=-1)))
        ),
        Code.INVALID_ARGUMENT,
        "filter.created_before",
    ),
    "list/blank-workflow": Case(
        "ListRuns",
        ser(rpb.ListRunsRequest(filter=rpb.RunFilter(workflow_name=" "))),
        Code.INVALID_ARGUMENT,
        "filter.workflow_name",
    ),
    # -- CancelRun
    "cancel/missing": Case("CancelRun", b"", Code.INVALID_ARGUMENT, "run_id"),
    "cancel/unknown": Case(
        "CancelRun", ser(rpb.CancelRunRequest(run_id="ghost")), Code.NOT_FOUND, "run 'ghost'"
    ),
    "cancel/huge-reason": Case(
        "CancelRun",
        ser(rpb.CancelRunRequest(run_id="r1", reason=OVER)),
        Code.RESOURCE_EXHAUSTED,
        "reason",
    ),
    "cancel/huge-identity": Case(
        "CancelRun",
        ser(rpb.CancelRunRequest(run_id="r1", identity=OVER)),
        Code.RESOURCE_EXHAUSTED,
        "identity",
    ),
    "cancel/utf8-reason": Case(
        "CancelRun", wire(1, 2, b"r1") + wire(2, 2, BAD_UTF8), Code.INVALID_ARGUMENT, "request"
    ),
    # -- SignalRun
    "signal/missing-name": Case(
        "SignalRun", ser(rpb.SignalRunRequest(run_id="r1")), Code.INVALID_ARGUMENT, "signal_name"
    ),
    "signal/nul-name": Case(
        "SignalRun",
        ser(rpb.SignalRunRequest(run_id="r1", signal_name="a\x00")),
        Code.INVALID_ARGUMENT,
        "signal_name",
    ),
    "signal/unknown-run": Case(
        "SignalRun",
        ser(rpb.SignalRunRequest(run_id="ghost", signal_name="s")),
        Code.NOT_FOUND,
        "run 'ghost'",
    ),
    "signal/finished-run": Case(
        "SignalRun",
        ser(rpb.SignalRunRequest(run_id="done", signal_name="s")),
        Code.FAILED_PRECONDITION,
        "cannot signal run 'done'",
    ),
    "signal/not-json": Case(
        "SignalRun",
        ser(
            rpb.SignalRunRequest(
                run_id="r1", signal_name="s", payload=common_pb2.Payload(data=b"}")
            )
        ),
        Code.INVALID_ARGUMENT,
        "payload",
    ),
    "signal/huge-payload": Case(
        "SignalRun",
        ser(rpb.SignalRunRequest(run_id="r1", signal_name="s", payload=json_payload(OVER))),
        Code.RESOURCE_EXHAUSTED,
        "payload",
    ),
    "signal/huge-identity": Case(
        "SignalRun",
        ser(rpb.SignalRunRequest(run_id="r1", signal_name="s", identity=OVER)),
        Code.RESOURCE_EXHAUSTED,
        "identity",
    ),
    "signal/blank-request-id": Case(
        "SignalRun",
        ser(rpb.SignalRunRequest(run_id="r1", signal_name="s", request_id=" ")),
        Code.INVALID_ARGUMENT,
        "request_id",
    ),
    # -- GetEvents
    "events/negative-after": Case(
        "GetEvents",
        ser(rpb.GetEventsRequest(run_id="r1", after_seq=-1)),
        Code.INVALID_ARGUMENT,
        "after_seq",
    ),
    "events/negative-page": Case(
        "GetEvents",
        ser(rpb.GetEventsRequest(run_id="r1", page_size=-7)),
        Code.INVALID_ARGUMENT,
        "page_size",
    ),
    "events/huge-page": Case(
        "GetEvents",
        ser(rpb.GetEventsRequest(run_id="r1", page_size=10**6)),
        Code.INVALID_ARGUMENT,
        "page_size",
    ),
    "events/unknown": Case(
        "GetEvents", ser(rpb.GetEventsRequest(run_id="ghost")), Code.NOT_FOUND, "run 'ghost'"
    ),
    # -- streams
    "watch/negative-after": Case(
        "WatchRun",
        ser(rpb.WatchRunRequest(run_id="r1", after_seq=-1)),
        Code.INVALID_ARGUMENT,
        "after_seq",
    ),
    "watch/unknown": Case(
        "WatchRun", ser(rpb.WatchRunRequest(run_id="ghost")), Code.NOT_FOUND, "run 'ghost'"
    ),
    "watch/utf8": Case("WatchRun", wire(1, 2, BAD_UTF8), Code.INVALID_ARGUMENT, "request"),
    "watch/missing": Case("WatchRun", b"", Code.INVALID_ARGUMENT, "run_id"),
    "watch-runs/unknown-status": Case(
        "WatchRuns",
        ser(rpb.WatchRunsRequest(filter=rpb.RunFilter(statuses=[cast(Any, 42)]))),
        Code.INVALID_ARGUMENT,
        "filter.statuses[0]",
    ),
    "watch-runs/far-past": Case(
        "WatchRuns",
        ser(rpb.WatchRunsRequest(filter=rpb.RunFilter(created_before=Timestamp(seconds=-(2**62))))),
        Code.INVALID_ARGUMENT,
        "filter.created_before",
    ),
    "tail/negative-from": Case(
        "TailLogs",
        ser(rpb.TailLogsRequest(run_id="r1", from_seq=-1)),
        Code.INVALID_ARGUMENT,
        "from_seq",
    ),
    "tail/unknown": Case(
        "TailLogs", ser(rpb.TailLogsRequest(run_id="ghost")), Code.NOT_FOUND, "run 'ghost'"
    ),
    "tail/utf8": Case("TailLogs", wire(1, 2, BAD_UTF8), Code.INVALID_ARGUMENT, "request"),
    # -- AppendEvents
    "append/empty": Case("AppendEvents", b"", Code.INVALID_ARGUMENT, "events"),
    "append/no-time": Case(
        "AppendEvents",
        append(pb.LedgerEvent(run_id="r1", run_started=pb.RunStarted())),
        Code.INVALID_ARGUMENT,
        "events[0].event_time",
    ),
    "append/unknown-payload": Case(
        "AppendEvents", _no_payload_event(), Code.INVALID_ARGUMENT, "events[0].payload"
    ),
    "append/unknown-enum": Case(
        "AppendEvents",
        append(
            pb.LedgerEvent(
                run_id="r1",
                source=cast(Any, 77),
                event_time=Timestamp(seconds=1),
                run_started=pb.RunStarted(),
            )
        ),
        Code.INVALID_ARGUMENT,
        "events[0].source",
    ),
    "append/seq-set": Case(
        "AppendEvents",
        append(
            pb.LedgerEvent(
                run_id="r1", seq=9, event_time=Timestamp(seconds=1), run_started=pb.RunStarted()
            )
        ),
        Code.INVALID_ARGUMENT,
        "events[0].seq",
    ),
    "append/negative-seq": Case(
        "AppendEvents",
        append(
            pb.LedgerEvent(
                run_id="r1", seq=-9, event_time=Timestamp(seconds=1), run_started=pb.RunStarted()
            )
        ),
        Code.INVALID_ARGUMENT,
        "events[0].seq",
    ),
    "append/far-future": Case(
        "AppendEvents", append(_far_event()), Code.INVALID_ARGUMENT, "events[0].event_time"
    ),
    "append/negative-attempt": Case(
        "AppendEvents",
        append(ev("r1", "step_started", step_id="s", attempt=-1)),
        Code.INVALID_ARGUMENT,
        "events[0].step_started.attempt",
    ),
    "append/negative-offset": Case(
        "AppendEvents",
        append(ev("r1", "log_appended", lines=["a"], channel_offset=-1)),
        Code.INVALID_ARGUMENT,
        "events[0].log_appended.channel_offset",
    ),
    "append/overflowing-offset": Case(
        "AppendEvents",
        append(_huge_offset_event()),
        Code.INVALID_ARGUMENT,
        "events[0].log_appended.channel_offset",
    ),
    "append/huge-event": Case(
        "AppendEvents",
        append(ev("r1", "log_appended", lines=[OVER])),
        Code.RESOURCE_EXHAUSTED,
        "events[0]",
    ),
    "append/deep-value": Case(
        "AppendEvents", _deep_metadata(150), Code.INVALID_ARGUMENT, "request"
    ),
    "append/nul-step": Case(
        "AppendEvents",
        append(ev("r1", "step_started", step_id="\x00")),
        Code.INVALID_ARGUMENT,
        "events[0].step_started.step_id",
    ),
    "append/nul-line": Case(
        "AppendEvents",
        append(ev("r1", "log_appended", lines=["ok", "a\x00b"])),
        Code.INVALID_ARGUMENT,
        "events[0].log_appended.lines[1]",
    ),
    "append/utf8-run": Case(
        "AppendEvents", wire(2, 2, wire(1, 2, BAD_UTF8)), Code.INVALID_ARGUMENT, "request"
    ),
    "append/unknown-run": Case(
        "AppendEvents", append(ev("ghost", "run_started")), Code.NOT_FOUND, "run 'ghost'"
    ),
    "append/duplicate-run": Case(
        "AppendEvents",
        append(ev("r1", "run_created", workflow_name="wf")),
        Code.ALREADY_EXISTS,
        "run 'r1'",
    ),
    "append/blank-batch-id": Case(
        "AppendEvents",
        append(ev("r1", "run_started"), batch_id=" "),
        Code.INVALID_ARGUMENT,
        "batch_id",
    ),
    "append/mixed-good-and-bad": Case(
        "AppendEvents",
        append(ev("r1", "run_started"), ev("r1", "step_started", step_id="")),
        Code.INVALID_ARGUMENT,
        "events[1].step_started.step_id",
    ),
    # -- ReportStatus
    "report/missing-run": Case("ReportStatus", b"", Code.INVALID_ARGUMENT, "patch.run_id"),
    "report/negative-offset": Case(
        "ReportStatus",
        patch(live_logs=["a"], live_logs_channel_offset=-1),
        Code.INVALID_ARGUMENT,
        "patch.live_logs_channel_offset",
    ),
    "report/overflowing-offset": Case(
        "ReportStatus",
        patch(live_logs=["a", "b"], live_logs_channel_offset=INT64_MAX),
        Code.INVALID_ARGUMENT,
        "patch.live_logs_channel_offset",
    ),
    "report/far-future": Case(
        "ReportStatus",
        patch(status="running", last_checkpoint_time=Timestamp(seconds=2**62)),
        Code.INVALID_ARGUMENT,
        "patch.last_checkpoint_time",
    ),
    "report/nul-line": Case(
        "ReportStatus", patch(live_logs=["\x00"]), Code.INVALID_ARGUMENT, "patch.live_logs[0]"
    ),
    "report/huge-result": Case(
        "ReportStatus", patch(result=json_payload(OVER)), Code.RESOURCE_EXHAUSTED, "patch.result"
    ),
    "report/huge-logs": Case(
        "ReportStatus", patch(live_logs=[OVER]), Code.RESOURCE_EXHAUSTED, "patch"
    ),
    "report/utf8-status": Case(
        "ReportStatus",
        wire(1, 2, wire(1, 2, b"r1") + wire(3, 2, BAD_UTF8)),
        Code.INVALID_ARGUMENT,
        "request",
    ),
}


@pytest.fixture
async def seeded(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """Runs to aim at: ``r1`` (running, with a log line and a signal) and ``done`` (completed)."""
    stub = RunServiceStub(channel)
    for run_id in ("r1", "done"):
        await stub.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id=run_id))
    await stub.AppendEvents(
        rpb.AppendEventsRequest(
            events=[
                ev("r1", "run_started"),
                ev("r1", "log_appended", lines=["hello"], channel_offset=0),
                ev("done", "run_started"),
                ev("done", "run_completed", result=json_payload(1)),
            ]
        )
    )
    await stub.SignalRun(rpb.SignalRunRequest(run_id="r1", signal_name="s", request_id="q1"))
    return channel


async def test_every_hostile_request_is_refused_by_code_and_field_without_change(
    seeded: grpc.aio.Channel,
) -> None:
    # One coordinator for the whole matrix (per database): a case per server would be slow.
    before = await fingerprint(seeded)
    wrong: list[str] = []
    for name, case in CASES.items():
        got = await call_raw(seeded, case.method, case.body)
        if not isinstance(got, Refusal):
            wrong.append(f"{name}: accepted")
        elif got.code != case.code or not got.details.startswith(case.field):
            wrong.append(f"{name}: {got.code.name} {got.details[:200]!r}")
        after = await fingerprint(seeded)
        if after != before:
            wrong.append(f"{name}: changed the store {before} -> {after}")
            before = after
    assert not wrong, "\n".join(wrong)


async def test_a_page_token_replayed_with_another_filter_is_refused(
    seeded: grpc.aio.Channel,
) -> None:
    stub = RunServiceStub(seeded)
    page = await stub.ListRuns(rpb.ListRunsRequest(page_size=1))
    assert page.next_page_token
    other = rpb.ListRunsRequest(
        page_size=1, page_token=page.next_page_token, filter=rpb.RunFilter(workflow_name="wf")
    )
    got = await call_raw(seeded, "ListRuns", other.SerializeToString())
    assert isinstance(got, Refusal)
    assert (got.code, got.details) == (
        Code.INVALID_ARGUMENT,
        "page_token: was issued for a different filter",
    )
    # Flipping any character of a real token breaks its signature.
    token = page.next_page_token
    for i in range(0, len(token), 7):
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        got = await call_raw(
            seeded, "ListRuns", ser(rpb.ListRunsRequest(page_size=1, page_token=flipped))
        )
        assert isinstance(got, Refusal), flipped
        assert got.code == Code.INVALID_ARGUMENT
        assert got.details.startswith("page_token")


async def test_unknown_fields_and_duplicate_requests_are_harmless(
    seeded: grpc.aio.Channel,
) -> None:
    stub = RunServiceStub(seeded)
    # Unknown fields are skipped (proto3), not an error: newer clients keep working.
    got = await call_raw(
        seeded, "GetRun", ser(rpb.GetRunRequest(run_id="r1")) + wire(99, 2, b"future")
    )
    assert isinstance(got, bytes)
    before = await fingerprint(seeded)
    # A resent signal (same request_id) and a resent batch (same batch_id) append nothing.
    again = await stub.SignalRun(
        rpb.SignalRunRequest(run_id="r1", signal_name="s", request_id="q1")
    )
    assert again.duplicate
    assert await fingerprint(seeded) == before
    first = await stub.AppendEvents(
        rpb.AppendEventsRequest(batch_id="b1", events=[ev("r1", "step_started", step_id="a")])
    )
    middle = await fingerprint(seeded)
    second = await stub.AppendEvents(
        rpb.AppendEventsRequest(batch_id="b1", events=[ev("r1", "step_started", step_id="a")])
    )
    assert (first.duplicate, second.duplicate) == (False, True)
    assert await fingerprint(seeded) == middle
