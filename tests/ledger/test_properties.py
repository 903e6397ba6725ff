"""Properties of the folds over arbitrary ledgers of every event type."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.ledger import (
    apply_event,
    empty_journal,
    empty_snapshot,
    is_terminal,
    json_payload,
    project_journal_events,
    reduce,
    reduce_events,
)
from ledgerflow.v1 import ledger_pb2 as pb
from tests.ledger.builders import err, ev

STEP_IDS = st.sampled_from(["a", "b", "c#2"])
TIMES = st.integers(min_value=-5, max_value=50)


@st.composite
def events(draw: st.DrawFn) -> pb.LedgerEvent:
    t = draw(TIMES)
    step = draw(STEP_IDS)
    kind = draw(
        st.sampled_from(
            [
                "run_created",
                "run_started",
                "run_waiting",
                "run_completed",
                "run_failed",
                "run_cancelled",
                "run_timed_out",
                "run_terminated",
                "step_scheduled",
                "step_started",
                "step_progress",
                "step_completed",
                "step_failed",
                "step_skipped",
                "log_appended",
                "compensation_started",
                "compensation_completed",
                "compensation_failed",
                "waitpoint_registered",
                "waitpoint_resolved",
                "cancel_requested",
                "signal_received",
                "checkpoint_recorded",
                "metadata_updated",
            ]
        )
    )
    fields: dict[str, Any] = {}
    if kind == "run_created":
        fields["status"] = draw(st.sampled_from([0, 1, 2, 4, 5]))
    elif kind in ("run_completed",):
        fields["result"] = json_payload(draw(st.integers()))
    elif kind in ("run_failed", "run_cancelled", "run_timed_out"):
        fields["error"] = err(draw(st.sampled_from(["x", "y"])))
    elif kind == "checkpoint_recorded":
        fields["step_id"] = step
        fields["summary"] = "s"
    elif kind == "metadata_updated":
        fields["mutations"] = [pb.MetadataMutation(op=pb.METADATA_OP_SET, key=step)]
    elif kind.startswith(("step_", "compensation_")):
        fields["step_id"] = step
        if kind == "step_progress":
            fields["progress"] = pb.StepProgress(
                completed=draw(st.integers(0, 3)), total=draw(st.integers(0, 3))
            )
        if kind == "step_failed":
            fields["will_retry"] = draw(st.booleans())
    elif kind == "log_appended":
        fields["lines"] = draw(st.lists(st.sampled_from(["l", " ", "l2"]), max_size=3))
    elif kind.startswith("waitpoint_"):
        fields["waitpoint_id"] = step
    elif kind == "signal_received":
        fields["name"] = "s"
    return ev(kind, t, **fields)


LEDGERS = st.lists(events(), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ledger=LEDGERS, cuts=st.lists(st.integers(0, 40), max_size=6))
def test_splitting_a_ledger_into_batches_gives_the_same_snapshot_and_journal(
    ledger: list[pb.LedgerEvent], cuts: list[int]
) -> None:
    whole = reduce_events(empty_snapshot("r"), ledger)
    whole_journal = project_journal_events(empty_journal(), ledger)
    bounds = sorted({0, len(ledger), *(min(c, len(ledger)) for c in cuts)})
    snap = empty_snapshot("r")
    journal = empty_journal()
    for a, b in pairwise(bounds):
        snap = reduce_events(snap, ledger[a:b])
        journal = project_journal_events(journal, ledger[a:b])
    assert snap.SerializeToString(deterministic=True) == whole.SerializeToString(deterministic=True)
    assert journal == whole_journal
    one_by_one = empty_snapshot("r")
    for event in ledger:
        one_by_one = reduce(one_by_one, event)
    assert one_by_one == whole


@settings(max_examples=300, deadline=None)
@given(ledger=LEDGERS)
def test_terminal_precedence_always_holds(ledger: list[pb.LedgerEvent]) -> None:
    snap = empty_snapshot("r")
    first_terminal: int | None = None
    for event in ledger:
        before = snap.status
        apply_event(snap, event)
        if first_terminal is None and is_terminal(snap.status):
            first_terminal = snap.status
        if is_terminal(before):
            demoted = (
                before == pb.RUN_STATUS_COMPLETED
                and event.HasField("run_failed")
                and snap.status == pb.RUN_STATUS_FAILED
            )
            assert snap.status == before or demoted
    if first_terminal is not None:
        assert snap.status in (first_terminal, pb.RUN_STATUS_FAILED)
        if first_terminal != pb.RUN_STATUS_COMPLETED:
            assert snap.status == first_terminal


@settings(max_examples=200, deadline=None)
@given(ledger=LEDGERS)
def test_log_count_is_monotonic_and_tail_bounded(ledger: list[pb.LedgerEvent]) -> None:
    snap = empty_snapshot("r")
    count = 0
    for event in ledger:
        apply_event(snap, event)
        assert snap.total_log_count >= count
        assert len(snap.log_tail) <= 100
        count = snap.total_log_count


@settings(max_examples=300, deadline=None)
@given(ledger=LEDGERS)
def test_running_step_ids_are_exactly_the_running_steps_in_first_seen_order(
    ledger: list[pb.LedgerEvent],
) -> None:
    snap = empty_snapshot("r")
    for event in ledger:
        apply_event(snap, event)
        ordered = list(snap.ordered_step_ids)
        assert [snap.steps[s].first_seen_index for s in ordered] == list(range(len(ordered)))
        assert list(snap.running_step_ids) == [
            s for s in ordered if snap.steps[s].status == pb.STEP_STATUS_RUNNING
        ]
