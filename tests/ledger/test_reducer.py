"""One test per reducer rule (DESIGN.md §3.1) and per documented deviation."""

from __future__ import annotations

from google.protobuf.struct_pb2 import Value

from ledgerflow.ledger import (
    LOG_TAIL_LIMIT,
    empty_snapshot,
    is_terminal,
    json_payload,
    normalize_status,
    payload_value,
    reduce,
    reduce_events,
)
from ledgerflow.v1 import ledger_pb2 as pb
from tests.ledger.builders import err, ev, ms, ts

S = pb.StepStatus


def run(*events: pb.LedgerEvent, run_id: str = "r") -> pb.RunSnapshot:
    return reduce_events(empty_snapshot(run_id), events)


# -- statuses --------------------------------------------------------------


def test_status_normalisation_understands_aliases_case_and_whitespace() -> None:
    assert normalize_status(" Pending ") == pb.RUN_STATUS_QUEUED
    assert normalize_status("started") == pb.RUN_STATUS_RUNNING
    assert normalize_status("SUCCEEDED") == pb.RUN_STATUS_COMPLETED
    assert normalize_status("complete") == pb.RUN_STATUS_COMPLETED
    assert normalize_status("error") == pb.RUN_STATUS_FAILED
    assert normalize_status("canceled") == pb.RUN_STATUS_CANCELLED
    assert normalize_status("timeout") == pb.RUN_STATUS_TIMED_OUT
    assert normalize_status("\ufeffwaiting\u3000") == pb.RUN_STATUS_WAITING
    assert normalize_status("bogus") == pb.RUN_STATUS_UNKNOWN
    assert normalize_status("") == pb.RUN_STATUS_UNKNOWN


def test_terminal_set_is_exactly_the_five_end_states() -> None:
    terminal = {s for s in pb.RunStatus.values() if is_terminal(s)}
    assert terminal == {
        pb.RUN_STATUS_COMPLETED,
        pb.RUN_STATUS_FAILED,
        pb.RUN_STATUS_CANCELLED,
        pb.RUN_STATUS_TERMINATED,
        pb.RUN_STATUS_TIMED_OUT,
    }


def test_empty_snapshot_is_unknown_with_nothing_set() -> None:
    snap = empty_snapshot("r")
    assert snap.status == pb.RUN_STATUS_UNKNOWN
    assert not snap.HasField("workflow_name")
    assert not snap.HasField("update_time")


# -- terminal precedence ---------------------------------------------------


def test_first_terminal_wins_and_a_conflict_is_one_anomaly_line() -> None:
    snap = run(
        ev("run_created", 1, status=pb.RUN_STATUS_QUEUED),
        ev("run_cancelled", 5, error=err("user")),
        ev("run_completed", 9, result=json_payload(1)),
    )
    assert snap.status == pb.RUN_STATUS_CANCELLED
    assert snap.error.message == "user"
    assert not snap.HasField("result")
    assert list(snap.log_tail) == [
        "[ledger] conflicting terminal event run.completed ignored; status already cancelled"
    ]
    assert snap.total_log_count == 1
    assert ms(snap, "finish_time") == 5
    assert ms(snap, "update_time") == 9


def test_redelivered_same_terminal_is_benign() -> None:
    snap = run(ev("run_completed", 5), ev("run_completed", 7, result=json_payload("x")))
    assert snap.status == pb.RUN_STATUS_COMPLETED
    assert list(snap.log_tail) == []
    assert ms(snap, "finish_time") == 5
    assert payload_value(snap.result) == "x"


def test_failure_demotes_completed() -> None:
    snap = run(
        ev("run_started", 1),
        ev("run_completed", 5, result=json_payload({"ok": True})),
        ev("run_failed", 8, error=err("credit cap")),
    )
    assert snap.status == pb.RUN_STATUS_FAILED
    assert snap.error.message == "credit cap"
    assert ms(snap, "finish_time") == 5  # the first finish stays
    assert list(snap.log_tail) == []


def test_failed_is_never_flipped_to_completed() -> None:
    snap = run(ev("run_failed", 5, error=err("boom")), ev("run_completed", 6))
    assert snap.status == pb.RUN_STATUS_FAILED
    assert snap.error.message == "boom"
    assert snap.log_tail[-1].endswith("run.completed ignored; status already failed")


def test_cancelled_is_not_demoted_by_a_failure() -> None:
    snap = run(ev("run_cancelled", 5), ev("run_failed", 6, error=err("late")))
    assert snap.status == pb.RUN_STATUS_CANCELLED
    assert not snap.HasField("error")
    assert snap.log_tail[-1].endswith("run.failed ignored; status already cancelled")


def test_completed_clears_the_error_and_the_active_step() -> None:
    snap = run(
        ev("step_started", 1, step_id="a"),
        ev("run_failed", 2, error=err("x")),
    )
    assert snap.status == pb.RUN_STATUS_FAILED
    assert not snap.HasField("active_step_id")
    snap2 = run(ev("step_started", 1, step_id="a"), ev("run_completed", 2))
    assert not snap2.HasField("error")
    assert not snap2.HasField("active_step_id")


def test_timed_out_and_terminated_follow_the_same_precedence() -> None:
    # Deviation 3: events the reference lacks, with run_cancelled's rules.
    snap = run(ev("run_timed_out", 5, error=err("deadline")), ev("run_completed", 6))
    assert snap.status == pb.RUN_STATUS_TIMED_OUT
    assert snap.error.message == "deadline"
    assert snap.log_tail[-1].endswith("run.completed ignored; status already timed_out")
    snap = run(ev("run_completed", 5), ev("run_terminated", 6, reason="ops"))
    assert snap.status == pb.RUN_STATUS_COMPLETED
    assert snap.log_tail[-1].endswith("run.terminated ignored; status already completed")
    snap = run(ev("run_terminated", 5, reason="ops"))
    assert snap.status == pb.RUN_STATUS_TERMINATED
    assert snap.error.message == "ops"


def test_run_created_never_revives_a_terminal_run() -> None:
    # Deviation 1: the reference would set status back to queued here.
    snap = run(ev("run_completed", 5), ev("run_created", 6, status=pb.RUN_STATUS_QUEUED))
    assert snap.status == pb.RUN_STATUS_COMPLETED
    # Before any terminal event the created status applies, as in the reference.
    assert run(ev("run_created", 1, status=pb.RUN_STATUS_QUEUED)).status == pb.RUN_STATUS_QUEUED


def test_started_and_step_events_do_not_move_a_terminal_status() -> None:
    snap = run(ev("run_cancelled", 5), ev("run_started", 6), ev("step_started", 7, step_id="a"))
    assert snap.status == pb.RUN_STATUS_CANCELLED
    assert list(snap.ordered_step_ids) == ["a"]


# -- runs ------------------------------------------------------------------


def test_run_created_and_started_record_names_and_times() -> None:
    snap = run(
        ev("run_created", 10, workflow_name="wf", status=pb.RUN_STATUS_QUEUED, tags=["a"]),
        ev("run_started", 20),
        ev("run_started", 30, workflow_name="renamed"),
    )
    assert snap.workflow_name == "renamed"
    assert snap.status == pb.RUN_STATUS_RUNNING
    assert ms(snap, "create_time") == 10
    assert ms(snap, "start_time") == 20
    assert list(snap.tags) == ["a"]


def test_run_created_records_the_namespace_and_a_later_one_without_keeps_it() -> None:
    snap = run(
        ev("run_created", 10, workflow_name="wf", namespace="billing"),
        ev("run_created", 20, workflow_name="wf"),
    )
    assert snap.namespace == "billing"
    assert run(ev("run_created", 10, workflow_name="wf")).namespace == ""


def test_events_for_another_run_are_ignored() -> None:
    base = empty_snapshot("mine")
    after = reduce(base, ev("run_completed", 5, run_id="other"))
    assert after == base


def test_reduce_does_not_mutate_its_input() -> None:
    base = run(ev("run_created", 1))
    copy = pb.RunSnapshot()
    copy.CopyFrom(base)
    reduce(base, ev("run_completed", 2))
    assert base == copy


def test_timing_duration_update_time_and_clamping() -> None:
    snap = run(
        ev("run_started", 100),
        ev("log_appended", 50, lines=["late event"]),
        ev("run_completed", 400),
    )
    assert snap.duration.ToMilliseconds() == 300
    assert ms(snap, "update_time") == 400
    clamped = run(ev("run_started", -50), ev("run_completed", 10))
    assert ms(clamped, "start_time") == 0
    assert clamped.duration.ToMilliseconds() == 10
    reversed_times = run(ev("run_started", 100), ev("run_completed", 40))
    assert reversed_times.duration.ToMilliseconds() == 0


def test_last_seq_follows_folded_events() -> None:
    snap = run(ev("run_created", 1, seq=1), ev("run_started", 2, seq=2))
    assert snap.last_seq == 2


# -- steps -----------------------------------------------------------------


def test_steps_are_ordered_by_first_sight() -> None:
    snap = run(
        ev("step_started", 1, step_id="b"),
        ev("step_progress", 2, step_id="a", progress=pb.StepProgress(completed=1)),
        ev("step_started", 3, step_id="b"),
        ev("step_skipped", 4, step_id="c"),
    )
    assert list(snap.ordered_step_ids) == ["b", "a", "c"]
    assert snap.status == pb.RUN_STATUS_RUNNING


def test_failed_step_is_sticky_against_completed_and_skipped() -> None:
    snap = run(
        ev("step_started", 1, step_id="a"),
        ev("step_failed", 2, step_id="a", error=err("x")),
        ev("step_completed", 3, step_id="a"),
        ev("step_skipped", 4, step_id="a"),
        ev("step_started", 5, step_id="a"),
    )
    step = snap.steps["a"]
    assert step.status == S.Value("STEP_STATUS_FAILED")
    assert ms(step, "completion_time") == 2
    assert ms(step, "update_time") == 5


def test_started_after_completed_keeps_completed() -> None:
    snap = run(ev("step_completed", 2, step_id="a"), ev("step_started", 3, step_id="a"))
    assert snap.steps["a"].status == pb.STEP_STATUS_COMPLETED
    assert not snap.HasField("active_step_id")


def test_completed_step_without_start_has_no_start_time() -> None:
    step = run(ev("step_completed", 2, step_id="a")).steps["a"]
    assert not step.HasField("start_time")
    assert ms(step, "completion_time") == 2


def test_skipped_step_has_no_completion_time() -> None:
    step = run(ev("step_skipped", 2, step_id="a")).steps["a"]
    assert step.status == pb.STEP_STATUS_SKIPPED
    assert not step.HasField("completion_time")


def test_progress_merges_field_wise() -> None:
    snap = run(
        ev("step_started", 1, step_id="a"),
        ev("step_progress", 2, step_id="a", progress=pb.StepProgress(completed=1, total=10)),
        ev("step_progress", 3, step_id="a", progress=pb.StepProgress(message="half")),
    )
    p = snap.steps["a"].progress
    assert (p.completed, p.total, p.message) == (1, 10, "half")
    assert ms(p, "update_time") == 3
    assert snap.steps["a"].status == pb.STEP_STATUS_RUNNING


def test_progress_infers_completion_when_completed_reaches_total() -> None:
    snap = run(
        ev(
            "step_progress",
            5,
            step_id="a",
            status=pb.STEP_STATUS_RUNNING,
            progress=pb.StepProgress(completed=3, total=3),
        )
    )
    step = snap.steps["a"]
    assert step.status == pb.STEP_STATUS_COMPLETED
    assert ms(step, "completion_time") == 5
    assert not snap.HasField("active_step_id")


def test_progress_with_zero_total_or_without_totals_infers_nothing() -> None:
    zero = run(ev("step_progress", 5, step_id="a", progress=pb.StepProgress(completed=0, total=0)))
    assert zero.steps["a"].status == pb.STEP_STATUS_RUNNING
    assert zero.active_step_id == "a"
    no_totals = run(ev("step_progress", 5, step_id="a", progress=pb.StepProgress(message="hi")))
    assert no_totals.steps["a"].status == pb.STEP_STATUS_RUNNING


def test_progress_completion_time_infers_completion() -> None:
    snap = run(ev("step_progress", 9, step_id="a", progress=pb.StepProgress(completion_time=ts(7))))
    assert snap.steps["a"].status == pb.STEP_STATUS_COMPLETED
    assert ms(snap.steps["a"], "completion_time") == 7


def test_progress_on_a_finished_step_keeps_its_status() -> None:
    for finish in ("step_failed", "step_skipped", "step_completed"):
        snap = run(
            ev(finish, 1, step_id="a"),
            ev("step_progress", 2, step_id="a", status=pb.STEP_STATUS_RUNNING),
        )
        assert snap.steps["a"].status != pb.STEP_STATUS_RUNNING, finish
        assert not snap.HasField("active_step_id")


def test_active_step_is_the_last_step_still_running() -> None:
    snap = run(
        ev("step_started", 1, step_id="a", artifact_namespace="ns-a"),
        ev("step_started", 2, step_id="b", artifact_namespace="ns-b"),
    )
    assert (snap.active_step_id, snap.active_artifact_namespace) == ("b", "ns-b")
    snap = reduce(snap, ev("step_completed", 3, step_id="b"))
    assert (snap.active_step_id, snap.active_artifact_namespace) == ("a", "ns-a")
    snap = reduce(snap, ev("step_failed", 4, step_id="a"))
    assert not snap.HasField("active_step_id")
    assert not snap.HasField("active_artifact_namespace")


def test_result_namespace_comes_from_the_last_step_with_one_when_terminal() -> None:
    snap = run(
        ev("step_started", 1, step_id="a", artifact_namespace="first"),
        ev("step_started", 2, step_id="b", artifact_namespace="  "),
        ev("step_started", 3, step_id="c"),
    )
    assert not snap.HasField("result_namespace")
    snap = reduce(snap, ev("run_completed", 4))
    assert snap.result_namespace == "first"
    pinned = run(
        ev("summary_updated", 1, namespace="table"),
        ev("step_started", 2, step_id="a", artifact_namespace="x"),
        ev("run_completed", 3),
    )
    assert pinned.result_namespace == "table"


def test_retried_step_that_succeeds_ends_completed() -> None:
    # Deviation 2: the reference's sticky failure would report this step failed.
    snap = run(
        ev("step_started", 1, step_id="a", attempt=1),
        ev(
            "step_failed",
            2,
            step_id="a",
            attempt=1,
            error=err("flaky"),
            will_retry=True,
            next_attempt_time=ts(10),
        ),
    )
    step = snap.steps["a"]
    assert step.status == pb.STEP_STATUS_RETRYING
    assert ms(step, "next_attempt_time") == 10
    assert not step.HasField("completion_time")
    assert not snap.HasField("active_step_id")
    snap = reduce_events(
        snap,
        [
            ev("step_started", 10, step_id="a", attempt=2),
            ev("step_completed", 11, step_id="a", attempt=2),
        ],
    )
    step = snap.steps["a"]
    assert step.status == pb.STEP_STATUS_COMPLETED
    assert step.attempt == 2
    assert not step.HasField("error")
    assert ms(step, "start_time") == 1
    assert ms(step, "completion_time") == 11


def test_final_failure_after_retries_is_sticky() -> None:
    snap = run(
        ev("step_failed", 2, step_id="a", attempt=1, will_retry=True),
        ev("step_failed", 3, step_id="a", attempt=2, error=err("gave up")),
        ev("step_failed", 4, step_id="a", attempt=3, will_retry=True),
    )
    assert snap.steps["a"].status == pb.STEP_STATUS_FAILED
    assert snap.steps["a"].error.message == "gave up"


def test_scheduled_step_waits_for_another_worker() -> None:
    snap = run(ev("step_scheduled", 1, step_id="a", worker_kind="ts", attempt=1))
    step = snap.steps["a"]
    assert step.status == pb.STEP_STATUS_SCHEDULED
    assert step.worker_kind == "ts"
    assert not snap.HasField("active_step_id")
    assert (
        reduce(snap, ev("step_started", 2, step_id="a")).steps["a"].status == pb.STEP_STATUS_RUNNING
    )


# -- logs ------------------------------------------------------------------


def test_log_tail_is_bounded_and_the_count_keeps_going() -> None:
    lines = [f"line {i}" for i in range(250)]
    snap = run(ev("log_appended", 1, lines=lines[:120]), ev("log_appended", 2, lines=lines[120:]))
    assert list(snap.log_tail) == lines[-LOG_TAIL_LIMIT:]
    assert snap.total_log_count == 250


def test_blank_lines_are_dropped_and_repeats_kept() -> None:
    snap = run(ev("log_appended", 1, lines=["  a  ", "", " \t", "a", "a"]))
    assert list(snap.log_tail) == ["a", "a", "a"]
    assert snap.total_log_count == 3


def test_first_seq_pins_the_count() -> None:
    snap = run(ev("log_appended", 1, lines=["x", "y"], first_seq=41))
    assert snap.total_log_count == 42
    lower = reduce(snap, ev("log_appended", 2, lines=["z"], first_seq=3))
    assert lower.total_log_count == 42  # never goes down
    assert list(lower.log_tail) == ["x", "y", "z"]


def test_dropped_lines_past_the_cap_still_count() -> None:
    snap = run(
        ev("log_appended", 1, lines=[], first_seq=10, dropped_line_count=5, logs_truncated=True)
    )
    assert snap.total_log_count == 14
    assert snap.logs_truncated


def test_truncation_flag_is_sticky() -> None:
    snap = run(
        ev("log_appended", 1, lines=["a"], logs_truncated=True), ev("log_appended", 2, lines=["b"])
    )
    assert snap.logs_truncated


# -- ledgerflow's own events -------------------------------------------------


def test_compensation_report_keeps_start_order_and_one_row_per_step() -> None:
    snap = run(
        ev("compensation_started", 1, step_id="ship"),
        ev("compensation_completed", 2, step_id="ship"),
        ev("compensation_started", 3, step_id="charge"),
        ev("compensation_started", 4, step_id="charge"),  # restarted after a crash
        ev("compensation_failed", 5, step_id="charge", error=err("refund down")),
        ev(
            "run_failed",
            6,
            error=err("ship failed"),
            compensation=pb.COMPENSATION_OUTCOME_COMPENSATION_FAILED,
        ),
    )
    assert [(c.step_id, c.status) for c in snap.compensations] == [
        ("ship", pb.COMPENSATION_STATUS_COMPLETED),
        ("charge", pb.COMPENSATION_STATUS_FAILED),
    ]
    assert snap.compensations[1].error.message == "refund down"
    assert ms(snap.compensations[1], "start_time") == 3
    assert snap.compensation == pb.COMPENSATION_OUTCOME_COMPENSATION_FAILED


def test_waitpoints_open_and_close() -> None:
    snap = run(
        ev(
            "waitpoint_registered",
            1,
            waitpoint_id="w1",
            kind=pb.WAITPOINT_KIND_TIMER,
            deadline_time=ts(100),
        ),
        ev(
            "waitpoint_registered",
            1,
            waitpoint_id="w2",
            kind=pb.WAITPOINT_KIND_SIGNAL,
            name="approve",
        ),
        ev("run_waiting", 2, waitpoint_ids=["w1", "w2"]),
    )
    assert snap.status == pb.RUN_STATUS_WAITING
    assert [(w.waitpoint_id, w.name) for w in snap.open_waitpoints] == [
        ("w1", ""),
        ("w2", "approve"),
    ]
    assert ms(snap.open_waitpoints[0], "deadline_time") == 100
    snap = reduce_events(
        snap, [ev("waitpoint_resolved", 3, waitpoint_id="w1"), ev("run_started", 4)]
    )
    assert [w.waitpoint_id for w in snap.open_waitpoints] == ["w2"]
    assert snap.status == pb.RUN_STATUS_RUNNING


def test_checkpoints_count_per_step_and_keep_the_latest_without_payload() -> None:
    snap = run(
        ev("step_started", 1, step_id="a"),
        ev(
            "checkpoint_recorded",
            2,
            step_id="a",
            checkpoint_seq=1,
            type=pb.CHECKPOINT_TYPE_SUMMARY,
            summary="prep",
        ),
        ev(
            "checkpoint_recorded",
            3,
            step_id="a",
            checkpoint_seq=2,
            type=pb.CHECKPOINT_TYPE_LOG_TAIL,
            lines=["x"],
            payload=json_payload("big"),
        ),
        ev("checkpoint_recorded", 4, step_id="unknown", checkpoint_seq=1),
    )
    step = snap.steps["a"]
    assert step.checkpoint_count == 2
    assert step.last_checkpoint.checkpoint_seq == 2
    assert list(step.last_checkpoint.lines) == ["x"]
    assert not step.last_checkpoint.HasField("payload")
    assert "unknown" not in snap.steps


def test_metadata_mutations_apply_in_order() -> None:
    def mut(op: int, key: str, value: Value | None = None, target: int = 0) -> pb.MetadataMutation:
        return pb.MetadataMutation(op=op, key=key, value=value, target=target)  # type: ignore[arg-type]

    snap = run(
        ev(
            "metadata_updated",
            1,
            mutations=[
                mut(pb.METADATA_OP_SET, "stage", Value(string_value="build")),
                mut(pb.METADATA_OP_INCREMENT, "count", Value(number_value=2)),
                mut(pb.METADATA_OP_INCREMENT, "count", Value(number_value=3)),
                mut(pb.METADATA_OP_APPEND, "tags", Value(string_value="a")),
                mut(pb.METADATA_OP_APPEND, "stage", Value(string_value="test")),
                mut(pb.METADATA_OP_SET, "gone", Value(bool_value=True)),
                mut(pb.METADATA_OP_REMOVE, "gone"),
                mut(
                    pb.METADATA_OP_SET,
                    "parent-only",
                    Value(bool_value=True),
                    pb.METADATA_TARGET_PARENT,
                ),
            ],
        )
    )
    assert snap.metadata["count"].number_value == 5
    assert [v.string_value for v in snap.metadata["tags"].list_value.values] == ["a"]
    assert [v.string_value for v in snap.metadata["stage"].list_value.values] == ["build", "test"]
    assert "gone" not in snap.metadata
    assert "parent-only" not in snap.metadata


def test_cancel_request_keeps_the_first_reason_and_the_status() -> None:
    snap = run(
        ev("run_started", 1),
        ev("cancel_requested", 2, reason="user"),
        ev("cancel_requested", 3, reason="again"),
    )
    assert snap.cancel_requested
    assert snap.cancel_reason == "user"
    assert snap.status == pb.RUN_STATUS_RUNNING
