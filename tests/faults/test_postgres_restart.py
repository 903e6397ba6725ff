"""Postgres restarted under load: the coordinator reconnects, nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import LEASE, free_port, server
from tests.faults.harness import assert_sound, connected, marks, results, until, worker
from tests.faults.test_coordinator_kills import completed_at_least
from tests.pg_cluster import PgCluster

RUNS = 4
STEPS = 30


async def test_postgres_restarted_while_runs_proceed(
    pg_cluster: PgCluster, pg_url: str, app_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    run_ids = [f"chatty-{i}" for i in range(RUNS)]
    with server(pg_url, port, *LEASE), worker(app_dir, address):
        async with connected(address) as client:
            for run_id in run_ids:
                args = {"dir": str(directory), "tag": run_id, "steps": STEPS}
                await client.start("chatty", args, run_id=run_id)
            await until(client, run_ids[-1], completed_at_least(5))
            # pg_ctl blocks: run it beside the loop (fast shutdown drops every session).
            await asyncio.to_thread(pg_cluster.restart)
            # Acknowledged before the restart: the runs exist; start one more after it.
            await client.start(
                "chatty", {"dir": str(directory), "tag": "late", "steps": 3}, run_id="late"
            )
            # Bounded tighter than the other waits: without the fix this is where it hangs.
            snaps = await results(client, [*run_ids, "late"], deadline=20)
            ledgers = await assert_sound(client, pg_url, [*run_ids, "late"])
            logs = {r: [line.text async for line in client.tail_logs(r)] for r in run_ids}
    assert [s.status for s in snaps] == [pb.RUN_STATUS_COMPLETED] * (RUNS + 1)
    for run_id in run_ids:
        completed = [
            e.step_completed.step_id for e in ledgers[run_id] if e.HasField("step_completed")
        ]
        assert completed == [f"s{i}" for i in range(STEPS)], run_id
        assert logs[run_id] == [f"[info] step {i} done" for i in range(STEPS)], run_id
        ran = [marks(directory, f"{run_id}.s{i}") for i in range(STEPS)]
        assert all(n >= 1 for n in ran), (run_id, ran)
        assert sum(n - 1 for n in ran) <= 1, (run_id, ran)
