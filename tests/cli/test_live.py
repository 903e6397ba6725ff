"""The two views of a watched run: lines per change, and the rich live screen."""

from __future__ import annotations

import io

from rich.console import Console

from ledgerflow.cli._live import changes, outcome_line, outcome_status, render_snapshot
from ledgerflow.ledger import json_payload
from ledgerflow.v1 import ledger_pb2 as pb
from tests.client.builders import T0, snapshot, ts

AT = "2026-01-02 03:04:05Z  "


def with_step(
    snap: pb.RunSnapshot, step_id: str, status: pb.StepStatus.ValueType, **fields: object
) -> pb.RunSnapshot:
    out = pb.RunSnapshot()
    out.CopyFrom(snap)
    if step_id not in out.ordered_step_ids:
        out.ordered_step_ids.append(step_id)
    step = out.steps[step_id]
    step.step_id = step_id
    step.status = status
    for name, value in fields.items():
        setattr(step, name, value)
    return out


def test_the_first_snapshot_shows_everything_then_only_changes() -> None:
    first = snapshot(total_log_count=2, log_tail=["[info] a", "[info] b"])
    first = with_step(first, "reserve", pb.STEP_STATUS_RUNNING)
    assert changes(None, first) == [
        AT + "run  running",
        AT + "step reserve  running",
        AT + "log  [info] a",
        AT + "log  [info] b",
    ]
    assert changes(first, first) == []

    second = with_step(first, "reserve", pb.STEP_STATUS_RUNNING)
    second.steps["reserve"].progress.completed = 1
    second.steps["reserve"].progress.total = 4
    second.steps["reserve"].progress.message = "pick"
    assert changes(first, second) == [AT + "step reserve  progress 1/4  pick"]


def test_a_step_that_finished_shows_its_duration_and_error() -> None:
    before = with_step(snapshot(), "ship", pb.STEP_STATUS_RUNNING)
    after = with_step(before, "ship", pb.STEP_STATUS_FAILED, attempt=2)
    after.steps["ship"].start_time.CopyFrom(ts(T0))
    after.steps["ship"].completion_time.FromNanoseconds(ts(T0).ToNanoseconds() + 1_500_000_000)
    after.steps["ship"].error.type = "CarrierUnavailableError"
    after.steps["ship"].error.message = "no carrier"
    assert changes(before, after) == [
        AT + "step ship  failed  attempt 2  1.50s  CarrierUnavailableError: no carrier"
    ]


def test_terminal_status_comes_last_after_compensations() -> None:
    before = snapshot()
    after = snapshot(status=pb.RUN_STATUS_FAILED)
    after.error.type = "StepFailedError"
    after.error.message = "ship failed"
    after.compensations.add(step_id="charge", status=pb.COMPENSATION_STATUS_COMPLETED)
    failed = after.compensations.add(step_id="reserve", status=pb.COMPENSATION_STATUS_FAILED)
    failed.error.message = "warehouse down"
    after.compensation = pb.COMPENSATION_OUTCOME_COMPENSATION_FAILED
    assert changes(before, after) == [
        AT + "compensate charge  completed",
        AT + "compensate reserve  failed  warehouse down",
        AT + "run  failed  StepFailedError: ship failed",
    ]
    assert outcome_line(after) == "failed  StepFailedError: ship failed  (compensation_failed)"
    assert outcome_status(after) == 1


def test_waitpoints_opening_and_resolving() -> None:
    before = snapshot()
    after = snapshot(status=pb.RUN_STATUS_WAITING)
    wp = after.open_waitpoints.add(waitpoint_id="w1", kind=pb.WAITPOINT_KIND_SIGNAL, name="approve")
    wp.deadline_time.CopyFrom(ts(T0))
    assert changes(before, after) == [
        AT + "run  waiting",
        AT + "wait signal approve until 2026-01-02 03:04:05Z",
    ]
    resolved = snapshot()
    assert changes(after, resolved) == [
        AT + "run  running",
        AT + "resolved signal approve until 2026-01-02 03:04:05Z",
    ]


def test_log_lines_beyond_the_tail_are_counted_not_lost() -> None:
    before = snapshot(total_log_count=1, log_tail=["old"])
    after = snapshot(total_log_count=5, log_tail=["c", "d"])  # the tail kept only two
    assert changes(before, after) == [
        AT + "log  (2 lines not shown: `ledgerflow run logs`)",
        AT + "log  c",
        AT + "log  d",
    ]


def test_a_completed_run_exits_0_with_its_result() -> None:
    done = snapshot(status=pb.RUN_STATUS_COMPLETED)
    done.result.CopyFrom(json_payload({"ok": True}))
    assert (outcome_line(done), outcome_status(done)) == ('result  {"ok":true}', 0)
    assert outcome_line(snapshot(status=pb.RUN_STATUS_COMPLETED)) == "result  null"


def test_the_live_screen_shows_steps_progress_waitpoints_compensations_and_logs() -> None:
    snap = snapshot(
        status=pb.RUN_STATUS_FAILED,
        workflow_name="examples.order_saga",
        total_log_count=30,
        log_tail=[f"line {i}" for i in range(1, 31)],
        last_seq=42,
    )
    snap = with_step(snap, "reserve_inventory", pb.STEP_STATUS_COMPLETED)
    snap = with_step(snap, "ship", pb.STEP_STATUS_FAILED)
    snap.steps["reserve_inventory"].progress.completed = 2
    snap.steps["reserve_inventory"].progress.total = 2
    snap.steps["ship"].error.type = "CarrierUnavailableError"
    snap.steps["ship"].error.message = "no carrier"
    snap.open_waitpoints.add(waitpoint_id="w", kind=pb.WAITPOINT_KIND_TIMER, name="retry")
    snap.compensations.add(step_id="reserve_inventory", status=pb.COMPENSATION_STATUS_COMPLETED)
    snap.compensation = pb.COMPENSATION_OUTCOME_COMPENSATED
    console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
    console.print(render_snapshot(snap, log_lines=3))
    text = console.export_text()
    assert "run r1 · examples.order_saga" in text
    assert "failed" in text
    assert "seq 42" in text
    rows = [line for line in text.splitlines() if "reserve_inventory" in line]
    assert "completed" in rows[0]
    assert "2/2" in rows[0]
    assert "CarrierUnavailableError: no carrier" in text
    assert "waiting on  timer retry" in text
    assert "compensation: compensated" in text
    assert "log (last 3 of 30 lines)" in text
    assert "line 30" in text
    assert "line 27" not in text


def test_the_live_screen_names_the_namespace_unless_it_is_default() -> None:
    def title(snap: pb.RunSnapshot) -> str:
        console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
        console.print(render_snapshot(snap))
        return console.export_text().splitlines()[0]

    assert "run r1 · checkout · namespace eu" in title(snapshot(namespace="eu"))
    assert "namespace" not in title(snapshot(namespace="default"))
    assert "namespace" not in title(snapshot())  # a run from before namespaces
