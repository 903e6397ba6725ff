"""Workflow throughput and per-step overhead through real coordinator and worker processes.

Starts ``ledgerflow server`` on a private PostgreSQL cluster (fsync on) and one
``ledgerflow worker`` serving a workflow of K trivial steps, then from this
process starts N workflows and waits for their results:

- **sequential**: one workflow at a time — workflow latency p50/p99, and the
  per-step overhead (latency / K, the cost of making one step durable);
- **concurrent**: all N at once — workflows/s and steps/s.

Then the same workload on DBOS Transact (pip ``dbos``), against a second database on the
same cluster, and a side-by-side table with the ratios ledgerflow/DBOS. DBOS is never
installed into the project's .venv: this script creates (once) and reuses a separate venv,
``bench/.venv-dbos``, with ``dbos==DBOS_VERSION``, and runs bench/dbos_workload.py there as
a subprocess, after the ledgerflow processes have stopped. ``--skip-dbos`` leaves it out.

Usage: ``python bench/workflows.py [--workflows N] [--steps K] [--concurrency C]
[--skip-dbos]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import BIN, REPO, machine, pct, start, start_server
from tests.pg_cluster import PgCluster, find_bindir

from ledgerflow.client import Client

# The DBOS Transact release the comparison is pinned to, and the venv it lives in.
DBOS_VERSION = "3.4.0"
DBOS_VENV = REPO / "bench" / ".venv-dbos"
DBOS_WORKLOAD = REPO / "bench" / "dbos_workload.py"

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


async def run(args: argparse.Namespace, database_url: str, app_dir: str) -> dict[str, Any]:
    """Start the ledgerflow processes and measure.

    Returns:
        ``latencies_ms`` (the sequential workflows') and ``concurrent_seconds``.
    """
    server, address = start_server(database_url)
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
    return {"latencies_ms": latencies, "concurrent_seconds": elapsed}


def dbos_python() -> Path:
    """Return the python of the DBOS venv, creating it or installing DBOS_VERSION if needed."""
    python = DBOS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {DBOS_VENV.relative_to(REPO)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DBOS_VENV)], check=True)
    installed = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('dbos'))"],
        capture_output=True,
        text=True,
    )
    if installed.returncode != 0 or installed.stdout.strip() != DBOS_VERSION:
        print(f"installing dbos=={DBOS_VERSION} into {DBOS_VENV.relative_to(REPO)}", flush=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"dbos=={DBOS_VERSION}",
            ],
            check=True,
        )
    return python


def run_dbos(args: argparse.Namespace, python: Path, system_database_url: str) -> dict[str, Any]:
    """Run bench/dbos_workload.py in the DBOS venv and return its JSON line."""
    proc = subprocess.run(
        [
            str(python),
            str(DBOS_WORKLOAD),
            "--system-database-url",
            system_database_url,
            "--workflows",
            str(args.workflows),
            "--steps",
            str(args.steps),
            "--concurrency",
            str(args.concurrency),
        ],
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
        check=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line from {DBOS_WORKLOAD.name}: {proc.stdout!r}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def figures(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """The reported figures, computed the same way for both systems."""
    latencies: list[float] = raw["latencies_ms"]
    per_step = [lat / args.steps for lat in latencies]
    elapsed: float = raw["concurrent_seconds"]
    return {
        "latency_p50": statistics.median(latencies),
        "latency_p99": pct(latencies, 0.99),
        "step_p50": statistics.median(per_step),
        "step_p99": pct(per_step, 0.99),
        "workflows_s": args.workflows / elapsed,
        "steps_s": args.workflows * args.steps / elapsed,
    }


ROWS = [
    ("sequential workflow latency p50 (ms)", "latency_p50", "{:.1f}"),
    ("sequential workflow latency p99 (ms)", "latency_p99", "{:.1f}"),
    ("per-step overhead p50 (ms)", "step_p50", "{:.2f}"),
    ("per-step overhead p99 (ms)", "step_p99", "{:.2f}"),
    ("concurrent workflows/s", "workflows_s", "{:,.1f}"),
    ("concurrent steps/s", "steps_s", "{:,.0f}"),
]


def report(args: argparse.Namespace, ours: dict[str, float], dbos: dict[str, float] | None) -> None:
    """Print ledgerflow's figures, and DBOS's with the ratios when there are any."""
    print(
        f"\n{args.workflows} workflows x {args.steps} steps; sequential: one at a time; "
        f"concurrent: all {args.workflows} at once, {args.concurrency} task slots "
        "(ledgerflow worker) / executor threads (DBOS)"
    )
    head = f"{'':38} {'ledgerflow':>11}"
    if dbos is not None:
        head += f" {'DBOS':>11} {'ledgerflow/DBOS':>16}"
    print(head)
    for label, key, fmt in ROWS:
        line = f"{label:38} {fmt.format(ours[key]):>11}"
        if dbos is not None:
            line += f" {fmt.format(dbos[key]):>11} {ours[key] / dbos[key]:>16.2f}"
        print(line)
    if dbos is not None:
        print("(latency and overhead: lower is better; throughput: higher is better)", flush=True)


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--skip-dbos", action="store_true", help="measure ledgerflow only (no DBOS venv)"
    )
    args = parser.parse_args()
    print(machine(), flush=True)
    # Before the cluster: a first run creates the venv and installs DBOS.
    python = None if args.skip_dbos else dbos_python()
    cluster = PgCluster(find_bindir(), parent=str(REPO))
    cluster.init()
    try:
        url = cluster.create_database("bench")
        with tempfile.TemporaryDirectory() as app_dir:
            Path(app_dir, "bench_app.py").write_text(APP)
            ours = figures(asyncio.run(run(args, url, app_dir)), args)
        dbos = None
        if python is not None:
            # DBOS's system database; DBOS picks its own driver (psycopg 3) from the URL.
            dbos_url = cluster.create_database("bench_dbos").replace("+asyncpg", "")
            raw = run_dbos(args, python, dbos_url)
            print(f"DBOS Transact {raw['dbos_version']}", flush=True)
            dbos = figures(raw, args)
    finally:
        cluster.destroy()
    report(args, ours, dbos)


if __name__ == "__main__":
    main()
