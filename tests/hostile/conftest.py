"""Fixtures for the hostile-input matrix: a real coordinator, raw calls, state fingerprints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from ledgerflow.coordinator._server import Coordinator, ServerConfig
from ledgerflow.coordinator.api import Limits
from ledgerflow.coordinator.api._worker_service import LeaseConfig
from ledgerflow.v1 import run_service_pb2 as rpb
from ledgerflow.v1.run_service_pb2_grpc import RunServiceStub

MAX_PAYLOAD = 64 * 1024
"""The payload limit the matrix's coordinator runs with (small, so over-limit cases are cheap)."""


@pytest.fixture
async def coordinator(db_url: str) -> AsyncIterator[Coordinator]:
    """A coordinator on a fresh database (SQLite and Postgres), with a 64 KiB payload limit."""
    c = Coordinator(
        ServerConfig(
            listen="127.0.0.1:0",
            database_url=db_url,
            limits=Limits(max_payload_bytes=MAX_PAYLOAD),
            shutdown_grace=1,
            leases=LeaseConfig(lease_seconds=30, heartbeat_seconds=6),
        )
    )
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def channel(coordinator: Coordinator) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the coordinator."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as ch:
        yield ch


@dataclass(frozen=True)
class Refusal:
    """How a call ended: its status code and details."""

    code: grpc.StatusCode
    details: str


async def call_raw(channel: grpc.aio.Channel, method: str, body: bytes) -> Refusal | bytes:
    """Send ``body`` unserialized to ``/ledgerflow.v1.RunService/<method>``: the server parses it.

    Server-streaming methods are read to their first message (or their end).
    """
    path = f"/ledgerflow.v1.RunService/{method}"
    try:
        if method in ("WatchRun", "WatchRuns", "TailLogs"):
            streaming: Any = channel.unary_stream(path, request_serializer=None)
            stream = streaming(body, timeout=5)
            first = await stream.read()
            stream.cancel()
            return b"" if first is grpc.aio.EOF else bytes(first)
        unary: Any = channel.unary_unary(path, request_serializer=None)
        return bytes(await unary(body, timeout=5))
    except grpc.aio.AioRpcError as err:
        return Refusal(err.code(), err.details() or "")


async def fingerprint(channel: grpc.aio.Channel) -> list[tuple[str, int, int, int]]:
    """Every run with its status, last seq and event count: equal before and after = no change."""
    stub = RunServiceStub(channel)
    runs = (await stub.ListRuns(rpb.ListRunsRequest(page_size=1000))).runs
    out = []
    for run in runs:
        events = await stub.GetEvents(rpb.GetEventsRequest(run_id=run.run_id, page_size=1000))
        out.append((run.run_id, int(run.status), run.last_seq, len(events.events)))
    return sorted(out)
