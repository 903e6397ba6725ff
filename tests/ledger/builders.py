"""Terse builders for ledger events in tests."""

from __future__ import annotations

from typing import Any

from ledgerflow.ledger._time import NANOS_PER_MILLI, set_nanos, to_nanos
from ledgerflow.v1 import common_pb2
from ledgerflow.v1 import ledger_pb2 as pb


def ev(case: str, t: int = 0, run_id: str = "r", seq: int = 0, **fields: Any) -> pb.LedgerEvent:
    """Build an event of type ``case`` at ``t`` epoch milliseconds with payload ``fields``."""
    event = pb.LedgerEvent(run_id=run_id, seq=seq, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(event.event_time, t * NANOS_PER_MILLI)
    payload = getattr(event, case)
    payload.CopyFrom(type(payload)(**fields))
    payload.SetInParent()
    return event


def err(message: str) -> common_pb2.ErrorInfo:
    """Build an ErrorInfo."""
    return common_pb2.ErrorInfo(message=message)


def ms(owner: Any, name: str) -> int | None:
    """Read a Timestamp field of ``owner`` as epoch milliseconds (None when unset)."""
    if not owner.HasField(name):
        return None
    return to_nanos(getattr(owner, name)) // NANOS_PER_MILLI


def ts(t: int) -> Any:
    """Build a Timestamp at ``t`` epoch milliseconds."""
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    set_nanos(out, t * NANOS_PER_MILLI)
    return out
