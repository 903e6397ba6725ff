"""Workflow throughput and per-step overhead through real coordinator and worker processes.

Starts ``ledgerflow server`` on a private PostgreSQL cluster (fsync on) and one
``ledgerflow worker`` serving a workflow of K trivial steps, then from this
process starts N workflows and waits for their results:

- **sequential**: one workflow at a time — workflow latency p50/p99, and the
  per-step overhead (latency / K, the cost of making one step durable);
- **concurrent**: all N at once — workflows/s and steps/s.

The DBOS Transact comparison the issue asks for is not in this script yet (see
docs/benchmarks.md).

Usage: ``python bench/workflows.py [--workflows N] [--steps K] [--concurrency C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pg_cluster import PgCluster, find_bindir

from ledgerflow.client import Client

BIN = Path(sys.executable).parent / "ledgerflow"

APP = """
from ledgerflow import workflow


def noop(i: int) -> int:
    return i


async def anoop(i: int) -> int:
    return i


@workflow.defn(name="bench")
async def bench(ctx: workflow.Context, steps: int) -> int:
    total = 0
    for i in range(steps):
        total += await ctx.step("s", anoop, i)
    return total
"""


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(cmd: list[str], cwd: str | None = None) -> subprocess.Popen[str]:
    """Start a process with unbuffered output."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def run(args: argparse.Namespace, database_url: str, app_dir: str) -> None:
    """Start the processes and measure."""
    server = start([str(BIN), "server", "--listen", "127.0.0.1:0", "--database-url", database_url])
    assert server.stdout is not None
    match = re.search(r"listening on (\S+)", server.stdout.readline())
    assert match, "server did not start"
    address = match.group(1)
    worker = start(
        [
            str(BIN),
            "worker",
            "bench_app",
            "--address",
            address,
            "--max-concurrent-tasks",
            str(args.concurrency),
        ],
        cwd=app_dir,
    )
    client = await Client.connect(address)
    try:
        # Warm-up: connections, statement caches, imports.
        await (await client.start("bench", args.steps, run_id="warm")).result(timeout=120)
        latencies = []
        for i in range(args.workflows):
            began = time.perf_counter()
            handle = await client.start("bench", args.steps, run_id=f"seq-{i}")
            await handle.result(timeout=120)
            latencies.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        handles = [
            await client.start("bench", args.steps, run_id=f"con-{i}")
            for i in range(args.workflows)
        ]
        await asyncio.gather(*(h.result(timeout=600) for h in handles))
        elapsed = time.perf_counter() - began
    finally:
        await client.close()
        for proc in (worker, server):
            proc.terminate()
            proc.wait(timeout=30)
    per_step = [lat / args.steps for lat in latencies]
    print(f"sequential, {args.workflows} workflows x {args.steps} steps:")
    print(
        f"  workflow latency p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {pct(latencies, 0.99):.1f} ms"
    )
    print(
        f"  per-step overhead p50 {statistics.median(per_step):.2f} ms, "
        f"p99 {pct(per_step, 0.99):.2f} ms"
    )
    print(f"concurrent ({args.concurrency} tasks on one worker), {args.workflows} workflows:")
    print(
        f"  {args.workflows / elapsed:,.1f} workflows/s, "
        f"{args.workflows * args.steps / elapsed:,.0f} steps/s",
        flush=True,
    )


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus",
        flush=True,
    )
    cluster = PgCluster(find_bindir(), parent=str(REPO))
    cluster.init()
    try:
        url = cluster.create_database("bench")
        with tempfile.TemporaryDirectory() as app_dir:
            Path(app_dir, "bench_app.py").write_text(APP)
            asyncio.run(run(args, url, app_dir))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
