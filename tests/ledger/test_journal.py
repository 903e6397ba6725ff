"""The journal projection: what replay needs from the ledger."""

from __future__ import annotations

from google.protobuf.struct_pb2 import Value

from ledgerflow.ledger import empty_journal, json_payload, payload_value, project_journal_events
from ledgerflow.v1 import journal_pb2 as jpb
from ledgerflow.v1 import ledger_pb2 as pb
from tests.ledger.builders import err, ev, ms, ts


def journal(*events: pb.LedgerEvent) -> jpb.JournalSlice:
    return project_journal_events(empty_journal(), events)


def test_finished_step_keeps_ordinal_name_attempt_output_and_times() -> None:
    j = journal(
        ev("step_started", 10, seq=1, step_id="charge", name="charge", ordinal=1, attempt=1),
        ev(
            "step_completed", 15, seq=2, step_id="charge", attempt=1, output=json_payload({"id": 7})
        ),
    )
    entry = j.step_results["charge"]
    assert (entry.name, entry.ordinal, entry.attempt) == ("charge", 1, 1)
    assert entry.status == jpb.STEP_RESULT_STATUS_COMPLETED
    assert payload_value(entry.output) == {"id": 7}
    assert (ms(entry, "start_time"), ms(entry, "finish_time")) == (10, 15)
    assert "charge" not in j.pending_steps
    assert j.last_seq == 2


def test_failed_step_records_its_error_and_retries_stay_pending() -> None:
    j = journal(
        ev("step_started", 1, step_id="a#2", name="a", ordinal=3, attempt=1),
        ev(
            "step_failed",
            2,
            step_id="a#2",
            attempt=1,
            will_retry=True,
            error=err("flaky"),
            next_attempt_time=ts(9),
        ),
    )
    pending = j.pending_steps["a#2"]
    assert pending.status == pb.STEP_STATUS_RETRYING
    assert pending.attempt == 1
    assert pending.last_error.message == "flaky"
    assert ms(pending, "next_attempt_time") == 9
    assert "a#2" not in j.step_results
    j = project_journal_events(
        j,
        [
            ev("step_started", 9, step_id="a#2", attempt=2),
            ev("step_failed", 10, step_id="a#2", attempt=2, error=err("dead")),
        ],
    )
    entry = j.step_results["a#2"]
    assert entry.status == jpb.STEP_RESULT_STATUS_FAILED
    assert (entry.name, entry.ordinal, entry.attempt) == ("a", 3, 2)
    assert entry.error.message == "dead"
    assert ms(entry, "start_time") == 1


def test_a_recorded_result_is_immutable() -> None:
    j = journal(
        ev("step_completed", 1, step_id="a", output=json_payload(1)),
        ev("step_completed", 2, step_id="a", output=json_payload(2)),
        ev("step_failed", 3, step_id="a", error=err("late")),
        ev("step_started", 4, step_id="a"),
    )
    assert payload_value(j.step_results["a"].output) == 1
    assert j.step_results["a"].status == jpb.STEP_RESULT_STATUS_COMPLETED
    assert "a" not in j.pending_steps


def test_scheduled_step_is_pending_with_its_worker_kind() -> None:
    j = journal(
        ev("step_scheduled", 1, step_id="s", name="s", ordinal=2, worker_kind="ts", attempt=1)
    )
    assert j.pending_steps["s"].status == pb.STEP_STATUS_SCHEDULED
    assert j.pending_steps["s"].worker_kind == "ts"


def test_signals_wait_in_the_inbox_until_a_resolution_consumes_them() -> None:
    j = journal(
        ev("signal_received", 1, seq=4, name="approve", payload=json_payload("yes")),
        ev("signal_received", 2, seq=5, name="approve", payload=json_payload("again")),
    )
    assert [(s.seq, s.name) for s in j.signal_inbox] == [(4, "approve"), (5, "approve")]
    j = project_journal_events(
        j,
        [
            ev(
                "waitpoint_resolved",
                3,
                waitpoint_id="w1",
                kind=pb.WAITPOINT_KIND_SIGNAL,
                payload=json_payload("yes"),
                source=pb.WAITPOINT_RESOLUTION_SOURCE_INBOX,
                matched_seq=4,
            ),
            ev("waitpoint_resolved", 4, waitpoint_id="w1", payload=json_payload("dup")),
        ],
    )
    assert [s.seq for s in j.signal_inbox] == [5]
    res = j.waitpoints_resolved["w1"]
    assert payload_value(res.payload) == "yes"
    assert res.source == pb.WAITPOINT_RESOLUTION_SOURCE_INBOX
    assert ms(res, "resolve_time") == 3


def test_compensations_run_are_journaled_once() -> None:
    j = journal(
        ev("compensation_started", 1, step_id="ship"),
        ev("compensation_completed", 2, step_id="ship"),
        ev("compensation_started", 3, step_id="charge"),
        ev("compensation_failed", 4, step_id="charge", error=err("x")),
        ev("compensation_completed", 5, step_id="charge"),
    )
    assert j.compensations_run["ship"].status == pb.COMPENSATION_STATUS_COMPLETED
    assert j.compensations_run["charge"].status == pb.COMPENSATION_STATUS_FAILED
    assert j.compensations_run["charge"].error.message == "x"


def test_metadata_state_follows_mutations() -> None:
    j = journal(
        ev(
            "metadata_updated",
            1,
            mutations=[
                pb.MetadataMutation(op=pb.METADATA_OP_SET, key="k", value=Value(number_value=1))
            ],
        )
    )
    assert j.metadata_state["k"].number_value == 1
