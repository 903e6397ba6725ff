"""Append latency to a run as it grows: a long run must cost no more than a short one.

In-process Store on a private PostgreSQL cluster (fsync on): one run gets
``--steps`` steps (start + completion per append, sequentially), and the median
append latency is printed per block of 500 steps. Before steps became rows of
their own, every append rewrote the whole snapshot and journal, so the latency
grew with the run.

Usage: ``python bench/long_runs.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pg_cluster import PgCluster, find_bindir

from ledgerflow.coordinator.store import StartRunSpec, Store, create_engine, upgrade
from ledgerflow.ledger import json_payload
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb


def step_events(run_id: str, n: int) -> list[pb.LedgerEvent]:
    """A step's start and completion."""
    out = []
    for case in ("step_started", "step_completed"):
        e = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
        set_nanos(e.event_time, time.time_ns())
        getattr(e, case).step_id = f"step-{n}"
        if case == "step_completed":
            e.step_completed.output.CopyFrom(json_payload({"n": n, "text": "x" * 40}))
        out.append(e)
    return out


async def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    cluster = PgCluster(find_bindir(), parent=str(REPO))
    cluster.init()
    try:
        engine = create_engine(cluster.create_database("long"))
        await upgrade(engine)
        store = Store(engine)
        await store.start()
        await store.start_run(StartRunSpec(workflow_name="bench", run_id="long"))
        block: list[float] = []
        for n in range(args.steps):
            start = time.perf_counter()
            await store.append_events(step_events("long", n))
            block.append((time.perf_counter() - start) * 1000)
            if len(block) == 500:
                print(f"steps {n - 498:>5}-{n + 1:<5} append p50 {statistics.median(block):.2f} ms")
                block = []
        await store.close()
        await engine.dispose()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
