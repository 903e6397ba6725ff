"""Small event builders for workflow tests."""

from __future__ import annotations

from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb


def log_event(line: str, run_id: str = "run-1") -> pb.LedgerEvent:
    """A one-line non-positional log_appended event."""
    event = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(event.event_time, 1)
    event.log_appended.lines.append(line)
    return event
