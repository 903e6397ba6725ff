"""Ingest throughput and watch latency of a real coordinator process.

Starts ``ledgerflow server`` as a subprocess on a private PostgreSQL cluster
(fsync on) or an SQLite file, then from this process:

1. N concurrent clients each append batches of B events (a step start, progress,
   a 3-line log batch, a completion, repeated) to their own run through
   AppendEvents, for a fixed number of batches: events/s.
2. One producer appends single events to a run one at a time while a WatchRun
   subscriber receives the snapshots: for each event, the time from sending the
   append to the watcher receiving the snapshot that contains it (append →
   watch): p50/p99.

Each figure is the median of ``--repeat`` rounds (range shown), after a warm-up;
every round appends to fresh runs.

Usage: ``python bench/ingest.py [--db postgres|sqlite|both] [--clients N] [--batch B]``.
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

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pg_cluster import PgCluster, find_bindir

from ledgerflow.ledger import json_payload
from ledgerflow.ledger._time import set_nanos
from ledgerflow.v1 import ledger_pb2 as pb
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub


def event(run_id: str, i: int) -> pb.LedgerEvent:
    """The i-th event of a run's synthetic workload."""
    e = pb.LedgerEvent(run_id=run_id, source=pb.EVENT_SOURCE_WORKER)
    set_nanos(e.event_time, time.time_ns())
    step = f"step-{i // 4}"
    kind = i % 4
    if kind == 0:
        e.step_started.step_id = step
        e.step_started.attempt = 1
    elif kind == 1:
        e.step_progress.step_id = step
        e.step_progress.progress.completed = 1
        e.step_progress.progress.total = 2
    elif kind == 2:
        e.log_appended.lines.extend([f"{step} working", f"{step} still working", "done"])
        e.log_appended.channel = step
        e.log_appended.channel_offset = 0
    else:
        e.step_completed.step_id = step
        e.step_completed.output.CopyFrom(json_payload({"i": i}))
    return e


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(
    address: str, clients: int, batch: int, batches: int, label: str = "tp"
) -> float:
    """Return events/s appended by ``clients`` concurrent clients, each to its own new run."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    stubs = [RunServiceStub(c) for c in channels]
    for n, stub in enumerate(stubs):
        await stub.StartRun(rpb.StartRunRequest(workflow_name="bench", run_id=f"{label}-{n}"))

    async def client(n: int, stub: RunServiceStub) -> None:
        i = 0
        for _ in range(batches):
            events = [event(f"{label}-{n}", i + k) for k in range(batch)]
            i += batch
            await stub.AppendEvents(rpb.AppendEventsRequest(events=events))

    start = time.perf_counter()
    await asyncio.gather(*(client(n, s) for n, s in enumerate(stubs)))
    elapsed = time.perf_counter() - start
    for c in channels:
        await c.close()
    return clients * batches * batch / elapsed


async def watch_latency(
    address: str, count: int, run_id: str = "lat"
) -> tuple[list[float], list[float]]:
    """Return (append→watch, commit→watch) latencies in ms for ``count`` single appends."""
    async with (
        grpc.aio.insecure_channel(address) as producer_ch,
        grpc.aio.insecure_channel(address) as watcher_ch,
    ):
        producer = RunServiceStub(producer_ch)
        watcher = RunServiceStub(watcher_ch)
        await producer.StartRun(rpb.StartRunRequest(workflow_name="bench", run_id=run_id))
        call = watcher.WatchRun(rpb.WatchRunRequest(run_id=run_id))
        await call.read()  # the current snapshot (seq 1)
        sent: dict[int, float] = {}
        acked: dict[int, float] = {}
        received: dict[int, float] = {}
        waiters: dict[int, asyncio.Future[None]] = {}

        async def watch() -> None:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                now = time.perf_counter()
                seq = message.snapshot.last_seq
                received.setdefault(seq, now)
                for s, fut in list(waiters.items()):
                    if s <= seq and not fut.done():
                        received.setdefault(s, now)
                        fut.set_result(None)

        watching = asyncio.create_task(watch())
        loop = asyncio.get_running_loop()
        for i in range(count):
            seq = i + 2
            waiters[seq] = loop.create_future()
            sent[seq] = time.perf_counter()
            await producer.AppendEvents(
                rpb.AppendEventsRequest(events=[event(run_id, 2 + 4 * i)])  # log batches
            )
            acked[seq] = time.perf_counter()
            # Wait, then forget: popping first would hide the future from a watcher
            # whose delivery comes after the acknowledgement (the stall seen earlier).
            await waiters[seq]
            del waiters[seq]
        call.cancel()
        watching.cancel()
    append_watch = [(received[s] - sent[s]) * 1000 for s in sent]
    commit_watch = [max(0.0, received[s] - acked[s]) * 1000 for s in sent]
    return append_watch, commit_watch


def start_server(database_url: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``ledgerflow server`` and return it with its address."""
    exe = Path(sys.executable).parent / "ledgerflow"
    proc = subprocess.Popen(
        [str(exe), "server", "--listen", "127.0.0.1:0", "--database-url", database_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match.group(1)


def spread(values: list[float], unit: str, digits: int = 0) -> str:
    """Format the median of ``values`` and their range."""
    fmt = f"{{:,.{digits}f}}"
    return (
        f"{fmt.format(statistics.median(values))} {unit} "
        f"(range {fmt.format(min(values))}-{fmt.format(max(values))})"
    )


async def run_one(label: str, database_url: str, args: argparse.Namespace) -> None:
    """Benchmark one database and print its figures (medians of ``--repeat`` rounds)."""
    proc, address = start_server(database_url)
    try:
        print(f"\n{label}", flush=True)
        # Warm-up: connections, prepared statements and caches, not measured.
        await throughput(address, args.clients, args.batch, 2, "warm")
        batched, single, p50, p99 = [], [], [], []
        for r in range(args.repeat):
            # Fresh runs every round, so each round appends to runs of the same length.
            batched.append(
                await throughput(address, args.clients, args.batch, args.batches, f"b{r}")
            )
            single.append(await throughput(address, args.clients, 1, args.batches * 4, f"s{r}"))
            append_watch, _ = await watch_latency(address, args.latency_samples, f"lat{r}")
            p50.append(statistics.median(append_watch))
            p99.append(pct(append_watch, 0.99))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(
        f"  AppendEvents, {args.clients} clients x {args.batch}-event batches: "
        f"{spread(batched, 'events/s')}"
    )
    print(
        f"  AppendEvents, {args.clients} clients x 1-event requests: {spread(single, 'events/s')}"
    )
    print(f"  append -> watch p50: {spread(p50, 'ms', 2)}")
    print(f"  append -> watch p99: {spread(p99, 'ms', 2)}", flush=True)


async def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("postgres", "sqlite", "both"), default="both")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        if args.db in ("sqlite", "both"):
            await run_one("SQLite (WAL, synchronous=FULL)", f"sqlite:///{tmp}/bench.db", args)
        if args.db in ("postgres", "both"):
            # On disk, not /dev/shm: with fsync on, a commit must reach the disk.
            cluster = PgCluster(find_bindir(), parent=str(REPO))
            cluster.init()
            try:
                url = cluster.create_database("bench")
                await run_one("PostgreSQL 15 (fsync on, private cluster)", url, args)
            finally:
                cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
