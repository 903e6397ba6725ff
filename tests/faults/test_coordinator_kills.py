"""SIGKILL of the coordinator while workers stream batches: nothing lost, nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import free_port, server
from tests.faults.harness import assert_sound, connected, marks, results, until, worker

RUNS = 4
STEPS = 40
# Leases outlive a coordinator restart, so the workers keep their tasks and resend
# what was not acknowledged: the "kill between commit and ack" case.
LEASE = ["--lease-seconds", "5", "--heartbeat-seconds", "0.2"]


def completed_at_least(n: int) -> Callable[[pb.RunSnapshot], bool]:
    def check(snap: pb.RunSnapshot) -> bool:
        done = sum(s.status == pb.STEP_STATUS_COMPLETED for s in snap.steps.values())
        return done >= n or snap.status == pb.RUN_STATUS_COMPLETED

    return check


async def test_coordinator_killed_while_batches_stream(pg_url: str, app_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    run_ids = [f"chatty-{i}" for i in range(RUNS)]
    with worker(app_dir, address), worker(app_dir, address):
        # Two kills, at different points of the stream of batches.
        for kill, progress in enumerate((8, 24)):
            with server(pg_url, port, *LEASE) as coordinator:
                async with connected(address) as client:
                    if kill == 0:
                        for run_id in run_ids:
                            args = {"dir": str(directory), "tag": run_id, "steps": STEPS}
                            await client.start("chatty", args, run_id=run_id)
                    await until(client, run_ids[-1], completed_at_least(progress))
                coordinator.kill()
                coordinator.wait()
        with server(pg_url, port, *LEASE):
            async with connected(address) as client:
                snaps = await results(client, run_ids)
                ledgers = await assert_sound(client, pg_url, run_ids)
                logs = {
                    run_id: [line.text async for line in client.tail_logs(run_id)]
                    for run_id in run_ids
                }
    for run_id, snap in zip(run_ids, snaps, strict=True):
        assert snap.status == pb.RUN_STATUS_COMPLETED, run_id
        completed = [
            e.step_completed.step_id for e in ledgers[run_id] if e.HasField("step_completed")
        ]
        assert completed == [f"s{i}" for i in range(STEPS)], run_id
        # Every log line crossed the kills exactly once, in order.
        assert logs[run_id] == [f"[info] step {i} done" for i in range(STEPS)], run_id
        ran = [marks(directory, f"{run_id}.s{i}") for i in range(STEPS)]
        assert all(n >= 1 for n in ran), (run_id, ran)
        # Only a step in flight when its task moved to another worker may run twice.
        assert sum(n - 1 for n in ran) <= 2, (run_id, ran)
