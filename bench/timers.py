"""Durable timers at scale: fire lateness and the coordinator's CPU while timers wait.

Starts ``ledgerflow server`` on a private PostgreSQL cluster (on disk, fsync on) and
one ``ledgerflow worker`` serving a workflow that sleeps until a given time, then
records the wall clock in a step. From this process it starts N runs whose deadlines
are spread evenly over a window that opens once all of them can be waiting, and
reports:

- registration: how long N runs took to start and reach ``waiting`` (the timers are
  then N pending task rows);
- coordinator CPU while idle-waiting: CPU seconds per wall second of the coordinator
  process between the last registration and the first deadline;
- fire lateness p50/p99/max: when the body resumed after its sleep (the step's wall
  clock) minus its deadline;
- late registrations: runs that only reached ``waiting`` after their deadline (their
  lateness counts the registration delay).

Usage: ``python bench/timers.py [--timers N] [--window SECONDS] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import BIN, REPO, cpu_seconds, machine, pct, start, start_server
from tests.pg_cluster import PgCluster, find_bindir

from ledgerflow.client import Client
from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2 as pb

APP = """
import time
from datetime import UTC, datetime

from ledgerflow import workflow


@workflow.defn(name="timer")
async def timer(ctx: workflow.Context, fire_at: float) -> float:
    await ctx.sleep_until(datetime.fromtimestamp(fire_at, UTC))
    return await ctx.step("woke", time.time)
"""


async def count_completed(client: Client) -> int:
    """How many runs completed so far."""
    return sum([1 async for _ in client.iter_runs(statuses=["completed"], page_size=1000)])


async def count_waiting(client: Client) -> int:
    """How many runs wait right now."""
    return sum([1 async for _ in client.iter_runs(statuses=["waiting"], page_size=1000)])


async def run(args: argparse.Namespace, database_url: str, app_dir: str) -> None:
    """Start the processes, register the timers, measure."""
    server, address = start_server(database_url)
    worker = start(
        [
            str(BIN),
            "worker",
            "timer_app",
            "--address",
            address,
            "--max-concurrent-tasks",
            str(args.concurrency),
        ],
        cwd=app_dir,
    )
    client = await Client.connect(address)
    try:
        began = time.time()
        # The window opens once every run can be waiting: a generous estimate of the
        # registration rate, checked below (late registrations are reported).
        opens = began + args.lead
        deadlines = [opens + args.window * i / args.timers for i in range(args.timers)]
        for i, fire_at in enumerate(deadlines):
            await client.start("timer", fire_at, run_id=f"timer-{i}")
        while await count_waiting(client) < args.timers and time.time() < opens:  # noqa: ASYNC110
            await asyncio.sleep(0.5)  # a benchmark polling what it measures
        registered = time.time()
        waiting = await count_waiting(client)
        print(
            f"{args.timers} timers started and {waiting} waiting after "
            f"{registered - began:.1f} s (window opens at +{args.lead:.0f} s)",
            flush=True,
        )
        idle_for = opens - time.time() - 0.5
        idle_cpu = None
        if idle_for > 1:
            before_cpu, before = cpu_seconds(server.pid), time.time()
            await asyncio.sleep(idle_for)
            idle_cpu = (cpu_seconds(server.pid) - before_cpu) / (time.time() - before)
        # Not 10,000 WatchRun streams from one client: wait for the window to pass,
        # then read every run's result once.
        await asyncio.sleep(max(0.0, deadlines[-1] - time.time()))
        give_up = time.time() + 600
        while await count_completed(client) < args.timers and time.time() < give_up:  # noqa: ASYNC110
            await asyncio.sleep(1)
        results = []
        for i in range(args.timers):
            snap = await client.get_run(f"timer-{i}")
            assert snap.status == pb.RUN_STATUS_COMPLETED, f"timer-{i} did not complete"
            results.append(float(payload_value(snap.result)))
        lateness = [
            (woke - fire_at) * 1000 for woke, fire_at in zip(results, deadlines, strict=True)
        ]
    finally:
        await client.close()
        for proc in (worker, server):
            proc.terminate()
            proc.wait(timeout=60)
    late = waiting < args.timers
    print(
        f"\n{args.timers} timers over a {args.window:.0f} s window; {args.concurrency} task slots"
    )
    print(f"{'fire lateness p50 (ms)':44} {statistics.median(lateness):>10.1f}")
    print(f"{'fire lateness p99 (ms)':44} {pct(lateness, 0.99):>10.1f}")
    print(f"{'fire lateness max (ms)':44} {max(lateness):>10.1f}")
    if idle_cpu is not None:
        print(f"{'coordinator CPU while idle-waiting (cores)':44} {idle_cpu:>10.3f}")
    print(f"{'registered before the window opened':44} {'no' if late else 'yes':>10}")


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=120.0, help="deadlines spread over it")
    parser.add_argument("--lead", type=float, default=None, help="seconds before the window opens")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if args.lead is None:
        args.lead = max(20.0, args.timers / 60)  # ~60 registrations/s here, with margin
    print(machine(), flush=True)
    cluster = PgCluster(find_bindir(), parent=str(REPO))
    cluster.init()
    try:
        url = cluster.create_database("bench")
        with tempfile.TemporaryDirectory() as app_dir:
            Path(app_dir, "timer_app.py").write_text(APP)
            asyncio.run(run(args, url, app_dir))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
