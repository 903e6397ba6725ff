"""Status patches → events: ledgerflow's documented deviations (the rest is in the vectors)."""

from __future__ import annotations

from ledgerflow.ledger import empty_snapshot, events_from_status_patch, reduce_events
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from tests.ledger.builders import ev, ts


def test_timed_out_and_terminated_keep_their_own_events() -> None:
    previous = reduce_events(empty_snapshot("r"), [ev("run_started", 1)])
    timed_out = events_from_status_patch(
        rpb.StatusPatch(run_id="r", status="timeout"), previous, now_nanos=5
    )
    assert [e.WhichOneof("payload") for e in timed_out] == ["run_timed_out"]
    terminated = events_from_status_patch(
        rpb.StatusPatch(run_id="r", status="terminated"), previous, now_nanos=5
    )
    assert [e.WhichOneof("payload") for e in terminated] == ["run_terminated"]
    assert reduce_events(previous, terminated).status == pb.RUN_STATUS_TERMINATED


def test_steps_are_visited_in_step_id_order() -> None:
    patch = rpb.StatusPatch(run_id="r", status="running")
    for step_id in ("b", "a", "c"):
        patch.live_step_progress[step_id].CopyFrom(pb.StepProgress(completed=1, start_time=ts(1)))
    events = events_from_status_patch(patch, empty_snapshot("r"), now_nanos=10)
    started = [e.step_started.step_id for e in events if e.HasField("step_started")]
    assert started == ["a", "b", "c"]


def test_a_patch_applied_twice_adds_nothing_the_second_time() -> None:
    patch = rpb.StatusPatch(run_id="r", status="succeeded", last_checkpoint_time=ts(9))
    patch.live_step_progress["s"].CopyFrom(
        pb.StepProgress(completed=2, total=2, start_time=ts(2), completion_time=ts(8))
    )
    first = events_from_status_patch(patch, empty_snapshot("r"), now_nanos=0)
    snap = reduce_events(empty_snapshot("r"), first)
    assert snap.status == pb.RUN_STATUS_COMPLETED
    assert events_from_status_patch(patch, snap, now_nanos=0) == []
