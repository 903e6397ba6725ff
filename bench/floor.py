"""The floor under a durable step: what one round trip costs with no ledgerflow in it.

A step that is durable before the body goes on needs, at the least, the worker's
message to reach the coordinator, one fsynced Postgres commit, and the answer to
come back. This measures those parts alone, with the libraries the product uses,
on the same private PostgreSQL cluster (fsync on) as ``bench/workflows.py``:

- **commit**: one ``INSERT`` of a small row through asyncpg, autocommit (one round
  trip, the commit's WAL flush included), from this process.
- **grpc echo**: a message over a grpc.aio bidi stream to a server process on
  loopback, which writes it straight back; the next message goes after the answer.
- **grpc + commit**: the same, with the server inserting a row (asyncpg,
  autocommit) before it answers: a durable round trip with no other work at all.

Each figure is the median (and p99) of ``--samples`` sequential round trips after a
warm-up. Usage: ``python bench/floor.py [--samples N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._harness import machine, pct, start
from tests.pg_cluster import PgCluster, find_bindir

METHOD = "/floor.Floor/Echo"
TABLE = "CREATE TABLE IF NOT EXISTS floor (id bigserial PRIMARY KEY, body bytea NOT NULL)"


def _identity(data: bytes) -> bytes:
    return data


async def serve(dsn: str, commit: bool) -> None:
    """The server process: echo each message, after an insert when ``commit``."""
    import asyncpg
    import grpc

    conn = await asyncpg.connect(dsn)

    async def echo(requests: AsyncIterator[bytes], _context: object) -> AsyncIterator[bytes]:
        async for message in requests:
            if commit:
                await conn.execute("INSERT INTO floor (body) VALUES ($1)", message)
            yield message

    handler = grpc.method_handlers_generic_handler(
        "floor.Floor",
        {
            "Echo": grpc.stream_stream_rpc_method_handler(
                echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def grpc_round_trips(dsn: str, commit: bool, samples: int) -> list[float]:
    """Start a server process and time ``samples`` sequential round trips to it."""
    import grpc

    cmd = [sys.executable, __file__, "--serve", dsn] + (["--commit"] if commit else [])
    server = start(cmd)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                METHOD, request_serializer=_identity, response_deserializer=_identity
            )()
            body = b"x" * 200  # about a step's completion event
            times = []
            for i in range(samples + 200):
                began = time.perf_counter()
                await call.write(body)
                await call.read()
                if i >= 200:  # warm-up: connections, caches
                    times.append((time.perf_counter() - began) * 1000)
            await call.done_writing()
            return times
    finally:
        server.terminate()
        server.wait(timeout=30)


async def commit_round_trips(dsn: str, samples: int) -> list[float]:
    """Time ``samples`` sequential autocommit inserts from this process."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        times = []
        for i in range(samples + 200):
            began = time.perf_counter()
            await conn.execute("INSERT INTO floor (body) VALUES ($1)", b"x" * 200)
            if i >= 200:
                times.append((time.perf_counter() - began) * 1000)
        return times
    finally:
        await conn.close()


async def measure(dsn: str, samples: int) -> None:
    """Print the three figures."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute(TABLE)
    await conn.close()
    rows = [
        ("commit (asyncpg INSERT, fsync)", await commit_round_trips(dsn, samples)),
        ("grpc echo (grpc.aio bidi, loopback)", await grpc_round_trips(dsn, False, samples)),
        ("grpc + commit", await grpc_round_trips(dsn, True, samples)),
    ]
    print(f"{'round trip':40} {'p50 ms':>8} {'p99 ms':>8}")
    for name, times in rows:
        print(f"{name:40} {pct(times, 0.5):8.3f} {pct(times, 0.99):8.3f}")


def main() -> None:
    """Run the benchmark (or, with ``--serve``, be its server process)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--serve", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--commit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.commit))
        return
    print(machine(), flush=True)
    cluster = PgCluster(find_bindir(), parent=str(REPO))
    cluster.init()
    try:
        dsn = cluster.create_database("floor").replace("+asyncpg", "")
        asyncio.run(measure(dsn, args.samples))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
