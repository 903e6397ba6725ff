"""Event validation: malformed events are refused with the offending field named."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Value

from ledgerflow.errors import InvalidEventError, LedgerflowError
from ledgerflow.ledger import validate_event
from ledgerflow.v1 import ledger_pb2 as pb
from tests.ledger.builders import ev, ts


def field_of(event: pb.LedgerEvent) -> str:
    with pytest.raises(InvalidEventError) as info:
        validate_event(event)
    assert isinstance(info.value, LedgerflowError)
    return info.value.field


def test_a_well_formed_event_passes() -> None:
    validate_event(ev("step_started", 1, step_id="a", attempt=1))


def test_run_id_must_be_present_and_bounded() -> None:
    assert field_of(ev("run_started", 1, run_id="")) == "run_id"
    assert field_of(ev("run_started", 1, run_id="  ")) == "run_id"
    assert field_of(ev("run_started", 1, run_id="x" * 256)) == "run_id"


def test_payload_and_time_are_required() -> None:
    assert field_of(pb.LedgerEvent(run_id="r", event_time=ts(1))) == "payload"
    event = ev("run_started", 1)
    event.ClearField("event_time")
    assert field_of(event) == "event_time"


def test_step_events_need_a_step_id() -> None:
    assert field_of(ev("step_completed", 1)) == "step_completed.step_id"
    assert field_of(ev("waitpoint_resolved", 1)) == "waitpoint_resolved.waitpoint_id"
    assert field_of(ev("signal_received", 1)) == "signal_received.name"


def test_unknown_enum_values_are_refused_at_any_depth() -> None:
    event = ev("run_started", 1)
    event.source = 99  # type: ignore[assignment]
    assert field_of(event) == "source"
    nested = ev("step_progress", 1, step_id="a")
    nested.step_progress.status = 42  # type: ignore[assignment]
    assert field_of(nested) == "step_progress.status"


def test_out_of_range_times_are_refused() -> None:
    event = ev("run_started", 1)
    event.event_time.seconds = 253_402_300_800
    assert field_of(event) == "event_time"


def test_log_and_metadata_specifics() -> None:
    assert (
        field_of(ev("log_appended", 1, lines=["a"], channel_offset=-1))
        == "log_appended.channel_offset"
    )
    assert field_of(ev("log_appended", 1, lines=["a"], first_seq=0)) == "log_appended.first_seq"
    bad = ev(
        "metadata_updated", 1, mutations=[pb.MetadataMutation(key="k", value=Value(number_value=1))]
    )
    assert field_of(bad) == "metadata_updated.mutations[0].op"
    assert field_of(ev("step_started", 1, step_id="a", attempt=-1)) == "step_started.attempt"
