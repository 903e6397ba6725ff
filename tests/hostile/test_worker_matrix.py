"""WorkerService.Connect under hostile input: bad hellos end the stream with INVALID_ARGUMENT;
forged epochs, unknown tasks and malformed batches get ``task_rejected`` and change nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.ledger import json_payload
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1 import step_pb2, workflow_pb2
from ledgerflow.v1 import worker_service_pb2 as wpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub
from ledgerflow.v1.worker_service_pb2_grpc import WorkerServiceStub
from tests.hostile.conftest import MAX_PAYLOAD, fingerprint
from tests.hostile.test_run_service_matrix import ev

Code = grpc.StatusCode
Reason = wpb.TaskRejectReason


def hello(**fields: Any) -> wpb.ConnectRequest:
    base: dict[str, Any] = {
        "worker_id": "w1",
        "workflows": [wpb.WorkflowRegistration(name="wf")],
        "max_concurrent_tasks": 1,
    }
    return wpb.ConnectRequest(hello=wpb.WorkerHello(**{**base, **fields}))


BAD_HELLOS: dict[str, tuple[wpb.ConnectRequest, str]] = {
    "not-hello-first": (wpb.ConnectRequest(heartbeat=wpb.Heartbeat()), "hello"),
    "empty-message": (wpb.ConnectRequest(), "hello"),
    "missing-worker-id": (hello(worker_id=""), "hello.worker_id"),
    "nul-worker-id": (hello(worker_id="w\x00"), "hello.worker_id"),
    "long-worker-id": (hello(worker_id="w" * 256), "hello.worker_id"),
    "no-workflows": (hello(workflows=[]), "hello.workflows"),
    "blank-workflow": (
        hello(workflows=[wpb.WorkflowRegistration(name=" ")]),
        "hello.workflows[0].name",
    ),
    "blank-step-kind": (hello(step_kinds=["ok", ""]), "hello.step_kinds[1]"),
    "zero-capacity": (hello(max_concurrent_tasks=0), "hello.max_concurrent_tasks"),
    "negative-capacity": (hello(max_concurrent_tasks=-5), "hello.max_concurrent_tasks"),
}


@pytest.mark.parametrize("name", sorted(BAD_HELLOS))
async def test_a_bad_hello_ends_the_stream_with_invalid_argument(
    channel: grpc.aio.Channel, name: str
) -> None:
    request, field = BAD_HELLOS[name]
    call: Any = WorkerServiceStub(channel).Connect()
    await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field)


# hello.worker_id = invalid UTF-8: the frame cannot be parsed as a ConnectRequest.
UNDECODABLE = b"\x0a\x03\x0a\x01\xff"


def raw_connect(channel: grpc.aio.Channel) -> Any:
    """A Connect stream whose frames are sent as given bytes (the server parses them)."""
    return channel.stream_stream("/ledgerflow.v1.WorkerService/Connect", request_serializer=None)()


def assert_unparseable(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == Code.INVALID_ARGUMENT, err
    details = err.details() or ""
    assert details.startswith("request: cannot be parsed"), details
    assert "ledgerflow.v1.ConnectRequest" in details, details


async def test_an_undecodable_first_message_is_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    stream = raw_connect(channel)
    await stream.write(UNDECODABLE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert_unparseable(info.value)
    # The coordinator still serves.
    await RunServiceStub(channel).StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="x"))


async def test_an_undecodable_message_mid_session_is_invalid_argument_and_changes_nothing(
    channel: grpc.aio.Channel,
) -> None:
    runs = RunServiceStub(channel)
    stream = raw_connect(channel)
    await stream.write(hello().SerializeToString())
    welcome = wpb.ConnectResponse.FromString(await stream.read())
    assert welcome.HasField("welcome")
    await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
    task = wpb.ConnectResponse.FromString(await stream.read()).workflow_task
    before = await fingerprint(channel)
    # A garbage frame where a batch for the task could have been.
    await stream.write(UNDECODABLE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert_unparseable(info.value)
    assert await fingerprint(channel) == before
    # The session's lease outlives the stream, as after any break: the worker may
    # reconnect and claim the task.
    again = Worker(channel)
    held = [wpb.HeldTask(task_id=task.task_id, lease_epoch=task.lease_epoch)]
    await again.call.write(hello(held_tasks=held))
    await again.read("welcome")
    await again.send(
        event_batch=wpb.EventBatch(
            task_id=task.task_id,
            lease_epoch=task.lease_epoch,
            batch_no=1,
            events=[ev("", "step_started", step_id="s")],
        )
    )
    assert (await again.read("event_batch_ack")).committed_seq == before[0][2] + 1
    again.call.cancel()


class Worker:
    """A hand-driven Connect stream."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call: Any = WorkerServiceStub(channel).Connect()

    async def send(self, **fields: Any) -> None:
        await self.call.write(wpb.ConnectRequest(**fields))

    async def read(self, case: str) -> Any:
        message = await self.call.read()
        assert message is not grpc.aio.EOF, f"stream ended waiting for {case}"
        assert message.WhichOneof("message") == case, message
        return getattr(message, case)


async def test_forged_epochs_unknown_tasks_and_bad_batches_are_rejected_without_change(
    channel: grpc.aio.Channel,
) -> None:
    runs = RunServiceStub(channel)
    worker = Worker(channel)
    await worker.call.write(hello(max_concurrent_tasks=2))
    await worker.read("welcome")
    await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
    task = await worker.read("workflow_task")
    tid, epoch = task.task_id, task.lease_epoch
    before = await fingerprint(channel)

    def batch(lease: int, *events: Any, task_id: str = tid, no: int = 1) -> dict[str, Any]:
        return {
            "event_batch": wpb.EventBatch(
                task_id=task_id, lease_epoch=lease, batch_no=no, events=list(events)
            )
        }

    step = ev("", "step_started", step_id="s")
    bad_source = ev("", "step_started", step_id="s")
    bad_source.source = 99  # type: ignore[assignment]
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("batch/forged-epoch", batch(epoch + 1, step), Reason.TASK_REJECT_REASON_STALE_LEASE, ""),
        ("batch/old-epoch", batch(epoch - 1, step), Reason.TASK_REJECT_REASON_STALE_LEASE, ""),
        ("batch/negative-epoch", batch(-(2**63), step), Reason.TASK_REJECT_REASON_STALE_LEASE, ""),
        (
            "batch/unknown-task",
            batch(epoch, step, task_id="nope"),
            Reason.TASK_REJECT_REASON_STALE_LEASE,
            "",
        ),
        ("batch/empty", batch(epoch), Reason.TASK_REJECT_REASON_INVALID, "events"),
        (
            "batch/no-payload",
            batch(epoch, pb.LedgerEvent(event_time=Timestamp(seconds=1))),
            Reason.TASK_REJECT_REASON_INVALID,
            "events[0].payload",
        ),
        (
            "batch/unknown-enum",
            batch(epoch, bad_source),
            Reason.TASK_REJECT_REASON_INVALID,
            "events[0].source",
        ),
        (
            "batch/nul-step",
            batch(epoch, ev("", "step_started", step_id="\x00")),
            Reason.TASK_REJECT_REASON_INVALID,
            "events[0].step_started.step_id",
        ),
        (
            "batch/huge",
            batch(epoch, ev("", "log_appended", lines=["x" * (MAX_PAYLOAD + 1)])),
            Reason.TASK_REJECT_REASON_TOO_LARGE,
            "events[0]",
        ),
        (
            "batch/other-run",
            batch(epoch, ev("other", "step_started", step_id="s")),
            Reason.TASK_REJECT_REASON_INVALID,
            "",
        ),
        (
            "batch/overflow-offset",
            batch(epoch, ev("", "log_appended", lines=["a"], channel_offset=2**63 - 1)),
            Reason.TASK_REJECT_REASON_INVALID,
            "events[0].log_appended.channel_offset",
        ),
        (
            "result/forged-epoch",
            {
                "workflow_result": workflow_pb2.WorkflowTaskResult(
                    task_id=tid,
                    lease_epoch=epoch + 7,
                    run_id="r1",
                    outcome=workflow_pb2.WORKFLOW_OUTCOME_COMPLETED,
                    output=json_payload(1),
                )
            },
            Reason.TASK_REJECT_REASON_STALE_LEASE,
            "",
        ),
        (
            "result/unknown-task",
            {
                "workflow_result": workflow_pb2.WorkflowTaskResult(
                    task_id="nope",
                    lease_epoch=1,
                    run_id="r1",
                    outcome=workflow_pb2.WORKFLOW_OUTCOME_COMPLETED,
                )
            },
            Reason.TASK_REJECT_REASON_UNKNOWN_TASK,
            "",
        ),
        (
            "step-result/unknown-task",
            {"step_result": step_pb2.StepResult(task_id="nope", lease_epoch=1)},
            Reason.TASK_REJECT_REASON_UNKNOWN_TASK,
            "",
        ),
        (
            "heartbeat/forged-epoch",
            {
                "heartbeat": wpb.Heartbeat(
                    tasks=[wpb.TaskHeartbeat(task_id=tid, lease_epoch=epoch + 3)]
                )
            },
            Reason.TASK_REJECT_REASON_STALE_LEASE,
            "",
        ),
    ]
    wrong: list[str] = []
    for name, message, reason, field in cases:
        await worker.send(**message)
        rejected = await worker.read("task_rejected")
        if name.startswith("heartbeat/"):
            await worker.read("heartbeat_ack")
        if rejected.reason != reason or not rejected.message.startswith(field):
            wrong.append(f"{name}: {Reason.Name(rejected.reason)} {rejected.message[:200]!r}")
        if await fingerprint(channel) != before:
            wrong.append(f"{name}: changed the store")
            before = await fingerprint(channel)
    # A forged release is ignored; the real holder still holds the task afterwards.
    await worker.send(release=wpb.TaskRelease(task_id=tid, lease_epoch=epoch + 1))
    await worker.send(
        heartbeat=wpb.Heartbeat(tasks=[wpb.TaskHeartbeat(task_id=tid, lease_epoch=epoch)])
    )
    ack = await worker.read("heartbeat_ack")
    assert [(lease.task_id, lease.lease_epoch) for lease in ack.leases] == [(tid, epoch)]
    assert await fingerprint(channel) == before
    assert not wrong, "\n".join(wrong)
    # The genuine holder is still served after all of that.
    await worker.send(**batch(epoch, step))
    assert (await worker.read("event_batch_ack")).committed_seq == before[0][2] + 1
    worker.call.cancel()


async def test_a_held_task_claimed_with_a_forged_epoch_is_rejected(
    channel: grpc.aio.Channel,
) -> None:
    runs = RunServiceStub(channel)
    first = Worker(channel)
    await first.call.write(hello())
    await first.read("welcome")
    await runs.StartRun(rpb.StartRunRequest(workflow_name="wf", run_id="r1"))
    task = await first.read("workflow_task")
    before = await fingerprint(channel)
    thief = Worker(channel)
    forged = [
        wpb.HeldTask(task_id=task.task_id, lease_epoch=task.lease_epoch + 1),
        wpb.HeldTask(task_id="nope", lease_epoch=1),
    ]
    await thief.call.write(hello(worker_id="w2", held_tasks=forged))
    await thief.read("welcome")
    reasons = {(await thief.read("task_rejected")).reason for _ in forged}
    assert reasons == {
        Reason.TASK_REJECT_REASON_STALE_LEASE,
        Reason.TASK_REJECT_REASON_UNKNOWN_TASK,
    }
    assert await fingerprint(channel) == before
    first.call.cancel()
    thief.call.cancel()
