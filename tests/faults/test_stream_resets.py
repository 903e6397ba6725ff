"""Worker streams reset at random by a loopback TCP proxy: every log line once, runs complete."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ledgerflow.v1 import ledger_pb2 as pb
from tests.e2e.test_workflows import LEASE, free_port, server
from tests.faults.harness import assert_sound, connected, marks, results, worker

RUNS = 3
STEPS = 25
RESETS = 6


class ResettingProxy:
    """Forward loopback TCP to ``target``; after a random number of bytes from the
    client side, reset every open connection (RST, not FIN), up to ``resets`` times.

    Counting bytes rather than time makes the resets land mid-stream whatever the
    machine's speed; the seed makes a failure reproducible.
    """

    def __init__(self, target_port: int, resets: int, seed: int) -> None:
        self.target_port = target_port
        self.resets_left = resets
        self.resets_done = 0
        self._rng = random.Random(seed)
        self._budget = self._draw()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def _draw(self) -> int:
        return self._rng.randrange(500, 6000)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ResettingProxy]:
        srv = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = srv.sockets[0].getsockname()[1]
        try:
            async with srv:
                yield self
        finally:
            self._reset_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._abort(writer)
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, count=True),
            self._pipe(up_reader, writer, count=False),
            return_exceptions=True,
        )
        self._abort(writer)
        self._abort(up_writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if count and self.resets_left > 0:
                self._budget -= len(data)
                if self._budget <= 0:
                    self.resets_left -= 1
                    self.resets_done += 1
                    self._budget = self._draw()
                    self._reset_all()
                    return

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            self._abort(writer)

    def _abort(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # linger 0: close sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def test_worker_streams_reset_at_random(pg_url: str, app_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    directory = app_dir / "marks"
    run_ids = [f"chatty-{i}" for i in range(RUNS)]
    proxy = ResettingProxy(port, RESETS, seed=8)
    with server(pg_url, port, *LEASE):
        async with proxy.running(), connected(address) as client:
            # Runs queue first, so the worker streams from its first connection on.
            for run_id in run_ids:
                args = {"dir": str(directory), "tag": run_id, "steps": STEPS}
                await client.start("chatty", args, run_id=run_id)
            with worker(app_dir, f"127.0.0.1:{proxy.port}"):
                snaps = await results(client, run_ids)
            ledgers = await assert_sound(client, pg_url, run_ids)
            logs = {r: [line.text async for line in client.tail_logs(r)] for r in run_ids}
    assert proxy.resets_done >= 1, "the proxy never reset a stream: the test proved nothing"
    for run_id, snap in zip(run_ids, snaps, strict=True):
        assert snap.status == pb.RUN_STATUS_COMPLETED, run_id
        completed = [
            e.step_completed.step_id for e in ledgers[run_id] if e.HasField("step_completed")
        ]
        assert completed == [f"s{i}" for i in range(STEPS)], run_id
        assert logs[run_id] == [f"[info] step {i} done" for i in range(STEPS)], run_id
        ran = [marks(directory, f"{run_id}.s{i}") for i in range(STEPS)]
        assert all(n >= 1 for n in ran), (run_id, ran)
        # A reset worker keeps its tasks (it reconnects within the lease) or, if the
        # lease ran out meanwhile, a replay reruns the one step in flight per reset.
        assert sum(n - 1 for n in ran) <= proxy.resets_done, (run_id, ran)
