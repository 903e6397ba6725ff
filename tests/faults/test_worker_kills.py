"""kill -9 of a worker mid-step and mid-compensation: only what was in flight runs again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import LEASE, free_port, server
from tests.faults.harness import (
    assert_sound,
    connected,
    journal,
    marks,
    results,
    step_running,
    until,
    until_marked,
    worker,
)


def compensation_running(step_id: str) -> Callable[[pb.RunSnapshot], bool]:
    def check(snap: pb.RunSnapshot) -> bool:
        return any(
            c.step_id == step_id and c.status == pb.COMPENSATION_STATUS_RUNNING
            for c in snap.compensations
        )

    return check


async def test_kill_9_mid_step_then_mid_compensation(pg_url: str, app_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    with server(pg_url, port, *LEASE):
        async with connected(address) as client:
            await client.start("gated_saga", str(directory), run_id="saga")
            # 1. Killed inside the step "pay": the next worker runs it again.
            with worker(app_dir, address) as first:
                await until(client, "saga", step_running("pay"))
                await until_marked(directory, "pay", 1)
                first.kill()
                first.wait()
            # 2. Killed inside the compensation "unbook", after "refund" finished.
            with worker(app_dir, address) as second:
                (directory / "pay.gate").touch()
                await until(client, "saga", compensation_running("book"))
                await until_marked(directory, "unbook", 1)
                second.kill()
                second.wait()
            # 3. The next worker finishes "unbook" and ends the run; "refund" is not redone.
            with worker(app_dir, address):
                (directory / "unbook.gate").touch()
                (snap,) = await results(client, ["saga"])
            await assert_sound(client, pg_url, ["saga"])
    assert snap.status == pb.RUN_STATUS_FAILED
    assert snap.compensation == pb.COMPENSATION_OUTCOME_COMPENSATED
    assert {c.step_id: c.status for c in snap.compensations} == {
        "book": pb.COMPENSATION_STATUS_COMPLETED,
        "pay": pb.COMPENSATION_STATUS_COMPLETED,
    }
    run_journal = await journal(pg_url, "saga")
    assert set(run_journal.compensations_run) == {"book", "pay"}
    assert {
        name: marks(directory, name) for name in ("book", "pay", "ship", "refund", "unbook")
    } == {
        "book": 1,
        "pay": 2,  # in flight at the first kill
        "ship": 1,
        "refund": 1,  # finished before the second kill: not repeated
        "unbook": 2,  # in flight at the second kill: run again, not skipped
    }
