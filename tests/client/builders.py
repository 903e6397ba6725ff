"""Small message builders shared by the client and CLI tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from ledgerflow.ledger import json_payload
from ledgerflow.v1 import common_pb2, ledger_pb2, run_service_pb2

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def ts(when: datetime = T0) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def snapshot(
    run_id: str = "r1",
    status: ledger_pb2.RunStatus.ValueType = ledger_pb2.RUN_STATUS_RUNNING,
    **fields: object,
) -> ledger_pb2.RunSnapshot:
    snap = ledger_pb2.RunSnapshot(run_id=run_id, status=status, workflow_name="checkout")
    snap.create_time.CopyFrom(ts())
    snap.update_time.CopyFrom(ts())
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(snap, name).extend(value)
        else:
            setattr(snap, name, value)
    return snap


def summary(run_id: str, workflow: str = "checkout") -> run_service_pb2.RunSummary:
    run = run_service_pb2.RunSummary(
        run_id=run_id, workflow_name=workflow, status=ledger_pb2.RUN_STATUS_QUEUED
    )
    run.create_time.CopyFrom(ts())
    run.update_time.CopyFrom(ts())
    return run


def event(seq: int, run_id: str = "r1", step_id: str = "") -> ledger_pb2.LedgerEvent:
    ev = ledger_pb2.LedgerEvent(run_id=run_id, seq=seq)
    ev.event_time.CopyFrom(ts())
    if step_id:
        ev.step_started.step_id = step_id
    else:
        ev.run_started.SetInParent()
    return ev


def log_line(seq: int, text: str, channel: str = "stdout") -> ledger_pb2.LogLine:
    return ledger_pb2.LogLine(seq=seq, channel=channel, text=text)


def produced(run_id: str, case: str, **fields: Any) -> ledger_pb2.LedgerEvent:
    """A producer's event for AppendEvents: ``case`` is the payload, seq left to the coordinator."""
    ev = ledger_pb2.LedgerEvent(run_id=run_id, source=ledger_pb2.EVENT_SOURCE_WORKER)
    ev.event_time.CopyFrom(ts())
    body = getattr(ev, case)
    body.CopyFrom(type(body)(**fields))
    body.SetInParent()
    return ev


def ended(
    run_id: str, status: str, result: object = None, *, error_type: str = "", message: str = ""
) -> ledger_pb2.LedgerEvent:
    """The terminal event a worker (or operator) appends: status ``completed``, ``failed``...

    ``result`` is a completed run's output (JSON); ``error_type`` and ``message`` make
    the ErrorInfo (``message`` is the reason of ``terminated``).
    """
    if status == "completed":
        return produced(run_id, "run_completed", result=json_payload(result))
    if status == "terminated":
        return produced(run_id, "run_terminated", reason=message)
    error = common_pb2.ErrorInfo(type=error_type, message=message)
    return produced(run_id, f"run_{status}", error=error)
